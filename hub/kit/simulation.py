"""Shared plumbing for simulators that serve a vendor contract over aiohttp on loopback.

Every pull-source simulator starts an ``AppRunner`` on a free loopback port, counts and logs
requests, and answers the standard ``hub.contracts.Faults`` switches the same way, because the
conformance kit and the fault suites drive every vendor with those same names. What differs per
vendor — the shape of an error body, which paths are "data" requests, extra quirks such as HTML
maintenance pages or truncated bodies — is left to small hooks, so this module never names a
vendor.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import datetime as dt
import hashlib
import hmac
import json
import secrets
import shutil
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, NoReturn

from aiohttp import web

from hub.contracts import Simulator
from hub.kit.synthetic import INVALID_KINDS, invalid_transcript, transcript


class LoopbackServer:
    """Start/stop an aiohttp app on loopback and remember its base URL.

    ``runner_kwargs`` go to ``web.AppRunner``; a simulator whose handlers sleep in a fault passes
    a short ``shutdown_timeout`` so ``stop()`` does not wait out aiohttp's default minute.
    """
    _runner: web.AppRunner | None = None
    base_url: str = ""

    async def _serve(self, app: web.Application, host: str, port: int, **runner_kwargs: Any) -> str:
        self._runner = web.AppRunner(app, access_log=None, **runner_kwargs)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        # port 0 asks the OS for a free port; read back what was bound.
        bound_host, bound_port = self._runner.addresses[0][:2]
        self.base_url = f"http://{bound_host}:{bound_port}"
        return self.base_url

    async def _shutdown(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


class SealedTokens:
    """Paging tokens a simulator hands out: base64url(JSON [fields…, epoch, serial]) "." HMAC.

    Opaque to clients and tamper-evident, as a real server's are; ``forget()`` bumps the epoch so
    every token issued before it expires at once (a server restart or a re-index).
    """

    def __init__(self) -> None:
        self._key = secrets.token_bytes(32)
        self._epoch = 0
        self._serial = 0

    def _mac(self, body: bytes) -> bytes:
        return hmac.new(self._key, body, hashlib.sha256).digest()[:12]

    def issue(self, *fields: Any) -> str:
        self._serial += 1
        body = json.dumps([*fields, self._epoch, self._serial], separators=(",", ":")).encode()
        return (base64.urlsafe_b64encode(body).rstrip(b"=") + b"." + base64.urlsafe_b64encode(self._mac(body)).rstrip(b"=")).decode()

    def read(self, token: str) -> list[Any] | None:
        """The fields ``token`` was issued with; None when it is from before ``forget()``;
        ``ValueError`` when it is not a token this simulator issued."""
        try:
            body_b64, mac_b64 = token.split(".")
            body = base64.urlsafe_b64decode(body_b64 + "=" * (-len(body_b64) % 4))
            mac = base64.urlsafe_b64decode(mac_b64 + "=" * (-len(mac_b64) % 4))
            if not hmac.compare_digest(mac, self._mac(body)):
                raise ValueError("bad mac")
            *fields, epoch, _serial = json.loads(body)
        except (ValueError, TypeError):
            raise ValueError(f"not a token of this simulator: {token[:40]!r}") from None
        return fields if epoch == self._epoch else None

    def forget(self) -> None:
        self._epoch += 1


@dataclass(frozen=True)
class Attempt:
    """One submission as a destination's simulator saw it; ``status`` is ``None`` for a dropped
    connection. ``record_id``/``version``/``event`` for one transcript, ``package_id`` for a package."""
    status: int | None
    record_id: str | None = None
    version: int | None = None
    event: str | None = None
    reason: str = ""
    at: float = field(default_factory=time.time)
    package_id: str | None = None


class Reject(Exception):
    """Unwinds a destination simulator's request to one JSON error answer (``DestinationSimulator``
    answers one a handler lets through; a handler that counts refusals catches it first)."""

    def __init__(self, status: int, error: str, errors: list[str] | None = None, **extra: Any):
        super().__init__(error)
        self.status = status
        self.body = {"error": error, "errors": errors or [], **extra}

    def answer(self) -> web.Response:
        return web.json_response(self.body, status=self.status)


class DestinationSimulator(LoopbackServer, Simulator):
    """A destination's service on loopback: a bearer token on every route but ``/healthz``, the
    standard fault switches (``hub.contracts.Faults``) applied to its submissions, ``/healthz``
    and ``/api/v1/ping`` (what ``hub.HttpDestination.check`` asks).

    A subclass says which requests are submissions and counts them (``_submission``; the
    ``*_next_n`` switches are consumed by those only, so health checks never eat a fault), adds its routes
    (``_add_routes``) and may answer more faults (``_more_faults``). ``faults`` and ``counters``
    are its own dataclasses; ``counters`` has ``requests``, ``unauthorized`` and ``faulted``.
    ``attempts`` lists every submission's outcome (``Attempt``).
    """
    realm: ClassVar[str] = "hocba"
    faults: Any
    counters: Any

    def __init__(self, *, token: str, records: int = 0, invalid: int = 0, seed: int = 0):
        super().__init__(records=records, invalid=invalid, seed=seed)
        self.token = token
        self.attempts: list[Attempt] = []
        self.base_url: str | None = None  # type: ignore[assignment]

    def _submission(self, request: web.Request) -> bool:
        """Whether ``request`` is a submission (counted in the subclass's counters)."""
        raise NotImplementedError

    def _add_routes(self, app: web.Application) -> None:
        raise NotImplementedError

    def _more_faults(self, request: web.Request, submission: bool) -> web.StreamResponse | None:
        """A fault of this destination's own, answered before the token is checked; None: none."""
        return None

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        app = web.Application(middlewares=[self._faults_and_auth])
        app.router.add_get("/healthz", self._ok)
        app.router.add_get("/api/v1/ping", self._ok)
        self._add_routes(app)
        # A handler still sleeping in ``slow_seconds`` must not hold up stop() for a minute.
        return await self._serve(app, host, port, shutdown_timeout=0.5)

    async def stop(self) -> None:
        await self._shutdown()

    @staticmethod
    def _held(state: dict[str, Any] | None, unknown: str) -> web.Response:
        """What a status route answers: the ``state`` held, or 404 saying what is ``unknown``."""
        if state is None:
            return web.json_response({"error": unknown, "errors": []}, status=404)
        return web.json_response(state)

    def adapter_settings(self) -> dict[str, Any]:
        if self.base_url is None:
            raise RuntimeError(f"{type(self).__name__}.start() must run before adapter_settings()")
        return {"base_url": self.base_url, "token": self.token}

    @web.middleware
    async def _faults_and_auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.counters.requests += 1
        faults = self.faults
        submission = self._submission(request)
        if submission and faults.drop_next_n_connections > 0:
            faults.drop_next_n_connections -= 1
            return self._drop(request)
        if faults.outage:
            return self._fault(submission, 503, "outage", retry_after=True)
        if submission and faults.fail_next_n > 0:
            faults.fail_next_n -= 1
            return self._fault(submission, 503, "injected failure")
        if submission and faults.rate_limit_next_n > 0:
            faults.rate_limit_next_n -= 1
            return self._fault(submission, 429, "rate limited", retry_after=True)
        if (more := self._more_faults(request, submission)) is not None:
            return more
        if request.path != "/healthz" and not self._authorized(request):
            self.counters.unauthorized += 1
            if submission:
                self.attempts.append(Attempt(401, reason="token rejected"))
            return web.json_response({"error": "missing or invalid bearer token", "errors": []}, status=401,
                                     headers={"WWW-Authenticate": f'Bearer realm="{self.realm}"'})
        try:
            response = await handler(request)
        except Reject as reject:
            response = reject.answer()
        if faults.slow_seconds > 0:
            # Delaying after the work is done models the nastiest timeout: the destination
            # committed but the answer never reached the sender, whose retry must then get a
            # duplicate receipt rather than a conflict.
            await asyncio.sleep(faults.slow_seconds)
        return response

    def _authorized(self, request: web.Request) -> bool:
        scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not presented:
            return False
        return hmac.compare_digest(presented.strip().encode(), self.token.encode())

    def _fault(self, submission: bool, status: int, reason: str, retry_after: bool = False) -> web.Response:
        if submission:
            self.counters.faulted += 1
            self.attempts.append(Attempt(status, reason=reason))
        headers = {"Retry-After": str(self.faults.retry_after_seconds)} if retry_after else {}
        return web.json_response({"error": reason, "errors": []}, status=status, headers=headers)

    def _drop(self, request: web.Request) -> web.StreamResponse:
        self.counters.faulted += 1
        self.attempts.append(Attempt(None, reason="connection dropped"))
        # Closing the transport before any byte of a response is written is what a crashed
        # proxy looks like to the client: the request may or may not have been seen.
        if request.transport is not None:
            request.transport.close()
        return web.Response(status=503)  # never reaches the client

    async def _ok(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True})


