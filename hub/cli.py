"""The ``hocba-hub`` command line."""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _print_errors(lines: list[str]) -> None:
    for line in lines:
        print(line, file=sys.stderr)


def cmd_plugins(args: argparse.Namespace) -> int:
    from hub.plugins import (
        adapter_types,
        document_formats,
        identity_provider_types,
        signer_types,
    )

    rows = []
    for info in [*adapter_types().values(), *signer_types().values(), *identity_provider_types().values(),
                 *document_formats().values()]:
        if info.kind == "document format":
            can = "build, sign, verify"
        elif info.kind == "adapter":
            labels = {"fetch": "fetch", "verify_push": "push", "normalize": "normalize", "deliver": "deliver",
                      "deliver_package": "packages"}
            can = ", ".join(label for method, label in labels.items() if info.cls.can(method))
        else:
            can = "sign" if info.kind == "signer" else "verify"
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
    from hub.config import load_config_or_report

    config = load_config_or_report(args.file)
    if config is None:
        return 1
    print(f"{args.file}: valid ({len(config.adapters)} adapter(s), {len(config.signers)} signer(s), "
          f"route(s) {', '.join(config.route_names)})")
    return 0


def cmd_normalize(args: argparse.Namespace) -> int:
    from hub.contracts import PluginContext, RawRecord
    from hub.engine.normalize import Envelope, normalize
    from hub.plugins import adapter_types
    from hub.records import VIETNAM_TIME
    from hub.store import record_id_for

    info = adapter_types().get(args.adapter)
    if info is None:
        _print_errors([f"unknown adapter {args.adapter!r} (installed: {', '.join(sorted(adapter_types()))})"])
        return 2
    if not info.cls.can("normalize"):
        _print_errors([f"adapter {args.adapter!r} does not normalize records (it is a destination)"])
        return 2
    codes = None
    if args.config:
        from hub.config import ConfigError, load_config

        try:
            codes = load_config(args.config).codes
        except ConfigError as exc:
            _print_errors(exc.errors)
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
        envelope = Envelope(record_id_for(args.adapter, raw.source_id), 1, "CANCEL" if raw.deleted else "NEW",
                            updated.replace(tzinfo=None).isoformat(timespec="seconds") if updated
                            else "2025-01-01T00:00:00")
        outcome = normalize(adapter, raw, envelope, codes)
        for line in outcome.remapped:  # on stderr: stdout stays the record's JSON
            print(f"{prefix}codes remapped: {line}", file=sys.stderr)
        if outcome.record is None:
            _print_errors([prefix + line for line in outcome.errors])
            failed = True
            continue
        out.append(outcome.record.model_dump(mode="json", by_alias=not args.snake_case))
    if out:
        print(json.dumps(out[0] if len(raws) == 1 else out, ensure_ascii=False, indent=2))
    return 1 if failed else 0


def cmd_verify(args: argparse.Namespace) -> int:
    import warnings

    from hub.config import ConfigError, load_config
    from hub.documents.binding import verify_file
    from hub.documents.verify import load_certs
    from hub.logs import capture_library_logs, configure, get_logger

    # Library warnings become structured log events on stderr, never a traceback on the terminal.
    configure("console", "warning")
    capture_library_logs("warning")
    warnings.simplefilter("default")
    trust = list(args.trust or [])
    if args.anchors:
        # Named sets from the configuration (trust_anchors: neac, vgca, …), beside any --trust.
        if not args.config:
            _print_errors(["--anchors needs --config: the sets are defined under trust_anchors there"])
            return 2
        try:
            config = load_config(args.config)
            names = [n.strip() for n in args.anchors.split(",") if n.strip()]
            trust += [str(p) for p in config.trust_paths(names)]
        except ConfigError as exc:
            _print_errors(exc.errors)
            return 2
        except ValueError as exc:
            _print_errors([f"--anchors: {exc}"])
            return 2
    try:
        roots = [c.dump() for c in load_certs(trust)] if trust else []
    except (OSError, ValueError) as exc:
        _print_errors([f"--trust: cannot read {', '.join(trust)}: {exc}"])
        return 2
    school_ids: dict[str, list[str]] = {}
    for item in args.school_id or []:
        code, _, ident = item.partition("=")
        school_ids.setdefault(code, []).append(ident)
    worst = 0
    for name in args.files:
        try:
            data = Path(name).read_bytes()
            verdict = asyncio.run(verify_file(data, trust_roots=roots, school_ids=school_ids))
        except OSError as exc:
            print(f"{name}: cannot read: {exc}")
            worst = 1
            continue
        except Exception as exc:  # a verdict, never a traceback
            get_logger().error("verify.failed", file=name, error=f"{type(exc).__name__}: {exc}")
            print(f"{name}: KHÔNG KIỂM TRA ĐƯỢC / CANNOT VERIFY: {type(exc).__name__}: {exc}")
            worst = 1
            continue
        lines = verdict.lines()
        print(f"{name} ({verdict.kind.upper()}): {lines[0]}")
        for line in lines[1:]:
            print(line)
        # Without a trust anchor a document is intact at best, not verified: not a success.
        worst = worst or (0 if verdict.ok and verdict.trust_checked else 1)
    return worst


