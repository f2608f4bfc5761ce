"""The misa adapter against its simulator over real HTTP on loopback (see adapters/misa/CONTRACT.md)."""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import hmac
import json
import os
import time
import unicodedata
from pathlib import Path

import aiohttp
import pytest
import structlog
from pull_vendors import MISA
from pydantic import ValidationError

from adapters.misa.adapter import MisaAdapter, MisaError, canonical_query, signature
from adapters.misa.simulator import RECORDS_PATH, MisaSimulator
from hub.contracts import PluginContext, RawRecord
from hub.kit.synthetic import transcript
from hub.records import field_errors
from hub.store import Store

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "adapters" / "misa" / "examples"


vendor = MISA.fixture()
make_adapter, read, central, expected = MISA.make_adapter, MISA.read, MISA.central, MISA.expected
poll = MISA.poll


def statuses(sim: MisaSimulator) -> list[int]:
    return [status for _, _, status in sim.log]


def all_ids(sim: MisaSimulator, records: int) -> list[str]:
    return sorted(sim.source_id(i) for i in range(records))


# --- signing -----------------------------------------------------------------------------------

def test_the_worked_signing_example_in_the_contract():
    query = canonical_query([("limit", "100"), ("continuationToken", "WzQsMCwxXQ.jKsCOccHeP25kqby")])
    assert query == "continuationToken=WzQsMCwxXQ.jKsCOccHeP25kqby&limit=100"
    mac = signature(b"example-secret-do-not-use-0123456789", "get", "/api/v1/transcripts", query,
                    "1748736000", "8f14e45fceea167a5a36dedd4bea2543")
    assert mac == "b11dccb95c73ecaf238b43d3f448c5f09b9e8c19f33a94e61d56fe1329a6c8ad"
    assert mac in (ROOT / "adapters" / "misa" / "CONTRACT.md").read_text("utf-8")
    assert canonical_query([("b", "x y+z/é"), ("a", "2"), ("a", "1")]) == "a=1&a=2&b=x%20y%2Bz%2F%C3%A9"


async def test_the_server_refuses_what_is_not_signed_right(vendor):
    sim, _ = await vendor(records=1)
    path, query = RECORDS_PATH, "limit=1"

    def headers(**change):
        values = {"X-Api-Key": sim.api_key, "X-Timestamp": str(int(time.time())), "X-Nonce": os.urandom(16).hex()}
        values.update(change)
        message = "\n".join(("GET", path, query, values["X-Timestamp"], values["X-Nonce"] or "")).encode()
        values.setdefault("X-Signature", hmac.new(sim.api_secret.encode(), message, hashlib.sha256).hexdigest())
        return {k: v for k, v in values.items() if v is not None}

    replayed = headers()
    cases = [
        (headers(), 200, None),
        (replayed, 200, None),
        (replayed, 401, "REPLAYED_NONCE"),
        (headers(**{"X-Signature": "0" * 64}), 401, "INVALID_SIGNATURE"),
        (headers(**{"X-Timestamp": str(int(time.time()) - 301)}), 401, "STALE_TIMESTAMP"),
        (headers(**{"X-Timestamp": str(int(time.time()) + 301)}), 401, "STALE_TIMESTAMP"),
        (headers(**{"X-Api-Key": "someone-else"}), 401, "INVALID_API_KEY"),
        (headers(**{"X-Nonce": None}), 401, "MISSING_AUTH"),
    ]
    async with aiohttp.ClientSession() as http:
        for sent, status, code in cases:
            async with http.get(f"{sim.base_url}{path}?{query}", headers=sent) as response:
                body = await response.json()
                assert response.status == status, body
                assert code is None or body["error"]["code"] == code
        # A signature over another query does not authorise this one.
        async with http.get(f"{sim.base_url}{path}?limit=2", headers=headers()) as response:
            assert response.status == 401 and (await response.json())["error"]["code"] == "INVALID_SIGNATURE"


