"""File-drop adapter: CSV and XLSX transcript sheets dropped in a folder (CONTRACT.md).

``fetch`` turns each settled file in ``settings.directory`` into one ``Page``: one
``RawRecord`` per usable row (the row as a JSON object keyed by the template's column names),
and a report of every row it refused or expects the hub to quarantine. ``acknowledge`` — called
only once the hub has committed the page — writes the report and moves the file to ``done/``
(or ``rejected/`` when no row was usable). Nothing is ever deleted: a crash before
``acknowledge`` leaves the file in place, the next poll reads it again and the hub's content
hash turns the re-read into a no-op.
"""

from __future__ import annotations

import asyncio
import codecs
import csv
import datetime as dt
import hashlib
import io
import json
import os
import re
import time
import unicodedata
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import structlog
from pydantic import Field, ValidationError, field_validator

from hub import SUBJECTS as FORM_SUBJECTS
from hub import (
    Adapter,
    Health,
    Page,
    PluginContext,
    PluginError,
    PluginSettings,
    RawRecord,
    csv_text,
    field_errors,
    load_json,
    parse_transcript,
)

log = structlog.get_logger(__name__)

ACCEPTED_SUFFIXES = (".csv", ".xlsx")
# Spreadsheets a school may drop that this adapter cannot read: refused with a report saying
# how to save the file, rather than left waiting in the folder with no feedback.
UNSUPPORTED_SUFFIXES = (".xls", ".xlsm", ".xlsb", ".ods", ".numbers")
DONE, REJECTED = "done", "rejected"
HEADER_SEARCH_ROWS = 10          # title rows a school may put above the header
MAX_WAIT_IN_PULL = 10.0          # a pull waits this long at most for a file to settle
EXCEL_ERRORS = frozenset({"#NULL!", "#DIV/0!", "#VALUE!", "#REF!", "#NAME?", "#NUM!", "#N/A",
                          "#GETTING_DATA", "#SPILL!", "#CALC!"})
REPORT_FIELDS = ("row", "column", "outcome", "reason")
_CHECK_ENVELOPE = {"record_id": "spreadsheet-check", "event": "NEW", "version": 1,
                   "updated_at": "2025-01-01T00:00:00"}


# --- the column set ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Column:
    """One template column: its header, the central field it fills and what goes in the cell."""
    header: str
    field: str | None            # central-format path; None: read by fetch, not content
    note: str                    # how to fill the cell, in Vietnamese (the template's Hướng dẫn sheet)
    text: bool = False           # a code with leading zeros: the XLSX template formats it as Text
    aliases: tuple[str, ...] = ()
    blank_is_default: bool = False  # a blank cell leaves the central default (stated in ``note``)


ROW_NUMBER = "STT"
RECALL = "Thu hồi"
IDENTITY = ("Mã trường", "Mã học sinh", "Năm học")   # the row's stable source id

COMMON_COLUMNS: tuple[Column, ...] = (
    Column(ROW_NUMBER, None, "Số thứ tự; không đọc (mỗi dòng nhận diện bằng Mã trường + Mã học sinh + Năm học)"),
    Column("Mã sở GD&ĐT", "department_code", "2–3 chữ số, ví dụ 01", text=True, aliases=("Mã sở",)),
    Column("Mã trường", "school_code", "8–12 chữ số, bắt đầu bằng mã sở", text=True),
    Column("Tên trường", "school_name", "tên trường"),
    Column("Cấp học", "level", "02 / Tiểu học, 03 / THCS, 04 / THPT", text=True),
    Column("Khối", "grade", "1–12"),
    Column("Lớp", "class_name", "tên lớp, ví dụ 5A", aliases=("Tên lớp",)),
    Column("Năm học", "school_year", "yyyy-yyyy, ví dụ 2024-2025"),
    Column("Mã định danh học bạ", "transcript_id", "mã định danh của học bạ", text=True),
    Column("Trạng thái học bạ", "status", "để trống: 1", blank_is_default=True),
    Column("Mã học sinh", "student.student_code", "mã học sinh trong phần mềm quản lý trường", text=True,
           aliases=("Mã HS",)),
    Column("Số định danh cá nhân", "student.personal_id", "12 chữ số", text=True,
           aliases=("Số định danh", "Mã định danh cá nhân")),
    Column("Họ và tên", "student.full_name", "họ và tên học sinh", aliases=("Họ tên", "Họ tên học sinh")),
    Column("Ngày sinh", "student.birth_date", "dd/MM/yyyy (hoặc ô kiểu ngày)", aliases=("Ngày tháng năm sinh",)),
    Column("Giới tính", "student.gender", "Nam / Nữ (hoặc 1 / 2)"),
    Column("Dân tộc", "student.ethnicity", "ví dụ Kinh"),
    Column("Quốc tịch", "student.nationality", "ví dụ Việt Nam"),
    Column("Họ tên cha", "student.father_name", "không bắt buộc"),
    Column("Họ tên mẹ", "student.mother_name", "không bắt buộc"),
    Column("Họ tên người giám hộ", "student.guardian_name", "không bắt buộc"),
    Column("Đối tượng chính sách", "student.policy_group", "không bắt buộc"),
    Column("Khuyết tật không đánh giá", "student.disability_not_assessed", "Có / Không (x = Có); để trống: Không",
           blank_is_default=True),
    # The forms' particulars page and the homeroom teacher's comments (assumed columns, CONTRACT.md).
    Column("Nơi sinh", "student.birth_place", "không bắt buộc, ví dụ Hà Nội"),
    Column("Nơi ở hiện nay", "student.residence", "không bắt buộc"),
    Column("Số đăng bộ", "student.registration_number", "không bắt buộc, ví dụ 125/2021", text=True),
    Column("Nhận xét của GVCN", "homeroom_comment", "không bắt buộc"),
    Column("Họ tên GVCN", "signatories.homeroom_teacher_name", "họ tên giáo viên chủ nhiệm", aliases=("GVCN",)),
    Column("Số định danh GVCN", "signatories.homeroom_teacher_personal_id", "12 chữ số", text=True),
    Column("Họ tên hiệu trưởng", "signatories.principal_name", "họ tên hiệu trưởng", aliases=("Hiệu trưởng",)),
    Column("Số định danh hiệu trưởng", "signatories.principal_personal_id", "12 chữ số", text=True),
    Column("Chức vụ người ký", "signatories.principal_title", "để trống: Hiệu trưởng", aliases=("Chức vụ",),
           blank_is_default=True),
    Column("Ngày ký", "signatories.issue_date", "dd/MM/yyyy"),
    Column("Địa danh", "signatories.issue_place", "nơi cấp, ví dụ Hà Nội"),
    Column(RECALL, None, "x / Có: trường thu hồi học bạ này (gửi sự kiện CANCEL)"),
)