class FolderSimulator(Simulator):
    """A ``Simulator`` for a system that is a folder (a share a school drops files into, or one
    the hub writes into): no network, so no faults to simulate.

    ``start()`` makes a temporary folder (named ``folder_prefix``…) unless one was given, and
    ``stop()`` removes it; a folder given in the constructor or adopted from a config is someone
    else's and is never removed. ``adapter_settings()`` points the adapter at it.
    """
    networked = False
    folder_prefix: ClassVar[str] = "hocba-folder-"

    def __init__(self, *, records: int = 0, invalid: int = 0, seed: int = 0, directory: Path | None = None):
        super().__init__(records=records, invalid=invalid, seed=seed)
        self.directory = directory
        self._own_directory = directory is None

    def adopt(self, settings: dict[str, Any]) -> None:
        # The configured folder is the operator's: write into it, never remove it.
        self.directory = Path(settings["directory"])
        self.directory.mkdir(parents=True, exist_ok=True)
        self._own_directory = False

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        if self.directory is None:
            self.directory = Path(tempfile.mkdtemp(prefix=self.folder_prefix))
        return str(self.directory)

    async def stop(self) -> None:
        if self._own_directory and self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)

    def adapter_settings(self) -> dict[str, Any]:
        return {"directory": str(self.directory)}