async def test_retries_are_signed_afresh(vendor):
    sim, adapter = await vendor(records=3)
    sim.faults.fail_next_n = 1
    sim.faults.rate_limit_next_n = 1
    sim.faults.retry_after_seconds = 1
    sim.faults.drop_next_n_connections = 1
    sim.faults.drop_after_auth_next_n = 1
    _, raws = await read(adapter)
    assert len(raws) == 3
    assert statuses(sim) == [0, 503, 429, 0, 200]
    # One request on the wire per attempt, each with its own nonce: no silent resend to be
    # refused as a replay after the server had already spent the nonce.
    assert None not in sim.nonces and len(set(sim.nonces)) == len(sim.nonces) == 5
    assert sim.auth_failures == []


async def test_a_nonce_refused_as_a_replay_is_retried_with_a_fresh_one(vendor):
    sim, adapter = await vendor(records=3)
    # What an HTTP stack that resends a request on a dropped connection does (aiohttp by default).
    adapter._http._retry_connection = True
    sim.faults.drop_after_auth_next_n = 1
    _, raws = await read(adapter)
    assert len(raws) == 3
    assert sim.auth_failures == ["REPLAYED_NONCE"] and statuses(sim) == [0, 401, 200]


async def test_a_skewed_clock_is_named_without_the_secret(vendor):
    sim, adapter = await vendor(records=3)
    adapter._clock = lambda: time.time() - 600
    with structlog.testing.capture_logs() as logs, pytest.raises(MisaError) as err:
        await read(adapter)
    message = str(err.value)
    assert "STALE_TIMESTAMP" in message and "check the hub's clock" in message and RECORDS_PATH in message
    assert sim.api_secret not in message and sim.api_secret not in repr(logs)
    assert sim.requests[RECORDS_PATH] == 1  # a refusal is not retried


# --- reading -----------------------------------------------------------------------------------

async def test_full_read_returns_every_record_once_and_round_trips(vendor):
    seed = 3
    sim, adapter = await vendor(records=13, invalid=5, seed=seed, page_size=4)
    pages, raws = await read(adapter)

    assert len(pages) == 5 and all(len(p.records) <= 4 for p in pages)
    assert sorted(r.source_id for r in raws) == sorted(all_ids(sim, 13) + list(sim.defects))
    by_transcript = {transcript(i, seed)["transcript_id"]: i for i in range(13)}
    levels, checked_nfd = set(), 0
    for raw in raws:
        assert raw.content_type == "application/json" and not raw.deleted
        assert raw.updated_at is not None and raw.updated_at.utcoffset() == dt.timedelta(hours=7)
        if MISA.broken_on_purpose(sim, adapter, raw):
            continue
        index = by_transcript[adapter.normalize(raw)["transcript_id"]]
        # The payload is the item as served: NFD stays NFD, scores stay comma strings.
        assert json.loads(raw.payload) == sim.vendor_record(index)
        source = transcript(index, seed)
        levels.add(source["level"])
        assert central(adapter, raw) == expected(source)
        if index % 3 == 1:
            checked_nfd += 1
            MISA.name_stays_nfd(adapter, raw, source)
        if source["level"] != "02":
            assert '"term1": "' in raw.payload.decode() and "," in json.loads(raw.payload)["evaluation"]["subjects"][0]["yearEnd"]
    assert levels == {"02", "03", "04"} and checked_nfd >= 3
    assert pages[-1].cursor


@pytest.mark.parametrize("records, page_size, requests", [(0, 5, 1), (1, 5, 1), (5, 5, 1), (10, 5, 2), (23, 5, 5)])
async def test_paging_boundaries(vendor, records, page_size, requests):
    sim, adapter = await vendor(records=records, page_size=page_size)
    pages, raws = await read(adapter)
    assert sorted(r.source_id for r in raws) == all_ids(sim, records)
    assert sim.requests[RECORDS_PATH] == requests == len(pages)
    # Even an empty feed hands back a token: the next poll starts at the tail, not from scratch.
    assert pages[-1].cursor
    _, again = await read(adapter, pages[-1].cursor)
    assert again == []


