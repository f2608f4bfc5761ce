"""Versions, cursors and races under hostile timing: vendor clocks in the future, a cursor that
must not pass the hub's clock, and a newer version arriving while an older one is being
delivered. Real store, real simulators over loopback HTTP, the real pipeline."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json

import pytest
from conftest import deliver_to, hub_config, pull_from, started_hub
from hypothesis import given, settings
from hypothesis import strategies as hs

from hub import lifecycle as lc
from hub import store as st
from hub.contracts import PluginContext, RawRecord
from hub.engine.pipeline import Hub
from hub.plugins import adapter_types
from hub.web.app import create_app
from hub.web.server import serving

VN = dt.timezone(dt.timedelta(hours=7))


def now_vn() -> dt.datetime:
    return dt.datetime.now(VN).replace(microsecond=0)


def raw(source_id: str, body: dict, updated: dt.datetime) -> RawRecord:
    return RawRecord(source_id, json.dumps(body, ensure_ascii=False).encode(), updated_at=updated)


# --- the store: a future timestamp never makes a real edit "older" ----------------------------------

@settings(max_examples=60, deadline=None, database=None, derandomize=True)
@given(ahead=hs.integers(600, 10 * 365 * 86400), behind=hs.integers(0, 3600))
def test_a_future_dated_version_never_drops_a_later_real_edit(ahead, behind):
    store = st.Store(":memory:")
    try:
        now = now_vn()
        [first] = store.receive("a", [raw("s1", {"v": 1}, now + dt.timedelta(seconds=ahead))])
        new = store.receive("a", [raw("s1", {"v": 2}, now - dt.timedelta(seconds=behind))])
        assert len(new) == 1 and store.get(new[0]).version == 2
    finally:
        store.close()


def test_within_the_skew_an_older_retry_is_still_dropped():
    store = st.Store(":memory:")
    try:
        now = now_vn()
        store.receive("a", [raw("s1", {"v": 1}, now + dt.timedelta(seconds=60))])
        assert store.receive("a", [raw("s1", {"v": 0}, now - dt.timedelta(hours=1))]) == []
    finally:
        store.close()


# --- the pipeline and a pull adapter ---------------------------------------------------------------

VENDOR = {"records": 2, "seed": 13}   # the school server of the ``systems`` fixture


async def ingested(hub, *records: RawRecord, timeout: float = 120) -> None:
    """Hand ``records`` to the hub as school-a's and wait until it has done all it can with them."""
    await hub.ingest("school-a", list(records))
    await asyncio.wait_for(hub.wait_idle(), timeout)


def config_for(tmp_path, pki, vendor, central, store: str = "", **extra):
    return hub_config(tmp_path / "data", pki[0], adapters=[pull_from(vendor)], destination=deliver_to(central),
                      attempts=4, clock_skew_seconds=120, store=store, **extra)


async def test_a_future_dated_record_is_held_with_the_reason(tmp_path, pki, systems):
    vendor, central = systems
    async with started_hub(config_for(tmp_path, pki, vendor, central), pull=False) as hub:
        body = vendor.vendor_record(0)
        await ingested(hub, raw(vendor.source_id(0), body, now_vn() + dt.timedelta(days=30)), timeout=60)
        [row] = hub.store.rows(adapter="school-a")
        assert row.state == lc.QUARANTINED
        assert row.errors[0].startswith("updated_at: the vendor dates this version more than 120 s ahead")
        assert central.accepted() == {}


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_a_pulled_id_with_nul_is_quarantined_naming_it_and_the_page_goes_on(tmp_path, pki, systems, backend):
    """The issue's case: a pull adapter's ``source_id`` holding NUL. PostgreSQL cannot store it;
    the page used to fail every poll (its other records never read, the cursor never moved).
    On both backends the page commits, the other record goes on to the destination and this one
    is quarantined naming ``source_id`` — and a replay refuses it again."""
    vendor, central = systems
    vendor._rows[0].source_id = "hs\x00-0"
    with contextlib.ExitStack() as stack:
        store = ""
        if backend == "postgresql":
            from pgtest import scratch_database

            store = stack.enter_context(scratch_database("hocba_nul"))
        from hub.kit.synthetic import department_identity

        dept = department_identity("01")   # the Ministry's store takes class packages the Department signs
        hub = Hub(config_for(tmp_path, pki, vendor, central, store, documents=["xml", "pdf"],
                             department={"code": dept.school_code, "name": dept.name, "signer": "keys"}))
        await hub.start()
        try:
            await asyncio.wait_for(hub.wait_idle(), 120)
            assert not hub.status["school-a"].pull_failing and hub.store.cursor("school-a")
            rows = {r.record_id: r for r in hub.store.rows(adapter="school-a")}
            bad = rows.pop(st.record_id_for("school-a", "hs\x00-0"))
            assert bad.state == lc.QUARANTINED
            assert bad.errors[0].startswith("source_id: ") and "hs" not in bad.errors[0]
            assert "U+0000" in hub.store.history(bad.id)[0]["detail"]
            [good] = rows.values()   # the page's other record goes on
            assert good.state not in (lc.QUARANTINED, lc.FAILED) and not good.errors, (good.state, good.errors)
            assert await hub.replay([bad.id], actor="test") == [(bad.id, lc.RECEIVED)]
            await asyncio.wait_for(hub.wait_idle(), 60)
            again = hub.store.get(bad.id)
            assert again.state == lc.QUARANTINED and again.errors[0].startswith("source_id: ")
        finally:
            await hub.stop()


