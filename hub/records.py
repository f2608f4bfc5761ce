"""The central transcript format: what every adapter normalises to and the hub delivers.

Field names are English snake_case; each carries the Ministry's data-catalogue name as its
alias, so ``model_dump(by_alias=True)`` is the export shape. Input cleaning that every vendor
needs (NFC names, doubled spaces, ``dd/MM/yyyy`` dates, comma decimals, ``Nam``/``Nữ``,
empty strings) lives here once, in ``BeforeValidator``s, so adapters only map keys.
"""

from __future__ import annotations

import datetime as dt
import functools
import math
import re
import unicodedata
from collections.abc import Callable
from enum import IntEnum, StrEnum
from typing import Annotated, Any, Literal, Union

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Strict,
    Tag,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from hub import catalogue, identifiers

__all__ = [
    "VIETNAM_TIME", "Event", "SchoolLevel", "Gender", "PrimaryLevel", "QualityLevel", "SecondaryLevel",
    "CommentResult", "Student", "Signatories", "PrimarySubject", "SecondarySubject",
    "TermLevels", "Certificate", "PrimaryTranscript", "SecondaryTranscript",
    "TranscriptRecord", "parse_transcript", "transcript_json_schema", "field_errors",
    "RuleViolation", "FieldError", "QUALITIES", "GENERAL_COMPETENCIES",
    "OverallResult", "SchoolYearEntry",
]


# --- input cleaning -------------------------------------------------------------------------
#
# Messages say what is wrong and never quote the value: they land in logs, the quarantine and
# the status page, and the value may be a name, a birth date or an identity number.

# The central format's clock: every school's dates and vendor timestamps are Vietnam time (UTC+7,
# no daylight saving). Everything in the hub that reads or prints local time uses this one.
VIETNAM_TIME = dt.timezone(dt.timedelta(hours=7), "ICT")
"""The Vietnam clock (UTC+7, no daylight saving): dates in the central format are Vietnam dates."""

# Controls that mean "a break" become a space (then collapse); every other control, format
# character (zero-width space/joiners, BOM, soft hyphen, bidi marks), private-use, surrogate or
# unassigned code point is removed: none can be seen, all can make equal names differ.
_SPACE_CONTROLS = frozenset("\t\n\r\x0b\x0c\x1c\x1d\x1e\x1f\x85")
# Characters a spreadsheet program evaluates at the start of a cell; no name starts with one.
FORMULA_START = ("=", "+", "-", "@")


def _blank_to_none(value: Any) -> Any:
    # Vendors send "" for "unknown"; the central format says None, never a silent default.
    if isinstance(value, str) and not value.strip():
        return None
    return value


def _ascii_digits(text: str) -> str:
    """Unicode decimal digits (full-width, Arabic-Indic, …) as the ASCII digits they stand for."""
    if text.isascii():
        return text
    return "".join(str(unicodedata.decimal(ch)) if not ch.isascii() and unicodedata.decimal(ch, None) is not None
                   else ch for ch in text)


def _visible(text: str) -> str:
    out = []
    for ch in text:
        if ch in _SPACE_CONTROLS:
            out.append(" ")
        elif unicodedata.category(ch)[0] != "C":
            out.append(ch)
    return "".join(out)


def clean_text(value: Any, max_length: int | None = None) -> Any:
    """Text as the central format stores it: invisible characters removed, NFC, one space
    between words, trimmed, Unicode digits as ASCII; ``None`` if nothing visible is left.
    ``ValueError`` for a text longer than ``max_length`` or with a combining mark that has no
    base letter."""
    if not isinstance(value, str):
        return value
    if len(value) <= 64:
        return _clean_short(value, max_length)
    return _clean(value, max_length)


# Short texts repeat across a class's transcripts (subjects, levels, school, teachers' names)
# and each is cleaned again every time a record is validated: the answer is kept (a refusal,
# ``ValueError``, is not, and is raised again each time).
@functools.lru_cache(maxsize=8192)
def _clean_short(value: str, max_length: int | None) -> str | None:
    return _clean(value, max_length)


