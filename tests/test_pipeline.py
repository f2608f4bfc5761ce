"""The whole hub over real HTTP: vendor simulator → store → render → 3 signatures → central store.

Signatures are checked by pyHanko's validator and by poppler's pdfsig; restarts use the same
SQLite file, as a real restart would.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess

import aiohttp
import pytest
from conftest import PASSWORD, ROLES, deliver_to, hub_config, pull_from

from hub import lifecycle as lc
from hub import store as st
from hub.contracts import PluginError
from hub.documents.verify import extract_record, load_certs, verify_pdf
from hub.engine.pipeline import Hub
from hub.web.app import create_app
from hub.web.server import serving


VENDOR = {"records": 6, "invalid": 3, "seed": 7}   # the school server of the ``systems`` fixture


def make_config(tmp_path, pki, vendor, central, *, password=PASSWORD, attempts=3):
    return hub_config(tmp_path / "data", pki[0], adapters=[pull_from(vendor)], destination=deliver_to(central),
                      attempts=attempts, password=password, workers={"processes": 2})


async def run_once(config):
    hub = Hub(config)
    await hub.start()
    try:
        await asyncio.wait_for(hub.wait_idle(), 120)
        return hub.store.rows()
    finally:
        await hub.stop()


async def test_valid_records_arrive_signed_and_invalid_ones_are_quarantined(tmp_path, pki, systems):
    vendor, central = systems
    rows = await run_once(make_config(tmp_path, pki, vendor, central))
    by_state: dict[str, list[st.Row]] = {}
    for row in rows:
        by_state.setdefault(row.state, []).append(row)
    assert sorted(by_state) == [lc.DELIVERED, lc.QUARANTINED]
    assert len(by_state[lc.DELIVERED]) == 6
    # Every quarantined record names the very field its defect is in.
    assert len(by_state[lc.QUARANTINED]) == 3
    for row in by_state[lc.QUARANTINED]:
        _kind, field = vendor.defects[row.source_id]
        assert any(e.startswith(field + ":") for e in row.errors), (field, row.errors)
    # The central store holds each delivered record once, at its version, with the signed PDF.
    assert central.accepted() == {r.record_id: 1 for r in by_state[lc.DELIVERED]}
    assert central.counters.created == 6
    roots = load_certs(pki[1])
    for row in by_state[lc.DELIVERED]:
        pdf = central.documents[(row.record_id, 1)]
        assert pdf == row.pdf
        report = await verify_pdf(pdf, roots)
        assert report.ok and [s.field for s in report.signatures] == ROLES
        # The attachment covered by the signatures is exactly the record that was delivered.
        attached = json.loads(extract_record(pdf))
        assert attached == central.records[(row.record_id, 1)]
        assert [h["state"] for h in (st.Store(config_path(tmp_path)).history(row.id))] == [
            "received", "normalized", "rendered", *[f"signed:{r}" for r in ROLES], "delivered"]


def config_path(tmp_path):
    return tmp_path / "data" / "hub.sqlite3"


async def test_steps_before_a_failing_one_are_kept(tmp_path, pki, systems):
    # No principal has a key here: each record fails at the principal's step, and what the
    # steps before it did is stored all the same — the rendered documents and the homeroom
    # teacher's signature, each step in the history.
    from hub.kit.synthetic import signing_identities

    keys = tmp_path / "keys"
    shutil.copytree(pki[0], keys)
    for identity in signing_identities():
        if identity.role == "principal":
            (keys / f"{identity.key}.p12").unlink()
    vendor, central = systems
    config = make_config(tmp_path, (keys, pki[1]), vendor, central)
    rows = [r for r in await run_once(config) if r.state != lc.QUARANTINED]
    assert rows and {r.state for r in rows} == {lc.FAILED}
    store = st.Store(config_path(tmp_path))
    roots = load_certs(pki[1])
    for row in rows:
        assert any(e.startswith("principal: ") and "no key for principal" in e for e in row.errors), row.errors
        assert [h["state"] for h in store.history(row.id)] == [
            "received", "normalized", "rendered", "signed:homeroom_teacher", "failed"]
        report = await verify_pdf(row.pdf, roots)
        assert report.ok and [s.field for s in report.signatures] == ["homeroom_teacher"]
    assert central.accepted() == {}


@pytest.mark.skipif(shutil.which("pdfsig") is None, reason="poppler-utils (pdfsig) is not installed")
async def test_poppler_accepts_every_signature(tmp_path, pki, systems):
    vendor, central = systems
    rows = await run_once(make_config(tmp_path, pki, vendor, central))
    row = next(r for r in rows if r.state == lc.DELIVERED)
    path = tmp_path / "signed.pdf"
    path.write_bytes(row.pdf)
    out = subprocess.run(["pdfsig", str(path)], capture_output=True, text=True).stdout
    assert out.count("Signature Validation: Signature is Valid.") == 3, out
    assert out.count("ETSI.CAdES.detached") == 3
    assert "Total document signed" in out


async def test_restart_resumes_every_record_and_delivers_each_once(tmp_path, pki, systems):
    vendor, central = systems
    central.faults.outage = True  # everything piles up just before delivery
    config = make_config(tmp_path, pki, vendor, central, attempts=1000)
    hub = Hub(config)
    await hub.start()
    try:
        for _ in range(600):
            counts = hub.store.counts()
            if counts.get("signed:school_seal", 0) == 6:
                break
            await asyncio.sleep(0.1)
        assert counts == {"signed:school_seal": 6, lc.QUARANTINED: 3}
    finally:
        await hub.stop(drain_timeout=0.5)
    central.faults.outage = False

    # A second hub on the same store: nothing is re-read (the cursor was saved), everything resumes.
    rows = await run_once(make_config(tmp_path, pki, vendor, central))
    assert sum(r.state == lc.DELIVERED for r in rows) == 6
    assert central.counters.created == 6 and len(central.accepted()) == 6
    assert len(rows) == 9


async def test_kill_mid_pipeline_then_restart(tmp_path, pki, systems):
    vendor, central = systems
    config = make_config(tmp_path, pki, vendor, central)
    hub = Hub(config)
    await hub.start()
    # Stop as soon as some records are half-way; in-flight work is abandoned, not committed.
    for _ in range(600):
        counts = hub.store.counts()
        if sum(n for s, n in counts.items() if s.startswith("signed:") or s == lc.RENDERED) >= 2:
            break
        await asyncio.sleep(0.02)
    await hub.stop(drain_timeout=0)
    assert central.counters.created < 6
    rows = await run_once(make_config(tmp_path, pki, vendor, central))
    assert sum(r.state == lc.DELIVERED for r in rows) == 6
    assert central.counters.created == 6  # each accepted exactly once


async def test_changed_record_goes_as_update_with_next_version(tmp_path, pki, systems):
    vendor, central = systems
    await run_once(make_config(tmp_path, pki, vendor, central))
    vendor.update(0)
    rows = await run_once(make_config(tmp_path, pki, vendor, central))
    changed = [r for r in rows if r.version == 2]
    assert len(changed) == 1 and changed[0].event == "UPDATE" and changed[0].state == lc.DELIVERED
    assert central.accepted()[changed[0].record_id] == 2
    assert central.counters.created == 7  # the five unchanged records were not sent again


async def test_wrong_key_password_is_a_start_up_error(tmp_path, pki, systems):
    vendor, central = systems
    hub = Hub(make_config(tmp_path, pki, vendor, central, password="not-the-password-7731"))
    with pytest.raises(PluginError) as info:
        await hub.start()
    assert "keys" in str(info.value) and "password" in str(info.value).lower()
    assert "not-the-password-7731" not in str(info.value)
    assert hub.store.counts() == {}


async def test_health_and_readiness_over_http(tmp_path, pki, systems):
    vendor, central = systems
    hub = Hub(make_config(tmp_path, pki, vendor, central))
    await hub.start(pull=False)
    try:
        async with serving(create_app(hub)) as base:
            async with aiohttp.ClientSession(base) as http:
                async with http.get("/healthz") as resp:
                    assert resp.status == 200
                async with http.get("/readyz") as resp:
                    body = await resp.json()
                    assert resp.status == 200 and body["ready"], body
                    assert set(body["checks"]) == {"store", "school-a", "central", "keys"}
                central.faults.outage = True
                async with http.get("/readyz") as resp:
                    body = await resp.json()
                    assert resp.status == 503 and not body["checks"]["central"]["ok"]
                    assert body["checks"]["school-a"]["ok"]
                    assert "demo-ttdlqg-token" not in await resp.text()
    finally:
        await hub.stop()


async def test_an_adapter_outage_is_logged_once_whoever_asks_for_health(tmp_path, pki, systems):
    """Readiness checks overwrite the health shown to operators, not the pull loop's own view:
    an outage is logged when pulls start failing and when they work again, once each, even when
    a health check noticed first (the status page or /readyz asking between two polls)."""
    import structlog

    vendor, central = systems
    config = make_config(tmp_path, pki, vendor, central)
    config.adapters[0].poll_interval = 0.5
    config.override_settings("school-a", {"max_attempts": 1})  # each poll fails at once

    async def polls(n: int) -> None:
        for _ in range(n):
            hub._pulled["school-a"].clear()
            await asyncio.wait_for(hub._pulled["school-a"].wait(), 30)

    with structlog.testing.capture_logs() as events:
        hub = Hub(config)   # inside: its logger is bound when it is made
        await hub.start()
        try:
            await polls(1)
            vendor.faults.outage = True
            assert not (await hub.readiness())["checks"]["school-a"]["ok"]   # the check sees it first
            await polls(3)
            vendor.faults.outage = False
            assert (await hub.readiness())["checks"]["school-a"]["ok"]       # and sees it end first
            await polls(2)
        finally:
            await hub.stop()
    names = [e["event"] for e in events if e["event"] in ("adapter.pull_failed", "adapter.recovered")]
    assert names == ["adapter.pull_failed", "adapter.recovered"], names
