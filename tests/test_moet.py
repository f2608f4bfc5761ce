"""The moet destination adapter against its simulator, over real HTTP on loopback: registration
and the simulator's edges (settings and the health check: tests/test_http_destination.py).
Class packages are tests/test_moet_packages.py's; one transcript at a time is the National Data
Centre's sync (tests/test_ttdlqg.py), not this store's."""

from __future__ import annotations

import importlib
from pathlib import Path

import aiohttp
import pytest
import test_http_destination as destination
from test_http_destination import adapter, sim  # noqa: F401  (fixtures, given this file's kind)

import adapters.moet
from adapters.moet.adapter import MoetAdapter
from adapters.moet.simulator import MoetSimulator
from hub import PACKAGE_MEDIA_TYPE
from hub.contracts import Delivery, PluginError

KIND = (MoetAdapter, MoetSimulator)
kind = destination.only(KIND)


def make_adapter(settings: dict, tmp_path: Path, **overrides) -> MoetAdapter:
    return destination.make_adapter(KIND, settings, tmp_path, **overrides)


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


async def test_no_transcript_goes_alone_and_nothing_before_open(sim, tmp_path):
    moet = make_adapter(sim.adapter_settings(), tmp_path)
    with pytest.raises(NotImplementedError):
        await moet.deliver(Delivery("R-0001", 1, "NEW", {"idbanghi": "R-0001", "phienban": 1}, b"%PDF-"))
    with pytest.raises(PluginError, match="open"):
        await moet.package_receipt("P-1")
    assert sim.counters.requests == 0


# --- the simulator's contract, spoken to directly ---------------------------------------------

async def test_simulator_contract_edges_over_raw_http(sim):
    url = sim.base_url
    good = {"Authorization": f"Bearer {sim.token}"}
    async with aiohttp.ClientSession() as http:
        await destination.guarded_and_not_held(http, f"{url}/api/v2/packages/P-1", good)
        # One transcript alone is not this store's (it is the National Data Centre's sync).
        async with http.post(f"{url}/api/v1/hocba", data=b"x", headers=good) as resp:
            assert resp.status in (404, 405)
        async with http.put(f"{url}/api/v2/packages/P-1", json={}, headers=good) as resp:
            assert resp.status == 400 and "expected application/" in (await resp.json())["error"]
        async with http.put(f"{url}/api/v2/packages/P-1", data=b"not a zip",
                            headers={**good, "Content-Type": PACKAGE_MEDIA_TYPE}) as resp:
            assert resp.status == 400 and "not a class package" in (await resp.json())["error"]
    assert sim.accepted() == {} and sim.packages == {}
    assert sim.counters.packages_refused == 2 and sim.counters.unauthorized == 1


def test_adapter_settings_need_a_running_simulator():
    with pytest.raises(RuntimeError, match="start"):
        MoetSimulator().adapter_settings()
