"""The pipeline: pull → store → normalise → (identity) → render → sign (each step) → deliver.

The store is the truth. Each stage claims the records waiting in its states with a lease,
works on a few at once, and commits the next state, which ends the lease and wakes the next
stage. A hub that stops or is killed leaves every record at its last committed state; the
next start (or another worker on a shared PostgreSQL store, once the lease runs out) carries
on from there. With an identity provider configured, the people a record names are checked
between normalisation and rendering (``hub.engine.identity``). Delivery runs from the outbox
(``hub.engine.outbox``), one worker per route: the last signing step queues a job for every route
whose filters take the record (``Hub.routes_for``). Rendering and signing run in a
process pool (one process per core by default), so the event loop stays free and both cores
work.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from functools import partial
from typing import Any

from pydantic import ValidationError

from hub import lifecycle as lc
from hub import logs
from hub import store as st
from hub.config import HubConfig
from hub.contracts import (
    Adapter,
    Health,
    IdentityProvider,
    PluginContext,
    PluginError,
    RawRecord,
    Signer,
)
from hub.engine.identity import IdentityStage
from hub.engine.normalize import Envelope, Outcome, normalize
from hub.engine.outbox import Outbox
from hub.engine.pool import PriorityPool, alive, at_priority, worker_context
from hub.logs import get_logger
from hub.plugins import adapter_types, identity_provider_types, manager, signer_types
from hub.records import parse_transcript
from hub.store.model import is_future


REVOCATION_TTL = 300.0
"""Seconds a certificate's good revocation status is trusted before it is asked again."""
# Which worker jobs go first when the pool is busy (``hub.engine.pool``): the later the stage,
# the sooner (signing adds the step's index); a class package waits for no transcript.
_STAGE_PRIORITY = {"render": 1, "sign": 2, "package": 100}


class ArrivedMismatch(ValueError):
    """A document delivered already signed is not the record: its reasons quarantine it."""

    def __init__(self, reasons: list[str]):
        super().__init__("; ".join(reasons))
        self.reasons = reasons


def render_job(normalized: dict[str, Any], roles: tuple[str, ...], pdf: bool = True,
               xml_format: str | None = None, verification: tuple[str, str | None] | None = None,
               arrived: bytes | None = None) -> tuple[bytes | None, bytes | None]:
    """Build the documents in a worker process (top-level so it pickles): the PDF (its font
    loads once per process) and the XML học bạ, each only if configured. The PDF carries the
    XML's data as an attachment, and ``verification`` (code, public URL) as a QR code.

    ``arrived``: the XML the school's software delivered already signed. It is kept instead of
    the hub's own only if, signatures aside, it is exactly the document built from the record
    (``ArrivedMismatch`` naming each difference otherwise); its signatures are checked at the
    first signing step."""
    from hub.documents.render import render_pdf

    record = parse_transcript(normalized)
    xml = None
    if xml_format is not None:
        from hub.plugins import document_formats

        fmt = document_formats()[xml_format].cls()
        xml = fmt.build(record)
        errors = fmt.schema_errors(xml)
        if errors:  # a format bug, not the record's: never sign a document its schema refuses
            raise ValueError(f"the {xml_format} document does not validate against its schema: {errors[0]}")
        if arrived is not None:
            from hub.documents.xmldsig import unsigned_differences

            try:
                problems = [f"signed XML (schema): {e}" for e in fmt.schema_errors(arrived)[:3]]
                problems += [f"signed XML {d}" for d in unsigned_differences(xml, arrived)] if not problems else []
            except ValueError as exc:
                problems = [f"signed XML: {exc}"]
            if problems:
                raise ArrivedMismatch(problems)
            # The PDF embeds the XML as it arrived: the teachers' signatures made in the school's
            # software travel in the PDF too (the hub's later ones cannot: its signatures come after).
            xml = arrived
    return (render_pdf(record, roles, xml=xml, verification=verification) if pdf else None), xml


def final_check_job(normalized: dict[str, Any], pdf: bytes | None, xml: bytes | None,
                    trust: tuple[bytes, ...], pdf_roles: list[str], roles: tuple[str, ...],
                    xml_format: str | None, school_ids: dict[str, list[str]]) -> list[str]:
    """The last signing step's check, in a worker process (top-level so it pickles): each
    document's signatures validated against ``trust`` and bound to the record. Returns the
    problems, none when the documents may be delivered."""
    import json

    from hub.documents.binding import verify_pdf_bound, verify_xml
    from hub.documents.verify import verify_blocking

    problems: list[str] = []
    if pdf is not None:
        report = verify_blocking(pdf, trust)
        problems += report.problems(require_trust=bool(trust))
        if not problems:
            verdict = verify_pdf_bound(report, json.dumps(normalized).encode(), pdf_roles,
                                       school_ids=school_ids, trust_checked=bool(trust))
            problems += [f"PDF {r}" for r in verdict.reasons]
    if xml is not None and xml_format is not None:
        from hub.documents.xmldsig import verify_document_blocking
        from hub.plugins import document_formats

        fmt = document_formats()[xml_format].cls()
        report = verify_document_blocking(xml, xml_format, trust)
        verdict = verify_xml(xml, fmt, report, required_roles=roles, school_ids=school_ids,
                             trust_checked=bool(trust), record=normalized)
        problems += [f"XML {r}" for r in verdict.reasons]
    return problems


def _worker_init(font_cache: Path, log_format: str = "json", log_level: str = "info",
                 hub_pid: int | None = None, environ: dict[str, str] | None = None) -> None:
    """In each pool worker: exit if the hub dies, take the hub's environment, log like the hub,
    read the prepared fonts.

    A hub killed with SIGKILL cannot shut its pool down; without this watch its workers would
    linger as orphans holding memory. A worker's parent is the hub (spawned) or the fork server
    (``pool.worker_context``), which exits with the hub; either way the parent changes when the
    hub dies. A hub killed while this worker was still starting has already gone, so the watch
    also asks after the hub's own pid as the hub gave it.
    """
    import threading

    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent and (hub_pid is None or alive(hub_pid)):
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch, name="hocba-orphan-watch", daemon=True).start()
    if environ is not None:
        # A worker forked from the fork server has the environment the server started with,
        # maybe another hub's: plugin selection and signer settings come from the hub's now.
        os.environ.clear()
        os.environ.update(environ)

    from hub.documents.pades import stamp_font_bytes
    from hub.documents.render import cached_fonts, load_fonts
    from hub.logs import configure

    configure(log_format, log_level)
    # From the cache the hub wrote before starting its pool (``cached_fonts``), not through
    # the initializer's arguments: a spawned process receives those only once it has imported
    # everything, and the hub, writing them into its pipe, would wait that long per process.
    load_fonts(cached_fonts(font_cache))
    # The signature stamp's font subset, made once per worker before its first job.
    stamp_font_bytes()