PRIMARY_COLUMNS: tuple[Column, ...] = (
    Column("Yêu nước", "qualities.yeu_nuoc", "T / Đ / C"),
    Column("Nhân ái", "qualities.nhan_ai", "T / Đ / C"),
    Column("Chăm chỉ", "qualities.cham_chi", "T / Đ / C"),
    Column("Trung thực", "qualities.trung_thuc", "T / Đ / C"),
    Column("Trách nhiệm", "qualities.trach_nhiem", "T / Đ / C"),
    Column("Tự chủ và tự học", "competencies.tu_chu_tu_hoc", "T / Đ / C"),
    Column("Giao tiếp và hợp tác", "competencies.giao_tiep_hop_tac", "T / Đ / C"),
    Column("Giải quyết vấn đề và sáng tạo", "competencies.giai_quyet_van_de_sang_tao", "T / Đ / C"),
    Column("Năng lực ngôn ngữ", "competencies.ngon_ngu", "T / Đ / C; để trống: không đánh giá"),
    Column("Năng lực tính toán", "competencies.tinh_toan", "T / Đ / C; để trống: không đánh giá"),
    Column("Năng lực khoa học", "competencies.khoa_hoc", "T / Đ / C; để trống: không đánh giá"),
    Column("Năng lực công nghệ", "competencies.cong_nghe", "T / Đ / C; để trống: không đánh giá"),
    Column("Năng lực tin học", "competencies.tin_hoc", "T / Đ / C; để trống: không đánh giá"),
    Column("Năng lực thẩm mĩ", "competencies.tham_my", "T / Đ / C; để trống: không đánh giá"),
    Column("Năng lực thể chất", "competencies.the_chat", "T / Đ / C; để trống: không đánh giá"),
    Column("Hoàn thành chương trình lớp học", "completed_grade_program", "Có / Không"),
    Column("Hoàn thành chương trình tiểu học", "completed_primary_program", "Có / Không; chỉ ghi ở lớp 5"),
    Column("Được lên lớp", "promoted", "Có / Không"),
    Column("Khen thưởng", "awards", "các khen thưởng, cách nhau bởi ;"),
    Column("Kết quả giáo dục", "overall_result",
           "Hoàn thành xuất sắc / Hoàn thành tốt / Hoàn thành / Chưa hoàn thành (hoặc HTXS / HTT / HT / CHT)"),
    Column("Nhận xét phẩm chất", "qualities_comment", "không bắt buộc"),
    Column("Nhận xét năng lực chung", "general_competencies_comment", "không bắt buộc"),
    Column("Nhận xét năng lực đặc thù", "subject_competencies_comment", "không bắt buộc"),
)

SECONDARY_COLUMNS: tuple[Column, ...] = (
    Column("Học tập HK1", "learning.term1", "T / K / Đ / CĐ"),
    Column("Học tập HK2", "learning.term2", "T / K / Đ / CĐ"),
    Column("Học tập CN", "learning.year", "T / K / Đ / CĐ"),
    Column("Rèn luyện HK1", "conduct.term1", "T / K / Đ / CĐ"),
    Column("Rèn luyện HK2", "conduct.term2", "T / K / Đ / CĐ"),
    Column("Rèn luyện CN", "conduct.year", "T / K / Đ / CĐ"),
    Column("Số ngày nghỉ", "days_absent", "số ngày, ghi 0 nếu không nghỉ"),
    Column("Được lên lớp", "promoted", "Có / Không"),
    Column("Chứng chỉ", "certificates", "Tên | dd/MM/yyyy | Nơi cấp; nhiều chứng chỉ cách nhau bởi ;"),
    Column("Khen thưởng", "awards", "các khen thưởng, cách nhau bởi ;"),
    Column("Hoàn thành chương trình cấp học", "completed_level_program", "Có / Không; chỉ ghi ở lớp 9 và lớp 12"),
)

# Subject catalogues (Chương trình GDPT 2018): column name → subject code, in template order.
PRIMARY_SUBJECTS = {
    "Tiếng Việt": "TV", "Toán": "TOAN", "Ngoại ngữ 1": "NN1", "Đạo đức": "DD",
    "Tự nhiên và Xã hội": "TNXH", "Lịch sử và Địa lí": "LSDL", "Khoa học": "KH",
    "Tin học và Công nghệ": "THCN", "Giáo dục thể chất": "GDTC", "Nghệ thuật": "NT",
    "Âm nhạc": "AN", "Mĩ thuật": "MT", "Hoạt động trải nghiệm": "HDTN", "Tiếng dân tộc": "TDT",
}
SECONDARY_SCORED_SUBJECTS = {
    "Toán": "TOAN", "Ngữ văn": "NV", "Ngoại ngữ 1": "NN1", "Lịch sử": "LS",
    "Khoa học tự nhiên": "KHTN", "Lịch sử và Địa lí": "LSDL", "Công nghệ": "CN", "Tin học": "TH",
    "Giáo dục công dân": "GDCD", "Vật lí": "VL", "Hoá học": "HH", "Sinh học": "SH", "Địa lí": "DL",
    "Giáo dục kinh tế và pháp luật": "GDKTPL", "Giáo dục quốc phòng và an ninh": "GDQPAN",
    "Ngoại ngữ 2": "NN2", "Tiếng dân tộc": "TDT",
}
SECONDARY_COMMENT_SUBJECTS = {
    "Giáo dục thể chất": "GDTC", "Nghệ thuật": "NT", "Âm nhạc": "AN", "Mĩ thuật": "MT",
    "Hoạt động trải nghiệm, hướng nghiệp": "HDTN",
    # Thông tư 22 art. 5 assesses it by comment (hub.catalogue).
    "Nội dung giáo dục của địa phương": "GDDP",
}
# Both spellings are in use (old and new tone placement, i/y): a school may type either.
ALTERNATE_SPELLINGS = {"Hóa học": "Hoá học", "Mỹ thuật": "Mĩ thuật", "Vật lý": "Vật lí", "Địa lý": "Địa lí",
                       "Lịch sử và Địa lý": "Lịch sử và Địa lí",
                       # The programme's full name (hub.catalogue); the template's column is shorter.
                       "Tiếng dân tộc thiểu số": "Tiếng dân tộc"}
