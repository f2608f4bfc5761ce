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
from collections import Counter
from typing import Any, NoReturn

from aiohttp import web

from hub.contracts import Simulator


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


def drop_connection(request: web.Request) -> NoReturn:
    """Close the socket before any byte of an answer is written and end the handler.

    That is what a crashed proxy looks like to the client: the request may or may not have been
    seen, and no response arrives.
    """
    if request.transport is not None:
        request.transport.close()
    raise asyncio.CancelledError()


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
    - ``_fault_response(kind, status, headers)``: the vendor's error body for ``"outage"``,
      ``"fail"`` and ``"rate_limit"``.
    """
    data_paths: frozenset[str] | None = None
    log_path_qs: bool = False

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
