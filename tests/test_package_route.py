"""The Department's gateway end to end: class packages to the Ministry's store, the same records
to the National Data Centre, a recall and a cancel with their reasons, a correction as the next
version. Real HTTP to the simulators, real signatures, xmlsec1 on the Department's signature."""

from __future__ import annotations

import asyncio
import io
import os
import zipfile
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import yaml
from conftest import PASSWORD, ROLES, running

from adapters.moet.simulator import MoetSimulator
from adapters.ttdlqg.simulator import TtdlqgSimulator
from adapters.vnpt.simulator import VnptSimulator
from hub import lifecycle as lc
from hub.cli import main
from hub.config import parse_config
from hub.documents.package import ClassPackage
from hub.engine.pipeline import Hub
from hub.kit.synthetic import department_identity
from hub.documents.verify import trust_roots_der
from tests.test_moet_packages import needs_xmlsec, xmlsec

DEPT = department_identity("01")


@pytest.fixture
async def systems(pki):
    ministry = MoetSimulator(trust_roots=trust_roots_der((str(pki[1]),)))
    async with running(VnptSimulator(records=8, invalid=0, seed=5), ministry, TtdlqgSimulator()) as sims:
        yield sims


def gateway(tmp_path, pki, vendor, ministry, ndc):
    return {
        "data_dir": str(tmp_path / "data"),
        "workers": {"processes": 1},
        "delivery": {"max_attempts": 3, "backoff_initial": 0.01, "backoff_max": 0.05,
                     "breaker_threshold": 2, "breaker_probe_seconds": 0.2},
        "documents": ["xml", "pdf"],
        "department": {"code": DEPT.school_code, "name": DEPT.name, "signer": "keys"},
        "adapters": [{"name": "school-a", "type": "vnpt", "poll_interval": 3600,
                      "settings": vendor.adapter_settings()}],
        "routes": [{"name": "ministry", "type": "moet", "settings": ministry.adapter_settings()},
                   {"name": "ndc", "type": "ttdlqg", "settings": ndc.adapter_settings()}],
        "signers": [{"name": "keys", "type": "pkcs12",
                     "settings": {"directory": str(pki[0]), "password": PASSWORD}}],
        "signing": {"steps": [{"role": r, "signer": "keys"} for r in ROLES]},
    }


async def run_until_idle(data, before_idle=None):
    hub = Hub(parse_config(data))
    await hub.start()
    try:
        if before_idle:
            await before_idle(hub)
        await asyncio.wait_for(hub.wait_idle(), 180)
        return hub.store.rows(), hub.store.packages()
    finally:
        await hub.stop()


def classes_of(rows):
    out: dict[tuple[str, str, str], set[str]] = {}
    for r in rows:
        out.setdefault((r.school_code, r.school_year, r.normalized["class_name"]), set()).add(r.record_id)
    return out


@needs_xmlsec
async def test_classes_go_as_packages_the_department_signs_and_the_same_records_to_the_ndc(tmp_path, pki,
                                                                                          systems):
    vendor, ministry, ndc = systems
    rows, packages = await run_until_idle(gateway(tmp_path, pki, vendor, ministry, ndc))
    assert {r.state for r in rows} == {lc.DELIVERED}
    classes = classes_of(rows)
    assert len(classes) > 1, "the seed must give several classes"
    # One package per class, each listing exactly that class's transcripts, held by the store.
    assert len(packages) == len(classes) == len(ministry.packages)
    for package in packages:
        assert set(r for r, _ in package.members) == classes[(package.school_code, package.school_year,
                                                              package.class_name)]
        assert package.state == "submitted" and package.receipt["receipt_id"].startswith("MOET-PKG-")
        assert ministry.package_state(package.package_id)["status"] == "accepted"
    assert ministry.accepted() == {r.record_id: 1 for r in rows}
    # Each transcript's receipt names its package; the NDC got the same records one by one.
    for row in rows:
        outcome = {d["destination"]: d for d in rows_deliveries(tmp_path, row.id)}
        assert outcome["ministry"]["state"] == "delivered" and outcome["ndc"]["state"] == "delivered"
        assert outcome["ministry"]["receipt"]["package_id"] in {p.package_id for p in packages}
    assert set(ndc.accepted()) == {r.record_id for r in rows}
    # xmlsec1, knowing only the test root, verifies the Department's signature on what the store received.
    body = ministry.package_files[packages[0].package_id]
    package = ClassPackage.from_zip(body)
    manifest = tmp_path / "manifest.xml"
    manifest.write_bytes(package.manifest)
    done = xmlsec(manifest, pki[1])
    assert done.returncode == 0 and "SignedInfo References (ok/all): 3/3" in done.stderr, done.stderr
    with zipfile.ZipFile(io.BytesIO(body)) as archive:
        names = archive.namelist()
    assert names[0] == "manifest.xml" and len(names) == 1 + 2 * len(package.entries)


