"""Identity before signing, over real HTTP: vendor simulator → hub → population database
simulator (token + SOAP through zeep) → render → sign → central store.

Each case seeds the population so that known students agree or disagree with what the school
software sends, and checks where each record ends and why. Signing requests are counted at the
signer: a record blocked on identity never reaches it.
"""

from __future__ import annotations

import asyncio
import io
import json

import pytest
from conftest import PASSWORD, ROLES

from adapters.dancu.adapter import name_key
from adapters.dancu.simulator import DancuSimulator, other_style
from adapters.ttdlqg.simulator import TtdlqgSimulator
from adapters.vnpt.simulator import VnptSimulator
from hub import lifecycle as lc
from hub import store as st
from hub.config import ConfigError, parse_config
from hub.contracts import IdentityFinding as F
from hub.engine.identity import parse_reason
from hub.engine.pipeline import Hub
from hub.logs import configure
from signers.pkcs12.signer import Pkcs12Signer

RECORDS = 8
# Index of the vendor's valid record → what the population database says about its student.
PLAN = {1: F.NOT_FOUND, 2: F.NAME_DIFFERS, 3: F.BIRTH_DATE_DIFFERS, 5: F.GENDER_DIFFERS}
MISSING_ID = 6          # the school software sends this student without a personal id
BLOCKED = {*PLAN, MISSING_ID}


@pytest.fixture
async def world():
    vendor = VnptSimulator(records=RECORDS, seed=3)
    vendor.update(MISSING_ID, lambda c: c["student"].update(personal_id=None))
    central = TtdlqgSimulator()
    population = DancuSimulator()
    population.populate([vendor.central(i) for i in range(RECORDS)],
                        plan={vendor.central(i)["transcript_id"]: kind for i, kind in PLAN.items()})
    for sim in (vendor, central, population):
        await sim.start()
    yield vendor, central, population
    for sim in (vendor, central, population):
        await sim.stop()


OPERATOR_TOKEN = "operator-token-0123456789abcdef"
VIEWER_TOKEN = "viewer-token-0123456789abcdef"


def make_config(tmp_path, pki, vendor, central, population, **identity):
    settings = {**population.adapter_settings(), "async_batch_min": 0, "timeout": 5,
                **identity.pop("settings", {})}
    return parse_config({
        "data_dir": str(tmp_path / "data"),
        "admin": {"tokens": [{"name": "op", "token": OPERATOR_TOKEN, "role": "operator"},
                             {"name": "wall", "token": VIEWER_TOKEN, "role": "viewer"}]},
        "workers": {"processes": 1},
        "delivery": {"max_attempts": 3, "backoff_initial": 0.01, "backoff_max": 0.05},
        "adapters": [{"name": "school-a", "type": "vnpt", "poll_interval": 3600,
                      "settings": vendor.adapter_settings()}],
        "destination": {"name": "central", "type": "ttdlqg", "settings": central.adapter_settings()},
        "signers": [{"name": "keys", "type": "pkcs12", "settings": {"directory": str(pki[0]), "password": PASSWORD}}],
        "signing": {"steps": [{"role": r, "signer": "keys"} for r in ROLES]},
        "identity": {"name": "population", "type": "dancu", "settings": settings,
                     "retry_seconds": 0.05, "breaker_threshold": 2, "breaker_probe_seconds": 0.2, **identity},
    })


@pytest.fixture
def signed(monkeypatch):
    """Transcript ids of every PDF signing request the signer received (alone, or with the
    step's XML slots: ``LocalKeySigner.sign_documents``)."""
    seen: list[str] = []
    original, together = Pkcs12Signer.sign, Pkcs12Signer.sign_documents

    async def counting(self, requests):
        seen.extend(r.reason.rsplit(" ", 1)[-1] for r in requests)
        return await original(self, requests)

    async def counting_together(self, document, slots, requests, **kwargs):
        seen.extend(r.reason.rsplit(" ", 1)[-1] for r in requests)
        return await together(self, document, slots, requests, **kwargs)

    monkeypatch.setattr(Pkcs12Signer, "sign", counting)
    monkeypatch.setattr(Pkcs12Signer, "sign_documents", counting_together)
    return seen


