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
import multiprocessing
import os
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any

# What every worker job needs, imported once by the fork server (``worker_context``) rather
# than by each worker as it starts.
PRELOAD = ("hub.engine.pipeline", "hub.documents.render", "hub.documents.pades", "hub.documents.xmldsig",
           "hub.documents.local_keys", "hub.documents.verify", "hub.documents.binding")


def worker_context() -> Any:
    """How the hub starts its worker processes.

    A spawned worker imports the document libraries (pyHanko, fpdf2, fontTools, lxml) before
    its first job: ≈ 1.5 s of CPU each, while the hub normalises its first records on the same
    cores, so most of the time to the first delivery. A fork server imports them once and
    forks each worker from that state in milliseconds; the pool of every later hub in this
    process (a restart, the next test) is forked from the same server. The server is started
    clean, not forked from the hub (no threads, no event loop, no store connection), so forking
    from it is safe. Where there is no fork server (not POSIX), workers are spawned.
    """
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(PRELOAD))  # read when the server starts, once per process
    return context


def alive(pid: int) -> bool:
    """Whether process ``pid`` still runs (a zombie, dead but not yet reaped, does not)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[-1].split()[0] != b"Z"
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: ask the kernel (a zombie counts as alive there)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


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

    def __init__(self, pool: Executor, depth: int, *, held: bool = False):
        self.pool = pool
        self._depth = depth
        self._held = held
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

    def release(self) -> None:
        """Start handing jobs to the processes (a pool made ``held`` keeps them until then).

        Starting a process can block whoever submits (a fork server still importing answers
        only when done); the hub starts its processes from a thread and releases the pool
        afterwards, so a job submitted meanwhile from the event loop waits here instead of
        stopping the loop.
        """
        with self._lock:
            self._held = False
        self._dispatch()

    def _dispatch(self) -> None:
        while True:
            with self._lock:
                if self._held or self._running >= self._depth or not self._waiting:
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
