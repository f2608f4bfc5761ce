"""The subjects each grade studies, with their official names and how each is assessed.

Programme: Chương trình giáo dục phổ thông 2018 (Thông tư 32/2018/TT-BGDĐT, as amended by
Thông tư 13/2022/TT-BGDĐT); assessment: Thông tư 27/2020/TT-BGDĐT (primary) and Thông tư
22/2021/TT-BGDĐT (secondary). What the form and the synthetic data need from it:

- primary: every subject is assessed by level (T/H/C) with a comment; the subjects with a
  periodic test (*bài kiểm tra định kì*, Thông tư 27 art. 7: Tiếng Việt, Toán, Ngoại ngữ 1,
  Lịch sử và Địa lí, Khoa học, Tin học và Công nghệ) also get a score at the end of term I and
  of the year;
- secondary: Thông tư 22 art. 5 assesses by comment only (Đ/CĐ) Giáo dục thể chất, Nghệ thuật,
  Âm nhạc, Mĩ thuật, Nội dung giáo dục của địa phương and Hoạt động trải nghiệm, hướng nghiệp;
  every other subject is scored (averages 0–10);
- grades 10–12 study compulsory subjects plus four electives (*môn học lựa chọn*).

The table itself is data, ``hub/subjects.csv``. Codes are the ones the spreadsheet template
already uses. Optional subjects a school may add (Tiếng dân tộc thiểu số, Ngoại ngữ 2, Ngoại ngữ 1
in grades 1–2) are listed but never in a grade's default list. Nghệ thuật (``NT``) is the whole of Âm nhạc and Mĩ thuật in grades 1–9: a school
reports either the whole or its parts, so ``NT`` is known (and validated) but the forms print the
parts. Upper secondary's Âm nhạc and Mĩ thuật are electives of their own.

The central format (``hub.records``) checks every record's subjects against this table:
``taught(level, grade, code)`` is the per-level-and-grade membership (codes compare
case-insensitively; a province's local content ``GDDP-…`` is ``GDDP``), ``name_of(code)`` the
official name of a code at any level, ``age_range(grade)`` the plausible ages for a grade,
``missing_compulsory(level, grade, codes)`` the compulsory subjects a record leaves out, and
``electives_among(level, grade, codes)`` which of its codes are electives (at most four).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from importlib import resources

__all__ = [
    "Subject", "SUBJECTS", "subject", "subjects_for", "upper_secondary_electives",
    "ELECTIVE_COUNT", "FINAL_GRADES", "is_final_grade", "level_of_grade", "LEVEL_PROGRAMME_NAMES",
    "taught", "name_of", "canonical_code", "age_range", "AGE_RULE", "missing_compulsory", "electives_among",
]

PRIMARY, LOWER, UPPER = "02", "03", "04"


@dataclass(frozen=True)
class Subject:
    """One subject or educational activity as the forms name it."""

    code: str
    name: str                # official Vietnamese name, as printed on the transcript
    scored: bool             # secondary: averages 0–10 (else Đ/CĐ); primary: has periodic tests
    grades: frozenset[int]   # grades where it is taught
    elective: bool = False   # upper secondary: chosen by the student (four of them)
    optional: bool = False   # never in a grade's default list (a school adds it)

    @property
    def comment_only(self) -> bool:
        """Secondary: assessed by comment only (Đ/CĐ)."""
        return not self.scored

    @property
    def periodic_test(self) -> bool:
        """Primary: has a periodic test score at the end of term I and of the year."""
        return self.scored

    @property
    def kind(self) -> str:
        """``compulsory``, ``elective`` (upper secondary) or ``optional`` (a school adds it)."""
        return "optional" if self.optional else "elective" if self.elective else "compulsory"


def _load_subjects() -> dict[str, tuple[Subject, ...]]:
    # The table is data (subjects.csv, in the form's row order, with its sources as # notes).
    text = resources.files("hub").joinpath("subjects.csv").read_text(encoding="utf-8")
    levels: dict[str, list[Subject]] = {PRIMARY: [], LOWER: [], UPPER: []}
    for row in csv.DictReader(line for line in text.splitlines() if not line.startswith("#")):
        levels[row["level"]].append(Subject(
            row["code"], row["name"], row["scored"] == "yes",
            frozenset(range(int(row["first_grade"]), int(row["last_grade"]) + 1)),
            elective=row["kind"] == "elective", optional=row["kind"] == "optional"))
    return {level: tuple(subjects) for level, subjects in levels.items()}


SUBJECTS: dict[str, tuple[Subject, ...]] = _load_subjects()
"""Every subject per school level code (``02``, ``03``, ``04``), in the form's order."""
_UPPER = SUBJECTS[UPPER]

ELECTIVE_COUNT = 4
"""Upper secondary: electives a student takes (Thông tư 13/2022 amending the 2018 programme)."""

FINAL_GRADES = {PRIMARY: 5, LOWER: 9, UPPER: 12}
"""The grade that completes each level: its transcript states completion, never promotion."""

LEVEL_PROGRAMME_NAMES = {PRIMARY: "tiểu học", LOWER: "trung học cơ sở", UPPER: "trung học phổ thông"}
"""Each level's programme as running text (``Hoàn thành chương trình trung học cơ sở``)."""


