"""``/metrics`` over real HTTP against a running hub, parsed with prometheus-client's own parser.

The module's hub starts with the central store down and two delivery attempts allowed: every
valid record is retried once and then dead-lettered, which the counters must show exactly.
"""

from __future__ import annotations

import asyncio
import time

import prometheus_client
from conftest import counted_checks
import pytest
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families
from test_admin import OP, serve_hub, wait_for

from hub import lifecycle as lc
from hub.web.metrics import Metrics

pytestmark = pytest.mark.asyncio(loop_scope="module")

VALID, INVALID = 3, 1


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(tmp_path_factory, pki):
    async with serve_hub(tmp_path_factory.mktemp("metrics") / "data", pki, records=VALID, invalid=INVALID,
                         central_down=True, delivery={"max_attempts": 2}) as running:
        # Plugin checks run only in the test about them (a signer's check unlocks every key).
        running.hub.metrics.health.checked_at = time.monotonic() + 3600
        yield running


async def scrape(env) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``/metrics``: (sample name, sorted labels) → value."""
    async with env.http.get("/metrics") as resp:  # no token: Prometheus scrapes it as is
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = await resp.text()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def test_records_by_adapter_and_state(env):
    samples = await scrape(env)
    records = {dict(labels)["state"]: v for (name, labels), v in samples.items() if name == "hocba_records"}
    assert records == {lc.DEAD_LETTER: VALID, lc.QUARANTINED: INVALID}
    assert samples[("hocba_records", (("adapter", "school-a"), ("state", "dead_letter")))] == VALID


async def test_retries_and_dead_letters_are_counted_exactly(env):
    samples = await scrape(env)
    # Two attempts each: the first failure is a retry, the second a dead letter.
    assert samples[("hocba_delivery_retries_total", (("destination", "central"),))] == VALID
    assert samples[("hocba_dead_letters_total", (("destination", "central"),))] == VALID


async def test_stage_latency_histograms(env):
    samples = await scrape(env)
    count = lambda stage: samples[("hocba_stage_seconds_count", (("stage", stage),))]  # noqa: E731
    assert count("normalize") == VALID + INVALID
    assert count("render") == VALID
    assert count("sign") >= VALID  # once per record, or once per signing step
    assert samples[("hocba_stage_seconds_sum", (("stage", "render"),))] > 0
    # Buckets are cumulative and end in +Inf = count.
    buckets = sorted(((float(dict(labels)["le"]), v) for (name, labels), v in samples.items()
                      if name == "hocba_stage_seconds_bucket" and dict(labels)["stage"] == "render"))
    assert [v for _, v in buckets] == sorted(v for _, v in buckets)
    assert buckets[-1] == (float("inf"), count("render"))

    # The API the pipeline calls, directly: one observation moves count, sum and its bucket.
    before = count("normalize"), samples[("hocba_stage_seconds_sum", (("stage", "normalize"),))]
    env.hub.metrics.observe_stage("normalize", 0.3)
    after = await scrape(env)
    assert after[("hocba_stage_seconds_count", (("stage", "normalize"),))] == before[0] + 1
    assert after[("hocba_stage_seconds_sum", (("stage", "normalize"),))] == pytest.approx(before[1] + 0.3)
    le = (("le", "0.25"), ("stage", "normalize"))
    assert after[("hocba_stage_seconds_bucket", le)] == samples[("hocba_stage_seconds_bucket", le)]


async def test_queue_depth_outbox_and_last_sync(env):
    samples = await scrape(env)
    for stage in ("normalize", "render", "sign", "deliver"):
        assert samples[("hocba_queue_depth", (("stage", stage),))] == 0
    assert samples[("hocba_outbox_size", ())] == 0
    synced = samples[("hocba_last_sync_timestamp_seconds", (("adapter", "school-a"),))]
    assert time.time() - 300 < synced <= time.time()
    assert samples[("hocba_adapter_paused", (("adapter", "school-a"),))] == 0


async def test_plugin_up_follows_the_destination_and_checks_are_cached(env):
    health = env.hub.metrics.health
    with counted_checks(env.hub.destination) as destination:
        env.central.faults.outage = True
        health.checked_at = None
        await scrape(env)
        await health._round  # the round started by the scrape (a signer's check can be slow)
        samples = await scrape(env)
        assert samples[("hocba_plugin_up", (("kind", "destination"), ("plugin", "central")))] == 0
        assert samples[("hocba_plugin_up", (("kind", "signer"), ("plugin", "keys")))] == 1
        assert samples[("hocba_plugin_up", (("kind", "adapter"), ("plugin", "school-a")))] == 1
        for _ in range(5):
            await scrape(env)
        assert destination.calls == 1  # scrapes inside max_age reuse the last round

        env.central.faults.outage = False
        health.checked_at = time.monotonic() - health.max_age - 1  # the last round is now too old
        await scrape(env)
        await health._round
        samples = await scrape(env)
        assert destination.calls == 2
        assert samples[("hocba_plugin_up", (("kind", "destination"), ("plugin", "central")))] == 1


async def test_replayed_dead_letters_move_the_gauges_and_the_deliver_histogram(env):
    before = await scrape(env)
    dead = [r.id for r in env.hub.store.rows(state=lc.DEAD_LETTER)]
    async with env.http.post("/api/replay", headers=OP, json={"ids": dead, "stage": "deliver"}) as resp:
        assert resp.status == 200
    await wait_for(lambda: env.hub.store.counts().get(lc.DELIVERED) == VALID)
    after = await scrape(env)
    assert after[("hocba_records", (("adapter", "school-a"), ("state", "delivered")))] == VALID
    assert ("hocba_records", (("adapter", "school-a"), ("state", "dead_letter"))) not in after
    deliver = (("stage", "deliver"),)
    assert after[("hocba_stage_seconds_count", deliver)] == before[("hocba_stage_seconds_count", deliver)] + VALID
    # Nothing more was retried or given up.
    assert after[("hocba_dead_letters_total", (("destination", "central"),))] == VALID


async def test_each_hub_has_its_own_registry(env):
    # A second Metrics for the same hub registers the same names without a clash, and nothing
    # lands in prometheus-client's global registry, so tests (and embedders) can run many hubs.
    other = Metrics(env.hub)
    other.retry("central")
    text = (await asyncio.to_thread(other.exposition)).decode()
    assert 'hocba_delivery_retries_total{destination="central"} 1.0' in text
    samples = await scrape(env)
    assert samples[("hocba_delivery_retries_total", (("destination", "central"),))] == VALID
    assert not any(m.name.startswith("hocba") for m in prometheus_client.REGISTRY.collect())
