"""The adapter conformance kit: the battery every pull adapter passes against its simulator.

In the spirit of Airbyte's connector acceptance tests: a vendor does not write these tests, it
runs them. The kit starts the adapter's own simulator (``Adapter.simulator``) on loopback, once
per check, and proves the things the hub relies on: settings fail loudly, ``check()`` tells
healthy from broken without leaking secrets, a pull returns every record exactly once across
page boundaries, auth expiry and transient faults, an incremental pull returns what changed,
and every record normalises or is refused with a field named.

From a vendor's test suite::

    from hub.kit.conformance import assert_conformant

    def test_conformance():
        # Fast retries: the kit injects 5xx, 429 and dropped connections.
        assert_conformant("myvendor", settings_overrides={"backoff_seconds": 0.01})

or one pytest test per check::

    @pytest.mark.parametrize("check", hub.kit.conformance.CHECKS)
    def test_conformance(check):
        assert_conformant("myvendor", checks=[check])

From a shell: ``hocba-hub conformance --adapter myvendor [--config hub.yaml]``.

What the kit needs from the simulator (a ``hub.contracts.Simulator``):

- ``Simulator(records=N, invalid=M, seed=S)`` serves ``seeded(i)`` (by default
  ``hub.kit.synthetic.transcript(i, S)``) for ``i < N`` and ``M`` records made with
  ``hub.kit.synthetic.invalid_transcript``, in the vendor's shape. The kit compares what the
  adapter normalises with those transcripts.
- ``faults`` is a ``hub.contracts.Faults`` and honours ``outage``, ``fail_next_n``,
  ``rate_limit_next_n`` (with ``retry_after_seconds``) and ``drop_next_n_connections``.
- ``page_size``: the page size its ``adapter_settings()`` ask for (``None``: no paging).
- ``expire_tokens()`` revokes issued credentials (the base no-op skips the auth-expiry check).
- ``update(index) -> str`` changes valid record ``index`` so that the next incremental pull
  must return it, and returns its ``source_id``. Without it the incremental check is skipped,
  reported as not supported.

Credentials are the settings typed ``SecretStr``: the kit swaps them for wrong ones and checks
that no secret, right or wrong, shows in a ``Health.detail``.
"""

from __future__ import annotations

import asyncio
import secrets
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import SecretStr, ValidationError
from pydantic_core import PydanticUndefined

from hub.contracts import (
    Adapter,
    Faults,
    Health,
    Page,
    PluginContext,
    PluginError,
    RawRecord,
    Simulator,
)
from hub.engine.normalize import Envelope, normalize
from hub.kit.synthetic import INVALID_KINDS
from hub.plugins import resolve
from hub.records import parse_transcript

__all__ = [
    "CHECKS", "CheckResult", "ConformanceError", "ConformanceReport",
    "run_conformance", "run_conformance_async", "assert_conformant",
]

SEED = 3                      # not 0: an adapter must not work only for the demo's seed
DEFAULT_PAGE = 10             # record counts for a simulator that does not page
DEFAULT_TIMEOUT = 60.0        # seconds one check may take before it fails as hung


class ConformanceError(Exception):
    """The kit cannot run at all: unknown adapter, no simulator, not a pull adapter, bad config."""


@dataclass(frozen=True)
class CheckResult:
    """One row of the report. A skipped check counts as passed; ``detail`` says why it was skipped."""
    name: str
    passed: bool
    detail: str = ""
    skipped: bool = False

    @property
    def status(self) -> str:
        return "SKIP" if self.skipped else ("PASS" if self.passed else "FAIL")


