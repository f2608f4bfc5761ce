"""The identity stage: the people a record names are checked before anything is rendered or signed.

With ``identity:`` configured, normalised records wait here. The stage claims a batch of them,
asks the identity provider (``hub.contracts.IdentityProvider``) about each student — and each
signer named on the record when ``identity.check_signers`` is on — in one call, and moves each
record on:

- every person verified → ``identity_cleared`` (rendering takes it from there);
- a person missing a personal id, not found, or differing in name, birth date or gender →
  ``blocked_identity``, with one reason per field in Vietnamese and English; a changed version
  from the vendor supersedes it and is checked again, and so is a replayed one;
- the provider cannot say now → the record stays ``normalized`` and is asked about again. A
  circuit breaker turns an outage into one probe per interval, logged once when it starts and
  once when it ends; nothing fails or is blocked because the service was down.

Verified people are remembered in the store (``identity_cache``) for ``identity.cache_days``
under a hash of what was asked, so an unchanged student is not asked about on every version
and a changed name or birth date is asked about at once. Mismatches are never remembered: the
school may fix the population record rather than its own, and a replay must ask again.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import time
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hub import lifecycle as lc
from hub import store as st
from hub.config import IdentitySection
from hub.contracts import IdentityFinding, IdentityProvider, IdentityResult, Person
from hub.engine.outbox import CircuitBreaker, utc_after

if TYPE_CHECKING:
    from hub.engine.pipeline import Hub

F = IdentityFinding
_DB = "CSDL quốc gia về dân cư"
_DB_EN = "the national population database"
MISSING = ("thiếu số định danh cá nhân", "the personal id is missing")
REASONS: dict[IdentityFinding, tuple[str, str]] = {
    F.NOT_FOUND: (f"không tìm thấy công dân có số định danh (và họ tên) này trong {_DB}",
                  f"no citizen with this personal id (and name) in {_DB_EN}"),
    F.NAME_DIFFERS: (f"họ và tên khác với {_DB}", f"the name differs from {_DB_EN}"),
    F.BIRTH_DATE_DIFFERS: (f"ngày sinh khác với {_DB}", f"the birth date differs from {_DB_EN}"),
    F.GENDER_DIFFERS: (f"giới tính khác với {_DB}", f"the gender differs from {_DB_EN}"),
}
# The order reasons are listed in, whatever order the provider's set comes in.
_ORDER = (F.NOT_FOUND, F.NAME_DIFFERS, F.BIRTH_DATE_DIFFERS, F.GENDER_DIFFERS)
ROLE_LABELS = {"student": ("học sinh", "student"), "homeroom_teacher": ("giáo viên chủ nhiệm", "homeroom teacher"),
               "principal": ("hiệu trưởng", "principal")}


@dataclass(frozen=True)
class Subject:
    """One person a record names, with the central-format field of each thing checked."""
    role: str                       # student | homeroom_teacher | principal
    person: Person | None           # None: the record gives no personal id
    id_field: str
    name_field: str
    birth_field: str | None = None
    gender_field: str | None = None

    def field_of(self, finding: IdentityFinding) -> str:
        return {F.NAME_DIFFERS: self.name_field, F.BIRTH_DATE_DIFFERS: self.birth_field,
                F.GENDER_DIFFERS: self.gender_field}.get(finding) or self.id_field


def subjects(record: dict[str, Any], roles: Iterable[str], check_signers: bool) -> list[Subject]:
    """The people to verify on a central-format record (``model_dump(mode="json")``): the student,
    and the signers of ``roles`` when ``check_signers``."""
    student = record["student"]
    pid = student.get("personal_id")
    out = [Subject(
        "student",
        Person(pid, student["full_name"], dt.date.fromisoformat(student["birth_date"]), student.get("gender"))
        if pid else None,
        "student.personal_id", "student.full_name", "student.birth_date", "student.gender")]
    if check_signers:
        signers = record["signatories"]
        for role in roles:
            if role in ("homeroom_teacher", "principal"):
                spid = signers.get(f"{role}_personal_id")
                out.append(Subject(role, Person(spid, signers[f"{role}_name"]) if spid else None,
                                   f"signatories.{role}_personal_id", f"signatories.{role}_name"))
    return out


def reason(field: str, vi: str, en: str) -> str:
    """One blocked record's reason line: the field, then Vietnamese / English (no value quoted)."""
    return f"{field}: {vi} / {en}"


def parse_reason(line: str) -> tuple[str, str, str]:
    """``(field, Vietnamese, English)`` of a ``reason`` line."""
    field, _, text = line.partition(": ")
    vi, _, en = text.partition(" / ")
    return field, vi, en


def reasons_for(subject: Subject, result: IdentityResult | None) -> list[str]:
    """The reason lines for one person (``result`` None: the personal id is missing)."""
    if result is None:
        return [reason(subject.id_field, *MISSING)]
    return [reason(subject.field_of(f), *REASONS[f]) for f in _ORDER if f in result.findings]


def person_key(provider: str, person: Person) -> str:
    """What a cache entry is keyed by: a hash of the provider and everything asked or compared."""
    name = " ".join(unicodedata.normalize("NFC", person.full_name).split())
    birth = person.birth_date.isoformat() if person.birth_date else ""
    text = "\x00".join((provider, person.personal_id, name, birth, str(person.gender or 0)))
    return hashlib.sha256(text.encode()).hexdigest()



