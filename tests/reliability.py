"""What the crash and fault suites share: the hub as a real process (``python -m hub.cli run``)
against simulators that live in the test process, a read-only look at its store while it
runs, and the final check that every valid record arrived exactly once.

The simulators run on the test's event loop, so what they received survives every kill of
the hub; the store is read with a separate connection (SQLite read-only, or PostgreSQL), as an
operator's query would.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from hub import lifecycle as lc
from hub import store as st
from hub.documents.verify import load_certs, verify_pdf
from hub.records import parse_transcript
from hub.store.audit import verify_chain

ADAPTER = "school-a"
ROLES = ["homeroom_teacher", "principal", "school_seal"]
TRANSITIONS = ["received", "normalized", "rendered", *[f"signed:{r}" for r in ROLES], "delivered"]


def route_name(i: int) -> str:
    return "central" if i == 0 else f"central-{i + 1}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(directory: Path, *, store: str, pki: tuple[Path, Path], password: str, vendor: Any,
                 central: Any | list[Any], poll_interval: float = 0.5, vendor_settings: dict[str, Any] | None = None,
                 delivery: dict[str, Any] | None = None, processes: int = 1,
                 remote_principal: dict[str, Any] | None = None) -> Path:
    """A hub config file pointing at the in-process simulators; ``central``: one destination's
    simulator, or several (one route each, every route taking every record); ``remote_principal``:
    the principal signs through the ``csc`` signer with these settings, the others with key files."""
    centrals = central if isinstance(central, list) else [central]
    config = {
        "data_dir": str(directory / "data"),
        "store": store,
        "logging": {"format": "json", "level": "warning"},
        "workers": {"processes": processes},
        "delivery": {"max_attempts": 1000, "backoff_initial": 0.05, "backoff_max": 0.5,
                     "breaker_threshold": 5, "breaker_probe_seconds": 0.3, **(delivery or {})},
        "adapters": [{"name": ADAPTER, "type": "vnpt", "poll_interval": poll_interval,
                      "settings": {**vendor.adapter_settings(), "backoff_seconds": 0.05,
                                   "max_backoff_seconds": 0.5, "timeout": 5, **(vendor_settings or {})}}],
        "routes": [{"name": route_name(i), "type": "ttdlqg", "settings": {**sim.adapter_settings(), "timeout": 5}}
                   for i, sim in enumerate(centrals)],
        "signers": [{"name": "keys", "type": "pkcs12",
                     "settings": {"directory": str(pki[0]), "password": password}}],
        "signing": {"steps": [{"role": r, "signer": "keys"} for r in ROLES]},
    }
    if remote_principal is not None:
        config["signers"].append({"name": "remote", "type": "csc", "settings": remote_principal})
        config["signing"]["steps"][1]["signer"] = "remote"
    path = directory / f"hub-{len(list(directory.glob('hub-*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    return path


class HubProcess:
    """``hocba-hub run`` as a child process in a process group of its own (its render/sign
    worker processes included), so ``kill()`` is a real ``kill -9`` of the whole hub."""

    def __init__(self, config: Path, log: Path, name: str = "hub", plugins: str = "vnpt,ttdlqg,pkcs12,xml"):
        self.config = config
        self.log = log
        self.name = name
        self.plugins = plugins
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.port = free_port()
        env = {**os.environ, "HOCBA_HUB_LOAD_PLUGINS": self.plugins, "PYTHONUNBUFFERED": "1"}
        with open(self.log, "ab") as out:
            out.write(f"\n--- start {self.name} at {time.strftime('%H:%M:%S')}\n".encode())
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "hub.cli", "run", "--config", str(self.config),
                 "--bind", f"127.0.0.1:{self.port}"],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL to the hub and every process it started, at once."""
        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()

    async def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM (drain and exit); SIGKILL if it does not exit in ``timeout``."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self.proc.poll() is None:
            self.kill()
        try:  # the pool's processes must not outlive the hub
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return self.proc.returncode

    async def ready(self, timeout: float = 60.0) -> dict[str, Any]:
        """The worker's ``/readyz`` body once it answers."""
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                if not self.running:
                    raise AssertionError(f"{self.name} exited: {self.tail()}")
                try:
                    async with http.get(f"http://127.0.0.1:{self.port}/readyz") as resp:
                        return await resp.json()
                except aiohttp.ClientError:
                    await asyncio.sleep(0.1)
        raise AssertionError(f"{self.name} did not answer /readyz: {self.tail()}")

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


