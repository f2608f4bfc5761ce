"""Prometheus metrics at ``/metrics``: what is where, how fast, and what is down.

Each hub has its own ``CollectorRegistry`` (not prometheus-client's global one), so several hubs
in one process — the tests run many — never share or collide on a metric.

Two kinds of metric. Events the pipeline reports as they happen (``Metrics.observe_stage``,
``retry``, ``dead_letter``): stage latencies as histograms, retries and dead letters as
counters. And facts read at scrape time by a collector, so they are never stale and cost
nothing between scrapes: records by adapter and state (from the store), queue depth per stage,
the outbox's size, each plugin's health and each adapter's last successful pull.

Plugin health comes from ``HealthCache``: at most one round of ``check()`` calls per
``max_age`` seconds however often Prometheus and the wall screen ask, so a scrape does not
become a probe storm against a destination that is already struggling.

``/metrics`` needs no token: it carries counts and names, never a record's content; keep the
hub's port on the province's internal network as for every other route.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

if TYPE_CHECKING:
    from hub.pipeline import Hub

STAGES = ("normalize", "render", "sign", "deliver")
# Local signing takes tens of milliseconds; remote signing waits for a person's phone.
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


class HealthCache:
    """Plugin health no older than ``max_age`` seconds, refreshed by at most one caller at a time."""

    def __init__(self, hub: "Hub", max_age: float = 10.0, timeout: float = 5.0):
        self.hub, self.max_age, self.timeout = hub, max_age, timeout
        self.checked_at: float | None = None  # time.monotonic() of the last completed round
        self._lock = asyncio.Lock()

    async def refresh(self) -> None:
        """Run ``hub.readiness()`` (every plugin's ``check()``) if the last round is too old.

        The results land in ``hub.status``; a round that exceeds ``timeout`` is abandoned and
        the previous answers stay, so a hung destination cannot hang the page that reports it.
        """
        if self._fresh():
            return
        async with self._lock:
            if self._fresh():  # another request refreshed it while this one waited
                return
            try:
                await asyncio.wait_for(self.hub.readiness(), self.timeout)
            except asyncio.TimeoutError:
                pass
            self.checked_at = time.monotonic()

    def _fresh(self) -> bool:
        return self.checked_at is not None and time.monotonic() - self.checked_at < self.max_age


class _HubCollector:
    """Scrape-time facts about one hub. ``collect`` reads the store: call it off the event loop."""

    def __init__(self, hub: "Hub"):
        self.hub = hub

    def describe(self) -> Iterator[Metric]:
        # Names only, so registering does not read the store.
        return iter(self._families())

    def _families(self) -> list[GaugeMetricFamily]:
        return [
            GaugeMetricFamily("hocba_records", "Records (versions) by adapter and state", labels=["adapter", "state"]),
            GaugeMetricFamily("hocba_queue_depth", "Records waiting in a stage's queue", labels=["stage"]),
            GaugeMetricFamily("hocba_outbox_size", "Deliveries due or waiting to be retried"),
            GaugeMetricFamily("hocba_plugin_up", "1 if the plugin's last health check or pull succeeded",
                              labels=["plugin", "kind"]),
            GaugeMetricFamily("hocba_last_sync_timestamp_seconds", "Unix time of an adapter's last successful pull",
                              labels=["adapter"]),
            GaugeMetricFamily("hocba_adapter_paused", "1 while an operator has paused the adapter",
                              labels=["adapter"]),
        ]

    def collect(self) -> Iterator[Metric]:
        hub = self.hub
        records, queues, outbox, up, last_sync, paused = self._families()
        totals: dict[tuple[str, str], int] = {}
        for row in hub.store.breakdown():
            key = (row["adapter"], row["state"])
            totals[key] = totals.get(key, 0) + row["n"]
        for (adapter, state), n in sorted(totals.items()):
            records.add_metric([adapter, state], n)
        for stage, queue in hub._queues.items():
            queues.add_metric([stage], queue.qsize())
        outbox.add_metric([], hub.store.outbox_size())
        kinds = {a.name: "adapter" for a in hub.config.adapters}
        kinds[hub.config.destination.name] = "destination"
        kinds.update({s.name: "signer" for s in hub.config.signers})
        for name, status in sorted(hub.status.items()):
            up.add_metric([name, kinds.get(name, "plugin")], 1.0 if status.health.ok else 0.0)
            if kinds.get(name) == "adapter" and status.last_sync:
                last_sync.add_metric([name], _epoch(status.last_sync))
        stopped = hub.store.paused()
        for section in hub.config.adapters:
            paused.add_metric([section.name], 1.0 if section.name in stopped else 0.0)
        yield from (records, queues, outbox, up, last_sync, paused)


def _epoch(iso: str) -> float:
    value = dt.datetime.fromisoformat(iso)
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    return value.timestamp()


class Metrics:
    """One hub's metrics. The pipeline reports events through the three methods below."""

    def __init__(self, hub: "Hub"):
        self.hub = hub
        self.registry = CollectorRegistry()
        self.health = HealthCache(hub)
        self._stage = Histogram("hocba_stage_seconds", "Time one record spent in a stage's work",
                                ["stage"], buckets=_BUCKETS, registry=self.registry)
        self._retries = Counter("hocba_delivery_retries", "Delivery attempts that failed and will be retried",
                                ["destination"], registry=self.registry)
        self._dead = Counter("hocba_dead_letters", "Deliveries given up (permanent refusal or too many attempts)",
                             ["destination"], registry=self.registry)
        # Series exist from the start, at 0, so a rate() or an alert sees the first event too.
        for stage in STAGES:
            self._stage.labels(stage)
        self._retries.labels(hub.config.destination.name)
        self._dead.labels(hub.config.destination.name)
        self.registry.register(_HubCollector(hub))

    def observe_stage(self, stage: str, seconds: float) -> None:
        """A record finished ``stage`` (normalize, render, sign, deliver) in ``seconds``."""
        self._stage.labels(stage).observe(seconds)

    def retry(self, destination: str) -> None:
        """A delivery to ``destination`` failed transiently and will be tried again."""
        self._retries.labels(destination).inc()

    def dead_letter(self, destination: str) -> None:
        """A delivery to ``destination`` was given up and dead-lettered."""
        self._dead.labels(destination).inc()

    def exposition(self) -> bytes:
        """The text format Prometheus scrapes (reads the store: call it off the event loop)."""
        return generate_latest(self.registry)


def metrics_routes(hub: "Hub") -> list[BaseRoute]:
    """``GET /metrics`` for ``hub`` (whose ``metrics`` attribute is set by ``create_app``)."""

    async def metrics(request: Request) -> Response:
        await hub.metrics.health.refresh()
        # The collector reads the store: run it on the store's thread, as every store call is.
        body = await hub._db(hub.metrics.exposition)
        return Response(body, media_type=CONTENT_TYPE_LATEST, headers={"Cache-Control": "no-store"})

    return [Route("/metrics", metrics)]
