"""What the store hands out and the rules it keeps that need no database: the stored row, the
errors a transition raises, record ids, content and audit hashes, the time stamps.

Kept apart from ``hub.store.base`` so the store's mixins (``issuance``, ``packages``) and the
audit checker import them without importing the store itself.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hub.contracts import RawRecord

# The ``prev`` of the first audit entry.
GENESIS = "0" * 64

# Record ids are derived from (adapter instance, vendor id) so a re-read maps to the same id.
_RECORD_NS = uuid.UUID("6f1d3f5c-43d1-4a56-9a4e-9d1c0e0b7a11")


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


def audit_hash(prev: str, entry: dict[str, Any]) -> str:
    """The chained hash of one audit entry (its id, time, kind, actor, subject, detail)."""
    body = json.dumps({k: entry[k] for k in ("id", "at", "kind", "actor", "subject", "detail")},
                      sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256((prev + body).encode()).hexdigest()


def audit_entry(entry_id: int | None, kind: str, actor: str, subject: str | None,
                detail: dict[str, Any]) -> dict[str, Any]:
    """An audit entry's hashed fields, stamped now (``entry_id`` None: the database numbers it)."""
    return {"id": entry_id, "at": now_iso(), "kind": kind, "actor": actor, "subject": subject,
            "detail": json.dumps(detail, sort_keys=True, ensure_ascii=False, default=str)}


def content_hash(normalized: dict[str, Any]) -> str:
    """Hash of a transcript's content, without the envelope (which changes on every version).

    A cancel is other content than the same transcript in force: a version restoring it after
    a cancel is sent, never taken for "unchanged"."""
    body = {k: v for k, v in normalized.items() if k not in {"record_id", "event", "version", "updated_at"}}
    if normalized.get("event") == "CANCEL":
        body["cancelled"] = True
    return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def payload_digest(payload: bytes, deleted: bool) -> str:
    """The digest a version's payload is compared by: a vendor's deletion of the same payload
    is other content than the payload in force."""
    return hashlib.sha256(payload + (b"\x00deleted" if deleted else b"")).hexdigest()


def older(updated: dt.datetime | None, latest: str | None, horizon: dt.datetime | None = None) -> bool:
    """Whether the vendor dates ``updated`` before the latest stored version's time.

    A stored time past ``horizon`` (the hub's clock plus the allowed skew) is not trusted: a
    version dated in the future must never make a later real edit count as older.
    """
    if updated is None or latest is None:
        return False
    held = dt.datetime.fromisoformat(latest)
    if (updated.tzinfo is None) != (held.tzinfo is None):
        return False  # one side has no zone: the times cannot be compared, so do not guess
    if horizon is not None and held.tzinfo is not None and held > horizon:
        return False
    return updated < held


def is_future(updated: str | dt.datetime | None, skew_seconds: float) -> bool:
    """Whether a vendor's update time is ahead of the hub's clock by more than ``skew_seconds``."""
    if updated is None:
        return False
    moment = dt.datetime.fromisoformat(updated) if isinstance(updated, str) else updated
    if moment.tzinfo is None:
        return False  # no zone: cannot be placed on the hub's clock
    return moment > dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=skew_seconds)


def record_id_for(adapter: str, source_id: str) -> str:
    """The envelope ``record_id`` of a vendor record: stable across re-reads."""
    return str(uuid.uuid5(_RECORD_NS, f"{adapter}/{source_id}"))


def is_postgres_url(location: str | Path) -> bool:
    return str(location).startswith(("postgresql://", "postgres://"))


def bind_list(prefix: str, values: Sequence[Any]) -> tuple[str, dict[str, Any]]:
    """An ``IN (…)`` list as named binds: ``":prefix0, :prefix1, …"`` and their values."""
    names = [f"{prefix}{i}" for i in range(len(values))]
    return ", ".join(f":{name}" for name in names), dict(zip(names, values))


def of_destination(destination: str | None) -> tuple[str, dict[str, Any]]:
    """`` AND destination = :destination`` and its value, or nothing (every destination)."""
    return (" AND destination = :destination", {"destination": destination}) if destination is not None else ("", {})


@dataclass(frozen=True)
class Row:
    """One version of one record as stored."""
    id: int
    record_id: str
    version: int
    event: str
    adapter: str
    source_id: str
    source_updated: str | None
    content_type: str
    payload: bytes
    state: str
    school_code: str | None
    school_year: str | None
    normalized: dict[str, Any] | None
    pdf: bytes | None
    errors: list[str]
    receipt: dict[str, Any] | None
    attempts: int
    received_at: str
    updated_at: str
    xml: bytes | None = None
    verify_code: str | None = None  # the version's verification code (hub.store.issuance)
    reason: str | None = None       # why this version exists, when someone asked for it (a cancel)

    @classmethod
    def from_db(cls, r: Any) -> "Row":  # a row of either backend, by column name
        return cls(
            id=r["id"], record_id=r["record_id"], version=r["version"], event=r["event"],
            adapter=r["adapter"], source_id=r["source_id"], source_updated=r["source_updated"],
            content_type=r["content_type"],
            payload=r["payload"], state=r["state"], school_code=r["school_code"],
            school_year=r["school_year"],
            normalized=json.loads(r["normalized"]) if r["normalized"] else None,
            pdf=r["pdf"], errors=json.loads(r["errors"]) if r["errors"] else [],
            receipt=json.loads(r["receipt"]) if r["receipt"] else None,
            attempts=r["attempts"], received_at=r["received_at"], updated_at=r["updated_at"],
            xml=r["xml"], verify_code=r["verify_code"], reason=r["reason"],
        )

    def raw(self) -> RawRecord:
        return RawRecord(self.source_id, self.payload, self.content_type, deleted=self.event == "CANCEL")


class StateConflict(Exception):
    """The record was not in the state the transition expected (another worker moved it)."""


class LeaseLost(Exception):
    """This worker no longer holds the adapter's pull lease (it expired and another worker
    took it): nothing of the page was committed, the other worker reads it."""