def _clean(value: str, max_length: int | None) -> str | None:
    # Refuse a huge value before spending time on it (a 5 MB "name"); the exact check is below.
    if max_length is not None and len(value) > 4 * max_length + 64:
        raise ValueError(f"longer than {max_length} characters")
    # Unicode digits (full-width, Arabic-Indic…) are the ASCII digits they stand for in every
    # text: "５A" and "5A" are one class, "HB０１" and "HB01" one transcript.
    text = _ascii_digits(re.sub(r"\s+", " ", unicodedata.normalize("NFC", _visible(value))).strip())
    if not text:
        return None
    if max_length is not None and len(text) > max_length:
        raise ValueError(f"longer than {max_length} characters")
    if any(unicodedata.category(ch)[0] == "M" and (i == 0 or text[i - 1] == " ") for i, ch in enumerate(text)):
        raise ValueError("has a combining mark with no letter before it")
    return text


def _text(max_length: int, *, required: bool = True, person: bool = False) -> Any:
    def clean(value: Any) -> Any:
        value = clean_text(value, max_length)
        if value is None and required:
            raise ValueError("is empty")
        if person and isinstance(value, str) and value.startswith(FORMULA_START):
            raise ValueError("a name cannot start with = + - or @")
        return value
    return BeforeValidator(clean)


def _parse_date(value: Any) -> Any:
    """``dd/MM/yyyy``, ``yyyy-MM-dd``, or an ISO date-time; a date-time with a zone is taken
    on the Vietnam clock first (``2008-08-01T17:00:00Z`` is 2 August 2008)."""
    value = _blank_to_none(value)
    if isinstance(value, dt.datetime):
        return value.astimezone(VIETNAM_TIME).date() if value.tzinfo else value.date()
    if not isinstance(value, str):
        return value
    text = _ascii_digits(clean_text(value) or "")
    m = re.fullmatch(r"([0-9]{1,2})/([0-9]{1,2})/([0-9]{4})", text)
    if m:
        day, month, year = (int(g) for g in m.groups())
        try:
            return dt.date(year, month, day)
        except ValueError as exc:
            raise ValueError(f"impossible date ({exc})") from None
    if re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", text):
        try:
            return dt.date.fromisoformat(text)
        except ValueError as exc:
            raise ValueError(f"impossible date ({exc})") from None
    if re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,6})?)?"
                    r"(Z|[+-][0-9]{2}:?[0-9]{2})?", text):
        try:
            moment = dt.datetime.fromisoformat(text)
        except ValueError as exc:
            # Python's reason ("hour must be in 0..23"), unless it quotes the value.
            reason = "" if "'" in str(exc) else f" ({exc})"
            raise ValueError(f"impossible date or time{reason}") from None
        return moment.astimezone(VIETNAM_TIME).date() if moment.tzinfo else moment.date()
    raise ValueError("not a date: expected dd/MM/yyyy, yyyy-MM-dd or an ISO date-time")


def _number_text(value: str) -> str:
    return _ascii_digits(clean_text(value) or "").replace(",", ".")


def _number_or_none(value: Any, what: str, digits: str, convert: Callable[[str], Any]) -> Any:
    """How a number field reads its value: None when blank, text ``convert``-ed once it is
    ``digits`` (``,`` as decimal mark too), anything else as it is for the caller to judge; a
    yes/no value is never a number."""
    value = _blank_to_none(value)
    if isinstance(value, bool):
        raise ValueError(f"not {what} (a yes/no value)")
    if isinstance(value, str):
        text = _number_text(value)
        if not re.fullmatch(digits, text):
            raise ValueError(f"not {what}")
        return convert(text)
    return value


def _parse_decimal(value: Any) -> Any:
    """A score: a JSON number, or text of digits with ``.`` or ``,`` as decimal mark. Never a
    yes/no value, NaN or infinity."""
    value = _number_or_none(value, "a number", r"[+-]?[0-9]+(\.[0-9]+)?", float)
    if value is None:
        return None
    if isinstance(value, int):
        return float(value)
    if isinstance(value, float):
        if math.isnan(value):
            raise ValueError("not a number")
        if math.isinf(value):
            raise ValueError("not a finite number")
        return value
    raise ValueError("not a number")