async def test_incremental_read_from_a_saved_cursor_returns_only_changes(vendor):
    sim, adapter = await vendor(records=10, page_size=4)
    pages, _ = await read(adapter)

    changed = sim.update(2)
    deleted = sim.delete(5)
    pages, delta = await read(adapter, pages[-1].cursor)
    assert [r.source_id for r in delta] == [changed, deleted]
    by_id = {r.source_id: r for r in delta}
    assert by_id[deleted].deleted and not by_id[changed].deleted
    assert central(adapter, by_id[changed]) == expected(sim.central(2))
    assert central(adapter, by_id[changed]) != expected(transcript(2, 0))

    _, last = await read(adapter, pages[-1].cursor)
    assert last == []


async def test_a_deleted_record_becomes_a_cancel(vendor):
    sim, adapter = await vendor(records=4)
    store = Store(":memory:")
    assert await poll(adapter, store) is None
    recalled = sim.delete(1)
    assert await poll(adapter, store) is None
    versions = [(r.version, r.event) for r in store.rows() if r.source_id == recalled]
    assert versions == [(1, "NEW"), (2, "CANCEL")]
    assert len(store.rows()) == 5


async def test_a_record_edited_during_a_read_is_still_read(vendor):
    sim, adapter = await vendor(records=12, page_size=3)
    seen = []
    async for page in adapter.fetch(None):
        if not seen:
            sim.update(1)  # already read: it moves to the end of the change log and is read there
            sim.update(7)  # not read yet: it must not be skipped
        seen.extend(r.source_id for r in page.records)
    assert set(seen) == set(all_ids(sim, 12))
    assert seen[-2:] == [sim.source_id(1), sim.source_id(7)] and seen.count(sim.source_id(7)) == 1


async def test_an_expired_token_resyncs_and_the_hub_stores_only_the_change(vendor):
    sim, adapter = await vendor(records=9, page_size=4)
    store = Store(":memory:")
    assert await poll(adapter, store) is None
    sim.expire_continuation_tokens()
    changed = sim.update(2)
    sim.log.clear()
    with structlog.testing.capture_logs() as logs:
        assert await poll(adapter, store) is None
    assert statuses(sim) == [410, 200, 200, 200]
    assert "continuationToken=" not in sim.log[1][1]
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == ["misa.continuation_token_expired"]
    newer = [(r.source_id, r.version, r.event) for r in store.rows() if r.version > 1]
    assert newer == [(changed, 2, "UPDATE")]


async def test_a_token_the_server_rejects_is_a_clear_error(vendor):
    _, adapter = await vendor(records=1)
    with pytest.raises(MisaError, match=r"answered HTTP 400: INVALID_CONTINUATION_TOKEN"):
        await read(adapter, "forged")


# --- auth, faults and retries ------------------------------------------------------------------

async def test_a_secret_rotated_mid_read_stops_the_poll_and_a_new_secret_resumes(vendor, tmp_path):
    sim, adapter = await vendor(records=10, page_size=3)
    store = Store(":memory:")
    old_secret = sim.api_secret
    pages = 0
    with structlog.testing.capture_logs() as logs:
        try:
            async for page in adapter.fetch(None):
                store.receive("misa", page.records, page.cursor, save_cursor=True)
                pages += 1
                if pages == 1:
                    new_secret = sim.rotate_secret()
            error = None
        except MisaError as exc:
            error = exc
    assert error is not None and "INVALID_SIGNATURE" in str(error) and "check api_secret" in str(error)
    assert RECORDS_PATH in str(error) and old_secret not in str(error) and old_secret not in repr(logs)
    assert len(store.rows()) == 3

    rotated = make_adapter({**sim.adapter_settings(), "api_secret": new_secret}, tmp_path)
    await rotated.open()
    try:
        assert await poll(rotated, store) is None
    finally:
        await rotated.close()
    assert sorted(r.source_id for r in store.rows()) == all_ids(sim, 10)


# --- bad pages: the sync survives and nothing is lost ------------------------------------------

# --- check -------------------------------------------------------------------------------------

