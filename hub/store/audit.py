"""Checking the audit log: every entry's hash must chain from the one before it.

The store appends an entry for every submission, receipt, replay, reconciliation, pruning and
admin action, each hashing its content together with the previous entry's hash. Editing an
entry breaks its hash; removing one breaks the next entry's link and leaves a gap in the ids.
Removing entries from the end cannot be seen from inside the file: record the head hash that
``verify`` prints somewhere else (a ticket, a daily e-mail) to detect that too.
"""

from __future__ import annotations

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
    report.head = prev
    return report