PRIMARY_MEASURES = {"Mức đạt HK1": "term1_level", "Mức đạt CN": "year_level",
                    "Điểm KTĐK HK1": "term1_score", "Điểm KTĐK CN": "year_score", "Nhận xét": "comment"}
SCORED_MEASURES = {"ĐTB HK1": "term1_average", "ĐTB HK2": "term2_average", "ĐTB CN": "year_average",
                   "Giáo viên": "teacher_name"}
COMMENT_MEASURES = {"KQ HK1": "term1_comment", "KQ HK2": "term2_comment", "KQ CN": "year_comment",
                    "Giáo viên": "teacher_name"}
SECONDARY_MEASURES = {**SCORED_MEASURES, **COMMENT_MEASURES}
MEASURE_NOTES = {
    "Mức đạt HK1": "T / H / C", "Mức đạt CN": "T / H / C", "Điểm KTĐK HK1": "1–10, môn có kiểm tra định kỳ",
    "Điểm KTĐK CN": "1–10, môn có kiểm tra định kỳ", "Nhận xét": "nhận xét của giáo viên",
    "ĐTB HK1": "0–10, một chữ số thập phân (8,5 hoặc 8.5)", "ĐTB HK2": "0–10, một chữ số thập phân", "ĐTB CN": "0–10, một chữ số thập phân",
    "KQ HK1": "Đ / CĐ", "KQ HK2": "Đ / CĐ", "KQ CN": "Đ / CĐ", "Giáo viên": "họ tên giáo viên môn học",
}
LEVEL_NAMES = {"tiểu học": "02", "th": "02", "trung học cơ sở": "03", "thcs": "03",
               "trung học phổ thông": "04", "thpt": "04"}
SUBJECT_COMPETENCY_FIELDS = frozenset({"ngon_ngu", "tinh_toan", "khoa_hoc", "cong_nghe", "tin_hoc",
                                       "tham_my", "the_chat"})


def _clean(text: str) -> str:
    """A header or identity cell as a person means it: NFC, one space, plain hyphens."""
    text = unicodedata.normalize("NFC", text).replace("\u2013", "-").replace("\u2014", "-")
    return re.sub(r"\s+", " ", text).strip()


def _key(text: str) -> str:
    return _clean(text).casefold()


def subject_header(name: str, measure: str) -> str:
    return f"{name} - {measure}"


def template_columns(level: Literal["primary", "secondary"]) -> list[tuple[str, str, bool]]:
    """The template's columns in order: ``(header, note, is_text)``."""
    out = [(c.header, c.note, c.text) for c in COMMON_COLUMNS]
    if level == "primary":
        for name in PRIMARY_SUBJECTS:
            out += [(subject_header(name, m), MEASURE_NOTES[m], False) for m in PRIMARY_MEASURES]
        out += [(c.header, c.note, c.text) for c in PRIMARY_COLUMNS]
    else:
        for name in SECONDARY_SCORED_SUBJECTS:
            out += [(subject_header(name, m), MEASURE_NOTES[m], False) for m in SCORED_MEASURES]
        for name in SECONDARY_COMMENT_SUBJECTS:
            out += [(subject_header(name, m), MEASURE_NOTES[m], False) for m in COMMENT_MEASURES]
        out += [(c.header, c.note, c.text) for c in SECONDARY_COLUMNS]
    return out


@dataclass(frozen=True)
class _Fixed:
    column: Column
    level: str | None            # None: every level; "primary" / "secondary"


@dataclass(frozen=True)
class _Subject:
    name: str                    # catalogue spelling
    code: str
    measure: str                 # catalogue spelling
    field: str
    level: str

    @property
    def header(self) -> str:
        return subject_header(self.name, self.measure)


def _fixed_registry() -> dict[str, _Fixed]:
    out: dict[str, _Fixed] = {}
    for columns, level in ((COMMON_COLUMNS, None), (PRIMARY_COLUMNS, "primary"), (SECONDARY_COLUMNS, "secondary")):
        for column in columns:
            for spelling in (column.header, *column.aliases):
                known = out.get(_key(spelling))
                # "Được lên lớp" is in both level lists with one meaning: it belongs to every level.
                out[_key(spelling)] = _Fixed(column, None if known and known.column == column else level)
    return out


_FIXED = _fixed_registry()
_MEASURES = {**{_key(m): ("primary", m, f) for m, f in PRIMARY_MEASURES.items()},
             **{_key(m): ("secondary", m, f) for m, f in SECONDARY_MEASURES.items()}}


def _catalogue(level: str, extra: dict[str, str]) -> dict[str, tuple[str, str]]:
    """Subject column name (key) → (catalogue spelling, code) for one level."""
    if level == "primary":
        names = dict(PRIMARY_SUBJECTS)
    else:
        names = {**SECONDARY_SCORED_SUBJECTS, **SECONDARY_COMMENT_SUBJECTS}
    names.update(extra)
    out = {_key(name): (_clean(name), code) for name, code in names.items()}
    for alternate, canonical in ALTERNATE_SPELLINGS.items():
        if canonical in names and _key(alternate) not in out:
            out[_key(alternate)] = (canonical, names[canonical])
    return out


def resolve_header(header: str, extra_subjects: dict[str, str] | None = None) -> _Fixed | _Subject:
    """The template column a header names; ``ValueError`` saying why when it names none."""
    key = _key(header)
    if key in _FIXED:
        return _FIXED[key]
    name, sep, measure = _clean(header).rpartition(" - ")
    if sep and _key(measure) in _MEASURES:
        level, measure_name, fld = _MEASURES[_key(measure)]
        found = _catalogue(level, extra_subjects or {}).get(_key(name))
        if found is None:
            raise ValueError(f"subject {name!r} is not in the {level} catalogue (CONTRACT.md; a province "
                             "adds its own subjects with the `subjects` setting)")
        return _Subject(found[0], found[1], measure_name, fld, level)
    raise ValueError("not a template column (CONTRACT.md lists them)")