def _parse_int(value: Any) -> Any:
    """A whole number: a JSON integer (or a float with no fraction), or text of digits."""
    value = _number_or_none(value, "a whole number", r"[+-]?[0-9]+", int)
    if value is None:
        return None
    if isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer():
            raise ValueError("not a whole number")
        return int(value)
    if isinstance(value, int):
        return value
    raise ValueError("not a whole number")


def _parse_gender(value: Any) -> Any:
    value = _blank_to_none(value)
    if value is None:
        # Missing is not "unknown": a sender that does not know says 0.
        raise ValueError("missing (0 means unknown)")
    if isinstance(value, bool):
        raise ValueError("not a gender code (a yes/no value)")
    if isinstance(value, str):
        key = _ascii_digits(clean_text(value) or "").lower()
        mapping = {"nam": 1, "male": 1, "m": 1, "nữ": 2, "nu": 2, "female": 2, "f": 2, "0": 0, "1": 1, "2": 2}
        if key in mapping:
            return Gender(mapping[key])
        raise ValueError("not one of Nam, Nữ, 0, 1, 2")
    if isinstance(value, int) and value in (0, 1, 2):
        return Gender(value)
    raise ValueError("not one of Nam, Nữ, 0, 1, 2")


def _parse_bool(value: Any) -> Any:
    value = _blank_to_none(value)
    if isinstance(value, str):
        key = unicodedata.normalize("NFC", clean_text(value) or "").lower()
        if key in {"1", "true", "có", "co", "x", "yes"}:
            return True
        if key in {"0", "false", "không", "khong", "no"}:
            return False
        raise ValueError("not a yes/no value")
    if isinstance(value, int) and not isinstance(value, bool) and value in (0, 1):
        return bool(value)
    if value is None or isinstance(value, bool):
        return value
    raise ValueError("not a yes/no value")


def _digits(value: Any) -> Any:
    # Codes made of digits: Unicode digits become ASCII; the field's pattern then says [0-9].
    if isinstance(value, str):
        value = clean_text(value, 64)
        return _ascii_digits(value) if value is not None else None
    return value


def _personal_id(value: Any) -> Any:
    value = _digits(value)
    if isinstance(value, str) and not re.fullmatch(r"[0-9]{12}", value):
        raise ValueError("must be 12 digits")
    return value


def _level_code(value: Any) -> Any:
    # Level scales are case-insensitive in vendor data and sometimes decomposed (Đ vs D+stroke).
    value = _blank_to_none(value)
    if isinstance(value, str):
        return (clean_text(value, 8) or "").upper() or None
    return value


def _subject_code(value: Any) -> Any:
    # Codes compare case-insensitively (the catalogue's are upper case): stored as the catalogue has them.
    value = clean_text(value, 20)
    return value.upper() if isinstance(value, str) else value


def _one_decimal(value: float | None) -> float | None:
    if value is not None and round(value, 1) != value:
        raise ValueError("has more than one decimal")
    return value


S = Strict()  # no lax coercion: the cleaning above is the only conversion a value gets


def _text_field(max_length: int, *, person: bool = False) -> Any:
    return Annotated[Annotated[str, S], _text(max_length, person=person)]


def _opt_text_field(max_length: int, *, person: bool = False) -> Any:
    return Annotated[Annotated[str, S] | None, _text(max_length, required=False, person=person)]


