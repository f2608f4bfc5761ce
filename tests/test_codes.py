"""The codes table (province mergers): old department and school codes become the codes in force
in the one normalisation path; the record's history keeps the original; `hocba-hub normalize
--config` shows exactly what the pipeline stores; a broken table is refused naming the entry."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import PASSWORD  # noqa: F401 - the pki fixture's password, used by serve_hub
from test_admin import OP, serve_hub

from hub import lifecycle as lc
from hub.config import ConfigError, load_config, parse_config
from hub.engine.normalize import Envelope, central_record
from hub.kit.synthetic import transcript

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "config" / "example.yaml"
# The synthetic primary school 01001001 gets a new code in its (unchanged) Hà Nội department.
CODES = {"schools": {"01001001": "01101001"}}


def example(**changes) -> dict:
    return {**yaml.safe_load(EXAMPLE.read_text(encoding="utf-8")), **changes}


def test_the_example_config_shows_a_merger():
    codes = load_config(EXAMPLE).codes
    assert codes.departments == {"26": "22"} and codes.schools == {"26001001": "22101001"}


def test_a_school_under_a_merged_department_is_stored_with_the_new_codes():
    codes = load_config(EXAMPLE).codes
    t = transcript(0)
    t.update(department_code="26", school_code="26001001")
    envelope = Envelope("b791050c-a771-552f-9540-d284f2bb3167", 1, "NEW", "2025-06-01T07:00:00")
    outcome = central_record(t, "vnpt", envelope, codes)
    assert outcome.ok, outcome.errors
    assert (outcome.record.department_code, outcome.record.school_code) == ("22", "22101001")
    assert outcome.remapped == ("department_code 26 → 22", "school_code 26001001 → 22101001")
    # Without the table the old codes stand, and nothing says otherwise.
    plain = central_record(t, "vnpt", envelope)
    assert plain.record.school_code == "26001001" and plain.remapped == ()
    # A department remapped without its school: validation names the mismatch (nothing guessed).
    t["school_code"] = "26009009"
    broken = central_record(t, "vnpt", envelope, codes)
    assert not broken.ok and any("school_code" in e and "22" in e for e in broken.errors)


@pytest.mark.parametrize("codes, expected", [
    ({"departments": {"26": "22", "22": "26"}}, "codes.departments.26: cycle 26 → 22 → 26"),
    ({"schools": {"26001001": "26001001"}}, "codes.schools.26001001: mapped to itself"),
    ({"schools": {"26001001": "22101001", "22101001": "22101002"}},
     "codes.schools.26001001: 26001001 → 22101001, but 22101001 is itself mapped"),
    ({"departments": {1: "22"}}, "codes.departments.1: 1 is not a department code of 2-3 digits (write codes in quotes"),
    ({"schools": {"26001001": "22"}}, "codes.schools.26001001: '22' is not a school code of 8-12 digits"),
    ({"departments": ["26"]}, "codes.departments: must be a mapping"),
])
def test_a_bad_entry_is_refused_naming_its_path(codes, expected):
    with pytest.raises(ConfigError) as info:
        parse_config(example(codes=codes))
    assert any(line.startswith(expected) for line in info.value.errors), info.value.errors


def test_unknown_keys_in_the_table_are_refused():
    with pytest.raises(ConfigError) as info:
        parse_config(example(codes={"districts": {"001": "002"}}))
    assert any(line.startswith("codes.districts") for line in info.value.errors), info.value.errors


def test_a_code_mapped_twice_in_the_file_is_refused(tmp_path):
    text = EXAMPLE.read_text(encoding="utf-8").replace(
        '    "26001001": "22101001"\n', '    "26001001": "22101001"\n    "26001001": "22101009"\n')
    path = tmp_path / "twice.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "'26001001' given twice" in info.value.errors[0]


async def test_the_pipeline_stores_the_new_code_and_the_history_and_cli_show_the_original(tmp_path, pki):
    async with serve_hub(tmp_path / "data", pki, records=4, invalid=0, seed=11, extra={"codes": CODES}) as env:
        rows = [r for r in env.hub.store.rows() if r.normalized and
                r.normalized["school_code"] in ("01001001", "01101001")]
        assert rows, "the synthetic data should hold a record of school 01001001"
        row = rows[0]
        assert row.normalized["school_code"] == "01101001" and row.school_code == "01101001"
        # (It is signed under the new code too: the school seal's key is looked up by the code in
        # force, and this test PKI has none for 01101001, so the record stops there. Nothing here
        # depends on how far it got after normalisation.)
        history = env.hub.store.history(row.id)
        normalised = next(h for h in history if h["state"] == lc.NORMALIZED)
        assert normalised["detail"] == "codes remapped: school_code 01001001 → 01101001"
        # What an operator sees of the record (the API and the console's record page).
        status, detail = await env.get(f"/api/records/{row.id}", headers=OP)
        assert status == 200
        assert detail["school_code"] == "01101001"
        assert any(h["detail"] == "codes remapped: school_code 01001001 → 01101001" for h in detail["history"])
        # The stored payload still says what the vendor sent.
        assert b"01001001" in row.payload and b"01101001" not in row.payload

        # `hocba-hub normalize --config` on the same payload: the same record, the same note.
        payload = tmp_path / "record.json"
        payload.write_bytes(row.payload)
        config = tmp_path / "hub.yaml"
        config.write_text(yaml.safe_dump(example(codes=CODES), allow_unicode=True), encoding="utf-8")
        done = subprocess.run([sys.executable, "-m", "hub.cli", "normalize", "--adapter", "vnpt", "--snake-case",
                               "--config", str(config), str(payload)], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert "codes remapped: school_code 01001001 → 01101001" in done.stderr
        printed = json.loads(done.stdout)
        envelope = ("record_id", "version", "updated_at", "event")
        assert {k: v for k, v in printed.items() if k not in envelope} == \
               {k: v for k, v in row.normalized.items() if k not in envelope}


def test_codes_are_matched_as_the_vendor_wrote_them_trimmed_and_with_full_width_digits():
    from hub.config import CodesConfig
    from hub.engine.normalize import remap_codes

    codes = CodesConfig(departments={"26": "22"}, schools={"26001001": "22101001"})
    data, notes = remap_codes({"department_code": 26, "school_code": " ２６００１００１ "}, codes)
    assert (data["department_code"], data["school_code"]) == ("22", "22101001")
    assert notes == ("department_code 26 → 22", "school_code 26001001 → 22101001")
    # Anything else is left alone for validation to judge; the input is not changed in place.
    original = {"department_code": True, "school_code": ["26001001"]}
    assert remap_codes(original, codes) == (original, ())
    assert remap_codes({"school_code": "26001001"}, None) == ({"school_code": "26001001"}, ())