def stored(tmp_path, method, *args):
    """``Store.<method>(*args)`` on the hub's store after it stopped."""
    from hub import store as st

    store = st.Store(tmp_path / "data" / "hub.sqlite3")
    try:
        return getattr(store, method)(*args)
    finally:
        store.close()


def rows_deliveries(tmp_path, pk):
    return stored(tmp_path, "deliveries_of", pk)


async def test_recall_by_cli_then_a_correction_goes_as_the_next_version_in_a_new_package(tmp_path, pki, systems,
                                                                                         capsys):
    vendor, ministry, ndc = systems
    data = gateway(tmp_path, pki, vendor, ministry, ndc)
    rows, packages = await run_until_idle(data)
    package = packages[0]
    config_file = tmp_path / "hub.yaml"
    config_file.write_text(yaml.safe_dump(data))
    # The reason is mandatory; an unknown package is named.
    assert main(["recall", "--config", str(config_file), "--package-id", package.package_id, "--reason", ""]) == 2
    assert "--reason" in capsys.readouterr().err
    assert main(["recall", "--config", str(config_file), "--package-id", "GT-nope", "--reason",
                 "sai điểm môn Toán"]) == 1
    assert "GT-nope" in capsys.readouterr().err
    assert main(["recall", "--config", str(config_file), "--package-id", package.package_id, "--reason",
                 "sai điểm môn Toán của lớp"]) == 0
    assert package.package_id in capsys.readouterr().out
    # Asking twice is refused with the package's state.
    assert main(["recall", "--config", str(config_file), "--package-id", package.package_id, "--reason",
                 "sai điểm môn Toán của lớp"]) == 1
    assert "already recall requested" in capsys.readouterr().err

    # The school corrects one transcript of the recalled class in its software.
    member_id, _ = package.members[0]
    rows_by_id = {r.record_id: r for r in rows}
    source_id = rows_by_id[member_id].source_id
    index = next(i for i in range(8) if vendor.source_id(i) == source_id)
    vendor.update(index)

    rows, packages = await run_until_idle(data)
    recalled = next(p for p in packages if p.package_id == package.package_id)
    assert recalled.state == "recalled" and recalled.reason == "sai điểm môn Toán của lớp"
    assert recalled.requested_by.startswith("cli:")
    assert ministry.package_state(package.package_id)["status"] == "recalled"
    first = next(r for r in rows if r.record_id == member_id and r.version == 1)
    assert {d["destination"]: d["state"] for d in rows_deliveries(tmp_path, first.id)}["ministry"] == "recalled"
    assert any("sai điểm môn Toán của lớp" in (h["detail"] or "") for h in history(tmp_path, first.id))
    # The correction went as version 2 in a new package; the store holds it.
    second = next(r for r in rows if r.record_id == member_id and r.version == 2)
    assert second.state == lc.DELIVERED
    newer = [p for p in packages if (member_id, 2) in p.members]
    assert len(newer) == 1 and newer[0].package_id != package.package_id and newer[0].state == "submitted"
    assert ministry.accepted()[member_id] == 2 and ndc.accepted()[member_id] == 2


def history(tmp_path, pk):
    return stored(tmp_path, "history", pk)


async def test_a_cancel_with_its_reason_withdraws_the_version_the_store_holds(tmp_path, pki, systems):
    vendor, ministry, ndc = systems
    data = gateway(tmp_path, pki, vendor, ministry, ndc)
    rows, _ = await run_until_idle(data)
    target = rows[0]

    async def cancel(hub):
        await hub.cancel(target.record_id, "học sinh chuyển trường, hồ sơ lập nhầm", "operator:test")

    rows, packages = await run_until_idle(data, cancel)
    cancel_row = next(r for r in rows if r.record_id == target.record_id and r.event == "CANCEL")
    assert cancel_row.state == lc.DELIVERED
    held = ministry.transcripts[(target.record_id, 1)]
    assert held["status"] == "cancelled" and held["reason"] == "học sinh chuyển trường, hồ sơ lập nhầm"
    # No package carries a cancel; the NDC got the CANCEL version with the same reason.
    assert all(all(v == 1 for _, v in p.members) for p in packages)
    assert ndc.state(target.record_id)["cancelled"]