def cmd_run(args: argparse.Namespace) -> int:
    from hub.config import load_config_or_report
    from hub.contracts import PluginError
    from hub.logs import configure
    from hub.web.server import serve

    config = load_config_or_report(args.config)
    if config is None:
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
    from hub.config import load_config_or_report
    from hub.store import open_store

    config = load_config_or_report(path)
    if config is None:
        return None, None
    return config, open_store(config.store_path)


def _with_store(command: Callable[[argparse.Namespace, Any, Any], int]) -> Callable[[argparse.Namespace], int]:
    """``command(args, config, store)`` on the store ``--config`` names, closed afterwards; exit 1
    (the errors printed) when the config is not valid."""
    @functools.wraps(command)
    def run(args: argparse.Namespace) -> int:
        config, store = _store_of(args.config)
        if store is None:
            return 1
        try:
            return command(args, config, store)
        finally:
            store.close()
    return run


def _operator_request(args: argparse.Namespace, what: str, option: str, subject: str,
                      ask: Callable[[Any, str, str], Any]) -> tuple[int, Any]:
    """An operator's request with a mandatory reason (cancel, recall) written to the store, for
    the running hub to carry out: ``(exit code, what ask returned)``; errors name the option."""
    from hub.lifecycle import cancel_reason
    from hub.store import StateConflict

    try:
        reason = cancel_reason(args.reason, what)
    except ValueError as exc:
        _print_errors([f"--reason: {exc}"])
        return 2, None
    config, store = _store_of(args.config)
    if store is None:
        return 1, None
    try:
        return 0, ask(store, reason, f"cli:{args.actor}")
    except KeyError:
        _print_errors([f"{option}: no {subject} in {config.store_path}"])
    except StateConflict as exc:
        _print_errors([f"{option}: {exc}"])
    finally:
        store.close()
    return 1, None


def cmd_recall(args: argparse.Namespace) -> int:
    code, packages = _operator_request(
        args, "the package is recalled", "--package-id", f"package {args.package_id!r}",
        lambda store, reason, actor: store.request_recall(args.package_id, reason, actor))
    for package in packages or ():
        print(f"package {package.package_id} ({package.school_code}, class {package.class_name}, "
              f"{len(package.members)} transcripts): recall asked of {package.destination}")
    if not code:
        print("a running hub sends it within seconds; a stopped one when it starts")
    return code


def cmd_packages(args: argparse.Namespace, config: Any, store: Any) -> int:
    packages = store.packages(school=args.school, destination=args.destination)
    if args.json:
        print(json.dumps([p.public() for p in packages], ensure_ascii=False, indent=2))
        return 0
    for p in packages:
        why = f"  ({p.reason})" if p.reason else ""
        print(f"{p.package_id}  {p.destination}  {p.school_code} {p.class_name} {p.school_year}  "
              f"{len(p.members)} transcripts  {p.state}{why}")
    if not packages:
        print("no packages")
    return 0


