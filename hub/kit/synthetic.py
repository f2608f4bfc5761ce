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

from hub import identifiers
from hub.catalogue import SUBJECTS, subjects_for
from hub.contracts import SigningIdentity
from hub.records import GENERAL_COMPETENCIES, QUALITIES

SURNAMES = ["Nguyễn", "Trần", "Lê", "Phạm", "Hoàng", "Huỳnh", "Phan", "Vũ", "Võ", "Đặng", "Bùi", "Đỗ",
            "Ngô", "Dương", "Lý"]
# Middle and given names by gender (gioitinh 1 male, 2 female): a transcript whose "Thị" is a
# boy would be questioned at once.
MIDDLE = {1: ["Văn", "Hữu", "Minh", "Đức", "Quốc", "Gia", "Thành", "Công", "Anh", "Tuấn"],
          2: ["Thị", "Ngọc", "Thuỳ", "Thu", "Phương", "Khánh", "Bảo", "Mai", "Thanh", "Minh"]}
GIVEN = {1: ["An", "Bình", "Dũng", "Hiếu", "Khoa", "Phúc", "Sơn", "Trí", "Việt", "Đạt", "Hùng",
             "Nam", "Quân", "Long", "Huy", "Tùng", "Khôi", "Minh"],
         2: ["Châu", "Giang", "Hà", "Linh", "My", "Nguyệt", "Quyên", "Thảo", "Uyên", "Xuân", "Yến",
             "Ánh", "Lan", "Hương", "Mai", "Trang", "Ngân", "Vy"]}
ETHNICITIES = ["Kinh", "Kinh", "Kinh", "Kinh", "Kinh", "Tày", "Thái", "Mường", "Khmer", "H'Mông"]
# Places of birth with their citizen-id province codes (the first three digits of a số định danh).
PROVINCES = [("Hà Nội", "001"), ("Hà Nội", "001"), ("Hà Nội", "001"), ("Hải Phòng", "031"),
             ("Bắc Ninh", "027"), ("Hưng Yên", "033"), ("Thái Bình", "034"), ("Nam Định", "036"),
             ("Ninh Bình", "037"), ("Thanh Hoá", "038"), ("Nghệ An", "040")]
WARDS = ["Ba Đình", "Hoàn Kiếm", "Cửa Nam", "Đống Đa", "Ô Chợ Dừa", "Láng", "Kim Liên",
         "Văn Miếu - Quốc Tử Giám", "Cầu Giấy", "Nghĩa Đô", "Hai Bà Trưng", "Bạch Mai"]
STREETS = ["phố Huế", "phố Hàng Bài", "phố Chùa Bộc", "đường Láng", "phố Tôn Đức Thắng",
           "đường Giải Phóng", "phố Kim Mã", "phố Trần Duy Hưng", "phố Xã Đàn", "phố Nguyễn Khuyến"]

SCHOOLS = [
    # (department, school_code, name, level, place)
    ("01", "01001001", "Trường Tiểu học Nguyễn Du", "02", "Hà Nội"),
    ("01", "01002003", "Trường Tiểu học Đoàn Thị Điểm", "02", "Hà Nội"),
    ("01", "01003002", "Trường THCS Trưng Vương", "03", "Hà Nội"),
    ("01", "01004001", "Trường THPT Chu Văn An", "04", "Hà Nội"),
]

# Grades 10-12: each class follows one combination of four electives (tổ hợp môn lựa chọn).
ELECTIVE_GROUPS = {"A": ("VL", "HH", "SH", "TH"), "B": ("VL", "HH", "CN", "TH"),
                   "C": ("DL", "GDKTPL", "VL", "TH"), "D": ("DL", "GDKTPL", "CN", "AN")}

PRIMARY_COMMENTS = {
    "T": ["Nắm vững kiến thức, vận dụng tốt vào bài tập.", "Tích cực, sáng tạo trong học tập.",
          "Hoàn thành tốt nội dung môn học.", "Tiếp thu nhanh, trình bày cẩn thận."],
    "H": ["Hoàn thành nội dung môn học.", "Nắm được kiến thức cơ bản, cần cẩn thận hơn.",
          "Có tiến bộ, cần tích cực phát biểu hơn."],
}
QUALITY_COMMENTS = ["Ngoan, lễ phép, đoàn kết với bạn bè.", "Chăm chỉ, trung thực, biết giúp đỡ bạn.",
                    "Yêu quý thầy cô, bạn bè; có trách nhiệm với việc được giao."]