# --- a row → central-format fields ----------------------------------------------------------------

def _level_code(text: str) -> str:
    key = _key(text)
    if key in LEVEL_NAMES:
        return LEVEL_NAMES[key]
    return key.zfill(2) if key.isdigit() else text


def _set(out: dict[str, Any], path: str, value: Any) -> None:
    head, _, rest = path.partition(".")
    if rest:
        _set(out.setdefault(head, {}), rest, value)
    else:
        out[head] = value


def _certificates(text: str) -> list[dict[str, str]]:
    out = []
    for item in filter(None, (part.strip() for part in text.split(";"))):
        parts = [p.strip() for p in item.split("|")]
        if len(parts) > 3:
            raise ValueError("Chứng chỉ: a certificate has more than three | parts (Tên | ngày cấp | nơi cấp)")
        name, issued, issuer = (parts + ["", ""])[:3]
        out.append({"name": name, "issued_on": issued, "issuer": issuer})
    return out


def to_central(row: dict[str, Any], extra_subjects: dict[str, str] | None = None
               ) -> tuple[dict[str, Any], dict[str, str]]:
    """Map one row (column name → cell text) to central-format fields, no envelope.

    Returns the fields and, for the report, which column each central path came from. A
    present cell is passed on as written (``""`` included), so the central format names the
    field it cannot accept; a column that is absent leaves its field absent.
    """
    if not isinstance(row, dict):
        raise ValueError("the row is not a JSON object of column name → cell")
    cells: list[tuple[_Fixed | _Subject, str]] = []
    for header, value in row.items():
        try:
            column = resolve_header(str(header), extra_subjects)
        except ValueError as exc:
            raise ValueError(f"column {header!r}: {exc}") from None
        if value is not None and not isinstance(value, str):
            # The stored row holds each cell as text (CONTRACT.md): a JSON true, number or object
            # here was never read from a sheet, and becomes no score, name or flag by str().
            raise ValueError(f"column {header!r}: the cell is {type(value).__name__}, not text")
        cells.append((column, value or ""))

    level_cell = next((v for c, v in cells if isinstance(c, _Fixed) and c.column.field == "level"), None)
    if level_cell is None:
        raise ValueError("column 'Cấp học' is missing")
    level = _level_code(level_cell)
    shape = {"02": "primary", "03": "secondary", "04": "secondary"}.get(level)
    if shape is None:
        # An unknown level is the central format's error to name (``level``); pick the mapping
        # by the level-specific cells that are filled so that is the error reported.
        filled = {c.level for c, v in cells if v.strip() and c.level}
        shape = filled.pop() if len(filled) == 1 else "primary"
    for column, value in cells:
        if column.level not in (None, shape) and value.strip():
            header = column.header if isinstance(column, _Subject) else column.column.header
            raise ValueError(f"column {header!r} belongs to {column.level} records, but Cấp học is {level_cell!r}")

    out: dict[str, Any] = {}
    origin: dict[str, str] = {}
    subjects: dict[str, dict[str, Any]] = {}
    subject_origin: dict[str, dict[str, str]] = {}
    for column, value in cells:
        if column.level not in (None, shape):
            continue
        if isinstance(column, _Subject):
            entry = subjects.setdefault(column.code, {"subject_code": column.code, "subject_name": column.name})
            entry[column.field] = value
            subject_origin.setdefault(column.code, {})[column.field] = column.header
            continue
        spec = column.column
        if spec.field is None:
            continue
        path = spec.field
        origin[path] = spec.header
        if path == "level":
            value = level
        elif path == "awards":
            value = [a.strip() for a in value.split(";") if a.strip()]
        elif path == "certificates":
            value = _certificates(value)
        elif not value.strip() and (spec.blank_is_default or path.split(".")[-1] in SUBJECT_COMPETENCY_FIELDS):
            continue  # the documented default, or a subject competency the school did not assess
        _set(out, path, value)
    kept = [code for code, entry in subjects.items()
            if any(str(v).strip() for k, v in entry.items() if k not in ("subject_code", "subject_name"))]
    # The catalogue's order, not the sheet's: the payload's keys are sorted (so reordered columns
    # are not a new version), and a transcript lists its subjects in the Ministry's order.
    # The form's order for the level (hub.catalogue) first, then the template's for the rest.
    form_order = [_key(subject.name) for subject in FORM_SUBJECTS.get(level, ())]
    rank = {key: i for i, key in enumerate(dict.fromkeys(form_order + list(_catalogue(shape, {}))))}
    kept.sort(key=lambda code: rank.get(_key(subjects[code]["subject_name"]), len(rank)))
    if kept:
        out["subjects"] = [subjects[code] for code in kept]
        for i, code in enumerate(kept):
            headers = subject_origin[code]
            origin[f"subjects[{i}]"] = next(iter(headers.values())).rsplit(" - ", 1)[0]
            for fld, header in headers.items():
                origin[f"subjects[{i}].{fld}"] = header
    return out, origin


def column_for(path: str, origin: dict[str, str]) -> str:
    """The column a central error path (``subjects[2].year_average``) came from, or ``""``."""
    while path:
        if path in origin:
            return origin[path]
        cut = max(path.rfind("."), path.rfind("["))
        path = path[:cut] if cut > 0 else ""
    return ""


