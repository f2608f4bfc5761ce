"""The central transcript format: what every adapter normalises to and the hub delivers.

Field names are English snake_case; each carries the Ministry's data-catalogue name as its
alias, so ``model_dump(by_alias=True)`` is the export shape. Input cleaning that every vendor
needs (NFC names, doubled spaces, ``dd/MM/yyyy`` dates, comma decimals, ``Nam``/``Nữ``,
empty strings) lives here once, in ``BeforeValidator``s, so adapters only map keys.
"""

from __future__ import annotations

import datetime as dt
import re
import unicodedata
from enum import IntEnum, StrEnum
from typing import Annotated, Any, Literal, Union

from pydantic import (
    AfterValidator,

    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    ValidationError,
    model_validator,
)

# The central format's clock: every school's dates and vendor timestamps are Vietnam time (UTC+7,
# no daylight saving). Everything in the hub that reads or prints local time uses this one.
VIETNAM_TIME = dt.timezone(dt.timedelta(hours=7), "ICT")

__all__ = [
    "VIETNAM_TIME", "Event", "SchoolLevel", "Gender", "PrimaryLevel", "QualityLevel", "SecondaryLevel",
    "CommentResult", "Student", "Signatories", "PrimarySubject", "SecondarySubject",
    "TermLevels", "Certificate", "PrimaryTranscript", "SecondaryTranscript",
    "TranscriptRecord", "parse_transcript", "transcript_json_schema", "field_errors",
    "RuleViolation", "FieldError", "QUALITIES", "GENERAL_COMPETENCIES",
    "OverallResult", "SchoolYearEntry",
]


# --- input cleaning -------------------------------------------------------------------------

def _blank_to_none(value: Any) -> Any:
    # Vendors send "" for "unknown"; the central format says None, never a silent default.
    if isinstance(value, str) and not value.strip():
        return None
    return value


def _clean_text(value: Any) -> Any:
    value = _blank_to_none(value)
    if isinstance(value, str):
        return re.sub(r"\s+", " ", unicodedata.normalize("NFC", value)).strip()
    return value


def _parse_date(value: Any) -> Any:
    value = _blank_to_none(value)
    if isinstance(value, str):
        text = value.strip()
        m = re.fullmatch(r"(\d{1,2})/(\d{1,2})/(\d{4})", text)
        if m:
            day, month, year = (int(g) for g in m.groups())
            try:
                return dt.date(year, month, day)
            except ValueError as exc:
                raise ValueError(f"impossible date {text!r}: {exc}") from None
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}([T ].*)?", text):
            try:
                return dt.date.fromisoformat(text[:10])
            except ValueError as exc:
                raise ValueError(f"impossible date {text!r}: {exc}") from None
        raise ValueError(f"date {text!r} is neither dd/MM/yyyy nor yyyy-MM-dd")
    return value


def _parse_decimal(value: Any) -> Any:
    value = _blank_to_none(value)
    if isinstance(value, str):
        text = value.strip().replace(",", ".")
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"score {value!r} is not a number") from None
    return value


def _parse_gender(value: Any) -> Any:
    value = _blank_to_none(value)
    if value is None:
        return Gender.UNKNOWN
    if isinstance(value, str):
        key = unicodedata.normalize("NFC", value).strip().lower()
        mapping = {"nam": 1, "male": 1, "m": 1, "nữ": 2, "nu": 2, "female": 2, "f": 2}
        if key in mapping:
            return mapping[key]
        if key.isdigit():
            return int(key)
        raise ValueError(f"gender {value!r} is not one of Nam, Nữ, 0, 1, 2")
    return value


def _parse_bool(value: Any) -> Any:
    value = _blank_to_none(value)
    if isinstance(value, str):
        key = unicodedata.normalize("NFC", value).strip().lower()
        if key in {"1", "true", "có", "co", "x", "yes"}:
            return True
        if key in {"0", "false", "không", "khong", "no"}:
            return False
        raise ValueError(f"{value!r} is not a yes/no value")
    return value


