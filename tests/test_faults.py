"""Fault suite: every simulator's fault switches at once, on one batch; once the systems
recover, everything arrives — each valid record exactly once, every signature valid.

At the same time: the school software answers 5xx, 429 with Retry-After, drops connections,
stalls past the client's timeout, serves an HTML maintenance page and cuts JSON in half, all
slowly; the remote signing service (the principal's step) answers 5xx and 429, drops
connections, is slow, asks the phone for approval that comes late, and one principal declines
on their phone; the central store (the first of two destinations) is down outright, then fails,
rate-limits, drops and is slow once it comes back, while the second destination fails and drops a
few requests and otherwise takes every record at once. Nothing is dead-lettered by the outage; the declined records fail with the
reason and arrive after the principal approves and an operator replays them.

Runs on SQLite with one hub and on PostgreSQL with two hubs sharing the store.
"""

from __future__ import annotations

import asyncio
import time

from conftest import PASSWORD
from pgtest import scratch_database
from reliability import Batch, StoreProbe, check_outcome, write_config

from adapters.ttdlqg.simulator import TtdlqgSimulator
from adapters.vnpt.simulator import VnptSimulator
from hub import lifecycle as lc
from hub import store as st
from hub.config import load_config
from hub.engine.pipeline import Hub
from signers.csc.simulator import CscSimulator


async def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def run_fault_batch(tmp_path, pki, *, store: str, hubs: int) -> None:
    vendor = VnptSimulator(records=8, invalid=2, seed=71)
    vendor.page_size = 3
    central, second = TtdlqgSimulator(), TtdlqgSimulator(token="second-token")
    centrals = [central, second]
    signing = CscSimulator(pki_dir=pki[0], password=PASSWORD, poll_interval=0.05)
    for sim in (vendor, central, second, signing):
        await sim.start()
    location = store or str(tmp_path / "data" / "hub.sqlite3")
    probe = StoreProbe(location)
    batch = Batch(vendor)
    declining = vendor.central(0)["signatories"]["principal_personal_id"]
    declined = {rid for rid, i in batch.valid.items()
                if vendor.central(i)["signatories"]["principal_personal_id"] == declining}
    config_path = write_config(
        tmp_path, store=store, pki=pki, password=PASSWORD, vendor=vendor, central=centrals,
        vendor_settings={"timeout": 1.5, "max_attempts": 3},
        remote_principal={**signing.adapter_settings(), "batch_window": 0.1, "poll_interval": 0.05,
                          "backoff": 0.05, "attempts": 8, "request_timeout": 3})
    running: list[Hub] = []
    try:
        # Every switch at once, before the first request.
        v = vendor.faults
        v.fail_next_n, v.rate_limit_next_n, v.drop_next_n_connections = 3, 2, 2
        v.stall_next_n, v.stall_seconds, v.html_next_n, v.truncate_next_n = 1, 3.0, 1, 1
        v.slow_seconds = 0.1
        s = signing.faults
        s.fail_next_n, s.rate_limit_next_n, s.drop_next_n_connections, s.slow_seconds = 2, 1, 1, 0.1
        signing.approval_delay = 0.3
        signing.reject.add(declining)
        c = central.faults
        c.outage, c.fail_next_n, c.rate_limit_next_n, c.drop_next_n_connections = True, 2, 2, 2
        c.slow_seconds = 0.1
        second.faults.fail_next_n, second.faults.drop_next_n_connections = 2, 1

        for _ in range(hubs):
            hub = Hub(load_config(config_path))
            await hub.start()
            running.append(hub)

        # Everything that can get ready without the central store waits in the outbox; the
        # vendor's faults have all been met and recovered from.
        waiting = len(batch.valid) - len(declined)

        def all_waiting() -> bool:
            latest = probe.latest()
            states = [state for _v, state in latest.values()]
            return (len(latest) == len(batch.valid) + len(batch.invalid)
                    and states.count("signed:school_seal") == waiting
                    and states.count(lc.FAILED) == len(declined)
                    and states.count(lc.QUARANTINED) == len(batch.invalid))

        await wait_for(all_waiting, 180, "the batch to wait for the central store")
        # The second destination does not wait for the first: it holds every record that is ready.
        await wait_for(lambda: len(second.accepted()) == waiting, 60, "the second destination to take the batch")
        assert central.counters.created == 0 and central.counters.faulted > 0
        assert second.counters.faulted == 3
        assert (v.fail_next_n, v.rate_limit_next_n, v.drop_next_n_connections, v.stall_next_n,
                v.html_next_n, v.truncate_next_n) == (0, 0, 0, 0, 0, 0)
        assert (s.fail_next_n, s.rate_limit_next_n, s.drop_next_n_connections) == (0, 0, 0)
        assert signing.counters.rejected >= 1
        reader = st.open_store(location)
        try:
            failed = reader.rows(state=lc.FAILED)
            assert {r.record_id for r in failed} == declined
            assert all("principal" in r.errors[0] for r in failed), [r.errors for r in failed]
            assert reader.rows(state=lc.DEAD_LETTER) == []  # an outage dead-letters nothing
        finally:
            reader.close()

        # Recovery: the central store comes back (still failing a few requests at first), the
        # principal approves, and an operator replays the declined records from rendering.
        c.outage = False
        signing.reject.clear()
        moved = await running[0].replay([r.id for r in failed], stage="render", actor="test-operator")
        assert len(moved) == len(declined)
        for hub in running:
            await asyncio.wait_for(hub.wait_idle(), 180)
        await wait_for(lambda: batch.arrived(centrals, probe), 60, "every record at both destinations")
        for hub in running:
            await hub.stop()
        running.clear()
        outcome = await check_outcome(batch, centrals, location, pki[1], replayed=frozenset(declined))
        print(f"\nfault suite: {outcome.line(store=store.split(':')[0] or 'sqlite', hubs=hubs)}")
        assert outcome.problems == [], "\n".join(outcome.problems)
        assert outcome.duplicates == 0 and outcome.lost == 0
        assert central.counters.created == second.counters.created == len(batch.valid)
    finally:
        for hub in running:
            await hub.stop(drain_timeout=0)
        probe.close()
        for sim in (vendor, central, second, signing):
            await sim.stop()