def row_from_central(record: dict[str, Any]) -> dict[str, str]:
    """The template row for a central-format transcript (``hub.kit.synthetic`` shape).

    The inverse of ``to_central``, written as a school types it (``dd/MM/yyyy``, ``Nam``/``Nữ``,
    comma decimals): the templates' example rows, ``examples/`` and the tests use it.
    """
    def text(value: Any, path: str = "") -> str:
        if value is None:
            return ""
        if isinstance(value, bool):
            return "Có" if value else "Không"
        if path.endswith("gender"):
            return {0: "", 1: "Nam", 2: "Nữ"}[int(value)]
        if isinstance(value, float):
            return f"{value:g}".replace(".", ",")
        if isinstance(value, str) and re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
            year, month, day = value.split("-")
            return f"{day}/{month}/{year}"
        return str(value)

    def get(path: str) -> Any:
        node: Any = record
        for part in path.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        return node

    primary = "qualities" in record   # not by level: a deliberately wrong level keeps its shape
    row: dict[str, str] = {}
    for column in COMMON_COLUMNS + (PRIMARY_COLUMNS if primary else SECONDARY_COLUMNS):
        if column.field is None or column.header in row:
            continue
        value = get(column.field)
        if column.field == "awards":
            row[column.header] = "; ".join(value or [])
        elif column.field == "certificates":
            row[column.header] = "; ".join(
                " | ".join(text(c.get(k), k) for k in ("name", "issued_on", "issuer")) for c in value or [])
        else:
            row[column.header] = text(value, column.field)
    measures = PRIMARY_MEASURES if primary else SECONDARY_MEASURES
    names = {code: name for name, code in (PRIMARY_SUBJECTS if primary else
                                            {**SECONDARY_SCORED_SUBJECTS, **SECONDARY_COMMENT_SUBJECTS}).items()}
    for subject in record["subjects"]:
        name = names[subject["subject_code"]]
        for measure, fld in measures.items():
            if fld in subject:
                row[subject_header(name, measure)] = text(subject[fld], fld)
    return row


# --- reading a file -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Problem:
    """One line of a file's report."""
    row: int | None              # the spreadsheet row (header = its own row), None: the file
    column: str
    outcome: str                 # refused (not sent) | quarantined (sent; the hub holds it) | file
    reason: str


@dataclass(frozen=True)
class FilePage(Page):
    """A page that is one dropped file: ``acknowledge`` files it away with its report."""
    path: Path = Path()
    problems: tuple[Problem, ...] = ()
    rows_read: int = 0


@dataclass
class _Table:
    rows: list[tuple[int, list[tuple[str, str | None]]]] = field(default_factory=list)  # (row no., [(text, unreadable)])
    strict_width: bool = False   # CSV: a row must have the header's cell count


def _cell_text(value: Any) -> tuple[str, str | None]:
    """An XLSX cell as text, or why it cannot be read."""
    if value is None:
        return "", None
    if isinstance(value, bool):
        return ("1" if value else "0"), None
    if isinstance(value, int):
        return str(value), None
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            return "", "the cell is not a finite number"
        # 15 significant digits drops binary noise (8.299999999999999 → 8.3) but keeps 8.25.
        return format(value, ".15g"), None
    if isinstance(value, dt.datetime):
        return (value.date().isoformat() if value.time() == dt.time() else value.isoformat()), None
    if isinstance(value, (dt.date, dt.time)):
        return value.isoformat(), None
    if isinstance(value, str):
        if value.strip() in EXCEL_ERRORS:
            return value, f"the cell holds the spreadsheet error {value.strip()}"
        return value, None
    return "", f"unreadable cell of type {type(value).__name__}"


# A workbook is a zip of XML: a small file can expand to gigabytes, or describe a million empty
# rows that take minutes and memory to walk. A school's class or grade file is far inside these.
XLSX_MAX_UNCOMPRESSED = 100 * 1024 * 1024   # bytes, all parts together
XLSX_MAX_ROWS = 20_000                       # rows of the first sheet, empty ones included
XLSX_MAX_COLUMNS = 1_000                     # cells in one row


def _check_xlsx_size(data: bytes) -> None:
    """Refuse a workbook whose parts expand past ``XLSX_MAX_UNCOMPRESSED`` before parsing any."""
    import zipfile

    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            total = sum(info.file_size for info in archive.infolist())
            if total > XLSX_MAX_UNCOMPRESSED:
                raise _FileError(f"the workbook expands to {total} bytes, more than {XLSX_MAX_UNCOMPRESSED}: "
                                 "save the class's sheet alone, as .xlsx or CSV UTF-8")
            # openpyxl walks a whole sheet that records no dimension just to open the workbook:
            # count its rows first, on the compressed stream, at C speed.
            for info in archive.infolist():
                if info.filename.startswith("xl/worksheets/") and info.filename.endswith(".xml"):
                    rows, tail = 0, b""
                    with archive.open(info) as part:
                        while chunk := part.read(1 << 20):
                            rows += (tail + chunk).count(b"<row")
                            tail = chunk[-3:]
                            if rows > XLSX_MAX_ROWS:
                                raise _FileError(f"a sheet has more than {XLSX_MAX_ROWS} rows (empty rows count): "
                                                 "delete the rows below the data, or save it as CSV UTF-8")
    except zipfile.BadZipFile as exc:
        raise _FileError(f"cannot be opened as an XLSX workbook: {exc}") from None


def _read_xlsx(data: bytes) -> _Table:
    import openpyxl

    _check_xlsx_size(data)
    table = _Table()
    # data_only: formulas give the value the spreadsheet program last computed, not "=A1+B1".
    book = openpyxl.load_workbook(io.BytesIO(data), read_only=True, data_only=True)
    try:
        sheet = book.worksheets[0]
        # Read-only mode trusts the dimension the writing program recorded; some exporters record
        # a wrong one, and rows past it would vanish silently. Read every row that is there.
        sheet.reset_dimensions()
        for number, cells in enumerate(sheet.iter_rows(), start=1):
            if number > XLSX_MAX_ROWS:
                raise _FileError(f"the sheet has more than {XLSX_MAX_ROWS} rows (empty rows count): delete the "
                                 "rows below the data, or save it as CSV UTF-8")
            if len(cells) > XLSX_MAX_COLUMNS:
                raise _FileError(f"row {number} has more than {XLSX_MAX_COLUMNS} cells: delete the columns "
                                 "right of the data, or save it as CSV UTF-8")
            row = []
            for cell in cells:
                if getattr(cell, "data_type", None) == "e":
                    row.append((str(cell.value), f"the cell holds the spreadsheet error {cell.value}"))
                else:
                    row.append(_cell_text(cell.value))
            table.rows.append((number, row))
    finally:
        book.close()
    return table


def _read_csv(data: bytes, encoding: str, delimiter: str | None) -> _Table:
    text = data.decode(encoding)
    if delimiter is None:
        # Excel in a Vietnamese locale separates with ';' (the comma is the decimal mark). The
        # header is the widest of the first lines; a title row above it may hold a stray comma.
        head = text.splitlines()[:HEADER_SEARCH_ROWS]
        delimiter = max((",", ";", "\t"), key=lambda d: max((line.count(d) for line in head), default=0))
    table = _Table(strict_width=True)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    for number, cells in enumerate(reader, start=1):
        row = []
        for value in cells:
            text_value, problem = _cell_text(value)
            if problem is None and "\x00" in value:
                problem = "the cell holds a NUL character"
            row.append((text_value, problem))
        table.rows.append((number, row))
    return table


