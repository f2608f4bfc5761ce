"""``hocba-hub run``: the hub and its HTTP app in one event loop, stopped cleanly by SIGTERM."""

from __future__ import annotations

import uvicorn

from hub.app import create_app
from hub.config import HubConfig
from hub.pipeline import Hub


async def serve(config: HubConfig) -> None:
    """Work and serve until SIGINT/SIGTERM; then stop taking work and drain what is in flight."""
    hub = Hub(config)
    await hub.start()
    host, port = config.http.bind.rsplit(":", 1)
    server = uvicorn.Server(uvicorn.Config(
        create_app(hub), host=host, port=int(port), log_level="warning", access_log=False, lifespan="off",
    ))
    try:
        # uvicorn turns SIGINT/SIGTERM into a graceful exit of serve().
        await server.serve()
    finally:
        await hub.stop()
