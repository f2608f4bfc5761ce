"""The ``hocba-hub`` command line."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path

from pydantic import ValidationError


def _print_errors(lines: list[str]) -> None:
    for line in lines:
        print(line, file=sys.stderr)


def cmd_plugins(args: argparse.Namespace) -> int:
    from hub.plugins import adapter_types, signer_types

    rows = []
    for info in list(adapter_types().values()) + list(signer_types().values()):
        if info.kind == "adapter":
            labels = {"fetch": "fetch", "verify_push": "push", "normalize": "normalize", "deliver": "deliver"}
            can = ", ".join(label for method, label in labels.items() if info.cls.can(method))
        else:
            can = "sign"
        rows.append((info.kind, info.name, info.package, info.version, can))
    if args.json:
        print(json.dumps([dict(zip(("kind", "name", "package", "version", "capabilities"), r)) for r in rows],
                         ensure_ascii=False, indent=2))
        return 0
    widths = [max(len(str(r[i])) for r in rows + [("kind", "name", "package", "version", "capabilities")])
              for i in range(5)]
    for row in [("kind", "name", "package", "version", "capabilities"), *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    if args.config:
        from hub.config import config_json_schema

        schema = config_json_schema()
    else:
        from hub.records import transcript_json_schema

        schema = transcript_json_schema()
    print(json.dumps(schema, ensure_ascii=False, indent=2))
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    from hub.config import ConfigError, load_config

    try:
        config = load_config(args.file)
    except ConfigError as exc:
        _print_errors(exc.errors)
        return 1
    print(f"{args.file}: valid ({len(config.adapters)} adapter(s), {len(config.signers)} signer(s), "
          f"destination {config.destination.name})")
    return 0


def cmd_normalize(args: argparse.Namespace) -> int:
    from hub.contracts import PluginContext, RawRecord
    from hub.plugins import adapter_types
    from hub.records import VIETNAM_TIME, field_errors, parse_transcript
    from hub.store import record_id_for

    info = adapter_types().get(args.adapter)
    if info is None:
        _print_errors([f"unknown adapter {args.adapter!r} (installed: {', '.join(sorted(adapter_types()))})"])
        return 2
    if not info.cls.can("normalize"):
        _print_errors([f"adapter {args.adapter!r} does not normalize records (it is a destination)"])
        return 2
    path = Path(args.file)
    payload = path.read_bytes()
    # Normalising needs no connection, so the adapter gets its settings' defaults unvalidated.
    adapter = info.cls(info.cls.Settings.model_construct(), PluginContext(args.adapter, Path(".")))
    try:
        # The records the file holds with their real envelope (a recalled record is a CANCEL; a
        # spreadsheet is one record per row), as the hub would store them.
        raws: list[RawRecord] = adapter.read_file(path.name, payload)
    except (ValueError, KeyError, TypeError) as exc:
        _print_errors([str(exc)])
        return 1
    out, failed = [], False
    for raw in raws:
        prefix = f"{raw.source_id}: " if len(raws) > 1 else ""
        updated = raw.updated_at.astimezone(VIETNAM_TIME) if raw.updated_at and raw.updated_at.tzinfo else raw.updated_at
        try:
            data = adapter.normalize(raw)
            record = parse_transcript({**data, "record_id": record_id_for(args.adapter, raw.source_id),
                                       "event": "CANCEL" if raw.deleted else "NEW", "version": 1,
                                       "updated_at": (updated.replace(tzinfo=None).isoformat(timespec="seconds")
                                                      if updated else "2025-01-01T00:00:00")})
        except ValidationError as exc:
            _print_errors([prefix + line for line in field_errors(exc)])
            failed = True
            continue
        except (ValueError, KeyError, TypeError) as exc:
            _print_errors([prefix + str(exc)])
            failed = True
            continue
        out.append(record.model_dump(mode="json", by_alias=not args.snake_case))
    if out:
        print(json.dumps(out[0] if len(raws) == 1 else out, ensure_ascii=False, indent=2))
    return 1 if failed else 0


def cmd_verify(args: argparse.Namespace) -> int:
    from hub.documents.verify import load_certs, verify_pdf

    roots = load_certs(args.trust) if args.trust else []
    worst = 0
    for name in args.files:
        report = asyncio.run(verify_pdf(Path(name).read_bytes(), roots))
        print(f"{name}: {'OK' if report.ok else 'INVALID'}" + (f" ({report.error})" if report.error else ""))
        for sig in report.signatures:
            when = sig.signing_time.isoformat(timespec="seconds") if sig.signing_time else "no time"
            print(f"  {sig.field}: {'ok' if sig.ok else 'NOT OK'} — {sig.signer}, {when}, "
                  f"level {sig.pades_level or 'not PAdES'}, intact={sig.intact} valid={sig.valid} "
                  f"trusted={sig.trusted} changes after={sig.modification_level}")
        worst = worst or (0 if report.ok else 1)
    return worst


def cmd_run(args: argparse.Namespace) -> int:
    from hub.config import ConfigError, load_config
    from hub.contracts import PluginError
    from hub.logs import configure
    from hub.web.server import serve

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        _print_errors(exc.errors)
        return 1
    if args.bind:
        config.http.bind = args.bind
    configure(config.logging.format, config.logging.level)
    try:
        asyncio.run(serve(config))
    except PluginError as exc:
        _print_errors([f"cannot start: {exc}"])
        return 1
    return 0


def _store_of(path: str):
    from hub.config import ConfigError, load_config
    from hub.store import open_store

    try:
        config = load_config(path)
    except ConfigError as exc:
        _print_errors(exc.errors)
        return None, None
    return config, open_store(config.store_path)


def cmd_replay(args: argparse.Namespace) -> int:
    config, store = _store_of(args.config)
    if store is None:
        return 1
    try:
        pks = store.select(ids=args.id, record_ids=args.record_id, adapter=args.adapter,
                           school=args.school, state=args.state)
    except ValueError:
        _print_errors(["say which records: --id, --record-id, --adapter, --school or --state"])
        return 2
    last = "signed:" + config.signing.steps[-1].role
    moved = store.replay(pks, stage=args.stage, actor=f"cli:{args.actor}", deliver_from=last)
    print(f"{len(moved)} of {len(pks)} selected record(s) queued again from stage {args.stage}"
          + ("" if len(moved) == len(pks) else " (the others are not quarantined, failed or dead-lettered)"))
    for pk, state in moved:
        print(f"  {pk}: {state}")
    print("a running hub picks them up within seconds; a stopped one when it starts")
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    from hub.store.audit import verify_chain

    _config, store = _store_of(args.config)
    if store is None:
        return 1
    report = verify_chain(store.audit_entries())
    for problem in report.problems:
        print(problem, file=sys.stderr)
    print(f"{report.entries} entries, head {report.head}: {'intact' if report.ok else 'TAMPERED'}")
    return 0 if report.ok else 1


def cmd_prune(args: argparse.Namespace) -> int:
    import datetime as dt

    config, store = _store_of(args.config)
    if store is None:
        return 1
    days = args.older_than_days if args.older_than_days is not None else config.retention.delivered_payload_days
    cutoff = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=days)
    result = store.prune(cutoff.isoformat(timespec="milliseconds"))
    print(f"pruned payloads of {result['records']} record(s) older than {days} day(s); "
          f"{result['pages_reclaimed']} page(s) returned to the file system")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from hub.kit.demo import run_demo

    return asyncio.run(run_demo(args.config, records=args.records, out=Path(args.out), invalid=args.invalid))


def cmd_conformance(args: argparse.Namespace) -> int:
    from hub.kit.conformance import ConformanceError, run_conformance
    from hub.logs import configure

    # The kit provokes retries on purpose: log only what is worse than that, to stderr.
    configure("console", "error")
    try:
        report = run_conformance(args.adapter, config_path=args.config, checks=args.check or None)
    except ConformanceError as exc:
        _print_errors([str(exc)])
        return 2
    print(report.table())
    return 0 if report.ok else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hocba-hub", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="run synthetic transcripts end to end against the simulators")
    p.add_argument("--config", default=None, help="config file (default: config/example.yaml)")
    p.add_argument("--records", type=int, default=50, help="valid transcripts to run (default 50)")
    p.add_argument("--invalid", type=int, default=5, help="deliberately invalid transcripts (default 5)")
    p.add_argument("--out", default="demo-out", help="where the signed PDFs and root-ca.pem go")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("run", help="serve and work until stopped (SIGTERM drains)")
    p.add_argument("--config", required=True)
    p.add_argument("--bind", help="HOST:PORT, overrides http.bind")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("check-config", help="validate a config file; every error names its path")
    p.add_argument("file")
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser("normalize", help="print the central-format JSON of one raw vendor payload")
    p.add_argument("--adapter", required=True)
    p.add_argument("--snake-case", action="store_true", help="field names instead of catalogue names")
    p.add_argument("file")
    p.set_defaults(func=cmd_normalize)

    p = sub.add_parser("verify", help="validate every signature of signed PDFs")
    p.add_argument("files", nargs="+")
    p.add_argument("--trust", help="PEM file of trusted root certificates")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("replay", help="send quarantined, failed or dead-lettered records through again")
    p.add_argument("--config", required=True)
    p.add_argument("--id", type=int, action="append", default=[], help="store id (repeatable)")
    p.add_argument("--record-id", action="append", default=[], help="envelope record_id (repeatable)")
    p.add_argument("--adapter")
    p.add_argument("--school", help="school code")
    p.add_argument("--state", choices=["quarantined", "failed", "dead_letter"])
    p.add_argument("--stage", choices=["normalize", "render", "deliver"], default="normalize",
                   help="normalize: from the raw payload (default); deliver: re-send the signed PDF as it is")
    p.add_argument("--actor", default=os.environ.get("USER", "operator"), help="who asks (audit log)")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("audit", help="check the audit log's hash chain")
    p.add_argument("action", choices=["verify"])
    p.add_argument("--config", required=True)
    p.set_defaults(func=cmd_audit)

    p = sub.add_parser("prune", help="drop payloads of delivered records past the retention age")
    p.add_argument("--config", required=True)
    p.add_argument("--older-than-days", type=float)
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("plugins", help="list installed adapters and signers")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_plugins)

    p = sub.add_parser("conformance", help="run the adapter conformance kit against the adapter's simulator")
    p.add_argument("--adapter", required=True, help="an installed pull adapter's name")
    p.add_argument("--config", help="YAML config: its first adapter of this type supplies extra settings")
    p.add_argument("--check", action="append", metavar="NAME",
                   help="run only this check or group (e.g. faults); repeatable")
    p.set_defaults(func=cmd_conformance)

    p = sub.add_parser("schema", help="print the central format's JSON Schema")
    p.add_argument("--config", action="store_true", help="print the config file's JSON Schema instead")
    p.set_defaults(func=cmd_schema)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