async def test_an_outage_opens_the_routes_breaker_a_refusal_dead_letters_the_class_and_a_replay_sends_it(
        tmp_path, pki, systems):
    vendor, ministry, ndc = systems
    ministry.faults.outage = True
    ministry.faults.reject_next_n = 1  # the first package after the outage is refused (422)

    async def outage_then_recovery(hub):
        route = hub.outbox.routes["ministry"]
        for _ in range(1800):
            if route.breaker.is_open and len(ndc.accepted()) == vendor.records:
                break
            await asyncio.sleep(0.1)
        assert route.breaker.is_open and len(ndc.accepted()) == vendor.records  # the NDC did not wait
        assert ministry.counters.packages_created == 0
        ministry.faults.outage = False

    rows, packages = await run_until_idle(gateway(tmp_path, pki, vendor, ministry, ndc), outage_then_recovery)
    dead = [r for r in rows if r.state == lc.DEAD_LETTER]
    assert dead and all("injected refusal" in " ".join(r.errors) for r in dead), [r.errors for r in dead]
    assert len({r.normalized["class_name"] + r.school_code for r in dead}) == 1  # one class, refused whole
    assert all(r.state == lc.DELIVERED for r in rows if r not in dead)

    async def replay(hub):
        moved = await hub.replay([r.id for r in dead], stage="deliver", actor="test", destination="ministry")
        assert {pk for pk, _ in moved} == {r.id for r in dead}

    rows, packages = await run_until_idle(gateway(tmp_path, pki, vendor, ministry, ndc), replay)
    assert {r.state for r in rows} == {lc.DELIVERED}
    assert ministry.accepted() == {r.record_id: 1 for r in rows} and len(ndc.accepted()) == vendor.records


async def test_a_package_route_needs_the_department(tmp_path, pki, systems):
    vendor, ministry, ndc = systems
    data = gateway(tmp_path, pki, vendor, ministry, ndc)
    del data["department"]
    hub = Hub(parse_config(data))
    with pytest.raises(Exception, match="ministry .moet. takes class packages.*department"):
        await hub.start()


@asynccontextmanager
async def serve_gateway(tmp_path, pki, systems):
    """A started hub with the admin API and console under uvicorn on 127.0.0.1 (port 0), once
    its first pull is worked through: (hub, base URL)."""
    from hub.web.server import serving_hub
    from tests.test_admin import TOKENS

    vendor, ministry, ndc = systems
    config = parse_config({**gateway(tmp_path, pki, vendor, ministry, ndc), "admin": {"tokens": TOKENS}})
    async with serving_hub(config, drain_timeout=1) as (hub, base):
        await asyncio.wait_for(hub.wait_idle(), 180)
        yield hub, base


async def test_recall_through_the_admin_api(tmp_path, pki, systems):
    import aiohttp

    from tests.test_admin import OP, VIEW

    _, ministry, _ = systems
    async with serve_gateway(tmp_path, pki, systems) as (hub, url), aiohttp.ClientSession(url) as http:
        async with http.get("/api/packages", headers=VIEW) as resp:
            listed = (await resp.json())["items"]
        assert resp.status == 200 and listed and all(p["state"] == "submitted" for p in listed)
        package_id = listed[0]["package_id"]
        url = f"/api/packages/{package_id}/recall"
        async with http.post(url, headers=VIEW, json={"reason": "sai điểm môn Văn"}) as resp:
            assert resp.status == 403  # viewers look, operators act
        async with http.post(url, headers=OP, json={"reason": "  "}) as resp:
            assert resp.status == 400 and (await resp.json())["parameter"] == "reason"
        async with http.post("/api/packages/GT-nope/recall", headers=OP, json={"reason": "sai điểm"}) as resp:
            assert resp.status == 404
        async with http.post(url, headers=OP, json={"reason": "sai điểm môn Văn"}) as resp:
            body = await resp.json()
        assert resp.status == 200 and body["items"][0]["state"] == "recall_requested"
        assert body["items"][0]["requested_by"] == "an.nguyen"
        await asyncio.wait_for(hub.wait_idle(), 60)  # the route's worker sends the recall
        async with http.get("/api/packages?destination=ministry", headers=VIEW) as resp:
            after = {p["package_id"]: p for p in (await resp.json())["items"]}
        assert after[package_id]["state"] == "recalled" and after[package_id]["reason"] == "sai điểm môn Văn"
        assert ministry.package_state(package_id)["status"] == "recalled"
        async with http.post(url, headers=OP, json={"reason": "sai điểm môn Văn"}) as resp:
            assert resp.status == 409
        async with http.get("/api/destinations", headers=VIEW) as resp:
            counts = {d["name"]: d["counts"] for d in (await resp.json())["items"]}
        assert counts["ministry"]["recalled"] == len(after[package_id]["transcripts"])
        audit = [e for e in hub.store.audit_entries() if e["subject"] == package_id]
        assert [e["kind"] for e in audit] == ["package", "recall_request", "recall"]
        assert audit[1]["actor"] == "an.nguyen"


