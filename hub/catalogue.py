"""The subject catalogue: which subjects a transcript of each level and grade may carry.

One table of data for the whole hub (the central format checks records against it; the
documents render the official forms from it). Sources, Chương trình giáo dục phổ thông 2018
(Thông tư 32/2018/TT-BGDĐT) and the assessment circulars:

- **Primary** (Thông tư 27/2020/TT-BGDĐT), three programmes: grades 1–2, grade 3, grades 4–5.
  Every subject is assessed by level (T/H/C) and comment; the subjects with a periodic test
  (bài kiểm tra định kì, score 1–10) are Tiếng Việt, Toán, and from grade 3 Ngoại ngữ 1 and Tin
  học và Công nghệ, from grade 4 Lịch sử và Địa lí and Khoa học (Điều 7).
- **Lower secondary** (Thông tư 22/2021/TT-BGDĐT), grades 6–9: scored subjects (comment
  combined with a score) and subjects assessed by comment only (Đ/CĐ: Giáo dục thể chất, Nghệ
  thuật/Âm nhạc/Mĩ thuật, Hoạt động trải nghiệm – hướng nghiệp, Nội dung giáo dục của địa
  phương; Điều 5).
- **Upper secondary** (Thông tư 22), grades 10–12: compulsory subjects (Ngữ văn, Toán, Ngoại
  ngữ 1, Lịch sử, Giáo dục thể chất, Giáo dục quốc phòng và an ninh, Hoạt động trải nghiệm –
  hướng nghiệp, Nội dung giáo dục của địa phương) and electives (Địa lí, Giáo dục kinh tế và
  pháp luật, Vật lí, Hoá học, Sinh học, Công nghệ, Tin học, Âm nhạc, Mĩ thuật).

Optional subjects (Tiếng dân tộc thiểu số, Ngoại ngữ 2; Ngoại ngữ 1 in grades 1–2) are listed
with ``optional`` kind. A province's local education content may carry its own code suffix
(``GDDP-HN``): it is the same catalogue entry (``GDDP``).

The public API:

- ``subjects_for(level, grade)`` → the ``Subject`` entries of that grade, in form order;
- ``level_subjects(level)`` → every subject of a level (``"secondary"``: lower and upper);
- ``subject(level, grade, code)`` → one entry, or ``None`` if the code is not taught there;
- ``name_of(code)`` → the subject's official name (any level);
- ``is_scored(level, grade, code)`` / ``is_comment_only(...)`` (secondary) and
  ``has_periodic_test(grade, code)`` (primary);
- ``age_range(grade)`` → the ages a student of that grade may plausibly have (rule
  ``age_for_grade``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["Subject", "subjects_for", "level_subjects", "subject", "name_of", "is_scored", "is_comment_only",
           "has_periodic_test", "age_range", "canonical_code", "PRIMARY", "LOWER_SECONDARY",
           "UPPER_SECONDARY", "AGE_RULE"]

PRIMARY, LOWER_SECONDARY, UPPER_SECONDARY = "02", "03", "04"
Kind = Literal["compulsory", "elective", "optional"]


@dataclass(frozen=True)
class Subject:
    """One subject of one grade: its code, official name, how it is assessed, and its kind.

    ``assessment``: ``level`` (primary: T/H/C and comment), ``score`` (secondary: averages),
    ``comment`` (secondary: Đ/CĐ). ``periodic_test``: primary subjects with a test score.
    ``part_of``: Âm nhạc and Mĩ thuật are the two parts of Nghệ thuật (``NT``); a school
    reports either the whole or its parts.
    """
    code: str
    name: str
    assessment: Literal["level", "score", "comment"]
    kind: Kind = "compulsory"
    periodic_test: bool = False
    part_of: str | None = None


_PARTS = {"AN": "NT", "MT": "NT"}


def _p(code: str, name: str, kind: Kind = "compulsory", test: bool = False) -> Subject:
    return Subject(code, name, "level", kind, test, _PARTS.get(code))


def _s(code: str, name: str, kind: Kind = "compulsory") -> Subject:
    return Subject(code, name, "score", kind)


def _c(code: str, name: str, kind: Kind = "compulsory") -> Subject:
    # In upper secondary Âm nhạc and Mĩ thuật are electives of their own, not parts of NT.
    return Subject(code, name, "comment", kind, part_of=_PARTS.get(code) if kind == "compulsory" else None)


# Each level's subjects in one order (the forms' and the templates' order); a grade's list is
# the part of it taught in that grade.
_PRIMARY_ORDER = (
    "TV", "TOAN", "NN1", "DD", "TNXH", "LSDL", "KH", "THCN", "GDTC", "NT", "AN", "MT", "HDTN", "TDT")
_SECONDARY_ORDER = (
    "TOAN", "NV", "NN1", "LS", "KHTN", "LSDL", "CN", "TH", "GDCD", "VL", "HH", "SH", "DL", "GDKTPL", "GDQPAN",
    "NN2", "TDT", "GDTC", "NT", "AN", "MT", "HDTN", "GDDP")


def _ordered(order: tuple[str, ...], *subjects: Subject) -> tuple[Subject, ...]:
    return tuple(sorted(subjects, key=lambda s: order.index(s.code)))


_PRIMARY_1_2 = _ordered(
    _PRIMARY_ORDER,
    _p("TV", "Tiếng Việt", test=True), _p("TOAN", "Toán", test=True), _p("DD", "Đạo đức"),
    _p("TNXH", "Tự nhiên và Xã hội"), _p("GDTC", "Giáo dục thể chất"), _p("NT", "Nghệ thuật"),
    _p("AN", "Âm nhạc"), _p("MT", "Mĩ thuật"), _p("HDTN", "Hoạt động trải nghiệm"),
    _p("NN1", "Ngoại ngữ 1", "optional"), _p("TDT", "Tiếng dân tộc thiểu số", "optional"),
)
_PRIMARY_3 = _ordered(
    _PRIMARY_ORDER,
    _p("TV", "Tiếng Việt", test=True), _p("TOAN", "Toán", test=True), _p("NN1", "Ngoại ngữ 1", test=True),
    _p("DD", "Đạo đức"), _p("TNXH", "Tự nhiên và Xã hội"), _p("THCN", "Tin học và Công nghệ", test=True),
    _p("GDTC", "Giáo dục thể chất"), _p("NT", "Nghệ thuật"), _p("AN", "Âm nhạc"), _p("MT", "Mĩ thuật"),
    _p("HDTN", "Hoạt động trải nghiệm"), _p("TDT", "Tiếng dân tộc thiểu số", "optional"),
)
_PRIMARY_4_5 = _ordered(
    _PRIMARY_ORDER,
    _p("TV", "Tiếng Việt", test=True), _p("TOAN", "Toán", test=True), _p("NN1", "Ngoại ngữ 1", test=True),
    _p("DD", "Đạo đức"), _p("LSDL", "Lịch sử và Địa lí", test=True), _p("KH", "Khoa học", test=True),
    _p("THCN", "Tin học và Công nghệ", test=True), _p("GDTC", "Giáo dục thể chất"), _p("NT", "Nghệ thuật"),
    _p("AN", "Âm nhạc"), _p("MT", "Mĩ thuật"), _p("HDTN", "Hoạt động trải nghiệm"),
    _p("TDT", "Tiếng dân tộc thiểu số", "optional"),
)
_LOWER_SECONDARY = _ordered(
    _SECONDARY_ORDER,
    _s("NV", "Ngữ văn"), _s("TOAN", "Toán"), _s("NN1", "Ngoại ngữ 1"), _s("GDCD", "Giáo dục công dân"),
    _s("LSDL", "Lịch sử và Địa lí"), _s("KHTN", "Khoa học tự nhiên"), _s("CN", "Công nghệ"), _s("TH", "Tin học"),
    _c("GDTC", "Giáo dục thể chất"), _c("NT", "Nghệ thuật"), _c("AN", "Âm nhạc"), _c("MT", "Mĩ thuật"),
    _c("HDTN", "Hoạt động trải nghiệm, hướng nghiệp"), _c("GDDP", "Nội dung giáo dục của địa phương"),
    _s("TDT", "Tiếng dân tộc thiểu số", "optional"), _s("NN2", "Ngoại ngữ 2", "optional"),
)
_UPPER_SECONDARY = _ordered(
    _SECONDARY_ORDER,
    _s("NV", "Ngữ văn"), _s("TOAN", "Toán"), _s("NN1", "Ngoại ngữ 1"), _s("LS", "Lịch sử"),
    _s("GDQPAN", "Giáo dục quốc phòng và an ninh"),
    _c("GDTC", "Giáo dục thể chất"), _c("HDTN", "Hoạt động trải nghiệm, hướng nghiệp"),
    _c("GDDP", "Nội dung giáo dục của địa phương"),
    _s("DL", "Địa lí", "elective"), _s("GDKTPL", "Giáo dục kinh tế và pháp luật", "elective"),
    _s("VL", "Vật lí", "elective"), _s("HH", "Hoá học", "elective"), _s("SH", "Sinh học", "elective"),
    _s("CN", "Công nghệ", "elective"), _s("TH", "Tin học", "elective"),
    _c("AN", "Âm nhạc", "elective"), _c("MT", "Mĩ thuật", "elective"),
    _s("TDT", "Tiếng dân tộc thiểu số", "optional"), _s("NN2", "Ngoại ngữ 2", "optional"),
)

_BY_GRADE: dict[tuple[str, int], tuple[Subject, ...]] = {
    **{(PRIMARY, g): _PRIMARY_1_2 for g in (1, 2)},
    (PRIMARY, 3): _PRIMARY_3,
    **{(PRIMARY, g): _PRIMARY_4_5 for g in (4, 5)},
    **{(LOWER_SECONDARY, g): _LOWER_SECONDARY for g in range(6, 10)},
    **{(UPPER_SECONDARY, g): _UPPER_SECONDARY for g in range(10, 13)},
}
_NAMES = {s.code: s.name for group in _BY_GRADE.values() for s in group}

# Local education content is written per province; its code may carry the province's suffix.
_LOCAL_CONTENT = "GDDP"


def canonical_code(code: str) -> str:
    """The catalogue code a vendor's code stands for: case-insensitive, ``GDDP-…`` → ``GDDP``."""
    code = code.strip().upper()
    if code.startswith(_LOCAL_CONTENT + "-") and len(code) > len(_LOCAL_CONTENT) + 1:
        return _LOCAL_CONTENT
    return code