def _level_code(value: Any) -> Any:
    # Level scales are case-insensitive in vendor data and sometimes decomposed (Đ vs D+stroke).
    value = _blank_to_none(value)
    if isinstance(value, str):
        return unicodedata.normalize("NFC", value).strip().upper()
    return value


def _one_decimal(value: float | None) -> float | None:
    if value is not None and round(value, 1) != value:
        raise ValueError(f"average {value} has more than one decimal")
    return value


Text = Annotated[str, BeforeValidator(_clean_text)]
OptText = Annotated[str | None, BeforeValidator(_clean_text)]
Date = Annotated[dt.date, BeforeValidator(_parse_date)]
OptDate = Annotated[dt.date | None, BeforeValidator(_parse_date)]
# Cleaning runs outside the union, so "" becomes None (unknown) rather than a bad string.
OptPersonalId = Annotated[Annotated[str, Field(pattern=r"^\d{12}$")] | None, BeforeValidator(_clean_text)]
OptBool = Annotated[bool | None, BeforeValidator(_parse_bool)]
Bool = Annotated[bool, BeforeValidator(_parse_bool)]
Average = Annotated[
    Annotated[float, Field(ge=0, le=10)] | None, BeforeValidator(_parse_decimal), AfterValidator(_one_decimal)
]
TestScore = Annotated[Annotated[int, Field(ge=1, le=10)] | None, BeforeValidator(_parse_decimal)]


# --- enumerations -----------------------------------------------------------------------------

class Event(StrEnum):
    """Envelope event (``sukien``)."""
    NEW = "NEW"
    UPDATE = "UPDATE"
    CANCEL = "CANCEL"


class SchoolLevel(StrEnum):
    """School level (``macaphoc``)."""
    PRIMARY = "02"
    LOWER_SECONDARY = "03"
    UPPER_SECONDARY = "04"


class Gender(IntEnum):
    """QCVN 109:2017 gender code (``gioitinh``)."""
    UNKNOWN = 0
    MALE = 1
    FEMALE = 2


class PrimaryLevel(StrEnum):
    """Thông tư 27 subject level."""
    T = "T"  # Hoàn thành tốt
    H = "H"  # Hoàn thành
    C = "C"  # Chưa hoàn thành


class QualityLevel(StrEnum):
    """Thông tư 27 quality/competency level."""
    T = "T"  # Tốt
    D = "Đ"  # Đạt
    C = "C"  # Cần cố gắng


class SecondaryLevel(StrEnum):
    """Thông tư 22 learning-result and conduct level, best first."""
    T = "T"    # Tốt
    K = "K"    # Khá
    D = "Đ"    # Đạt
    CD = "CĐ"  # Chưa đạt


class CommentResult(StrEnum):
    """Thông tư 22 result of a subject assessed by comment only."""
    D = "Đ"    # Đạt
    CD = "CĐ"  # Chưa đạt


class OverallResult(StrEnum):
    """Thông tư 27 (art. 9) overall result of a primary school year, best first."""
    HTXS = "HTXS"  # Hoàn thành xuất sắc
    HTT = "HTT"    # Hoàn thành tốt
    HT = "HT"      # Hoàn thành
    CHT = "CHT"    # Chưa hoàn thành


_OVERALL_NAMES = {"hoàn thành xuất sắc": "HTXS", "hoàn thành tốt": "HTT", "hoàn thành": "HT",
                  "chưa hoàn thành": "CHT"}


def _overall_result(value: Any) -> Any:
    # Vendors send the code or the words the form prints; both mean one thing.
    value = _blank_to_none(value)
    if isinstance(value, str):
        text = re.sub(r"\s+", " ", unicodedata.normalize("NFC", value)).strip()
        return _OVERALL_NAMES.get(text.lower(), text.upper())
    return value