async def test_check_healthy(vendor):
    sim, adapter = await vendor(records=4)
    health = await adapter.check()
    assert health.ok and "signed request accepted" in health.detail
    assert sim.log[-1][1] == f"{RECORDS_PATH}?limit=1"


# --- normalize ---------------------------------------------------------------------------------

def adapter_only(tmp_path) -> MisaAdapter:
    # As `hocba-hub normalize` builds it: no settings at all.
    return MisaAdapter(MisaAdapter.Settings.model_construct(), PluginContext("misa-test", tmp_path))


def raw_of(record: dict) -> RawRecord:
    return RawRecord(source_id=str(record.get("id")), payload=json.dumps(record, ensure_ascii=False).encode())


def record_of(index: int) -> dict:
    return copy.deepcopy(MisaSimulator(records=8).vendor_record(index))


def test_the_examples(tmp_path):
    adapter = adapter_only(tmp_path)
    record = json.loads((EXAMPLES / "record.json").read_text("utf-8"))
    result = central(adapter, raw_of(record))
    assert result == expected(MisaSimulator(records=8).central(7))
    assert result["student"]["full_name"] == unicodedata.normalize("NFC", record["student"]["fullName"])
    assert record["student"]["fullName"] != result["student"]["full_name"]  # the example really is NFD
    invalid = json.loads((EXAMPLES / "invalid.json").read_text("utf-8"))
    with pytest.raises(ValidationError) as err:
        central(adapter, raw_of(invalid))
    assert [line.split(":")[0] for line in field_errors(err.value)] == ["student.birth_date"]
    assert json.dumps(record, ensure_ascii=False, indent=2) in (EXAMPLES.parent / "CONTRACT.md").read_text("utf-8")


def strip_level(record: dict) -> None:
    """An unknown level and no level-specific key: nothing tells which shape it is."""
    record["school"]["schoolLevel"] = "09"
    record["evaluation"] = {"subjects": record["evaluation"]["subjects"]}


@pytest.mark.parametrize("index, edit, message", [
    (0, lambda r: r["student"].pop("fullName"), "student.fullName is missing"),
    (0, lambda r: r["approval"].pop("signedDate"), "approval.signedDate is missing"),
    (0, lambda r: r["approval"].pop("principal"), "approval.principal is missing"),
    (0, lambda r: r["evaluation"]["subjects"][1].pop("subjectCode"), r"evaluation.subjects\[1\].subjectCode is missing"),
    (0, lambda r: r["evaluation"]["qualities"].pop("honesty"), "evaluation.qualities.honesty is missing"),
    (0, lambda r: r["evaluation"].pop("completedGradeProgram"), "evaluation.completedGradeProgram is missing"),
    (0, lambda r: r.pop("transcript"), "transcript is missing"),
    (3, lambda r: r["evaluation"]["learningResult"].pop("yearEnd"), "evaluation.learningResult.yearEnd is missing"),
    (3, lambda r: r["evaluation"].pop("daysAbsent"), "evaluation.daysAbsent is missing"),
    (3, lambda r: r["evaluation"]["subjects"][0].pop("evaluationType"), r"subjects\[0\].evaluationType is missing"),
    (3, lambda r: r["evaluation"]["subjects"][0].update(evaluationType="grade"), r"evaluationType is not 'score'"),
    (3, lambda r: r["evaluation"]["subjects"][0].pop("yearEnd"), r"subjects\[0\].yearEnd is missing"),
    (0, lambda r: r["student"].update(passportNo="B1234567"), "student.passportNo is not part of the misa contract"),
    (0, lambda r: r.update(rewardPoints=9), "rewardPoints is not part of the misa contract"),
    (0, lambda r: r["evaluation"].update(learningResult={"yearEnd": "T"}), "evaluation.learningResult is not part"),
    # Wrong JSON types where the contract has an object or a list name the vendor path.
    (0, lambda r: r.update(student="Nguyễn Văn A"), "student is not an object"),
    (0, lambda r: r["evaluation"].update(subjects={"TV": "T"}), "evaluation.subjects is not a list"),
    (0, lambda r: r["evaluation"]["subjects"].append("TOAN"), r"evaluation.subjects\[\d+\] is not an object"),
    (3, lambda r: r["evaluation"].update(certificates=["x"]), r"evaluation.certificates\[0\] is not an object"),
    (0, lambda r: r["school"].pop("schoolLevel"), "school.schoolLevel is missing"),
    (0, strip_level, "school.schoolLevel is not 02, 03 or 04"),
])
def test_normalize_names_the_vendor_key(tmp_path, index, edit, message):
    record = record_of(index)
    edit(record)
    with pytest.raises(ValueError, match=message):
        adapter_only(tmp_path).normalize(raw_of(record))


