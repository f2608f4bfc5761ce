"""Delivery from the outbox: per route, retries by error class, a circuit breaker, dead letters, versions.

A record may go to several destinations (``routes:`` in the config, each filtered by level,
school and event). The transaction that signs the last step writes one delivery job per route
that takes the record (``outbox`` table, keyed by record version and destination); each job
lives until the transaction that records that destination's outcome (``deliveries``), so a
crash never loses or duplicates one: a destination is idempotent on ``record_id`` +
``version``, and a job re-sent after a crash gets the original receipt back. The record is
``delivered`` once every route that took it holds it (``dead_letter`` if one gave up).

Each route has its own worker (``RouteOutbox``) with everything below of its own, so one
destination's outage or refusals never hold up another's deliveries:

- transient failures (5xx, timeouts, dropped connections, 429) are retried with exponential
  backoff and jitter (tenacity's wait strategy), a ``Retry-After`` is honoured;
- permanent refusals (4xx validation) go to ``dead_letter`` at once, with the reason;
- a version conflict (409) is reconciled: the record is sent again as the next version above
  what the destination holds, re-rendered and re-signed, never retried blindly;
- while the destination is down, the circuit breaker sends one probe per interval instead of
  a storm, and the outage is logged once when it starts and once when it ends.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

from tenacity import RetryCallState, wait_exponential_jitter

from hub import lifecycle as lc
from hub import store as st
from hub.config import DeliveryConfig
from hub.contracts import Adapter, Delivery, DeliveryError

if TYPE_CHECKING:
    from hub.engine.pipeline import Hub

T = TypeVar("T")


def utc_after(seconds_from_now: float = 0.0) -> str:
    when = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=seconds_from_now)
    return when.isoformat(timespec="milliseconds")


class Backoff:
    """The wait before attempt ``n + 1``: exponential with jitter, at least ``Retry-After``."""

    def __init__(self, policy: DeliveryConfig):
        self._wait = wait_exponential_jitter(multiplier=policy.backoff_initial, max=policy.backoff_max,
                                             jitter=policy.backoff_initial)

    def seconds(self, attempts: int, retry_after: float | None = None) -> float:
        state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
        state.attempt_number = attempts
        return max(self._wait(state), retry_after or 0.0)


class CircuitBreaker:
    """Closed → (``threshold`` consecutive transient failures) → open → one probe per
    ``probe_seconds`` → closed on the first success. ``kind`` names what is guarded in the
    outage's log events (``destination.outage_started``, ``identity.outage_ended``…)."""

    def __init__(self, name: str, threshold: int, probe_seconds: float, log: Any, kind: str = "destination"):
        self.name = name
        self.kind = kind
        self.threshold = threshold
        self.probe_seconds = probe_seconds
        self.failures = 0
        self.open_since: float | None = None
        self.affected: set[str] = set()
        self._next_probe = 0.0
        self.probing = False  # a probe request is out while the breaker is open
        self.ended = False  # set when an outage ends, so the outbox makes every job due again
        self._log = log

    @property
    def is_open(self) -> bool:
        return self.open_since is not None

    def allow(self) -> bool:
        """May a request go out now? While open, only one probe per interval."""
        if not self.is_open:
            return True
        if self.probing or time.monotonic() < self._next_probe:
            return False
        self.probing = True
        return True

    def wait_seconds(self) -> float:
        return max(0.0, self._next_probe - time.monotonic()) if self.is_open else 0.0

    def success(self, waiting: int | None = None) -> None:
        """A request went through. ``waiting``: the records waiting on the guarded system when
        the outage ends (the log line counts those, not only the ones a probe tried)."""
        if self.is_open:
            self.ended = True
            extra = {} if waiting is None else {"waiting_records": waiting}
            self._log.warning(f"{self.kind}.outage_ended", **{self.kind: self.name},
                              seconds=round(time.monotonic() - self.open_since, 1),
                              affected_records=len(self.affected), **extra)
        self.failures, self.open_since, self.probing = 0, None, False
        self.affected.clear()

    def failure(self, record_id: str, error: str, waiting: int | None = None) -> None:
        """A transient failure. ``waiting``: the records waiting on the guarded system, logged
        when this failure opens the breaker."""
        self.failures += 1
        self.probing = False
        if self.is_open:
            self.affected.add(record_id)
            self._next_probe = time.monotonic() + self.probe_seconds
        elif self.failures >= self.threshold:
            self.open_since = time.monotonic()
            self.affected.add(record_id)
            self._next_probe = time.monotonic() + self.probe_seconds
            self._log.error(f"{self.kind}.outage_started", **{self.kind: self.name}, error=error,
                            consecutive_failures=self.failures,
                            **({} if waiting is None else {"waiting_records": waiting}))