# Limits per kind of text (the message names the limit); every text field has one.
Text = _text_field(200)
OptText = _opt_text_field(200)
Name = _text_field(100, person=True)
OptName = _opt_text_field(100, person=True)
Code = _text_field(64)
Comment = _opt_text_field(1000)
Date = Annotated[Annotated[dt.date, S], BeforeValidator(_parse_date)]
OptDate = Annotated[Annotated[dt.date, S] | None, BeforeValidator(_parse_date)]
OptPersonalId = Annotated[Annotated[str, S] | None, BeforeValidator(_personal_id)]
Digits = Annotated[Annotated[str, S], BeforeValidator(_digits)]
OptBool = Annotated[Annotated[bool, S] | None, BeforeValidator(_parse_bool)]
Bool = Annotated[Annotated[bool, S], BeforeValidator(_parse_bool)]
Average = Annotated[
    Annotated[float, S, Field(ge=0, le=10)] | None, BeforeValidator(_parse_decimal), AfterValidator(_one_decimal)
]
TestScore = Annotated[Annotated[int, S, Field(ge=1, le=10)] | None, BeforeValidator(_parse_int)]
WholeNumber = Annotated[Annotated[int, S], BeforeValidator(_parse_int)]
SubjectCode = Annotated[Annotated[str, S], BeforeValidator(_subject_code)]


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
        text = clean_text(value, 40) or ""
        return _OVERALL_NAMES.get(text.lower(), text.upper()) or None
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
    student_code: _text_field(50) = Field(alias="mahocsinh")
    personal_id: OptPersonalId = Field(default=None, alias="sodinhdanhcanhan")
    full_name: Name = Field(alias="hovaten")
    birth_date: Date = Field(alias="ngaysinh")
    gender: Annotated[Annotated[Gender, S], BeforeValidator(_parse_gender)] = Field(alias="gioitinh")
    ethnicity: _opt_text_field(50) = Field(default=None, alias="dantoc")
    # No default: a nationality the sender did not state stays unknown.
    nationality: _opt_text_field(50) = Field(default=None, alias="quoctich")
    father_name: OptName = Field(default=None, alias="hotencha")
    mother_name: OptName = Field(default=None, alias="hotenme")
    guardian_name: OptName = Field(default=None, alias="hotennguoigiamho")
    policy_group: OptText = Field(default=None, alias="doituongchinhsach")
    # Documented default: a student is assessed unless the sender says otherwise.
    disability_not_assessed: Bool = Field(default=False, alias="cokhuyettatkhongdanhgia")
    # The forms' particulars page (issue 12): where the student was born and lives, and the
    # school's register number (số đăng bộ).
    birth_place: _opt_text_field(200) = Field(default=None, alias="noisinh")
    residence: _opt_text_field(300) = Field(default=None, alias="noiohientai")
    registration_number: _opt_text_field(50) = Field(default=None, alias="sodangbo")

    @model_validator(mode="after")
    def _born_in_the_past(self) -> "Student":
        if not dt.date(1990, 1, 1) <= self.birth_date <= dt.date.today():
            raise FieldError("birth_date", "is outside 1990-01-01..today")
        return self

    def check_personal_id(self) -> None:
        """The id's gender/century and birth-year digits agree with gender and birth date (run
        by the transcript after its age rule: a wrong birth date is named as such first)."""
        if self.personal_id is not None:
            wrong = identifiers.problems(self.personal_id, int(self.gender), self.birth_date)
            if wrong:
                raise FieldError("student.personal_id", "not a citizen id number: " + "; ".join(wrong))


def _id_of_adult(field: str, number: str | None) -> None:
    if number is not None:
        wrong = identifiers.problems(number)
        if wrong:
            raise FieldError(field, "not a citizen id number: " + "; ".join(wrong))


class Signatories(_Model):
    """Who signs the transcript, and where and when it is issued."""
    homeroom_teacher_name: Name = Field(alias="hotengvcn")
    homeroom_teacher_personal_id: OptPersonalId = Field(default=None, alias="sodinhdanhgvcn")
    principal_name: Name = Field(alias="hotenhieutruong")
    principal_personal_id: OptPersonalId = Field(default=None, alias="sodinhdanhhieutruong")
    # Documented default: the signer is the principal unless the sender names a deputy's title.
    principal_title: _text_field(100) = Field(default="Hiệu trưởng", alias="chucvugiamhieu")
    issue_date: Date = Field(alias="ngayky")
    issue_place: _text_field(100) = Field(alias="diadanhphathanh")

    @model_validator(mode="after")
    def _ids(self) -> "Signatories":
        _id_of_adult("homeroom_teacher_personal_id", self.homeroom_teacher_personal_id)
        _id_of_adult("principal_personal_id", self.principal_personal_id)
        return self