def test_a_truncated_payload_is_named(tmp_path):
    whole = json.dumps(record_of(0)).encode()
    with pytest.raises(ValueError, match="payload is not JSON, or is truncated"):
        adapter_only(tmp_path).normalize(RawRecord("x", whole[: len(whole) // 2]))


def set_path(path: str, value):
    def change(record):
        *parents, last = path.split(".")
        target = record
        for part in parents:
            target = target[int(part)] if part.isdigit() else target[part]
        target[int(last) if last.isdigit() else last] = value
    return change


@pytest.mark.parametrize("index, change, field", [
    (3, set_path("transcript.grade", "bảy"), "grade"),                                       # wrong type
    (3, set_path("evaluation.daysAbsent", [3]), "days_absent"),                              # wrong type
    (3, set_path("student.dateOfBirth", "2010-02-30T00:00:00"), "student.birth_date"),       # impossible date
    (3, set_path("approval.signedDate", "31/13/2025"), "signatories.issue_date"),
    (3, set_path("evaluation.subjects.0.yearEnd", "11,5"), "subjects[0].year_average"),      # out of range
    (3, set_path("evaluation.subjects.0.term1", "8,25"), "subjects[0].term1_average"),       # two decimals
    (3, set_path("evaluation.subjects.0.term2", "Đ"), "subjects[0].term2_average"),          # comment in a score
    (3, set_path("evaluation.subjects.4.yearEnd", "X"), "subjects[4].year_comment"),
    (3, set_path("evaluation.subjects.0.subjectCode", ""), "subjects[0].subject_code"),
    (3, set_path("evaluation.learningResult.yearEnd", "T"), "learning.year"),                # contradicts averages
    (0, set_path("evaluation.subjects.0.yearEndTestScore", "8,5"), "subjects[0].year_score"),  # not whole
    (0, set_path("evaluation.subjects.0.yearEndTestScore", "0"), "subjects[0].year_score"),
    (0, set_path("student.gender", "X"), "student.gender"),
    (0, set_path("school.schoolLevel", "09"), "level"),
])
def test_bad_values_are_quarantined_naming_the_central_field(tmp_path, index, change, field):
    record = record_of(index)
    change(record)
    with pytest.raises(ValidationError) as err:
        central(adapter_only(tmp_path), raw_of(record))
    assert field in [line.split(":")[0] for line in field_errors(err.value)], field_errors(err.value)


def test_an_unknown_subject_code_is_refused_naming_it(tmp_path):
    record = record_of(3)
    record["evaluation"]["subjects"][0]["subjectCode"] = "XYZ"
    with pytest.raises(ValidationError) as err:
        central(adapter_only(tmp_path), raw_of(record))
    assert [line.split(":")[0] for line in field_errors(err.value)] == ["subjects[0].subject_code"]


def test_nulls_mean_unknown_and_unassessed_competencies_are_left_out(tmp_path):
    record = record_of(0)
    record["student"]["personalIdentifier"] = None
    record["student"]["family"] = None
    record["student"]["gender"] = 0
    record["evaluation"]["competencies"].update(language="T", technology=None)
    result = central(adapter_only(tmp_path), raw_of(record))
    assert result["student"]["personal_id"] is None and result["student"]["father_name"] is None
    assert result["student"]["gender"] == 0
    assert result["competencies"]["ngon_ngu"] == "T" and "cong_nghe" not in result["competencies"]