class Outbox:
    """The delivery workers of one hub: one per configured route (a ``PackageRouteOutbox``,
    ``hub/engine/package_outbox.py``, for a destination that takes class packages)."""

    def __init__(self, hub: "Hub", concurrency: int = 8):
        self.hub = hub
        from hub.engine.package_outbox import PackageRouteOutbox  # it builds on RouteOutbox, below

        self.routes = {name: (PackageRouteOutbox if adapter.can("deliver_package") else RouteOutbox)(
            hub, name, adapter, concurrency) for name, adapter in hub.routes.items()}
        self.wake = _WakeAll(self)

    @property
    def active(self) -> int:
        return sum(route.active for route in self.routes.values())

    @property
    def breaker(self) -> CircuitBreaker:
        """The first route's breaker (the only one of a hub with one destination)."""
        return next(iter(self.routes.values())).breaker

    async def run(self) -> None:
        await asyncio.gather(*(route.run() for route in self.routes.values()))


class _WakeAll:
    """``Outbox.wake.set()``: a job was added; every route looks (each claims only its own)."""

    def __init__(self, outbox: Outbox):
        self._outbox = outbox

    def set(self) -> None:
        for route in self._outbox.routes.values():
            route.wake.set()


class RouteOutbox:
    """The delivery worker of one route: takes its destination's due jobs and sends them."""

    def __init__(self, hub: "Hub", name: str, adapter: Adapter, concurrency: int = 8):
        self.hub = hub
        self.name = name
        self.adapter = adapter
        self.policy = hub.config.delivery
        self.backoff = Backoff(self.policy)
        self.breaker = CircuitBreaker(name, self.policy.breaker_threshold, self.policy.breaker_probe_seconds, hub.log)
        self.wake = asyncio.Event()
        self.active = 0
        self._concurrency = concurrency
        self._tasks: set[asyncio.Task[None]] = set()
        # The last claim took as many jobs as it asked for: more may be due, so a finished
        # job makes the loop claim again. Otherwise a new job wakes it (``Hub.enqueue``).
        self._full = False

    async def run(self) -> None:
        """Until cancelled: send what is due; sleep until the next job is due or one is added."""
        try:
            while True:
                try:
                    await self._run()
                except self.hub.store.unavailable as exc:  # the database is away: try again shortly
                    self.hub.log.warning("store.unavailable", task="outbox", destination=self.name, error=str(exc))
                    await asyncio.sleep(1.0)
        finally:
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _run(self) -> None:
        hub = self.hub
        while True:
            self.wake.clear()
            if self.breaker.is_open and not self.breaker.allow():
                await self._sleep(self.breaker.wait_seconds())
                continue
            if self.breaker.ended:  # the destination is back: everything waiting for it goes now
                self.breaker.ended = False
                await hub.db(hub.store.make_due, utc_after(), self.name)
            probing = self.breaker.is_open
            free = 1 if probing else self._concurrency - len(self._tasks)
            if free <= 0:
                await asyncio.wait(self._tasks, return_when=asyncio.FIRST_COMPLETED)
                continue
            await self._before_claim()
            size = self._claim_size(free)
            due = await hub.db(hub.store.claim_deliveries, hub.owner, hub.lease_seconds, size, self.name)
            self._full = len(due) >= size
            if not due:
                if probing:
                    self.breaker.probing = False  # nothing was due: the probe slot is free again
                next_due = await hub.db(hub.store.next_due, self.name)
                wait = 5.0 if next_due is None else (
                    dt.datetime.fromisoformat(next_due) - dt.datetime.now(dt.timezone.utc)).total_seconds()
                await self._sleep(min(max(wait, 0.01), 5.0))
                continue
            for job in self._jobs([(pk, attempts) for pk, _, attempts in due]):
                task = asyncio.create_task(job)
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            if probing:  # one probe at a time: wait for its outcome before sending more
                await asyncio.gather(*self._tasks, return_exceptions=True)

    # What differs for a destination that takes a class at a time (``PackageRouteOutbox``).

    async def _before_claim(self) -> None:
        """Work this route does besides its jobs (a package route's recalls)."""

    def _claim_size(self, free: int) -> int:
        return free

    def _jobs(self, due: list[tuple[int, int]]) -> list[Coroutine[Any, Any, None]]:
        """The tasks for the claimed jobs ``(record pk, attempts)``: one per record here."""
        return [self._deliver(pk, attempts) for pk, attempts in due]

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self.wake.wait(), seconds)
        except asyncio.TimeoutError:
            pass

    async def _deliver(self, pk: int, attempts: int) -> None:
        hub, name = self.hub, self.name
        self.active += 1
        started = time.perf_counter()
        settled_here = False
        try:
            row, _ = await self._due(pk)
            if row is None:
                return
            record = hub.central_record(row)
            delivery = Delivery(row.record_id, row.version, row.event,
                                record.model_dump(mode="json", by_alias=True), row.pdf or b"", xml=row.xml,
                                reason=row.reason)
            await hub.db(hub.store.delivery_attempted, pk, row.record_id, row.version, name)
            receipt = await self._sent(self.adapter.deliver(delivery), lambda exc: self._failed(row, attempts, exc))
            if receipt is None:
                return
            accepted = {"receipt_id": receipt.receipt_id, "received_at": receipt.received_at,
                        "duplicate": receipt.duplicate, **receipt.detail}
            # Also when a newer version superseded this one meanwhile: the destination accepted
            # it, so the store says so and keeps the receipt (Store.delivery_done).
            settled = await hub.db(hub.store.delivery_done, pk, name, row.state, accepted)
            hub.settled(row, settled)
            hub.observe_stage("deliver", time.perf_counter() - started)
            settled_here = True
        except st.StateConflict:
            pass  # the record moved on (a newer version) while this job was decided: its job is gone
        except hub.store.unavailable as exc:
            # The database, not the delivery, failed: the job's lease runs out and it is sent
            # again (the destination's idempotency makes a repeat harmless).
            hub.log.warning("store.unavailable", task="deliver", destination=name, pk=pk, error=str(exc))
        except asyncio.CancelledError:
            # Stopped mid-send: the job goes back (the destination's idempotency makes a
            # re-send of a delivery that did arrive harmless).
            await asyncio.shield(hub.db(hub.store.release_delivery, pk, hub.owner, name))
            raise
        finally:
            self.active -= 1
            # A job retried later changes when the loop must look next; a freed slot matters
            # only when jobs may be waiting for one.
            if self._full or not settled_here:
                self.wake.set()

    async def _due(self, pk: int) -> tuple[st.Row | None, int | None]:
        """Record ``pk`` and the version this destination holds, if its job still stands: a
        record that moved on (a newer version) loses its job, one the destination already holds
        a newer version of is settled as superseded; both give ``(None, None)``."""
        hub, name = self.hub, self.name
        row = await hub.db(hub.store.get, pk)
        if row.state != hub.last_signed_state:
            await hub.db(hub.store.drop_delivery, pk, name)
            return None, None
        held = await hub.db(hub.store.sent_version, row.record_id, name)
        if held is not None and held[0] > row.version:
            settled = await hub.db(hub.store.delivery_given_up, pk, name, row.state,
                                   f"{name} already holds version {held[0]}", superseded=True)
            hub.settled(row, settled)
            return None, None
        return row, held[0] if held else None

    async def _give_up(self, row: st.Row, reason: str) -> None:
        hub = self.hub
        settled = await hub.db(hub.store.delivery_given_up, row.id, self.name, row.state, reason)
        hub.count_dead_letter(self.name)
        hub.log.warning("delivery.dead_letter", record_id=row.record_id, version=row.version,
                        destination=self.name, adapter=row.adapter, school_code=row.school_code, error=reason)
        hub.settled(row, settled)

    async def _sent(self, request: Awaitable[T], failed: Callable[[DeliveryError], Awaitable[None]]) -> T | None:
        """What one request to the destination answered, the breaker told; None once ``failed``
        has dealt with its ``DeliveryError``."""
        try:
            answer = await request
        except DeliveryError as exc:
            await failed(exc)
            return None
        await self._answered()
        return answer

    async def _answered(self) -> None:
        """The destination answered: the breaker closes. At an outage's end it counts what waited
        for it (the answered request's jobs are still there)."""
        self.breaker.success(await self.hub.db(self.hub.store.outbox_size) if self.breaker.is_open else None)

    async def _failed(self, row: st.Row, attempts: int, exc: DeliveryError) -> None:
        hub = self.hub
        reason = str(exc)
        if exc.conflict:
            await self._answered()
            held = exc.held_version
            if held is None:
                try:
                    held = await self.adapter.held_version(row.record_id)
                except DeliveryError:
                    held = None
            if held is None:
                # Without knowing what the destination holds, the safe move is an operator's.
                await self._give_up(row, f"version conflict: {reason}")
                return
            new_pk = await hub.db(hub.store.reissue, row.id, row.state, held,
                                  f"{self.name} holds version {held}; sending as the next version", self.name)
            hub.log.warning("delivery.reconciled", record_id=row.record_id, held_version=held, destination=self.name,
                            old_version=row.version, adapter=row.adapter, school_code=row.school_code)
            hub.enqueue(new_pk, lc.RECEIVED)
            return
        await self._not_delivered([row], attempts, exc)

    async def _not_delivered(self, rows: list[st.Row], attempts: int, exc: DeliveryError) -> None:
        """One request carrying ``rows`` failed (not a conflict): a refusal dead-letters them, a
        transient failure counts once toward the breaker and each is tried again later."""
        hub = self.hub
        reason = str(exc)
        if exc.permanent:
            # A refusal is an answer: the destination is up (a probe that meets one ends the
            # outage instead of holding the probe slot for ever).
            await self._answered()
            for row in rows:
                await self._give_up(row, f"refused by {self.name}: {reason}")
            return
        was_open = self.breaker.is_open
        opening = not was_open and self.breaker.failures + 1 >= self.breaker.threshold
        self.breaker.failure(rows[0].record_id, reason, await hub.db(hub.store.outbox_size) if opening else None)
        if was_open:
            # A failed probe during an outage says nothing about these records: no attempt
            # counted, so an hour-long outage dead-letters nothing.
            for row in rows:
                await hub.db(hub.store.retry_later, row.id, reason, utc_after(self.policy.breaker_probe_seconds),
                             False, self.name)
            return
        attempts += 1
        if attempts >= self.policy.max_attempts:
            for row in rows:
                await self._give_up(row, f"gave up after {attempts} attempts: {reason}")
            return
        delay = self.backoff.seconds(attempts, exc.retry_after)
        for row in rows:
            await hub.db(hub.store.retry_later, row.id, reason, utc_after(delay), True, self.name)
        hub.count_retry(self.name)
        if not self.breaker.is_open:  # during an outage the breaker logs once, not every retry
            row = rows[0]
            hub.log.info("delivery.retry", record_id=row.record_id, adapter=row.adapter, destination=self.name,
                         school_code=row.school_code, attempt=attempts, in_seconds=round(delay, 2), error=reason,
                         **({"records": len(rows)} if len(rows) > 1 else {}))