SECONDARY_RANK = {SecondaryLevel.T: 3, SecondaryLevel.K: 2, SecondaryLevel.D: 1, SecondaryLevel.CD: 0}

PrimaryLevelField = Annotated[PrimaryLevel | None, BeforeValidator(_level_code)]
QualityLevelField = Annotated[QualityLevel, BeforeValidator(_level_code)]
SecondaryLevelField = Annotated[SecondaryLevel | None, BeforeValidator(_level_code)]
CommentField = Annotated[CommentResult | None, BeforeValidator(_level_code)]
OverallResultField = Annotated[OverallResult | None, BeforeValidator(_overall_result)]

QUALITIES = ("yeu_nuoc", "nhan_ai", "cham_chi", "trung_thuc", "trach_nhiem")
GENERAL_COMPETENCIES = ("tu_chu_tu_hoc", "giao_tiep_hop_tac", "giai_quyet_van_de_sang_tao")


# --- building blocks ---------------------------------------------------------------------------

class _Model(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="forbid", frozen=False)


class Student(_Model):
    """The student, as the national catalogue names each field."""
    student_code: Text = Field(alias="mahocsinh", min_length=1, max_length=50)
    personal_id: OptPersonalId = Field(default=None, alias="sodinhdanhcanhan")
    full_name: Text = Field(alias="hovaten", min_length=1, max_length=100)
    birth_date: Date = Field(alias="ngaysinh")
    gender: Annotated[Gender, BeforeValidator(_parse_gender)] = Field(alias="gioitinh")
    ethnicity: OptText = Field(default=None, alias="dantoc")
    nationality: OptText = Field(default="Việt Nam", alias="quoctich")
    father_name: OptText = Field(default=None, alias="hotencha")
    mother_name: OptText = Field(default=None, alias="hotenme")
    guardian_name: OptText = Field(default=None, alias="hotennguoigiamho")
    policy_group: OptText = Field(default=None, alias="doituongchinhsach")
    disability_not_assessed: Bool = Field(default=False, alias="cokhuyettatkhongdanhgia")
    # The forms' particulars page (issue 12): where the student was born and lives, and the
    # school's register number (số đăng bộ).
    birth_place: OptText = Field(default=None, alias="noisinh", max_length=200)
    residence: OptText = Field(default=None, alias="noiohientai", max_length=300)
    registration_number: OptText = Field(default=None, alias="sodangbo", max_length=50)

    @model_validator(mode="after")
    def _born_in_the_past(self) -> "Student":
        if not dt.date(1990, 1, 1) <= self.birth_date <= dt.date.today():
            raise FieldError("birth_date", f"{self.birth_date.isoformat()} is outside 1990-01-01..today")
        return self


class Signatories(_Model):
    """Who signs the transcript, and where and when it is issued."""
    homeroom_teacher_name: Text = Field(alias="hotengvcn", min_length=1)
    homeroom_teacher_personal_id: OptPersonalId = Field(default=None, alias="sodinhdanhgvcn")
    principal_name: Text = Field(alias="hotenhieutruong", min_length=1)
    principal_personal_id: OptPersonalId = Field(default=None, alias="sodinhdanhhieutruong")
    principal_title: Text = Field(default="Hiệu trưởng", alias="chucvugiamhieu")
    issue_date: Date = Field(alias="ngayky")
    issue_place: Text = Field(alias="diadanhphathanh", min_length=1)


class PrimarySubject(_Model):
    """One subject or activity under Thông tư 27."""
    subject_code: Text = Field(alias="mamonhoc", min_length=1)
    subject_name: Text = Field(alias="tenmonhoc", min_length=1)
    term1_level: PrimaryLevelField = Field(default=None, alias="mucdathk1")
    year_level: Annotated[PrimaryLevel, BeforeValidator(_level_code)] = Field(alias="mucdatcn")
    term1_score: TestScore = Field(default=None, alias="diemktdkhk1")
    year_score: TestScore = Field(default=None, alias="diemktdkcn")
    comment: OptText = Field(default=None, alias="nhanxet")


