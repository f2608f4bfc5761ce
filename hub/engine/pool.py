"""The worker pool, finishing what is started before starting more.

A process pool runs jobs in the order they are submitted. The render stage alone keeps it
full (a job for every record it claims), so a record's signing steps and final check used to
queue behind the renders of the records claimed after it: in a large batch the first delivery
waited for most of the batch to be rendered. ``PriorityPool`` sits in front of the process
pool: each job carries the priority its stage set (``at_priority``: the later the stage, the
higher), at most ``depth`` jobs are handed to the processes at once, and when one finishes the
next to go is the most advanced record's. The processes stay as busy as before; only the order
of the work changes, so the first transcripts are delivered while the rest are still rendering.
"""

from __future__ import annotations

import contextvars
import heapq
import itertools
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any

_priority: contextvars.ContextVar[int] = contextvars.ContextVar("hocba_pool_priority", default=0)


def at_priority(priority: int) -> None:
    """Give the jobs this task submits from now on ``priority`` (higher goes first).

    A context variable: it holds for the calling asyncio task and the tasks it starts, and
    ``loop.run_in_executor`` reads it when it submits.
    """
    _priority.set(priority)


class PriorityPool(Executor):
    """An ``Executor`` over ``pool`` that hands it at most ``depth`` jobs at once, highest
    priority first (the order of submission among equals)."""

    def __init__(self, pool: Executor, depth: int):
        self.pool = pool
        self._depth = depth
        self._waiting: list[tuple[int, int, Future[Any], Callable[..., Any], tuple[Any, ...], dict[str, Any]]] = []
        self._running = 0
        self._order = itertools.count()
        self._lock = threading.Lock()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        with self._lock:
            heapq.heappush(self._waiting, (-_priority.get(), next(self._order), future, fn, args, kwargs))
        self._dispatch()
        return future

    def _dispatch(self) -> None:
        while True:
            with self._lock:
                if self._running >= self._depth or not self._waiting:
                    return
                _, _, future, fn, args, kwargs = heapq.heappop(self._waiting)
                if not future.set_running_or_notify_cancel():
                    continue  # cancelled while it waited
                self._running += 1
            try:
                job = self.pool.submit(fn, *args, **kwargs)
            except BaseException as exc:  # the pool is shut down or broken: the caller hears why
                with self._lock:
                    self._running -= 1
                future.set_exception(exc)
                continue
            job.add_done_callback(lambda done, future=future: self._finished(done, future))

    def _finished(self, job: Future[Any], future: Future[Any]) -> None:
        with self._lock:
            self._running -= 1
        if job.cancelled():  # the pool was shut down with the job still queued
            future.set_exception(RuntimeError("the worker pool was shut down"))
        elif (error := job.exception()) is not None:
            future.set_exception(error)
        else:
            future.set_result(job.result())
        self._dispatch()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        if cancel_futures:
            with self._lock:
                waiting, self._waiting = self._waiting, []
            for item in waiting:
                item[2].cancel()
        self.pool.shutdown(wait=wait, cancel_futures=cancel_futures)
