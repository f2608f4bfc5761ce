"""Scaling past one process: hub workers on PostgreSQL against one hub on SQLite, in one run.

    python bench/scale.py [--records N] [--workers 1,2,4] [--ingest M] [--memory 10000,100000]
                          [--postgres URL] [--processes P]

Three measurements, each on this machine in this run:

1. **Throughput.** ``N`` valid synthetic transcripts pulled from a vnpt simulator, normalised,
   rendered, signed three times (pkcs12, a throwaway PKI) and delivered to a ttdlqg simulator,
   by real ``hocba-hub run`` processes: first one worker on SQLite (the default deployment),
   then 1, 2 and 4 workers sharing one PostgreSQL database. Timed from launching the workers
   to the central store's acceptance of the last transcript. Each worker renders and
   signs in ``P`` processes (default 0 = one per core, as deployed). Start-up (the worker
   pools, each signing key opened the first time it signs) is paid alike in every
   configuration, so the ratios compare the rates from the first delivery to the last; the
   rates with start-up are printed too.
2. **Ingest + normalise** records/s, in this process, for each backend: ``M`` vendor payloads
   committed with ``Store.receive`` a page (100) at a time, then each normalised by the vnpt
   adapter and the central format and committed as ``normalized``.
3. **Resident memory** of this process while ``Store.receive`` streams pages of 1,000 records
   into a SQLite store, read from ``/proc/self/status`` at each count in ``--memory`` (add
   1000000 for the 1M figure; it takes a few minutes more). The store must not hold what it
   stored: memory stays flat.

The simulators run on this process's event loop; the workers are separate processes. On a
2-core machine, more workers do not add cores: expect the ratios to show the coordination
overhead, not a speed-up — on a larger machine or several machines they scale with the cores.
The last line is ``ratio_4_workers: X.YZ`` = rate of 4 PostgreSQL workers / rate of 1 SQLite
worker (after start-up). Exit status is non-zero unless every run delivered every transcript exactly once.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HOCBA_HUB_LOAD_PLUGINS", "vnpt,ttdlqg,pkcs12,xml")

import yaml  # noqa: E402

from adapters.ttdlqg.simulator import TtdlqgSimulator  # noqa: E402
from adapters.vnpt.simulator import VnptSimulator  # noqa: E402
from hub import lifecycle as lc  # noqa: E402
from hub import store as st  # noqa: E402
from hub.contracts import PluginContext, RawRecord  # noqa: E402
from hub.kit.pki import ensure_pki  # noqa: E402
from hub.kit.synthetic import signing_identities  # noqa: E402
from hub.plugins import adapter_types  # noqa: E402
from hub.records import parse_transcript  # noqa: E402

PASSWORD = "bench-only-password"
DEFAULT_POSTGRES = os.environ.get("HOCBA_HUB_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
ROLES = ["homeroom_teacher", "principal", "school_seal"]


def rss_mb() -> float:
    """Resident memory of this process now (not the peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class ScratchDatabase:
    """A database of its own for one run, dropped afterwards."""

    def __init__(self, server: str):
        import psycopg

        self._psycopg = psycopg
        self.server = server
        self.name = f"hocba_bench_{uuid.uuid4().hex[:10]}"
        parts = urlsplit(server)
        self.url = urlunsplit((parts.scheme, parts.netloc, "/" + self.name, parts.query, parts.fragment))

    def __enter__(self) -> str:
        with self._psycopg.connect(self.server, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.name}"')
        return self.url

    def __exit__(self, *exc: object) -> None:
        with self._psycopg.connect(self.server, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def throughput(records: int, workers: int, store: str, processes: int, pki_dir: Path, work: Path) -> dict:
    """One configuration: ``workers`` hub processes on ``store`` until every transcript arrived."""
    vendor = VnptSimulator(records=records, seed=4242)
    central = TtdlqgSimulator()
    await vendor.start()
    await central.start()
    work.mkdir(parents=True, exist_ok=True)
    config = work / "hub.yaml"
    config.write_text(yaml.safe_dump({
        "data_dir": str(work / "data"), "store": store,
        "logging": {"format": "json", "level": "warning"},
        "workers": {"processes": processes},
        "delivery": {"backoff_initial": 0.05, "backoff_max": 1.0},
        "adapters": [{"name": "school-a", "type": "vnpt", "poll_interval": 3600,
                      "settings": {**vendor.adapter_settings(), "page_size": 100}}],
        "destination": {"name": "central", "type": "ttdlqg", "settings": central.adapter_settings()},
        "signers": [{"name": "keys", "type": "pkcs12", "settings": {"directory": str(pki_dir), "password": PASSWORD}}],
        "signing": {"steps": [{"role": r, "signer": "keys"} for r in ROLES]},
    }), encoding="utf-8")
    procs: list[subprocess.Popen[bytes]] = []
    log = open(work / "workers.log", "ab")
    started = time.perf_counter()
    first = None
    try:
        for _ in range(workers):
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "hub.cli", "run", "--config", str(config), "--bind", f"127.0.0.1:{_free_port()}"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        deadline = started + 120 + records * 5
        while central.counters.created < records and time.perf_counter() < deadline:
            if first is None and central.counters.created:
                first = time.perf_counter()
            if any(p.poll() is not None for p in procs):
                raise RuntimeError(f"a worker exited; see {work / 'workers.log'}")
            await asyncio.sleep(0.02)
        elapsed = time.perf_counter() - started
        steady = time.perf_counter() - (first or started)
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                await asyncio.wait_for(asyncio.to_thread(p.wait), 60)
            except asyncio.TimeoutError:
                os.killpg(p.pid, signal.SIGKILL)
        log.close()
        await vendor.stop()
        await central.stop()
    ok = central.counters.created == records and len(central.accepted()) == records and not central.counters.conflicts
    return {"records": records, "seconds": elapsed, "rate": records / elapsed,
            "steady_rate": (records - 1) / steady if steady > 0 and records > 1 else None, "ok": ok,
            "created": central.counters.created, "resent": central.counters.duplicates}


async def pool_scaling(records: int, sizes: list[int], pki_dir: Path, root: Path, work: Path) -> bool:
    """One hub (SQLite, in this process; simulators in their own) with each worker-pool size in
    ``sizes``: rate after start-up, CPU split, and the speedup over one worker process."""
    from pipeline import report_hub, run_hub

    from hub.engine.pool import worker_context
    from hub.logs import configure

    configure("console", "error")  # a log line per state change is not what is measured here
    # Not timed: the fork server that every hub of this process forks its workers from
    # (hub.engine.pool.worker_context) imports the document modules once when it starts;
    # left to the first size, that size alone would pay it.
    with ProcessPoolExecutor(1, mp_context=worker_context()) as warm:
        await asyncio.wrap_future(warm.submit(os.getpid))
    rates: dict[int, float] = {}
    ok = True
    for size in sizes:
        print(f"one hub, {size} worker process(es), load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}:")
        result = await run_hub(records, size, pki_dir, root, work / f"pool-{size}")
        report_hub(result, indent="    ")
        ok &= result.accepted == result.records
        rates[size] = result.rate_after_startup
    first = rates[sizes[0]] / sizes[0]
    for size in sizes:
        print(f"speedup_{size}_processes: {rates[size] / first:.2f} (target ≥ {0.8 * size:.1f})")
    return ok


def _pool_sizes() -> str:
    cores = os.cpu_count() or 1
    sizes, n = [], 1
    while n < cores:
        sizes.append(n)
        n *= 2
    return ",".join(map(str, [*sizes, cores]))


def ingest_normalise(count: int, location: str) -> float:
    """Records/s: receive in pages of 100, then normalise each and commit it as normalized."""
    vendor = VnptSimulator(records=min(count, 200), seed=7)
    templates = [json.dumps(vendor.vendor_record(i), ensure_ascii=False) for i in range(min(count, 200))]
    adapter_cls = adapter_types()["vnpt"].cls
    adapter = adapter_cls(adapter_cls.Settings.model_construct(), PluginContext("vnpt", Path(".")))
    store = st.open_store(location)
    try:
        started = time.perf_counter()
        for page_start in range(0, count, 100):
            page = [RawRecord(f"src-{i}", templates[i % len(templates)].replace(
                vendor.source_id(i % len(templates)), f"src-{i}").encode())
                for i in range(page_start, min(count, page_start + 100))]
            for pk in store.receive("school-a", page, f"cursor-{page_start}", save_cursor=True):
                row = store.get(pk)
                data = adapter.normalize(row.raw())
                record = parse_transcript({**data, "record_id": row.record_id, "event": row.event,
                                           "version": row.version, "updated_at": "2025-06-01T07:00:00"})
                normalized = record.model_dump(mode="json")
                store.advance(pk, lc.RECEIVED, lc.NORMALIZED, normalized=normalized,
                              content_hash=st.content_hash(normalized), school_code=record.school_code,
                              school_year=record.school_year)
        return count / (time.perf_counter() - started)
    finally:
        store.close()


def memory_while_streaming(counts: list[int], location: str) -> list[tuple[int, float, float]]:
    """(stored records, RSS MB, seconds) at each count, streaming pages of 1,000 into the store."""
    vendor = VnptSimulator(records=1, seed=9)
    template = json.dumps(vendor.vendor_record(0), ensure_ascii=False)
    marker = vendor.source_id(0)
    store = st.open_store(location)
    out = []
    stored = 0
    started = time.perf_counter()
    try:
        for target in sorted(counts):
            while stored < target:
                n = min(1000, target - stored)
                page = (RawRecord(f"m-{i}", template.replace(marker, f"m-{i}").encode())
                        for i in range(stored, stored + n))
                store.receive("school-a", page, f"cursor-{stored + n}", save_cursor=True)
                stored += n
            out.append((stored, rss_mb(), time.perf_counter() - started))
    finally:
        store.close()
    return out


async def main_async(args: argparse.Namespace) -> int:
    work = Path(tempfile.mkdtemp(prefix="hocba-scale-"))
    try:
        return await _measure(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # the 1M-record store alone is gigabytes


async def _measure(args: argparse.Namespace, work: Path) -> int:
    pki_dir = work / "pki"
    root = await asyncio.to_thread(ensure_pki, pki_dir, signing_identities(), PASSWORD)
    print(f"machine: {os.cpu_count()} cores; records per run: {args.records}; "
          f"processes per worker: {args.processes or 'one per core'}")
    ok = True
    if args.pool:
        ok &= await pool_scaling(args.records, args.pool, pki_dir, root, work)
    base = await throughput(args.records, 1, "", args.processes, pki_dir, work / "sqlite-1")
    ok &= base["ok"]
    print(f"throughput sqlite 1 worker: {base['records']} transcripts in {base['seconds']:.1f} s = "
          f"{base['rate']:.2f}/s (after the first delivery {base['steady_rate'] or 0:.2f}/s)", flush=True)
    ratios: dict[int, float] = {}
    startup_ratios: dict[int, float] = {}
    for n in args.workers:
        with ScratchDatabase(args.postgres) as url:
            result = await throughput(args.records, n, url, args.processes, pki_dir, work / f"postgres-{n}")
        ok &= result["ok"]
        ratios[n] = (result["steady_rate"] or 0) / (base["steady_rate"] or float("inf"))
        startup_ratios[n] = result["rate"] / base["rate"]
        print(f"throughput postgresql {n} worker(s): {result['records']} transcripts in {result['seconds']:.1f} s = "
              f"{result['rate']:.2f}/s (after the first delivery {result['steady_rate'] or 0:.2f}/s); "
              f"accepted {result['created']}/{result['records']}, re-sent {result['resent']}", flush=True)
    if args.ingest:
        rate = ingest_normalise(args.ingest, str(work / "ingest.sqlite3"))
        print(f"ingest+normalise sqlite: {args.ingest} records at {rate:.0f} records/s", flush=True)
        with ScratchDatabase(args.postgres) as url:
            rate = ingest_normalise(args.ingest, url)
        print(f"ingest+normalise postgresql: {args.ingest} records at {rate:.0f} records/s", flush=True)
    if args.memory:
        points = memory_while_streaming(args.memory, str(work / "memory.sqlite3"))
        for stored, rss, seconds in points:
            print(f"rss while streaming into sqlite: {stored} stored records, {rss:.1f} MB resident "
                  f"({seconds:.0f} s, {stored / seconds:.0f} records/s)", flush=True)
        print(f"rss_growth {points[0][0]} → {points[-1][0]} records: {points[-1][1] - points[0][1]:+.1f} MB")
    if not args.workers:
        return 0 if ok else 1
    for n in args.workers:
        print(f"ratio_{n}_workers_with_startup: {startup_ratios[n]:.2f}")
    for n in args.workers:
        if n != 4:
            print(f"ratio_{n}_workers: {ratios[n]:.2f}")
    if 4 in ratios:
        print(f"ratio_4_workers: {ratios[4]:.2f}")
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=60, help="transcripts per throughput run")
    parser.add_argument("--pool", default=_pool_sizes(),
                        help="worker-pool sizes of one hub (default 1, 2, 4, … up to the cores; '': skip)")
    parser.add_argument("--workers", default="1,2,4", help="PostgreSQL hub-process counts to run ('': skip)")
    parser.add_argument("--processes", type=int, default=0, help="render/sign processes per worker (0: per core)")
    parser.add_argument("--ingest", type=int, default=2000, help="records for ingest+normalise (0: skip)")
    parser.add_argument("--memory", default="10000,100000", help="stored-record counts to read RSS at ('': skip)")
    parser.add_argument("--postgres", default=DEFAULT_POSTGRES, help="a PostgreSQL server (a database is made per run)")
    args = parser.parse_args()
    args.workers = [int(n) for n in args.workers.split(",") if n]
    args.pool = [int(n) for n in args.pool.split(",") if n]
    args.memory = [int(n) for n in args.memory.split(",") if n]
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
