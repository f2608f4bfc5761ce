"""The import sheets of the Ministry's school portal, built from central records: see CONTRACT.md.

One workbook per school, class and school year. Primary classes (Thông tư 27) take three header
rows: the groups (subjects, core competencies, qualities), then each subject or competency
family, then what is recorded under it (level, periodic test score, each competency). Secondary
classes (Thông tư 22) take two: each subject, then the terms (HK1, HK2, CN).

Everything here is pure: records in, ``openpyxl.Workbook`` out, so a test can check the layout
without a hub.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from openpyxl import Workbook
from openpyxl.styles import Alignment, Font
from openpyxl.utils import get_column_letter

from hub import SUBJECTS, subjects_for

SHEET = "KetQua"

# Identification columns every sheet starts with (merged down across the header rows).
STUDENT_COLUMNS = ("STT", "Mã học sinh", "Họ và tên", "Ngày sinh", "Giới tính")
TEXT_COLUMNS = {"Mã học sinh"}  # codes: kept as text so a leading zero survives

GENERAL_COMPETENCY_NAMES = (("tu_chu_tu_hoc", "Tự chủ và tự học"), ("giao_tiep_hop_tac", "Giao tiếp và hợp tác"),
                            ("giai_quyet_van_de_sang_tao", "Giải quyết vấn đề và sáng tạo"))
SPECIFIC_COMPETENCY_NAMES = (("ngon_ngu", "Ngôn ngữ"), ("tinh_toan", "Tính toán"), ("khoa_hoc", "Khoa học"),
                             ("cong_nghe", "Công nghệ"), ("tin_hoc", "Tin học"), ("tham_my", "Thẩm mĩ"),
                             ("the_chat", "Thể chất"))
QUALITY_NAMES = (("yeu_nuoc", "Yêu nước"), ("nhan_ai", "Nhân ái"), ("cham_chi", "Chăm chỉ"),
                 ("trung_thuc", "Trung thực"), ("trach_nhiem", "Trách nhiệm"))
PRIMARY_TAIL = ("Kết quả giáo dục", "Hoàn thành chương trình lớp học", "Hoàn thành chương trình tiểu học",
                "Được lên lớp", "Khen thưởng")
SECONDARY_TAIL_GROUPS = (("Kết quả học tập", "learning"), ("Kết quả rèn luyện", "conduct"))
SECONDARY_TAIL = ("Số ngày nghỉ", "Được lên lớp", "Danh hiệu / Khen thưởng")
TERMS = (("HK1", "term1"), ("HK2", "term2"), ("CN", "year"))

# A cell whose text starts with one of these is read as a formula (or a DDE call) by Excel and
# LibreOffice; such text is written as a string cell marked "quote prefix", never as a formula.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


@dataclass(frozen=True)
class Sheet:
    """A laid-out sheet: header rows (``None`` under a merged cell) and data rows."""
    header: list[list[str | None]]
    merges: list[tuple[int, int, int, int]]  # (row1, col1, row2, col2), 1-based
    rows: list[list[Any]]


def is_primary(record: dict[str, Any]) -> bool:
    return str(record.get("level")) == "02"


def _yes(value: Any) -> str | None:
    return None if value is None else ("Có" if value else "Không")


def _gender(value: Any) -> str:
    return {1: "Nam", 2: "Nữ"}.get(value, "")


def _date(value: Any) -> str:
    # ISO in the record; dd/mm/yyyy as Vietnamese forms write dates (text: no locale guessing).
    if not value:
        return ""
    y, m, d = str(value)[:10].split("-")
    return f"{d}/{m}/{y}"


def _sort_key(record: dict[str, Any]) -> tuple[str, str, str]:
    # Vietnamese class lists are ordered by given name (the last word), then the whole name.
    name = record["student"]["full_name"]

    def plain(text: str) -> str:
        text = unicodedata.normalize("NFD", text.replace("Đ", "D").replace("đ", "d"))
        return "".join(c for c in text if not unicodedata.combining(c)).casefold()

    return plain(name.split()[-1]), plain(name), record["student"]["student_code"]


def _subject_order(level: str, records: Sequence[dict[str, Any]]) -> list[tuple[str, str]]:
    """Every subject any record of the class carries, in the catalogue's order for the level,
    then any other code in order of appearance: ``(code, name)``."""
    seen: dict[str, str] = {}
    for record in records:
        for subject in record["subjects"]:
            seen.setdefault(subject["subject_code"], subject["subject_name"])
    # The catalogue may list a code twice (Ngoại ngữ 1: compulsory from grade 3, optional before).
    ordered = list(dict.fromkeys((s.code, s.name) for s in SUBJECTS[level] if s.code in seen))
    known = {code for code, _ in ordered}
    return ordered + [(code, name) for code, name in seen.items() if code not in known]


def _tested(level: str, grade: int, code: str) -> bool:
    """Primary: whether the subject has a periodic test in ``grade`` (Thông tư 27 art. 7)."""
    try:
        return any(s.code == code and s.scored for s in subjects_for(level, grade))
    except ValueError:
        return False


def primary_sheet(records: Sequence[dict[str, Any]]) -> Sheet:
    """Thông tư 27: three header rows, one row per student."""
    grade = records[0]["grade"] if records else 1
    subjects = _subject_order("02", records)
    fixed = len(STUDENT_COLUMNS)
    row1: list[str | None] = list(STUDENT_COLUMNS)
    row2: list[str | None] = [None] * fixed
    row3: list[str | None] = [None] * fixed
    merges = [(1, c, 3, c) for c in range(1, fixed + 1)]
    columns: list[tuple[str, str, str]] = []  # (kind, key, field) per data column

    start = len(row1) + 1
    for code, name in subjects:
        parts = [("Mức đạt được", "year_level")]
        if _tested("02", grade, code):
            parts.append(("Điểm KTĐK", "year_score"))
        row2 += [name] + [None] * (len(parts) - 1)
        row3 += [label for label, _ in parts]
        if len(parts) > 1:
            merges.append((2, len(row2) - len(parts) + 1, 2, len(row2)))
        columns += [("subject", code, f) for _, f in parts]
    row1 += ["Môn học và hoạt động giáo dục"] + [None] * (len(row2) - start)
    if len(row2) >= start:
        merges.append((1, start, 1, len(row2)))

    start = len(row2) + 1
    for family, names in (("Năng lực chung", GENERAL_COMPETENCY_NAMES),
                          ("Năng lực đặc thù", SPECIFIC_COMPETENCY_NAMES)):
        row2 += [family] + [None] * (len(names) - 1)
        merges.append((2, len(row2) - len(names) + 1, 2, len(row2)))
        row3 += [label for _, label in names]
        columns += [("competency", key, "") for key, _ in names]
    row1 += ["Năng lực cốt lõi"] + [None] * (len(row2) - start)
    merges.append((1, start, 1, len(row2)))

    start = len(row2) + 1
    for key, label in QUALITY_NAMES:
        row2.append(label)
        row3.append(None)
        merges.append((2, len(row2), 3, len(row2)))
        columns.append(("quality", key, ""))
    row1 += ["Phẩm chất chủ yếu"] + [None] * (len(QUALITY_NAMES) - 1)
    merges.append((1, start, 1, len(row2)))

    merges += _full_height([row1, row2, row3], PRIMARY_TAIL)

    rows = []
    for number, record in enumerate(sorted(records, key=_sort_key), 1):
        by_code = {s["subject_code"]: s for s in record["subjects"]}
        row = _student_cells(number, record)
        for kind, key, field in columns:
            if kind == "subject":
                row.append((by_code.get(key) or {}).get(field))
            elif kind == "competency":
                row.append(record["competencies"].get(key))
            else:
                row.append(record["qualities"].get(key))
        row += [record.get("overall_result"), _yes(record.get("completed_grade_program")),
                _yes(record.get("completed_primary_program")), _yes(record.get("promoted")),
                "; ".join(record.get("awards") or [])]
        rows.append(row)
    return Sheet([row1, row2, row3], merges, rows)


def secondary_sheet(records: Sequence[dict[str, Any]]) -> Sheet:
    """Thông tư 22: two header rows (subject or result, then HK1 / HK2 / CN), one row per student."""
    level = str(records[0]["level"]) if records else "03"
    subjects = _subject_order(level, records)
    fixed = len(STUDENT_COLUMNS)
    row1: list[str | None] = list(STUDENT_COLUMNS)
    row2: list[str | None] = [None] * fixed
    merges = [(1, c, 2, c) for c in range(1, fixed + 1)]
    for _code, name in subjects:
        row1 += [name, None, None]
        row2 += [label for label, _ in TERMS]
        merges.append((1, len(row1) - 2, 1, len(row1)))
    for label, _key in SECONDARY_TAIL_GROUPS:
        row1 += [label, None, None]
        row2 += [label for label, _ in TERMS]
        merges.append((1, len(row1) - 2, 1, len(row1)))
    merges += _full_height([row1, row2], SECONDARY_TAIL)

    rows = []
    for number, record in enumerate(sorted(records, key=_sort_key), 1):
        by_code = {s["subject_code"]: s for s in record["subjects"]}
        row = _student_cells(number, record)
        for code, _name in subjects:
            subject = by_code.get(code) or {}
            for _label, term in TERMS:
                # A scored subject shows its average; one assessed by comment, Đ or CĐ.
                average = subject.get(f"{term}_average")
                row.append(average if average is not None else subject.get(f"{term}_comment"))
        for _label, key in SECONDARY_TAIL_GROUPS:
            row += [(record.get(key) or {}).get(term) for _, term in TERMS]
        row += [record.get("days_absent"), _yes(record.get("promoted")), "; ".join(record.get("awards") or [])]
        rows.append(row)
    return Sheet([row1, row2], merges, rows)


def _full_height(header: list[list[str | None]], labels: Sequence[str]) -> list[tuple[int, int, int, int]]:
    """Add a column per label whose header cell spans every header row; the merges that make it so."""
    merges = []
    for label in labels:
        header[0].append(label)
        for row in header[1:]:
            row.append(None)
        merges.append((1, len(header[0]), len(header), len(header[0])))
    return merges


def _student_cells(number: int, record: dict[str, Any]) -> list[Any]:
    student = record["student"]
    return [number, student["student_code"], student["full_name"], _date(student.get("birth_date")),
            _gender(student.get("gender"))]


def sheet_for(records: Sequence[dict[str, Any]], level: str) -> Sheet:
    return primary_sheet(records) if level == "02" else secondary_sheet(records)


def workbook(records: Iterable[dict[str, Any]], level: str) -> Workbook:
    """The class's import workbook: records are central records (``model_dump(mode="json")``)."""
    sheet = sheet_for(list(records), level)
    book = Workbook()
    ws = book.active
    ws.title = SHEET
    bold, centred = Font(bold=True), Alignment(horizontal="center", vertical="center", wrap_text=True)
    for r, values in enumerate(sheet.header, 1):
        for c, value in enumerate(values, 1):
            if value is not None:
                cell = ws.cell(row=r, column=c)
                put(cell, value)
                cell.font, cell.alignment = bold, centred
    for r1, c1, r2, c2 in sheet.merges:
        if (r1, c1) != (r2, c2):
            ws.merge_cells(start_row=r1, start_column=c1, end_row=r2, end_column=c2)
    first = len(sheet.header) + 1
    text_columns = [i + 1 for i, name in enumerate(STUDENT_COLUMNS) if name in TEXT_COLUMNS]
    for r, values in enumerate(sheet.rows, first):
        for c, value in enumerate(values, 1):
            cell = ws.cell(row=r, column=c)
            put(cell, value)
            if c in text_columns:
                cell.number_format = "@"
    ws.freeze_panes = ws.cell(row=first, column=len(STUDENT_COLUMNS) + 1)
    ws.column_dimensions[get_column_letter(3)].width = 28
    return book


def put(cell: Any, value: Any) -> None:
    """Write ``value``; text that a spreadsheet would run as a formula stays text."""
    if value is None or value == "":
        return
    if isinstance(value, str):
        cell.value = value
        if value.startswith(FORMULA_START):
            # openpyxl takes a leading "=" as a formula: say it is a string, and mark it with
            # Excel's quote prefix so editing the cell keeps it text too.
            cell.data_type = "s"
            cell.quotePrefix = True
        return
    cell.value = value
