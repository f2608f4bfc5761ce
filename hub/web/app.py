"""The HTTP face of a running hub (starlette).

``/healthz`` answers as long as the process serves requests; ``/readyz`` checks the store and
every configured plugin (``check()``) and answers 503 when any of them is not healthy, so a
load balancer or systemd watchdog stops sending work to a hub that cannot do it.

Also: the status page ``/`` (``hub.web.status_page``), the operators' console ``/console``
(``hub.web.console``), the public verification page ``/verify`` (``hub.web.verify_page``),
``/metrics`` (``hub.web.metrics``), the admin
API under ``/api`` with its ``/openapi.json`` (``hub.web.admin``), and the vendors' push ingest.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from hub import __version__
from hub.engine.pipeline import Hub
from hub.logs import no_internals
from hub.web.admin import admin_routes
from hub.web.console import console_routes
from hub.web.ingest import ingest_routes
from hub.web.metrics import Metrics, metrics_routes
from hub.web.status_page import status_routes
from hub.web.verify_page import verify_routes


def create_app(hub: Hub) -> Starlette:
    """The ASGI app for ``hub`` (the hub's life cycle is the caller's)."""

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "version": __version__})

    async def readyz(request: Request) -> JSONResponse:
        report = await hub.readiness()
        # No token is needed here: what each check says, without where the systems live.
        for check in report["checks"].values():
            check["detail"] = no_internals(str(check.get("detail") or ""))
        return JSONResponse(report, status_code=200 if report["ready"] else 503)

    if hub.metrics is None:  # the pipeline reports stage times, retries and dead letters here
        hub.metrics = Metrics(hub)
    return Starlette(routes=[
        Route("/healthz", healthz), Route("/readyz", readyz), *ingest_routes(hub),
        *status_routes(hub), *metrics_routes(hub), *admin_routes(hub), *verify_routes(hub), *console_routes(hub),
    ])
