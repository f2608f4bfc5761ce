"""Fixtures shared by the integration tests."""

import asyncio
import contextlib
import io
import logging
import types
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import structlog
from pyhanko.pdf_utils import generic
from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter

from hub import plugins
from hub.config import HubConfig, parse_config
from hub.kit.pki import ensure_pki
from hub.kit.synthetic import signing_identities

PASSWORD = "test-key-password"
ROLES = ["homeroom_teacher", "principal", "school_seal"]


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    """A throwaway PKI with a key for every synthetic signer: (directory, root certificate)."""
    directory = tmp_path_factory.mktemp("pki")
    root = ensure_pki(directory, signing_identities(), PASSWORD)
    return directory, root


@contextlib.asynccontextmanager
async def running(*sims) -> AsyncIterator[tuple]:
    """Start the simulators ``sims``, yield them, stop them all on the way out."""
    async with contextlib.AsyncExitStack() as stack:
        for sim in sims:
            await sim.start()
            stack.push_async_callback(sim.stop)
        yield sims


@pytest.fixture
async def systems(request):
    """A vnpt-style school server and the central store, running: ``(vendor, central)``. A test
    module sets ``VENDOR = {...}`` for the school server's records, invalid ones and seed."""
    from adapters.ttdlqg.simulator import TtdlqgSimulator
    from adapters.vnpt.simulator import VnptSimulator

    async with running(VnptSimulator(**getattr(request.module, "VENDOR", {})), TtdlqgSimulator()) as sims:
        yield sims


@contextlib.asynccontextmanager
async def started_hub(config: HubConfig, *, pull: bool = True):
    """A hub on ``config``, started (pulling on its schedule unless ``pull`` is false) and stopped
    on the way out."""
    from hub.engine.pipeline import Hub

    hub = Hub(config)
    await hub.start(pull=pull)
    try:
        yield hub
    finally:
        await hub.stop()


async def worked_through(config: HubConfig, timeout: float = 120) -> dict[str, Any]:
    """Start a hub on ``config`` without pulling, let it do all it can with what its store holds,
    stop it; its rows by source id."""
    async with started_hub(config, pull=False) as hub:
        await asyncio.wait_for(hub.wait_idle(), timeout)
        return {r.source_id: r for r in hub.store.rows()}


def pull_from(sim, name: str = "school-a", kind: str = "vnpt") -> dict[str, Any]:
    """An ``adapters`` entry pulling from ``sim`` only when a test asks (no timed poll)."""
    return {"name": name, "type": kind, "poll_interval": 3600, "settings": sim.adapter_settings()}


def deliver_to(sim, name: str = "central", kind: str = "ttdlqg") -> dict[str, Any]:
    """A ``destination`` (or ``routes`` entry) delivering to ``sim``."""
    return {"name": name, "type": kind, "settings": sim.adapter_settings()}


def hub_config(data_dir, keys, *, adapters: list[dict], destination: dict | None = None, attempts: int = 3,
               roles=ROLES, password: str = PASSWORD, trust=(), delivery: dict | None = None,
               **extra: Any) -> HubConfig:
    """A hub for a test: one worker process, retries in hundredths of a second, the PKCS#12 keys
    in ``keys`` signing each of ``roles``; ``extra`` adds top-level keys (``routes``, ``admin``…)."""
    signing: dict[str, Any] = {"steps": [{"role": r, "signer": "keys"} for r in roles]}
    if trust:
        signing["trust"] = [str(t) for t in trust]
    return parse_config({
        "data_dir": str(data_dir), "workers": {"processes": 1},
        "delivery": {"max_attempts": attempts, "backoff_initial": 0.01, "backoff_max": 0.05, **(delivery or {})},
        "adapters": adapters,
        **({"destination": destination} if destination else {}),
        "signers": [{"name": "keys", "type": "pkcs12", "settings": {"directory": str(keys), "password": password}}],
        "signing": signing,
        **extra,
    })


@pytest.fixture(autouse=True)
def _logging_as_it_was():
    """A test that configures logging in-process (the demo, the CLI) leaves it as it found it,
    so a later test capturing warnings still sees them."""
    config = structlog.get_config()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    structlog.configure(**config)
    root.handlers, root.level = handlers, level


@contextlib.contextmanager
def only_plugins(*names: str, **env: str) -> Iterator[None]:
    """Load only the entry points ``names`` while the block runs (with ``env`` set too): other
    plugins may be half-written in a parallel branch, and a test must not depend on them."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOCBA_HUB_LOAD_PLUGINS", ",".join(names))
        for key, value in env.items():
            mp.setenv(key, value)
        plugins.reload()
        try:
            yield
        finally:
            mp.undo()
            plugins.reload()


@contextlib.contextmanager
def counted_checks(plugin) -> Iterator[types.SimpleNamespace]:
    """Count ``plugin.check()`` calls while the block runs; the real check still answers."""
    check, counter = plugin.check, types.SimpleNamespace(calls=0)

    async def counted():
        counter.calls += 1
        return await check()

    plugin.check = counted
    try:
        yield counter
    finally:
        del plugin.check


def changed_page(pdf: bytes) -> bytes:
    """``pdf`` with an incremental revision that replaces the first page's content (a score
    written over the transcript)."""
    writer = IncrementalPdfFileWriter(io.BytesIO(pdf), strict=False)
    page_ref = writer.root["/Pages"]["/Kids"].raw_get(0)
    page = page_ref.get_object()
    page["/Contents"] = writer.add_object(generic.StreamObject(stream_data=b"BT /F1 24 Tf 100 700 Td (10.0) Tj ET"))
    writer.mark_update(page_ref)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()