def drop_connection(request: web.Request) -> NoReturn:
    """Close the socket before any byte of an answer is written and end the handler.

    That is what a crashed proxy looks like to the client: the request may or may not have been
    seen, and no response arrives.
    """
    if request.transport is not None:
        request.transport.close()
    raise asyncio.CancelledError()


def maintenance_page() -> web.Response:
    """A 200 with an HTML maintenance page in Vietnamese: what a proxy in front of a vendor's
    server answers during maintenance, which an adapter must report, not parse."""
    return web.Response(text="<!DOCTYPE html><html><head><title>Bảo trì hệ thống</title></head>"
                             "<body><h1>Hệ thống đang bảo trì</h1></body></html>",
                        content_type="text/html", charset="utf-8")


class FaultySimulator(LoopbackServer, Simulator):
    """A ``Simulator`` base that answers the standard fault switches in one agreed order.

    ``requests`` counts requests by path and ``log`` lists ``(method, path, status)`` in order
    (status 0: connection dropped), so tests can prove a retry or a re-authentication happened.

    Order: ``slow_seconds``, ``outage``, drop, stall (if the faults have ``stall_next_n``), 5xx,
    429, then ``_vendor_faults`` (which by default just calls the handler). Subclasses set:

    - ``data_paths``: paths whose requests count the ``*_next_n`` switches down; ``None`` means
      every request does (some vendors fail on the token endpoint first, like the real server).
    - ``log_path_qs``: log ``path_qs`` rather than ``path`` (cursor-paged APIs, where the query
      is what a test wants to see).
    - ``routes()``: the endpoints ``start`` serves.
    - ``_fault_response(kind, status, headers)``: the vendor's error body for ``"outage"``,
      ``"fail"`` and ``"rate_limit"``.
    """
    data_paths: frozenset[str] | None = None
    log_path_qs: bool = False
    shutdown_timeout: float = 60.0  # aiohttp's default; a simulator whose handlers sleep sets less

    def __init__(self, *, records: int = 0, invalid: int = 0, seed: int = 0):
        super().__init__(records=records, invalid=invalid, seed=seed)
        self.requests: Counter[str] = Counter()
        self.log: list[tuple[str, str, int]] = []
        self._runner = None
        self._stopping = asyncio.Event()
        self.base_url = ""

    async def _serve(self, app: web.Application, host: str, port: int, **runner_kwargs: Any) -> str:
        self._stopping = asyncio.Event()
        return await super()._serve(app, host, port, **runner_kwargs)

    def routes(self) -> list[web.RouteDef]:
        """The vendor's endpoints (``web.get(path, handler)``, …); ``start`` serves them behind the
        fault switches."""
        raise NotImplementedError

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        app = web.Application(middlewares=[self._faults_middleware])
        app.add_routes(self.routes())
        return await self._serve(app, host, port, shutdown_timeout=self.shutdown_timeout)

    async def stop(self) -> None:
        # Stalled handlers wait on this event, so stopping never waits out a stall.
        self._stopping.set()
        await self._shutdown()

    def _fault_response(self, kind: str, status: int, headers: dict[str, str] | None = None) -> web.StreamResponse:
        raise NotImplementedError

    def _on_request(self, request: web.Request) -> None:
        """Hook: record something about every request, faulted ones included."""

    async def _vendor_faults(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Hook: the vendor's own faults, reached only when no standard fault answered."""
        return await handler(request)

    def _log(self, request: web.Request, status: int) -> None:
        self.log.append((request.method, request.path_qs if self.log_path_qs else request.path, status))

    @web.middleware
    async def _faults_middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests[request.path] += 1
        self._on_request(request)
        f = self.faults
        if f.slow_seconds:
            await asyncio.sleep(f.slow_seconds)
        data = self.data_paths is None or request.path in self.data_paths
        retry_after = {"Retry-After": str(f.retry_after_seconds)}
        response: web.StreamResponse | None = None
        if f.outage:
            # Down, not failing at random: nothing is counted down until it is back.
            response = self._fault_response("outage", 503, retry_after)
        elif data and f.drop_next_n_connections > 0:
            f.drop_next_n_connections -= 1
            self._log(request, 0)
            drop_connection(request)
        elif data and getattr(f, "stall_next_n", 0) > 0:
            f.stall_next_n -= 1  # type: ignore[attr-defined]
            try:
                await asyncio.wait_for(self._stopping.wait(), f.stall_seconds)  # type: ignore[attr-defined]
            except asyncio.TimeoutError:
                pass
        if response is None and data and f.fail_next_n > 0:
            f.fail_next_n -= 1
            response = self._fault_response("fail", getattr(f, "status_5xx", 503))
        elif response is None and data and f.rate_limit_next_n > 0:
            f.rate_limit_next_n -= 1
            response = self._fault_response("rate_limit", 429, retry_after)
        if response is None:
            response = await self._vendor_faults(request, handler)
        self._log(request, response.status)
        return response


@dataclass
class FeedRow:
    """One record a simulated vendor serves: the central transcript it encodes, and the vendor's
    bookkeeping. A vendor's subclass adds ``vendor()``, the record as its API shows it."""
    central: dict[str, Any]
    source_id: str
    updated: dt.datetime
    deleted: bool = False
    quirks: int = 0          # picks which of the vendor's harmless quirks this record shows
    seq: int = 0             # position in the change log (a feed paged by change sequence)


class SyntheticFeed:
    """The records a pull simulator serves, and what tests and the demo do to them.

    ``records`` synthetic transcripts (``hub.kit.synthetic.transcript``), then ``invalid`` ones,
    each broken in one field (``defects``: source id → (kind, central field)); ``per_timestamp``
    records share each minute from ``first_update``. Every pull simulator has the same record book,
    so its tests edit, recall and look records up the same way whatever the vendor. A subclass sets
    ``id_namespace`` (source ids are stable per vendor, group, seed and index), ``first_update``
    and ``row_type``, and calls ``fill`` from its ``__init__``.
    """
    id_namespace: ClassVar[uuid.UUID]
    first_update: ClassVar[dt.datetime]
    row_type: ClassVar[type[FeedRow]] = FeedRow
    seed: int

    def fill(self, records: int, invalid: int, per_timestamp: int,
             transcript_index: Callable[[int], int] = lambda k: k) -> None:
        """Make the rows; the ``k``-th record encodes ``transcript(transcript_index(k), seed)``."""
        self.defects: dict[str, tuple[str, str]] = {}
        """source id of each deliberately invalid record → (defect kind, central field it breaks)."""
        self._rows: list[Any] = []
        per_timestamp = max(1, per_timestamp)
        for k in range(records + invalid):
            if k < records:
                central, group, n = transcript(transcript_index(k), self.seed), "hs", k
            else:
                n = k - records
                central, kind, field = invalid_transcript(transcript_index(k), self.seed,
                                                          INVALID_KINDS[n % len(INVALID_KINDS)])
                # invalid_transcript reuses valid indices; a transcript id of its own keeps ids unique.
                central["transcript_id"] = f"HBLOI{self.seed % 1000:03d}{n:06d}"
                group = "loi"
            row = self.row_type(central, self._source_id(group, n),
                                self.first_update + dt.timedelta(minutes=k // per_timestamp), quirks=k, seq=k + 1)
            self._rows.append(row)
            if k >= records:
                self.defects[row.source_id] = (kind, field)

    def _source_id(self, group: str, index: int) -> str:
        return str(uuid.uuid5(self.id_namespace, f"{group}:{self.seed}:{index}"))

    def source_id(self, index: int) -> str:
        """The vendor's id of record ``index`` (invalid records follow the valid ones)."""
        return self._rows[index].source_id

    def central(self, index: int) -> dict[str, Any]:
        """The central-format transcript record ``index`` currently encodes."""
        return copy.deepcopy(self._rows[index].central)

    def update(self, index: int, change: Callable[[dict[str, Any]], None] | None = None) -> str:
        """Edit record ``index`` and move it past every other change; return its id.

        ``change`` edits the central-format dict in place; the default re-issues the transcript
        one day later, which is valid for every school level.
        """
        row = self._rows[index]
        if change is None:
            def change(central: dict[str, Any]) -> None:
                issued = dt.date.fromisoformat(central["signatories"]["issue_date"])
                central["signatories"]["issue_date"] = (issued + dt.timedelta(days=1)).isoformat()
        change(row.central)
        self._touch(row)
        return row.source_id

    def delete(self, index: int) -> str:
        """Recall record ``index`` and move it past every other change; return its id."""
        row = self._rows[index]
        row.deleted = True
        self._touch(row)
        return row.source_id

    def next_page(self, rows: list[Any], size: int, position: Any,
                  key: Callable[[Any], Any]) -> tuple[list[Any], bool, Any]:
        """The page after ``position`` of ``rows`` (already past it, in feed order): the rows to
        serve, whether more follow, and the position after them (``key`` of the last row).

        Two page faults every feed answers alike, if its ``faults`` has them: ``empty_next_n``
        serves an empty page that still says more follow; ``duplicate_next_n`` lists the page's
        first record twice.
        """
        f = self.faults  # type: ignore[attr-defined]
        if getattr(f, "empty_next_n", 0) > 0:
            f.empty_next_n -= 1
            return [], bool(rows), position
        chunk, has_more = rows[:size], len(rows) > size
        after = key(chunk[-1]) if chunk else position
        if getattr(f, "duplicate_next_n", 0) > 0 and chunk:
            f.duplicate_next_n -= 1
            chunk = [*chunk, chunk[0]]
        return chunk, has_more, after

    def _touch(self, row: Any) -> None:
        """A change to ``row``: it is now the newest record, a minute after the newest before it."""
        row.seq = max(r.seq for r in self._rows) + 1
        row.updated = max((r.updated for r in self._rows), default=self.first_update) + dt.timedelta(minutes=1)