@_with_store
def cmd_signing(args: argparse.Namespace, config: Any, store: Any) -> int:
    from hub.engine.signing_status import waiting_signatures
    from hub.plugins import document_formats

    roles = tuple(s.role for s in config.signing.steps)
    fmt = document_formats()[config.xml_format].cls() if config.xml_format else None
    classes = waiting_signatures(store.rows(), roles, fmt, args.school)
    if args.json:
        print(json.dumps({"classes": classes}, ensure_ascii=False, indent=2))
        return 0
    if not classes:
        print("no transcript waits for a signature")
    for c in classes:
        waiting = ", ".join(f"{n} → {role}" for role, n in c["waiting"].items())
        print(f"{c['school_code']} {c['class_name']}: {c['transcripts']} transcript(s) waiting ({waiting})")
        for u in c["unsigned"]:
            subject = f" ({u['subject']})" if u["subject"] else ""
            print(f"  not signed: {u['role']} {u['name']}{subject}: {u['transcripts']} transcript(s)")
    return 0


@_with_store
def cmd_replay(args: argparse.Namespace, config: Any, store: Any) -> int:
    try:
        pks = store.select(ids=args.id, record_ids=args.record_id, adapter=args.adapter,
                           school=args.school, state=args.state)
    except ValueError:
        _print_errors(["say which records: --id, --record-id, --adapter, --school or --state"])
        return 2
    if args.destination is not None and args.destination not in config.route_names:
        _print_errors([f"--destination: no route named {args.destination!r} "
                       f"(routes: {', '.join(config.route_names)})"])
        return 2
    last = "signed:" + config.signing.steps[-1].role
    moved = store.replay(pks, stage=args.stage, actor=f"cli:{args.actor}", deliver_from=last,
                         destination=args.destination, routes=config.route_names)
    print(f"{len(moved)} of {len(pks)} selected record(s) queued again from stage {args.stage}"
          + ("" if len(moved) == len(pks) else " (the others are not quarantined, failed or dead-lettered)"))
    for pk, state in moved:
        print(f"  {pk}: {state}")
    print("a running hub picks them up within seconds; a stopped one when it starts")
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    code, row = _operator_request(
        args, "the transcript is cancelled", "--record-id", f"record {args.record_id!r}",
        lambda store, reason, actor: store.get(store.cancel(args.record_id, reason, actor)))
    if not code:
        print(f"record {row.record_id}: version {row.version} CANCEL queued (store id {row.id}); it is signed and "
              "sent to every destination with the reason")
        print("a running hub picks it up within seconds; a stopped one when it starts")
    return code


@_with_store
def cmd_identity_report(args: argparse.Namespace, config: Any, store: Any) -> int:
    from hub.documents.identity_report import blocked_students, to_xlsx

    entries = blocked_students(store, args.school)
    if args.xlsx:
        Path(args.xlsx).write_bytes(to_xlsx(entries))
        print(f"{len(entries)} student(s) blocked on identity written to {args.xlsx}")
        return 0
    # The terminal shows no names: the student code and the masked id find the student.
    for e in entries:
        what = "; ".join(f"{d['field']}: {d['en']}" for d in e["differs"])
        print(f"{e['school_code']}  {e['class_name'] or '':<4} {e['student_code'] or '':<14} "
              f"{e['personal_id'] or '(no personal id)':<14} {what}")
    print(f"{len(entries)} student(s) blocked on identity" + (f" at school {args.school}" if args.school else ""))
    return 0