COMPETENCY_COMMENTS = ["Tự giác học tập, biết hợp tác trong nhóm.", "Mạnh dạn trong giao tiếp, biết tự giải quyết nhiệm vụ.",
                       "Có khả năng tự học, cần mạnh dạn hơn khi trình bày ý kiến."]
SUBJECT_COMPETENCY_COMMENTS = ["Đọc, viết, tính toán thành thạo.", "Diễn đạt mạch lạc, tính toán cẩn thận.",
                               "Biết vận dụng kiến thức vào cuộc sống."]
HOMEROOM_COMMENTS = ["Ngoan, lễ phép, chăm chỉ; có ý thức tự học, hoà đồng với bạn bè.",
                     "Có ý thức trách nhiệm, tích cực tham gia các hoạt động của lớp.",
                     "Trung thực, tự giác; cần mạnh dạn hơn khi phát biểu ý kiến.",
                     "Chăm học, tiến bộ rõ trong học kì II; cần rèn thêm tính cẩn thận."]

INVALID_KINDS = ("personal_id", "birth_date", "score_range", "rule_tt22", "level_code")


def _name(rng: random.Random, gender: int | None = None) -> str:
    gender = gender or rng.choice([1, 2])
    return f"{rng.choice(SURNAMES)} {rng.choice(MIDDLE[gender])} {rng.choice(GIVEN[gender])}"


def _citizen_id(rng: random.Random, birth_year: int, gender: int, province: str = "001") -> str:
    """A 12-digit số định danh with the citizen-id structure: province of birth (3 digits), a
    digit for century and gender (0/1: 1900s male/female, 2/3: 2000s), the year's last two
    digits, then six digits."""
    return identifiers.make(province, gender, dt.date(birth_year, 1, 1), rng.randint(0, 999999))


def _staff(key: str) -> tuple[str, str]:
    """A teacher's or principal's name and personal id, fixed by ``key`` (a school and a role)."""
    rng = random.Random(key)
    gender = rng.choice([1, 2, 2])  # most teachers are women
    birth_year = rng.randint(1968, 1996)
    province, code = rng.choice(PROVINCES)
    return _name(rng, gender), _citizen_id(rng, birth_year, gender, code)


def _homeroom(school_code: str, class_name: str) -> tuple[str, str]:
    return _staff(f"gv:{school_code}:{class_name}")


def _principal(school_code: str) -> tuple[str, str]:
    return _staff(f"ht:{school_code}")


def _subject_teacher_key(school_code: str, subject_code: str, group: int) -> str:
    return f"gvbm:{school_code}:{subject_code}:{group}"


def subject_teacher(school_code: str, subject_code: str, class_name: str) -> tuple[str, str]:
    """The synthetic teacher of ``subject_code`` for ``class_name`` at ``school_code``:
    ``(name, personal id)``. Two teachers per subject and school; a class has one of them."""
    return _staff(_subject_teacher_key(school_code, subject_code, int(class_name[-1] in "BD")))


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


def _overall_result(subjects: list[dict[str, Any]], qualities: dict[str, str],
                    competencies: dict[str, str]) -> str:
    """Thông tư 27 art. 9, from the year's data: HTXS, HTT, HT or CHT.

    Hoàn thành tốt: every subject T, every quality and competency T, every year-end periodic
    test ≥ 7; Hoàn thành xuất sắc: that, with every test ≥ 9; Hoàn thành: every subject T or H,
    every quality and competency T or Đ, every test ≥ 5.
    """
    levels = [s["year_level"] for s in subjects]
    scores = [s["year_score"] for s in subjects if s.get("year_score") is not None]
    marks = list(qualities.values()) + list(competencies.values())
    if all(lv == "T" for lv in levels) and all(m == "T" for m in marks) and min(scores, default=10) >= 7:
        return "HTXS" if min(scores, default=10) >= 9 else "HTT"
    if all(lv in "TH" for lv in levels) and all(m in ("T", "Đ") for m in marks) and min(scores, default=10) >= 5:
        return "HT"
    return "CHT"