async def run_once(config):
    hub = Hub(config)
    await hub.start()
    try:
        await asyncio.wait_for(hub.wait_idle(), 120)
        return {r.source_id: r for r in hub.store.rows() if r.state != lc.SUPERSEDED}
    finally:
        await hub.stop()


def tid(vendor, i):
    return vendor.central(i)["transcript_id"]


def fields(row):
    return [parse_reason(e)[0] for e in row.errors]


# --- the pipeline ---------------------------------------------------------------------------------

async def test_each_mismatch_and_a_missing_id_block_the_record_and_it_is_never_signed(
        tmp_path, pki, world, signed):
    vendor, central, population = world
    rows = await run_once(make_config(tmp_path, pki, vendor, central, population))
    by_index = {i: rows[vendor.source_id(i)] for i in range(RECORDS)}
    for i, row in by_index.items():
        assert row.state == (lc.BLOCKED_IDENTITY if i in BLOCKED else lc.DELIVERED), (i, row.state, row.errors)
    # One reason per field, naming it, in Vietnamese and English, without quoting a value.
    assert fields(by_index[1]) == ["student.personal_id"] and "không tìm thấy" in by_index[1].errors[0]
    assert fields(by_index[2]) == ["student.full_name"]
    assert fields(by_index[3]) == ["student.birth_date"]
    assert fields(by_index[5]) == ["student.gender"]
    assert fields(by_index[MISSING_ID]) == ["student.personal_id"]
    assert "thiếu số định danh" in by_index[MISSING_ID].errors[0]
    assert "the personal id is missing" in by_index[MISSING_ID].errors[0]
    for i in BLOCKED:
        row = by_index[i]
        _, vi, en = parse_reason(row.errors[0])
        assert vi and en
        assert vendor.central(i)["student"]["full_name"] not in " ".join(row.errors)
        assert row.pdf is None
        history = [h["state"] for h in st.Store(tmp_path / "data" / "hub.sqlite3").history(row.id)]
        assert history == [lc.RECEIVED, lc.NORMALIZED, lc.BLOCKED_IDENTITY]
    # The signer saw every step of every delivered record, and nothing of a blocked one.
    delivered = {tid(vendor, i) for i in range(RECORDS) if i not in BLOCKED}
    assert set(signed) == delivered and len(signed) == len(delivered) * len(ROLES)
    assert set(central.accepted()) == {by_index[i].record_id for i in range(RECORDS) if i not in BLOCKED}
    # Delivered records went through the check.
    assert [h["state"] for h in st.Store(tmp_path / "data" / "hub.sqlite3").history(by_index[0].id)][:4] == [
        lc.RECEIVED, lc.NORMALIZED, lc.IDENTITY_CLEARED, lc.RENDERED]
    # Only the id, the name and the birth date left the hub (besides the request's own header).
    assert population.sent_fields == {"MaYeuCau", "MaDichVu", "MaCanBo", "SoDinhDanh", "HoVaTen",
                                      "NgayThangNamSinh"}
    assert population.calls["XacMinhThongTinNhanThan"] == RECORDS - 1  # everyone with an id, once


async def test_signers_are_checked_when_configured(tmp_path, pki, world, signed):
    vendor, central, population = world
    principal = vendor.central(0)["signatories"]["principal_personal_id"]
    population.forget(principal)
    config = make_config(tmp_path, pki, vendor, central, population, check_signers=True)
    rows = await run_once(config)
    school = vendor.central(0)["school_code"]
    for i in range(RECORDS):
        row = rows[vendor.source_id(i)]
        if vendor.central(i)["school_code"] == school:
            assert row.state == lc.BLOCKED_IDENTITY
            assert "signatories.principal_personal_id" in fields(row)
        else:
            assert row.state == (lc.BLOCKED_IDENTITY if i in BLOCKED else lc.DELIVERED)
    assert population.calls["XacThucThongTinCongDan"] > 0  # signers have no birth date: exists-or-not
    assert not any(vendor.central(i)["transcript_id"] in signed for i in range(RECORDS)
                   if vendor.central(i)["school_code"] == school)