async def test_every_fault_at_once_then_recovery_sqlite(tmp_path, pki):
    await run_fault_batch(tmp_path, pki, store="", hubs=1)


async def test_every_fault_at_once_then_recovery_two_hubs_on_postgres(tmp_path, pki):
    with scratch_database("hocba_faults") as url:
        await run_fault_batch(tmp_path, pki, store=url, hubs=2)


async def test_dropped_database_connections_leave_records_waiting_not_failed(tmp_path, pki):
    """PostgreSQL kills the hub's connection again and again mid-batch (a failover, a restart
    of the database): records are not failed for it; they stay at their state and go on."""
    import psycopg

    with scratch_database("hocba_dbdrop") as url:
        vendor, central = VnptSimulator(records=10, invalid=1, seed=73), TtdlqgSimulator()
        for sim in (vendor, central):
            await sim.start()
        batch = Batch(vendor)
        hub = Hub(load_config(write_config(tmp_path, store=url, pki=pki, password=PASSWORD,
                                           vendor=vendor, central=central)))
        await hub.start()
        try:
            with psycopg.connect(url, autocommit=True) as admin:
                for _ in range(6):  # cut every hub connection, six times while the batch runs
                    await asyncio.sleep(0.4)
                    admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                                  " WHERE application_name = 'hocba-hub' AND datname = current_database()")
            await asyncio.wait_for(hub.wait_idle(), 180)
        finally:
            await hub.stop()
            for sim in (vendor, central):
                await sim.stop()
        reader = st.open_store(url)
        try:
            assert reader.rows(state=lc.FAILED) == []
            assert len(reader.rows(state=lc.DELIVERED)) == len(batch.valid)
        finally:
            reader.close()
        assert central.counters.created == len(batch.valid)


async def test_a_dropped_connection_neither_escapes_wait_idle_nor_ends_the_pull_loop(tmp_path, pki):
    """What the PostgreSQL test above meets at random (``AdminShutdown`` from the very call
    ``wait_idle`` or the pull loop makes when the connection is cut), made certain: the first
    calls of both raise the store's "unavailable" error. The loop pulls anyway and ``wait_idle``
    returns once the batch is through."""
    vendor, central = VnptSimulator(records=3, invalid=0, seed=5), TtdlqgSimulator()
    for sim in (vendor, central):
        await sim.start()
    hub = Hub(load_config(write_config(tmp_path, store="", pki=pki, password=PASSWORD,
                                       vendor=vendor, central=central)))
    cut = {"paused": 2, "pending": 3}

    def dropping(name):
        real = getattr(hub.store, name)

        def call(*args, **kwargs):
            if cut[name]:
                cut[name] -= 1
                raise hub.store.unavailable[0]("terminating connection due to administrator command")
            return real(*args, **kwargs)
        return call

    hub.store.paused = dropping("paused")
    await hub.start()  # reads the store itself: a database away at start-up is a start-up error
    hub.store.pending = dropping("pending")
    try:
        await asyncio.wait_for(hub.wait_idle(), 120)
    finally:
        await hub.stop()
        for sim in (vendor, central):
            await sim.stop()
    assert cut == {"paused": 0, "pending": 0}
    assert len(central.accepted()) == 3