class SecondarySubject(_Model):
    """One subject under Thông tư 22: scored (averages) or assessed by comment (Đ/CĐ)."""
    subject_code: Text = Field(alias="mamonhoc", min_length=1)
    subject_name: Text = Field(alias="tenmonhoc", min_length=1)
    term1_average: Average = Field(default=None, alias="dtbhk1")
    term2_average: Average = Field(default=None, alias="dtbhk2")
    year_average: Average = Field(default=None, alias="dtbcn")
    term1_comment: CommentField = Field(default=None, alias="ketquahk1")
    term2_comment: CommentField = Field(default=None, alias="ketquahk2")
    year_comment: CommentField = Field(default=None, alias="ketquacn")
    # The form's last columns (issue 12): the re-assessed average or result, when the student
    # was re-assessed (đánh giá lại), and the subject teacher who confirms the row and signs
    # this subject's results (so a signer can be chosen; the aliases are ours).
    reassessment_average: Average = Field(default=None, alias="dtbdanhgialai")
    reassessment_comment: CommentField = Field(default=None, alias="ketquadanhgialai")
    teacher_name: OptText = Field(default=None, alias="hotengvbm", max_length=100)
    teacher_personal_id: OptPersonalId = Field(default=None, alias="sodinhdanhgvbm")

    @property
    def is_comment_only(self) -> bool:
        return self.year_comment is not None

    @model_validator(mode="after")
    def _scored_or_commented(self) -> "SecondarySubject":
        scored = self.year_average is not None
        if scored == self.is_comment_only:
            raise FieldError(
                "year_average",
                f"subject {self.subject_code}: give either year_average (scored) or year_comment (Đ/CĐ), exactly one",
            )
        if self.reassessment_average is not None and self.is_comment_only:
            raise FieldError("reassessment_average", f"subject {self.subject_code} is assessed by comment: "
                             "give reassessment_comment (Đ/CĐ)")
        if self.reassessment_comment is not None and not self.is_comment_only:
            raise FieldError("reassessment_comment", f"subject {self.subject_code} is scored: "
                             "give reassessment_average")
        return self


class TermLevels(_Model):
    """A Thông tư 22 level per term and for the year (``hocky1``, ``hocky2``, ``canam``)."""
    term1: SecondaryLevelField = Field(default=None, alias="hocky1")
    term2: SecondaryLevelField = Field(default=None, alias="hocky2")
    year: Annotated[SecondaryLevel, BeforeValidator(_level_code)] = Field(alias="canam")


class Certificate(_Model):
    """A certificate listed on a secondary transcript (``_chungchi``)."""
    name: Text = Field(alias="tenchungchi", min_length=1)
    issued_on: OptDate = Field(default=None, alias="ngaycap")
    issuer: OptText = Field(default=None, alias="noicap")


class SchoolYearEntry(_Model):
    """One row of the particulars page's school history (``quatrinhhoctap``): a year at a school."""
    school_year: Annotated[str, Field(pattern=r"^\d{4}-\d{4}$")] = Field(alias="namhoc")
    class_name: Text = Field(alias="tenlop", min_length=1)
    school_name: Text = Field(alias="tentruong", min_length=1)
    registration_number: OptText = Field(default=None, alias="sodangbo")
    enrolled_on: OptDate = Field(default=None, alias="ngaynhaphoc")


