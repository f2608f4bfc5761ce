"""``hocba-hub demo``: the whole pipeline on synthetic transcripts, against the simulators.

Every adapter in the config that ships a simulator gets one on loopback (ephemeral port),
seeded with its share of the valid transcripts plus a few deliberately invalid ones; the
destination's simulator receives. The demo issues a throwaway test PKI into
``<data_dir>/pki`` on first run (point a local-key signer there, as config/example.yaml does),
runs the hub until every record is delivered or quarantined, writes the signed PDFs and XML học bạ and the
PKI's ``root-ca.pem`` to the output folder and exits 0 only if every valid record reached the
destination and every invalid one is quarantined with its reasons.

With ``identity:`` in the config, the identity provider's simulator starts too, its population
seeded from the sources' transcripts so that some students disagree with it in known ways: those
records must end blocked on identity, with reasons, and the rest delivered.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from hub import lifecycle as lc
from hub import store as st
from hub.config import ConfigError, HubConfig, load_config_or_report
from hub.contracts import IdentitySimulator, PluginError, Simulator
from hub.documents.verify import trust_roots_der
from hub.engine.pipeline import Hub
from hub.logs import configure, mask
from hub.plugins import adapter_types, identity_provider_types, resolve

DEMO_KEY_PASSWORD_ENV = "HOCBA_DEMO_KEY_PASSWORD"
DEMO_KEY_PASSWORD = "demo-only-password"


def default_config() -> Path:
    """``config/example.yaml`` in the current directory, else the one beside the source tree."""
    here = Path("config/example.yaml")
    if here.exists():
        return here
    return Path(__file__).resolve().parents[2] / "config" / "example.yaml"


def simulator_class(adapter_type: str, registry=adapter_types) -> type[Simulator] | None:
    ref = registry()[adapter_type].cls.simulator
    if not ref:
        return None
    return resolve(ref)


def split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


async def start_simulators(config: HubConfig, records: int, invalid: int, *, vendor_pki: Path | None = None,
                           password: str = DEMO_KEY_PASSWORD, trust: Sequence[bytes] = ()
                           ) -> tuple[list[tuple[str, Simulator]], Simulator, list[Simulator]]:
    """Start a simulator per adapter that has one and one per route; point the config at them.
    Returns the sources' simulators, the first route's, and the other routes'. ``trust``: the
    roots (DER) a destination checking signatures trusts (the demo's test PKI).

    ``vendor_pki``: a source whose simulator can deliver the XML học bạ already signed in the
    school's software (``sign_xml``: push, misa) does so, with a test PKI of its own under
    ``vendor_pki/<name>``; the hub trusts that vendor's root as a Department would configure it."""
    sources = [a for a in config.adapters if a.enabled and simulator_class(a.type)]
    if not sources:
        raise ConfigError(["adapters: the demo needs at least one adapter that ships a simulator"])
    for i, route in enumerate(config.routes):
        if simulator_class(route.type) is None:
            raise ConfigError([f"routes[{i}].type: {route.type!r} ships no simulator for the demo"])
    started: list[tuple[str, Simulator]] = []
    shares = zip(sources, split(records, len(sources)), split(invalid, len(sources)))
    for seed, (section, n, bad) in enumerate(shares):
        sim = simulator_class(section.type)(records=n, invalid=bad, seed=seed)
        if vendor_pki is not None and config.xml_format == "xml" and hasattr(sim, "sign_xml"):
            root = await asyncio.to_thread(sim.sign_xml, section.name, vendor_pki / section.name, password)
            config.signing.trust.append(root)
        await sim.start()
        started.append((section.name, sim))
        config.override_settings(section.name, sim.adapter_settings())
    routes: list[Simulator] = []
    for route in config.routes:
        sim = simulator_class(route.type)()
        # The vendors' roots too: their teachers' signatures travel in the XML the store checks.
        sim.trust((*trust, *trust_roots_der(tuple(config.signing.trust))))
        await sim.start()
        config.override_settings(route.name, sim.adapter_settings())
        routes.append(sim)
    return started, routes[0], routes[1:]


async def start_identity_simulator(config: HubConfig, sources: list[tuple[str, Simulator]]
                                   ) -> IdentitySimulator | None:
    """The identity provider's simulator, its population seeded from the sources' valid
    transcripts; the config points the provider at it. None without ``identity:``."""
    if config.identity is None:
        return None
    cls = simulator_class(config.identity.type, identity_provider_types)
    if cls is None or not issubclass(cls, IdentitySimulator):
        raise ConfigError([f"identity.type: {config.identity.type!r} ships no simulator for the demo"])
    sim = cls()
    sim.populate([source.seeded(i) for _, source in sources for i in range(source.records)])
    await sim.start()
    config.override_settings(config.identity.name, sim.adapter_settings())
    return sim


async def run_demo(config_path: str | None, *, records: int, out: Path, invalid: int = 5) -> int:
    from hub.kit.pki import ensure_pki
    from hub.kit.synthetic import signing_identities

    configure("console", "error")  # the summary lists every quarantine reason; keep the bar readable
    os.environ.setdefault(DEMO_KEY_PASSWORD_ENV, DEMO_KEY_PASSWORD)
    path = Path(config_path) if config_path else default_config()
    config = load_config_or_report(path)
    if config is None:
        return 1
    out.mkdir(parents=True, exist_ok=True)
    print(f"hocba-hub demo: {records} valid + {invalid} invalid transcripts, config {path}")
    root_pem = await asyncio.to_thread(
        ensure_pki, config.data_dir / "pki", signing_identities(), os.environ[DEMO_KEY_PASSWORD_ENV]
    )
    store_path = config.data_dir / "demo.sqlite3"
    for leftover in config.data_dir.glob("demo.sqlite3*"):
        leftover.unlink()  # each demo run starts from an empty store, as the simulators do

    from hub.kit.tsa import start_signing_services

    # A timestamping authority and remote-signing simulators, when the config's signing asks.
    services = await start_signing_services(config, config.data_dir / "pki", os.environ[DEMO_KEY_PASSWORD_ENV])
    vendor_pki = config.data_dir / "vendor-pki"
    shutil.rmtree(vendor_pki, ignore_errors=True)  # the vendors' keys are as throwaway as the run
    sources, destination, other_routes = await start_simulators(config, records, invalid, vendor_pki=vendor_pki,
                                                                password=os.environ[DEMO_KEY_PASSWORD_ENV],
                                                                trust=trust_roots_der((root_pem,)))
    identity = await start_identity_simulator(config, sources)
    hub = Hub(config, store=st.Store(store_path))
    try:
        await hub.start()
    except PluginError as exc:
        print(f"cannot start: {exc}", file=sys.stderr)
        return 1
    total = records + invalid
    server = None
    try:
        if any(type(a).can("verify_push") for a in hub.adapters.values()):
            # Pushing vendors need the hub's HTTP face: serve it on an ephemeral loopback port.
            server, hub_url = await _serve(hub)
            for name, sim in sources:
                await sim.feed(hub_url, name)
        with tqdm(total=total, unit="record", desc="transcripts", file=sys.stderr) as bar:
            waiter = asyncio.create_task(hub.wait_idle())
            while not waiter.done():
                await asyncio.wait({waiter}, timeout=0.25)
                counts = hub.store.counts()
                bar.n = sum(counts.get(s, 0) for s in lc.FINAL_STATES | lc.BLOCKED_STATES)
                bar.refresh()
        rows = hub.store.rows()
        packages = hub.store.packages(limit=100_000)
        routes = dict(zip(config.route_names, (destination, *other_routes)))
        for name, sim in routes.items():
            shutil.rmtree(out / name, ignore_errors=True)
            sim.save(out / name)
    finally:
        if server is not None:
            server.should_exit = True
            await server.serve_task
        await hub.stop()
        for sim in (*(s for _, s in sources), destination, *other_routes, *services, *([identity] if identity else [])):
            await sim.stop()

    for name, _sim in sources:
        if (vendor_pki / name / "root-ca.pem").exists():
            shutil.copyfile(vendor_pki / name / "root-ca.pem", out / f"vendor-{name}-root-ca.pem")
    return _report(rows, routes, packages, out, root_pem, records, invalid, identity)


async def _serve(hub: Hub):
    import uvicorn

    from hub.web.app import create_app

    server = uvicorn.Server(uvicorn.Config(create_app(hub), host="127.0.0.1", port=0, log_level="error",
                                           lifespan="off"))
    server.serve_task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}"