async def test_an_outage_leaves_records_waiting_then_they_flow(tmp_path, pki, world, signed):
    vendor, central, population = world
    logs = io.StringIO()
    configure("json", "info", stream=logs)
    population.faults.outage = True
    hub = Hub(make_config(tmp_path, pki, vendor, central, population))
    await hub.start()
    try:
        for _ in range(400):
            if hub.identity_stage.breaker.is_open and population.requests["/token"] >= 3:
                break
            await asyncio.sleep(0.05)
        assert hub.identity_stage.breaker.is_open
        counts = hub.store.counts()
        # Waiting, not failed or blocked (only the record without a personal id needs no answer
        # to be blocked): nothing was rendered or signed meanwhile.
        assert counts == {lc.NORMALIZED: RECORDS - 1, lc.BLOCKED_IDENTITY: 1}, counts
        assert signed == [] and central.accepted() == {}
        population.faults.outage = False
        await asyncio.wait_for(hub.wait_idle(), 120)
        final = {r.source_id: r.state for r in hub.store.rows()}
    finally:
        await hub.stop()
        configure("console", "error")
    assert [final[vendor.source_id(i)] for i in range(RECORDS)] == [
        lc.BLOCKED_IDENTITY if i in BLOCKED else lc.DELIVERED for i in range(RECORDS)]
    events = [json.loads(line)["event"] for line in logs.getvalue().splitlines() if line.startswith("{")]
    assert events.count("identity.outage_started") == 1
    assert events.count("identity.outage_ended") == 1
    # No personal value in any log line.
    for i in range(RECORDS):
        student = vendor.central(i)["student"]
        assert student["full_name"] not in logs.getvalue()
        if student["personal_id"]:
            assert student["personal_id"] not in logs.getvalue()


async def test_a_token_that_expires_mid_batch_is_renewed(tmp_path, pki, world):
    vendor, central, population = world
    population.faults.expire_tokens_after_n = 3   # the third SOAP request finds its token revoked
    rows = await run_once(make_config(tmp_path, pki, vendor, central, population,
                                      settings={"concurrency": 1}))
    assert [rows[vendor.source_id(i)].state for i in range(RECORDS)] == [
        lc.BLOCKED_IDENTITY if i in BLOCKED else lc.DELIVERED for i in range(RECORDS)]
    assert population.tokens_issued == 2
    assert any(status == 401 for _, path, status in population.log if path.endswith("/v1"))


async def test_the_asynchronous_batch_form_with_a_token_expiring_between_polls(tmp_path, pki, world):
    vendor, central, population = world
    population.faults.batch_polls = 3
    population.faults.expire_tokens_on_poll = 2   # the second status poll finds its token revoked
    rows = await run_once(make_config(tmp_path, pki, vendor, central, population,
                                      settings={"async_batch_min": 2}))
    assert [rows[vendor.source_id(i)].state for i in range(RECORDS)] == [
        lc.BLOCKED_IDENTITY if i in BLOCKED else lc.DELIVERED for i in range(RECORDS)]
    assert fields(rows[vendor.source_id(2)]) == ["student.full_name"]
    submitted = population.calls["SubmitRequest"]
    assert submitted >= 1 and population.calls["GetRequestResult"] == submitted
    # Each batch: three answers "in progress", then done (the refused poll was asked again).
    assert population.calls["GetRequestStatus"] == 4 * submitted
    # Everyone with an id was asked about exactly once, by batch (or alone, if a batch of one).
    assert population.batched + population.calls["XacMinhThongTinNhanThan"] == RECORDS - 1
    assert population.tokens_issued == 2


