"""Checking the audit log: every entry's hash must chain from the one before it.

The store appends an entry for every submission, receipt, replay, reconciliation, pruning and
admin action, each hashing its content together with the previous entry's hash. Editing an
entry breaks its hash; removing one breaks the next entry's link and leaves a gap in the ids.
Removing entries from the end (or all of them) cannot be seen from inside the store: the chain
is anchored outside it. ``checkpoint`` appends the head (last id and hash, with the time) as one
line to an anchor file kept where the hub cannot rewrite it (another machine, write-once
storage, a ticket); ``check_anchors`` then proves every checkpointed entry is still there with
the same hash, so truncation below a checkpoint is named, like an edit or a gap.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from hub.store import audit_hash

GENESIS = "0" * 64


@dataclass
class AuditReport:
    entries: int = 0
    head: str = GENESIS
    problems: list[str] = field(default_factory=list)
    last_id: int = 0
    hashes: dict[int, str] = field(default_factory=dict)   # id → hash, for the anchors

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_chain(entries: Iterable[dict[str, Any]]) -> AuditReport:
    """Walk the log in order; report every entry whose hash or link does not check out."""
    report = AuditReport()
    prev, prev_id = GENESIS, 0
    for entry in entries:
        report.entries += 1
        if entry["id"] != prev_id + 1:
            report.problems.append(f"entries {prev_id + 1}..{entry['id'] - 1} are missing")
        if entry["prev"] != prev:
            report.problems.append(f"entry {entry['id']}: does not link to the entry before it")
        if audit_hash(entry["prev"], entry) != entry["hash"]:
            report.problems.append(f"entry {entry['id']}: content does not match its hash (edited)")
        prev, prev_id = entry["hash"], entry["id"]
        report.hashes[entry["id"]] = entry["hash"]
    report.head, report.last_id = prev, prev_id
    return report


def checkpoint(report: AuditReport, at: str) -> str:
    """One anchor line (JSON) for the head ``report`` found: append it outside the store."""
    return json.dumps({"id": report.last_id, "hash": report.head, "entries": report.entries, "at": at},
                      sort_keys=True)


def check_anchors(report: AuditReport, lines: Iterable[str]) -> list[str]:
    """Problems for every anchor line whose entry is missing (the log was cut below it) or
    has another hash (rewritten), and for a line that is not an anchor."""
    problems = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            anchor = json.loads(line)
            entry_id, digest, at = int(anchor["id"]), str(anchor["hash"]), anchor.get("at", "?")
        except (ValueError, KeyError, TypeError):
            problems.append(f"anchor line {number}: not a checkpoint")
            continue
        if entry_id == 0:
            continue
        held = report.hashes.get(entry_id)
        if held is None:
            problems.append(f"anchor line {number}: entry {entry_id} (checkpointed at {at}) is missing: the log "
                            f"ends at {report.last_id or 'nothing'} (truncated)")
        elif held != digest:
            problems.append(f"anchor line {number}: entry {entry_id} has another hash than checkpointed at {at} "
                            "(the chain was rewritten)")
    return problems
