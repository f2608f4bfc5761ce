"""Load on the public verification page: many uploads at once from several clients, on loopback.

```sh
python bench/verify_load.py                        # 50 uploads at once from 10 clients
python bench/verify_load.py --uploads 100 --clients 20
```

A hub with the vnpt and ttdlqg simulators and a throwaway PKI delivers a few transcripts; their
signed PDFs and XML học bạ are then uploaded to ``POST /verify/api/document`` all at once, round
robin over the clients. Each client connects from its own loopback address (127.0.0.2, .3, …), so
the per-IP rate limit sees ten clients, as it would ten offices; with the default limit (burst 20)
five uploads per client are within it. Bounded in count (``--uploads``) and time (``--time-limit``).

Prints the figures (answers by status, verdicts, wall time, uploads per second, latency p50/p95/max)
and exits non-zero unless every upload was answered 200 with a valid verdict.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp  # noqa: E402


async def load(url: str, documents: Sequence[tuple[str, bytes]], *, clients: int = 10, uploads: int = 50,
               time_limit: float = 300.0) -> dict[str, Any]:
    """Upload ``uploads`` documents (cycling through ``documents``: (content type, bytes)) to the hub
    at ``url`` all at once from ``clients`` loopback addresses; the figures of the run."""
    sessions = [aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(f"127.0.0.{2 + i}", 0)),
                                      timeout=aiohttp.ClientTimeout(total=time_limit)) for i in range(clients)]
    latencies: list[float] = []
    statuses: Counter = Counter()
    verdicts: Counter = Counter()
    errors: list[str] = []

    async def one(i: int) -> None:
        content_type, body = documents[i % len(documents)]
        started = time.perf_counter()
        try:
            async with sessions[i % clients].post(f"{url}/verify/api/document", data=body,
                                                  headers={"Content-Type": content_type}) as resp:
                statuses[resp.status] += 1
                if resp.status == 200:
                    verdicts[(await resp.json())["verdict"]] += 1
                else:
                    await resp.read()
        except Exception as exc:  # counted, reported, never a traceback
            errors.append(f"{type(exc).__name__}: {exc}")
        latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    try:
        await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(uploads))), time_limit)
    finally:
        for session in sessions:
            await session.close()
    wall = time.perf_counter() - started
    ordered = sorted(latencies)
    return {
        "uploads": uploads, "clients": clients, "statuses": dict(statuses), "verdicts": dict(verdicts),
        "errors": errors, "wall_seconds": round(wall, 3), "uploads_per_second": round(uploads / wall, 2),
        "latency_p50": round(statistics.median(ordered), 3) if ordered else None,
        "latency_p95": round(ordered[max(0, int(len(ordered) * 0.95) - 1)], 3) if ordered else None,
        "latency_max": round(ordered[-1], 3) if ordered else None,
    }


def report(figures: dict[str, Any]) -> str:
    return (f"{figures['uploads']} uploads from {figures['clients']} clients: answers {figures['statuses']}, "
            f"verdicts {figures['verdicts']}, errors {len(figures['errors'])}; {figures['wall_seconds']} s "
            f"({figures['uploads_per_second']}/s); latency p50 {figures['latency_p50']} s, "
            f"p95 {figures['latency_p95']} s, max {figures['latency_max']} s")


@contextlib.asynccontextmanager
async def serve(data_dir: Path, records: int) -> AsyncIterator[tuple[str, Any]]:
    """A hub delivering ``records`` synthetic transcripts, its app under uvicorn on 127.0.0.1."""
    from adapters.ttdlqg.simulator import TtdlqgSimulator
    from adapters.vnpt.simulator import VnptSimulator
    from hub.config import parse_config
    from hub.kit.pki import ensure_pki
    from hub.kit.synthetic import signing_identities
    from hub.web.server import serving_hub

    password = "bench-key-password"
    root = await asyncio.to_thread(ensure_pki, data_dir / "pki", signing_identities(), password)
    vendor, central = VnptSimulator(records=records, seed=7), TtdlqgSimulator()
    await vendor.start()
    await central.start()
    config = parse_config({
        "data_dir": str(data_dir / "hub"), "logging": {"level": "warning"},
        "adapters": [{"name": "school-a", "type": "vnpt", "poll_interval": 3600, "settings": vendor.adapter_settings()}],
        "destination": {"name": "central", "type": "ttdlqg", "settings": central.adapter_settings()},
        "signers": [{"name": "keys", "type": "pkcs12", "settings": {"directory": str(data_dir / "pki"),
                                                                    "password": password}}],
        "signing": {"steps": [{"role": r, "signer": "keys"} for r in ("homeroom_teacher", "principal", "school_seal")],
                    "trust": [str(root)]},
        "verify": {"public_base_url": "https://hocba.sogd.example.vn/verify"},
    })
    try:
        async with serving_hub(config, drain_timeout=1) as (hub, base):
            await asyncio.wait_for(hub.wait_idle(), 300)
            yield base, hub
    finally:
        await vendor.stop()
        await central.stop()


def documents_of(hub: Any) -> list[tuple[str, bytes]]:
    """The delivered PDFs and XML học bạ of ``hub``."""
    from hub import lifecycle as lc

    out = []
    for row in hub.store.rows(state=lc.DELIVERED):
        out += [("application/pdf", row.pdf)] if row.pdf else []
        out += [("application/xml", row.xml)] if row.xml else []
    return out


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--uploads", type=int, default=50)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--records", type=int, default=4, help="transcripts the hub delivers first")
    parser.add_argument("--time-limit", type=float, default=300.0)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="hocba-verify-load-") as tmp:
        async with serve(Path(tmp), args.records) as (url, hub):
            figures = await load(url, documents_of(hub), clients=args.clients, uploads=args.uploads,
                                 time_limit=args.time_limit)
    print(report(figures))
    ok = figures["statuses"] == {200: args.uploads} and figures["verdicts"] == {"valid": args.uploads}
    return 0 if ok and not figures["errors"] else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