class _FileError(Exception):
    """The whole file cannot be used; the message goes in its report."""


@dataclass(frozen=True)
class _Row:
    number: int
    cells: dict[str, str]
    source_id: str
    deleted: bool


def parse_table(table: _Table, extra_subjects: dict[str, str]) -> tuple[list[_Row], list[Problem], int]:
    """Good rows, problems and the number of data rows read. ``_FileError`` if no row can be."""
    header_at = None
    for index, (number, cells) in enumerate(table.rows[:HEADER_SEARCH_ROWS]):
        named = {_FIXED[_key(text)].column.header for text, _ in cells if _key(text) in _FIXED}
        if all(name in named for name in IDENTITY):
            header_at = index
            break
    if header_at is None:
        raise _FileError(f"no header row with {', '.join(IDENTITY)} in the first {HEADER_SEARCH_ROWS} rows")
    header_row, header_cells = table.rows[header_at]

    problems: list[Problem] = []
    columns: list[_Fixed | _Subject | None] = []
    seen: dict[str, str] = {}
    for text, unreadable in header_cells:
        if unreadable or not text.strip():
            columns.append(None)
            continue
        try:
            column = resolve_header(text, extra_subjects)
        except ValueError as exc:
            problems.append(Problem(header_row, text, "file", str(exc)))
            columns.append(None)
            continue
        canonical = column.header if isinstance(column, _Subject) else column.column.header
        if canonical in seen:
            problems.append(Problem(header_row, text, "file", f"the same column as {seen[canonical]!r}"))
        seen[canonical] = text
        columns.append(column)
    if problems:
        # A column the adapter does not know may hold data the transcript needs: no row is
        # read rather than every row read without it.
        raise _FileError("the header has columns the template does not", problems)
    width = len(header_cells)

    def canonical(column: _Fixed | _Subject) -> str:
        return column.header if isinstance(column, _Subject) else column.column.header

    rows: list[_Row] = []
    read = 0
    for number, cells in table.rows[header_at + 1:]:
        if all(not text.strip() and not bad for text, bad in cells):
            continue  # blank rows (Excel's formatted-but-empty tail) are not data
        read += 1
        mine: list[Problem] = []
        if table.strict_width and len(cells) < width:
            mine.append(Problem(number, "", "refused", f"the row has {len(cells)} cells, the header {width}"))
        for i, (text, bad) in enumerate(cells):
            column = columns[i] if i < width else None
            if i >= width or column is None:
                if text.strip() or bad:
                    where = f"cell {i + 1}" if i >= width else f"column {i + 1} (no header)"
                    mine.append(Problem(number, where, "refused",
                                        f"a value in a column without a header: {text[:40]!r}"))
                continue
            if bad:
                mine.append(Problem(number, canonical(column), "refused", bad))
        values: dict[str, str] = {}
        for column, (text, _) in zip(columns, cells):
            if column is not None:
                values[canonical(column)] = text
        for column in columns:
            if column is not None:
                values.setdefault(canonical(column), "")  # a short XLSX row: trailing cells are blank
        identity = [_clean(values.get(name, "")) for name in IDENTITY]
        for name, value in zip(IDENTITY, identity):
            if not value:
                mine.append(Problem(number, name, "refused", "empty: the row cannot be identified"))
        deleted = False
        recall = _key(values.pop(RECALL, ""))
        if recall in ("x", "1", "có", "co", "true"):
            deleted = True
        elif recall not in ("", "0", "không", "khong", "false"):
            mine.append(Problem(number, RECALL, "refused", f"{recall!r} is not x / Có / Không"))
        values.pop(ROW_NUMBER, None)  # a display number: reordering rows must not make new versions
        if mine:
            problems.extend(mine)
            continue
        rows.append(_Row(number, values, "/".join(identity), deleted))

    by_id: dict[str, list[int]] = {}
    for row in rows:
        by_id.setdefault(row.source_id, []).append(row.number)
    duplicated = {sid: numbers for sid, numbers in by_id.items() if len(numbers) > 1}
    if duplicated:
        # Which of two rows for one student and year is right is the school's call, not ours.
        for row in rows:
            if row.source_id in duplicated:
                others = ", ".join(str(n) for n in duplicated[row.source_id] if n != row.number)
                problems.append(Problem(row.number, "Mã học sinh", "refused",
                                        f"the same Mã trường, Mã học sinh and Năm học as row {others}"))
        rows = [r for r in rows if r.source_id not in duplicated]
    return rows, problems, read


# --- the adapter ----------------------------------------------------------------------------------

class SpreadsheetSettings(PluginSettings):
    """The ``settings`` of a ``spreadsheet`` adapter in the hub's YAML."""
    directory: Path = Field(description="The watched folder; done/ and rejected/ are created inside it")
    create_directory: bool = Field(
        default=False, description="Create the folder at start-up if it is missing (a first run); otherwise "
                                   "a missing folder is an error, since it usually means a typo or an unmounted share")
    settle_seconds: float = Field(
        default=5.0, ge=0, le=3600,
        description="A file is read only once its size and modification time have not changed for this long")
    encoding: str = Field(default="utf-8-sig", description="Text encoding of CSV files (utf-8-sig reads Excel's BOM)")
    delimiter: Literal[",", ";", "\t"] | None = Field(
        default=None, description="CSV separator; empty: whichever of , ; tab the header line uses most")
    max_file_bytes: int = Field(default=50 * 1024 * 1024, ge=1, description="Larger files are rejected unread")
    subjects: dict[str, str] = Field(
        default_factory=dict, description="Extra subject column names → subject codes, beyond the catalogue")

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        try:
            codecs.lookup(value)
        except LookupError:
            raise ValueError(f"unknown encoding {value!r}") from None
        return value