async def console_page(chromium, url, token, **context_options):
    """A page of a new browser context, signed in to the console with ``token``."""
    context = await chromium.new_context(base_url=url, **context_options)
    page = await context.new_page()
    await page.goto("/console/login")
    await page.fill("#token", token)
    await page.click("#login-submit")
    await page.wait_for_url("**/console")
    return page


@pytest.mark.skipif(not os.path.exists("/usr/bin/chromium"), reason="Debian's chromium is not installed")
async def test_an_operator_recalls_a_package_from_the_console_and_a_viewer_cannot(tmp_path, pki, systems):
    from playwright.async_api import async_playwright

    from tests.test_admin import OPERATOR_TOKEN, VIEWER_TOKEN

    _, ministry, _ = systems
    async with serve_gateway(tmp_path, pki, systems) as (hub, url), async_playwright() as p:
        chromium = await p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        try:
            pages = {}
            for token in (VIEWER_TOKEN, OPERATOR_TOKEN):
                page = await console_page(chromium, url, token)
                await page.click("#nav-packages")
                await page.wait_for_url("**/console/packages")
                pages[token] = page
            viewer, operator = pages[VIEWER_TOKEN], pages[OPERATOR_TOKEN]
            rows = operator.locator("tr[data-package]")
            assert await rows.count() == len(hub.store.packages())
            assert await viewer.locator("form.recall").count() == 0  # viewers see, operators act
            row = rows.first
            package_id = await row.get_attribute("data-package")
            reason = "Sai điểm môn Toán cả lớp, trường nhập lại"
            await row.locator("input[name=reason]").fill(reason)
            await row.locator("button.recall-button").click()
            await operator.wait_for_url("**/console/packages*done=recall*")
            assert package_id in await operator.locator("#done").inner_text()
            await asyncio.wait_for(hub.wait_idle(), 60)
            await operator.reload()
            row = operator.locator(f'tr[data-package="{package_id}"]')
            assert await row.get_attribute("data-state") == "recalled"
            assert reason in await row.inner_text() and "đã thu hồi" in await row.inner_text()
            assert await row.locator("form.recall").count() == 0  # a recalled package is not recalled again
            assert ministry.package_state(package_id)["status"] == "recalled"
            # The overview says, per school and destination, what was delivered and what recalled.
            recalled = hub.store.packages(package_id=package_id)[0]
            await operator.goto("/console")
            cell = operator.locator(f'#at-destinations tr[data-key="{recalled.school_code}"] td[data-destination="ministry"]')
            assert f"đã thu hồi {len(recalled.members)}" in await cell.inner_text()
            ndc_cell = operator.locator(f'#at-destinations tr[data-key="{recalled.school_code}"] td[data-destination="ndc"]')
            assert "đã gửi" in await ndc_cell.inner_text() and "thu hồi" not in await ndc_cell.inner_text()
            entry = [e for e in hub.store.audit_entries() if e["kind"] == "recall_request"][-1]
            assert (entry["actor"], entry["subject"]) == ("an.nguyen", package_id)
            # On a phone the packages page is as wide as the screen (its table becomes cards).
            for name, size, mobile in (("console-packages-phone.png", {"width": 390, "height": 844}, True),
                                       ("console-packages-desktop.png", {"width": 1366, "height": 900}, False)):
                page = await console_page(chromium, url, OPERATOR_TOKEN, viewport=size, is_mobile=mobile,
                                          device_scale_factor=1)
                await page.goto("/console/packages")
                assert await page.evaluate("document.documentElement.scrollWidth") <= size["width"]
                # …and nothing inside it is cut off at its edge (a long package id wraps).
                assert await page.evaluate("document.querySelector('table.packages').scrollWidth"
                                           " <= document.querySelector('#packages .scroll').clientWidth")
                if os.environ.get("HOCBA_HUB_SAVE_SCREENSHOTS"):
                    await page.screenshot(path=str(Path(__file__).resolve().parent.parent / "docs" / name))
                await page.context.close()
        finally:
            await chromium.close()


