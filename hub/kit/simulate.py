"""``hocba-hub simulate``: stand in for every system a config points at, for a first run.

Each adapter (and the destination) whose plugin ships a simulator gets one, listening where the
config's ``base_url`` says, with the credentials the config names (``Simulator.adopt``), seeded
with synthetic transcripts; a watched folder gets the sample sheets. The throwaway test PKI is
issued into ``<data_dir>/pki`` on first run, as the demo does. Then the real server runs
against them in another terminal::

    hocba-hub simulate --config config/example.yaml &
    hocba-hub run --config config/example.yaml

Pushing vendors are fed once the hub answers on ``http.bind``. Runs until SIGINT or SIGTERM.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from hub.config import HubConfig, load_config_or_report
from hub.contracts import Simulator
from hub.documents.verify import trust_roots_der
from hub.kit.demo import (
    DEMO_KEY_PASSWORD,
    DEMO_KEY_PASSWORD_ENV,
    simulator_class,
    split,
)

FEED_WAIT_SECONDS = 600   # how long a pushing vendor waits for the hub to come up


def _settings(config: HubConfig, name: str) -> dict[str, Any]:
    settings = config.route_settings(name) if name in config.route_names else config.adapter_settings(name)
    return dict(settings)


async def _start(sim: Simulator, settings: dict[str, Any]) -> str:
    sim.adopt(settings)
    url = settings.get("base_url")
    if url is None:
        return await sim.start()
    parts = urlsplit(str(url))
    return await sim.start(parts.hostname or "127.0.0.1", parts.port or 80)


async def _feed_when_up(sim: Simulator, hub_url: str, name: str) -> None:
    """Push the seeded records as soon as the hub answers ``/healthz``."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
        for _ in range(FEED_WAIT_SECONDS):
            try:
                async with http.get(hub_url + "/healthz") as response:
                    if response.status == 200:
                        break
            except (aiohttp.ClientError, asyncio.TimeoutError):
                pass
            await asyncio.sleep(1)
        else:
            print(f"{name}: the hub did not answer on {hub_url} within {FEED_WAIT_SECONDS} s; nothing pushed",
                  file=sys.stderr)
            return
    await sim.feed(hub_url, name)
    print(f"{name}: pushed its records to {hub_url}")


async def run_simulators(config_path: str, *, records: int, invalid: int) -> int:
    from hub.kit.pki import ensure_pki
    from hub.kit.synthetic import signing_identities

    config = load_config_or_report(config_path)
    if config is None:
        return 1
    os.environ.setdefault(DEMO_KEY_PASSWORD_ENV, DEMO_KEY_PASSWORD)
    root = await asyncio.to_thread(ensure_pki, Path(config.data_dir) / "pki", signing_identities(),
                                   os.environ[DEMO_KEY_PASSWORD_ENV])
    print(f"test PKI in {root.parent} (trust anchor {root})")

    sources = [a for a in config.adapters if a.enabled and simulator_class(a.type)]
    started: list[Simulator] = []
    feeds: list[asyncio.Task[None]] = []
    hub_url = f"http://{config.http.bind}"
    try:
        for seed, (section, n, bad) in enumerate(zip(sources, split(records, len(sources)),
                                                     split(invalid, len(sources)))):
            sim = simulator_class(section.type)(records=n, invalid=bad, seed=seed)
            where = await _start(sim, _settings(config, section.name))
            started.append(sim)
            if type(sim).feed is not Simulator.feed:
                feeds.append(asyncio.create_task(_feed_when_up(sim, hub_url, section.name)))
                where = f"pushes to {hub_url}/ingest/{section.name} once the hub is up"
            print(f"{section.name:<16} {section.type:<12} {n} valid + {bad} invalid  {where}")
        for route in config.routes:
            destination = simulator_class(route.type)
            if destination is not None:
                sim = destination()
                sim.trust(trust_roots_der((root,)))
                where = await _start(sim, _settings(config, route.name))
                started.append(sim)
                print(f"{route.name:<16} {route.type:<12} destination  {where}")
    except OSError as exc:
        print(f"cannot start a simulator: {exc} (is another program using that port?)", file=sys.stderr)
        for sim in started:
            await sim.stop()
        return 1

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"simulators running; now start the hub: hocba-hub run --config {config_path}  (Ctrl-C stops)")
    await stop.wait()
    for task in feeds:
        task.cancel()
    for sim in started:
        await sim.stop()
    return 0