@_with_store
def cmd_audit(args: argparse.Namespace, config: Any, store: Any) -> int:
    from hub.store.audit import check_anchors, verify_chain

    report = verify_chain(store.audit_entries())
    anchor = Path(args.anchor) if args.anchor else None
    if args.action == "checkpoint":
        if anchor is None or not report.ok:
            print("audit checkpoint needs --anchor FILE and an intact log" if anchor is None
                  else "\n".join(report.problems), file=sys.stderr)
            return 1
        try:
            line = asyncio.run(_signed_checkpoint(config, report))
        except Exception as exc:  # no key, no TSA: named, and nothing half-made is written
            print(f"audit checkpoint: {exc}", file=sys.stderr)
            return 1
        with anchor.open("a", encoding="utf-8") as out:  # append only: earlier checkpoints stay
            out.write(line + "\n")
            out.flush()
            os.fsync(out.fileno())
        print(f"checkpoint: entry {report.last_id}, head {report.head} signed by the Department"
              f"{' and timestamped' if config.signing.timestamp_url else ''}, appended to {anchor}")
        return 0
    problems = list(report.problems)
    summary = ""
    if anchor is not None:
        try:
            read = asyncio.run(_read_anchors(config, anchor.read_text("utf-8").splitlines()))
        except OSError as exc:
            problems.append(f"--anchor {anchor}: {exc.strerror or exc}")
        else:
            problems += [*read.problems, *check_anchors(report, read.anchors)]
            if not read.anchors and not read.problems:
                problems.append(f"--anchor {anchor}: holds no checkpoint")
            summary = (f"; {len(read.anchors)} signed checkpoint(s) by {', '.join(read.signers) or 'nobody'}"
                       + (f", last timestamped {read.last_timestamp.isoformat()}" if read.last_timestamp else ""))
    for problem in problems:
        print(problem, file=sys.stderr)
    print(f"{report.entries} entries, head {report.head}{summary}: {'intact' if not problems else 'TAMPERED'}")
    return 0 if not problems else 1


async def _signed_checkpoint(config, report) -> str:
    # The Department's signer (``department.signer``) signs the head; signing.timestamp_url, when
    # set, timestamps it.
    from hub.contracts import PluginContext, SigningIdentity
    from hub.documents.checkpoint import sign_checkpoint
    from hub.plugins import signer_types

    if config.department is None:
        raise ValueError("department: not configured; its signer signs each checkpoint (department.code, "
                         "department.name, department.signer)")
    url = config.signing.timestamp_url
    if url == "demo":
        raise ValueError("signing.timestamp_url is 'demo' (the demo's loopback TSA, not running here)")
    dept = config.department
    section = next(s for s in config.signers if s.name == dept.signer)
    signer = signer_types()[section.type].cls(config.signer_settings(section.name), PluginContext(
        section.name, Path(config.data_dir) / "plugins" / section.name))
    await signer.open()
    try:
        return await sign_checkpoint(report, signer, SigningIdentity("department", dept.name, dept.code),
                                     timestamp_url=url, c14n=config.signing.c14n)
    finally:
        await signer.close()


async def _read_anchors(config, lines):
    from hub.documents.checkpoint import read_anchors
    from hub.documents.verify import trust_roots_der

    return await read_anchors(lines, trust_roots_der(tuple(config.trust_paths())),
                              department_code=config.department.code if config.department else None,
                              organisation_ids=config.signing.school_ids)


@_with_store
def cmd_prune(args: argparse.Namespace, config: Any, store: Any) -> int:
    import datetime as dt

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


def cmd_simulate(args: argparse.Namespace) -> int:
    from hub.kit.simulate import run_simulators
    from hub.logs import configure

    configure("console", "warning")
    return asyncio.run(run_simulators(args.config, records=args.records, invalid=args.invalid))


