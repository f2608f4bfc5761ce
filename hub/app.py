"""The HTTP face of a running hub (starlette): liveness, readiness and record counts.

``/healthz`` answers as long as the process serves requests; ``/readyz`` checks the store and
every configured plugin (``check()``) and answers 503 when any of them is not healthy, so a
load balancer or systemd watchdog stops sending work to a hub that cannot do it.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from hub import __version__
from hub.pipeline import Hub


def create_app(hub: Hub) -> Starlette:
    """The ASGI app for ``hub`` (the hub's life cycle is the caller's)."""

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "version": __version__})

    async def readyz(request: Request) -> JSONResponse:
        report = await hub.readiness()
        return JSONResponse(report, status_code=200 if report["ready"] else 503)

    return Starlette(routes=[Route("/healthz", healthz), Route("/readyz", readyz)])