class PrimarySubject(_Model):
    """One subject or activity under Thông tư 27."""
    subject_code: SubjectCode = Field(alias="mamonhoc", min_length=1)
    subject_name: _text_field(100) = Field(alias="tenmonhoc")
    term1_level: PrimaryLevelField = Field(default=None, alias="mucdathk1")
    year_level: Annotated[PrimaryLevel, BeforeValidator(_level_code)] = Field(alias="mucdatcn")
    term1_score: TestScore = Field(default=None, alias="diemktdkhk1")
    year_score: TestScore = Field(default=None, alias="diemktdkcn")
    comment: Comment = Field(default=None, alias="nhanxet")


class SecondarySubject(_Model):
    """One subject under Thông tư 22: scored (averages) or assessed by comment (Đ/CĐ)."""
    subject_code: SubjectCode = Field(alias="mamonhoc", min_length=1)
    subject_name: _text_field(100) = Field(alias="tenmonhoc")
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
    teacher_name: OptName = Field(default=None, alias="hotengvbm")
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
        _id_of_adult("teacher_personal_id", self.teacher_personal_id)
        return self


class TermLevels(_Model):
    """A Thông tư 22 level per term and for the year (``hocky1``, ``hocky2``, ``canam``)."""
    term1: SecondaryLevelField = Field(default=None, alias="hocky1")
    term2: SecondaryLevelField = Field(default=None, alias="hocky2")
    year: Annotated[SecondaryLevel, BeforeValidator(_level_code)] = Field(alias="canam")


class Certificate(_Model):
    """A certificate listed on a secondary transcript (``_chungchi``)."""
    name: Text = Field(alias="tenchungchi")
    issued_on: OptDate = Field(default=None, alias="ngaycap")
    issuer: OptText = Field(default=None, alias="noicap")


class SchoolYearEntry(_Model):
    """One row of the particulars page's school history (``quatrinhhoctap``): a year at a school."""
    school_year: Digits = Field(alias="namhoc", pattern=r"^[0-9]{4}-[0-9]{4}$")
    class_name: _text_field(20) = Field(alias="tenlop")
    school_name: Text = Field(alias="tentruong")
    registration_number: _opt_text_field(50) = Field(default=None, alias="sodangbo")
    enrolled_on: OptDate = Field(default=None, alias="ngaynhaphoc")