def _primary(rng: random.Random, grade: int) -> dict[str, Any]:
    strong = rng.random() < 0.45       # most of a class completes well; some excel
    subjects = []
    for s in subjects_for("02", grade):
        lv = "T" if strong or rng.random() < 0.5 else "H"
        subject = {"subject_code": s.code, "subject_name": s.name,
                   "term1_level": lv if rng.random() < 0.8 else "H", "year_level": lv,
                   "comment": rng.choice(PRIMARY_COMMENTS[lv])}
        if s.periodic_test:
            subject["term1_score"] = rng.randint(7, 10) if lv == "T" else rng.randint(5, 8)
            subject["year_score"] = (rng.choice([8, 9, 9, 10, 10]) if strong else
                                     rng.randint(7, 10) if lv == "T" else rng.randint(5, 8))
        subjects.append(subject)
    qualities = {q: "T" if strong or rng.random() < 0.6 else "Đ" for q in QUALITIES}
    competencies = {c: "T" if strong or rng.random() < 0.6 else "Đ" for c in GENERAL_COMPETENCIES}
    specific = ["ngon_ngu", "tinh_toan", "khoa_hoc", "tham_my", "the_chat"]
    specific += ["cong_nghe", "tin_hoc"] if grade >= 3 else []
    competencies.update({c: "T" if strong or rng.random() < 0.6 else "Đ" for c in specific})
    result = _overall_result(subjects, qualities, competencies)
    awards = (["Học sinh Xuất sắc"] if result == "HTXS" else
              ["Học sinh Tiêu biểu hoàn thành tốt trong học tập và rèn luyện"]
              if result == "HTT" and rng.random() < 0.5 else [])
    return {
        "subjects": subjects,
        "qualities": qualities,
        "competencies": competencies,
        "qualities_comment": rng.choice(QUALITY_COMMENTS),
        "general_competencies_comment": rng.choice(COMPETENCY_COMMENTS),
        "subject_competencies_comment": rng.choice(SUBJECT_COMPETENCY_COMMENTS),
        "overall_result": result,
        "completed_grade_program": result != "CHT",
        "completed_primary_program": result != "CHT" if grade == 5 else None,
        "promoted": result != "CHT",
        "awards": awards,
    }


def _secondary(rng: random.Random, level: str, grade: int, school_code: str, class_name: str,
               year: int) -> dict[str, Any]:
    electives = ELECTIVE_GROUPS[class_name[-1]] if level == "04" else ()
    base = rng.uniform(5.5, 9.0)
    subjects, by_term = [], {"term1": [], "term2": [], "year": []}
    for s in subjects_for(level, grade, electives):
        teacher, _ = subject_teacher(school_code, s.code, class_name)
        if s.comment_only:
            subjects.append({"subject_code": s.code, "subject_name": s.name, "term1_comment": "Đ",
                             "term2_comment": "Đ", "year_comment": "Đ", "teacher_name": teacher})
            continue
        t1 = round(min(10, max(3.5, rng.gauss(base, 1.0))), 1)
        t2 = round(min(10, max(3.5, rng.gauss(base, 1.0))), 1)
        yr = round((t1 + 2 * t2) / 3, 1)
        by_term["term1"].append(t1), by_term["term2"].append(t2), by_term["year"].append(yr)
        subjects.append({"subject_code": s.code, "subject_name": s.name, "term1_average": t1,
                         "term2_average": t2, "year_average": yr, "teacher_name": teacher})
    learning = {p: _level_for(v, ["Đ"]) for p, v in zip(("term1", "term2", "year"), by_term.values())}
    conduct = {p: rng.choice(["T", "T", "K"]) for p in ("term1", "term2", "year")}
    passed = learning["year"] != "CĐ"
    awards = []
    if learning["year"] == "T" and conduct["year"] == "T":
        # Thông tư 22 art. 15: Xuất sắc also needs at least six averages ≥ 9.0.
        awards = ["Học sinh Xuất sắc" if sum(a >= 9.0 for a in by_term["year"]) >= 6 else "Học sinh Giỏi"]
    return {
        "subjects": subjects,
        "learning": learning,
        "conduct": conduct,
        "days_absent": rng.randint(0, 12),
        "promoted": passed,
        "completed_level_program": passed if grade in (9, 12) else None,
        "awards": awards,
        "certificates": [{"name": "Chứng chỉ Tin học cơ bản", "issued_on": f"{year + 1}-04-15",
                          "issuer": "Trung tâm GDNN-GDTX"}] if rng.random() < 0.2 else [],
    }