class _Transcript(_Model):
    # Envelope, on every record the national data centre receives.
    record_id: Text = Field(alias="idbanghi", min_length=1, max_length=64)
    event: Event = Field(alias="sukien")
    version: int = Field(alias="phienban", ge=1)
    updated_at: dt.datetime = Field(alias="thoigiancapnhat")
    # Transcript.
    transcript_id: Text = Field(alias="madinhdanhhocba", min_length=1)
    status: Text = Field(default="1", alias="trangthaithongtinhocba")
    department_code: Annotated[str, Field(pattern=r"^\d{2,3}$")] = Field(alias="masogd")
    school_code: Annotated[str, Field(pattern=r"^\d{8,12}$")] = Field(alias="matruong")
    school_name: Text = Field(alias="tentruong", min_length=1)
    grade: int = Field(alias="makhoi", ge=1, le=12)
    class_name: Text = Field(alias="tenlop", min_length=1)
    school_year: Annotated[str, Field(pattern=r"^\d{4}-\d{4}$")] = Field(alias="namhoc")
    student: Student = Field(alias="hocsinh")
    signatories: Signatories = Field(alias="kyduyet")
    # The forms' common parts (issue 12): the homeroom teacher's comments and the years before
    # this one (the particulars page lists this year's row from the record itself).
    homeroom_comment: OptText = Field(default=None, alias="nhanxetgvcn", max_length=2000)
    history: list[SchoolYearEntry] = Field(default_factory=list, alias="quatrinhhoctap")

    @model_validator(mode="after")
    def _envelope_and_year(self) -> "_Transcript":
        start, end = (int(y) for y in self.school_year.split("-"))
        if end != start + 1:
            raise FieldError("school_year", f"{self.school_year} must span two consecutive years")
        if not self.school_code.startswith(self.department_code):
            raise FieldError("school_code", f"{self.school_code} must start with department_code {self.department_code}")
        return self


class PrimaryTranscript(_Transcript):
    """A primary-school transcript (Thông tư 27/2020/TT-BGDĐT)."""
    level: Literal[SchoolLevel.PRIMARY] = Field(alias="macaphoc")
    subjects: list[PrimarySubject] = Field(alias="dsbangdiem", min_length=1)
    qualities: dict[str, QualityLevelField] = Field(alias="phamchat")
    competencies: dict[str, QualityLevelField] = Field(alias="nangluc")
    completed_grade_program: Bool = Field(alias="dahthanhctrinhlophoc")
    completed_primary_program: OptBool = Field(default=None, alias="dahthanhctrinhtieuhoc")
    promoted: Bool = Field(alias="duoclenlop")
    awards: list[Text] = Field(default_factory=list, alias="khenthuong")
    # Thông tư 27's overall result and the comments the form prints (issue 12).
    overall_result: OverallResultField = Field(default=None, alias="ketquagiaoduc")
    qualities_comment: OptText = Field(default=None, alias="nhanxetphamchat", max_length=2000)
    general_competencies_comment: OptText = Field(default=None, alias="nhanxetnanglucchung", max_length=2000)
    subject_competencies_comment: OptText = Field(default=None, alias="nhanxetnanglucdacthu", max_length=2000)

    @model_validator(mode="after")
    def _primary_rules(self) -> "PrimaryTranscript":
        if not 1 <= self.grade <= 5:
            raise FieldError("grade", f"{self.grade} is not a primary grade (1-5)")
        missing = [q for q in QUALITIES if q not in self.qualities]
        if missing:
            raise FieldError("qualities", f"missing {', '.join(missing)}")
        unknown = sorted(set(self.qualities) - set(QUALITIES))
        if unknown:
            raise FieldError("qualities", f"unknown {', '.join(unknown)}")
        missing = [c for c in GENERAL_COMPETENCIES if c not in self.competencies]
        if missing:
            raise FieldError("competencies", f"missing {', '.join(missing)}")
        if self.completed_primary_program is not None and self.grade != 5:
            raise FieldError("completed_primary_program", "is only stated in grade 5")
        if self.overall_result is not None and (self.overall_result != OverallResult.CHT) != self.completed_grade_program:
            raise FieldError("overall_result", f"{self.overall_result.value} contradicts completed_grade_program="
                             f"{self.completed_grade_program} (only CHT means the grade is not completed)")
        return self