def worker_processes(count: int, font_cache: Path, context: Any = None) -> ProcessPoolExecutor:
    """The hub's worker processes: started as ``pool.worker_context`` says (or ``context``),
    each with this process's environment and logging, the fonts in ``font_cache`` (written by
    ``render.cached_fonts`` first), and ending when this process does."""
    return ProcessPoolExecutor(count, mp_context=context or worker_context(), initializer=_worker_init,
                               initargs=(font_cache, *logs.current, os.getpid(), dict(os.environ)))


@dataclass
class Status:
    """What an operator and ``/readyz`` need to know about one plugin instance."""
    health: Health = field(default_factory=lambda: Health(True, "not checked yet"))
    last_sync: str | None = None
    # The pull loop's own view, apart from ``health`` (which readiness checks overwrite): an
    # outage is logged once when pulls start failing and once when they work again.
    pull_failing: bool = False


class Held:
    """Records a stage claimed and is working on (``Hub.working_on``)."""

    def __init__(self, hub: "Hub", pks: list[int]):
        self.hub, self.pks = hub, list(pks)
        hub.working.update(self.pks)

    def add(self, pks: list[int]) -> None:
        self.pks += pks
        self.hub.working.update(pks)


class Hub:
    """A running hub: plugin instances, the store, the stage workers."""

    def __init__(self, config: HubConfig, *, store: st.Store | None = None):
        self.config = config
        # SQLite file by default; ``store: postgresql://…`` for several workers on one database.
        self.store = store or st.open_store(config.store_path)
        self.store.clock_skew_seconds = config.clock_skew_seconds
        self.log = get_logger()
        self.steps = [(s.role, s.signer) for s in config.signing.steps]
        self.roles = tuple(role for role, _ in self.steps)
        self.status: dict[str, Status] = {}
        self._db_thread = ThreadPoolExecutor(1, thread_name_prefix="hocba-store")
        processes = config.workers.processes or os.cpu_count() or 1
        self._processes = processes
        self._pool: PriorityPool | None = None
        self._warming: asyncio.Task[Any] | None = None
        self._concurrency = config.workers.concurrency or 2 * processes
        self.adapters: dict[str, Adapter] = {}
        self.signers: dict[str, Signer] = {}
        self.routes: dict[str, Adapter] = {}  # destination adapter per route, in the config's order
        self.identity: IdentityProvider | None = None
        self.identity_stage: IdentityStage | None = None
        # Work is claimed from the store with leases, so several hub processes can share one
        # database; ``owner`` names this process's leases. ``_wake`` lets a stage that just handed
        # a record on start the next stage at once instead of at its next poll.
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.lease_seconds = 120.0
        self._wake: dict[str, asyncio.Event] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._pullers: list[asyncio.Task[None]] = []
        self.working: set[int] = set()  # ids a stage of this process is working on
        self._moved: set[int] = set()    # ids whose state a handler changed (lease ended)
        self._claimed: dict[int, st.Row] = {}  # rows a stage claimed, until its handler reads them
        self._pulled: dict[str, asyncio.Event] = {}
        self.metrics: Any = None  # hub.metrics.Metrics, when the HTTP surface is on
        self.outbox: Outbox | None = None
        # What the signing steps derive from a record (its parsed central record, its XML's
        # slots, which of them arrived signed), by (record id, kind), with the stored dict it
        # came from: validating one costs ≈ 0.5 ms, each XML parse ≈ 0.3 ms, and each record
        # passes every step.
        self._kept_of_record: OrderedDict[tuple[int, str], tuple[dict[str, Any], Any]] = OrderedDict()
        # State changes waiting for the store's thread, committed together (``_advance``).
        self._to_advance: list[tuple[tuple[Any, ...], dict[str, Any], asyncio.Future[None]]] = []
        self._advancing: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._hook = manager().hook
        # Signing certificate (SHA-256 of its DER) → (until when, why it may not sign: "" if it may).
        self._revocation: dict[bytes, tuple[float, str]] = {}
        self._revocation_asking: dict[bytes, asyncio.Future[tuple[str, bool]]] = {}

    # --- life cycle -----------------------------------------------------------------------

    async def start(self, *, pull: bool = True) -> None:
        """Open every plugin (failing fast with its reason), requeue unfinished records, start."""
        from hub.documents.render import cached_fonts

        data = self.config.data_dir
        # Workers start without the fonts; those prepared here (in the data directory, so the
        # next start also skips it) save each ≈1.5 s.
        await asyncio.to_thread(cached_fonts, data / "cache")
        processes = worker_processes(self._processes, data / "cache")
        # Two jobs per process handed over at once keep each busy; the rest wait in priority order.
        self._pool = PriorityPool(processes, depth=2 * self._processes, held=True)
        # Start every worker now, from a thread (starting one stalls whoever submits), and without
        # waiting for them: pulling and normalising need no worker, and the first render waits
        # in the held pool until the processes are started. Waiting here was most of the time
        # to the first claim.
        self._warming = asyncio.create_task(asyncio.to_thread(self._start_workers, processes),
                                            name="hocba-warm-pool")
        try:
            from hub.plugins import document_formats

            if self.config.xml_format and self.config.xml_format not in document_formats():
                raise PluginError(f"documents: format {self.config.xml_format!r} is not installed or not loaded "
                                  f"(HOCBA_HUB_LOAD_PLUGINS must name it too)")
            for section in self.config.signers:
                cls = signer_types()[section.type].cls
                ctx = PluginContext(section.name, data / "plugins" / section.name, self._pool)
                self.signers[section.name] = cls(self.config.signer_settings(section.name), ctx)
            for section in self.config.adapters:
                if section.enabled:
                    cls = adapter_types()[section.type].cls
                    ctx = PluginContext(section.name, data / "plugins" / section.name, self._pool)
                    self.adapters[section.name] = cls(self.config.adapter_settings(section.name), ctx)
            for route in self.config.routes:
                self.routes[route.name] = adapter_types()[route.type].cls(
                    self.config.route_settings(route.name),
                    PluginContext(route.name, data / "plugins" / route.name, self._pool))
                if self.routes[route.name].can("deliver_package") and (
                        self.config.department is None or not self.config.xml_format):
                    raise PluginError(f"routes: {route.name} ({route.type}) takes class packages, which the "
                                      f"Department signs and which carry the XML học bạ: configure department: "
                                      f"(code, name, signer) and documents.xml")
            if (section := self.config.identity) is not None:
                self.identity = identity_provider_types()[section.type].cls(
                    self.config.identity_settings(), PluginContext(section.name, data / "plugins" / section.name))
            for name, plugin in self._plugins().items():
                self.status[name] = Status()
                try:
                    await plugin.open()
                except PluginError as exc:
                    raise PluginError(f"{name}: {exc}") from None
        except BaseException:
            await self._close_plugins()
            await asyncio.gather(self._warming, return_exceptions=True)
            self._pool.shutdown(cancel_futures=True)
            raise

        stages: dict[str, tuple[Callable[[int], Awaitable[None]], int]] = {
            "normalize": (self._normalize, 2),
            "render": (self._render, self._concurrency),
            "sign": (self._sign, max(self._concurrency, self.config.signing.concurrency)),  # remote signers wait on I/O
        }
        if not self.store.shared:
            # Only this process uses the file: leases left by a killed run are void right away.
            await self.db(self.store.release_all)
        # A store from before routes holds its one destination's jobs under no name: the first
        # route (a ``destination:`` config's only one) carries them on.
        adopted = await self.db(self.store.adopt_routeless, self.config.routes[0].name)
        if adopted:
            self.log.info("outbox.adopted", destination=self.config.routes[0].name, jobs=adopted)
        for stage, (handler, slots) in stages.items():
            self._wake[stage] = asyncio.Event()
            self._tasks.append(asyncio.create_task(self._stage(stage, handler, slots), name=f"hocba-{stage}"))
        self.outbox = Outbox(self)
        self._tasks.append(asyncio.create_task(self.outbox.run(), name="hocba-outbox"))
        if self.identity is not None and self.config.identity is not None:
            self.identity_stage = IdentityStage(self, self.identity, self.config.identity)
            self._tasks.append(asyncio.create_task(self.identity_stage.run(), name="hocba-identity"))
        self._tasks.append(asyncio.create_task(self._heartbeat(), name="hocba-heartbeat"))
        self._tasks.append(asyncio.create_task(self._retention(), name="hocba-retention"))
        resumed = len(await self.db(self.store.pending))
        if pull:
            for name, adapter in self.adapters.items():
                if adapter.can("fetch"):
                    self._pulled[name] = asyncio.Event()
                    self._pullers.append(asyncio.create_task(self._pull(name, adapter), name=f"hocba-pull-{name}"))
        self.log.info("hub.started", adapters=list(self.adapters), signers=list(self.signers),
                      processes=self._processes, resumed=resumed)

    def _start_workers(self, processes: ProcessPoolExecutor) -> None:
        try:
            for _ in range(self._processes):
                processes.submit(os.getpid)  # any job starts a process; this one costs nothing
        finally:  # a pool that could not start tells each job so (PriorityPool passes the error on)
            self._pool.release()

    async def stop(self, *, drain_timeout: float = 30.0) -> None:
        """Stop pulling, let records in a stage finish (up to ``drain_timeout``), close everything.

        Records still queued stay in the store at their last state; the next start resumes them.
        """
        self._stopping.set()
        for task in self._pullers:
            task.cancel()
        await asyncio.gather(*self._pullers, return_exceptions=True)
        deadline = time.monotonic() + drain_timeout
        while (self.working or (self.outbox and self.outbox.active)) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._advancing is not None:  # state changes already handed over are committed
            await asyncio.gather(self._advancing, return_exceptions=True)
        await self._close_plugins()
        if self._warming is not None:
            await asyncio.gather(self._warming, return_exceptions=True)
        if self._pool:
            self._pool.shutdown(wait=True, cancel_futures=True)
        counts = self.store.counts()
        self._db_thread.shutdown(wait=True)
        self.store.close()
        self.log.info("hub.stopped", counts=counts)

    async def wait_idle(self, poll: float = 0.05) -> None:
        """Wait until every adapter has pulled once, no record is in a stage and no delivery or
        package recall is due or under way (a delivery waiting to retry counts as work left)."""
        for event in self._pulled.values():
            await event.wait()
        while True:
            try:
                if (not self.working and self.outbox.active == 0 and not await self.db(self.store.pending)
                        and not await self.db(self.store.recalls_due, list(self.routes))):
                    return
            except self.store.unavailable:
                # The database dropped this worker's connection (a failover, a restart, an
                # administrator's terminate): the call that meets it raises, the next reconnects.
                pass
            await asyncio.sleep(poll)

    @property
    def last_signed_state(self) -> str:
        return lc.SIGNED_PREFIX + self.roles[-1]

    def observe_stage(self, stage: str, seconds: float) -> None:
        if self.metrics is not None:
            self.metrics.observe_stage(stage, seconds)

    @property
    def destination(self) -> Adapter | None:
        """The first route's adapter (the only one of a hub configured with ``destination:``)."""
        return next(iter(self.routes.values()), None)

    def routes_for(self, row: st.Row) -> list[str]:
        """The routes whose filters take this record version (by level, school and event)."""
        level = (row.normalized or {}).get("level")
        return [r.name for r in self.config.routes if r.matches(level, row.school_code, row.event)]

    def count_retry(self, destination: str) -> None:
        if self.metrics is not None:
            self.metrics.retry(destination)

    def count_dead_letter(self, destination: str) -> None:
        if self.metrics is not None:
            self.metrics.dead_letter(destination)

    async def readiness(self) -> dict[str, Any]:
        """Store and every plugin's ``check()``; ``ready`` only if all are healthy."""
        checks: dict[str, Any] = {}
        try:
            # The shared store as this worker sees it: backend, schema, workers connected.
            checks["store"] = {"ok": True, "detail": await self.db(self.store.describe)}
        except Exception as exc:  # the store is down: that is the answer, not an error
            checks["store"] = {"ok": False, "detail": str(exc)}
        plugins = self._plugins()
        results = await asyncio.gather(*(p.check() for p in plugins.values()), return_exceptions=True)
        for name, result in zip(plugins, results):
            if isinstance(result, BaseException):
                result = Health(False, f"check failed: {result}")
            self.status[name].health = result
            checks[name] = {"ok": result.ok, "detail": result.detail}
        return {"ready": all(c["ok"] for c in checks.values()), "checks": checks}

    # --- plumbing ---------------------------------------------------------------------------

    def _plugins(self) -> dict[str, Adapter | Signer | IdentityProvider]:
        out: dict[str, Adapter | Signer | IdentityProvider] = dict(self.adapters)
        out.update(self.routes)
        out.update(self.signers)
        if self.identity is not None and self.config.identity is not None:
            out[self.config.identity.name] = self.identity
        return out

    async def _close_plugins(self) -> None:
        for plugin in self._plugins().values():
            try:
                await plugin.close()
            except Exception as exc:
                self.log.warning("plugin.close_failed", error=str(exc))

    async def db(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._db_thread, partial(fn, *args, **kwargs))

    async def cpu(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` (top-level, picklable) in the hub's worker processes, so CPU-bound work
        of the web surface (verifying an uploaded document) never stalls the event loop; in a
        thread when the hub has not started its pool."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def _stage_for(self, state: str) -> str | None:
        return lc.stage_of(state, self.roles, identity=self.config.identity is not None)

    def enqueue(self, pk: int, state: str) -> None:
        """Tell the stage that works on ``state`` that a record is waiting (it claims it)."""
        stage = self._stage_for(state)
        if stage == "deliver":
            if self.outbox is not None:
                self.outbox.wake.set()
        elif stage == "identity":
            if self.identity_stage is not None:
                self.identity_stage.wake.set()
        elif stage is not None and stage in self._wake:
            self._wake[stage].set()

    async def _stage(self, stage: str, handler: Callable[[int], Awaitable[None]], slots: int) -> None:
        """Claim records waiting for ``stage`` and run ``handler`` on up to ``slots`` at once."""
        states = self._states_for(stage)
        running: set[asyncio.Task[None]] = set()
        wake = self._wake[stage]
        try:
            while not self._stopping.is_set():
                if len(running) >= slots:
                    await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                    continue
                wake.clear()
                limit = slots - len(running)
                try:
                    rows = await self.db(self.store.claim_rows, states, self.owner, self.lease_seconds, limit)
                except self.store.unavailable as exc:  # the database is away: try again shortly
                    self.log.warning("store.unavailable", stage=stage, error=str(exc))
                    await asyncio.sleep(1.0)
                    continue
                for row in rows:
                    pk = row.id
                    self.working.add(pk)
                    self._claimed[pk] = row
                    task = asyncio.create_task(self._run(stage, handler, pk))
                    running.add(task)
                    task.add_done_callback(running.discard)
                if len(rows) < limit:
                    # Fewer than asked: nothing else was waiting, so asking again now would come
                    # back empty. Wait to be told (a move here sets ``wake``), and poll too:
                    # another process (a replay, another hub) may have added work.
                    try:
                        await asyncio.wait_for(wake.wait(), 1.0)
                    except asyncio.TimeoutError:
                        pass
        finally:
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)

    def _states_for(self, stage: str) -> list[str]:
        return lc.states_of(stage, self.roles, identity=self.config.identity is not None)

    @contextlib.asynccontextmanager
    async def working_on(self, pks: list[int]) -> AsyncIterator["Held"]:
        """Hold claimed records while a stage works on them (``wait_idle`` and ``stop`` wait for
        them; ``Held.add`` takes more); on exit, hand back the leases of those whose state did
        not change."""
        held = Held(self, pks)
        try:
            yield held
        finally:
            pks = held.pks
            stay = [pk for pk in pks if pk not in self._moved]
            for pk in pks:
                self.working.discard(pk)
                self._moved.discard(pk)
            if stay:
                try:
                    await asyncio.shield(self.db(self.store.release, stay, self.owner))
                except self.store.unavailable:
                    pass  # the leases run out by themselves

    async def _run(self, stage: str, handler: Callable[[int], Awaitable[None]], pk: int) -> None:
        at_priority(_STAGE_PRIORITY.get(stage, 0))
        started = time.perf_counter()
        try:
            await handler(pk)
            self.observe_stage(stage, time.perf_counter() - started)
        except st.StateConflict:
            pass  # another path already moved it; nothing to do
        except self.store.unavailable as exc:
            # The database is down or locked, not the record: it stays at its state and is
            # claimed again once its lease is given back (or runs out).
            self.log.warning("store.unavailable", pk=pk, stage=stage, error=str(exc))
        except Exception as exc:  # a bug in a stage must not kill the stage or lose the record
            self.log.exception("stage.crashed", pk=pk, error=str(exc))
            await self._fail(pk, f"internal error: {type(exc).__name__}: {exc}")
        finally:
            self.working.discard(pk)
            self._claimed.pop(pk, None)
            if pk in self._moved:
                self._moved.discard(pk)
            else:  # the handler left the record as it was: give the lease back
                try:
                    await asyncio.shield(self.db(self.store.release, [pk], self.owner))
                except self.store.unavailable:
                    pass  # the lease runs out by itself

    async def _heartbeat(self) -> None:
        """Renew this process's leases while long work (a remote signature) is under way."""
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            try:
                await self.db(self.store.renew, self.owner, self.lease_seconds)
            except self.store.unavailable as exc:
                self.log.warning("store.unavailable", task="heartbeat", error=str(exc))

    async def move(self, row: st.Row, state: str, *, detail: str | None = None, **fields: Any) -> None:
        # Signing the last step makes the delivery due: a job per route that takes the record is
        # written in the same transaction (none: the store settles it at once, sent nowhere).
        due: bool | list[str] = self.routes_for(row) if state == self.last_signed_state else False
        await self._advance(row.id, row.state, state, detail=detail, due=due, **fields)
        if row.id in self.working:
            self._moved.add(row.id)
        self._announce(row, state, fields.get("school_code"), fields.get("errors"))
        if due == []:
            self._announce(row, lc.DELIVERED, fields.get("school_code"), None)

    def settled(self, row: st.Row, state: str | None) -> None:
        """A destination's outcome moved the record on (to ``state``; ``None``: it did not)."""
        if state is not None:
            self._announce(row, state, None, None)

    def _announce(self, row: st.Row, state: str, school: str | None, errors: list[str] | None) -> None:
        event = {"record_id": row.record_id, "version": row.version, "adapter": row.adapter,
                 "school_code": school or row.school_code, "state": state}
        if state in (lc.QUARANTINED, lc.FAILED, lc.BLOCKED_IDENTITY):
            self.log.warning("record.state", **event, errors=errors)
        else:
            self.log.info("record.state", **event)
        self._hook.hocba_hub_record_event(event={**event, "errors": errors})
        self.enqueue(row.id, state)

    async def _advance(self, *args: Any, **kwargs: Any) -> None:
        """``Store.advance``, returning once committed; the changes that stages make while the
        store's thread is busy go into one transaction together (``Store.advance_many``), each
        still checking the state it leaves: fewer commits, the same guarantee."""
        if not hasattr(self.store, "advance_many"):
            await self.db(self.store.advance, *args, **kwargs)
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._to_advance.append((args, kwargs, done))
        if self._advancing is None or self._advancing.done():
            self._advancing = asyncio.create_task(self._advance_batches(), name="hocba-advance")
        await done

    async def _advance_batches(self) -> None:
        while self._to_advance:
            batch, self._to_advance = self._to_advance, []
            try:
                outcome = await self.db(self.store.advance_many, [(a, k) for a, k, _ in batch])
            except BaseException as exc:  # nothing of the batch committed: each caller hears why
                for _, _, done in batch:
                    if not done.done():
                        done.set_exception(exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                continue
            for (_, _, done), exc in zip(batch, outcome):
                if not done.done():
                    if exc is None:
                        done.set_result(None)
                    else:
                        done.set_exception(exc)

    async def _fail(self, pk: int, reason: str) -> None:
        try:
            row = await self.db(self.store.get, pk)
            if row.state not in lc.FINAL_STATES:
                await self.move(row, lc.FAILED, detail=reason, errors=[reason])
        except Exception as exc:
            self.log.error("record.fail_not_recorded", pk=pk, error=str(exc))

    async def _current(self, pk: int, stage: str) -> st.Row | None:
        """The record, if it is still at a state this stage works on (a rescan may have queued
        it from a snapshot that has since moved on): as the stage's claim read it, or read now."""
        row = self._claimed.pop(pk, None) or await self.db(self.store.get, pk)
        return row if self._stage_for(row.state) == stage else None

    async def _retention(self) -> None:
        """Prune payloads of delivered records past the configured age, then every interval."""
        policy = self.config.retention
        while True:
            cutoff = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=policy.delivered_payload_days)
            try:
                result = await self.db(self.store.prune, cutoff.isoformat(timespec="milliseconds"))
            except self.store.unavailable as exc:
                self.log.warning("store.unavailable", task="retention", error=str(exc))
                await asyncio.sleep(60)
                continue
            if result["records"]:
                self.log.info("retention.pruned", **result)
            await asyncio.sleep(policy.check_interval_hours * 3600)

    # --- stages -----------------------------------------------------------------------------

    async def _pull(self, name: str, adapter: Adapter) -> None:
        section = next(a for a in self.config.adapters if a.name == name)
        log = self.log.bind(adapter=name)
        paused_logged = False
        while not self._stopping.is_set():
            try:
                paused = name in await self.db(self.store.paused)
            except self.store.unavailable as exc:
                # A dropped connection must not end the pull loop (it would never pull again):
                # the next call reconnects.
                log.warning("store.unavailable", task="pull", error=str(exc))
                try:
                    await asyncio.wait_for(self._stopping.wait(), min(section.poll_interval, 1.0))
                except asyncio.TimeoutError:
                    pass
                continue
            if paused:
                if not paused_logged:
                    log.info("adapter.paused")
                    paused_logged = True
                self._pulled[name].set()
                try:
                    await asyncio.wait_for(self._stopping.wait(), min(section.poll_interval, 5.0))
                except asyncio.TimeoutError:
                    pass
                continue
            paused_logged = False
            # One worker at a time reads an adapter and moves its cursor: the store leases the
            # pull (renewed by the heartbeat; a dead worker's lease runs out or, on PostgreSQL,
            # ends with its session). A worker that does not get it has nothing to pull now.
            try:
                owned = await self.db(self.store.claim_pull, name, self.owner, self.lease_seconds)
            except Exception as exc:
                owned = False
                log.error("adapter.pull_lease_failed", error=str(exc))
            if owned:
                try:
                    cursor = await self.db(self.store.cursor, name)
                    received = 0
                    async for page in adapter.fetch(cursor):
                        # Records and the cursor that covers them commit together, and only while
                        # this worker still holds the pull: a crash or a lost lease re-reads.
                        ids = await self.db(self.store.receive, name, page.records, page.cursor,
                                             save_cursor=True, lease_owner=self.owner)
                        received += len(ids)
                        for pk in ids:
                            self.enqueue(pk, lc.RECEIVED)
                        await adapter.acknowledge(page)
                    self.status[name].last_sync = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
                    if self.status[name].pull_failing:
                        log.info("adapter.recovered")
                    self.status[name].pull_failing = False
                    self.status[name].health = Health(True, "last pull succeeded")
                    log.info("adapter.pulled", new_versions=received)
                except asyncio.CancelledError:
                    raise
                except st.LeaseLost as exc:
                    log.warning("adapter.pull_lease_lost", error=str(exc))
                except Exception as exc:
                    if not self.status[name].pull_failing:  # the start of an outage, once, not every poll
                        log.error("adapter.pull_failed", error=str(exc))
                    self.status[name].pull_failing = True
                    self.status[name].health = Health(False, f"pull failed: {exc}")
                finally:
                    await asyncio.shield(self._release_pull(name))
            self._pulled[name].set()
            try:
                await asyncio.wait_for(self._stopping.wait(), section.poll_interval)
            except asyncio.TimeoutError:
                pass

    async def _release_pull(self, name: str) -> None:
        try:
            await self.db(self.store.release_pull, name, self.owner)
        except Exception as exc:  # the lease runs out by itself
            self.log.warning("adapter.pull_release_failed", adapter=name, error=str(exc))

    async def _normalize(self, pk: int) -> None:
        if (row := await self._current(pk, "normalize")) is None:
            return
        adapter = self.adapters.get(row.adapter)
        if adapter is None:
            raise PluginError(f"adapter {row.adapter!r} is not configured (any more)")
        if is_future(row.source_updated, self.config.clock_skew_seconds):
            # Held, not trusted: a vendor clock running ahead must not order versions (a replay
            # once the time has come sends it on).
            await self.move(row, lc.QUARANTINED, detail="dated in the future", errors=[
                f"updated_at: the vendor dates this version more than {self.config.clock_skew_seconds:g} s "
                "ahead of the hub's clock; held until an operator replays it"])
            return
        # thoigiancapnhat: when the school changed the transcript, as the vendor states it
        # (its own wall-clock time); the hub's receipt time for sources that do not say.
        envelope = Envelope(row.record_id, row.version, row.event, (row.source_updated or row.received_at)[:19])
        outcome = normalize(adapter, row.raw(), envelope, self.config.codes)
        # The codes the vendor sent, when the codes table replaced them: kept in the history.
        remapped = f"codes remapped: {'; '.join(outcome.remapped)}" if outcome.remapped else None
        if outcome.record is None and row.event == "CANCEL":
            # A recall needs only its envelope: content the vendor left invalid (or a bare
            # tombstone) must not keep a delivered transcript from being recalled.
            if await self._recall_without_content(row, envelope, outcome):
                return
        if outcome.record is None:
            # The school (and year) the payload names, when the adapter could map that much:
            # whoever must fix the record is known even though the record is not valid.
            where = {k: outcome.known[k] for k in ("school_code", "school_year") if k in outcome.known}
            reason = "invalid record" if outcome.mapped else "cannot map record"
            await self.move(row, lc.QUARANTINED, detail=f"{reason}; {remapped}" if remapped else reason,
                            errors=list(outcome.errors), **where)
            return
        record = outcome.record
        normalized = record.model_dump(mode="json")
        digest = st.content_hash(normalized)
        held = await self.db(self.store.sent_versions, row.record_id)
        routes = [r.name for r in self.config.routes
                  if r.matches(normalized.get("level"), record.school_code, row.event)]
        if row.event != "CANCEL" and routes and all(held.get(r, (0, None))[1] == digest for r in routes):
            # The vendor re-sent the same transcript (a new timestamp, a reformatted payload):
            # every destination it goes to already holds this content, so nothing is rendered,
            # signed or sent.
            await self.move(row, lc.UNCHANGED, detail="; ".join(filter(None, (
                                 f"same content as version {held[routes[0]][0]}", remapped))),
                             normalized=normalized, content_hash=digest,
                             school_code=record.school_code, school_year=record.school_year)
            return
        await self.move(row, lc.NORMALIZED, detail=remapped, normalized=normalized, content_hash=digest,
                         school_code=record.school_code, school_year=record.school_year)
        self._keep(row.id, "record", normalized, record)

    async def _recall_without_content(self, row: st.Row, envelope: Envelope, outcome: Outcome) -> bool:
        """A CANCEL whose own content does not validate: send the recall with the content the
        destination holds (its last delivered version), or, when the destination holds
        nothing of this record, end it ``unchanged`` (there is nothing to recall). False when
        the delivered content is no longer kept (pruned): the CANCEL is quarantined as usual."""
        # The fields only: an adapter's reason may quote a value.
        reasons = ", ".join(dict.fromkeys(e.split(":")[0].split(" ")[0] for e in outcome.errors))[:300]
        held = await self.db(self.store.delivered_content, row.record_id)
        if held is None:
            if await self.db(self.store.sent_version, row.record_id) is None:
                await self.move(row, lc.UNCHANGED, detail="recall of a transcript the destination never received; "
                                f"nothing to send (its content was invalid: {reasons})")
                return True
            return False
        try:
            record = parse_transcript({**held[1], **envelope.fields()})
        except ValidationError:  # delivered under older rules: the operator decides
            return False
        normalized = record.model_dump(mode="json")
        await self.move(row, lc.NORMALIZED, detail=f"recall carrying delivered version {held[0]}'s content "
                        f"(its own content was invalid: {reasons})", normalized=normalized,
                        content_hash=st.content_hash(normalized), school_code=record.school_code,
                        school_year=record.school_year)
        return True

    async def _render(self, pk: int) -> None:
        if (row := await self._current(pk, "render")) is None:
            return
        from hub.store.issuance import new_code

        loop = asyncio.get_running_loop()
        # One code per version, made here and printed in the PDF before any signature covers it
        # (every copy issued later names it: hub.store.issuance). A re-render keeps the code.
        code = row.verify_code or new_code()
        base = self.config.verify.public_base_url
        verification = (code, f"{base.rstrip('/')}/{code}" if base else None)
        arrived = None
        adapter = self.adapters.get(row.adapter)
        if adapter is not None and self.config.xml_format:
            try:
                arrived = adapter.signed_document(row.raw())
            except ValueError as exc:
                await self.move(row, lc.QUARANTINED, detail="the signed XML delivered with it cannot be read",
                                errors=[str(exc)])
                return
        try:
            pdf, xml = await loop.run_in_executor(self._pool, render_job, row.normalized, self.roles,
                                                  self.config.makes_pdf, self.config.xml_format, verification,
                                                  arrived)
        except ArrivedMismatch as exc:
            await self.move(row, lc.QUARANTINED, detail="arrived signed, and what was signed is not the record",
                            errors=exc.reasons)
            return
        await self.move(row, lc.RENDERED, pdf=pdf, xml=xml, verify_code=code)

    async def _sign(self, pk: int) -> None:
        """One signing step: the role's signer for the record's school, on every configured document.

        The XML học bạ gets the role's XAdES signatures in its slots (subject teachers: one per
        subject, all in this step), the PDF the role's PAdES signature, concurrently, so a remote
        signer's one approval covers both. A document that arrived already signed (a vendor's
        signatures) is validated against the trust anchors (``signing.trust``,
        ``signing.trust_anchors``) and the record, and only its missing steps are signed; a
        broken, misplaced or mismatched signature quarantines the record naming the slot. Before
        signing, the signers' certificates are checked for revocation (``_revoked``). After the last step every document is validated and bound to the
        record, and one that does not hold is never handed to delivery.
        """
        from hub.documents.signing import request_for
        from hub.documents.verify import trust_roots_der, verify_blocking

        if (row := await self._current(pk, "sign")) is None:
            return
        done = 0 if row.state == lc.RENDERED else self.roles.index(row.state.removeprefix(lc.SIGNED_PREFIX)) + 1
        role = self.roles[done]
        at_priority(_STAGE_PRIORITY["sign"] + done)  # a record nearer its last signature goes first
        signing = self.config.signing
        loop = asyncio.get_running_loop()
        pdf, xml = row.pdf, row.xml
        notes: list[str] = []
        try:
            record = self.central_record(row)
            step = signing.step_for(role, record.school_code)
            trust = trust_roots_der(tuple(self.config.trust_paths()))
            signer = self.signers.get(step.signer)
            if signer is None:
                raise PluginError(f"signer {step.signer!r} (for school {record.school_code}) is not "
                                  f"defined under signers")
            # More signatures than steps this hub took: someone signed before the hub did.
            signed_before: set[str] = set()
            pdf_done = sum(1 for r in self.roles[:done] if r in self._pdf_roles)
            if pdf is not None and pdf.count(b"/ByteRange") > pdf_done:
                report = await loop.run_in_executor(self._pool, verify_blocking, pdf, trust)
                problems = report.problems(require_trust=bool(trust))
                signed_before = set(report.fields)
                later = [r for r in self.roles[done + 1:] if r in signed_before]
                if not problems and role not in signed_before and later:
                    problems = [f"{later[0]}: signed before {role}, out of the Ministry's order"]
                if problems:
                    await self.move(row, lc.QUARANTINED, detail="arrived signed, and the signatures do not hold",
                                     errors=problems)
                    return
            xml_slots: list[Any] = []
            if xml is not None:
                # Parsed once for the step: which slots there are, then which hold a signature.
                every_slot = self._xml_slots(row, xml)
                arrived = await self._xml_arrived_signed(row, record, xml, done, trust, every_slot)
                if arrived is None:
                    return  # quarantined
                xml_slots, note = self._xml_slots_for(role, every_slot, arrived)
                if note:
                    notes.append(note)
            sign_pdf = pdf is not None and role in self._pdf_roles and role not in signed_before
            if signing.revocation_check:
                identities = [s.identity for s in xml_slots]
                if sign_pdf:
                    identities.append(request_for(record, pdf, role).identity)
                problems = await self._revoked(signer, identities, trust)
                if problems:
                    await self.move(row, lc.FAILED, detail=f"{role}: the signer's certificate may not sign",
                                    errors=[f"{role}: {p}" for p in problems])
                    return
            from hub.documents.render import ROLE_LABELS
            from hub.documents.xmldsig import sign_step

            requests = [request_for(record, pdf, role, level=step.level or "B-B",
                                    timestamp_url=step.timestamp_url or "")] if sign_pdf else []
            xml, pdfs = await sign_step(
                xml, xml_slots, requests, signer, level=step.level or "B-B", timestamp_url=step.timestamp_url or "",
                c14n=signing.c14n, executor=self._pool,
                description=f"{ROLE_LABELS.get(role, role)} ký học bạ {record.transcript_id} (XML)")
            if sign_pdf:
                [pdf] = pdfs
        except (PluginError, ValueError) as exc:
            await self.move(row, lc.FAILED, detail=f"signing {role} failed", errors=[f"{role}: {exc}"])
            return
        if done == len(self.roles) - 1:
            problems = await self._final_check(row.normalized, pdf, xml, trust)
            if problems:
                await self.move(row, lc.FAILED, detail="the signed document does not validate; not delivered",
                                 errors=problems)
                return
        await self.move(row, lc.SIGNED_PREFIX + role, pdf=pdf, xml=xml,
                         detail="; ".join(notes) or None)

    async def _revoked(self, signer: Signer, identities: list[Any], trust: tuple[bytes, ...]) -> list[str]:
        """Why any of ``identities``' certificates must not sign now (revoked, expired, or its CA
        cannot say), checked before the step signs, as the signature rules require. A good
        answer is kept for ``REVOCATION_TTL`` seconds, so a class batch asks each CA once."""
        import hashlib

        from hub.documents.signing import certificate_problem_blocking

        problems = []
        if type(signer).certificates is Signer.certificates:
            return []  # a signer that cannot show its certificate before signing (PDF only)
        for identity in {i.key: i for i in identities}.values():
            chain = tuple(await signer.certificates(identity))
            key = hashlib.sha256(chain[0]).digest()
            cached = self._revocation.get(key)
            if cached is not None and cached[0] > time.monotonic():
                problem = cached[1]
            else:
                # Records of one class reach a step together: one question to the CA for all.
                asking = self._revocation_asking.get(key)
                if asking is None:
                    asking = asyncio.ensure_future(asyncio.get_running_loop().run_in_executor(
                        self._pool, certificate_problem_blocking, chain, trust))
                    self._revocation_asking[key] = asking
                    asking.add_done_callback(lambda _f, k=key: self._revocation_asking.pop(k, None))
                problem, keep = await asyncio.shield(asking)
                if keep:
                    self._revocation[key] = (time.monotonic() + REVOCATION_TTL, problem)
            if problem:
                problems.append(problem)
        return problems

    @property
    def _pdf_roles(self) -> tuple[str, ...]:
        from hub.documents.render import PDF_ROLES

        return PDF_ROLES

    def central_record(self, row: st.Row) -> Any:
        """The row's central record, parsed once while the record moves through the steps and
        to its destinations."""
        return self._derived(row, "record", lambda: parse_transcript(row.normalized))

    def _xml_slots(self, row: st.Row, xml: bytes) -> list[Any]:
        """The XML học bạ's signature slots, read once per record: the document is built from
        the central record (one that arrived signed is refused unless it is exactly that, its
        signatures aside), so the same content has the same slots at every step."""
        return self._derived(row, "slots", lambda: self._xml_format().slots(xml))

    def _derived(self, row: st.Row, kind: str, make: Callable[[], Any]) -> Any:
        value = self._kept(row, kind)
        if value is None:
            value = make()
            self._keep(row.id, kind, row.normalized, value)
        return value

    def _kept(self, row: st.Row, kind: str) -> Any:
        """What was kept of ``kind`` for this record, if its content has not changed since."""
        kept = self._kept_of_record.get((row.id, kind))
        if kept is None or kept[0] != row.normalized:
            return None
        self._kept_of_record.move_to_end((row.id, kind))
        return kept[1]

    def _keep(self, pk: int, kind: str, normalized: dict[str, Any], value: Any) -> None:
        self._kept_of_record[(pk, kind)] = (normalized, value)
        self._kept_of_record.move_to_end((pk, kind))
        while len(self._kept_of_record) > 3 * (8 * self._concurrency + 64):  # 3 kinds of the records in flight, with room
            self._kept_of_record.popitem(last=False)

    def _xml_slots_for(self, role: str, every_slot: list[Any], arrived: set[str]) -> tuple[list[Any], str]:
        """The slots ``role`` signs now (those not signed on arrival), and a note for the history.

        Subject teachers: a record that names none of them (a source whose contract has no field
        for them, such as the school portal's templates) has nothing to sign at this stage, and
        the history says so; one that names some but not all fails naming the subjects left.
        """
        from hub.documents.signing import SigningError

        slots = [s for s in every_slot if s.role == role and s.name not in arrived]
        if role != "subject_teacher":
            return slots, ""
        every = [s for s in every_slot if s.role == role]
        named = [s for s in every if s.identity.personal_id]
        if not named:
            return [], ("no subject teacher named: nothing for subject_teacher to sign" if every else "")
        missing = [s.subject for s in slots if not s.identity.personal_id]
        if missing:
            raise SigningError(f"subjects {', '.join(missing)}: no subject teacher's personal id, so no "
                               f"key can be chosen (subjects[].teacher_personal_id)")
        return slots, ""

    def _xml_format(self) -> Any:
        from hub.plugins import document_formats

        return document_formats()[self.config.xml_format].cls()

    async def _xml_arrived_signed(self, row: st.Row, record: Any, xml: bytes, done: int,
                                  trust: tuple[bytes, ...], every_slot: list[Any]) -> set[str] | None:
        """Slot names signed before this hub signed anything; validated and bound to the record.

        Returns ``None`` after quarantining the record when a signature does not hold.
        """
        from hub.documents.xmldsig import signed_slots

        fmt = self._xml_format()
        if done > 0:
            # Validated at the first step; since then only this hub changed the document. The
            # slots of roles it has not reached yet are the ones that arrived signed: as the
            # first step found them when this process took it, or read again now.
            present = self._kept(row, "arrived")
            if present is None:
                present = signed_slots(xml, fmt, every_slot) if b"Signature" in xml else set()
            ours = set(self.roles[:done])
            return {s.name for s in every_slot if s.name in present and s.role not in ours}
        if b"Signature" not in xml:
            self._keep(row.id, "arrived", row.normalized, set())
            return set()
        present = signed_slots(xml, fmt, every_slot)
        problems = await self._xml_problems(record, xml, trust, required=())
        # A later stage signed while an earlier one is still empty: the hub's signature in the
        # empty slot would change what the later one sealed (#data holds the teachers' slots).
        stage = {r: i for i, r in enumerate(self.roles)}
        for late in (s for s in every_slot if s.name in present and s.role in stage):
            early = next((s for s in every_slot if s.name not in present and s.role in stage
                          and stage[s.role] < stage[late.role]
                          and (s.role != "subject_teacher" or s.identity.personal_id)), None)
            if early is not None:
                problems.append(f"XML {late.name}: signed while {early.name} ({early.role}) is not, out of the "
                                f"signing order")
        if problems:
            await self.move(row, lc.QUARANTINED, detail="arrived signed, and the signatures do not hold",
                             errors=problems)
            return None
        self._keep(row.id, "arrived", row.normalized, present)
        return present

    async def _xml_problems(self, record: Any, xml: bytes, trust: tuple[bytes, ...],
                            required: tuple[str, ...]) -> list[str]:
        from hub.documents.binding import verify_xml
        from hub.documents.xmldsig import verify_document

        fmt = self._xml_format()
        report = await verify_document(xml, fmt, trust)
        verdict = verify_xml(xml, fmt, report, required_roles=required,
                             school_ids=self.config.signing.school_ids, trust_checked=bool(trust),
                             record=record.model_dump(mode="json"))
        return [f"XML {r}" for r in verdict.reasons]

    async def _final_check(self, normalized: dict[str, Any], pdf: bytes | None, xml: bytes | None,
                           trust: tuple[bytes, ...]) -> list[str]:
        """Every document validated and bound to the stored record before it may be delivered
        (in a worker process: parsing and checking the signatures is most of a transcript's CPU)."""
        roles = [r for r in self.roles if r in self._pdf_roles]
        return await asyncio.get_running_loop().run_in_executor(
            self._pool, final_check_job, normalized, pdf, xml, trust, roles,
            self.roles, self.config.xml_format, self.config.signing.school_ids)

    # --- operator actions (the admin API, hub/admin.py) -------------------------------------

    async def replay(self, pks: list[int], *, stage: str = "normalize", actor: str,
                     destination: str | None = None) -> list[tuple[int, str]]:
        """``Store.replay`` through the running hub: the stages that take the moved records are
        woken at once rather than at their next poll. ``destination``: replay only that route's
        dead letters. Returns ``(id, new state)`` of the records that moved."""
        if destination is not None and destination not in self.config.route_names:
            raise ValueError(f"destination: no route named {destination!r} "
                             f"(routes: {', '.join(self.config.route_names)})")
        moved = await self.db(self.store.replay, list(pks), stage=stage, actor=actor,
                               deliver_from=self.last_signed_state, destination=destination,
                               routes=self.config.route_names)
        for pk, state in moved:
            self.enqueue(pk, state)
        return moved

    async def cancel(self, record_id: str, reason: str, actor: str) -> int:
        """``Store.cancel`` through the running hub: the cancel version is worked on at once."""
        pk = await self.db(self.store.cancel, record_id, reason, actor)
        self.enqueue(pk, lc.RECEIVED)
        return pk

    async def recall(self, package_id: str, reason: str, actor: str) -> list[Any]:
        """``Store.request_recall`` through the running hub: the package route sends it at once."""
        packages = await self.db(self.store.request_recall, package_id, reason, actor)
        if self.outbox is not None:
            self.outbox.wake.set()
        return packages

    async def sign_package(self, items: list[Any]) -> Any:
        """A class package of ``items`` (``hub.documents.package.PackageItem``), its manifest
        signed by the Department (``department:`` in the config), built in the worker processes."""
        from hub.documents.package import package_class
        from hub.plugins import document_formats

        department = self.config.department
        if department is None:
            raise PluginError("department: not configured; a class package is signed by the Department")
        at_priority(_STAGE_PRIORITY["package"])
        return await package_class(items, self.signers[department.signer], department_code=department.code,
                                   department_name=department.name,
                                   document_format=document_formats()[self.config.xml_format].cls(),
                                   c14n=self.config.signing.c14n, executor=self._pool)

    # --- pushed records (the ingest route, hub/ingest.py) -----------------------------------

    async def ingest(self, adapter: str, records: list[RawRecord]) -> list[int]:
        """Commit records a sender pushed to ``adapter`` and queue the new versions.

        Returns only after the commit (the store's thread, ``synchronous=FULL``), so a ``202``
        sent after this call never covers a record a crash could lose. Records whose payload
        is unchanged create nothing, as for a re-read page. Returns the new versions' ids.
        """
        ids = await self.db(self.store.receive, adapter, records)
        for pk in ids:
            self.enqueue(pk, lc.RECEIVED)
        return ids