async def test_a_failed_batch_waits_and_is_asked_again(tmp_path, pki, world):
    vendor, central, population = world
    population.faults.batch_fails = True
    hub = Hub(make_config(tmp_path, pki, vendor, central, population, settings={"async_batch_min": 2}))
    await hub.start()
    try:
        for _ in range(400):
            if population.calls["SubmitRequest"] >= 2:
                break
            await asyncio.sleep(0.05)
        assert hub.store.counts() == {lc.NORMALIZED: RECORDS - 1, lc.BLOCKED_IDENTITY: 1}
        population.faults.batch_fails = False
        await asyncio.wait_for(hub.wait_idle(), 120)
        states = [r.state for r in hub.store.rows()]
    finally:
        await hub.stop()
    assert states.count(lc.DELIVERED) == RECORDS - len(BLOCKED)


async def test_a_changed_record_is_checked_again_and_an_unchanged_student_is_not(tmp_path, pki, world):
    vendor, central, population = world
    config = make_config(tmp_path, pki, vendor, central, population)
    await run_once(config)
    asked = population.calls["XacMinhThongTinNhanThan"]
    # The school fixes the name to the registry's; another record changes something else.
    registered = population.population[vendor.central(2)["student"]["personal_id"]].full_name
    vendor.update(2, lambda c: c["student"].update(full_name=registered))
    vendor.update(0)
    rows = await run_once(make_config(tmp_path, pki, vendor, central, population))
    assert rows[vendor.source_id(2)].state == lc.DELIVERED and rows[vendor.source_id(2)].version == 2
    assert rows[vendor.source_id(0)].state == lc.DELIVERED and rows[vendor.source_id(0)].version == 2
    # Only the changed student was asked about; record 0's student came from the cache.
    assert population.calls["XacMinhThongTinNhanThan"] == asked + 1


async def test_a_replay_asks_again(tmp_path, pki, world):
    vendor, central, population = world
    rows = await run_once(make_config(tmp_path, pki, vendor, central, population))
    blocked = rows[vendor.source_id(1)]
    assert blocked.state == lc.BLOCKED_IDENTITY
    # The family registers the child's number; the operator replays.
    population.populate([vendor.central(1)], plan={})
    store = st.Store(tmp_path / "data" / "hub.sqlite3")
    moved = store.replay(store.select(state=lc.BLOCKED_IDENTITY), stage="render", actor="test")
    store.close()
    assert len(moved) == len(BLOCKED)
    rows = await run_once(make_config(tmp_path, pki, vendor, central, population))
    assert rows[vendor.source_id(1)].state == lc.DELIVERED
    assert {rows[vendor.source_id(i)].state for i in BLOCKED - {1}} == {lc.BLOCKED_IDENTITY}


async def test_the_report_per_school_over_the_admin_api_and_the_cli(tmp_path, pki, world):
    import aiohttp
    from openpyxl import load_workbook

    from hub.web.app import create_app
    from hub.web.server import serving

    vendor, central, population = world
    config = make_config(tmp_path, pki, vendor, central, population)
    hub = Hub(config)
    await hub.start()
    school = vendor.central(1)["school_code"]
    expected = {vendor.central(i)["student"]["student_code"] for i in BLOCKED
                if vendor.central(i)["school_code"] == school}
    try:
        async with serving(create_app(hub)) as base:
            await asyncio.wait_for(hub.wait_idle(), 120)
            async with aiohttp.ClientSession(base) as http:
                op = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
                async with http.get("/api/identity/blocked", params={"school": school}, headers=op) as resp:
                    assert resp.status == 200
                    body = await resp.json()
                async with http.get("/api/identity/blocked", headers={"Authorization": f"Bearer {VIEWER_TOKEN}"}) as resp:
                    assert resp.status == 403  # names: operators only
                async with http.get("/api/identity/blocked", params={"schol": school}, headers=op) as resp:
                    assert resp.status == 400 and (await resp.json())["parameter"] == "schol"
                async with http.get("/readyz") as resp:
                    ready = await resp.json()
                    assert ready["checks"]["population"]["ok"], ready
                async with http.get("/", params={"lang": "en"}) as resp:
                    page = await resp.text()
                    assert "Population database" in page and population.client_secret not in page
                async with http.get("/api/identity/blocked.xlsx", params={"school": school}, headers=op) as resp:
                    assert resp.status == 200 and "spreadsheetml" in resp.headers["Content-Type"]
                    workbook = load_workbook(io.BytesIO(await resp.read()))
    finally:
        await hub.stop()
    assert body["count"] == len(expected) > 0
    assert {e["student_code"] for e in body["items"]} == expected
    for entry in body["items"]:
        assert entry["differs"] and all(d["field"] and d["vi"] and d["en"] for d in entry["differs"])
        assert entry["personal_id"] is None or entry["personal_id"].startswith("*********")
    rows = list(workbook.active.iter_rows(values_only=True))
    assert rows[0][:3] == ("Mã trường / School code", "Tên trường / School", "Lớp / Class")
    assert {r[3] for r in rows[1:]} == expected and all(r[0] == school for r in rows[1:])

    # The CLI reads the same report from the store.
    import yaml

    from hub.cli import main

    path = tmp_path / "hub.yaml"
    path.write_text(yaml.safe_dump(json.loads(json.dumps(
        {"data_dir": str(tmp_path / "data"), **{k: v for k, v in make_raw(config).items()}}))))
    out = tmp_path / "report.xlsx"
    assert main(["identity-report", "--config", str(path), "--xlsx", str(out)]) == 0
    assert len(list(load_workbook(out).active.iter_rows())) == 1 + sum(
        len(e["differs"]) for e in body["items"]) + (len(BLOCKED) - len(expected))


