"""The durable store: every record's raw payload, state and products, in SQLite.

The raw payload is committed before anything else happens to a record; every state change is
one transaction that checks the state it leaves (so two workers cannot both advance a record)
and appends to the record's history. A restarted hub asks ``pending()`` for every record not
in a final state and carries on from there.

SQLite runs in WAL mode with ``synchronous=FULL``: a commit survives a crash of the process
and of the machine. All calls go through one connection guarded by a lock; the pipeline calls
the store from a dedicated thread so the event loop never waits on the disk.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import sqlite3
import threading
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hub.contracts import RawRecord

# States, in pipeline order. ``signed:<role>`` follows each signing step.
RECEIVED = "received"
NORMALIZED = "normalized"
RENDERED = "rendered"
SIGNED_PREFIX = "signed:"
DELIVERED = "delivered"
QUARANTINED = "quarantined"   # the record itself is wrong: needs a fixed payload or adapter
FAILED = "failed"             # the record is fine but a stage (render, sign) could not finish it
DEAD_LETTER = "dead_letter"   # delivery gave up: permanent refusal or too many attempts
SUPERSEDED = "superseded"     # a newer version of the same record_id arrived before delivery
UNCHANGED = "unchanged"       # the transcript's content equals what the destination already holds
FINAL_STATES = frozenset({DELIVERED, QUARANTINED, FAILED, DEAD_LETTER, SUPERSEDED, UNCHANGED})
# What an operator may replay; a delivered version is never sent twice.
REPLAYABLE = frozenset({QUARANTINED, FAILED, DEAD_LETTER})

# Record ids are derived from (adapter instance, vendor id) so a re-read maps to the same id.
_RECORD_NS = uuid.UUID("6f1d3f5c-43d1-4a56-9a4e-9d1c0e0b7a11")

SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    id              INTEGER PRIMARY KEY,
    record_id       TEXT NOT NULL,
    version         INTEGER NOT NULL,
    event           TEXT NOT NULL,
    adapter         TEXT NOT NULL,
    source_id       TEXT NOT NULL,
    source_updated  TEXT,
    content_type    TEXT NOT NULL,
    payload         BLOB NOT NULL,
    payload_hash    TEXT NOT NULL,
    state           TEXT NOT NULL,
    school_code     TEXT,
    school_year     TEXT,
    normalized      TEXT,
    pdf             BLOB,
    errors          TEXT,
    receipt         TEXT,
    content_hash    TEXT,
    attempts        INTEGER NOT NULL DEFAULT 0,
    received_at     TEXT NOT NULL,
    updated_at      TEXT NOT NULL,
    pruned_at       TEXT,
    lease_owner     TEXT,
    lease_until     TEXT,
    UNIQUE (record_id, version)
);
CREATE INDEX IF NOT EXISTS records_state ON records (state);
CREATE INDEX IF NOT EXISTS records_adapter ON records (adapter, state);
CREATE TABLE IF NOT EXISTS history (
    id         INTEGER PRIMARY KEY,
    record     INTEGER NOT NULL REFERENCES records (id),
    at         TEXT NOT NULL,
    state      TEXT NOT NULL,
    detail     TEXT
);
CREATE INDEX IF NOT EXISTS history_record ON history (record);
CREATE TABLE IF NOT EXISTS cursors (
    adapter    TEXT PRIMARY KEY,
    cursor     TEXT,
    updated_at TEXT NOT NULL
);
-- The outbox: a row here is a delivery that is due; it is written in the same transaction
-- as the state that makes it due and removed in the one that records the outcome.
CREATE TABLE IF NOT EXISTS outbox (
    record      INTEGER PRIMARY KEY REFERENCES records (id),
    due_at      TEXT NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    last_error  TEXT,
    lease_owner TEXT,
    lease_until TEXT
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (due_at);
-- Per record_id, the highest version the destination holds and the content it carried.
CREATE TABLE IF NOT EXISTS sent (
    record_id    TEXT PRIMARY KEY,
    version      INTEGER NOT NULL,
    content_hash TEXT,
    receipt      TEXT,
    sent_at      TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS adapters (
    name       TEXT PRIMARY KEY,
    paused     INTEGER NOT NULL DEFAULT 0,
    updated_at TEXT NOT NULL
);
-- Append-only and hash-chained: each entry's hash covers its content and the previous hash.
CREATE TABLE IF NOT EXISTS audit (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    at      TEXT NOT NULL,
    kind    TEXT NOT NULL,
    actor   TEXT NOT NULL,
    subject TEXT,
    detail  TEXT,
    prev    TEXT NOT NULL,
    hash    TEXT NOT NULL
);
"""

