"""Routes: a record goes to every destination whose filters take it, each with its own outbox,
breaker, dead letters and replay. Two National Data Centre simulators over real HTTP."""

from __future__ import annotations

import asyncio

import pytest
import yaml
from conftest import PASSWORD, ROLES, running

from adapters.ttdlqg.simulator import TtdlqgSimulator
from adapters.vnpt.simulator import VnptSimulator
from hub import lifecycle as lc
from hub import store as st
from hub.config import ConfigError, parse_config
from hub.engine.pipeline import Hub

# Two of the four schools the seeded vendor serves: the second route takes only these.
SCHOOLS_B = ["01001001", "01002003"]


def base(**extra):
    return {
        "adapters": [{"name": "school-a", "type": "vnpt", "settings": {"base_url": "http://127.0.0.1:1",
                                                                       "client_id": "c", "client_secret": "s"}}],
        "signers": [{"name": "keys", "type": "pkcs12", "settings": {"directory": "/tmp", "password": "p"}}],
        "signing": {"steps": [{"role": "principal", "signer": "keys"}]},
        **extra,
    }


def route(name, **extra):
    return {"name": name, "type": "ttdlqg", "settings": {"base_url": "http://127.0.0.1:2", "token": "t"}, **extra}


# --- config ---------------------------------------------------------------------------------

def test_the_old_destination_is_one_route_that_takes_everything():
    config = parse_config(base(destination=route("central")))
    assert config.route_names == ["central"]
    assert config.routes[0].matches("02", "X", "NEW") and config.destination_settings().token


def test_route_errors_name_their_path():
    with pytest.raises(ConfigError) as info:
        parse_config(base(routes=[route("a"), route("b", filters={"levels": ["05"], "events": ["DELETE"]})]))
    assert any(e.startswith("routes[1].filters.levels[0]:") for e in info.value.errors), info.value.errors
    assert any(e.startswith("routes[1].filters.events[0]:") for e in info.value.errors), info.value.errors
    with pytest.raises(ConfigError) as info:
        parse_config(base(routes=[route("a"), route("a")]))
    assert any("routes: names must be unique, repeated: a" in e for e in info.value.errors), info.value.errors
    with pytest.raises(ConfigError) as info:
        parse_config(base(routes=[route("a", type="vnpt")]))
    assert "routes[0].type: 'vnpt' cannot deliver" in info.value.errors
    with pytest.raises(ConfigError) as info:
        parse_config(base(routes=[route("a", settings={"base_url": "nope", "token": "t"})]))
    assert any(e.startswith("routes[0].settings.base_url:") for e in info.value.errors), info.value.errors
    with pytest.raises(ConfigError) as info:
        parse_config(base(routes=[route("a")], destination=route("b")))
    assert any("either `routes` or the older `destination`" in e for e in info.value.errors)
    with pytest.raises(ConfigError) as info:
        parse_config(base())
    assert any("routes: at least one route" in e for e in info.value.errors)


def test_filters_take_what_every_given_list_names():
    config = parse_config(base(routes=[route("all"), route("primary", filters={"levels": ["02"]}),
                                       route("b", filters={"schools": SCHOOLS_B, "events": ["NEW", "UPDATE"]})]))
    take = {r.name: r.matches for r in config.routes}
    assert take["all"]("04", "X", "CANCEL")
    assert take["primary"]("02", "X", "NEW") and not take["primary"]("03", "X", "NEW")
    assert take["b"]("03", SCHOOLS_B[0], "UPDATE") and not take["b"]("03", SCHOOLS_B[0], "CANCEL")
    assert not take["b"]("03", "01003002", "NEW")


# --- a hub with two destinations ----------------------------------------------------------------

@pytest.fixture
async def systems():
    async with running(VnptSimulator(records=6, invalid=0, seed=11), TtdlqgSimulator(),
                       TtdlqgSimulator(token="b-token")) as sims:
        yield sims


def two_routes(tmp_path, pki, vendor, a, b, **delivery):
    policy = {"max_attempts": 3, "backoff_initial": 0.01, "backoff_max": 0.05,
              "breaker_threshold": 2, "breaker_probe_seconds": 0.2, **delivery}
    return parse_config({
        "data_dir": str(tmp_path / "data"),
        "workers": {"processes": 1},
        "delivery": policy,
        "adapters": [{"name": "school-a", "type": "vnpt", "poll_interval": 3600,
                      "settings": vendor.adapter_settings()}],
        "routes": [{"name": "ndc-a", "type": "ttdlqg", "settings": a.adapter_settings()},
                   {"name": "ndc-b", "type": "ttdlqg", "filters": {"schools": SCHOOLS_B},
                    "settings": b.adapter_settings()}],
        "signers": [{"name": "keys", "type": "pkcs12",
                     "settings": {"directory": str(pki[0]), "password": PASSWORD}}],
        "signing": {"steps": [{"role": r, "signer": "keys"} for r in ROLES]},
    })


async def wait_for(condition, timeout=180.0):
    for _ in range(int(timeout / 0.1)):
        if await condition():
            return
        await asyncio.sleep(0.1)
    raise AssertionError("timed out")


