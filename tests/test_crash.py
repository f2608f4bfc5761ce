"""Crash suite: ``kill -9`` the hub at random points, restart it, repeat; nothing is lost or
sent twice, every signature is valid, the quarantine holds exactly the invalid records.

The hub runs as a real process (``python -m hub.cli run``) with two routes, to two National
Data Centre (ttdlqg) simulators; they and the vnpt simulator run in this test's process, so what
each destination received survives every kill, and each must end up with every record exactly
once per version. Each cycle
picks where to kill — while a page is being fetched, right after a page was committed, while
records are rendered, at each signing step, while a delivery is in flight, or at a random
moment — and waits (briefly) for the hub to get there. Between cycles the vendor changes some
transcripts, so new versions chase old ones through the pipeline. A last run goes to the end.

The short versions run in CI; ``-m long`` runs the long ones by hand, with more cycles and
records, and appends their figures to ``$TMPDIR/hocba-crash-figures.jsonl`` (or
``HOCBA_HUB_CRASH_FIGURES``); ``CRASH_CYCLES`` and ``CRASH_RECORDS`` size them (60 and 120):

    python -m pytest -m long tests/test_crash.py -s
"""

from __future__ import annotations

import asyncio
import os
import random
import tempfile
import time
from pathlib import Path

import pytest
from conftest import PASSWORD
from pgtest import scratch_database
from reliability import (
    Batch,
    HubProcess,
    StoreProbe,
    check_outcome,
    summary,
    write_config,
)

from adapters.ttdlqg.simulator import TtdlqgSimulator
from adapters.vnpt.simulator import RECORDS_PATH, VnptSimulator

PHASES = ["fetch", "commit", "render", "sign:homeroom_teacher", "sign:principal", "sign:school_seal",
          "deliver", "random"]
# Each phase waits for the state the work in question starts from (a record that has just
# entered it is being worked on), then kills within a short random delay.
_AFTER = {"render": "normalized", "sign:homeroom_teacher": "rendered",
          "sign:principal": "signed:homeroom_teacher", "sign:school_seal": "signed:principal"}


async def kill_at(phase: str, rng: random.Random, hubs: list[HubProcess], victim: HubProcess,
                  vendor: VnptSimulator, central: TtdlqgSimulator, probe: StoreProbe,
                  timeout: float = 20.0) -> str:
    """Wait until the hub is at ``phase`` (or ``timeout``), then SIGKILL ``victim``.
    Returns what happened: the phase, or ``<phase>/late`` when it never got there."""
    requests = vendor.requests[RECORDS_PATH]
    submissions = central.counters.submissions
    before = probe.transitions()
    deadline = time.monotonic() + timeout
    if phase == "random":
        await asyncio.sleep(rng.uniform(0.5, 6.0))
        victim.kill()
        return phase
    while time.monotonic() < deadline:
        if not victim.running:
            raise AssertionError(f"{victim.name} died by itself:\n{victim.tail()}")
        if phase == "fetch":
            hit = vendor.requests[RECORDS_PATH] > requests
        elif phase == "deliver":
            hit = central.counters.submissions > submissions
        else:
            now = probe.transitions()
            state = "received" if phase == "commit" else _AFTER[phase]
            hit = now.get(state, 0) > before.get(state, 0)
        if hit:
            if phase not in ("fetch", "commit", "deliver"):
                await asyncio.sleep(rng.uniform(0.0, 0.25))
            victim.kill()
            return phase
        await asyncio.sleep(0.005)
    victim.kill()
    return phase + "/late"