async def test_the_pull_cursor_never_passes_the_hubs_clock(tmp_path, systems):
    vendor, _ = systems
    info = adapter_types()["vnpt"]
    adapter = info.cls(info.cls.Settings.model_validate(vendor.adapter_settings()), PluginContext("a", tmp_path))
    await adapter.open()
    try:
        vendor._rows[0].updated = (now_vn() + dt.timedelta(days=365)).replace(tzinfo=None)
        cursors = [page.cursor async for page in adapter.fetch(None)]
        saved = dt.datetime.fromisoformat(cursors[-1])
        assert saved <= now_vn().replace(tzinfo=None)
        # A real edit made now is read by the next poll from the saved cursor.
        vendor._rows[1].updated = now_vn().replace(tzinfo=None)
        ids = [r.source_id async for page in adapter.fetch(cursors[-1]) for r in page.records]
        assert vendor.source_id(1) in ids
    finally:
        await adapter.close()


async def test_an_accepted_version_is_never_recorded_as_superseded(tmp_path, pki, systems):
    """A newer version arrives while the older one's delivery is in flight: the older one is
    accepted by the destination, so the store records it delivered with its receipt."""
    vendor, central = systems
    central.faults.slow_seconds = 2.0
    async with started_hub(config_for(tmp_path, pki, vendor, central)) as hub:
        def in_flight() -> bool:  # record 0's version 1 is leased to the outbox (being sent)
            row = next((r for r in hub.store.rows(adapter="school-a") if r.source_id == vendor.source_id(0)), None)
            return row is not None and hub.store._db.execute(
                "SELECT 1 FROM outbox WHERE record = ? AND lease_owner IS NOT NULL", (row.id,)).fetchone() is not None
        for _ in range(1200):
            if in_flight():
                break
            await asyncio.sleep(0.05)
        assert in_flight(), "version 1 never went out"
        await asyncio.sleep(0.3)  # inside the destination's slow answer
        vendor.update(0)
        body = vendor.vendor_record(0)
        await hub.ingest("school-a", [raw(vendor.source_id(0), body, now_vn())])
        central.faults.slow_seconds = 0
        await asyncio.wait_for(hub.wait_idle(), 120)
        rows = [r for r in hub.store.rows(adapter="school-a") if r.source_id == vendor.source_id(0)]
        first = next(r for r in rows if r.version == 1)
        latest = max(rows, key=lambda r: r.version)
        held = central.accepted()[first.record_id]
        assert first.state == lc.DELIVERED and first.receipt, (first.state, hub.store.history(first.id))
        assert latest.state in (lc.DELIVERED, lc.UNCHANGED)
        assert hub.store.sent_version(first.record_id)[0] == held


# --- a recall needs only its envelope ----------------------------------------------------------