class SecondaryTranscript(_Transcript):
    """A secondary-school transcript (Thông tư 22/2021/TT-BGDĐT)."""
    level: Literal[SchoolLevel.LOWER_SECONDARY, SchoolLevel.UPPER_SECONDARY] = Field(alias="macaphoc")
    subjects: list[SecondarySubject] = Field(alias="dsbangdiem", min_length=1)
    learning: TermLevels = Field(alias="ketquahoctap")
    conduct: TermLevels = Field(alias="ketquarenluyen")
    days_absent: int = Field(default=0, alias="songaynghi", ge=0, le=366)
    promoted: Bool = Field(alias="duoclenlop")
    certificates: list[Certificate] = Field(default_factory=list, alias="chungchi")
    # The form's end of year (issue 12): awards; the results after re-assessment and after
    # summer conduct training, where they apply; completion of the level in grade 9 or 12,
    # which those transcripts state instead of promotion.
    awards: list[Text] = Field(default_factory=list, alias="khenthuong")
    learning_reassessed: SecondaryLevelField = Field(default=None, alias="ketquahoctapsaudanhgialai")
    conduct_after_summer: SecondaryLevelField = Field(default=None, alias="ketquarenluyensauhe")
    completed_level_program: OptBool = Field(default=None, alias="dahthanhctrinhcaphoc")

    @model_validator(mode="after")
    def _secondary_rules(self) -> "SecondaryTranscript":
        grades = range(6, 10) if self.level == SchoolLevel.LOWER_SECONDARY else range(10, 13)
        if self.grade not in grades:
            raise FieldError("grade", f"{self.grade} does not belong to school level {self.level.value}")
        for period in ("term1", "term2", "year"):
            stated = getattr(self.learning, period)
            if stated is not None:
                check_learning_result(self.subjects, period, stated)
        if self.completed_level_program is not None and self.grade not in (9, 12):
            raise FieldError("completed_level_program", "is only stated in grade 9 or 12")
        if self.promoted:
            reasons = []
            # A re-assessment or summer training replaces the year's result it was held for.
            learning = self.learning_reassessed or self.learning.year
            conduct = self.conduct_after_summer or self.conduct.year
            if SECONDARY_RANK[learning] < SECONDARY_RANK[SecondaryLevel.D]:
                reasons.append(f"learning.year is {learning.value}")
            if SECONDARY_RANK[conduct] < SECONDARY_RANK[SecondaryLevel.D]:
                reasons.append(f"conduct.year is {conduct.value}")
            if self.days_absent > 45:
                reasons.append(f"days_absent is {self.days_absent} (> 45)")
            if reasons:
                raise RuleViolation(
                    "TT22.len_lop",
                    "promoted needs learning and conduct at least Đạt and at most 45 days absent; "
                    + "; ".join(reasons),
                    "promoted",
                )
        return self


class FieldError(ValueError):
    """A check that spans several fields, reported against the one to fix (``field``)."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(message)


class RuleViolation(FieldError):
    """A stated result that contradicts the record's own data; ``rule`` names the rule."""

    def __init__(self, rule: str, message: str, field: str):
        self.rule = rule
        super().__init__(field, f"rule {rule}: {message}")