def level_of_grade(grade: int) -> str:
    """The school level code (``02``/``03``/``04``) a grade 1–12 belongs to."""
    if 1 <= grade <= 5:
        return PRIMARY
    if 6 <= grade <= 9:
        return LOWER
    if 10 <= grade <= 12:
        return UPPER
    raise ValueError(f"grade {grade} is not 1-12")


def is_final_grade(level: str, grade: int) -> bool:
    """Whether ``grade`` completes ``level`` (grade 5, 9 or 12)."""
    return FINAL_GRADES.get(str(level).zfill(2)) == grade


def subject(level: str, code: str) -> Subject | None:
    """The catalogue's subject ``code`` at ``level`` (any grade; case-insensitive), or None."""
    code = canonical_code(code)
    return next((s for s in SUBJECTS.get(str(level).zfill(2), ()) if s.code == code), None)


# Local education content is written per province; its code may carry the province's suffix.
_LOCAL_CONTENT = "GDDP"


def canonical_code(code: str) -> str:
    """The catalogue code a vendor's code stands for: case-insensitive, ``GDDP-…`` → ``GDDP``."""
    code = code.strip().upper()
    if code.startswith(_LOCAL_CONTENT + "-") and len(code) > len(_LOCAL_CONTENT) + 1:
        return _LOCAL_CONTENT
    return code


def taught(level: str, grade: int, code: str) -> Subject | None:
    """The entry for ``code`` as taught in ``grade`` at ``level`` (compulsory, elective or
    optional), or None if that grade of that level has no such subject."""
    code = canonical_code(code)
    return next((s for s in SUBJECTS.get(str(level).zfill(2), ()) if s.code == code and grade in s.grades), None)


_NAMES = {s.code: s.name for group in SUBJECTS.values() for s in group}


def name_of(code: str) -> str | None:
    """The official name of a subject code (any level), or None for an unknown code."""
    return _NAMES.get(canonical_code(code))


# A child starts grade 1 in the calendar year it turns 6 (Luật Giáo dục 2019, Điều 28), so a
# student of grade g turns g + 5 in the calendar year the school year starts. Allowed: two
# years younger (early entry, skipped grades) to five years older (late entry of up to three
# years allowed for disadvantaged, disabled or returning students, plus repeated grades).
AGE_RULE = "age_for_grade"
_YOUNGER, _OLDER = 2, 5


def age_range(grade: int) -> tuple[int, int]:
    """The ages (in the calendar year the school year starts) a student of ``grade`` may have."""
    return grade + 5 - _YOUNGER, grade + 5 + _OLDER


def subjects_for(level: str, grade: int, electives: tuple[str, ...] = ()) -> list[Subject]:
    """The subjects of ``grade`` at ``level`` in the form's order.

    Compulsory subjects always; for grades 10–12, the ``electives`` named by code (exactly
    four, see ``upper_secondary_electives``); optional subjects never.
    """
    level = str(level).zfill(2)
    if level not in SUBJECTS:
        raise ValueError(f"level {level!r} is not 02, 03 or 04")
    if level != level_of_grade(grade):
        raise ValueError(f"grade {grade} does not belong to level {level}")
    chosen = set(electives)
    if level == UPPER:
        known = {s.code for s in _UPPER if s.elective}
        if unknown := chosen - known:
            raise ValueError(f"not an elective: {', '.join(sorted(unknown))}")
        if len(chosen) != ELECTIVE_COUNT:
            raise ValueError(f"grades 10-12 take {ELECTIVE_COUNT} electives, not {len(chosen)}")
    elif chosen:
        raise ValueError("only grades 10-12 choose electives")
    return [s for s in SUBJECTS[level]
            if grade in s.grades and not s.optional and (not s.elective or s.code in chosen)]


def upper_secondary_electives() -> list[Subject]:
    """The subjects a grade 10–12 student chooses four of."""
    return [s for s in _UPPER if s.elective]


# Nghệ thuật stands for its two parts (grades 1–9): a record that reports the whole has both.
_WHOLE_OF = {"AN": "NT", "MT": "NT"}


def missing_compulsory(level: str, grade: int, codes: list[str] | set[str]) -> list[Subject]:
    """The compulsory subjects of ``grade`` at ``level`` that ``codes`` does not contain, in the
    form's order (codes compare as ``canonical_code``; ``NT`` stands for ``AN`` and ``MT``)."""
    level = str(level).zfill(2)
    have = {canonical_code(c) for c in codes}
    return [s for s in SUBJECTS.get(level, ()) if grade in s.grades and s.kind == "compulsory"
            and s.code not in have and not (_WHOLE_OF.get(s.code) in have and taught(level, grade, _WHOLE_OF[s.code]))]


def electives_among(level: str, grade: int, codes: list[str]) -> list[int]:
    """The positions in ``codes`` that are electives of ``grade`` (upper secondary chooses
    ``ELECTIVE_COUNT`` of them)."""
    out = []
    for i, code in enumerate(codes):
        entry = taught(level, grade, code)
        if entry is not None and entry.elective:
            out.append(i)
    return out