class IdentityStage:
    """The identity worker of one hub: claims normalised records in batches and moves them on."""

    def __init__(self, hub: "Hub", provider: IdentityProvider, config: IdentitySection):
        self.hub = hub
        self.provider = provider
        self.config = config
        self.breaker = CircuitBreaker(config.name, config.breaker_threshold, config.breaker_probe_seconds,
                                      hub.log, kind="identity")
        self.wake = asyncio.Event()
        self.asked = 0          # people sent to the provider (tests and metrics read it)
        self._provider_key = f"{config.type}/{config.name}"

    async def run(self) -> None:
        """Until cancelled: check what is waiting; sleep until woken, a probe is due or a poll."""
        while True:
            try:
                await self._run()
            except self.hub.store.unavailable as exc:  # the database is away: try again shortly
                self.hub.log.warning("store.unavailable", task="identity", error=str(exc))
                await asyncio.sleep(1.0)

    async def _run(self) -> None:
        hub = self.hub
        while True:
            self.wake.clear()
            if self.breaker.is_open and not self.breaker.allow():
                await asyncio.sleep(max(self.breaker.wait_seconds(), 0.01))
                continue
            probing = self.breaker.is_open
            limit = 1 if probing else self.config.batch_size
            pks = await hub.db(hub.store.claim, [lc.NORMALIZED], hub.owner, hub.lease_seconds, limit)
            if not pks:
                self.breaker.probing = False
                try:
                    await asyncio.wait_for(self.wake.wait(), 1.0)
                except asyncio.TimeoutError:
                    pass
                continue
            started = time.perf_counter()
            answered = await self._check(pks, fill=0 if probing else limit)
            hub.observe_stage("identity", time.perf_counter() - started)
            if probing:
                # A probe whose people were all cached (or had no id) asked nothing: the next
                # record probes instead, rather than the breaker waiting on an answer forever.
                self.breaker.probing = False
            if not answered and not self.breaker.is_open:
                # Not woken early: records arriving during an outage must not turn into a storm.
                await asyncio.sleep(self.config.retry_seconds)

    async def _check(self, pks: list[int], fill: int = 0) -> bool:
        """Check one claimed batch, first topped up to ``fill`` records if more arrive within
        ``batch_window``; false if the provider left anyone unanswered."""
        hub = self.hub
        async with hub.working_on(pks) as held:
            if len(held.pks) < fill and self.config.batch_window:
                # Records arrive a page at a time, normalised a few at once: a moment's wait
                # turns a trickle of single checks into one batch.
                await asyncio.sleep(self.config.batch_window)
                held.add(await hub.db(hub.store.claim, [lc.NORMALIZED], hub.owner, hub.lease_seconds,
                                      fill - len(held.pks)))
            pks = held.pks
            rows = [row for row in [await hub.db(hub.store.get, pk) for pk in pks] if row.state == lc.NORMALIZED]
            people: dict[int, list[Subject]] = {}
            for row in rows:
                # A recall carries no new identity to vouch for: it goes on as it is.
                people[row.id] = [] if row.event == "CANCEL" else subjects(
                    row.normalized, hub.roles, self.config.check_signers)
            keys = {s.person: person_key(self._provider_key, s.person)
                    for subs in people.values() for s in subs if s.person is not None}
            now = utc_after()
            known = await hub.db(hub.store.identity_known, set(keys.values()), now)
            ask = {key: person for person, key in keys.items() if key not in known}
            results = {key: IdentityResult(frozenset({F(outcome)})) for key, outcome in known.items()}
            results.update(await self._ask(ask, [r.record_id for r in rows]))
            answered = all(r.available for r in results.values())
            for row in rows:
                await self._settle(row, people[row.id], keys, results)
            if self.config.cache_days > 0:
                verified = [(key, F.VERIFIED.value) for key in ask if results[key].verified]
                if verified:
                    await hub.db(hub.store.identity_remember, verified, now,
                                  utc_after(self.config.cache_days * 86400))
            return answered

    async def _ask(self, ask: dict[str, Person], record_ids: list[str]) -> dict[str, IdentityResult]:
        """The provider's answers by cache key; the breaker learns whether it answered at all."""
        if not ask:
            return {}
        self.asked += len(ask)
        try:
            answers = await self.provider.verify(list(ask.values()))
            if len(answers) != len(ask):
                raise ValueError(f"answered {len(answers)} of {len(ask)} people")
        except Exception as exc:  # a provider bug must not lose records: they wait like in an outage
            detail = f"provider error: {type(exc).__name__}"
            self.hub.log.error("identity.provider_error", provider=self.config.name, error=detail)
            answers = [IdentityResult.of(F.UNAVAILABLE, detail=detail)] * len(ask)
        if any(r.available for r in answers):
            self.breaker.success()
        else:
            self.breaker.failure(record_ids[0], next((r.detail for r in answers if r.detail), "no answer"))
            if self.breaker.is_open:
                self.breaker.affected.update(record_ids)
        return dict(zip(ask, answers))

    async def _settle(self, row: st.Row, subs: list[Subject], keys: dict[Person, str],
                      results: dict[str, IdentityResult]) -> None:
        hub = self.hub
        errors: list[str] = []
        for sub in subs:
            result = None if sub.person is None else results[keys[sub.person]]
            if result is not None and not result.available:
                return  # cannot say now: the record waits at normalized
            if result is None or not result.verified:
                errors += reasons_for(sub, result)
        if errors:
            await hub.move(row, lc.BLOCKED_IDENTITY, errors=errors,
                            detail="the people on the record do not match the population database")
        else:
            await hub.move(row, lc.IDENTITY_CLEARED,
                            detail="recall: nothing to verify" if row.event == "CANCEL" else
                            f"{len(subs)} person(s) verified")