def _fit_name(stem: str, suffix: str, folder: Path, reserve: int = 0) -> str:
    """``stem + suffix``, with ``stem`` shortened (ending in ``~`` and a short hash of the whole
    stem, so two long names stay apart) when the file system's name limit in ``folder`` is too
    small; ``reserve`` bytes are left free for a temporary file's prefix and suffix."""
    try:
        limit = os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    room = limit - reserve - len(os.fsencode(suffix))
    if len(os.fsencode(stem)) <= room:
        return stem + suffix
    tag = "~" + hashlib.sha256(stem.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    cut = stem
    while cut and len(os.fsencode(cut + tag)) > room:
        cut = cut[:-1]
    return cut + tag + suffix


class SpreadsheetAdapter(Adapter):
    """Reads transcript sheets dropped in a folder; one page per file, filed away once committed.

    The folder is the cursor: a file still in it has not been committed. ``Page.cursor`` is the
    file's name, kept by the hub only so an operator sees the last file read.
    """
    name: ClassVar[str] = "spreadsheet"
    Settings: ClassVar[type[PluginSettings]] = SpreadsheetSettings
    simulator: ClassVar[str | None] = "adapters.spreadsheet.simulator:SpreadsheetSimulator"

    settings: SpreadsheetSettings

    def __init__(self, settings: PluginSettings, context: PluginContext):
        super().__init__(settings, context)
        self._observed: dict[str, tuple[int, int, float]] = {}   # name → (size, mtime_ns, stable since)
        self._clock = time.monotonic  # settling is measured on this clock (tests substitute one)

    @property
    def _extra_subjects(self) -> dict[str, str]:
        # ``hocba-hub normalize`` builds the adapter with unvalidated defaults: no subjects then.
        return getattr(self.settings, "subjects", None) or {}

    # --- lifecycle ---------------------------------------------------------------------------

    def _folder_problem(self) -> str | None:
        folder = self.settings.directory
        if not folder.is_dir():
            return f"directory {str(folder)!r} does not exist or is not a folder (settings.directory)"
        if not os.access(folder, os.R_OK | os.W_OK | os.X_OK):
            return f"directory {str(folder)!r} is not readable and writable by the hub (settings.directory)"
        return None

    async def open(self) -> None:
        # A missing folder is a typo or an unmounted share: say so at start-up, unless the
        # province asked for it to be created.
        if self.settings.create_directory:
            self.settings.directory.mkdir(parents=True, exist_ok=True)
        problem = self._folder_problem()
        if problem:
            raise PluginError(problem)
        for sub in (DONE, REJECTED):
            (self.settings.directory / sub).mkdir(exist_ok=True)

    async def check(self) -> Health:
        problem = self._folder_problem()
        if problem:
            return Health(False, problem)
        waiting = sum(1 for p in self.settings.directory.iterdir() if self._candidate(p.name) and p.is_file())
        return Health(True, f"{waiting} file(s) waiting in {self.settings.directory}")

    # --- finding settled files ------------------------------------------------------------------

    @staticmethod
    def _candidate(name: str) -> bool:
        lower = name.lower()
        if name.startswith(("~$", ".")) or lower.endswith(".tmp"):
            return False  # Excel lock files, hidden and temporary files: someone is still writing
        return lower.endswith(ACCEPTED_SUFFIXES + UNSUPPORTED_SUFFIXES)

    def _scan(self) -> tuple[list[Path], float | None]:
        """Files settled now (oldest first), and seconds until the next unsettled one may be."""
        now = self._clock()
        settle = self.settings.settle_seconds
        ready: list[tuple[int, str, Path]] = []
        wait: float | None = None
        present = set()
        with os.scandir(self.settings.directory) as entries:
            for entry in entries:
                if not self._candidate(entry.name) or not entry.is_file(follow_symlinks=False):
                    continue
                try:
                    info = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                present.add(entry.name)
                signature = (info.st_size, info.st_mtime_ns)
                seen = self._observed.get(entry.name)
                if seen is None or seen[:2] != signature:
                    # Copying keeps the source's mtime on many systems, so a file's age says
                    # nothing; only an unchanged size and mtime across time shows it is complete.
                    self._observed[entry.name] = (*signature, now)
                    since = now
                else:
                    since = seen[2]
                age = now - since
                if age >= settle:
                    ready.append((info.st_mtime_ns, entry.name, Path(entry.path)))
                else:
                    wait = settle - age if wait is None else min(wait, settle - age)
        for name in set(self._observed) - present:
            del self._observed[name]
        return [path for _, _, path in sorted(ready)], wait

    async def fetch(self, cursor: str | None) -> AsyncIterator[Page]:
        yielded: set[str] = set()
        # Two looks: files that settle within ``settle_seconds`` go in this pull rather than the next.
        for look in range(2):
            ready, wait = await asyncio.to_thread(self._scan)
            for path in ready:
                if path.name in yielded:
                    continue
                page = await asyncio.to_thread(self._read, path)
                if page is not None:
                    yielded.add(path.name)
                    yield page
            if wait is None or look == 1 or wait > MAX_WAIT_IN_PULL:
                return
            await asyncio.sleep(wait)

    # --- reading one file ---------------------------------------------------------------------

    def _read(self, path: Path) -> FilePage | None:
        """The page for one settled file; ``None`` if it vanished or changed while being read."""
        try:
            info = path.stat()
            if info.st_size > self.settings.max_file_bytes:
                return self._rejected(path, f"the file is {info.st_size} bytes, more than max_file_bytes "
                                            f"({self.settings.max_file_bytes})")
            data = path.read_bytes()
            after = path.stat()
        except FileNotFoundError:
            return None
        if (after.st_size, after.st_mtime_ns) != (info.st_size, info.st_mtime_ns) or len(data) != after.st_size:
            self._observed.pop(path.name, None)  # still being written after all: wait for it to settle again
            return None
        suffix = path.suffix.lower()
        if suffix in UNSUPPORTED_SUFFIXES:
            return self._rejected(path, f"{suffix} files are not read: save the sheet as .xlsx or CSV UTF-8")
        try:
            if suffix == ".xlsx":
                try:
                    table = _read_xlsx(data)
                except _FileError:
                    raise
                except Exception as exc:  # any parser failure on a dropped file means "unreadable"
                    raise _FileError(f"cannot be opened as an XLSX workbook: {type(exc).__name__}: {exc}") from None
            else:
                try:
                    table = _read_csv(data, self.settings.encoding, self.settings.delimiter)
                except UnicodeDecodeError as exc:
                    raise _FileError(f"not {self.settings.encoding} text (byte {exc.start}): save it as "
                                     "CSV UTF-8, or set the adapter's encoding") from None
                except csv.Error as exc:
                    raise _FileError(f"not a readable CSV file: {exc}") from None
            rows, problems, read = parse_table(table, self._extra_subjects)
        except _FileError as exc:
            details = exc.args[1] if len(exc.args) > 1 else []
            return self._rejected(path, exc.args[0], details)

        modified = dt.datetime.fromtimestamp(info.st_mtime, dt.timezone.utc)
        records = []
        for row in rows:
            payload = json.dumps(row.cells, ensure_ascii=False, sort_keys=True).encode("utf-8")
            raw = RawRecord(row.source_id, payload, updated_at=modified, deleted=row.deleted)
            records.append(raw)
            problems.extend(self._check(raw, row.number))
        problems.sort(key=lambda p: (p.row or 0, p.outcome))
        return FilePage(records, path.name, path=path, problems=tuple(problems), rows_read=read)

    def _rejected(self, path: Path, reason: str, details: Iterable[Problem] = ()) -> FilePage:
        return FilePage([], path.name, path=path, problems=(Problem(None, "", "file", reason), *details))

    def _check(self, raw: RawRecord, number: int) -> list[Problem]:
        """What the hub will quarantine this row for, so the school reads it in the report too."""
        try:
            data, origin = to_central(json.loads(raw.payload), self._extra_subjects)
            parse_transcript({**data, **_CHECK_ENVELOPE})
        except ValidationError as exc:
            out = []
            for line in field_errors(exc):
                path, _, message = line.partition(": ")
                out.append(Problem(number, column_for(path, origin), "quarantined", f"{path}: {message}"))
            return out
        except (ValueError, KeyError, TypeError) as exc:
            return [Problem(number, "", "quarantined", str(exc))]
        return []

    # --- after the commit ----------------------------------------------------------------------

    async def acknowledge(self, page: Page) -> None:
        if isinstance(page, FilePage):
            await asyncio.to_thread(self._file_away, page)

    def _file_away(self, page: FilePage) -> None:
        folder = self.settings.directory / (DONE if page.records else REJECTED)
        folder.mkdir(exist_ok=True)
        target = folder / page.path.name
        if target.exists():
            # A school re-sends a corrected file under the same name: keep both.
            stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
            target = folder / _fit_name(page.path.stem, f".{stamp}{page.path.suffix}", folder)
            n = 1
            while target.exists():
                target = folder / _fit_name(page.path.stem, f".{stamp}-{n}{page.path.suffix}", folder)
                n += 1
        # A name as long as the file system allows has no room for ".report.csv": the report's
        # name is shortened instead (an error here would stop the folder at this file for good).
        report = folder / _fit_name(target.name, ".report.csv", folder, reserve=len(".tmp") + 1)
        # The report first: a crash between the two leaves the file to be read again, and its
        # report is rewritten; the other order could leave a filed file without a report.
        self._write_report(report, page)
        try:
            page.path.rename(target)
        except FileNotFoundError:
            log.warning("spreadsheet.file_gone", file=page.path.name)
            return
        self._observed.pop(page.path.name, None)
        refused = sum(1 for p in page.problems if p.outcome == "refused")
        log.info("spreadsheet.filed", file=page.path.name, to=str(target.relative_to(self.settings.directory)),
                 records=len(page.records), refused_problems=refused)

    @staticmethod
    def _write_report(report: Path, page: FilePage) -> None:
        quarantined = {p.row for p in page.problems if p.outcome == "quarantined"}
        refused = {p.row for p in page.problems if p.outcome == "refused"}
        if page.records or page.rows_read:
            summary = (f"{page.rows_read} row(s) read: {len(page.records)} sent to the hub "
                       f"({len(quarantined)} of them will be quarantined), {len(refused)} refused")
        else:
            summary = "no row was read: the file is rejected"
        temp = report.with_name("." + report.name + ".tmp")
        # utf-8-sig: Excel opens a BOM-marked CSV with the Vietnamese text intact.
        with temp.open("w", encoding="utf-8-sig", newline="") as out:
            writer = csv.writer(out)
            writer.writerow(REPORT_FIELDS)
            writer.writerow(["", "", "summary", summary])
            # Column names and reasons quote the school's file: never a formula for Excel.
            for p in page.problems:
                writer.writerow([p.row if p.row is not None else "", csv_text(p.column), p.outcome, csv_text(p.reason)])
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, report)

    # --- normalise ---------------------------------------------------------------------------

    def read_file(self, name: str, data: bytes) -> list[RawRecord]:
        """A CSV or XLSX file's rows as ``fetch`` stores them (a ``.json`` file: one stored row)."""
        suffix = Path(name).suffix.lower()
        if suffix == ".json":
            return [RawRecord(Path(name).stem, data)]
        encoding = getattr(self.settings, "encoding", None) or "utf-8-sig"
        try:
            table = _read_xlsx(data) if suffix == ".xlsx" else _read_csv(
                data, encoding, getattr(self.settings, "delimiter", None))
            rows, problems, _ = parse_table(table, self._extra_subjects)
        except _FileError as exc:
            raise ValueError(exc.args[0]) from None
        except Exception as exc:  # a file that is no spreadsheet: say so, never a traceback
            raise ValueError(f"cannot be read as {suffix or 'CSV'}: {type(exc).__name__}") from None
        refused = [p for p in problems if p.outcome in ("refused", "file")]
        if refused and not rows:
            raise ValueError("; ".join(f"row {p.row}: {p.reason}" if p.row else p.reason for p in refused))
        return [RawRecord(row.source_id, json.dumps(row.cells, ensure_ascii=False, sort_keys=True).encode("utf-8"),
                          deleted=row.deleted) for row in rows]

    def normalize(self, raw: RawRecord) -> dict[str, Any]:
        row = load_json(raw.payload, "the row")
        data, _ = to_central(row, self._extra_subjects)
        return data


def iter_rows(records: Iterable[dict[str, Any]]) -> Iterator[dict[str, str]]:
    """Template rows for central-format transcripts, numbered (``STT``) from 1."""
    for number, record in enumerate(records, start=1):
        yield {ROW_NUMBER: str(number), **row_from_central(record)}