def transcript(index: int, seed: int = 0, year: int = 2024) -> dict[str, Any]:
    """A valid central-format transcript (no envelope), snake_case names.

    Index picks the school round-robin, so any run mixes primary and secondary records. The
    subjects are the grade's (``hub.catalogue``), names fit the gender, the student's age fits
    the grade, personal ids have the citizen-id structure, and each secondary subject names
    its teacher.
    """
    rng = random.Random(f"{seed}:{index}")
    dept, school_code, school_name, level, place = SCHOOLS[index % len(SCHOOLS)]
    grade = {"02": rng.randint(1, 5), "03": rng.randint(6, 9), "04": rng.randint(10, 12)}[level]
    class_name = f"{grade}{'ABCD'[rng.randint(0, 3)]}"
    # A grade-1 pupil turns 6 in the calendar year the school year starts; a few are a year older.
    birth_year = year - (grade + 5) - (1 if rng.random() < 0.04 else 0)
    gender = rng.choice([1, 2])
    birth_place, province = rng.choice(PROVINCES)
    surname = rng.choice(SURNAMES)
    father = f"{surname} {rng.choice(MIDDLE[1])} {rng.choice(GIVEN[1])}"
    mother = _name(rng, 2)
    full_name = f"{surname} {rng.choice(MIDDLE[gender])} {rng.choice(GIVEN[gender])}"
    first_grade = {"02": 1, "03": 6, "04": 10}[level]
    homeroom_name, homeroom_pid = _homeroom(school_code, class_name)
    principal_name, principal_pid = _principal(school_code)
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
            "personal_id": _citizen_id(rng, birth_year, gender, province),
            "full_name": full_name,
            "birth_date": dt.date(birth_year, rng.randint(1, 12), rng.randint(1, 28)).isoformat(),
            "gender": gender,
            "ethnicity": rng.choice(ETHNICITIES),
            "nationality": "Việt Nam",
            "father_name": father,
            "mother_name": mother,
            "birth_place": birth_place,
            "residence": f"Số {rng.randint(1, 120)} {rng.choice(STREETS)}, phường {rng.choice(WARDS)}, "
                         f"thành phố {place}",
            # The school's register: running number / year the student entered the school.
            "registration_number": f"{rng.randint(1, 480)}/{year - (grade - first_grade)}",
        },
        "signatories": {
            # One homeroom teacher per class and one principal per school, so their keys repeat.
            "homeroom_teacher_name": homeroom_name,
            "homeroom_teacher_personal_id": homeroom_pid,
            "principal_name": principal_name,
            "principal_personal_id": principal_pid,
            "principal_title": "Hiệu trưởng",
            "issue_date": f"{year + 1}-05-31",
            "issue_place": place,
        },
        "homeroom_comment": rng.choice(HOMEROOM_COMMENTS),
    }
    if level == "02":
        record.update(_primary(rng, grade))
    else:
        record.update(_secondary(rng, level, grade, school_code, class_name, year))
    return record


def with_subject_teachers(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` with every secondary subject naming its teacher's personal id too (a primary
    record unchanged), so the subject teacher's signature can be chosen.

    ``transcript`` names the teacher only: most vendors' contracts have no field for the id, and
    the round-trip tests compare against ``transcript``. Sources that carry it (push, viettel)
    seed with this.
    """
    if record.get("level") == "02":
        return record
    out = {**record, "subjects": []}
    for subject in record["subjects"]:
        name, pid = subject_teacher(record["school_code"], subject["subject_code"], record["class_name"])
        out["subjects"].append({**subject, "teacher_name": name, "teacher_personal_id": pid})
    return out


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
    """Every identity that can sign a synthetic transcript: a homeroom teacher per class, a
    teacher per subject of a secondary school, a principal and a seal per school; and the
    Department that signs their class packages. The demo issues its throwaway PKI for exactly these."""
    grades = {"02": range(1, 6), "03": range(6, 10), "04": range(10, 13)}
    out = []
    for _dept, code, name, level, _place in SCHOOLS:
        for grade in grades[level]:
            for letter in "ABCD":
                teacher, pid = _homeroom(code, f"{grade}{letter}")
                out.append(SigningIdentity("homeroom_teacher", teacher, code, pid))
        if level != "02":
            for subject in SUBJECTS[level]:
                for group in (0, 1):
                    teacher, pid = _staff(_subject_teacher_key(code, subject.code, group))
                    out.append(SigningIdentity("subject_teacher", teacher, code, pid))
        principal, pid = _principal(code)
        out.append(SigningIdentity("principal", principal, code, pid))
        out.append(SigningIdentity("school_seal", name, code))
    # The Department that signs the class packages of these schools.
    for dept in sorted({school[0] for school in SCHOOLS}):
        out.append(department_identity(dept))
    return out


DEPARTMENT_NAMES = {"01": "Sở Giáo dục và Đào tạo Hà Nội"}
"""The synthetic schools' Department(s): code → name."""


def department_identity(code: str = "01") -> SigningIdentity:
    """The identity that signs the class packages of Department ``code`` (its key: the code)."""
    return SigningIdentity("department", DEPARTMENT_NAMES.get(code, f"Sở Giáo dục và Đào tạo {code}"), code)