class StoreProbe:
    """Counts read from the hub's store while it runs (or ``{}`` before it exists)."""

    def __init__(self, location: str):
        self.location = location
        self._pg: Any = None

    def _query(self, sql: str) -> list[tuple[Any, ...]]:
        try:
            if st.is_postgres_url(self.location):
                import psycopg

                if self._pg is None or self._pg.closed:
                    self._pg = psycopg.connect(self.location, autocommit=True, connect_timeout=5)
                return list(self._pg.execute(sql).fetchall())
            if not Path(self.location).exists():
                return []
            db = sqlite3.connect(f"file:{self.location}?mode=ro", uri=True, timeout=5)
            try:
                return list(db.execute(sql).fetchall())
            finally:
                db.close()
        except Exception:
            return []  # not created yet, or locked for a moment: ask again at the next poll

    def transitions(self) -> dict[str, int]:
        """How many records ever entered each state (history only grows)."""
        return {state: n for state, n in self._query(
            "SELECT state, COUNT(*) FROM history WHERE detail IS NULL OR detail NOT LIKE 'retry:%%'"
            " GROUP BY state")}

    def latest(self) -> dict[str, tuple[int, str]]:
        """record_id → (latest version, its state)."""
        rows = self._query("SELECT r.record_id, r.version, r.state FROM records r JOIN"
                           " (SELECT record_id, MAX(version) AS v FROM records GROUP BY record_id) m"
                           " ON m.record_id = r.record_id AND m.v = r.version")
        return {rid: (v, state) for rid, v, state in rows}

    def close(self) -> None:
        if self._pg is not None:
            self._pg.close()


def content_of(record: dict[str, Any]) -> str:
    """The transcript's content (no envelope), comparable across spellings."""
    return st.content_hash(parse_transcript(record).model_dump(mode="json"))


class Batch:
    """The records a vendor simulator serves, and what the central store must end up with."""

    def __init__(self, vendor: Any):
        self.vendor = vendor
        self.valid = {st.record_id_for(ADAPTER, vendor.source_id(i)): i for i in range(vendor.records)}
        self.invalid = {st.record_id_for(ADAPTER, sid) for sid in vendor.defects}

    def expected_content(self, rid: str) -> str:
        central = self.vendor.central(self.valid[rid])
        return content_of({**central, "record_id": rid, "event": "NEW", "version": 1,
                           "updated_at": "2025-01-01T00:00:00"})

    def arrived(self, central: Any | list[Any], probe: StoreProbe) -> bool:
        """Every valid record at the central store (each of them) at the vendor's current
        content, and the store finished with every record (latest versions delivered or
        quarantined)."""
        if isinstance(central, list):
            return all(self.arrived(one, probe) for one in central)
        accepted = central.accepted()
        if set(accepted) != set(self.valid):
            return False
        latest = probe.latest()
        if set(latest) != set(self.valid) | self.invalid:
            return False
        for rid in self.invalid:
            if latest[rid][1] != lc.QUARANTINED:
                return False
        for rid in self.valid:
            version, state = latest[rid]
            if state != lc.DELIVERED or accepted[rid] != version:
                return False
            if content_of(central.records[(rid, version)]) != self.expected_content(rid):
                return False
        return True


@dataclass
class Outcome:
    """The figures a reliability run reports."""
    records: int = 0
    versions_delivered: int = 0
    duplicates: int = 0
    lost: int = 0
    resends: int = 0
    problems: list[str] = field(default_factory=list)

    def line(self, **extra: Any) -> str:
        figures = {**extra, "records": self.records, "versions_delivered": self.versions_delivered,
                   "duplicates": self.duplicates, "lost": self.lost, "resends_answered_as_duplicates": self.resends}
        return " ".join(f"{k}={v}" for k, v in figures.items())


