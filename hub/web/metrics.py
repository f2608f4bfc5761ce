"""Prometheus metrics at ``/metrics``: what is where, how fast, and what is down.

Each hub has its own ``CollectorRegistry`` (not prometheus-client's global one), so several hubs
in one process — the tests run many — never share or collide on a metric.

Two kinds of metric. Events the pipeline reports as they happen (``Metrics.observe_stage``,
``retry``, ``dead_letter``): stage latencies as histograms, retries and dead letters as
counters. And facts read at scrape time by a collector, so they are never stale and cost
nothing between scrapes: records by adapter and state, the records waiting for each stage and
the outbox's size (all from the store, so they hold for several hub processes sharing it),
each plugin's health and each adapter's last successful pull.

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

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from hub import lifecycle as lc

if TYPE_CHECKING:
    from hub.engine.pipeline import Hub

# Local signing takes tens of milliseconds; remote signing waits for a person's phone.
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


class HealthCache:
    """Plugin health no older than about ``max_age`` seconds, without making a reader wait.

    A reader that finds the last round of checks too old starts one in the background and goes
    on with what is known; only the very first reader waits (up to ``first_wait`` seconds) so a
    fresh hub does not show "not checked yet". A round runs to its end even if it is slow (a
    signer that unlocks its keys to answer), so every plugin does get checked.
    """

    def __init__(self, hub: "Hub", max_age: float = 10.0, first_wait: float = 5.0):
        self.hub, self.max_age, self.first_wait = hub, max_age, first_wait
        self.checked_at: float | None = None  # time.monotonic() when the last round ended
        self._round: asyncio.Task[None] | None = None

    async def refresh(self) -> None:
        """Start a round of ``check()`` calls (``hub.readiness()``) if the last one is too old;
        the results land in ``hub.status``."""
        if self.checked_at is not None and time.monotonic() - self.checked_at < self.max_age:
            return
        if self._round is None or self._round.done():
            self._round = asyncio.create_task(self._check(), name="hocba-health")
        if self.checked_at is None:
            # shield: a reader giving up must not cancel the round for everyone else.
            await asyncio.wait([asyncio.shield(self._round)], timeout=self.first_wait)

    async def _check(self) -> None:
        try:
            await self.hub.readiness()
        except Exception as exc:  # a failed round is reported by the plugins' status, not raised
            self.hub.log.warning("health.check_failed", error=str(exc))
        finally:
            self.checked_at = time.monotonic()


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
            GaugeMetricFamily("hocba_queue_depth", "Records waiting for (or in) a stage", labels=["stage"]),
            GaugeMetricFamily("hocba_outbox_size", "Deliveries due or waiting to be retried"),
            GaugeMetricFamily("hocba_plugin_up", "1 if the plugin's last health check or pull succeeded",
                              labels=["plugin", "kind"]),
            GaugeMetricFamily("hocba_last_sync_timestamp_seconds", "Unix time of an adapter's last successful pull",
                              labels=["adapter"]),
            GaugeMetricFamily("hocba_adapter_paused", "1 while an operator has paused the adapter",
                              labels=["adapter"]),
            GaugeMetricFamily("hocba_deliveries", "Record versions per destination by delivery state (queued, "
                              "delivered, dead_letter, superseded; due: jobs in its outbox)",
                              labels=["destination", "state"]),
        ]

    def collect(self) -> Iterator[Metric]:
        hub = self.hub
        records, queues, outbox, up, last_sync, paused, deliveries = self._families()
        totals: dict[tuple[str, str], int] = {}
        for row in hub.store.breakdown():
            key = (row["adapter"], row["state"])
            totals[key] = totals.get(key, 0) + row["n"]
        for (adapter, state), n in sorted(totals.items()):
            records.add_metric([adapter, state], n)
        waiting = dict.fromkeys(lc.STAGES, 0)
        for state, n in hub.store.counts().items():
            stage = lc.stage_of(state, hub.roles, identity=hub.config.identity is not None)
            if stage:
                waiting[stage] += n
        for stage, n in waiting.items():
            queues.add_metric([stage], n)
        outbox.add_metric([], hub.store.outbox_size())
        per_route = hub.store.destination_counts()
        for name in hub.config.route_names:
            for state in ("due", "queued", "delivered", "dead_letter", "superseded"):
                deliveries.add_metric([name, state], per_route.get(name, {}).get(state, 0))
        kinds = {a.name: "adapter" for a in hub.config.adapters}
        kinds.update({name: "destination" for name in hub.config.route_names})
        kinds.update({s.name: "signer" for s in hub.config.signers})
        if hub.config.identity is not None:
            kinds[hub.config.identity.name] = "identity"
        for name, status in sorted(hub.status.items()):
            up.add_metric([name, kinds.get(name, "plugin")], 1.0 if status.health.ok else 0.0)
            if kinds.get(name) == "adapter" and status.last_sync:
                last_sync.add_metric([name], _epoch(status.last_sync))
        stopped = hub.store.paused()
        for section in hub.config.adapters:
            paused.add_metric([section.name], 1.0 if section.name in stopped else 0.0)
        yield from (records, queues, outbox, up, last_sync, paused, deliveries)


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
        for stage in lc.STAGES:
            self._stage.labels(stage)
        for name in hub.config.route_names:
            self._retries.labels(name)
            self._dead.labels(name)
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
        body = await hub.db(hub.metrics.exposition)
        return Response(body, media_type=CONTENT_TYPE_LATEST, headers={"Cache-Control": "no-store"})

    return [Route("/metrics", metrics)]