def build_parser() -> argparse.ArgumentParser:
    from hub import __version__

    parser = argparse.ArgumentParser(prog="hocba-hub", description=__doc__)
    parser.add_argument("--version", action="version", version=f"hocba-hub {__version__}")
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

    p = sub.add_parser("simulate", help="serve stand-ins for every system a config points at (for a first run)")
    p.add_argument("--config", required=True)
    p.add_argument("--records", type=int, default=40, help="valid transcripts to seed (default 40)")
    p.add_argument("--invalid", type=int, default=4, help="deliberately invalid transcripts (default 4)")
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("check-config", help="validate a config file; every error names its path")
    p.add_argument("file")
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser("normalize", help="print the central-format JSON of one raw vendor payload")
    p.add_argument("--adapter", required=True)
    p.add_argument("--snake-case", action="store_true", help="field names instead of catalogue names")
    p.add_argument("--config", help="apply this config's codes table (old → new department and school "
                                    "codes), as the running hub does")
    p.add_argument("file")
    p.set_defaults(func=cmd_normalize)

    p = sub.add_parser("verify", help="validate signed XML học bạ and PDFs: every signature, its signer, "
                                      "every stage, in order")
    p.add_argument("files", nargs="+", help=".xml and .pdf files")
    p.add_argument("--trust", action="append",
                   help="PEM file of trust anchors (repeatable: the national root, the government CA…)")
    p.add_argument("--anchors", metavar="NAMES",
                   help="comma-separated trust anchor sets from --config's trust_anchors, e.g. neac,vgca")
    p.add_argument("--config", help="the hub's YAML file, for --anchors")
    p.add_argument("--school-id", action="append", metavar="CODE=ID",
                   help="an identifier of a school's organisation certificate, e.g. 01004001=MST:0101234567")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("replay", help="send quarantined, failed, dead-lettered or identity-blocked records through again")
    p.add_argument("--config", required=True)
    p.add_argument("--id", type=int, action="append", default=[], help="store id (repeatable)")
    p.add_argument("--record-id", action="append", default=[], help="envelope record_id (repeatable)")
    p.add_argument("--adapter")
    p.add_argument("--school", help="school code")
    p.add_argument("--state", choices=["quarantined", "failed", "dead_letter", "blocked_identity"])
    p.add_argument("--stage", choices=["normalize", "render", "deliver"], default="normalize",
                   help="normalize: from the raw payload (default); deliver: re-send the signed PDF as it is")
    p.add_argument("--destination", help="with --stage deliver: only this route's dead letters")
    p.add_argument("--actor", default=os.environ.get("USER", "operator"), help="who asks (audit log)")
    p.set_defaults(func=cmd_replay)

    # An operator's request with a reason: what it names, then the same three options.
    for name, func, option, what, help_text in (
            ("cancel", cmd_cancel, "--record-id", "envelope record_id",
             "cancel a transcript with a reason: a new CANCEL version is signed and sent to every destination "
             "(audited)"),
            ("recall", cmd_recall, "--package-id", "the package's id (hocba-hub packages lists them)",
             "recall a class package from its destination, with a reason: every transcript in it is withdrawn "
             "there (audited)")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--config", required=True)
        p.add_argument(option, required=True, help=what)
        p.add_argument("--reason", required=True,
                       help="why (it goes to the destinations, the history and the audit log)")
        p.add_argument("--actor", default=os.environ.get("USER", "operator"), help="who asks (audit log)")
        p.set_defaults(func=func)

    p = sub.add_parser("packages", help="the class packages destinations accepted, newest first, and their recall")
    p.add_argument("--config", required=True)
    p.add_argument("--school", help="one school's code")
    p.add_argument("--destination", help="one route's name")
    p.add_argument("--json", action="store_true", help="as JSON")
    p.set_defaults(func=cmd_packages)

    p = sub.add_parser("identity-report", help="students blocked on identity, per school, with what differs")
    p.add_argument("--config", required=True)
    p.add_argument("--school", help="one school's code")
    p.add_argument("--xlsx", metavar="FILE", help="write the report as XLSX for the school (with names)")
    p.set_defaults(func=cmd_identity_report)

    p = sub.add_parser("signing", help="per school and class: transcripts waiting for each signing stage "
                                       "and who has not signed")
    p.add_argument("--config", required=True)
    p.add_argument("--school", help="only this school code")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_signing)

    p = sub.add_parser("audit", help="check the audit log's hash chain; anchor its head outside the store")
    p.add_argument("action", choices=["verify", "checkpoint"])
    p.add_argument("--config", required=True)
    p.add_argument("--anchor", metavar="FILE", help="checkpoint file kept outside the store: checkpoint appends "
                   "the head to it, signed by the Department (timestamped when signing.timestamp_url is set); "
                   "verify checks every checkpoint's signature and that each is still in the log")
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