@dataclass
class ConformanceReport:
    """Every check's result for one adapter; ``ok`` only if none failed."""
    adapter: str
    simulator: str
    rows: list[CheckResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.rows) and all(r.passed for r in self.rows)

    @property
    def failed(self) -> list[CheckResult]:
        return [r for r in self.rows if not r.passed]

    def row(self, name: str) -> CheckResult:
        return next(r for r in self.rows if r.name == name)

    def table(self) -> str:
        """A plain-text pass/fail table, one check per line, and a verdict."""
        width = max([len("check")] + [len(r.name) for r in self.rows])
        lines = [f"conformance of adapter {self.adapter!r} against {self.simulator}", "",
                 f"{'check':<{width}}  result  detail"]
        lines += [f"{r.name:<{width}}  {r.status:<6}  {r.detail}".rstrip() for r in self.rows]
        failed, skipped = len(self.failed), sum(r.skipped for r in self.rows)
        # Worded so no CI log scanner mistakes it for a test runner's "N passed, N failed" line.
        verdict = (f"{self.adapter} is conformant: every check passed ({len(self.rows)} run, {skipped} skipped)"
                   if self.ok else f"{self.adapter} is NOT conformant: {failed} of {len(self.rows)} checks failed")
        return "\n".join(lines + ["", verdict])

    __str__ = table


class _Fail(Exception):
    """A check's verdict: the message is the row's detail."""


class _Skip(Exception):
    """The check does not apply to this simulator; the message says why."""


def _expect(condition: Any, message: str) -> None:
    if not condition:
        raise _Fail(message)


def _few(items: Iterable[Any], n: int = 3) -> str:
    items = list(items)
    shown = ", ".join(str(i) for i in items[:n])
    return shown + (f" … ({len(items)} in all)" if len(items) > n else "")


@dataclass
class _Read:
    pages: list[Page]
    cursor: str | None

    @property
    def records(self) -> list[RawRecord]:
        return [r for p in self.pages for r in p.records]

    @property
    def ids(self) -> list[str]:
        return [r.source_id for r in self.records]

    def payloads(self) -> dict[str, bytes]:
        return {r.source_id: r.payload for r in self.records}

    def expect_each_once(self, expected: int) -> None:
        dupes = [i for i, n in Counter(self.ids).items() if n > 1]
        _expect(not dupes, f"returned {len(dupes)} record(s) more than once: {_few(dupes)}")
        _expect(len(self.ids) == expected,
                f"returned {len(self.ids)} record(s) in {len(self.pages)} page(s), {expected} were seeded")


def _wrong_value(value: Any) -> Any:
    """A value of the wrong type for a setting whose valid value is ``value``."""
    if isinstance(value, bool):
        return "maybe-not"
    if isinstance(value, (int, float)):
        return "not-a-number"
    if isinstance(value, dict):
        return "not-a-mapping"
    if isinstance(value, (list, tuple, set)):
        return 12345
    return ["a", "list"]   # strings, secrets, URLs, paths


def _mask(text: str, hidden: list[str]) -> str:
    for secret in hidden:
        text = text.replace(secret, "***")
    return text


def _expect_health(health: Any, what: str, hidden: list[str], ok: bool) -> str:
    _expect(isinstance(health, Health), f"check() {what} returned {type(health).__name__}, not a Health")
    detail = _mask(str(health.detail), hidden)
    _expect(health.ok is ok, f"check() {what} reported ok={health.ok}" + (f": {detail}" if detail else ""))
    if not ok:
        _expect(detail.strip(), f"check() {what} is unhealthy but says nothing in detail")
    _expect(detail == health.detail, f"check() {what}: a secret shows in detail: {detail!r}")
    return detail


def _error_lines(exc: ValidationError) -> list[str]:
    return [f"{'.'.join(str(p) for p in e['loc']) or '(settings)'}: {e['msg']}" for e in exc.errors(include_url=False)]


def _secrets_of(settings: Any) -> list[str]:
    values = [getattr(settings, name) for name in type(settings).model_fields]
    return [v.get_secret_value() for v in values if isinstance(v, SecretStr) and v.get_secret_value()]


def _secret_fields(settings_cls: type) -> list[str]:
    def is_secret(annotation: Any) -> bool:
        return annotation is SecretStr or SecretStr in getattr(annotation, "__args__", ())
    return [name for name, f in settings_cls.model_fields.items() if is_secret(f.annotation)]


