"""The moet destination adapter against its simulator, over real HTTP on loopback: registration,
settings, the health check and the simulator's edges. Class packages are tests/test_moet_packages.py's;
one transcript at a time is the National Data Centre's sync (tests/test_ttdlqg.py), not this store's."""

from __future__ import annotations

import importlib
from pathlib import Path

import aiohttp
import pytest
from pydantic import ValidationError

import adapters.moet
from adapters.moet.adapter import MoetAdapter, MoetSettings
from adapters.moet.simulator import MoetSimulator
from hub import PACKAGE_MEDIA_TYPE
from hub.contracts import Delivery, PluginContext, PluginError


def make_adapter(settings: dict, tmp_path: Path, **overrides) -> MoetAdapter:
    return MoetAdapter(MoetSettings.model_validate({**settings, **overrides}), PluginContext("moet", tmp_path))


@pytest.fixture
async def sim():
    simulator = MoetSimulator()
    await simulator.start()
    yield simulator
    await simulator.stop()


@pytest.fixture
async def adapter(sim, tmp_path):
    moet = make_adapter(sim.adapter_settings(), tmp_path)
    await moet.open()
    yield moet
    await moet.close()


# --- registration and settings ----------------------------------------------------------------

def test_registers_a_destination_only():
    registered = []
    adapters.moet.hocba_hub_adapter_types(register=registered.append)
    assert registered == [MoetAdapter]
    assert MoetAdapter.name == "moet"
    # Class packages only: one transcript at a time is the National Data Centre's sync (ttdlqg).
    assert MoetAdapter.can("deliver_package") and not MoetAdapter.can("deliver")
    assert all(m in vars(MoetAdapter) for m in ("package_receipt", "recall", "cancel"))
    assert not MoetAdapter.can("fetch")
    assert not MoetAdapter.can("normalize")
    module, _, cls = MoetAdapter.simulator.partition(":")
    assert getattr(importlib.import_module(module), cls) is MoetSimulator


@pytest.mark.parametrize("base_url", ["ftp://moet.example", "not a url", "https://moet.example/?x=1"])
def test_settings_reject_a_bad_base_url(base_url):
    with pytest.raises(ValidationError) as info:
        MoetSettings.model_validate({"base_url": base_url, "token": "t"})
    assert [e["loc"] for e in info.value.errors()] == [("base_url",)]
    assert "base_url" in str(info.value)


def test_settings_need_a_token_and_hide_it():
    with pytest.raises(ValidationError) as info:
        MoetSettings.model_validate({"base_url": "https://moet.example"})
    assert [e["loc"] for e in info.value.errors()] == [("token",)]
    with pytest.raises(ValidationError):
        MoetSettings.model_validate({"base_url": "https://moet.example", "token": "t", "timeout": 0})
    settings = MoetSettings.model_validate({"base_url": "https://moet.example/gw/", "token": "s3cret"})
    assert "s3cret" not in repr(settings) and "s3cret" not in str(settings.model_dump())


async def test_no_transcript_goes_alone_and_nothing_before_open(sim, tmp_path):
    moet = make_adapter(sim.adapter_settings(), tmp_path)
    with pytest.raises(NotImplementedError):
        await moet.deliver(Delivery("R-0001", 1, "NEW", {"idbanghi": "R-0001", "phienban": 1}, b"%PDF-"))
    with pytest.raises(PluginError, match="open"):
        await moet.package_receipt("P-1")
    assert sim.counters.requests == 0


# --- health -----------------------------------------------------------------------------------

async def test_check_is_healthy_with_the_right_token(adapter):
    health = await adapter.check()
    assert health.ok, health.detail


async def test_check_works_before_open(sim, tmp_path):
    assert (await make_adapter(sim.adapter_settings(), tmp_path).check()).ok


async def test_check_reports_a_rejected_token_without_showing_it(sim, tmp_path):
    secret = "not-the-token-77"
    health = await make_adapter(sim.adapter_settings(), tmp_path, token=secret).check()
    assert not health.ok and "token rejected" in health.detail
    assert secret not in health.detail and sim.token not in health.detail


async def test_check_reports_an_outage_and_an_unreachable_store(adapter, sim):
    sim.faults.outage = True
    health = await adapter.check()
    assert not health.ok and "503" in health.detail
    sim.faults.outage = False
    assert (await adapter.check()).ok
    await sim.stop()
    health = await adapter.check()
    assert not health.ok and "cannot reach" in health.detail


# --- the simulator's contract, spoken to directly ---------------------------------------------

async def test_simulator_contract_edges_over_raw_http(sim):
    url = sim.base_url
    good = {"Authorization": f"Bearer {sim.token}"}
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{url}/healthz") as resp:
            assert resp.status == 200
        async with http.get(f"{url}/api/v1/ping") as resp:
            assert resp.status == 401 and resp.headers["WWW-Authenticate"].startswith("Bearer")
        async with http.get(f"{url}/api/v1/ping", headers=good) as resp:
            assert resp.status == 200
        async with http.get(f"{url}/api/v2/packages/P-1") as resp:
            assert resp.status == 401
        async with http.get(f"{url}/api/v2/packages/P-1", headers=good) as resp:
            assert resp.status == 404
        # One transcript alone is not this store's (it is the National Data Centre's sync).
        async with http.post(f"{url}/api/v1/hocba", data=b"x", headers=good) as resp:
            assert resp.status in (404, 405)
        async with http.put(f"{url}/api/v2/packages/P-1", json={}, headers=good) as resp:
            assert resp.status == 400 and "expected application/" in (await resp.json())["error"]
        async with http.put(f"{url}/api/v2/packages/P-1", data=b"not a zip",
                            headers={**good, "Content-Type": PACKAGE_MEDIA_TYPE}) as resp:
            assert resp.status == 400 and "not a class package" in (await resp.json())["error"]
    assert sim.accepted() == {} and sim.packages == {}
    assert sim.counters.packages_refused == 2 and sim.counters.unauthorized == 2


def test_adapter_settings_need_a_running_simulator():
    with pytest.raises(RuntimeError, match="start"):
        MoetSimulator().adapter_settings()
