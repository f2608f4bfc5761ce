"""The report a school gets of its transcripts the hub cannot take: what to fix, per student.

A school fixes these in its own software, so each row names the student the way the school
finds them — class and student code — and the field or rule that is wrong, with what to do in
plain Vietnamese (and English). It never carries a value the vendor sent, a name, a birth date
or a personal id: the school already holds those, and the report may travel by e-mail.

Only what the school must act on: records quarantined (the data is wrong) or blocked on identity
(a person does not match the population database). Failed signing and refused deliveries are
the Department's to fix, and stay on the console. The console (``/console/schools/{code}/report.xlsx``)
builds it from here; the XLSX is written with openpyxl.
"""

from __future__ import annotations

import io
from typing import Any

from openpyxl import Workbook
from openpyxl.styles import Alignment, Font

from hub import lifecycle as lc
from hub.documents.sheets import as_text_cells
from hub.engine.identity import parse_reason
from hub.engine.normalize import known_codes
from hub.web.status_page import explain, field_of, state_label

SCHOOL_STATES = (lc.QUARANTINED, lc.BLOCKED_IDENTITY)
COLUMNS = (
    ("class_name", "Lớp / Class"),
    ("student_code", "Mã học sinh / Student code"),
    ("state", "Tình trạng / State"),
    ("field", "Trường dữ liệu hoặc quy tắc / Field or rule"),
    ("fix_vi", "Cần sửa"),
    ("fix_en", "What to fix"),
    ("record_id", "Mã hồ sơ / Record id"),
    ("version", "Phiên bản / Version"),
)


def school_problems(store: Any, adapters: dict[str, Any], school: str) -> list[dict[str, Any]]:
    """One entry per field to fix in ``school``'s quarantined or blocked records, ordered by class
    and student. ``adapters``: the hub's adapters by name, to read the student code of a record
    that never became a central record from its payload."""
    out = []
    for state in SCHOOL_STATES:
        for pk in store.select(state=state, school=school):
            row = store.get(pk)
            record = row.normalized or {}
            codes = {"class_name": record.get("class_name"),
                     "student_code": (record.get("student") or {}).get("student_code")}
            if not row.normalized and row.payload and row.adapter in adapters:
                codes = {**codes, **known_codes(adapters[row.adapter], row.raw())}
            base = {"class_name": codes.get("class_name"), "student_code": codes.get("student_code"),
                    "state": state_label(state, "vi"), "record_id": row.record_id, "version": row.version}
            for line in row.errors or [""]:
                if state == lc.BLOCKED_IDENTITY:
                    field, vi, en = parse_reason(line)
                else:
                    _, vi, en = explain(state, [line])
                    field = field_of(line)
                out.append({**base, "field": field, "fix_vi": vi, "fix_en": en})
    out.sort(key=lambda e: (e["class_name"] or "", e["student_code"] or "", e["record_id"], e["field"]))
    return out


def to_xlsx(school: str, entries: list[dict[str, Any]]) -> bytes:
    """The report as a workbook: a title row naming the school, then one row per field to fix."""
    book = Workbook()
    sheet = book.active
    sheet.title = "Cần sửa"
    sheet.append([f"Trường {school}: hồ sơ học bạ cần sửa / transcripts to fix ({len(entries)})"])
    sheet["A1"].font = Font(bold=True, size=13)
    sheet.append([label for _, label in COLUMNS])
    for cell in sheet[2]:
        cell.font = Font(bold=True)
    for entry in entries:
        sheet.append([entry.get(key) for key, _ in COLUMNS])
    for letter, width in zip("ABCDEFGH", (10, 16, 18, 34, 60, 60, 38, 10)):
        sheet.column_dimensions[letter].width = width
    for row in sheet.iter_rows(min_row=3):
        for cell in row:
            cell.alignment = Alignment(wrap_text=True, vertical="top")
    sheet.freeze_panes = "A3"
    as_text_cells(sheet)  # names and reasons come from schools and vendors
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()