class _Transcript(_Model):
    # Envelope, on every record the national data centre receives.
    record_id: Code = Field(alias="idbanghi")
    event: Event = Field(alias="sukien")
    version: WholeNumber = Field(alias="phienban", ge=1)
    updated_at: dt.datetime = Field(alias="thoigiancapnhat")
    # Transcript.
    transcript_id: Code = Field(alias="madinhdanhhocba")
    # Documented default: 1 (in use), the only status a school sends in practice.
    status: _text_field(10) = Field(default="1", alias="trangthaithongtinhocba")
    department_code: Digits = Field(alias="masogd", pattern=r"^[0-9]{2,3}$")
    school_code: Digits = Field(alias="matruong", pattern=r"^[0-9]{8,12}$")
    school_name: Text = Field(alias="tentruong")
    grade: WholeNumber = Field(alias="makhoi", ge=1, le=12)
    class_name: _text_field(20) = Field(alias="tenlop")
    school_year: Digits = Field(alias="namhoc", pattern=r"^[0-9]{4}-[0-9]{4}$")
    student: Student = Field(alias="hocsinh")
    signatories: Signatories = Field(alias="kyduyet")
    # The forms' common parts (issue 12): the homeroom teacher's comments and the years before
    # this one (the particulars page lists this year's row from the record itself).
    homeroom_comment: _opt_text_field(2000) = Field(default=None, alias="nhanxetgvcn")
    history: list[SchoolYearEntry] = Field(default_factory=list, alias="quatrinhhoctap", max_length=12)

    @model_validator(mode="after")
    def _envelope_and_year(self) -> "_Transcript":
        start, end = (int(y) for y in self.school_year.split("-"))
        if end != start + 1:
            raise FieldError("school_year", f"{self.school_year} must span two consecutive years")
        if not self.school_code.startswith(self.department_code):
            raise FieldError("school_code", f"{self.school_code} must start with department_code {self.department_code}")
        low, high = catalogue.age_range(self.grade)
        age = start - self.student.birth_date.year
        if not low <= age <= high:
            raise RuleViolation(catalogue.AGE_RULE, f"a student of grade {self.grade} is {low} to {high} years old "
                                f"in the year the school year starts; the birth date says otherwise",
                                "student.birth_date")
        self.student.check_personal_id()
        return self

    def _check_subjects(self) -> None:
        """Every subject once (codes compare case-insensitively), each in the catalogue of
        this level and grade; every compulsory subject of the grade present; grades 10-12 at
        most four electives (a student who changed electives mid-level may report fewer for a
        year, never more)."""
        seen: dict[str, int] = {}
        for i, subj in enumerate(self.subjects):
            code = catalogue.canonical_code(subj.subject_code)
            key = subj.subject_code.casefold()
            if key in seen:
                raise FieldError(f"subjects[{i}].subject_code",
                                 f"{subj.subject_code} is already subjects[{seen[key]}] (codes compare ignoring case)")
            seen[key] = i
            if catalogue.taught(self.level.value, self.grade, code) is None:
                known = catalogue.name_of(code)
                why = (f"{subj.subject_code} ({known}) is not taught in grade {self.grade}" if known
                       else f"{subj.subject_code} is not in the subject catalogue")
                raise FieldError(f"subjects[{i}].subject_code", why)
        level = self.level.value
        chosen = catalogue.electives_among(level, self.grade, [s.subject_code for s in self.subjects])
        if len(chosen) > catalogue.ELECTIVE_COUNT:
            extra = chosen[catalogue.ELECTIVE_COUNT]
            raise FieldError(f"subjects[{extra}].subject_code",
                             f"{self.subjects[extra].subject_code} is one elective too many: grades 10-12 "
                             f"choose at most {catalogue.ELECTIVE_COUNT} electives")
        missing = catalogue.missing_compulsory(level, self.grade, [s.subject_code for s in self.subjects])
        if missing:
            raise FieldError("subjects", "missing compulsory subject(s) of grade "
                             f"{self.grade}: " + ", ".join(f"{s.code} ({s.name})" for s in missing))


class PrimaryTranscript(_Transcript):
    """A primary-school transcript (Thông tư 27/2020/TT-BGDĐT)."""
    level: Literal[SchoolLevel.PRIMARY] = Field(alias="macaphoc")
    subjects: list[PrimarySubject] = Field(alias="dsbangdiem", min_length=1, max_length=40)
    qualities: dict[str, QualityLevelField] = Field(alias="phamchat")
    competencies: dict[str, QualityLevelField] = Field(alias="nangluc")
    completed_grade_program: Bool = Field(alias="dahthanhctrinhlophoc")
    completed_primary_program: OptBool = Field(default=None, alias="dahthanhctrinhtieuhoc")
    promoted: Bool = Field(alias="duoclenlop")
    awards: list[Text] = Field(default_factory=list, alias="khenthuong", max_length=50)
    # Thông tư 27's overall result and the comments the form prints (issue 12).
    overall_result: OverallResultField = Field(default=None, alias="ketquagiaoduc")
    qualities_comment: _opt_text_field(2000) = Field(default=None, alias="nhanxetphamchat")
    general_competencies_comment: _opt_text_field(2000) = Field(default=None, alias="nhanxetnanglucchung")
    subject_competencies_comment: _opt_text_field(2000) = Field(default=None, alias="nhanxetnanglucdacthu")

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
        self._check_subjects()
        for i, subj in enumerate(self.subjects):
            entry = catalogue.taught(self.level.value, self.grade, subj.subject_code)
            if entry is not None and not entry.periodic_test:
                for fld in ("term1_score", "year_score"):
                    if getattr(subj, fld) is not None:
                        raise FieldError(f"subjects[{i}].{fld}", f"{subj.subject_code} has no periodic test in "
                                         f"grade {self.grade} (Thông tư 27, Điều 7)")
        return self


