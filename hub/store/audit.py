"""Checking the audit log: every entry's hash must chain from the one before it.

The store appends an entry for every submission, receipt, replay, reconciliation, pruning and
admin action, each hashing its content together with the previous entry's hash. Editing an
entry breaks its hash; removing one breaks the next entry's link and leaves a gap in the ids.
Removing entries from the end (or all of them) cannot be seen from inside the store: the chain
is anchored outside it. ``hocba-hub audit checkpoint`` appends the head (last id and hash, with
the time), signed by the Department and timestamped (``hub.documents.checkpoint``), as one line
to an anchor file kept where the hub cannot rewrite it (another machine, write-once storage);
``check_anchors`` then proves every checkpointed entry is still there with the same hash, so
truncation below a checkpoint is named, like an edit or a gap.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from hub.store.model import GENESIS, audit_hash

__all__ = ["GENESIS", "Anchor", "AuditReport", "check_anchors", "verify_chain"]


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


@dataclass(frozen=True)
class Anchor:
    """One checkpoint, as its signature vouches for it (``hub.documents.checkpoint``): the
    chain's entry ``entry_id`` had hash ``hash`` at time ``at``; ``where`` names it."""
    where: str
    entry_id: int
    hash: str
    at: str


def check_anchors(report: AuditReport, anchors: Iterable[Anchor]) -> list[str]:
    """Problems for every anchor whose entry is missing (the log was cut below it) or has
    another hash (rewritten)."""
    problems = []
    for anchor in anchors:
        if anchor.entry_id == 0:
            continue
        held = report.hashes.get(anchor.entry_id)
        if held is None:
            problems.append(f"{anchor.where}: entry {anchor.entry_id} (checkpointed at {anchor.at}) is missing: "
                            f"the log ends at {report.last_id or 'nothing'} (truncated)")
        elif held != anchor.hash:
            problems.append(f"{anchor.where}: entry {anchor.entry_id} has another hash than checkpointed at "
                            f"{anchor.at} (the chain was rewritten)")
    return problems