async def test_filters_route_records_and_one_destination_down_does_not_hold_up_the_other(tmp_path, pki, systems):
    vendor, ndc_a, ndc_b = systems
    ndc_b.faults.outage = True
    hub = Hub(two_routes(tmp_path, pki, vendor, ndc_a, ndc_b))
    await hub.start()
    try:
        rows = []

        async def a_has_everything():
            nonlocal rows
            rows = await hub.db(hub.store.rows)
            return len(rows) == 6 and len(ndc_a.accepted()) == 6

        await wait_for(a_has_everything)
        for_b = {r.record_id for r in rows if r.school_code in SCHOOLS_B}
        assert for_b and len(for_b) < 6, "the seed must give both kinds of record"
        # ndc-b is down: its records wait (at the last signing state), the others are delivered.
        waiting = [r for r in await hub.db(hub.store.rows) if r.record_id in for_b]
        assert all(r.state == "signed:school_seal" for r in waiting)
        assert all(r.state == lc.DELIVERED for r in await hub.db(hub.store.rows) if r.record_id not in for_b)
        assert hub.outbox.routes["ndc-b"].breaker.is_open and not hub.outbox.routes["ndc-a"].breaker.is_open
        counts = await hub.db(hub.store.destination_counts)
        assert counts["ndc-a"]["delivered"] == 6 and counts["ndc-b"]["due"] == len(for_b)
        ndc_b.faults.outage = False  # back: ndc-b catches up, and only with its own records
        await asyncio.wait_for(hub.wait_idle(), 120)
        rows = await hub.db(hub.store.rows)
    finally:
        await hub.stop()
    assert {r.state for r in rows} == {lc.DELIVERED}
    assert set(ndc_b.accepted()) == for_b
    assert ndc_a.counters.created == 6 and ndc_b.counters.created == len(for_b)
    assert ndc_a.counters.conflicts == ndc_b.counters.conflicts == 0
    store = st.Store(tmp_path / "data" / "hub.sqlite3")
    for r in rows:
        expected = {"ndc-a", "ndc-b"} if r.record_id in for_b else {"ndc-a"}
        outcomes = store.deliveries_of(r.id)
        assert {d["destination"] for d in outcomes} == expected
        assert all(d["state"] == lc.DELIVERED and d["receipt"]["receipt_id"] for d in outcomes)
        # Each destination's copy is in the issuance registry under its own name.
        assert {i.recipient for i in store.issued(record_id=r.record_id)} == expected
    store.close()


async def test_a_destinations_dead_letters_are_its_own_and_replay_sends_them_there_only(tmp_path, pki, systems):
    vendor, ndc_a, ndc_b = systems
    config = two_routes(tmp_path, pki, vendor, ndc_a, ndc_b)
    ndc_b.token = "rotated"  # ndc-b refuses the hub's token: a permanent refusal, dead letters
    hub = Hub(config)
    await hub.start()
    try:
        await asyncio.wait_for(hub.wait_idle(), 180)
        rows = await hub.db(hub.store.rows)
        for_b = [r for r in rows if r.school_code in SCHOOLS_B]
        assert {r.state for r in for_b} == {lc.DEAD_LETTER}
        assert all(r.errors and r.errors[0].startswith("ndc-b: refused by ndc-b") for r in for_b)
        assert {r.state for r in rows if r not in for_b} == {lc.DELIVERED}
        assert len(ndc_a.accepted()) == 6 and not ndc_b.accepted()
        counts = await hub.db(hub.store.destination_counts)
        assert counts["ndc-b"] == {"dead_letter": len(for_b)}
        with pytest.raises(ValueError, match="no route named 'nowhere'"):
            await hub.replay([r.id for r in for_b], stage="deliver", actor="ops", destination="nowhere")
        sent_to_a = ndc_a.counters.submissions
        ndc_b.token = "b-token"  # fixed on its side: the operator replays ndc-b's dead letters
        moved = await hub.replay([r.id for r in rows], stage="deliver", actor="ops", destination="ndc-b")
        assert sorted(pk for pk, _ in moved) == sorted(r.id for r in for_b)
        await asyncio.wait_for(hub.wait_idle(), 120)
        rows = await hub.db(hub.store.rows)
    finally:
        await hub.stop()
    assert {r.state for r in rows} == {lc.DELIVERED}
    assert set(ndc_b.accepted()) == {r.record_id for r in for_b}
    assert ndc_a.counters.submissions == sent_to_a  # ndc-a already held them: nothing sent twice


def test_example_config_routes_to_the_national_data_centre():
    from pathlib import Path

    data = yaml.safe_load((Path(__file__).resolve().parent.parent / "config" / "example.yaml").read_text())
    config = parse_config(data)
    assert [r.type for r in config.routes] == ["ttdlqg", "moet", "portal_excel"]
    assert config.department is not None and config.department.code == "01"  # who signs the packages


async def test_a_refusal_met_by_the_probe_ends_the_outage_instead_of_holding_the_route(tmp_path, pki, systems):
    """The destination comes back refusing (its token was rotated): the probe's 401 is an
    answer, so the breaker closes and every waiting record is dead-lettered with the reason,
    rather than the route waiting for ever on a probe slot nobody frees."""
    vendor, ndc_a, ndc_b = systems
    ndc_b.faults.outage = True
    hub = Hub(two_routes(tmp_path, pki, vendor, ndc_a, ndc_b))
    await hub.start()
    try:
        route = hub.outbox.routes["ndc-b"]
        await wait_for(lambda: asyncio.sleep(0, route.breaker.is_open and len(ndc_a.accepted()) == 6))
        ndc_b.token = "rotated-token"
        ndc_b.faults.outage = False
        await asyncio.wait_for(hub.wait_idle(), 60)
        assert not route.breaker.is_open
        dead = await hub.db(hub.store.rows, state=lc.DEAD_LETTER)
        assert dead and all(r.school_code in SCHOOLS_B for r in dead)
        assert all("token rejected" in " ".join(r.errors) for r in dead), [r.errors for r in dead]
    finally:
        await hub.stop()