def level_subjects(level: str) -> tuple[Subject, ...]:
    """Every subject of any grade of ``level``, once each, in the level's order (for templates
    that serve a whole level); where grades differ, the first grade's entry."""
    seen: dict[str, Subject] = {}
    for (lv, _grade), group in _BY_GRADE.items():
        if lv == level or (level == "secondary" and lv in (LOWER_SECONDARY, UPPER_SECONDARY)):
            for s in group:
                seen.setdefault(s.code, s)
    order = _PRIMARY_ORDER if level == PRIMARY else _SECONDARY_ORDER
    return tuple(sorted(seen.values(), key=lambda s: order.index(s.code)))


def subjects_for(level: str, grade: int) -> tuple[Subject, ...]:
    """Every subject of ``level`` (``02``/``03``/``04``) and ``grade``, in the forms' order;
    empty when the grade does not belong to the level."""
    return _BY_GRADE.get((level, grade), ())


def subject(level: str, grade: int, code: str) -> Subject | None:
    """The catalogue entry for ``code`` in that grade, or ``None`` if it is not taught there."""
    wanted = canonical_code(code)
    return next((s for s in subjects_for(level, grade) if s.code == wanted), None)


def name_of(code: str) -> str | None:
    """The official name of a subject code (any level), or ``None`` for an unknown code."""
    return _NAMES.get(canonical_code(code))


