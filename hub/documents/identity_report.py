"""The report a school gets of its students blocked on identity: who, and what differs.

A school fixes these in its own software (or has the family fix the population record), so the
report names the student the way the school finds them — class, student code, name — and says
which field differs from the national population database, in Vietnamese and English. The
personal id is masked: the school has it, and the report may travel by e-mail. The CLI
(``hocba-hub identity-report``) and the admin API (``/api/identity/blocked``) both read it from
here; the XLSX is written with openpyxl.
"""

from __future__ import annotations

import io
from typing import Any

from openpyxl import Workbook
from openpyxl.styles import Font

from hub import lifecycle as lc
from hub.documents.sheets import as_text_cells
from hub.engine.identity import parse_reason
from hub.logs import mask

COLUMNS = (
    ("school_code", "Mã trường / School code"),
    ("school_name", "Tên trường / School"),
    ("class_name", "Lớp / Class"),
    ("student_code", "Mã học sinh / Student code"),
    ("full_name", "Họ và tên / Name"),
    ("personal_id", "Số định danh (che) / Personal id (masked)"),
    ("field", "Trường dữ liệu / Field"),
    ("reason_vi", "Lý do"),
    ("reason_en", "Reason"),
    ("record_id", "Mã bản ghi / Record id"),
    ("version", "Phiên bản / Version"),
    ("blocked_at", "Thời điểm / Since (UTC)"),
)


def blocked_students(store: Any, school: str | None = None) -> list[dict[str, Any]]:
    """Every record blocked on identity (of ``school``), ordered by school, class and student,
    each with the fields that differ (``differs``: field, Vietnamese, English)."""
    out = []
    for pk in store.select(state=lc.BLOCKED_IDENTITY, **({"school": school} if school else {})):
        row = store.get(pk)
        record = row.normalized or {}
        student = record.get("student") or {}
        out.append({
            "school_code": row.school_code, "school_name": record.get("school_name"),
            "class_name": record.get("class_name"), "student_code": student.get("student_code"),
            "full_name": student.get("full_name"),
            "personal_id": mask(student["personal_id"]) if student.get("personal_id") else None,
            "record_id": row.record_id, "version": row.version, "blocked_at": row.updated_at,
            "differs": [dict(zip(("field", "vi", "en"), parse_reason(e))) for e in row.errors],
        })
    out.sort(key=lambda e: (e["school_code"] or "", e["class_name"] or "", e["student_code"] or ""))
    return out


def to_xlsx(entries: list[dict[str, Any]]) -> bytes:
    """The report as a workbook: one row per field that differs, headers in both languages."""
    book = Workbook()
    sheet = book.active
    sheet.title = "Sai lệch danh tính"
    sheet.append([label for _, label in COLUMNS])
    for cell in sheet[1]:
        cell.font = Font(bold=True)
    for entry in entries:
        for differs in entry["differs"] or [{"field": "", "vi": "", "en": ""}]:
            values = {**entry, "field": differs["field"], "reason_vi": differs["vi"], "reason_en": differs["en"]}
            sheet.append([values.get(key) for key, _ in COLUMNS])
    sheet.freeze_panes = "A2"
    as_text_cells(sheet)  # names and reasons come from schools and vendors
    for column, (key, label) in zip(sheet.columns, COLUMNS):
        width = max([len(label)] + [len(str(c.value or "")) for c in column])
        sheet.column_dimensions[column[0].column_letter].width = min(60, width + 2)
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()
