"""Delivery to a destination that takes a class at a time: class packages, per-transcript cancels, recalls.

A route whose adapter implements ``deliver_package`` (the Ministry's transcript store) gets this
worker instead of one request per record. Its jobs are the same outbox jobs, one per record
version (so crash safety, versions, retries, the breaker and dead letters are the outbox's), but
it sends them a class at a time:

- the jobs it claims are grouped by class (school, school year, class name); a class waits while
  any version of it is still in the signing chain (``Store.class_in_signing``), so a class
  signed in one sitting goes as one package, not one per transcript;
- each class becomes a package whose manifest the Department signs (``Hub.sign_package``:
  ``hub.documents.package``, the signer named by ``department.signer``); the package and every
  transcript's receipt are stored in one transaction (``Store.package_delivered``). The package
  id follows from the class and its versions, so a package re-sent after a crash is answered as a
  duplicate with the original receipts;
- a ``CANCEL`` version (an operator's cancel, or the school's software deleting a transcript) is
  not packaged: the adapter's ``cancel`` withdraws the version the destination holds, with the
  reason;
- a recall an operator asked for (``Store.request_recall``) is sent by this worker, so one asked
  during an outage goes when the destination is back.

With several hub processes on one PostgreSQL database, two workers claiming at the same moment
may split a class into two packages; each is valid, and the store holds each transcript once.

A refused package dead-letters every transcript in it with the store's reasons (each names the
transcript); an operator replays them once fixed. A transient failure counts once toward the
route's breaker and the whole class is tried again later.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from typing import Any

from hub import lifecycle as lc
from hub import store as st
from hub.contracts import DeliveryError, PluginError
from hub.documents.package import PackageItem
from hub.engine.outbox import RouteOutbox, utc_after

# How many due jobs one claim takes: a class's jobs must come together to make one package.
CLAIM = 2000
# How long a class's jobs wait before looking again whether the class is still being signed.
CLASS_WAIT_SECONDS = 2.0
# How often a recall refused for a transient reason is tried again.
RECALL_RETRY_SECONDS = 30.0


class PackageRouteOutbox(RouteOutbox):
    """The delivery worker of a route whose destination takes class packages."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._recall_not_before: dict[str, float] = {}
        self._requests = 0  # requests sent to the destination (a probe must send one, or free its slot)

    def _claim_size(self, free: int) -> int:
        return CLAIM

    def _jobs(self, due: list[tuple[int, int]]) -> list[Coroutine[Any, Any, None]]:
        return [self._deliver_classes(due)]

    async def _deliver_classes(self, due: list[tuple[int, int]]) -> None:
        hub, name = self.hub, self.name
        self.active += 1
        requests = self._requests
        try:
            # Grouped by class from a light read: a class that still waits for signatures is
            # postponed without its transcripts' documents being read.
            known = await hub.db(hub.store.classes_of, [pk for pk, _ in due])
            classes: dict[tuple[str, str, str], list[tuple[int, int]]] = {}
            for pk, attempts in due:
                if pk not in known:
                    continue
                if known[pk][0] == "CANCEL":  # withdrawn alone, never waiting for its class
                    if not (self.breaker.is_open and self._requests > requests):  # a probe is one request
                        row, held = await self._due(pk)
                        if row is not None:
                            await self._cancel(row, attempts, held)
                    continue
                classes.setdefault(known[pk][1:], []).append((pk, attempts))
            for (school, year, class_name), jobs in classes.items():
                if await hub.db(hub.store.class_in_signing, school, year, class_name, self._in_signing()):
                    await hub.db(hub.store.postpone, [pk for pk, _ in jobs], name, utc_after(CLASS_WAIT_SECONDS))
                    continue
                members = []
                for pk, attempts in jobs:
                    if self.breaker.is_open and self._requests > requests:
                        break  # a probe is one request: the other jobs wait for its outcome
                    row, _ = await self._due(pk)
                    if row is not None:
                        members.append((row, attempts))
                if members and not (self.breaker.is_open and self._requests > requests):
                    await self._deliver_package(members)
        except st.StateConflict:
            pass  # a record moved on while this class was decided: its job is gone
        except hub.store.unavailable as exc:
            # The leases run out and the jobs are claimed again (the package id makes a re-send harmless).
            hub.log.warning("store.unavailable", task="deliver", destination=name, error=str(exc))
        finally:
            if self.breaker.probing and self._requests == requests:
                self.breaker.probing = False  # every class waited: the probe slot is free again
            # Whatever still holds this worker's lease (not reached, or stopped mid-send) goes
            # back; decided jobs are gone or already released, so this touches only those.
            try:
                await asyncio.shield(self._release([pk for pk, _ in due]))
            except hub.store.unavailable:
                pass
            self.active -= 1
            self.wake.set()

    async def _release(self, pks: list[int]) -> None:
        for pk in pks:
            await self.hub.db(self.hub.store.release_delivery, pk, self.hub.owner, self.name)

    def _in_signing(self) -> list[str]:
        """The states of a version still on its way to the last signature."""
        roles = self.hub.roles
        return [lc.RECEIVED, lc.NORMALIZED, lc.IDENTITY_CLEARED, lc.RENDERED, *(lc.signed(r) for r in roles[:-1])]

    async def _deliver_package(self, members: list[tuple[st.Row, int]]) -> None:
        hub, name = self.hub, self.name
        started = time.perf_counter()
        rows = [row for row, _ in members]
        attempts = max(a for _, a in members)
        try:
            package = await hub.sign_package([
                PackageItem(row.record_id, row.version, row.xml or b"", row.pdf or b"", row.verify_code or "")
                for row in rows])
        except ValueError as exc:  # PackageError: the message names the transcript
            for row in rows:
                await self._give_up(row, f"no class package: {exc}")
            return
        except PluginError as exc:  # the Department's signer (no key, revoked…): fixed, then replayed
            for row in rows:
                await self._give_up(row, f"the Department's signature: {exc}")
            return
        for row in rows:
            await hub.db(hub.store.delivery_attempted, row.id, row.record_id, row.version, name)
        self._requests += 1
        receipt = await self._sent(self.adapter.deliver_package(package),
                                   lambda exc: self._not_delivered(rows, attempts, exc))
        if receipt is None:
            return
        outcomes = []
        for row in rows:
            own = receipt.transcripts.get((row.record_id, row.version))
            outcomes.append((row.id, row.state, {
                "receipt_id": own.receipt_id if own else receipt.receipt_id,
                "received_at": own.received_at if own else receipt.received_at,
                "duplicate": own.duplicate if own else receipt.duplicate,
                "package_id": package.package_id, "package_receipt_id": receipt.receipt_id}))
        facts = {"package_id": package.package_id, "school_code": package.school_code,
                 "class_name": package.class_name, "school_year": package.school_year}
        accepted = {"receipt_id": receipt.receipt_id, "received_at": receipt.received_at,
                    "duplicate": receipt.duplicate}
        settled = await hub.db(hub.store.package_delivered, name, facts, accepted, outcomes)
        for row, state in zip(rows, settled):
            hub.settled(row, state)
        hub.log.info("delivery.package", destination=name, package_id=package.package_id,
                     school_code=package.school_code, transcripts=len(rows), duplicate=receipt.duplicate)
        hub.observe_stage("deliver", time.perf_counter() - started)

    async def _cancel(self, row: st.Row, attempts: int, held: int | None) -> None:
        """A ``CANCEL`` version: withdraw the version the destination holds, with the reason."""
        hub, name = self.hub, self.name
        if held is None:
            # Never delivered there: nothing to withdraw, and this version is what it holds now.
            settled = await hub.db(hub.store.delivery_done, row.id, name, row.state,
                                   {"receipt_id": "", "received_at": "", "duplicate": False,
                                    "note": f"{name} held no version to cancel"})
            hub.settled(row, settled)
            return
        reason = row.reason or "the school's software withdrew this transcript (event CANCEL)"
        await hub.db(hub.store.delivery_attempted, row.id, row.record_id, row.version, name)
        self._requests += 1
        try:
            receipt = await self.adapter.cancel(row.record_id, held, reason)
        except DeliveryError as exc:
            await self._not_delivered([row], attempts, exc)
            return
        self.breaker.success()
        settled = await hub.db(hub.store.delivery_done, row.id, name, row.state,
                               {"receipt_id": receipt.receipt_id, "received_at": receipt.received_at,
                                "duplicate": receipt.duplicate, "cancelled_version": held})
        hub.settled(row, settled)

    async def _before_claim(self) -> None:
        """Send the recalls operators asked for (each package once, retried while the
        destination cannot answer)."""
        hub, name = self.hub, self.name
        for package in await hub.db(hub.store.recalls_due, name):
            if time.monotonic() < self._recall_not_before.get(package.package_id, 0.0) or not self.breaker.allow():
                continue
            self._requests += 1
            try:
                receipt = await self.adapter.recall(package.package_id, package.reason or "")
            except DeliveryError as exc:
                if exc.permanent:
                    await hub.db(hub.store.recall_refused, package.package_id, name, str(exc))
                    hub.log.warning("package.recall_refused", destination=name, package_id=package.package_id,
                                    error=str(exc))
                else:
                    self.breaker.failure(package.package_id, str(exc))
                    self._recall_not_before[package.package_id] = time.monotonic() + RECALL_RETRY_SECONDS
                continue
            self.breaker.success()
            await hub.db(hub.store.recall_done, package.package_id, name,
                         {"receipt_id": receipt.receipt_id, "received_at": receipt.received_at,
                          "duplicate": receipt.duplicate})
            hub.log.warning("package.recalled", destination=name, package_id=package.package_id,
                            school_code=package.school_code, transcripts=len(package.members))
