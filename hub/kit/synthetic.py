"""Synthetic transcripts in the central format, for simulators, the demo, tests and benchmarks.

Deterministic for a seed. Simulators turn these into their vendor's shape; an adapter that
maps the vendor's shape back must recover the same record, which is what the round-trip tests
check. ``invalid_transcript`` makes records with one known defect each, so a test can assert
the exact field the quarantine names.
"""

from __future__ import annotations

import datetime as dt
import random
import unicodedata
from typing import Any

from hub import catalogue, identifiers
from hub.contracts import SigningIdentity
from hub.records import GENERAL_COMPETENCIES, QUALITIES

SURNAMES = ["Nguyễn", "Trần", "Lê", "Phạm", "Hoàng", "Huỳnh", "Phan", "Vũ", "Võ", "Đặng", "Bùi", "Đỗ"]
MIDDLE = ["Văn", "Thị", "Hữu", "Minh", "Ngọc", "Thanh", "Quốc", "Thuỳ", "Đức", "Khánh"]
GIVEN = ["An", "Bình", "Châu", "Dũng", "Giang", "Hà", "Hiếu", "Khoa", "Linh", "My", "Nguyệt",
         "Phúc", "Quyên", "Sơn", "Thảo", "Trí", "Uyên", "Việt", "Xuân", "Yến", "Ánh", "Đạt"]
ETHNICITIES = ["Kinh", "Kinh", "Kinh", "Tày", "Thái", "Mường", "Khmer", "H'Mông"]

SCHOOLS = [
    # (department, school_code, name, level, place)
    ("01", "01001001", "Trường Tiểu học Nguyễn Du", "02", "Hà Nội"),
    ("01", "01002003", "Trường Tiểu học Đoàn Thị Điểm", "02", "Hà Nội"),
    ("01", "01003002", "Trường THCS Trưng Vương", "03", "Hà Nội"),
    ("01", "01004001", "Trường THPT Chu Văn An", "04", "Hà Nội"),
]

# Upper secondary students choose four electives; synthetic ones all take the sciences and Tin học.
UPPER_SECONDARY_ELECTIVES = ("VL", "HH", "SH", "TH")


def subjects_of(level: str, grade: int) -> list[catalogue.Subject]:
    """The subjects a synthetic student of ``grade`` takes: the catalogue's compulsory ones
    (Nghệ thuật whole, not split into Âm nhạc and Mĩ thuật), plus the electives above."""
    return [s for s in catalogue.subjects_for(level, grade)
            if (s.kind == "compulsory" and s.part_of is None)
            or (s.kind == "elective" and s.code in UPPER_SECONDARY_ELECTIVES)]

INVALID_KINDS = ("personal_id", "birth_date", "score_range", "rule_tt22", "level_code")


def _name(rng: random.Random) -> str:
    return f"{rng.choice(SURNAMES)} {rng.choice(MIDDLE)} {rng.choice(GIVEN)}"


_PROVINCES = sorted(identifiers.PROVINCE_CODES)


def _pid(rng: random.Random, gender: int | None = None, birth_date: dt.date | None = None) -> str:
    """A personal id with the citizen-id structure; an adult's (a signer's) when no gender and
    birth date are given."""
    province, serial = _PROVINCES[rng.randint(1, 96) % len(_PROVINCES)], rng.randint(0, 999999999)
    if birth_date is None:
        gender, birth_date = 1 + serial % 2, dt.date(1965 + serial % 30, 1, 1)
    return identifiers.make(province, gender, birth_date, serial)


def _level_for(avgs: list[float], comments: list[str]) -> str:
    """The best Thông tư 22 learning level these averages support (see hub.records)."""
    fails = comments.count("CĐ")
    if fails == 0 and min(avgs) >= 6.5 and sum(a >= 8.0 for a in avgs) >= 6:
        return "T"
    if fails == 0 and min(avgs) >= 5.0 and sum(a >= 6.5 for a in avgs) >= 6:
        return "K"
    if fails <= 1 and min(avgs) >= 3.5 and sum(a >= 5.0 for a in avgs) >= 6:
        return "Đ"
    return "CĐ"