_SUMMARY_COLUMNS = ("id, record_id, version, event, adapter, source_id, state, school_code, school_year,"
                    " errors, receipt, attempts, received_at, updated_at, pruned_at")


def audit_hash(prev: str, entry: dict[str, Any]) -> str:
    """The chained hash of one audit entry (its id, time, kind, actor, subject, detail)."""
    body = json.dumps({k: entry[k] for k in ("id", "at", "kind", "actor", "subject", "detail")},
                      sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256((prev + body).encode()).hexdigest()


def content_hash(normalized: dict[str, Any]) -> str:
    """Hash of a transcript's content, without the envelope (which changes on every version)."""
    body = {k: v for k, v in normalized.items() if k not in {"record_id", "event", "version", "updated_at"}}
    return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


def record_id_for(adapter: str, source_id: str) -> str:
    """The envelope ``record_id`` of a vendor record: stable across re-reads."""
    return str(uuid.uuid5(_RECORD_NS, f"{adapter}/{source_id}"))


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

    @classmethod
    def _from(cls, r: sqlite3.Row) -> "Row":
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
        )

    def raw(self) -> RawRecord:
        return RawRecord(self.source_id, self.payload, self.content_type, deleted=self.event == "CANCEL")


class StateConflict(Exception):
    """The record was not in the state the transition expected (another worker moved it)."""


