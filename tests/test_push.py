"""The push adapter and the hub's ingest route over real HTTP (see adapters/push/CONTRACT.md).

One hub (push adapter + a spreadsheet adapter + the central-store simulator + local keys)
serves the whole module on loopback: starting one costs seconds, and every test uses its own
source ids, so they do not see each other's records.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from conftest import deliver_to, hub_config, only_plugins
from pydantic import ValidationError

from adapters.ttdlqg.simulator import TtdlqgSimulator
from adapters.push.adapter import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    PushAdapter,
    PushRefused,
    sign,
)
from adapters.push.simulator import PushSimulator, ingest_url
from hub import lifecycle as lc
from hub import plugins
from hub import store as st
from hub.contracts import PluginContext, RawRecord
from hub.engine.pipeline import Hub
from hub.kit.synthetic import transcript, with_subject_teachers
from hub.records import parse_transcript
from hub.web.server import serving_hub

# The HTTP tests share the module's hub, so they run in the module's event loop.
over_http = pytest.mark.asyncio(loop_scope="module")

SECRET = "push-test-secret-4f7c1a9e2b"
NAME = "school-push"
MAX_BODY = 128 * 1024  # room for 21 full transcripts (≈3.5 KB each), so max_records is what refuses them
EXAMPLE = Path(__file__).resolve().parents[1] / "adapters" / "push" / "examples" / "record.json"
ENVELOPE = {"record_id": "push-test", "event": "NEW", "version": 1, "updated_at": "2025-06-01T07:00:00"}


@pytest.fixture(scope="module", autouse=True)
def only_these_plugins():
    with only_plugins("push", "spreadsheet", "ttdlqg", "pkcs12", "xml", HOCBA_TEST_PUSH_SECRET=SECRET):
        yield


@dataclass
class Running:
    hub: Hub
    base: str
    store_path: Path
    central: TtdlqgSimulator

    @property
    def url(self) -> str:
        return ingest_url(self.base, NAME)

    def committed(self) -> list[st.Row]:
        """The store as another process sees it: only committed rows, through a new connection."""
        other = st.Store(self.store_path)
        try:
            return other.rows(adapter=NAME)
        finally:
            other.close()

    def versions(self) -> set[tuple[str, int, str]]:
        """Every stored version, whatever stage the pipeline has taken it to since."""
        return {(r.source_id, r.version, r.event) for r in self.committed()}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def running(pki, tmp_path_factory, only_these_plugins):
    root = tmp_path_factory.mktemp("push")
    (root / "drop").mkdir()
    central = TtdlqgSimulator()
    await central.start()
    config = hub_config(root / "data", pki[0], destination=deliver_to(central), adapters=[
        # The secret comes from the environment, as a province's config would have it.
        {"name": NAME, "type": "push",
         "settings": {"secret": "${HOCBA_TEST_PUSH_SECRET}", "max_body_bytes": MAX_BODY, "max_records": 20}},
        {"name": "school-files", "type": "spreadsheet", "poll_interval": 3600,
         "settings": {"directory": str(root / "drop")}},
    ])
    try:
        async with serving_hub(config, drain_timeout=5) as (hub, base):
            yield Running(hub, base, Path(config.store_path), central)
    finally:
        await central.stop()


@pytest_asyncio.fixture(loop_scope="module")
async def vendor():
    sims: list[PushSimulator] = []

    async def make(**kwargs) -> PushSimulator:
        sim = PushSimulator(secret=SECRET, **kwargs)
        assert await sim.start() == ""
        sims.append(sim)
        return sim

    yield make
    for sim in sims:
        await sim.stop()


def envelope(source_id: str, index: int = 0, **extra) -> dict:
    return {"source_id": source_id, "updated_at": "2025-06-01T07:00:00", "transcript": transcript(index, 9), **extra}


def make_adapter(**settings) -> PushAdapter:
    return PushAdapter(PushAdapter.Settings(secret=SECRET, **settings), PluginContext("push-test", Path(".")))


# --- over HTTP --------------------------------------------------------------------------------

@over_http
async def test_a_signed_push_is_committed_before_the_202(running, vendor):
    sim = await vendor()
    records = [envelope("commit-1", 0), envelope("commit-2", 3)]
    answer = await sim.send(running.url, records)
    # Read through a separate connection the moment the answer is in: the rows are committed.
    rows = {r.source_id: r for r in running.committed()}
    assert answer.status == 202, answer.body
    assert {"commit-1", "commit-2"} <= set(rows)
    for row in (rows["commit-1"], rows["commit-2"]):
        assert row.version == 1 and row.event == "NEW"
        assert row.state in {lc.RECEIVED, lc.NORMALIZED, lc.RENDERED, lc.DELIVERED} or row.state.startswith(lc.SIGNED_PREFIX)
    assert answer.body["received"] == 2 and answer.body["new_versions"] == 2
    assert answer.body["records"] == [{"source_id": s, "record_id": st.record_id_for(NAME, s)}
                                      for s in ("commit-1", "commit-2")]
    # The payload stored is the envelope the vendor sent (canonical JSON), not a re-mapping.
    assert json.loads(rows["commit-1"].payload) == records[0]


@over_http
async def test_pushed_records_go_through_the_whole_pipeline(running, vendor):
    sim = await vendor(records=4, invalid=2, seed=5)
    answers = await sim.push(running.base, NAME, batch_size=4)
    assert [a.status for a in answers] == [202, 202]
    await asyncio.wait_for(running.hub.wait_idle(), 120)
    ours = {r.source_id: r for r in running.hub.store.rows(adapter=NAME) if r.source_id.startswith("push-5-")}
    assert len(ours) == 6
    for i in range(4):
        row = ours[sim.source_id(i)]
        assert row.state == lc.DELIVERED, (row.state, row.errors)
        # The vendor's quirks (NFD names, dd/MM/yyyy, comma decimals) came out clean.
        assert row.normalized == parse_transcript({**with_subject_teachers(transcript(i, 5)), "record_id": row.record_id, "event": "NEW",
                                                   "version": 1, "updated_at": row.normalized["updated_at"]}
                                                  ).model_dump(mode="json")
        assert running.central.accepted()[row.record_id] == 1
    for source_id, (kind, field) in sim.defects.items():
        row = ours[source_id]
        assert row.state == lc.QUARANTINED
        assert any(e.startswith(field + ":") for e in row.errors), (kind, row.errors)


@over_http
async def test_a_bad_signature_is_401_and_stores_nothing(running, vendor):
    sim = await vendor()
    before = running.versions()
    answer = await sim.send_bad_signature(running.url, envelope("bad-signature"))
    assert answer.status == 401 and answer.body["error"] == "unauthenticated"
    assert "does not match" in answer.body["detail"]
    assert SECRET not in json.dumps(answer.body)
    assert running.versions() == before


@over_http
async def test_a_tampered_body_is_401(running, vendor):
    sim = await vendor()
    body = json.dumps(envelope("tampered")).encode()
    headers = sim.headers(body)
    answer = await sim.send_raw(running.url, body.replace(b"tampered", b"tampere2"), headers)
    assert answer.status == 401
    assert not [r for r in running.committed() if r.source_id.startswith("tampere")]


@over_http
@pytest.mark.parametrize("headers", [{}, {TIMESTAMP_HEADER: "1700000000"}, {SIGNATURE_HEADER: "sha256=00"},
                                     {TIMESTAMP_HEADER: "soon", SIGNATURE_HEADER: "sha256=00"}])
async def test_missing_or_malformed_auth_headers_are_401(running, vendor, headers):
    sim = await vendor()
    before = running.versions()
    answer = await sim.send_raw(running.url, json.dumps(envelope("no-auth")).encode(), headers)
    assert answer.status == 401
    assert running.versions() == before


@over_http
@pytest.mark.parametrize("age", [301, 3600, -301])
async def test_a_timestamp_outside_the_window_is_401(running, vendor, age):
    sim = await vendor()
    before = running.versions()
    answer = await sim.send_stale(running.url, envelope(f"stale{age}"), age_seconds=age)
    assert answer.status == 401 and "replay window" in answer.body["detail"]
    assert running.versions() == before


@over_http
async def test_the_same_request_twice_is_a_replay(running, vendor):
    sim = await vendor()
    first = await sim.send(running.url, envelope("replayed"))
    assert first.status == 202
    after_first = running.versions()
    again = await sim.replay_last()
    assert again.status == 401 and "replay" in again.body["detail"]
    assert running.versions() == after_first


@over_http
async def test_a_re_signed_identical_push_is_accepted_and_changes_nothing(running, vendor):
    # A vendor retrying after a lost answer signs again; the content hash makes it a no-op.
    sim = await vendor()
    assert (await sim.send(running.url, envelope("retried"))).status == 202
    before = running.versions()
    await asyncio.sleep(1.05)  # a new second: a new timestamp, so a new signature
    retry = await sim.send(running.url, envelope("retried"))
    assert retry.status == 202 and retry.body["new_versions"] == 0
    assert running.versions() == before


@over_http
async def test_a_deleted_record_becomes_a_cancel(running, vendor):
    sim = await vendor()
    assert (await sim.send(running.url, envelope("recalled", 1))).status == 202
    answer = await sim.send(running.url, envelope("recalled", 1, deleted=True))
    assert answer.status == 202 and answer.body["new_versions"] == 1
    versions = sorted((r.version, r.event) for r in running.committed() if r.source_id == "recalled")
    assert versions == [(1, "NEW"), (2, "CANCEL")]


@over_http
async def test_an_oversized_body_is_413_and_stores_nothing(running, vendor):
    sim = await vendor()
    before = running.versions()
    answer = await sim.send_oversized(running.url, MAX_BODY + 1)
    assert answer.status == 413 and answer.body["error"] == "too_large"
    assert running.versions() == before


@over_http
async def test_an_oversized_chunked_body_is_413(running, vendor):
    # Without a Content-Length the limit is enforced while reading.
    sim = await vendor()
    body = json.dumps([envelope("chunked", padding="x" * MAX_BODY)]).encode()

    async def chunks():
        for start in range(0, len(body), 8192):
            yield body[start:start + 8192]

    before = running.versions()
    async with aiohttp.ClientSession() as http:
        async with http.post(running.url, data=chunks(), headers=sim.headers(body)) as response:
            assert response.status == 413
            assert "Content-Length" not in response.request_info.headers
    assert running.versions() == before


@pytest.mark.parametrize("body, message", [
    (b'{"source_id": "x", ', "not JSON"),
    (b'"just a string"', "JSON object"),
    (b"[]", "empty array"),
    (b'[{"source_id": "ok", "transcript": {}}, 7]', "[1] is not an object"),
    (b'{"source_id": "x"}', "transcript must be an object"),
    (b'{"source_id": "", "transcript": {}}', "source_id"),
    (b'{"source_id": "x", "transcript": {}, "colour": "red"}', "colour is not part of the push envelope"),
    (b'{"source_id": "x", "transcript": {}, "deleted": "yes"}', "deleted must be true or false"),
    (b'{"source_id": "x", "transcript": {}, "updated_at": "yesterday"}', "updated_at"),
    (b'[{"source_id": "x", "transcript": {}}, {"source_id": "x", "transcript": {}}]', "one record per id"),
    (b'{"source_id": "x", "transcript": {"n": NaN}}', "NaN"),
    ("{\"source_id\": \"x\"}".encode("utf-16"), "UTF-8"),
    # Hostile bodies: a clean 400, never a RecursionError or a 500 (nor a 503 from the database).
    (b'{"source_id": "x", "transcript": ' + b"[" * 30_000 + b"]" * 30_000 + b"}", "nested deeper than 64"),
    (b'{"source_id": "x", "transcript": ' + b'{"a":' * 100 + b"1" + b"}" * 100 + b"}", "nested deeper than 64"),
    (b'{"source_id": "x", "source_id": "y", "transcript": {}}', "duplicate key 'source_id'"),
    (b'{"source_id": "x\\u0000y", "transcript": {}}', "source_id must not contain control"),
])
@over_http
async def test_a_malformed_body_is_400_and_stores_nothing(running, vendor, body, message):
    sim = await vendor()
    before = running.versions()
    answer = await sim.send_raw(running.url, body, sim.headers(body))
    assert answer.status == 400 and answer.body["error"] == "malformed", answer.body
    assert message in answer.body["detail"]
    assert running.versions() == before


@over_http
async def test_too_many_records_in_one_push_is_400(running, vendor):
    sim = await vendor()
    answer = await sim.send(running.url, [envelope(f"many-{i}") for i in range(21)])
    assert answer.status == 400 and "max_records" in answer.body["detail"]
    assert not [r for r in running.committed() if r.source_id.startswith("many-")]


@over_http
@pytest.mark.parametrize("name", ["nobody", "school-files"])
async def test_unknown_or_non_push_adapter_is_404(running, vendor, name):
    # "school-files" exists but is a spreadsheet adapter: it does not receive pushes.
    sim = await vendor()
    answer = await sim.send(ingest_url(running.base, name), envelope("lost"))
    assert answer.status == 404 and answer.body["error"] == "unknown_adapter"


@over_http
async def test_a_paused_adapter_refuses_with_503_until_resumed(running, vendor):
    sim = await vendor()
    running.hub.store.set_paused(NAME, True, "test")
    try:
        before = running.versions()
        answer = await sim.send(running.url, envelope("while-paused"))
        assert answer.status == 503 and answer.body["error"] == "paused"
        assert running.versions() == before
    finally:
        running.hub.store.set_paused(NAME, False, "test")
    assert (await sim.send(running.url, envelope("while-paused"))).status == 202


@over_http
async def test_only_post_is_allowed(running):
    async with aiohttp.ClientSession() as http:
        async with http.get(running.url) as response:
            assert response.status == 405


# --- the adapter on its own ---------------------------------------------------------------------

def test_registered_through_the_entry_point():
    info = plugins.adapter_types()["push"]
    assert info.cls is PushAdapter
    assert info.cls.can("normalize") and not info.cls.can("fetch") and not info.cls.can("deliver")
    assert PushAdapter.simulator == "adapters.push.simulator:PushSimulator"


def test_settings_need_a_real_secret_and_keep_it_out_of_reprs():
    with pytest.raises(ValidationError) as err:
        PushAdapter.Settings(secret="short")
    assert err.value.errors()[0]["loc"] == ("secret",)
    with pytest.raises(ValidationError):
        PushAdapter.Settings()
    settings = PushAdapter.Settings(secret=SECRET)
    assert SECRET not in repr(settings) and SECRET not in str(settings.model_dump())
    assert settings.replay_window_seconds == 300
    # An unset rotation variable (``${OLD:-}``) must not become an empty, forgeable key.
    assert PushAdapter.Settings(secret=SECRET, previous_secret=" ").previous_secret is None
    with pytest.raises(ValidationError):
        PushAdapter.Settings(secret=SECRET, previous_secret="short")


def test_signature_is_hmac_sha256_over_timestamp_dot_body():
    import hashlib
    import hmac

    body = b'{"a": 1}'
    expected = hmac.new(SECRET.encode(), b"1750000000." + body, hashlib.sha256).hexdigest()
    assert sign(SECRET, 1750000000, body) == f"sha256={expected}"


def test_a_rotated_secret_is_accepted_until_removed():
    old, new = "old-secret-0123456789", "new-secret-0123456789"
    body = b"{}"
    stamp = str(int(time.time()))
    adapter = PushAdapter(PushAdapter.Settings(secret=new, previous_secret=old), PluginContext("p", Path(".")))
    adapter.verify_push({TIMESTAMP_HEADER: stamp, SIGNATURE_HEADER: sign(old, stamp, body)}, body)
    adapter.verify_push({TIMESTAMP_HEADER: stamp, SIGNATURE_HEADER: sign(new, stamp, body)}, body)
    after = PushAdapter(PushAdapter.Settings(secret=new), PluginContext("p", Path(".")))
    with pytest.raises(PushRefused):
        after.verify_push({TIMESTAMP_HEADER: stamp, SIGNATURE_HEADER: sign(old, stamp, body)}, body)
    # A sender mid-rotation may offer both signatures.
    both = f"{sign('wrong-secret-000000000', stamp, body)}, {sign(new, stamp, b'{}')}"
    after.verify_push({TIMESTAMP_HEADER: stamp, SIGNATURE_HEADER: both}, b"{}")


def test_a_replay_window_of_its_own():
    adapter = make_adapter(replay_window_seconds=30)
    body = b"{}"
    stamp = str(int(time.time()) - 31)
    with pytest.raises(PermissionError, match="30 s replay window"):
        adapter.verify_push({TIMESTAMP_HEADER: stamp, SIGNATURE_HEADER: sign(SECRET, stamp, body)}, body)


def test_reordered_keys_are_the_same_payload():
    adapter = make_adapter()
    a = adapter.parse_push(json.dumps({"source_id": "k", "transcript": {"x": 1, "y": 2}}).encode())
    b = adapter.parse_push(json.dumps({"transcript": {"y": 2, "x": 1}, "source_id": "k"}).encode())
    assert a[0].payload == b[0].payload


def test_updated_at_without_offset_is_vietnam_time():
    [raw] = make_adapter().parse_push(json.dumps(envelope("t")).encode())
    assert raw.updated_at.isoformat() == "2025-06-01T07:00:00+07:00"


def test_normalize_maps_the_example_and_refuses_hub_owned_fields():
    adapter = PushAdapter(PushAdapter.Settings.model_construct(), PluginContext("p", Path(".")))
    raw = RawRecord("example", EXAMPLE.read_bytes())
    record = parse_transcript({**adapter.normalize(raw), **ENVELOPE})
    assert record.student.full_name == "Phan Thuỳ Dũng"  # the example's NFD name comes out NFC
    for key in ("version", "phienban", "record_id"):
        payload = json.dumps({"source_id": "x", "transcript": {**transcript(0), key: 7}}).encode()
        with pytest.raises(ValueError, match=f"transcript.{key} is set by the hub"):
            adapter.normalize(RawRecord("x", payload))
    with pytest.raises(ValueError, match="transcript is missing"):
        adapter.normalize(RawRecord("x", b'{"source_id": "x"}'))
