"""``hocba-hub run``: the hub and its HTTP app in one event loop, stopped cleanly by SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Iterator

import uvicorn
from starlette.types import ASGIApp

from hub.config import HubConfig
from hub.engine.pipeline import Hub
from hub.web.app import create_app


class _Server(uvicorn.Server):
    """uvicorn, but a stop signal ends ``serve()`` and is not re-raised afterwards.

    uvicorn re-raises the captured SIGTERM once its server has stopped, which kills the
    process before the hub drains; the hub owns the process's exit here.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.handle_exit, sig, None)
        try:
            yield
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)


async def serve(config: HubConfig) -> None:
    """Work and serve until SIGINT/SIGTERM; then stop taking work and drain what is in flight."""
    hub = Hub(config)
    app = create_app(hub)  # before start(): the metrics count from the first record on
    # A stop signal during start-up (opening plugins, spawning workers) is kept, not fatal:
    # the hub then stops cleanly as soon as it has started.
    loop = asyncio.get_running_loop()
    early_stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, early_stop.set)
    try:
        await hub.start()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    host, port = config.http.bind.rsplit(":", 1)
    server = _Server(uvicorn.Config(
        app, host=host, port=int(port), log_level="warning", access_log=False, lifespan="off",
    ))
    try:
        if not early_stop.is_set():
            hub.log.info("hub.listening", url=f"http://{config.http.bind}", status_page=f"http://{config.http.bind}/",
                         admin_api=f"http://{config.http.bind}/openapi.json")
            await server.serve()
    finally:
        await hub.stop()


@contextlib.asynccontextmanager
async def serving(app: ASGIApp) -> AsyncIterator[str]:
    """``app`` on a free loopback port for as long as the block runs; yields its base URL.

    For tests, benchmarks and the demo: the real HTTP stack on loopback, stopped cleanly on the
    way out (signals stay with the caller, unlike ``serve``).
    """
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="error", lifespan="off"))
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():  # it could not start (the error is the task's): say so rather than spin
                await task
                raise RuntimeError("the loopback server stopped before it started")
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        await task


@contextlib.asynccontextmanager
async def serving_hub(config: HubConfig, *, pull: bool = True,
                      drain_timeout: float = 30.0) -> AsyncIterator[tuple[Hub, str]]:
    """A hub on ``config``, started, and its app on a free loopback port: ``(hub, base URL)``;
    both stopped on the way out. The app is made before the hub starts, as ``serve`` does, so
    its metrics see the pipeline's very first events."""
    hub = Hub(config)
    app = create_app(hub)
    await hub.start(pull=pull)
    try:
        async with serving(app) as base:
            yield hub, base
    finally:
        await hub.stop(drain_timeout=drain_timeout)