class Store:
    """SQLite-backed record store. Thread-safe; every public method is one transaction.

    ``shared`` is false: one hub process owns a SQLite file (several workers need PostgreSQL).
    """
    shared = False

    def __init__(self, path: str | Path):
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        # Incremental auto-vacuum lets retention hand pruned pages back to the file system;
        # it only takes effect on a new database, before the first table exists.
        self._db.execute("PRAGMA auto_vacuum=INCREMENTAL")
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # --- intake ---------------------------------------------------------------------------

    def receive(self, adapter: str, records: Iterable[RawRecord], cursor: str | None = None,
                *, save_cursor: bool = False) -> list[int]:
        """Commit raw records (and the cursor that covers them) in one transaction.

        A record whose payload is unchanged since its latest version is skipped; a changed one
        becomes the next version (``UPDATE``, or ``CANCEL`` when the vendor deleted it), and any
        older version still on its way is superseded so a stale version is never sent.
        Returns the store ids of the new versions.
        """
        new_ids: list[int] = []
        now = _now()
        with self._tx() as db:
            for raw in records:
                rid = record_id_for(adapter, raw.source_id)
                digest = hashlib.sha256(raw.payload + (b"\x00deleted" if raw.deleted else b"")).hexdigest()
                latest = db.execute(
                    "SELECT id, version, payload_hash, event FROM records WHERE record_id = ? "
                    "ORDER BY version DESC LIMIT 1", (rid,),
                ).fetchone()
                if latest is not None and latest["payload_hash"] == digest:
                    continue
                if raw.deleted:
                    event = "CANCEL"
                else:
                    event = "UPDATE" if latest is not None else "NEW"
                version = latest["version"] + 1 if latest is not None else 1
                if latest is not None:
                    for old in db.execute(
                        f"SELECT id FROM records WHERE record_id = ? AND state NOT IN ({','.join('?' * len(FINAL_STATES))})",
                        (rid, *sorted(FINAL_STATES)),
                    ).fetchall():
                        self._set_state(db, old["id"], SUPERSEDED, f"version {version} received", now)
                cur = db.execute(
                    "INSERT INTO records (record_id, version, event, adapter, source_id, source_updated,"
                    " content_type, payload, payload_hash, state, received_at, updated_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (rid, version, event, adapter, raw.source_id,
                     raw.updated_at.isoformat() if raw.updated_at else None, raw.content_type,
                     raw.payload, digest, RECEIVED, now, now),
                )
                new_ids.append(cur.lastrowid)
                db.execute("INSERT INTO history (record, at, state, detail) VALUES (?, ?, ?, ?)",
                           (cur.lastrowid, now, RECEIVED, f"version {version} {event}"))
            if save_cursor:
                db.execute(
                    "INSERT INTO cursors (adapter, cursor, updated_at) VALUES (?, ?, ?) "
                    "ON CONFLICT (adapter) DO UPDATE SET cursor = excluded.cursor, updated_at = excluded.updated_at",
                    (adapter, cursor, now),
                )
        return new_ids

    def cursor(self, adapter: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT cursor FROM cursors WHERE adapter = ?", (adapter,)).fetchone()
        return row["cursor"] if row else None

    # --- state changes ----------------------------------------------------------------------

    @staticmethod
    def _set_state(db: sqlite3.Connection, pk: int, state: str, detail: str | None, now: str) -> None:
        # A state change ends the worker's lease: the next stage claims the record afresh.
        db.execute("UPDATE records SET state = ?, updated_at = ?, lease_owner = NULL, lease_until = NULL"
                   " WHERE id = ?", (state, now, pk))
        if state in FINAL_STATES:  # a record that is done (or superseded) has no delivery due
            db.execute("DELETE FROM outbox WHERE record = ?", (pk,))
        db.execute("INSERT INTO history (record, at, state, detail) VALUES (?, ?, ?, ?)", (pk, now, state, detail))

    def advance(self, pk: int, expected: str, state: str, *, detail: str | None = None,
                due: bool = False, **fields: Any) -> None:
        """Move a record from ``expected`` to ``state`` and store ``fields`` with it, atomically.

        ``fields`` may be: normalized (dict), pdf (bytes), errors (list[str]), receipt (dict),
        school_code, school_year, attempts, content_hash. ``due=True`` writes the delivery job
        in the same transaction. Reaching ``delivered`` records the version as sent and closes
        the job; ``dead_letter`` closes the job.
        """
        now = _now()
        columns, values = [], []
        for name, value in fields.items():
            if name not in {"normalized", "pdf", "errors", "receipt", "school_code", "school_year",
                            "attempts", "content_hash"}:
                raise ValueError(f"unknown record field {name!r}")
            if name in {"normalized", "errors", "receipt"} and value is not None:
                value = json.dumps(value, ensure_ascii=False)
            columns.append(f"{name} = ?")
            values.append(value)
        with self._tx() as db:
            row = db.execute("SELECT state FROM records WHERE id = ?", (pk,)).fetchone()
            if row is None or row["state"] != expected:
                raise StateConflict(f"record {pk} is {row['state'] if row else 'missing'}, not {expected}")
            if columns:
                db.execute(f"UPDATE records SET {', '.join(columns)} WHERE id = ?", (*values, pk))
            self._set_state(db, pk, state, detail, now)
            if due:
                db.execute("INSERT INTO outbox (record, due_at, attempts) VALUES (?, ?, 0) ON CONFLICT (record)"
                           " DO UPDATE SET due_at = excluded.due_at, attempts = 0, lease_owner = NULL,"
                           " lease_until = NULL", (pk, now))
            if state == DELIVERED:
                r = db.execute("SELECT record_id, version, content_hash, receipt FROM records WHERE id = ?",
                               (pk,)).fetchone()
                db.execute(
                    "INSERT INTO sent (record_id, version, content_hash, receipt, sent_at) VALUES (?, ?, ?, ?, ?)"
                    " ON CONFLICT (record_id) DO UPDATE SET version = excluded.version,"
                    " content_hash = excluded.content_hash, receipt = excluded.receipt, sent_at = excluded.sent_at"
                    " WHERE excluded.version > sent.version",
                    (r["record_id"], r["version"], r["content_hash"], r["receipt"], now),
                )
                self._audit(db, "receipt", "hub", r["record_id"], {"version": r["version"], "receipt": fields.get("receipt")})

    def note_attempt(self, pk: int, error: str) -> int:
        """Count a failed attempt without changing state; returns the attempt count."""
        with self._tx() as db:
            db.execute("UPDATE records SET attempts = attempts + 1, errors = ?, updated_at = ? WHERE id = ?",
                       (json.dumps([error], ensure_ascii=False), _now(), pk))
            db.execute("INSERT INTO history (record, at, state, detail) VALUES "
                       "(?, ?, (SELECT state FROM records WHERE id = ?), ?)", (pk, _now(), pk, f"retry: {error}"))
            return db.execute("SELECT attempts FROM records WHERE id = ?", (pk,)).fetchone()[0]

    # --- leases ------------------------------------------------------------------------------

    def claim(self, states: Iterable[str], owner: str, lease_seconds: float, limit: int) -> list[int]:
        """Lease up to ``limit`` records in ``states`` that nobody holds (or whose lease ran
        out: its worker died) to ``owner``, oldest first. A state change ends the lease."""
        states = list(states)
        now = dt.datetime.now(dt.timezone.utc)
        until = (now + dt.timedelta(seconds=lease_seconds)).isoformat(timespec="milliseconds")
        with self._tx() as db:
            rows = db.execute(
                "UPDATE records SET lease_owner = ?, lease_until = ? WHERE id IN ("
                f" SELECT id FROM records WHERE state IN ({','.join('?' * len(states))})"
                "  AND (lease_until IS NULL OR lease_until < ?) ORDER BY id LIMIT ?) RETURNING id",
                (owner, until, *states, now.isoformat(timespec="milliseconds"), limit)).fetchall()
        return sorted(r[0] for r in rows)

    def release(self, pks: Iterable[int], owner: str) -> None:
        """Give records back without changing their state (the worker could not finish)."""
        pks = list(pks)
        if not pks:
            return
        with self._tx() as db:
            db.execute(f"UPDATE records SET lease_owner = NULL, lease_until = NULL WHERE lease_owner = ?"
                       f" AND id IN ({','.join('?' * len(pks))})", (owner, *pks))

    def renew(self, owner: str, lease_seconds: float) -> None:
        """Extend every lease ``owner`` holds (a heartbeat while long work is under way)."""
        until = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=lease_seconds)).isoformat(
            timespec="milliseconds")
        with self._tx() as db:
            db.execute("UPDATE records SET lease_until = ? WHERE lease_owner = ?", (until, owner))
            db.execute("UPDATE outbox SET lease_until = ? WHERE lease_owner = ?", (until, owner))

    def release_all(self) -> None:
        """Drop every lease: for a store only one hub process uses, at that process's start."""
        with self._tx() as db:
            db.execute("UPDATE records SET lease_owner = NULL, lease_until = NULL WHERE lease_owner IS NOT NULL")
            db.execute("UPDATE outbox SET lease_owner = NULL, lease_until = NULL WHERE lease_owner IS NOT NULL")

    # --- delivery (outbox) ------------------------------------------------------------------

    def claim_deliveries(self, owner: str, lease_seconds: float, limit: int) -> list[tuple[int, int]]:
        """Lease delivery jobs that are due, oldest first: ``(record pk, attempts so far)``."""
        now = dt.datetime.now(dt.timezone.utc)
        until = (now + dt.timedelta(seconds=lease_seconds)).isoformat(timespec="milliseconds")
        stamp = now.isoformat(timespec="milliseconds")
        with self._tx() as db:
            rows = db.execute(
                "UPDATE outbox SET lease_owner = ?, lease_until = ? WHERE record IN ("
                " SELECT record FROM outbox WHERE due_at <= ? AND (lease_until IS NULL OR lease_until < ?)"
                " ORDER BY due_at, record LIMIT ?) RETURNING record, attempts, due_at",
                (owner, until, stamp, stamp, limit)).fetchall()
        return [(r[0], r[1]) for r in sorted(rows, key=lambda r: (r[2], r[0]))]

    def next_due(self) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT MIN(due_at) FROM outbox WHERE lease_until IS NULL").fetchone()
        return row[0]

    def release_delivery(self, pk: int, owner: str) -> None:
        """Give a delivery job back untouched (the worker stopped before an outcome)."""
        with self._tx() as db:
            db.execute("UPDATE outbox SET lease_owner = NULL, lease_until = NULL WHERE record = ? AND lease_owner = ?",
                       (pk, owner))

    def drop_delivery(self, pk: int) -> None:
        """Remove a job whose record is no longer waiting for delivery."""
        with self._tx() as db:
            db.execute("DELETE FROM outbox WHERE record = ?", (pk,))

    def outbox_size(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]

    def delivery_attempted(self, pk: int, record_id: str, version: int) -> None:
        """Audit a submission before it is sent (so a crash mid-send still shows it)."""
        with self._tx() as db:
            self._audit(db, "submission", "hub", record_id, {"version": version})

    def retry_later(self, pk: int, error: str, due_at: str, count: bool = True) -> int:
        """Keep the job for another attempt at ``due_at`` (``count``: the attempt counts toward
        the limit); returns the attempts counted so far."""
        with self._tx() as db:
            db.execute("UPDATE outbox SET attempts = attempts + ?, due_at = ?, last_error = ?,"
                       " lease_owner = NULL, lease_until = NULL WHERE record = ?", (int(count), due_at, error, pk))
            db.execute("UPDATE records SET attempts = attempts + 1, errors = ?, updated_at = ? WHERE id = ?",
                       (json.dumps([error], ensure_ascii=False), _now(), pk))
            db.execute("INSERT INTO history (record, at, state, detail) VALUES "
                       "(?, ?, (SELECT state FROM records WHERE id = ?), ?)", (pk, _now(), pk, f"retry: {error}"))
            return db.execute("SELECT attempts FROM outbox WHERE record = ?", (pk,)).fetchone()[0]

    def make_due(self, now: str) -> int:
        """Make every waiting delivery due now (the destination came back after an outage)."""
        with self._tx() as db:
            return db.execute("UPDATE outbox SET due_at = ? WHERE due_at > ?", (now, now)).rowcount

    def sent_version(self, record_id: str) -> tuple[int, str | None] | None:
        """The highest version the destination holds for ``record_id`` and its content hash."""
        with self._lock:
            row = self._db.execute("SELECT version, content_hash FROM sent WHERE record_id = ?",
                                   (record_id,)).fetchone()
        return (row["version"], row["content_hash"]) if row else None

    def reissue(self, pk: int, expected: str, held_version: int, reason: str) -> int:
        """The destination holds ``held_version`` ≥ ours: send the same payload again as the
        next version above it. The old row is superseded; returns the new row's id."""
        now = _now()
        with self._tx() as db:
            row = db.execute("SELECT * FROM records WHERE id = ?", (pk,)).fetchone()
            if row["state"] != expected:
                raise StateConflict(f"record {pk} is {row['state']}, not {expected}")
            latest = db.execute("SELECT MAX(version) FROM records WHERE record_id = ?", (row["record_id"],)).fetchone()[0]
            version = max(held_version, latest) + 1
            self._set_state(db, pk, SUPERSEDED, reason, now)
            db.execute(
                "INSERT INTO sent (record_id, version, content_hash, sent_at) VALUES (?, ?, NULL, ?)"
                " ON CONFLICT (record_id) DO UPDATE SET version = excluded.version WHERE excluded.version > sent.version",
                (row["record_id"], held_version, now))
            cur = db.execute(
                "INSERT INTO records (record_id, version, event, adapter, source_id, source_updated,"
                " content_type, payload, payload_hash, state, received_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (row["record_id"], version, "CANCEL" if row["event"] == "CANCEL" else "UPDATE", row["adapter"],
                 row["source_id"], row["source_updated"], row["content_type"], row["payload"],
                 row["payload_hash"], RECEIVED, now, now))
            db.execute("INSERT INTO history (record, at, state, detail) VALUES (?, ?, ?, ?)",
                       (cur.lastrowid, now, RECEIVED, f"version {version}: {reason}"))
            self._audit(db, "reconcile", "hub", row["record_id"],
                        {"held_version": held_version, "old_version": row["version"], "new_version": version})
            return cur.lastrowid

    # --- operators ---------------------------------------------------------------------------

    def select(self, *, ids: Iterable[int] = (), record_ids: Iterable[str] = (), adapter: str | None = None,
               school: str | None = None, state: str | None = None) -> list[int]:
        """Store ids matching every given criterion (ids and record_ids: any of them)."""
        clauses, args = [], []
        ids, record_ids = list(ids), list(record_ids)
        if ids or record_ids:
            parts = []
            if ids:
                parts.append(f"id IN ({','.join('?' * len(ids))})"), args.extend(ids)
            if record_ids:
                parts.append(f"record_id IN ({','.join('?' * len(record_ids))})"), args.extend(record_ids)
            clauses.append("(" + " OR ".join(parts) + ")")
        for column, value in (("adapter", adapter), ("school_code", school), ("state", state)):
            if value is not None:
                clauses.append(f"{column} = ?"), args.append(value)
        if not clauses:
            raise ValueError("select needs at least one criterion")
        with self._lock:
            return [r[0] for r in self._db.execute(
                f"SELECT id FROM records WHERE {' AND '.join(clauses)} ORDER BY id", args)]

    def replay(self, pks: Iterable[int], *, stage: str = "normalize", actor: str,
               deliver_from: str | None = None) -> list[tuple[int, str]]:
        """Send quarantined, failed or dead-lettered records through the pipeline again.

        ``stage``: ``normalize`` (from the stored raw payload, so a fixed adapter re-maps it),
        ``render`` (from the normalised record) or ``deliver`` (the signed PDF as it is; needs
        ``deliver_from``, the state after the last signing step). Records in any other state are
        skipped — a delivered version is never sent twice. Returns ``(id, new state)`` of the
        records that moved.
        """
        moved = []
        now = _now()
        with self._tx() as db:
            for pk in pks:
                row = db.execute("SELECT state, record_id, version, normalized, pdf, pruned_at, errors"
                                 " FROM records WHERE id = ?", (pk,)).fetchone()
                if row is None or row["state"] not in REPLAYABLE or row["pruned_at"]:
                    continue
                if stage == "normalize":
                    target, reset = RECEIVED, "normalized = NULL, pdf = NULL, content_hash = NULL"
                elif stage == "render" and row["normalized"]:
                    target, reset = NORMALIZED, "pdf = NULL"
                elif stage == "deliver" and row["pdf"] and deliver_from and db.execute(
                        "SELECT 1 FROM history WHERE record = ? AND state = ?", (pk, deliver_from)).fetchone():
                    target, reset = deliver_from, "pdf = pdf"  # the fully signed PDF goes as it is
                else:
                    continue
                db.execute(f"UPDATE records SET {reset}, errors = NULL, attempts = 0 WHERE id = ?", (pk,))
                self._set_state(db, pk, target, f"replay ({stage}) by {actor}", now)
                if stage == "deliver":
                    db.execute("INSERT INTO outbox (record, due_at, attempts) VALUES (?, ?, 0) ON CONFLICT (record)"
                               " DO UPDATE SET due_at = excluded.due_at, attempts = 0, lease_owner = NULL,"
                               " lease_until = NULL", (pk, now))
                self._audit(db, "replay", actor, row["record_id"],
                            {"version": row["version"], "from": row["state"], "stage": stage})
                moved.append((pk, target))
        return moved

    def set_paused(self, adapter: str, paused: bool, actor: str) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO adapters (name, paused, updated_at) VALUES (?, ?, ?) ON CONFLICT (name)"
                       " DO UPDATE SET paused = excluded.paused, updated_at = excluded.updated_at",
                       (adapter, int(paused), _now()))
            self._audit(db, "pause" if paused else "resume", actor, adapter, {})

    def paused(self) -> set[str]:
        with self._lock:
            return {r[0] for r in self._db.execute("SELECT name FROM adapters WHERE paused = 1")}

    def audit(self, kind: str, actor: str, subject: str | None = None, detail: dict[str, Any] | None = None) -> None:
        """Append an audit entry (admin actions)."""
        with self._tx() as db:
            self._audit(db, kind, actor, subject, detail or {})

    def _audit(self, db: sqlite3.Connection, kind: str, actor: str, subject: str | None,
               detail: dict[str, Any]) -> None:
        prev = db.execute("SELECT hash FROM audit ORDER BY id DESC LIMIT 1").fetchone()
        prev_hash = prev[0] if prev else "0" * 64
        at = _now()
        detail_text = json.dumps(detail, sort_keys=True, ensure_ascii=False, default=str)
        cur = db.execute("INSERT INTO audit (at, kind, actor, subject, detail, prev, hash) VALUES (?, ?, ?, ?, ?, ?, '')",
                         (at, kind, actor, subject, detail_text, prev_hash))
        entry = {"id": cur.lastrowid, "at": at, "kind": kind, "actor": actor, "subject": subject, "detail": detail_text}
        db.execute("UPDATE audit SET hash = ? WHERE id = ?", (audit_hash(prev_hash, entry), cur.lastrowid))

    def audit_entries(self) -> Iterator[dict[str, Any]]:
        """Every audit entry in order (a snapshot, streamed)."""
        with self._lock:
            rows = self._db.execute("SELECT * FROM audit ORDER BY id").fetchall()
        for r in rows:
            yield dict(r)

    def prune(self, older_than: str) -> dict[str, int]:
        """Drop payloads and PDFs of records that reached the destination (or were superseded or
        unchanged) before ``older_than``; keep id, version, hashes and receipt. Records still on
        their way, quarantined, failed or dead-lettered are never pruned. Reclaims the space."""
        with self._tx() as db:
            n = db.execute(
                "UPDATE records SET payload = X'', pdf = NULL, normalized = NULL, pruned_at = ?"
                " WHERE state IN (?, ?, ?) AND updated_at < ? AND pruned_at IS NULL",
                (_now(), DELIVERED, SUPERSEDED, UNCHANGED, older_than)).rowcount
            if n:
                self._audit(db, "prune", "hub", None, {"records": n, "older_than": older_than})
        with self._lock:
            before = self._db.execute("PRAGMA freelist_count").fetchone()[0]
            self._db.execute("PRAGMA incremental_vacuum")
            after = self._db.execute("PRAGMA freelist_count").fetchone()[0]
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return {"records": n, "pages_reclaimed": before - after}

    # --- queries ----------------------------------------------------------------------------

    def search(self, *, state: str | None = None, adapter: str | None = None, school: str | None = None,
               year: str | None = None, since: str | None = None, until: str | None = None,
               limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
        """Record summaries (no payload or PDF), newest change first."""
        clauses, args = [], []
        for column, op, value in (("state", "=", state), ("adapter", "=", adapter), ("school_code", "=", school),
                                  ("school_year", "=", year), ("updated_at", ">=", since), ("updated_at", "<", until)):
            if value is not None:
                clauses.append(f"{column} {op} ?"), args.append(value)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_SUMMARY_COLUMNS} FROM records {where} ORDER BY updated_at DESC, id DESC LIMIT ? OFFSET ?",
                (*args, limit, offset)).fetchall()
        out = []
        for r in rows:
            item = dict(r)
            item["errors"] = json.loads(item["errors"]) if item["errors"] else []
            item["receipt"] = json.loads(item["receipt"]) if item["receipt"] else None
            out.append(item)
        return out

    def breakdown(self) -> list[dict[str, Any]]:
        """Record counts by adapter, school and state (for the status page and metrics)."""
        with self._lock:
            rows = self._db.execute("SELECT adapter, school_code, state, COUNT(*) AS n FROM records"
                                    " GROUP BY adapter, school_code, state ORDER BY adapter, school_code, state")
            return [dict(r) for r in rows]


    def get(self, pk: int) -> Row:
        with self._lock:
            r = self._db.execute("SELECT * FROM records WHERE id = ?", (pk,)).fetchone()
        if r is None:
            raise KeyError(pk)
        return Row._from(r)

    def pending(self) -> list[tuple[int, str]]:
        """Every record not in a final state, oldest first, as ``(id, state)``."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT id, state FROM records WHERE state NOT IN ({','.join('?' * len(FINAL_STATES))}) ORDER BY id",
                tuple(FINAL_STATES),
            ).fetchall()
        return [(r["id"], r["state"]) for r in rows]

    def rows(self, *, state: str | None = None, adapter: str | None = None) -> list[Row]:
        clauses, args = [], []
        if state:
            clauses.append("state = ?"), args.append(state)
        if adapter:
            clauses.append("adapter = ?"), args.append(adapter)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._lock:
            return [Row._from(r) for r in self._db.execute(f"SELECT * FROM records {where} ORDER BY id", args)]

    def counts(self) -> dict[str, int]:
        """Records by state."""
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) AS n FROM records GROUP BY state").fetchall()
        return {r["state"]: r["n"] for r in rows}

    def history(self, pk: int) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute("SELECT at, state, detail FROM history WHERE record = ? ORDER BY id", (pk,))
            return [dict(r) for r in rows]

    def ping(self) -> None:
        """Raise if the database cannot be read (for readiness checks)."""
        with self._lock:
            self._db.execute("SELECT 1 FROM records LIMIT 1").fetchall()
