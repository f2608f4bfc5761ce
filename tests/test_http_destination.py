"""What every HTTP destination shares (``hub.kit.destination``): settings, the health check,
transport failures. Run against each built-in destination and its simulator, over real HTTP on
loopback; what each does with a delivery is its own test file's (test_ttdlqg, test_moet*)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from adapters.moet.adapter import MoetAdapter
from adapters.moet.simulator import MoetSimulator
from adapters.ttdlqg.adapter import TtdlqgAdapter
from adapters.ttdlqg.simulator import TtdlqgSimulator
from hub import HttpDestination
from hub.contracts import PluginContext

DESTINATIONS = {"ttdlqg": (TtdlqgAdapter, TtdlqgSimulator), "moet": (MoetAdapter, MoetSimulator)}


@pytest.fixture(params=sorted(DESTINATIONS))
def kind(request):
    return DESTINATIONS[request.param]


def only(kind):
    """The ``kind`` fixture of a test file about one destination (its adapter and simulator),
    for the ``sim`` and ``adapter`` fixtures it imports from here."""
    @pytest.fixture(name="kind")
    def fixture():
        return kind
    return fixture


async def guarded_and_not_held(http, url: str, good: dict[str, str]) -> None:
    """A status route of a simulator that holds nothing there: 401 without the token, 404 with it."""
    async with http.get(url) as resp:
        assert resp.status == 401
    async with http.get(url, headers=good) as resp:
        assert resp.status == 404


def make_adapter(kind, settings: dict, tmp_path: Path, **overrides) -> HttpDestination:
    cls = kind[0]
    return cls(cls.Settings.model_validate({**settings, **overrides}), PluginContext(cls.name, tmp_path))


@pytest.fixture
async def sim(kind):
    simulator = kind[1]()
    await simulator.start()
    yield simulator
    await simulator.stop()


@pytest.fixture
async def adapter(kind, sim, tmp_path):
    destination = make_adapter(kind, sim.adapter_settings(), tmp_path)
    await destination.open()
    yield destination
    await destination.close()


# --- settings ---------------------------------------------------------------------------------

@pytest.mark.parametrize("base_url", ["ftp://store.example", "not a url", "https://store.example/?x=1"])
def test_settings_reject_a_bad_base_url(kind, base_url):
    with pytest.raises(ValidationError) as info:
        kind[0].Settings.model_validate({"base_url": base_url, "token": "t"})
    assert [e["loc"] for e in info.value.errors()] == [("base_url",)]
    assert "base_url" in str(info.value)


def test_settings_need_a_token_and_hide_it(kind):
    settings_cls = kind[0].Settings
    with pytest.raises(ValidationError) as info:
        settings_cls.model_validate({"base_url": "https://store.example"})
    assert [e["loc"] for e in info.value.errors()] == [("token",)]
    with pytest.raises(ValidationError):
        settings_cls.model_validate({"base_url": "https://store.example", "token": "t", "timeout": 0})
    settings = settings_cls.model_validate({"base_url": "https://store.example/gw/", "token": "s3cret"})
    assert "s3cret" not in repr(settings) and "s3cret" not in str(settings.model_dump())


# --- health -----------------------------------------------------------------------------------

async def test_check_is_healthy_with_the_right_token(adapter):
    health = await adapter.check()
    assert health.ok, health.detail


async def test_check_works_before_open(kind, sim, tmp_path):
    assert (await make_adapter(kind, sim.adapter_settings(), tmp_path).check()).ok


async def test_check_reports_a_rejected_token_without_showing_it(kind, sim, tmp_path):
    secret = "not-the-token-77"
    health = await make_adapter(kind, sim.adapter_settings(), tmp_path, token=secret).check()
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


async def test_nothing_is_sent_before_open(kind, sim, tmp_path):
    from hub.contracts import PluginError

    with pytest.raises(PluginError, match="open"):
        await make_adapter(kind, sim.adapter_settings(), tmp_path).request("GET", "/api/v1/ping", "ping")
    assert sim.counters.requests == 0


async def test_the_simulator_asks_a_token_everywhere_but_healthz(kind, sim):
    import aiohttp

    url, good = sim.base_url, {"Authorization": f"Bearer {sim.token}"}
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{url}/healthz") as resp:
            assert resp.status == 200
        async with http.get(f"{url}/api/v1/ping") as resp:
            assert resp.status == 401 and resp.headers["WWW-Authenticate"] == f'Bearer realm="{kind[0].name}"'
        async with http.get(f"{url}/api/v1/ping", headers={"Authorization": "Bearer another-token"}) as resp:
            assert resp.status == 401
        async with http.get(f"{url}/api/v1/ping", headers=good) as resp:
            assert resp.status == 200
    assert sim.counters.unauthorized == 2