def broken(body: dict, how: str) -> dict:
    """``body`` with its content made invalid in one of several ways (the envelope untouched)."""
    body = json.loads(json.dumps(body))
    if how == "birth_date":
        body["HocSinh"]["NgaySinh"] = "31/02/2014"
    elif how == "no_subjects":
        body["KetQua"] = []
    elif how == "tombstone":  # only the vendor's id and the deletion flag
        body = {"IdHocBa": body["IdHocBa"], "DaXoa": True}
    return body


@pytest.mark.parametrize("how", ["birth_date", "no_subjects", "tombstone"])
async def test_a_recall_with_invalid_content_is_still_delivered(tmp_path, pki, systems, how):
    vendor, central = systems
    async with started_hub(config_for(tmp_path, pki, vendor, central), pull=False) as hub:
        sid = vendor.source_id(0)
        await ingested(hub, raw(sid, vendor.vendor_record(0), now_vn() - dt.timedelta(hours=1)))
        [first] = hub.store.rows(adapter="school-a")
        assert first.state == lc.DELIVERED
        recall = RawRecord(sid, json.dumps(broken(vendor.vendor_record(0), how), ensure_ascii=False).encode(),
                           updated_at=now_vn(), deleted=True)
        await ingested(hub, recall)
        latest = max(hub.store.rows(adapter="school-a"), key=lambda r: r.version)
        assert (latest.version, latest.event, latest.state) == (2, "CANCEL", lc.DELIVERED), \
            hub.store.history(latest.id)
        assert central.state(first.record_id) == {**central.state(first.record_id), "highest_version": 2,
                                                  "cancelled": True}
        # The recall carries the content the destination held, never the invalid one.
        assert {k: v for k, v in latest.normalized.items() if k not in ("event", "version", "updated_at")} == \
            {k: v for k, v in first.normalized.items() if k not in ("event", "version", "updated_at")}


async def test_a_recall_of_what_was_never_delivered_sends_nothing(tmp_path, pki, systems):
    vendor, central = systems
    async with started_hub(config_for(tmp_path, pki, vendor, central), pull=False) as hub:
        sid = vendor.source_id(1)
        recall = RawRecord(sid, json.dumps(broken(vendor.vendor_record(1), "birth_date")).encode(),
                           updated_at=now_vn(), deleted=True)
        await ingested(hub, recall, timeout=60)
        [row] = hub.store.rows(adapter="school-a")
        assert row.state == lc.UNCHANGED and row.event == "CANCEL"
        assert "never received" in hub.store.history(row.id)[-1]["detail"]
        assert "student.birth_date" in hub.store.history(row.id)[-1]["detail"]
        assert central.accepted() == {}


async def test_an_invalid_new_version_is_still_quarantined(tmp_path, pki, systems):
    """Only a recall falls back on the delivered content: an invalid edit is held as before."""
    vendor, central = systems
    async with started_hub(config_for(tmp_path, pki, vendor, central), pull=False) as hub:
        sid = vendor.source_id(0)
        await ingested(hub, raw(sid, vendor.vendor_record(0), now_vn() - dt.timedelta(hours=1)))
        await ingested(hub, raw(sid, broken(vendor.vendor_record(0), "birth_date"), now_vn()), timeout=60)
        latest = max(hub.store.rows(adapter="school-a"), key=lambda r: r.version)
        assert latest.state == lc.QUARANTINED and central.accepted()[latest.record_id] == 1


# --- webhook replays: the nonce is the store's, not one process's -----------------------------------

PUSH_SECRET = "replay-test-secret-0123456789"


def push_config(tmp_path, pki, central, store: str, name: str):
    return hub_config(tmp_path / "data", pki[0], store=store, destination=deliver_to(central),
                      adapters=[{"name": "school-push", "type": "push", "settings": {"secret": PUSH_SECRET}}])


