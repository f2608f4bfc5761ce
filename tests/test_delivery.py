"""Delivery guarantees against the central-store simulator's fault switches: outages, refusals,
retries, version conflicts, replay, audit chain and retention."""

from __future__ import annotations

import asyncio
import io
import json
import sqlite3

from conftest import ROLES, deliver_to, hub_config, pull_from

from hub import lifecycle as lc
from hub import store as st
from hub.cli import main
from hub.engine.pipeline import Hub
from hub.hookspecs import hookimpl
from hub.logs import configure
from hub.plugins import manager
from hub.store.audit import verify_chain


VENDOR = {"records": 5, "invalid": 1, "seed": 11}   # the school server of the ``systems`` fixture


def config_for(tmp_path, pki, vendor, central, **delivery):
    return hub_config(tmp_path / "data", pki[0], adapters=[pull_from(vendor)], destination=deliver_to(central),
                      delivery={"max_attempts": 4, "breaker_threshold": 2, "breaker_probe_seconds": 0.2, **delivery})


async def run_until_idle(config, before_idle=None):
    hub = Hub(config)
    await hub.start()
    try:
        if before_idle:
            await before_idle(hub)
        await asyncio.wait_for(hub.wait_idle(), 120)
        return hub.store.rows()
    finally:
        await hub.stop()


def states(rows):
    out: dict[str, int] = {}
    for r in rows:
        out[r.state] = out.get(r.state, 0) + 1
    return out


async def test_outage_queues_everything_logs_once_and_drains_exactly_once(tmp_path, pki, systems):
    vendor, central = systems
    central.faults.outage = True
    logs = io.StringIO()
    configure("json", "info", stream=logs)

    async def outage_then_recovery(hub):
        for _ in range(600):  # until every valid record waits in the outbox and probes have failed
            if hub.store.outbox_size() == 5 and central.counters.requests >= 8:
                break
            await asyncio.sleep(0.05)
        assert hub.store.outbox_size() == 5
        assert states(hub.store.rows()).get(lc.DEAD_LETTER, 0) == 0  # an outage dead-letters nothing
        central.faults.outage = False

    rows = await run_until_idle(config_for(tmp_path, pki, vendor, central, max_attempts=3), outage_then_recovery)
    assert states(rows) == {lc.DELIVERED: 5, lc.QUARANTINED: 1}
    assert central.counters.created == 5 and len(central.accepted()) == 5
    events = [json.loads(line) for line in logs.getvalue().splitlines() if line.startswith("{")]
    started = [e for e in events if e["event"] == "destination.outage_started"]
    ended = [e for e in events if e["event"] == "destination.outage_ended"]
    assert len(started) == 1 and len(ended) == 1, [e["event"] for e in events]
    assert ended[0]["affected_records"] >= 1
    assert ended[0]["waiting_records"] == 5  # every valid record waited for the destination
    assert 1 <= started[0]["waiting_records"] <= 5  # those signed by the time the outage showed
    # While the circuit was open, retries were not logged one by one.
    retries_after_open = [e for e in events[events.index(started[0]):events.index(ended[0])]
                          if e["event"] == "delivery.retry"]
    assert retries_after_open == []


async def test_transient_failures_are_retried_then_delivered(tmp_path, pki, systems):
    vendor, central = systems
    central.faults.fail_next_n = 2
    central.faults.drop_next_n_connections = 1
    rows = await run_until_idle(config_for(tmp_path, pki, vendor, central, breaker_threshold=10))
    assert states(rows) == {lc.DELIVERED: 5, lc.QUARANTINED: 1}
    assert central.counters.created == 5
    retried = [r for r in rows if r.attempts > 0]
    assert retried, "some delivery must have been retried"
    store = st.Store(tmp_path / "data" / "hub.sqlite3")
    assert any((h["detail"] or "").startswith("retry:") for r in retried for h in store.history(r.id))


async def test_refusal_dead_letters_at_once_then_replay_redelivers_without_resigning(tmp_path, pki, systems):
    vendor, central = systems
    real_token = central.adapter_settings()["token"]
    config = config_for(tmp_path, pki, vendor, central)
    config.override_settings("central", {"token": "a-wrong-token-for-this-test"})
    rows = await run_until_idle(config)
    dead = [r for r in rows if r.state == lc.DEAD_LETTER]
    assert len(dead) == 5 and central.counters.created == 0
    assert all("token rejected" in r.errors[0] and r.attempts == 0 for r in dead)
    assert "a-wrong-token-for-this-test" not in json.dumps([r.errors for r in dead])
    signed_pdfs = {r.id: r.pdf for r in dead}

    # The operator fixes the token and replays the dead letters from the delivery stage only.
    config = config_for(tmp_path, pki, vendor, central)
    assert config.destination_settings().token.get_secret_value() == real_token
    assert main(["replay", "--config", _write(tmp_path, config, central), "--state", "dead_letter",
                 "--stage", "deliver", "--actor", "test-operator"]) == 0
    rows = await run_until_idle(config)
    assert states(rows) == {lc.DELIVERED: 5, lc.QUARANTINED: 1}
    for r in rows:
        if r.id in signed_pdfs:
            assert r.pdf == signed_pdfs[r.id]  # not re-signed
            assert central.documents[(r.record_id, r.version)] == r.pdf
    # A replay of delivered records sends nothing.
    store = st.Store(tmp_path / "data" / "hub.sqlite3")
    assert store.replay(store.select(state=lc.DELIVERED), actor="test", deliver_from="signed:school_seal") == []
    kinds = [e["kind"] for e in store.audit_entries()]
    assert kinds.count("replay") == 5 and kinds.count("receipt") == 5 and "submission" in kinds