async def run_crash_cycles(tmp_path: Path, pki, *, store: str, workers: int, cycles: int, records: int,
                           invalid: int, seed: int, figures: Path | None = None) -> None:
    rng = random.Random(seed)
    vendor = VnptSimulator(records=records, invalid=invalid, seed=seed)
    vendor.page_size = 4  # several pages per pull, so a kill can land between two of them
    central, second = TtdlqgSimulator(), TtdlqgSimulator(token="second-token")
    await vendor.start()
    await central.start()
    await second.start()
    centrals = [central, second]
    probe = StoreProbe(store if store else str(tmp_path / "data" / "hub.sqlite3"))
    config = write_config(tmp_path, store=store, pki=pki, password=PASSWORD, vendor=vendor, central=centrals)
    hubs = [HubProcess(config, tmp_path / f"worker-{i}.log", name=f"worker-{i}") for i in range(workers)]
    batch = Batch(vendor)
    kills: list[str] = []
    started = time.monotonic()
    try:
        for hub in hubs:
            hub.start()
        for cycle in range(cycles):
            if rng.random() < 0.4:  # the school edits a transcript: a new version chases the old
                vendor.update(rng.randrange(records))
            phase = rng.choice(PHASES)
            victim = rng.choice(hubs)
            slow = phase == "fetch" and rng.random() < 0.5
            if slow:  # hold a page request open, so the kill lands inside the fetch
                vendor.faults.slow_seconds = 0.3
            kills.append(await kill_at(phase, rng, hubs, victim, vendor, central, probe))
            vendor.faults.slow_seconds = 0.0
            victim.start()
        deadline = time.monotonic() + 60 + 2 * records
        while not batch.arrived(centrals, probe) and time.monotonic() < deadline:
            for hub in hubs:
                assert hub.running, f"{hub.name} died by itself:\n{hub.tail()}"
            await asyncio.sleep(0.2)
        for hub in hubs:
            # Started (serving) before it is asked to stop: SIGTERM drains a running hub. Each
            # worker's /readyz reflects the one shared store: every worker sees all of them.
            body = await hub.ready()
            assert body["checks"]["store"]["ok"], body
            if workers > 1:
                assert f"{workers} worker(s) connected" in body["checks"]["store"]["detail"], body
        for hub in hubs:
            assert await hub.stop() == 0, hub.tail()
        outcome = await check_outcome(batch, centrals, probe.location, pki[1])
        line = outcome.line(store="postgresql" if store else "sqlite", workers=workers, cycles=cycles,
                            seconds=round(time.monotonic() - started))
        print(f"\ncrash suite: {line}\nkills: {', '.join(kills)}")
        if figures is not None:
            summary(figures, **dict(item.split("=", 1) for item in line.split()), kills=kills)
        assert outcome.problems == [], "\n".join(outcome.problems)
        assert outcome.duplicates == 0 and outcome.lost == 0
        assert central.counters.created + second.counters.created == outcome.versions_delivered
    finally:
        for hub in hubs:
            if hub.running:
                hub.kill()
        probe.close()
        await vendor.stop()
        await central.stop()
        await second.stop()


async def test_kill_9_at_random_points_then_restart_sqlite(tmp_path, pki):
    await run_crash_cycles(tmp_path, pki, store="", workers=1, cycles=6, records=10, invalid=2, seed=61)


async def test_two_workers_on_postgres_killing_one_at_a_time(tmp_path, pki):
    with scratch_database("hocba_crash") as url:
        await run_crash_cycles(tmp_path, pki, store=url, workers=2, cycles=6, records=10, invalid=2, seed=62)


LONG_FIGURES = Path(os.environ.get("HOCBA_HUB_CRASH_FIGURES",
                                   Path(tempfile.gettempdir()) / "hocba-crash-figures.jsonl"))


@pytest.mark.long
async def test_long_kill_9_sqlite(tmp_path, pki):
    await run_crash_cycles(tmp_path, pki, store="", workers=1, cycles=int(os.environ.get("CRASH_CYCLES", 60)),
                           records=int(os.environ.get("CRASH_RECORDS", 120)), invalid=12, seed=610,
                           figures=LONG_FIGURES)


@pytest.mark.long
async def test_long_two_workers_on_postgres(tmp_path, pki):
    with scratch_database("hocba_crash") as url:
        await run_crash_cycles(tmp_path, pki, store=url, workers=2, cycles=int(os.environ.get("CRASH_CYCLES", 60)),
                               records=int(os.environ.get("CRASH_RECORDS", 120)), invalid=12, seed=620,
                               figures=LONG_FIGURES)