async def check_outcome(batch: Batch, central: Any | list[Any], location: str, root: Path,
                        replayed: frozenset[str] = frozenset(), destination: str | None = None) -> Outcome:
    """Everything the suites promise, checked after the hub stopped (with several destinations,
    for each of them: the figures add up, the problems name the destination):

    - every valid record is at the central store exactly once per version it was sent in,
      at its latest version, with the vendor's current content (lost = 0);
    - no version was sent twice with different content, nor created twice (duplicates = 0);
    - every delivered PDF's signatures are valid, in the Ministry's order, under the test root;
    - the quarantine holds exactly the invalid records, nothing failed or is still pending;
    - each delivered version went through every state exactly once (rendered once, each
      signature once, delivered once; one the destination accepted while a newer version
      arrived is superseded just before it is delivered), and the audit chain is intact.
    """
    if isinstance(central, list):
        total = Outcome(records=len(batch.valid) + len(batch.invalid))
        for i, one in enumerate(central):
            part = await check_outcome(batch, one, location, root, replayed, route_name(i))
            total.versions_delivered += part.versions_delivered
            total.duplicates += part.duplicates
            total.lost += part.lost
            total.resends += part.resends
            total.problems += [f"{route_name(i)}: {p}" for p in part.problems]
        return total
    out = Outcome(records=len(batch.valid) + len(batch.invalid))
    store = st.open_store(location)
    try:
        rows = store.rows()
        accepted = central.accepted()
        out.versions_delivered = len(central.records)
        out.resends = central.counters.duplicates
        out.duplicates = central.counters.conflicts + (central.counters.created - len(central.records))
        if central.counters.conflicts:
            out.problems.append(f"{central.counters.conflicts} submission(s) of a held version with other content")
        latest: dict[str, st.Row] = {}
        for row in rows:
            if row.record_id not in latest or row.version > latest[row.record_id].version:
                latest[row.record_id] = row
        for rid in batch.valid:
            row = latest.get(rid)
            if row is None or row.state != lc.DELIVERED or accepted.get(rid) != row.version:
                out.lost += 1
                out.problems.append(f"{rid}: store {row.state if row else 'missing'} v{row.version if row else '-'},"
                                    f" central store v{accepted.get(rid)}")
                continue
            if content_of(central.records[(rid, row.version)]) != batch.expected_content(rid):
                out.lost += 1
                out.problems.append(f"{rid}: the central store holds stale content at v{row.version}")
        extra = set(accepted) - set(batch.valid)
        if extra:
            out.duplicates += len(extra)
            out.problems.append(f"records at the central store that are not valid vendor records: {sorted(extra)}")
        quarantined = {r.record_id for r in latest.values() if r.state == lc.QUARANTINED}
        if quarantined != batch.invalid:
            out.problems.append(f"quarantine {sorted(quarantined)} != invalid {sorted(batch.invalid)}")
        if store.pending():
            out.problems.append(f"still pending: {store.pending()}")
        bad_states = [r for r in rows if r.state in (lc.FAILED, lc.DEAD_LETTER)]
        if bad_states:
            out.problems.append(f"failed or dead-lettered: {[(r.id, r.state, r.errors) for r in bad_states]}")
        for row in rows:
            if row.state == lc.DELIVERED:
                # A version one destination accepted while a newer one superseded it never went
                # to the others: each destination answers for what the store says it holds.
                held = {d["destination"] for d in store.deliveries_of(row.id) if d["state"] == lc.DELIVERED}
                if destination is not None and destination not in held:
                    continue
                if (row.record_id, row.version) not in central.records:
                    out.lost += 1
                    out.problems.append(f"{row.record_id} v{row.version}: delivered in the store, not at the central store")
                states = [h["state"] for h in store.history(row.id) if not (h["detail"] or "").startswith("retry:")]
                if row.record_id in replayed and lc.FAILED in states:
                    # An operator's replay after a refusal: from the replayed stage on, once each.
                    states = states[len(states) - 1 - states[::-1].index(lc.FAILED) + 1:]
                    states = TRANSITIONS[:TRANSITIONS.index(states[0])] + states if states else states
                if states[-2:] == [lc.SUPERSEDED, lc.DELIVERED]:
                    # Accepted by the destination while a newer version arrived: superseded in the
                    # store meanwhile, then delivered with its receipt (Store.delivery_done), so the
                    # store says what the destination holds; every other state still once each.
                    states = [*states[:-2], lc.DELIVERED]
                if states != TRANSITIONS:
                    out.problems.append(f"{row.record_id} v{row.version}: went through {states}")
        roots = load_certs(root)
        for (rid, version), pdf in central.documents.items():
            report = await verify_pdf(pdf, roots)
            fields = [s.field for s in report.signatures]
            if not report.ok or fields != ROLES:
                out.problems.append(f"{rid} v{version}: signatures not valid ({report.error}, {fields})")
        chain = verify_chain(store.audit_entries())
        if not chain.ok:
            out.problems.append(f"audit chain: {chain.problems}")
    finally:
        store.close()
    return out


def summary(path: Path, **figures: Any) -> None:
    """Append one JSON line of figures (the long suite's record, for the README)."""
    with open(path, "a", encoding="utf-8") as out:
        out.write(json.dumps(figures, ensure_ascii=False) + "\n")
