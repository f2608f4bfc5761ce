"""The viettel adapter against its simulator over real HTTP on loopback (see adapters/viettel/CONTRACT.md)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from pull_vendors import VIETTEL
from pydantic import ValidationError

from adapters.viettel.adapter import ViettelAdapter, ViettelError, parse_xml
from adapters.viettel.simulator import (
    LEAK_PATH,
    RECORDS_PATH,
    SESSION_PATH,
    ViettelSimulator,
    billion_laughs,
    synthetic_index,
)
from hub.contracts import PluginContext, RawRecord
from hub.kit.synthetic import transcript
from hub.records import field_errors

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "adapters" / "viettel" / "examples"


vendor = VIETTEL.fixture()
make_adapter, read, central, expected = VIETTEL.make_adapter, VIETTEL.read, VIETTEL.central, VIETTEL.expected
poll = VIETTEL.poll


def canonical(xml: bytes) -> str:
    return ET.canonicalize(xml.decode("utf-8"), strip_text=True)


def data_statuses(sim: ViettelSimulator) -> list[tuple[str, int]]:
    return [(path.split("?")[0], status) for _, path, status in sim.log]


def all_ids(sim: ViettelSimulator, records: int) -> list[str]:
    return sorted(sim.source_id(i) for i in range(records))


# --- reading -----------------------------------------------------------------------------------

async def test_full_read_returns_every_record_once_and_round_trips(vendor):
    seed = 5
    sim, adapter = await vendor(records=9, invalid=5, seed=seed, page_size=4)
    pages, raws = await read(adapter)

    assert len(pages) == 4 and all(len(p.records) <= 4 for p in pages)
    assert sorted(r.source_id for r in raws) == sorted(all_ids(sim, 9) + list(sim.defects))
    by_transcript = {transcript(synthetic_index(k), seed)["transcript_id"]: k for k in range(9)}
    for raw in raws:
        assert raw.content_type == "application/xml" and not raw.deleted
        assert raw.updated_at is not None and raw.updated_at.utcoffset() == dt.timedelta(hours=7)
        assert raw.payload.startswith(b"<transcript ") and b"<?xml" not in raw.payload
        if VIETTEL.broken_on_purpose(sim, adapter, raw):
            continue
        k = by_transcript[adapter.normalize(raw)["transcript_id"]]
        assert canonical(raw.payload) == canonical(sim.vendor_xml(k))
        source = transcript(synthetic_index(k), seed)
        assert source["level"] in ("03", "04")
        assert central(adapter, raw) == expected(source)
    cursor = json.loads(pages[-1].cursor)
    assert cursor["after"] == max(r.updated_at for r in raws).isoformat() and cursor["cursor"]


@pytest.mark.parametrize("records, page_size, requests", [(0, 5, 1), (1, 5, 1), (5, 5, 1), (10, 5, 2), (23, 5, 5)])
async def test_paging_boundaries(vendor, records, page_size, requests):
    sim, adapter = await vendor(records=records, page_size=page_size)
    pages, raws = await read(adapter)
    assert sorted(r.source_id for r in raws) == all_ids(sim, records)
    assert sim.requests[RECORDS_PATH] == requests == len(pages)
    # Even an empty feed hands back a cursor: the next poll starts at the tail, not from scratch.
    assert pages[-1].cursor is not None
    _, again = await read(adapter, pages[-1].cursor)
    assert again == []


async def test_incremental_read_from_a_saved_cursor_returns_only_changes(vendor):
    sim, adapter = await vendor(records=10, page_size=4)
    pages, _ = await read(adapter)
    cursor = pages[-1].cursor

    changed = sim.update(2)
    deleted = sim.delete(5)
    pages, delta = await read(adapter, cursor)
    assert sorted(r.source_id for r in delta) == sorted([changed, deleted])
    by_id = {r.source_id: r for r in delta}
    assert by_id[deleted].deleted and not by_id[changed].deleted
    assert central(adapter, by_id[changed]) == expected(sim.central(2))
    assert central(adapter, by_id[changed]) != expected(transcript(synthetic_index(2), 0))

    _, last = await read(adapter, pages[-1].cursor)
    assert last == []


async def test_a_record_edited_during_a_read_is_still_read(vendor):
    sim, adapter = await vendor(records=12, page_size=3, per_timestamp=1)
    seen = []
    async for page in adapter.fetch(None):
        if not seen:
            sim.update(1)  # already read: it moves to the end of the feed and is read there again
            sim.update(7)  # not read yet: it must not be skipped
        seen.extend(r.source_id for r in page.records)
    assert set(seen) == set(all_ids(sim, 12))
    assert seen.count(sim.source_id(1)) == 2 and seen[-2:] == [sim.source_id(1), sim.source_id(7)]


async def test_an_expired_cursor_falls_back_to_updated_after(vendor):
    sim, adapter = await vendor(records=9, page_size=4, per_timestamp=3)
    pages, raws = await read(adapter)
    newest = max(r.updated_at for r in raws)
    boundary = {r.source_id for r in raws if r.updated_at == newest}
    sim.expire_cursors()
    changed = sim.update(0)
    sim.log.clear()

    _, delta = await read(adapter, pages[-1].cursor)
    assert {r.source_id for r in delta} == boundary | {changed}
    assert [s for _, s in data_statuses(sim)] == [410, 200]
    fallback = sim.log[-1][1]
    assert "updatedAfter=" in fallback and "cursor=" not in fallback
    assert (newest - dt.timedelta(seconds=1)).isoformat().replace("+", "%2B") in fallback


async def test_a_timestamp_cursor_rereads_from_that_instant(vendor):
    sim, adapter = await vendor(records=9, page_size=4, per_timestamp=3)
    _, raws = await read(adapter, "2025-06-01T07:01:00+07:00")
    assert sorted(r.source_id for r in raws) == sorted(sim.source_id(i) for i in range(3, 9))


@pytest.mark.parametrize("cursor", ["yesterday", '{"after": "soon"}', '{"cursor": 5}', '{"x": 1}', "[1]"])
async def test_a_bad_cursor_is_a_clear_error(vendor, cursor):
    sim, adapter = await vendor(records=1)
    with pytest.raises(ViettelError, match="is not a viettel cursor"):
        await read(adapter, cursor)
    assert sim.requests[RECORDS_PATH] == 0


async def test_a_cursor_the_server_rejects_is_a_clear_error(vendor):
    sim, adapter = await vendor(records=1)
    with pytest.raises(ViettelError, match=r"answered HTTP 400: INVALID_CURSOR"):
        await read(adapter, '{"after": null, "cursor": "forged"}')


# --- sessions, faults and retries --------------------------------------------------------------

async def test_session_expiry_mid_read_recovers(vendor):
    sim, adapter = await vendor(records=12, page_size=3)
    seen = []
    async for page in adapter.fetch(None):
        if not seen:
            sim.expire_tokens()
        seen.extend(r.source_id for r in page.records)
    assert sorted(seen) == all_ids(sim, 12)
    statuses = data_statuses(sim)
    refused = statuses.index((RECORDS_PATH, 401))
    assert statuses[refused + 1] == (SESSION_PATH, 201) and statuses[refused + 2] == (RECORDS_PATH, 200)
    assert sim.requests[SESSION_PATH] == 2


async def test_short_sessions_are_renewed_before_they_expire(vendor):
    sim, adapter = await vendor(records=4, page_size=2)
    sim.faults.session_ttl_seconds = 1
    await read(adapter)
    await asyncio.sleep(1.0)
    await read(adapter)
    assert (RECORDS_PATH, 401) not in data_statuses(sim)
    assert sim.requests[SESSION_PATH] == 2


async def test_a_billion_laughs_page_is_refused_unexpanded(vendor):
    sim, adapter = await vendor(records=3)
    sim.faults.hostile_next_n = 1
    started = time.monotonic()
    with pytest.raises(ViettelError, match=r"/api/v2/transcripts.*document type declaration \(DTD\).*DTDForbidden") as err:
        await read(adapter)
    # 10⁹ "lol"s would take gigabytes and minutes; refused at <!DOCTYPE it takes nothing.
    assert time.monotonic() - started < 2 and "lollol" not in str(err.value)


async def test_an_external_entity_page_is_refused_and_never_fetched(vendor):
    sim, adapter = await vendor(records=3)
    sim.faults.hostile_next_n = 1
    sim.faults.hostile_kind = "external_entity"
    with pytest.raises(ViettelError, match="DTD") as err:
        await read(adapter)
    assert sim.requests[LEAK_PATH] == 0 and "LEAKED" not in str(err.value)


def test_entities_in_a_record_payload_are_refused(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-MARKER")
    record = (f'<?xml version="1.0"?><!DOCTYPE transcript [<!ENTITY x SYSTEM "file://{secret}">]>'
              "<transcript><transcriptCode>&x;</transcriptCode></transcript>").encode()
    for payload in (record, billion_laughs()):
        with pytest.raises(ValueError, match="refused before anything was expanded") as err:
            adapter_only(tmp_path).normalize(RawRecord("x", payload, content_type="application/xml"))
        assert "TOP-SECRET-MARKER" not in str(err.value) and "lollol" not in str(err.value)
    with pytest.raises(ValueError, match="DTD"):
        parse_xml(b'<!DOCTYPE a SYSTEM "http://127.0.0.1:9/x.dtd"><a/>', "document")


# --- check -------------------------------------------------------------------------------------

async def test_check_healthy(vendor):
    sim, adapter = await vendor(records=4)
    health = await adapter.check()
    assert health.ok and "API key accepted" in health.detail
    assert data_statuses(sim) == [(SESSION_PATH, 201), (RECORDS_PATH, 200)]


# --- normalize ---------------------------------------------------------------------------------

def adapter_only(tmp_path) -> ViettelAdapter:
    # As `hocba-hub normalize` builds it: no settings at all.
    return ViettelAdapter(ViettelAdapter.Settings.model_construct(), PluginContext("viettel-test", tmp_path))


def raw_of(xml: bytes) -> RawRecord:
    return RawRecord(source_id="x", payload=xml, content_type="application/xml")


def edited(change, index: int = 0) -> bytes:
    element = ET.fromstring(ViettelSimulator(records=4).vendor_xml(index))
    change(element)
    return ET.tostring(element, encoding="utf-8")


def set_text(path: str, value: str):
    def change(element):
        element.find(path).text = value
    return change


def remove(path: str):
    def change(element):
        parent_path, _, tag = path.rpartition("/")
        parent = element.find(parent_path) if parent_path else element
        parent.remove(parent.find(tag))
    return change


def add(path: str, tag: str, text: str = "x"):
    def change(element):
        parent = element.find(path) if path else element
        ET.SubElement(parent, tag).text = text
    return change


def test_the_examples(tmp_path):
    adapter = adapter_only(tmp_path)
    record = (EXAMPLES / "record.xml").read_bytes()
    result = central(adapter, raw_of(record))
    assert result == expected(ViettelSimulator(records=6).central(5))
    assert result["certificates"][0]["name"] == "Chứng chỉ Tin học cơ bản"
    with pytest.raises(ValidationError) as err:
        central(adapter, raw_of((EXAMPLES / "invalid.xml").read_bytes()))
    assert [line.split(":")[0] for line in field_errors(err.value)] == ["subjects[0].year_average"]
    body = record.decode("utf-8").split("\n", 1)[1].rstrip("\n")
    assert body in (EXAMPLES.parent / "CONTRACT.md").read_text("utf-8")


@pytest.mark.parametrize("change, message", [
    (remove("student/fullName"), "transcript/student/fullName is missing"),
    (remove("signatories/issueDate"), "transcript/signatories/issueDate is missing"),
    (remove("signatories/principal"), "transcript/signatories/principal is missing"),
    (remove("learning/year"), "transcript/learning/year is missing"),
    (remove("daysAbsent"), "transcript/daysAbsent is missing"),
    (remove("subjects"), "transcript/subjects is missing"),
    (lambda e: e.find("subjects")[1].remove(e.find("subjects")[1].find("code")),
     r"transcript/subjects/subject\[2\]/code is missing"),
    (add("student", "passportNo"), "transcript/student/passportNo is not part of the viettel contract"),
    (add("", "schoolName"), "transcript/schoolName appears more than once"),
    (add("subjects", "note"), "transcript/subjects/note is not part of the viettel contract"),
    (set_text("student", "Nguyễn Văn A"), "transcript/student holds text"),
    (lambda e: ET.SubElement(e.find("grade"), "value").set("x", "1"), "transcript/grade has child elements"),
    (set_text("schoolLevel", "02"), "schoolLevel '02' is primary"),
])
def test_normalize_names_the_vendor_element(tmp_path, change, message):
    with pytest.raises(ValueError, match=message):
        adapter_only(tmp_path).normalize(raw_of(edited(change)))


def test_a_truncated_or_foreign_payload_is_named(tmp_path):
    whole = ViettelSimulator(records=1).vendor_xml(0)
    with pytest.raises(ValueError, match="payload is not well-formed XML or is truncated"):
        adapter_only(tmp_path).normalize(raw_of(whole[: len(whole) // 2]))
    with pytest.raises(ValueError, match="the record element is <hocba>, not <transcript>"):
        adapter_only(tmp_path).normalize(raw_of(b"<hocba/>"))


@pytest.mark.parametrize("change, field", [
    (set_text("grade", "twelve"), "grade"),                                   # wrong type
    (set_text("student/birthDate", "2010-02-30"), "student.birth_date"),       # impossible date
    (set_text("subjects/subject/yearAverage", "10.5"), "subjects[0].year_average"),  # out of range
    (set_text("subjects/subject/term1Average", "-1"), "subjects[0].term1_average"),
    (set_text("subjects/subject/yearAverage", "8.25"), "subjects[0].year_average"),  # two decimals
    (set_text("subjects/subject/code", ""), "subjects[0].subject_code"),
    (set_text("student/gender", "X"), "student.gender"),
    (set_text("promoted", "maybe"), "promoted"),
    (set_text("schoolLevel", "09"), "level"),
    (set_text("learning/year", "T"), "learning.year"),                         # contradicts the averages
])
def test_bad_values_are_quarantined_naming_the_central_field(tmp_path, change, field):
    with pytest.raises(ValidationError) as err:
        central(adapter_only(tmp_path), raw_of(edited(change, index=3)))
    assert field in [line.split(":")[0] for line in field_errors(err.value)], field_errors(err.value)


def test_an_unknown_subject_code_is_refused_naming_it(tmp_path):
    with pytest.raises(ValidationError) as err:
        central(adapter_only(tmp_path), raw_of(edited(set_text("subjects/subject/code", "XYZ"))))
    assert [line.split(":")[0] for line in field_errors(err.value)] == ["subjects[0].subject_code"]


def test_empty_elements_mean_unknown(tmp_path):
    def blank(element):
        element.find("student/personalId").text = None
        element.find("student/ethnicity").text = None
        element.find("student/gender").text = "0"
    result = central(adapter_only(tmp_path), raw_of(edited(blank)))
    assert result["student"]["personal_id"] is None and result["student"]["ethnicity"] is None
    assert result["student"]["gender"] == 0
    # An empty gender is missing, not "unknown".
    with pytest.raises(ValidationError) as err:
        central(adapter_only(tmp_path), raw_of(edited(lambda e: setattr(e.find("student/gender"), "text", ""))))
    assert [line.split(":")[0] for line in field_errors(err.value)] == ["student.gender"]