def _report(rows: list[st.Row], routes: dict[str, Simulator], packages: list[Any], out: Path, root_pem: Path,
            records: int, invalid: int, identity: IdentitySimulator | None = None) -> int:
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.state] = counts.get(row.state, 0) + 1
    for row in rows:
        if row.state == lc.DELIVERED:
            stem = f"{row.school_code}-{row.record_id[:8]}-v{row.version}"
            if row.pdf:
                (out / f"{stem}.pdf").write_bytes(row.pdf)
            if row.xml:
                (out / f"{stem}.xml").write_bytes(row.xml)
    shutil.copyfile(root_pem, out / "root-ca.pem")

    print("\nrecords by state:")
    for state, n in sorted(counts.items()):
        print(f"  {state:<12} {n}")
    quarantined = [r for r in rows if r.state == lc.QUARANTINED]
    if quarantined:
        print("\nquarantined (with reasons):")
        for row in quarantined:
            print(f"  {row.adapter}/{row.source_id}: " + "; ".join(row.errors))
    blocked = [r for r in rows if r.state == lc.BLOCKED_IDENTITY]
    if blocked:
        print("\nblocked on identity (with reasons; `hocba-hub identity-report` exports them per school):")
        for row in blocked:
            student = (row.normalized or {}).get("student") or {}
            who = mask(student["personal_id"]) if student.get("personal_id") else "(no personal id)"
            print(f"  {row.school_code} {student.get('student_code')} {who}: " + "; ".join(row.errors))
    failed = [r for r in rows if r.state == lc.FAILED]
    for row in failed:
        print(f"  FAILED {row.adapter}/{row.source_id}: " + "; ".join(row.errors))

    delivered = {r.record_id: r.version for r in rows if r.state == lc.DELIVERED}
    problems = []
    print("\ndestinations:")
    for name, sim in routes.items():
        # A CANCEL, when one is delivered, is the version a destination holds too.
        missing = [rid for rid, v in delivered.items() if sim.accepted().get(rid) != v]
        mine = [p for p in packages if p.destination == name]
        how = f" in {len(mine)} class packages the Department signed" if mine else ""
        saved = f"; what it received is in {out / name}/" if (out / name).is_dir() else ""
        print(f"  {name:<14} holds {len(delivered) - len(missing)} transcripts{how}{saved}")
        if missing:
            problems.append(f"{len(missing)} delivered records not held by {name} at their version")
    expected_blocked = set(identity.expected) if identity is not None else set()
    blocked_ids = {(r.normalized or {}).get("transcript_id") for r in blocked}
    if blocked_ids != expected_blocked or any(not r.errors for r in blocked):
        problems.append(f"{len(blocked)} blocked on identity (with reasons), expected {len(expected_blocked)}")
    if len(delivered) != records - len(expected_blocked):
        problems.append(f"{len(delivered)} of {records - len(expected_blocked)} valid records delivered")
    if len(quarantined) != invalid or any(not r.errors for r in quarantined):
        problems.append(f"{len(quarantined)} quarantined (with reasons), expected {invalid}")
    if failed:
        problems.append(f"{len(failed)} failed")
    arrived = [r for r in rows if r.state == lc.DELIVERED and r.xml and b"sig-gvcn" in r.xml
               and (out / f"vendor-{r.adapter}-root-ca.pem").exists()]
    if arrived:
        print(f"\n{len(arrived)} XML học bạ arrived signed by their teachers in the school's software "
              f"({', '.join(sorted({r.adapter for r in arrived}))}); the hub checked those signatures and "
              f"added the principal's and the school's (trust the vendor-*-root-ca.pem files to verify them)")
    print(f"\nsigned documents (PDF, XML) and root-ca.pem written to {out}/")
    if problems:
        print("DEMO FAILED: " + "; ".join(problems), file=sys.stderr)
        return 1
    print(f"demo OK: {len(delivered)} delivered and accepted by every destination, {invalid} quarantined with reasons"
          + (f", {len(blocked)} blocked on identity with reasons" if identity is not None else ""))
    return 0
