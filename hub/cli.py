"""The ``hocba-hub`` command line."""

from __future__ import annotations

import argparse
import asyncio
import json
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
            can = ", ".join(c for c in ("fetch", "normalize", "deliver") if info.cls.can(c))
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
    from hub.records import field_errors, parse_transcript
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
    raw = RawRecord(source_id=path.stem, payload=payload)
    try:
        data = adapter.normalize(raw)
        record = parse_transcript({**data, "record_id": record_id_for(args.adapter, path.stem),
                                   "event": "NEW", "version": 1, "updated_at": "2025-01-01T00:00:00"})
    except ValidationError as exc:
        _print_errors(field_errors(exc))
        return 1
    except (ValueError, KeyError, TypeError) as exc:
        _print_errors([str(exc)])
        return 1
    print(record.model_dump_json(by_alias=not args.snake_case, indent=2))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from hub.verify import load_certs, verify_pdf

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
    from hub.server import serve

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


def cmd_demo(args: argparse.Namespace) -> int:
    from hub.demo import run_demo

    return asyncio.run(run_demo(args.config, records=args.records, out=Path(args.out), invalid=args.invalid))


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

    p = sub.add_parser("plugins", help="list installed adapters and signers")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_plugins)

    p = sub.add_parser("schema", help="print the central format's JSON Schema")
    p.add_argument("--config", action="store_true", help="print the config file's JSON Schema instead")
    p.set_defaults(func=cmd_schema)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