def is_scored(level: str, grade: int, code: str) -> bool:
    """Secondary: the subject is assessed with a score (averages 0–10)."""
    entry = subject(level, grade, code)
    return entry is not None and entry.assessment == "score"


def is_comment_only(level: str, grade: int, code: str) -> bool:
    """Secondary: the subject is assessed by comment only (Đạt / Chưa đạt)."""
    entry = subject(level, grade, code)
    return entry is not None and entry.assessment == "comment"


def has_periodic_test(grade: int, code: str) -> bool:
    """Primary: the subject has a periodic test (a score 1–10) in that grade."""
    entry = subject(PRIMARY, grade, code)
    return entry is not None and entry.periodic_test


# A child starts grade 1 in the calendar year it turns 6 (Luật Giáo dục 2019, Điều 28), so a
# student of grade g turns g + 5 in the calendar year the school year starts. Allowed: two
# years younger (early entry, skipped grades) to five years older (late entry of up to three
# years allowed for disadvantaged, disabled or returning students, plus repeated grades).
AGE_RULE = "age_for_grade"
_YOUNGER, _OLDER = 2, 5


def age_range(grade: int) -> tuple[int, int]:
    """The ages (in the calendar year the school year starts) a student of ``grade`` may have."""
    return grade + 5 - _YOUNGER, grade + 5 + _OLDER