class _Kit:
    def __init__(self, name: str, cls: type[Adapter], simulator: type[Simulator], *,
                 extra: dict[str, Any], overrides: dict[str, Any], data_dir: Path):
        self.name, self.cls, self.sim_cls = name, cls, simulator
        self.extra, self.overrides, self.data_dir = extra, overrides, data_dir
        # Read from an instance: a simulator may set it in __init__. Record counts depend on it.
        self.page_size: int | None = simulator(records=0, invalid=0, seed=SEED).page_size
        self._normalizer: Adapter | None = None

    @property
    def pages(self) -> int:
        return self.page_size or DEFAULT_PAGE

    # --- plumbing ----------------------------------------------------------------------------

    @asynccontextmanager
    async def serving(self, records: int = 0, invalid: int = 0) -> AsyncIterator[Simulator]:
        sim = self.sim_cls(records=records, invalid=invalid, seed=SEED)
        await sim.start()
        try:
            yield sim
        finally:
            await sim.stop()

    def settings(self, sim: Simulator, **patch: Any) -> dict[str, Any]:
        # The file's extras, then what points at the simulator, then the caller's overrides.
        return {**self.extra, **sim.adapter_settings(), **self.overrides, **patch}

    @asynccontextmanager
    async def adapter(self, sim: Simulator, **patch: Any) -> AsyncIterator[Adapter]:
        settings = self.cls.Settings.model_validate(self.settings(sim, **patch))
        adapter = self.cls(settings, PluginContext(f"conformance-{self.name}", self.data_dir))
        try:
            await adapter.open()
            yield adapter
        finally:
            await adapter.close()

    async def read(self, sim: Simulator, cursor: str | None = None, *,
                   after_page: Callable[[int], None] | None = None) -> _Read:
        """One pull with a fresh adapter, as a restarted hub would do it."""
        async with self.adapter(sim) as adapter:
            pages: list[Page] = []
            async for page in adapter.fetch(cursor):
                _expect(isinstance(page, Page), f"fetch() yielded {type(page).__name__}, not a Page")
                for raw in page.records:
                    _expect(isinstance(raw, RawRecord) and isinstance(raw.source_id, str) and raw.source_id
                            and isinstance(raw.payload, bytes),
                            f"fetch() yielded {raw!r:.80}: expected RawRecord(source_id: str, payload: bytes)")
                pages.append(page)
                if after_page:
                    after_page(len(pages))
        return _Read(pages, pages[-1].cursor if pages else cursor)

    def normalize(self, raw: RawRecord) -> tuple[dict[str, Any] | None, list[str]]:
        """(central record, []) or (None, reasons), as the hub's normalise stage decides it."""
        from hub.store import record_id_for

        if self._normalizer is None:
            # As `hocba-hub normalize` builds it: normalising needs neither settings nor open().
            self._normalizer = self.cls(self.cls.Settings.model_construct(), PluginContext(self.name, self.data_dir))
        adapter = self._normalizer
        envelope = Envelope(record_id_for(self.name, raw.source_id), 1, "CANCEL" if raw.deleted else "NEW",
                            "2025-06-01T07:00:00")
        try:
            outcome = normalize(adapter, raw, envelope)
        except Exception as exc:
            raise _Fail(f"normalize({raw.source_id}) raised {type(exc).__name__}: {exc}; the hub quarantines "
                        "only ValueError (naming the field), KeyError and TypeError") from None
        if outcome.record is None:
            return None, list(outcome.errors)
        return outcome.record.model_dump(mode="json"), []

    @staticmethod
    async def health(adapter: Adapter, what: str, hidden: list[str], ok: bool) -> str:
        """``adapter.check()``'s detail, once it is a ``Health`` with ``ok`` and no secret in it."""
        try:
            health = await adapter.check()
        except Exception as exc:
            # The hub's /readyz would show a traceback type instead of a reason.
            raise _Fail(f"check() {what} raised {type(exc).__name__}: {_mask(str(exc), hidden)}; "
                        "return Health(False, reason) instead") from None
        return _expect_health(health, what, hidden, ok)

    # --- settings ----------------------------------------------------------------------------

    async def settings_required(self) -> str:
        try:
            self.cls.Settings.model_validate({})
        except ValidationError as exc:
            lines = _error_lines(exc)
            unnamed = [e for e in exc.errors() if not e["loc"]]
            _expect(not unnamed, f"{{}} was rejected, but not naming a field: {_few(lines)}")
            return f"{{}} rejected: {_few(lines)}"
        raise _Fail("Settings accepted an empty config {}: without a required setting an adapter "
                    "points nowhere, and a typo'd YAML section would start silently")

    async def settings_types(self) -> str:
        async with self.serving() as sim:
            base = self.settings(sim)
        self.cls.Settings.model_validate(base)  # the valid settings must pass before wrong ones can fail
        tried, accepted = [], []
        for name, info in self.cls.Settings.model_fields.items():
            value = base.get(name, info.default)
            if value is None or value is PydanticUndefined:
                continue
            wrong = _wrong_value(value)
            tried.append(name)
            try:
                self.cls.Settings.model_validate({**base, name: wrong})
            except ValidationError as exc:
                if any(e["loc"][:1] != (name,) for e in exc.errors()):
                    accepted.append(f"{name}={wrong!r} rejected naming {_few(_error_lines(exc), 1)}")
                continue
            accepted.append(f"{name} accepted {wrong!r}")
        _expect(tried, "Settings has no field to check")
        _expect(not accepted, "wrong-typed settings not rejected by name: " + "; ".join(accepted))
        return f"each rejected naming the field: {', '.join(tried)}"

    async def settings_unknown_key(self) -> str:
        async with self.serving() as sim:
            base = self.settings(sim)
        try:
            self.cls.Settings.model_validate({**base, "kit_unknown_setting": 1})
        except ValidationError as exc:
            _expect([e["loc"] for e in exc.errors()] == [("kit_unknown_setting",)],
                    f"rejected, but not naming the key: {_few(_error_lines(exc))}")
            return "kit_unknown_setting rejected"
        raise _Fail("an unknown key was accepted: a misspelt setting would be silently ignored "
                    "(derive Settings from hub.contracts.PluginSettings)")

    # --- check() -----------------------------------------------------------------------------

    async def check_healthy(self) -> str:
        async with self.serving(records=3) as sim, self.adapter(sim) as adapter:
            return await self.health(adapter, "against the running simulator", _secrets_of(adapter.settings), True)

    async def check_outage(self) -> str:
        self.expect_network()
        async with self.serving(records=3) as sim, self.adapter(sim) as adapter:
            hidden = _secrets_of(adapter.settings)
            sim.faults.outage = True
            detail = await self.health(adapter, "during an outage", hidden, False)
            sim.faults.outage = False
            await self.health(adapter, "once the outage ended", hidden, True)
            return f"unhealthy, then healthy again: {detail}"

    async def check_credentials(self) -> str:
        names = _secret_fields(self.cls.Settings)
        if not names:
            raise _Skip("no SecretStr setting, so the kit cannot tell which setting is a credential")
        wrong = {name: f"kit-wrong-{secrets.token_hex(6)}" for name in names}
        async with self.serving(records=3) as sim:
            hidden = _secrets_of(self.cls.Settings.model_validate(self.settings(sim))) + list(wrong.values())
            settings = self.cls.Settings.model_validate(self.settings(sim, **wrong))
            adapter = self.cls(settings, PluginContext(f"conformance-{self.name}", self.data_dir))
            what = f"with a wrong {', '.join(names)}"
            try:
                try:
                    await adapter.open()
                except PluginError as exc:
                    # Refusing to open with a clear reason is as good as an unhealthy check().
                    return "open() refused: " + _expect_health(Health(False, str(exc)), what, hidden, False)
                return "unhealthy: " + await self.health(adapter, what, hidden, False)
            finally:
                await adapter.close()

    # --- reads -------------------------------------------------------------------------------

    async def read_full(self) -> str:
        valid, invalid = 2 * self.pages + 3, len(INVALID_KINDS)
        async with self.serving(valid, invalid) as sim:
            result = await self.read(sim)
        result.expect_each_once(valid + invalid)
        return f"{valid + invalid} records ({invalid} invalid) in {len(result.pages)} page(s), each once"

    async def read_incremental(self) -> str:
        n = 2 * self.pages + 1
        async with self.serving(n) as sim:
            if not callable(getattr(sim, "update", None)):
                raise _Skip("not supported: the simulator has no update(index) to change a record")
            full = await self.read(sim)
            full.expect_each_once(n)
            _expect(full.cursor is not None, "the full read ended with cursor None: every poll would re-read everything")
            known = full.payloads()

            def only_unchanged_again(result: _Read, changed: list[str], what: str) -> None:
                again = {i: p for i, p in result.payloads().items() if i not in changed}
                strangers = [i for i in again if i not in known]
                _expect(not strangers, f"{what}: {len(strangers)} id(s) the full read never returned: {_few(strangers)}")
                altered = [i for i, p in again.items() if known[i] != p]
                _expect(not altered, f"{what}: {len(altered)} record(s) that did not change came back "
                                     f"different: {_few(altered)}")
                # A cursor may be inclusive: records at its very instant come again, unchanged,
                # and the hub drops them by content hash. More than a page of them is no cursor.
                _expect(len(again) <= self.pages, f"{what}: {len(again)} of {n} unchanged records "
                                                  "returned again: the cursor is not applied")

            quiet = await self.read(sim, full.cursor)
            only_unchanged_again(quiet, [], "from the saved cursor with nothing changed")

            ids = [sim.update(0), sim.update(n // 2)]
            _expect(all(isinstance(i, str) for i in ids),
                    f"simulator.update(index) returned {ids!r}: it must return the record's source_id")
            after = await self.read(sim, full.cursor)
            missing = [i for i in ids if i not in after.ids]
            _expect(not missing, f"from the saved cursor: {len(missing)} changed record(s) missing: {_few(missing)}")
            stale = [i for i in ids if after.payloads()[i] == known[i]]
            _expect(not stale, f"changed record(s) returned with their old payload: {_few(stale)}")
            only_unchanged_again(after, ids, "from the saved cursor after two changes")
            known.update(after.payloads())

            latest = await self.read(sim, after.cursor)
            only_unchanged_again(latest, [], "from the cursor after the changes")
        return (f"from the saved cursor: {len(quiet.ids)} unchanged record(s) re-read with nothing changed, "
                f"{len(after.ids)} after 2 changes (both included)")

    async def read_stable_ids(self) -> str:
        n = self.pages + 3
        async with self.serving(n, 2) as sim:
            first, second = await self.read(sim), await self.read(sim)
        first.expect_each_once(n + 2)
        moved = set(first.ids) ^ set(second.ids)
        _expect(not moved, f"source_id changed between two reads: {_few(sorted(moved))}")
        return f"{n + 2} source_ids identical in two reads"

    # --- normalize ---------------------------------------------------------------------------

    async def normalize_valid_or_named(self) -> str:
        valid, invalid = 8, len(INVALID_KINDS)   # 8: two records of each synthetic school and level
        async with self.serving(valid, invalid) as sim:
            result = await self.read(sim)
        result.expect_each_once(valid + invalid)
        good, bad = [], []
        for raw in result.records:
            record, reasons = self.normalize(raw)
            if record is not None:
                good.append(record)
                continue
            named = [line for line in reasons if line.strip() and not line.startswith("(record)")]
            _expect(named, f"{raw.source_id} was refused without naming a field: {_few(reasons) or 'no reason'}")
            bad.append(named[0].split(":")[0])
        _expect((len(good), len(bad)) == (valid, invalid),
                f"{len(good)} valid and {len(bad)} invalid, {valid} and {invalid} were seeded "
                f"(refused: {_few(bad)})")
        expected = {sim.seeded(i)["transcript_id"] for i in range(valid)}
        got = {r["transcript_id"] for r in good}
        _expect(got == expected, f"valid records are not the seeded transcripts: unexpected {_few(sorted(got - expected))}")
        return f"{valid} valid, {invalid} refused naming {', '.join(bad)}"

    async def normalize_round_trip(self) -> str:
        n = 8
        async with self.serving(n) as sim:
            result = await self.read(sim)
        envelope = {"record_id": "conformance", "event": "NEW", "version": 1, "updated_at": "2025-06-01T07:00:00"}
        expected = {}
        for i in range(n):
            model = parse_transcript({**sim.seeded(i), **envelope})
            expected[model.transcript_id] = model.model_dump(mode="json")
        diffs: list[str] = []
        for raw in result.records:
            record, reasons = self.normalize(raw)
            _expect(record is not None, f"valid record {raw.source_id} refused: {_few(reasons)}")
            want = expected.pop(record["transcript_id"], None)
            _expect(want is not None, f"{raw.source_id}: transcript_id {record['transcript_id']!r} was not seeded")
            record.update({k: want[k] for k in envelope})
            diffs += [f"{record['transcript_id']} {d}" for d in _diff(want, record)]
        _expect(not expected, f"seeded transcripts never read: {_few(sorted(expected))}")
        _expect(not diffs, f"normalised records differ from what the simulator encoded: {_few(diffs)}")
        return f"{n} records normalise to exactly the transcripts the simulator encoded"

    # --- paging, auth, faults ------------------------------------------------------------------

    async def paging(self, n: int, *, needs_pages: bool = False) -> str:
        if needs_pages and self.page_size is None:
            raise _Skip("the simulator does not page (page_size None)")
        async with self.serving(n) as sim:
            result = await self.read(sim)
        result.expect_each_once(n)
        if self.page_size:
            big = [len(p.records) for p in result.pages if len(p.records) > self.page_size]
            _expect(not big, f"Page(s) of {_few(big)} records with page_size {self.page_size}: the hub commits "
                             "page by page, so a Page must not gather several server pages")
        return f"{n} record(s) in {len(result.pages)} page(s), each once"

    async def auth_expiry(self) -> str:
        if self.sim_cls.expire_tokens is Simulator.expire_tokens:
            raise _Skip("the simulator issues no tokens (expire_tokens is the no-op default)")
        n = 3 * self.pages + 1
        async with self.serving(n) as sim:
            expired: list[int] = []

            def expire(page: int) -> None:
                if page == 1:
                    sim.expire_tokens()
                    expired.append(page)

            result = await self.read(sim, after_page=expire)
        result.expect_each_once(n)
        _expect(len(result.pages) > 1, "the read ended after one page, so tokens did not expire mid-read")
        return f"tokens revoked after page 1 of {len(result.pages)}; {n} records, each once"

    def expect_network(self) -> None:
        if not self.sim_cls.networked:
            raise _Skip("the source is not reached over a network (simulator.networked is False)")

    async def fault(self, name: str, value: int, *, retry_after: int | None = None) -> str:
        self.expect_network()
        n = self.pages + 3
        async with self.serving(n) as sim:
            _expect(isinstance(sim.faults, Faults), f"simulator.faults is a {type(sim.faults).__name__}, "
                                                    "not a hub.contracts.Faults")
            async with self.adapter(sim) as adapter:
                setattr(sim.faults, name, value)
                if retry_after is not None:
                    sim.faults.retry_after_seconds = retry_after
                started = time.monotonic()
                pages = [page async for page in adapter.fetch(None)]
                elapsed = time.monotonic() - started
            left = getattr(sim.faults, name)
        _expect(left == 0, f"the simulator never served the fault (faults.{name} is still {left}): fix the simulator")
        _Read(pages, None).expect_each_once(n)
        if retry_after is not None:
            _expect(elapsed >= retry_after * 0.9,
                    f"the read took {elapsed:.2f} s: the retry did not wait for Retry-After ({retry_after} s)")
        return f"faults.{name}={value}: {n} records, each once, in {elapsed:.2f} s"


def _diff(want: Any, got: Any, path: str = "") -> list[str]:
    """Paths where two JSON-like values differ, with both values."""
    if isinstance(want, dict) and isinstance(got, dict):
        out = []
        for key in sorted(set(want) | set(got)):
            out += _diff(want.get(key), got.get(key), f"{path}.{key}" if path else key)
        return out
    if isinstance(want, list) and isinstance(got, list) and len(want) == len(got):
        return [d for i, (w, g) in enumerate(zip(want, got)) for d in _diff(w, g, f"{path}[{i}]")]
    return [] if want == got else [f"{path}: expected {want!r}, got {got!r}"]


_CHECKS: list[tuple[str, Callable[[_Kit], Awaitable[str]]]] = [
    ("settings.required", _Kit.settings_required),
    ("settings.types", _Kit.settings_types),
    ("settings.unknown_key", _Kit.settings_unknown_key),
    ("check.healthy", _Kit.check_healthy),
    ("check.outage", _Kit.check_outage),
    ("check.credentials", _Kit.check_credentials),
    ("read.full", _Kit.read_full),
    ("read.incremental", _Kit.read_incremental),
    ("read.stable_ids", _Kit.read_stable_ids),
    ("normalize.valid_or_named", _Kit.normalize_valid_or_named),
    ("normalize.round_trip", _Kit.normalize_round_trip),
    ("paging.0", lambda kit: kit.paging(0)),
    ("paging.1", lambda kit: kit.paging(1)),
    ("paging.page_size", lambda kit: kit.paging(kit.pages, needs_pages=True)),
    ("paging.3xpage_size+1", lambda kit: kit.paging(3 * kit.pages + 1, needs_pages=True)),
    ("auth.expiry", _Kit.auth_expiry),
    ("faults.5xx", lambda kit: kit.fault("fail_next_n", 2)),
    ("faults.429", lambda kit: kit.fault("rate_limit_next_n", 1, retry_after=1)),
    ("faults.dropped", lambda kit: kit.fault("drop_next_n_connections", 1)),
]

CHECKS: tuple[str, ...] = tuple(name for name, _ in _CHECKS)
"""Every check's name, in report order; ``checks=`` takes these or a group (``"faults"``)."""


async def _run_one(name: str, check: Callable[[], Awaitable[str]], timeout: float) -> CheckResult:
    try:
        async with asyncio.timeout(timeout):
            detail = await check()
    except _Skip as skip:
        return CheckResult(name, True, f"skipped: {skip}", skipped=True)
    except _Fail as fail:
        return CheckResult(name, False, str(fail))
    except TimeoutError:
        return CheckResult(name, False, f"did not finish within {timeout:g} s")
    except Exception as exc:
        # The adapter raising where it should have coped is the finding, said plainly.
        return CheckResult(name, False, f"{type(exc).__name__}: {exc}")
    return CheckResult(name, True, detail)


def _resolve(adapter: str | type[Adapter]) -> tuple[str, type[Adapter]]:
    if isinstance(adapter, type):
        return adapter.name, adapter
    from hub.plugins import adapter_types

    info = adapter_types().get(adapter)
    if info is None:
        raise ConformanceError(f"unknown adapter {adapter!r} (installed: {', '.join(sorted(adapter_types())) or 'none'})")
    return adapter, info.cls


def _simulator_of(cls: type[Adapter]) -> type[Simulator]:
    ref = cls.simulator
    if not ref:
        raise ConformanceError(f"adapter {cls.name!r} names no simulator (Adapter.simulator = 'module:Class')")
    try:
        sim = resolve(ref)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConformanceError(f"adapter {cls.name!r}: simulator {ref!r} cannot be loaded: {exc}") from None
    if not (isinstance(sim, type) and issubclass(sim, Simulator)):
        raise ConformanceError(f"adapter {cls.name!r}: {ref!r} is not a hub.contracts.Simulator")
    return sim


def _settings_from_config(path: str | Path, adapter_type: str) -> dict[str, Any]:
    """The ``settings`` of the config's first adapter of this type, ``${VAR}`` expanded."""
    import yaml

    from hub.config import expand_env

    try:
        data = yaml.safe_load(Path(path).read_text("utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConformanceError(f"{path}: {exc}") from None
    for i, section in enumerate(data.get("adapters") or []):
        if isinstance(section, dict) and section.get("type") == adapter_type:
            errors: list[str] = []
            settings = expand_env(section.get("settings") or {}, f"adapters[{i}].settings", errors)
            if errors:
                raise ConformanceError("; ".join(errors))
            return settings
    raise ConformanceError(f"{path}: no adapter of type {adapter_type!r} under adapters")


async def run_conformance_async(adapter: str | type[Adapter], *, settings_overrides: dict[str, Any] | None = None,
                                config_path: str | Path | None = None, checks: Iterable[str] | None = None,
                                simulator: type[Simulator] | None = None,
                                timeout: float = DEFAULT_TIMEOUT) -> ConformanceReport:
    """Run the kit for a registered adapter name (or an adapter class) and report every check.

    ``settings_overrides`` are applied over the simulator's ``adapter_settings()`` (fast
    backoff, small timeouts); ``config_path`` adds the settings of that YAML file's first
    adapter of this type underneath both. ``checks`` picks checks by name or group
    (``"faults"``); ``simulator`` replaces the adapter's own; ``timeout`` bounds each check.
    Checks run concurrently, each against its own simulator. Raises ``ConformanceError`` if
    the kit cannot run at all.
    """
    name, cls = _resolve(adapter)
    if not cls.can("fetch"):
        raise ConformanceError(f"adapter {name!r} does not fetch: the kit covers pull adapters")
    sim_cls = simulator or _simulator_of(cls)
    extra = _settings_from_config(config_path, name) if config_path else {}
    wanted = ({checks} if isinstance(checks, str) else set(checks)) if checks is not None else None
    unknown = (wanted or set()) - set(CHECKS) - {c.split(".")[0] for c in CHECKS}
    if unknown:
        raise ConformanceError(f"unknown check(s) {', '.join(sorted(unknown))} (checks: {', '.join(CHECKS)})")
    report = ConformanceReport(name, f"{sim_cls.__module__}:{sim_cls.__qualname__}")
    with tempfile.TemporaryDirectory(prefix="hocba-conformance-") as data_dir:
        try:
            kit = _Kit(name, cls, sim_cls, extra=extra, overrides=dict(settings_overrides or {}),
                       data_dir=Path(data_dir))
        except Exception as exc:
            raise ConformanceError(f"{report.simulator}(records=0, invalid=0, seed={SEED}) failed: "
                                   f"{type(exc).__name__}: {exc}") from exc
        selected = [(n, c) for n, c in _CHECKS if wanted is None or n in wanted or n.split(".")[0] in wanted]
        report.rows = list(await asyncio.gather(*(_run_one(n, lambda c=c: c(kit), timeout) for n, c in selected)))
    return report


def run_conformance(adapter: str | type[Adapter], **kwargs: Any) -> ConformanceReport:
    """``run_conformance_async`` from synchronous code (not from inside a running event loop)."""
    return asyncio.run(run_conformance_async(adapter, **kwargs))


def assert_conformant(adapter: str | type[Adapter], **kwargs: Any) -> ConformanceReport:
    """Run the kit; raise ``AssertionError`` carrying the whole table unless every check passed.

    Takes ``run_conformance_async``'s keyword arguments. Synchronous, so it works in any test
    runner; from an ``async`` test, ``assert (await run_conformance_async(...)).ok`` instead.
    """
    report = run_conformance(adapter, **kwargs)
    if not report.ok:
        raise AssertionError("\n" + report.table())
    return report
