"""Webhook ingest: ``POST /ingest/{adapter}`` for any adapter that receives pushes.

An adapter receives pushes when it implements ``verify_push`` and ``parse_push`` (see
``hub.contracts.Adapter``); the route looks the configured instance up by name and calls them, so the core knows no sender's
format or signature scheme. The answer is ``202`` only once the records are committed to the
store — a sender may forget a record when it sees ``202``, exactly as a pull adapter may
acknowledge a page only after its commit.

Answers: ``202`` committed (or unchanged); ``400`` the body is malformed (nothing stored);
``401`` the sender is not authenticated, or the request was already accepted once (its
``PushNonce`` is spent in the store, for every worker and across restarts; nothing stored); ``404`` no push adapter by that
name; ``413`` the body is larger than the adapter accepts; ``503`` the adapter is paused by an
operator or the store could not commit (retry later).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from hub.contracts import PushNonce, source_id_problem
from hub.store import record_id_for
from hub.web.bodies import read_body

if TYPE_CHECKING:
    from hub.engine.pipeline import Hub

def _error(status: int, code: str, detail: str) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code=status)


def ingest_routes(hub: "Hub") -> list[Route]:
    """The ingest route for ``hub`` (mounted by ``hub.web.app.create_app``)."""
    log = hub.log

    async def ingest(request: Request) -> JSONResponse:
        name = request.path_params["adapter"]
        adapter: Any = hub.adapters.get(name)
        if adapter is None or not type(adapter).can("verify_push"):
            return _error(404, "unknown_adapter", f"no adapter named {name!r} receives pushes here")
        if name in await hub.db(hub.store.paused):
            # An operator paused this source (e.g. it sends garbage): the sender keeps its records
            # and retries, as a paused pull adapter's records wait at the vendor.
            response = _error(503, "paused", f"adapter {name!r} is paused by an operator; retry later")
            response.headers["Retry-After"] = "60"
            return response
        limit = int(adapter.max_push_bytes)
        declared = request.headers.get("content-length", "")
        too_big = {"error": "too_large", "detail": f"the body must be at most {limit} bytes"}
        if declared.isdigit() and int(declared) > limit:
            log.warning("ingest.refused", adapter=name, status=413, bytes=int(declared))
            return JSONResponse(too_big, status_code=413)
        try:
            body = await read_body(request, limit)
        except ClientDisconnect:
            return _error(400, "incomplete", "the client went away before the body was complete")
        if body is None:
            log.warning("ingest.refused", adapter=name, status=413)
            return JSONResponse(too_big, status_code=413)

        try:
            nonce = adapter.verify_push(request.headers, body)
        except PermissionError as exc:
            log.warning("ingest.refused", adapter=name, status=401, reason=str(exc))
            return _error(401, "unauthenticated", str(exc))
        if isinstance(nonce, PushNonce):
            # In the store, not in this process: a captured request replayed to another worker
            # or after a restart is refused too (an older body must never roll a record back).
            try:
                fresh = await hub.db(hub.store.spend_nonce, name, nonce.value, nonce.until)
            except Exception as exc:
                log.error("ingest.store_failed", adapter=name, error=str(exc))
                response = _error(503, "not_stored", "the hub could not check the request; retry later")
                response.headers["Retry-After"] = "5"
                return response
            if not fresh:
                log.warning("ingest.refused", adapter=name, status=401, reason="replay")
                return _error(401, "unauthenticated", "this exact request was already received (replay); "
                              "sign each attempt with the current time")
        try:
            # Off the event loop: a large body (or an XML sender) takes a while to parse.
            records = await asyncio.to_thread(adapter.parse_push, body)
        except ValueError as exc:
            log.warning("ingest.refused", adapter=name, status=400, reason=str(exc))
            return _error(400, "malformed", str(exc))
        for i, raw in enumerate(records):
            # Whatever the adapter let through: an id the store cannot hold (PostgreSQL refuses
            # NUL) is the sender's error, named, not a 503 for the whole batch.
            if (problem := source_id_problem(raw.source_id)) is not None:
                log.warning("ingest.refused", adapter=name, status=400, reason=f"[{i}].source_id")
                return _error(400, "malformed", f"[{i}].source_id: {problem}")
        try:
            new = await hub.ingest(name, records)
        except Exception as exc:  # the sender must retry, so it gets an answer, not a dropped request
            log.error("ingest.store_failed", adapter=name, error=str(exc))
            response = _error(503, "not_stored", "the hub could not store the records; retry later")
            response.headers["Retry-After"] = "5"
            return response
        log.info("ingest.received", adapter=name, records=len(records), new_versions=len(new))
        return JSONResponse({
            "received": len(records),
            "new_versions": len(new),
            "records": [{"source_id": r.source_id, "record_id": record_id_for(name, r.source_id)} for r in records],
        }, status_code=202)

    return [Route("/ingest/{adapter}", ingest, methods=["POST"])]