def _write(tmp_path, config, central):
    """The same config as a YAML file, for the CLI."""
    import yaml

    path = tmp_path / "hub.yaml"
    path.write_text(yaml.safe_dump({
        "data_dir": str(config.data_dir),
        "adapters": [{"name": "school-a", "type": "vnpt", "settings": {"base_url": "http://127.0.0.1:1",
                                                                      "client_id": "x", "client_secret": "x"}}],
        "destination": {"name": "central", "type": "ttdlqg", "settings": central.adapter_settings()},
        "signers": [{"name": "keys", "type": "pkcs12", "settings": {"directory": "x", "password": "x"}}],
        "signing": {"steps": [{"role": r, "signer": "keys"} for r in ROLES]},
    }), encoding="utf-8")
    return str(path)


async def test_quarantined_record_replays_from_raw_payload_once_the_mapping_is_fixed(tmp_path, pki, systems):
    vendor, central = systems
    rows = await run_until_idle(config_for(tmp_path, pki, vendor, central))
    [bad] = [r for r in rows if r.state == lc.QUARANTINED]

    class Fix:  # a province rule deployed after the fact: what the vendor sent wrong, mended
        @hookimpl
        def hocba_hub_transform_record(self, record, adapter):
            record = json.loads(json.dumps(record))
            kind, _field = vendor.defects[bad.source_id]
            fixed = vendor.central(0)
            return {**fixed, "transcript_id": record.get("transcript_id", fixed["transcript_id"])} \
                if kind else record

    plugin = Fix()
    manager().register(plugin, name="test-fix")
    try:
        store = st.Store(tmp_path / "data" / "hub.sqlite3")
        assert store.replay([bad.id], actor="test") == [(bad.id, lc.RECEIVED)]
        rows = await run_until_idle(config_for(tmp_path, pki, vendor, central))
    finally:
        manager().unregister(plugin)
    again = next(r for r in rows if r.id == bad.id)
    assert again.state == lc.DELIVERED and again.payload == bad.payload


async def test_version_conflict_is_reconciled_as_the_next_version(tmp_path, pki, systems):
    vendor, central = systems
    await run_until_idle(config_for(tmp_path / "first", pki, vendor, central))
    assert central.counters.created == 5
    # A second hub with an empty store (a lost database) and a changed transcript: it would
    # send version 1 again, which the store already holds with other content.
    vendor.update(0)
    rows = await run_until_idle(config_for(tmp_path / "second", pki, vendor, central))
    # Every version 1 this hub sent differs from what the store holds (new signatures, and one
    # changed transcript): each 409 is reconciled by sending version 2, none dead-lettered.
    assert states(rows) == {lc.SUPERSEDED: 5, lc.DELIVERED: 5, lc.QUARANTINED: 1}
    reissued = [r for r in rows if r.state == lc.DELIVERED]
    assert {(r.version, r.event) for r in reissued} == {(2, "UPDATE")}
    assert central.accepted() == {r.record_id: 2 for r in reissued}
    assert central.counters.conflicts == 5


async def test_unchanged_content_is_not_sent_again(tmp_path, pki, systems):
    vendor, central = systems
    await run_until_idle(config_for(tmp_path, pki, vendor, central))
    vendor.update(1, change=lambda record: None)  # a new timestamp, the same transcript
    rows = await run_until_idle(config_for(tmp_path, pki, vendor, central))
    assert [r.version for r in rows if r.state == lc.UNCHANGED] == [2]
    assert central.counters.created == 5


async def test_audit_chain_detects_edits_and_removals(tmp_path, pki, systems):
    vendor, central = systems
    await run_until_idle(config_for(tmp_path, pki, vendor, central))
    path = tmp_path / "data" / "hub.sqlite3"
    report = verify_chain(st.Store(path).audit_entries())
    assert report.ok and report.entries >= 10
    db = sqlite3.connect(path)
    db.execute("UPDATE audit SET detail = '{\"version\": 9}' WHERE id = 3")
    db.commit()
    report = verify_chain(st.Store(path).audit_entries())
    assert not report.ok and "entry 3: content does not match its hash (edited)" in report.problems
    db.execute("DELETE FROM audit WHERE id = 5")
    db.commit()
    problems = verify_chain(st.Store(path).audit_entries()).problems
    assert "entries 5..5 are missing" in problems and "entry 6: does not link to the entry before it" in problems


async def test_retention_prunes_delivered_payloads_only_and_reclaims_space(tmp_path, pki, systems):
    vendor, central = systems
    rows = await run_until_idle(config_for(tmp_path, pki, vendor, central))
    path = tmp_path / "data" / "hub.sqlite3"
    store = st.Store(path)
    pages_before = store._db.execute("PRAGMA page_count").fetchone()[0]
    result = store.prune("9999-01-01T00:00:00")  # everything delivered is "old"
    assert result["records"] == 5 and result["pages_reclaimed"] > 0
    assert store._db.execute("PRAGMA page_count").fetchone()[0] < pages_before
    # Every free page went back to the file system, not one per call.
    assert store._db.execute("PRAGMA freelist_count").fetchone()[0] == 0
    for r in store.rows():
        if r.state == lc.DELIVERED:
            assert r.payload == b"" and r.pdf is None and r.receipt and r.version == 1
        else:
            assert r.state == lc.QUARANTINED and r.payload  # never pruned
    assert verify_chain(store.audit_entries()).ok
    assert len(rows) == 6