async def test_kill_9_while_packages_are_sent_loses_and_duplicates_nothing(tmp_path, pki, systems):
    """The hub (a real process) is killed while a package is on its way — before the store
    answered, and after it committed but before the answer arrived — and restarted, while the
    school edits transcripts; every class ends up at the store exactly once per version."""
    import random
    import time

    from reliability import HubProcess, StoreProbe

    vendor, ministry, ndc = systems
    rng = random.Random(3)
    data = {**gateway(tmp_path, pki, vendor, ministry, ndc), "logging": {"format": "json", "level": "warning"}}
    data["adapters"][0]["poll_interval"] = 0.5
    data["routes"][0]["settings"]["timeout"] = 1.0
    config = tmp_path / "hub.yaml"
    config.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    hub = HubProcess(config, tmp_path / "hub.log", plugins="vnpt,ttdlqg,moet,pkcs12,xml")
    probe = StoreProbe(str(tmp_path / "data" / "hub.sqlite3"))
    kills = []
    try:
        hub.start()
        for cycle in range(5):
            if cycle:
                vendor.update(rng.randrange(vendor.records))  # a new version chases the old one
            # Half the cycles: the store commits, then answers too late for the hub (timeout 1 s).
            ministry.faults.slow_seconds = 1.5 if cycle % 2 else 0.0
            seen = ministry.counters.packages
            deadline = time.monotonic() + 60
            while ministry.counters.packages == seen and time.monotonic() < deadline:
                assert hub.running, hub.tail()
                await asyncio.sleep(0.005)
            await asyncio.sleep(rng.uniform(0.0, 0.3) if cycle % 2 == 0 else 1.2)
            hub.kill()
            kills.append("late answer" if cycle % 2 else "in flight")
            ministry.faults.slow_seconds = 0.0
            hub.start()

        def finished() -> bool:
            latest = probe.latest()
            return (len(latest) == vendor.records and all(s == lc.DELIVERED for _, s in latest.values())
                    and ministry.accepted() == {rid: v for rid, (v, _) in latest.items()})

        deadline = time.monotonic() + 180
        while not finished() and time.monotonic() < deadline:
            assert hub.running, hub.tail()
            await asyncio.sleep(0.2)
        assert finished(), (probe.latest(), ministry.accepted(), hub.tail())
        assert await hub.stop() == 0, hub.tail()
    finally:
        if hub.running:
            hub.kill()
        probe.close()
    # No package was refused (a re-sent one is answered as the duplicate it is), every
    # transcript version went once, and the hub's ledger agrees with what the store holds.
    assert ministry.counters.packages_refused == 0, ministry.attempts
    assert ministry.counters.packages_duplicate >= 1, kills  # a late answer was sent again
    from hub import store as st

    store = st.Store(tmp_path / "data" / "hub.sqlite3")
    try:
        ledger = {p.package_id: p for p in store.packages(limit=10_000)}
        assert set(ledger) <= set(ministry.packages)
        for row in store.rows(state=lc.DELIVERED):
            receipt = {d["destination"]: d["receipt"] for d in store.deliveries_of(row.id)}["ministry"]
            held = ministry.transcripts[(row.record_id, row.version)]
            assert receipt["receipt_id"] == held["receipt_id"] and receipt["package_id"] in ledger
        assert set(ndc.accepted()) == set(ministry.accepted())
    finally:
        store.close()


async def test_two_hubs_on_one_postgres_database_send_each_transcript_once(tmp_path, pki, systems):
    """Two hub processes' worth of workers on one PostgreSQL database, both with the package
    route: every class reaches the store, each transcript version exactly once, no package
    refused, and both hubs' ledgers are the one the database holds."""
    from pgtest import scratch_database

    vendor, ministry, ndc = systems
    with scratch_database() as url:
        hubs = []
        for i in range(2):
            data = {**gateway(tmp_path / f"hub-{i}", pki, vendor, ministry, ndc), "store": url}
            hubs.append(Hub(parse_config(data)))
        try:
            for hub in hubs:
                await hub.start()
            await asyncio.wait_for(asyncio.gather(*(hub.wait_idle() for hub in hubs)), 180)
            rows = hubs[0].store.rows()
            packages = hubs[1].store.packages()
        finally:
            for hub in hubs:
                await hub.stop()
    assert {r.state for r in rows} == {lc.DELIVERED} and len(rows) == vendor.records
    assert ministry.accepted() == {r.record_id: 1 for r in rows}
    assert ministry.counters.packages_refused == 0
    carried = sorted(m for p in packages for m in p.members)
    assert carried == sorted((r.record_id, r.version) for r in rows)  # each transcript in one package
    assert set(ministry.packages) == {p.package_id for p in packages}
