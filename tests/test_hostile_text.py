"""Hostile input to the central format: invisible characters, lengths, dates and times, digits,
citizen ids, lax types, duplicates, the subject catalogue, silent defaults, error wording and
personal values in messages. Property-based where the input space is wide.

Each test goes through ``parse_transcript`` (the one normalisation path) from a valid synthetic
transcript with one thing changed, and checks the outcome and the field the error names.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import unicodedata

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs
from pydantic import ValidationError

from hub import catalogue, identifiers
from hub.contracts import PluginContext, RawRecord
from hub.kit import jsonpayload
from hub.kit.synthetic import transcript
from hub.plugins import adapter_types
from hub.records import field_errors, parse_transcript


def _periodic_test(grade: int, code: str) -> bool:
    """Primary: the subject has a periodic test in that grade (Thông tư 27, Điều 7)."""
    entry = catalogue.taught("02", grade, code)
    return entry is not None and entry.periodic_test


ENVELOPE = {"record_id": "00000000-0000-4000-8000-000000000000", "event": "NEW", "version": 1,
            "updated_at": "2025-06-01T07:00:00"}
PROPS = settings(max_examples=150, deadline=None, database=None, derandomize=True,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
PRIMARY, SECONDARY = 0, 3   # transcript(0) is primary, transcript(3) upper secondary

# Zero-width space/non-joiner/joiner, word joiner, BOM, soft hyphen, bidi marks and overrides,
# NUL and other C0 controls, DEL and C1 controls.
INVISIBLE = ["\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u00ad", "\u200e", "\u200f", "\u202a", "\u202e",
             "\u2066", "\x00", "\x01", "\x07", "\x1b", "\x7f", "\x80", "\x9b", "\x9f"]


def record(index: int = PRIMARY) -> dict:
    return {**copy.deepcopy(transcript(index)), **ENVELOPE}


def record_of_grade(grade: int) -> dict:
    """The first synthetic transcript of ``grade`` (its subjects are that grade's), with the envelope."""
    return next(t for t in (record(i) for i in range(400)) if t["grade"] == grade)


def errors(data: dict) -> list[str]:
    with pytest.raises(ValidationError) as err:
        parse_transcript(data)
    return field_errors(err.value)


def fields(data: dict) -> list[str]:
    return [line.split(":")[0] for line in errors(data)]


def sprinkle(text: str, junk: list[str], positions: list[int]) -> str:
    out = list(text)
    for ch, pos in zip(junk, positions):
        out.insert(pos % (len(out) + 1), ch)
    return "".join(out)


# --- text --------------------------------------------------------------------------------------

TEXT_FIELDS = [("student", "full_name"), ("student", "father_name"), ("student", "mother_name"),
               ("student", "ethnicity"), ("student", "student_code"), ("signatories", "principal_name"),
               ("signatories", "homeroom_teacher_name"), ("signatories", "issue_place"), (None, "school_name"),
               (None, "class_name"), (None, "transcript_id")]


@PROPS
@given(where=hs.sampled_from(TEXT_FIELDS), junk=hs.lists(hs.sampled_from(INVISIBLE), min_size=1, max_size=5),
       positions=hs.lists(hs.integers(0, 40), min_size=5, max_size=5))
def test_invisible_and_control_characters_never_reach_a_text_field(where, junk, positions):
    data = record()
    holder = data[where[0]] if where[0] else data
    original = holder[where[1]]
    holder[where[1]] = sprinkle(original, junk, positions)
    parsed = parse_transcript(data).model_dump(mode="json")
    stored = parsed[where[0]][where[1]] if where[0] else parsed[where[1]]
    assert stored == original
    assert all(unicodedata.category(ch)[0] != "C" for ch in stored)


@PROPS
@given(junk=hs.lists(hs.sampled_from(INVISIBLE + [" ", "\t", "\n", "\u00a0"]), min_size=1, max_size=8))
def test_a_name_of_only_invisible_characters_is_empty(junk):
    data = record()
    data["student"]["full_name"] = "".join(junk)
    assert errors(data) == ["student.full_name: is empty"]


@PROPS
@given(mark=hs.characters(whitelist_categories=("Mn", "Me")), rest=hs.sampled_from(["", "An", " Bình"]))
def test_a_combining_mark_with_no_base_letter_is_refused(mark, rest):
    data = record()
    data["student"]["full_name"] = mark + rest
    assert fields(data) == ["student.full_name"]


@pytest.mark.parametrize("where, limit", [(("student", "full_name"), 100), (("student", "father_name"), 100),
                                          (("student", "ethnicity"), 50), ((None, "school_name"), 200),
                                          (("signatories", "issue_place"), 100), ((None, "class_name"), 20)])
def test_every_text_field_has_a_limit_and_the_error_names_it(where, limit):
    for size, huge in ((limit + 1, False), (5_000_000, True)):
        data = record()
        holder = data[where[0]] if where[0] else data
        holder[where[1]] = "A" * size
        path = ".".join(p for p in where if p)
        assert errors(data) == [f"{path}: longer than {limit} characters"], huge


@pytest.mark.parametrize("start", ["=", "+", "-", "@"])
def test_a_name_that_a_spreadsheet_would_evaluate_is_refused(start):
    data = record()
    data["student"]["full_name"] = start + "HYPERLINK(\"http://x\")"
    assert fields(data) == ["student.full_name"]


# --- dates and times ---------------------------------------------------------------------------

@PROPS
@given(moment=hs.datetimes(min_value=dt.datetime(2013, 1, 1), max_value=dt.datetime(2018, 12, 31)),
       offset=hs.integers(-12 * 60, 14 * 60), zulu=hs.booleans())
def test_a_zoned_birth_datetime_is_taken_on_the_vietnam_clock(moment, offset, zulu):
    zone = dt.timezone.utc if zulu else dt.timezone(dt.timedelta(minutes=offset))
    aware = moment.replace(tzinfo=zone, microsecond=0)
    text = aware.isoformat().replace("+00:00", "Z") if zulu else aware.isoformat()
    expected = aware.astimezone(dt.timezone(dt.timedelta(hours=7))).date()
    if not 1 <= 2024 - expected.year - 5 <= 5:
        return
    data = record_of_grade(2024 - expected.year - 5)
    data["student"]["personal_id"] = None
    data["student"]["birth_date"] = text
    assert parse_transcript(data).student.birth_date == expected


def test_the_issue_example_is_the_second_of_august():
    data = record(SECONDARY)
    data["student"].update(birth_date="2008-08-01T17:00:00Z", personal_id=None)
    data["grade"], data["completed_level_program"] = 11, None  # completion is stated in grade 12 only
    assert parse_transcript(data).student.birth_date == dt.date(2008, 8, 2)


@PROPS
@given(tail=hs.sampled_from(["x", "T", "Tgarbage", "T25:00:00", "T10:61:00", "T10:00:61", "T10:00:00+25:00",
                             " 10:00:00 junk", "T10:00:00Zjunk", "T99", "/extra"]))
def test_anything_after_the_date_that_is_not_a_valid_time_is_refused(tail):
    data = record()
    data["student"]["birth_date"] = transcript(PRIMARY)["student"]["birth_date"] + tail
    lines = errors(data)
    assert [line.split(":")[0] for line in lines] == ["student.birth_date"]


@PROPS
@given(grade=hs.integers(1, 12), age=hs.integers(0, 40))
def test_a_birth_date_implausible_for_the_grade_is_refused_naming_the_rule(grade, age):
    low, high = catalogue.age_range(grade)
    data = record_of_grade(grade)
    data["student"]["personal_id"] = None
    data["student"]["birth_date"] = dt.date(2024 - age, 3, 3).isoformat()
    if dt.date(2024 - age, 3, 3) < dt.date(1990, 1, 1):
        return
    if low <= age <= high:
        try:
            parse_transcript(data)
        except ValidationError as exc:  # other rules (TT22 results) may object; never the age rule
            assert not any("age_for_grade" in line for line in field_errors(exc))
    else:
        lines = errors(data)
        assert any(line.startswith("student.birth_date: rule age_for_grade") for line in lines), lines


# --- identifiers -------------------------------------------------------------------------------

DIGIT_SETS = ["０１２３４５６７８９", "٠١٢٣٤٥٦٧٨٩", "۰۱۲۳۴۵۶۷۸۹", "०१२३४५६७८९", "๐๑๒๓๔๕๖๗๘๙"]


@PROPS
@given(digits=hs.sampled_from(DIGIT_SETS), field=hs.sampled_from(["personal_id", "school_code", "department_code"]))
def test_unicode_digits_are_stored_as_ascii(digits, field):
    data = record()
    table = str.maketrans("0123456789", digits)
    if field == "personal_id":
        original = data["student"]["personal_id"]
        data["student"]["personal_id"] = original.translate(table)
        stored = parse_transcript(data).student.personal_id
    else:
        original = data[field]
        data[field] = original.translate(table)
        stored = getattr(parse_transcript(data), field)
    assert stored == original and stored.isascii()


@PROPS
@given(province=hs.text(alphabet="0123456789", min_size=3, max_size=3), rest=hs.text(alphabet="0123456789",
                                                                                     min_size=9, max_size=9))
def test_a_personal_id_follows_the_citizen_id_structure(province, rest):
    data = record()
    student = data["student"]
    born = dt.date.fromisoformat(student["birth_date"])
    number = province + rest
    student["personal_id"] = number
    good = (province in identifiers.PROVINCE_CODES and int(rest[0]) == 2 + (student["gender"] == 2)
            and rest[1:3] == f"{born.year % 100:02d}")
    if good:
        assert parse_transcript(data).student.personal_id == number
    else:
        lines = errors(data)
        assert [line.split(":")[0] for line in lines] == ["student.personal_id"]
        assert number not in "\n".join(lines)


def test_a_gender_that_disagrees_with_the_id_is_refused_naming_the_id():
    data = record()
    data["student"]["gender"] = 3 - data["student"]["gender"]
    assert fields(data) == ["student.personal_id"]


def test_signers_ids_need_a_province_code():
    data = record()
    data["signatories"]["principal_personal_id"] = "000" + data["signatories"]["principal_personal_id"][3:]
    assert fields(data) == ["signatories.principal_personal_id"]


@pytest.mark.parametrize("index", range(24))
def test_synthetic_ids_follow_the_structure(index):
    t = transcript(index)
    s = t["student"]
    assert identifiers.problems(s["personal_id"], s["gender"], dt.date.fromisoformat(s["birth_date"])) == []
    assert identifiers.problems(t["signatories"]["principal_personal_id"]) == []


# --- types -------------------------------------------------------------------------------------

@pytest.mark.parametrize("index, path", [
    (PRIMARY, ("grade",)), (PRIMARY, ("student", "gender")), (PRIMARY, ("subjects", 0, "year_score")),
    (SECONDARY, ("days_absent",)), (SECONDARY, ("subjects", 0, "year_average")), (PRIMARY, ("version",)),
])
@pytest.mark.parametrize("value", [True, False])
def test_a_json_boolean_is_never_a_number_or_a_gender(index, path, value):
    data = record(index)
    holder = data
    for part in path[:-1]:
        holder = holder[part]
    holder[path[-1]] = value
    name = ".".join(str(p) for p in path).replace(".0.", "[0].")
    assert name in fields(data)


@pytest.mark.parametrize("value, message", [(float("nan"), "not a number"), ("NaN", "not a number"),
                                            (float("inf"), "not a finite number"), ("1e3", "not a number"),
                                            ("0x10", "not a number"), ("٨,٥", None)])
def test_scores_say_what_is_wrong_in_words(value, message):
    data = record(SECONDARY)
    data["subjects"][0]["year_average"] = value
    if message is None:  # Arabic-Indic "8,5": digits normalised, comma decimal (rules may then object)
        try:
            assert parse_transcript(data).subjects[0].year_average == 8.5
        except ValidationError as exc:
            assert not any(line.startswith("subjects[0].year_average") for line in field_errors(exc))
        return
    assert f"subjects[0].year_average: {message}" in errors(data)


@pytest.mark.parametrize("value", ["3.5", 2.5, "1e1", [], {}])
def test_days_absent_is_a_whole_number(value):
    data = record(SECONDARY)
    data["days_absent"] = value
    assert fields(data) == ["days_absent"]


# --- structure and defaults --------------------------------------------------------------------

@PROPS
@given(index=hs.sampled_from([PRIMARY, 1, 2, SECONDARY]), pick=hs.integers(0, 50), case=hs.sampled_from(
    [str.lower, str.upper, str.title, lambda s: " " + s.lower() + " "]))
def test_duplicate_subject_codes_are_refused_ignoring_case(index, pick, case):
    data = record(index)
    subjects = data["subjects"]
    copy_of = copy.deepcopy(subjects[pick % len(subjects)])
    copy_of["subject_code"] = case(copy_of["subject_code"])
    subjects.append(copy_of)
    assert fields(data) == [f"subjects[{len(subjects) - 1}].subject_code"]


@PROPS
@given(index=hs.sampled_from([PRIMARY, 1, 2, SECONDARY]), code=hs.sampled_from(
    ["XYZ", "TNXH", "KH", "KHTN", "LS", "GDQPAN", "GDCD", "VL", "THCN", "DD", "NN2"]))
def test_subjects_are_checked_against_the_catalogue_of_the_grade(index, code):
    data = record(index)
    codes = {s["subject_code"] for s in data["subjects"]}
    entry = catalogue.taught(data["level"], data["grade"], code)
    if code in codes:
        return
    data["subjects"][0]["subject_code"] = code
    if entry is None:
        lines = errors(data)
        assert "subjects[0].subject_code" in [line.split(":")[0] for line in lines]
        assert code in "\n".join(lines)


@PROPS
@given(grade=hs.integers(1, 12), picks=hs.lists(hs.integers(0, 40), min_size=1, max_size=4, unique=True))
def test_a_compulsory_subject_left_out_is_refused_naming_it(grade, picks):
    data = record_of_grade(grade)
    level = data["level"]
    compulsory = [i for i, s in enumerate(data["subjects"])
                  if catalogue.taught(level, grade, s["subject_code"]).kind == "compulsory"]
    drop = sorted({compulsory[p % len(compulsory)] for p in picks})
    gone = [data["subjects"][i]["subject_code"] for i in drop]
    data["subjects"] = [s for i, s in enumerate(data["subjects"]) if i not in drop]
    lines = errors(data)
    assert [line.split(":")[0] for line in lines] == ["subjects"], lines
    assert "compulsory" in lines[0] and all(f"{code} (" in lines[0] for code in gone), lines


@pytest.mark.parametrize("grade", [1, 4, 6, 8])
def test_nghe_thuat_stands_for_its_two_parts(grade):
    data = record_of_grade(grade)
    parts = [s for s in data["subjects"] if s["subject_code"] in ("AN", "MT")]
    data["subjects"] = [s for s in data["subjects"] if s["subject_code"] not in ("AN", "MT")]
    data["subjects"].append({**parts[0], "subject_code": "NT", "subject_name": "Nghệ thuật"})
    assert {s.subject_code for s in parse_transcript(data).subjects} >= {"NT"}
    data["subjects"].pop()  # neither the whole nor the parts
    assert "AN (Âm nhạc)" in errors(data)[0]


@PROPS
@given(grade=hs.integers(10, 12), extra=hs.lists(hs.sampled_from([s.code for s in catalogue.upper_secondary_electives()]),
                                                min_size=1, max_size=5, unique=True),
       at=hs.integers(0, 30))
def test_grades_10_to_12_take_at_most_four_electives(grade, extra, at):
    data = record_of_grade(grade)
    have = {s["subject_code"] for s in data["subjects"]}
    added = [c for c in extra if c not in have]
    if not added:
        return
    for code in added:
        entry = catalogue.taught("04", grade, code)
        row = ({"subject_code": code, "subject_name": entry.name, "year_comment": "Đ"} if entry.comment_only else
               {"subject_code": code, "subject_name": entry.name, "year_average": 7.0})
        data["subjects"].insert(at % (len(data["subjects"]) + 1), row)
    codes = [s["subject_code"] for s in data["subjects"]]
    fifth = catalogue.electives_among("04", grade, codes)[4]
    lines = errors(data)
    assert lines == [f"subjects[{fifth}].subject_code: {codes[fifth]} is one elective too many: grades 10-12 "
                     f"choose at most 4 electives"], lines


def test_fewer_electives_and_optional_subjects_pass():
    data = record_of_grade(11)
    electives = catalogue.electives_among("04", 11, [s["subject_code"] for s in data["subjects"]])
    assert len(electives) == 4
    del data["subjects"][electives[-1]]
    data["subjects"].append({"subject_code": "NN2", "subject_name": "Ngoại ngữ 2", "year_average": 8.0})
    assert len(parse_transcript(data).subjects) == len(data["subjects"])


def test_the_catalogue_api():
    assert [s.code for s in catalogue.subjects_for("02", 1)][:2] == ["TV", "TOAN"]
    assert catalogue.taught("02", 2, "KH") is None and catalogue.taught("02", 4, "kh").name == "Khoa học"
    assert _periodic_test(3, "NN1") and not _periodic_test(2, "NN1")
    assert _periodic_test(4, "LSDL") and not _periodic_test(5, "DD")
    assert catalogue.taught("03", 7, "GDTC").comment_only and catalogue.taught("03", 7, "KHTN").scored
    assert catalogue.taught("03", 7, "GDQPAN") is None and catalogue.taught("04", 10, "GDQPAN").scored
    assert catalogue.taught("04", 11, "GDDP-HN").code == "GDDP"
    assert {s.kind for s in catalogue.SUBJECTS["04"] if 12 in s.grades} == {"compulsory", "elective", "optional"}
    assert catalogue.name_of("HH") == "Hoá học" and catalogue.taught("02", 2, "NN1").optional
    with pytest.raises(ValueError):
        catalogue.subjects_for("02", 7)


def test_a_scored_subject_sent_as_comment_only_is_refused():
    data = record(SECONDARY)
    gdtc = next(i for i, s in enumerate(data["subjects"]) if s["subject_code"] == "GDTC")
    data["subjects"][gdtc] = {"subject_code": "GDTC", "subject_name": "Giáo dục thể chất", "year_average": 8.0}
    assert fields(data) == [f"subjects[{gdtc}].year_average"]


def test_a_score_for_a_subject_without_periodic_test_is_refused():
    data = record(PRIMARY)
    dd = next(i for i, s in enumerate(data["subjects"]) if s["subject_code"] == "DD")
    data["subjects"][dd]["year_score"] = 8
    assert fields(data) == [f"subjects[{dd}].year_score"]


@pytest.mark.parametrize("index, path", [(SECONDARY, ("days_absent",)), (PRIMARY, ("student", "gender"))])
@pytest.mark.parametrize("how", ["absent", "blank", "null"])
def test_no_silent_defaults(index, path, how):
    data = record(index)
    holder = data[path[0]] if len(path) == 2 else data
    if how == "absent":
        del holder[path[-1]]
    else:
        holder[path[-1]] = "" if how == "blank" else None
    assert ".".join(path) in fields(data)


def test_nationality_missing_stays_missing():
    data = record()
    del data["student"]["nationality"]
    assert parse_transcript(data).student.nationality is None


def test_error_paths_use_snake_case_names_even_for_alias_input():
    exported = parse_transcript(record()).model_dump(mode="json", by_alias=True)
    del exported["hocsinh"]["hovaten"]
    assert errors(exported) == ["student.full_name: missing"]


# --- values are never quoted ----------------------------------------------------------------------

PERSONAL = ["Nguyễn Thị Bí Mật", "Trần Văn Riêng Tư"]


@PROPS
@given(where=hs.sampled_from([("student", "gender"), ("student", "birth_date"), ("student", "personal_id"),
                              (None, "grade"), (None, "school_code"), (None, "department_code"),
                              ("signatories", "issue_date"), ("student", "disability_not_assessed")]),
       secret=hs.sampled_from(PERSONAL))
def test_a_name_in_the_wrong_field_is_not_quoted(where, secret):
    data = record()
    holder = data[where[0]] if where[0] else data
    holder[where[1]] = secret
    lines = errors(data)
    assert lines and all(secret not in line for line in lines), lines


# --- JSON payloads -----------------------------------------------------------------------------

def test_duplicate_json_keys_are_refused_naming_the_key():
    with pytest.raises(jsonpayload.PayloadError, match="duplicate key 'HoTen'"):
        jsonpayload.loads(b'{"HocSinh": {"HoTen": "A", "HoTen": "B"}}')


@PROPS
@given(depth=hs.integers(65, 50_000), kind=hs.sampled_from(["[", '{"a":']))
def test_deep_nesting_is_a_clean_error(depth, kind):
    close = "]" if kind == "[" else "}"
    payload = (kind * depth + "1" + close * depth).encode()
    with pytest.raises(jsonpayload.PayloadError, match="nested deeper than 64"):
        jsonpayload.loads(payload)


@pytest.mark.parametrize("adapter", ["vnpt", "misa", "push", "spreadsheet"])
def test_adapters_refuse_duplicate_keys_and_nesting_as_a_quarantine_reason(adapter):
    info = adapter_types()[adapter]
    instance = info.cls(info.cls.Settings.model_construct(), PluginContext(adapter, __import__("pathlib").Path(".")))
    for payload in (b'{"a": 1, "a": 2}', b"[" * 100_000 + b"]" * 100_000):
        with pytest.raises(ValueError) as err:
            instance.normalize(RawRecord("x", payload))
        assert "duplicate key 'a'" in str(err.value) or "nested deeper" in str(err.value)


def test_json_loads_keeps_valid_payloads():
    doc = {"a": [1, {"b": "ẞ"}], "c": None}
    assert jsonpayload.loads(json.dumps(doc).encode()) == doc


# --- the vendor's id (RawRecord.source_id: it becomes the store's key and the record_id) ---------

@PROPS
@given(text=hs.text(max_size=300))
def test_an_id_the_store_keeps_is_refused_again_after_it_is_kept(text):
    """Whatever a vendor sends as an id, the store can keep ``storable_id`` of it (no NUL, no
    control or invisible character: any backend), and keeping it never makes a refused id pass
    the normalise stage (a replay refuses it again); a good id is kept as it came."""
    from hub.contracts import source_id_problem, storable_id

    kept = storable_id(text)
    assert "\x00" not in kept and not any(unicodedata.category(ch)[0] == "C" for ch in kept)
    assert (source_id_problem(kept) is None) == (source_id_problem(text) is None)
    if source_id_problem(text) is None:
        assert kept == text


@pytest.mark.parametrize("junk", INVISIBLE + ["\ufffd"])
def test_the_normalisation_path_refuses_an_id_with_an_invisible_character_naming_it(junk):
    from hub.engine.normalize import Envelope, normalize

    info = adapter_types()["push"]
    adapter = info.cls(info.cls.Settings.model_construct(secret="x" * 32), PluginContext("p", __import__("pathlib").Path(".")))
    body = json.dumps({"source_id": "s1", "transcript": transcript(0)}, ensure_ascii=False).encode()
    envelope = Envelope(ENVELOPE["record_id"], 1, "NEW", ENVELOPE["updated_at"])
    assert normalize(adapter, RawRecord("s1", body), envelope).ok
    outcome = normalize(adapter, RawRecord(f"s{junk}1", body), envelope)
    assert outcome.record is None and outcome.errors[0].startswith("source_id: ")
    assert f"U+{ord(junk):04X}" in outcome.errors[0] and "s1" not in outcome.errors[0]
    assert outcome.known.get("school_code")  # still filed under its school


@PROPS
@given(digits=hs.sampled_from(DIGIT_SETS), field=hs.sampled_from(
    [("class_name",), ("transcript_id",), ("student", "student_code"), ("school_name",), ("student", "full_name")]))
def test_unicode_digits_are_ascii_in_every_text_field(digits, field):
    """Not only where a pattern says digits: "５A" and "5A" are one class, "HB０１" and "HB01" one
    transcript (found by bench/mutations.py)."""
    data = record()
    table = str.maketrans("0123456789", digits)
    parent = data
    for part in field[:-1]:
        parent = parent[part]
    original = parent[field[-1]] if field[-1] != "full_name" else "Nguyễn Văn An 2"
    parent[field[-1]] = original.translate(table)
    stored = parse_transcript(data).model_dump()
    for part in field:
        stored = stored[part]
    assert stored == original


@pytest.mark.parametrize("value", [True, 7, 8.5, {}, ["a"]])
def test_a_spreadsheet_row_cell_that_is_not_text_is_refused_naming_the_column(value):
    """The stored row holds each cell as text: a JSON true is no policy group, an object no comment."""
    import pathlib

    info = adapter_types()["spreadsheet"]
    adapter = info.cls(info.cls.Settings.model_construct(), PluginContext("s", pathlib.Path(".")))
    example = pathlib.Path(__file__).resolve().parent.parent / "adapters/spreadsheet/examples/record.json"
    row = json.loads(example.read_text("utf-8"))
    row["Đối tượng chính sách"] = value
    with pytest.raises(ValueError, match="^column 'Đối tượng chính sách': the cell is .*, not text$"):
        adapter.normalize(RawRecord("s1", json.dumps(row, ensure_ascii=False).encode()))