@pytest.mark.parametrize("backend", ["sqlite-restart", "postgresql-two-workers"])
async def test_a_captured_push_replayed_to_another_worker_is_refused(tmp_path, pki, systems, backend):
    """The issue's case: a push without ``updated_at`` (old content), then a newer one; the
    captured old request is replayed to a restarted hub (SQLite) or to a second worker on the
    same PostgreSQL database. It must be refused, and the record must not roll back."""
    from adapters.push.simulator import PushSimulator, ingest_url
    from hub.kit.synthetic import transcript

    _, central = systems
    with contextlib.ExitStack() as stack:
        if backend.startswith("postgresql"):
            from pgtest import scratch_database

            store = stack.enter_context(scratch_database("hocba_replay"))
        else:
            store = ""
        sender = PushSimulator(secret=PUSH_SECRET)
        await sender.start()
        old, new = transcript(0, 4), transcript(0, 4)
        new["signatories"]["issue_place"] = "Hà Nội (bản sửa)"
        first = Hub(push_config(tmp_path, pki, central, store, "a"))
        await first.start(pull=False)
        try:
            async with serving(create_app(first)) as base:
                url = ingest_url(base, "school-push")
                assert (await sender.send(url, {"source_id": "s1", "transcript": old})).status == 202
                captured = sender.sent[-1]
                assert (await sender.send(url, {"source_id": "s1", "transcript": new})).status == 202
                if backend == "sqlite-restart":
                    await first.stop()
                    first = Hub(push_config(tmp_path, pki, central, store, "a"))
                    await first.start(pull=False)
                    other = first
                else:
                    other = Hub(push_config(tmp_path / "second", pki, central, store, "b"))
                    await other.start(pull=False)
                try:
                    async with serving(create_app(other)) as second:
                        again = await sender.send_raw(ingest_url(second, "school-push"), captured.request,
                                                      captured.headers)
                    assert again.status == 401 and "replay" in again.body["detail"], again.body
                    rows = [r for r in other.store.rows(adapter="school-push") if r.source_id == "s1"]
                    assert sorted(r.version for r in rows) == [1, 2]
                finally:
                    if other is not first:
                        await other.stop()
        finally:
            await first.stop()
            await sender.stop()


# --- viettel's and misa's cursors: a vendor clock in the future never skips a real edit ------------

@pytest.fixture
async def pulling(tmp_path):
    """``start(name, records) -> (vendor, sim, adapter)`` for misa or viettel, pages of three."""
    from pull_vendors import MISA, VIETTEL

    async with contextlib.AsyncExitStack() as stack:
        async def start(name: str, records: int = 5):
            kind = {"misa": MISA, "viettel": VIETTEL}[name]
            started = await stack.enter_async_context(kind.starting(tmp_path))
            return (kind, *await started(records=records, page_size=3))

        yield start


@pytest.mark.parametrize("name", ["viettel", "misa"])
@pytest.mark.parametrize("ahead_days", [1, 3650])
async def test_a_future_dated_vendor_record_never_makes_a_later_poll_skip_a_real_edit(pulling, name, ahead_days):
    kind, sim, adapter = await pulling(name)
    store = st.Store(":memory:")
    try:
        assert await kind.poll(adapter, store) is None
        sim.update(0)
        sim._rows[0].updated = now_vn() + dt.timedelta(days=ahead_days)   # the vendor's clock ran ahead
        assert await kind.poll(adapter, store) is None
        cursor = store.cursor(name)
        if name == "viettel":  # the saved position never passes the hub's clock
            after = json.loads(cursor)["after"]
            assert after is None or dt.datetime.fromisoformat(after) <= now_vn()
        # A real edit now, dated by a vendor clock that is right again.
        sim.update(2)
        sim._rows[2].updated = now_vn()
        assert await kind.poll(adapter, store) is None
        versions = {(r.source_id, r.version) for r in store.rows(adapter=name)}
        assert (sim.source_id(2), 2) in versions and (sim.source_id(0), 2) in versions
    finally:
        store.close()


@pytest.mark.parametrize("cursor", ['{"after": "2099-01-01T00:00:00+07:00", "cursor": null}', "2099-01-01T00:00:00"])
async def test_a_saved_viettel_position_in_the_future_reads_the_whole_feed_again(pulling, cursor):
    import structlog

    kind, sim, adapter = await pulling("viettel")
    with structlog.testing.capture_logs() as logs:
        _, raws = await kind.read(adapter, cursor)
    assert sorted(r.source_id for r in raws) == sorted(sim.source_id(i) for i in range(5))
    assert "viettel.cursor_in_the_future" in [e["event"] for e in logs]
