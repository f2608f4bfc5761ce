"""hub.engine.pool: the most advanced record's job goes first; results, errors and shutdown pass through."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import pytest

from hub.engine.pool import PriorityPool, at_priority


def _submit_at(pool: PriorityPool, priority: int, fn, *args):
    def go():
        at_priority(priority)
        return pool.submit(fn, *args)
    return contextvars.copy_context().run(go)


def test_waiting_jobs_go_highest_priority_first_then_in_order():
    gate, ran = threading.Event(), []
    with ThreadPoolExecutor(1) as threads:
        pool = PriorityPool(threads, depth=1)
        first = _submit_at(pool, 0, gate.wait)  # holds the one place
        jobs = [_submit_at(pool, p, ran.append, name) for p, name in
                ((1, "render a"), (3, "sign b, step 2"), (2, "sign c, step 1"), (3, "sign d, step 2"), (1, "render e"))]
        gate.set()
        assert first.result(5) is True
        for job in jobs:
            job.result(5)
    assert ran == ["sign b, step 2", "sign d, step 2", "sign c, step 1", "render a", "render e"]


def test_errors_reach_the_caller_and_a_cancelled_job_never_runs():
    gate, ran = threading.Event(), []
    with ThreadPoolExecutor(1) as threads:
        pool = PriorityPool(threads, depth=1)
        blocker = pool.submit(gate.wait)
        failing = pool.submit(int, "not a number")
        cancelled = pool.submit(ran.append, "never")
        assert cancelled.cancel()
        gate.set()
        blocker.result(5)
        with pytest.raises(ValueError, match="not a number"):
            failing.result(5)
    assert ran == []


def test_shutdown_cancels_what_waits():
    gate = threading.Event()
    threads = ThreadPoolExecutor(1)
    pool = PriorityPool(threads, depth=1)
    running = pool.submit(gate.wait)
    waiting = pool.submit(int, "1")
    gate.set()
    pool.shutdown(wait=True, cancel_futures=True)
    assert running.result(5) is True
    assert waiting.cancelled() or waiting.result(5) == 1  # it may have gone before the shutdown
    with pytest.raises(RuntimeError):
        pool.submit(int, "2").result(5)


async def test_worker_processes_run_jobs_through_it_from_the_event_loop():
    with ProcessPoolExecutor(2) as processes:
        pool = PriorityPool(processes, depth=2)
        loop = asyncio.get_running_loop()

        async def square(n: int) -> int:
            at_priority(n % 3)
            return await loop.run_in_executor(pool, pow, n, 2)

        assert await asyncio.gather(*(square(n) for n in range(12))) == [n * n for n in range(12)]