def check_learning_result(subjects: list[SecondarySubject], period: str, stated: SecondaryLevel) -> None:
    """Check a stated Thông tư 22 learning result against the subjects' averages and comments.

    Rules (stated → requirement): Tốt: every comment subject Đạt, every average ≥ 6.5, at least
    six ≥ 8.0. Khá: every comment subject Đạt, every average ≥ 5.0, at least six ≥ 6.5. Đạt: at
    most one comment subject Chưa đạt, at least six averages ≥ 5.0, none below 3.5. A result
    better than the data supports is a violation; Chưa đạt is never contradicted (a school may
    hold a student back for reasons the scores do not show, e.g. re-assessment pending).
    """
    averages = [getattr(s, f"{period}_average") for s in subjects if not s.is_comment_only]
    averages = [a for a in averages if a is not None]
    comments = [getattr(s, f"{period}_comment") for s in subjects if s.is_comment_only]
    failed_comments = sum(1 for c in comments if c == CommentResult.CD)
    label = f"learning.{period}"
    if stated == SecondaryLevel.T:
        rule, needs = "TT22.hoc_tap.tot", (0, 6.5, 8.0)
    elif stated == SecondaryLevel.K:
        rule, needs = "TT22.hoc_tap.kha", (0, 5.0, 6.5)
    elif stated == SecondaryLevel.D:
        rule, needs = "TT22.hoc_tap.dat", (1, 3.5, 5.0)
    else:
        return
    max_failed, floor, high = needs
    problems = []
    if failed_comments > max_failed:
        problems.append(f"{failed_comments} comment subject(s) Chưa đạt (at most {max_failed})")
    low = [a for a in averages if a < floor]
    if low:
        problems.append(f"average(s) {', '.join(str(a) for a in low)} below {floor}")
    if sum(1 for a in averages if a >= high) < 6:
        problems.append(f"fewer than six averages ≥ {high}")
    if problems:
        raise RuleViolation(rule, f"{label} is {stated.value} but " + "; ".join(problems), label)


def _level_of(value: Any) -> str | None:
    raw = value.get("level", value.get("macaphoc")) if isinstance(value, dict) else getattr(value, "level", None)
    raw = str(raw.value if hasattr(raw, "value") else raw or "").strip().zfill(2)
    if raw == SchoolLevel.PRIMARY.value:
        return "primary"
    if raw in (SchoolLevel.LOWER_SECONDARY.value, SchoolLevel.UPPER_SECONDARY.value):
        return "secondary"
    return None


TranscriptRecord = Annotated[
    Union[
        Annotated[PrimaryTranscript, Tag("primary")],
        Annotated[SecondaryTranscript, Tag("secondary")],
    ],
    Discriminator(
        _level_of,
        custom_error_type="school_level",
        custom_error_message="level (macaphoc) must be 02 (primary), 03 or 04 (secondary)",
    ),
]
"""A transcript record in the central format: primary or secondary, chosen by ``level``."""

_ADAPTER: TypeAdapter[Any] = TypeAdapter(TranscriptRecord)


def parse_transcript(data: dict[str, Any]) -> PrimaryTranscript | SecondaryTranscript:
    """Validate central-format data (snake_case names or catalogue aliases).

    Raises pydantic's ``ValidationError``; ``field_errors`` turns it into field-named lines.
    """
    if isinstance(data.get("level"), str):
        data = {**data, "level": data["level"].strip().zfill(2)}
    return _ADAPTER.validate_python(data)


def transcript_json_schema() -> dict[str, Any]:
    """The JSON Schema of the central format (export names, i.e. catalogue aliases)."""
    return _ADAPTER.json_schema(by_alias=True)


def field_errors(error: ValidationError) -> list[str]:
    """One ``path: message`` line per error, the path using snake_case names.

    The discriminator tag (``primary``/``secondary``) pydantic puts first in each location is
    dropped: it is not a field a person can fix.
    """
    lines = []
    for err in error.errors(include_url=False):
        loc = [str(p) for p in err["loc"] if p not in ("primary", "secondary")]
        path = ""
        for part in loc:
            path += f"[{part}]" if part.isdigit() else (f".{part}" if path else part)
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, FieldError):
            # A model-level check: name the field to fix, under the model's own path.
            path = f"{path}.{cause.field}" if path else cause.field
        elif err["type"] == "school_level":
            path = "level"
        message = err["msg"].removeprefix("Value error, ")
        lines.append(f"{path or '(record)'}: {message}")
    return lines