def make_raw(config):
    """The config as YAML would hold it (secrets shown), for the CLI."""
    raw = config.model_dump(mode="json", exclude={"data_dir"})
    raw["admin"] = {"tokens": []}
    return raw


# --- the parts ------------------------------------------------------------------------------------

def test_names_compare_whatever_the_tone_mark_style_case_or_spacing():
    assert name_key("Nguyễn Thị Thuỳ Linh") == name_key("nguyễn  thị thùy linh")
    assert name_key("Lê Hoà") == name_key("Lê Hòa")
    assert other_style("Trần Thuỳ Hoà") == "Trần Thùy Hòa"
    assert name_key("Lê Hoà") != name_key("Lê Hoa")
    assert name_key("Phạm Văn An") != name_key("Phạm Văn Ân")


def test_config_errors_name_the_identity_path(tmp_path):
    base = {
        "adapters": [{"name": "a", "type": "vnpt", "settings": {"base_url": "http://127.0.0.1:1",
                                                                 "client_id": "x", "client_secret": "y"}}],
        "destination": {"name": "d", "type": "ttdlqg", "settings": {"base_url": "http://127.0.0.1:2", "token": "t"}},
        "signers": [{"name": "k", "type": "pkcs12", "settings": {"directory": str(tmp_path), "password": "p"}}],
        "signing": {"steps": [{"role": "school_seal", "signer": "k"}]},
    }
    with pytest.raises(ConfigError) as info:
        parse_config({**base, "identity": {"name": "population", "type": "nope"}})
    assert info.value.errors[0].startswith("identity.type: unknown 'nope'")
    with pytest.raises(ConfigError) as info:
        parse_config({**base, "identity": {"name": "population", "type": "dancu", "settings": {}}})
    assert "identity.settings.token_url: Field required" in info.value.errors
    with pytest.raises(ConfigError) as info:
        parse_config({**base, "identity": {"name": "d", "type": "dancu", "settings": {}}})
    assert any("identity.name" in e for e in info.value.errors)


def test_the_demo_with_the_identity_simulator_lists_blocked_students(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    result = subprocess.run([sys.executable, "-m", "hub.cli", "demo", "--config", str(root / "config" / "identity.yaml"),
                             "--records", "12", "--invalid", "1", "--out", "out"],
                            check=False, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "blocked_identity 2" in out and "delivered    10" in out
    listed = [line for line in out.splitlines() if "CSDL quốc gia về dân cư" in line]
    assert len(listed) == 2 and all("*********" in line for line in listed)
    # Every sixth student disagrees: the 6th is not found, the 12th has another name.
    assert "student.personal_id: không tìm thấy" in listed[0] + listed[1]
    assert "student.full_name: họ và tên khác" in listed[0] + listed[1]
    assert "demo OK: 10 delivered" in out and "2 blocked on identity with reasons" in out