class SecondaryTranscript(_Transcript):
    """A secondary-school transcript (Thông tư 22/2021/TT-BGDĐT)."""
    level: Literal[SchoolLevel.LOWER_SECONDARY, SchoolLevel.UPPER_SECONDARY] = Field(alias="macaphoc")
    subjects: list[SecondarySubject] = Field(alias="dsbangdiem", min_length=1, max_length=40)
    learning: TermLevels = Field(alias="ketquahoctap")
    conduct: TermLevels = Field(alias="ketquarenluyen")
    # Required: an absent count is never assumed to be 0.
    days_absent: WholeNumber = Field(alias="songaynghi", ge=0, le=366)
    promoted: Bool = Field(alias="duoclenlop")
    certificates: list[Certificate] = Field(default_factory=list, alias="chungchi", max_length=50)
    # The form's end of year (issue 12): awards; the results after re-assessment and after
    # summer conduct training, where they apply; completion of the level in grade 9 or 12,
    # which those transcripts state instead of promotion.
    awards: list[Text] = Field(default_factory=list, alias="khenthuong", max_length=50)
    learning_reassessed: SecondaryLevelField = Field(default=None, alias="ketquahoctapsaudanhgialai")
    conduct_after_summer: SecondaryLevelField = Field(default=None, alias="ketquarenluyensauhe")
    completed_level_program: OptBool = Field(default=None, alias="dahthanhctrinhcaphoc")

    @model_validator(mode="after")
    def _secondary_rules(self) -> "SecondaryTranscript":
        grades = range(6, 10) if self.level == SchoolLevel.LOWER_SECONDARY else range(10, 13)
        if self.grade not in grades:
            raise FieldError("grade", f"{self.grade} does not belong to school level {self.level.value}")
        self._check_subjects()
        for i, subj in enumerate(self.subjects):
            entry = catalogue.taught(self.level.value, self.grade, subj.subject_code)
            comment_only = entry is not None and entry.comment_only
            if comment_only != subj.is_comment_only:
                how = "by comment only (Đ/CĐ in year_comment)" if comment_only else "with a score (year_average)"
                raise FieldError(f"subjects[{i}].{'year_average' if comment_only else 'year_comment'}",
                                 f"{subj.subject_code} is assessed {how} (Thông tư 22, Điều 5)")
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


def _aliases() -> dict[str, str]:
    out: dict[str, str] = {}
    for model in (Student, Signatories, PrimarySubject, SecondarySubject, TermLevels, Certificate,
                  SchoolYearEntry, PrimaryTranscript, SecondaryTranscript):
        for name, info in model.model_fields.items():
            if info.alias:
                out[info.alias] = name
    return out


_FIELD_OF_ALIAS = _aliases()
# pydantic's wording → what an operator reads (the value itself is never part of a message).
_MESSAGES = {"missing": "missing", "string_type": "not text", "int_type": "not a whole number",
             "float_type": "not a number", "bool_type": "not a yes/no value", "date_type": "not a date",
             "dict_type": "not an object", "list_type": "not a list", "model_type": "not an object",
             "extra_forbidden": "not a field of the central format"}


def field_errors(error: ValidationError, *, export_names: bool = False) -> list[str]:
    """One ``path: message`` line per error, the path using snake_case names.

    The discriminator tag (``primary``/``secondary``) pydantic puts first in each location is
    dropped: it is not a field a person can fix. A catalogue alias in the path (data sent with
    export names) is given as the field's snake_case name, unless ``export_names`` (a receiver
    that speaks the catalogue's names, such as the central store, keeps them).
    """
    lines = []
    for err in error.errors(include_url=False, include_input=False):
        loc = [str(p) for p in err["loc"] if p not in ("primary", "secondary")]
        path = ""
        for part in loc:
            part = part if export_names else _FIELD_OF_ALIAS.get(part, part)
            path += f"[{part}]" if part.isdigit() else (f".{part}" if path else part)
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, FieldError):
            # A model-level check: name the field to fix, under the model's own path.
            path = f"{path}.{cause.field}" if path else cause.field
        elif err["type"] == "school_level":
            path = "level"
        message = _MESSAGES.get(err["type"], err["msg"].removeprefix("Value error, "))
        lines.append(f"{path or '(record)'}: {message}")
    return lines