def transcript(index: int, seed: int = 0, year: int = 2024) -> dict[str, Any]:
    """A valid central-format transcript (no envelope), snake_case names.

    Index picks the school round-robin, so any run mixes primary and secondary records.
    """
    rng = random.Random(f"{seed}:{index}")
    dept, school_code, school_name, level, place = SCHOOLS[index % len(SCHOOLS)]
    grade = {"02": rng.randint(1, 5), "03": rng.randint(6, 9), "04": rng.randint(10, 12)}[level]
    class_name = f"{grade}{'ABCD'[rng.randint(0, 3)]}"
    birth_year = year - (grade + 5)
    record: dict[str, Any] = {
        "transcript_id": f"HB{school_code}{index:06d}",
        "department_code": dept,
        "school_code": school_code,
        "school_name": school_name,
        "level": level,
        "grade": grade,
        "class_name": class_name,
        "school_year": f"{year}-{year + 1}",
        "student": {
            "student_code": f"HS{school_code[-5:]}{index:05d}",
            "personal_id": _pid(rng),  # replaced below, once gender and birth date are drawn
            "full_name": _name(rng),
            "birth_date": dt.date(birth_year, rng.randint(1, 12), rng.randint(1, 28)).isoformat(),
            "gender": rng.choice([1, 2]),
            "ethnicity": rng.choice(ETHNICITIES),
            "nationality": "Việt Nam",
            "father_name": _name(rng),
            "mother_name": _name(rng),
        },
        "signatories": {
            # One homeroom teacher per class and one principal per school, so their keys repeat.
            "homeroom_teacher_name": _name(random.Random(f"gv:{school_code}:{class_name}")),
            "homeroom_teacher_personal_id": _pid(random.Random(f"gv:{school_code}:{class_name}")),
            "principal_name": _name(random.Random(f"ht:{school_code}")),
            "principal_personal_id": _pid(random.Random(f"ht:{school_code}")),
            "principal_title": "Hiệu trưởng",
            "issue_date": f"{year + 1}-05-31",
            "issue_place": place,
        },
    }
    student = record["student"]
    pid_rng = random.Random(student["personal_id"])
    student["personal_id"] = _pid(pid_rng, student["gender"], dt.date.fromisoformat(student["birth_date"]))
    if level == "02":
        subjects = []
        for entry in subjects_of(level, grade):
            code, name, tested = entry.code, entry.name, entry.periodic_test
            lv = rng.choice("TTHH")
            subject = {"subject_code": code, "subject_name": name, "term1_level": rng.choice("TH"),
                       "year_level": lv, "comment": "Hoàn thành tốt nội dung môn học" if lv == "T" else "Hoàn thành"}
            if tested:
                subject["term1_score"] = rng.randint(6, 10)
                subject["year_score"] = rng.randint(7, 10) if lv == "T" else rng.randint(5, 8)
            subjects.append(subject)
        record.update(
            subjects=subjects,
            qualities={q: rng.choice("TTĐ") for q in QUALITIES},
            competencies={c: rng.choice(["T", "Đ"]) for c in GENERAL_COMPETENCIES},
            completed_grade_program=True,
            completed_primary_program=True if grade == 5 else None,
            promoted=True,
            awards=["Học sinh Xuất sắc"] if rng.random() < 0.3 else [],
        )
    else:
        base = rng.uniform(5.5, 9.0)
        subjects, by_term = [], {"term1": [], "term2": [], "year": []}
        taken = subjects_of(level, grade)
        for code, name in [(e.code, e.name) for e in taken if e.assessment == "score"]:
            t1 = round(min(10, max(3.5, rng.gauss(base, 1.0))), 1)
            t2 = round(min(10, max(3.5, rng.gauss(base, 1.0))), 1)
            yr = round((t1 + 2 * t2) / 3, 1)
            by_term["term1"].append(t1), by_term["term2"].append(t2), by_term["year"].append(yr)
            subjects.append({"subject_code": code, "subject_name": name,
                             "term1_average": t1, "term2_average": t2, "year_average": yr})
        for code, name in [(e.code, e.name) for e in taken if e.assessment == "comment"]:
            subjects.append({"subject_code": code, "subject_name": name, "term1_comment": "Đ",
                             "term2_comment": "Đ", "year_comment": "Đ"})
        learning = {p: _level_for(v, ["Đ"]) for p, v in zip(("term1", "term2", "year"), by_term.values())}
        conduct = {p: rng.choice(["T", "T", "K"]) for p in ("term1", "term2", "year")}
        days_absent = rng.randint(0, 12)
        record.update(
            subjects=subjects,
            learning=learning,
            conduct=conduct,
            days_absent=days_absent,
            promoted=learning["year"] != "CĐ",
            certificates=[{"name": "Chứng chỉ Tin học cơ bản", "issued_on": f"{year + 1}-04-15",
                           "issuer": "Trung tâm GDNN-GDTX"}] if rng.random() < 0.2 else [],
        )
    return record


def invalid_transcript(index: int, seed: int = 0, kind: str | None = None) -> tuple[dict[str, Any], str, str]:
    """A transcript with one known defect: ``(record, kind, field path the error must name)``."""
    kind = kind or INVALID_KINDS[(index + seed) % len(INVALID_KINDS)]
    if kind in ("rule_tt22", "score_range"):
        # Both defects need a secondary school: pick the index's nearest secondary slot.
        index = index - index % len(SCHOOLS) + 3
    record = transcript(index, seed)
    if kind == "personal_id":
        record["student"]["personal_id"] = "12345"
        field = "student.personal_id"
    elif kind == "birth_date":
        record["student"]["birth_date"] = "2015-02-30"
        field = "student.birth_date"
    elif kind == "score_range":
        record["subjects"][0]["year_average"] = 11.5
        field = "subjects[0].year_average"
    elif kind == "rule_tt22":
        record["learning"]["year"] = "T"
        for s in record["subjects"]:
            if "year_average" in s:
                s["year_average"] = 5.5
        field = "learning.year"
    elif kind == "level_code":
        record["level"] = "09"
        field = "level"
    else:
        raise ValueError(f"unknown invalid kind {kind!r}")
    return record, kind, field


def nfd(text: str) -> str:
    """The decomposed form some vendors send; the central format stores NFC."""
    return unicodedata.normalize("NFD", text)


def signing_identities(year: int = 2024) -> list[SigningIdentity]:
    """Every identity that can sign a synthetic transcript: a teacher per class, a principal
    and a seal per school. The demo issues its throwaway PKI for exactly these."""
    grades = {"02": range(1, 6), "03": range(6, 10), "04": range(10, 13)}
    out = []
    for _dept, code, name, level, _place in SCHOOLS:
        for grade in grades[level]:
            for letter in "ABCD":
                rng = random.Random(f"gv:{code}:{grade}{letter}")
                teacher = _name(rng)
                out.append(SigningIdentity("homeroom_teacher", teacher, code,
                                           _pid(random.Random(f"gv:{code}:{grade}{letter}"))))
        principal = _name(random.Random(f"ht:{code}"))
        out.append(SigningIdentity("principal", principal, code, _pid(random.Random(f"ht:{code}"))))
        out.append(SigningIdentity("school_seal", name, code))
    return out
