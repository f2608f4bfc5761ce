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
FAILED = "failed"             # the record is fine but a stage could not finish it
SUPERSEDED = "superseded"     # a newer version of the same record_id arrived before delivery
FINAL_STATES = frozenset({DELIVERED, QUARANTINED, FAILED, SUPERSEDED})

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
    attempts        INTEGER NOT NULL DEFAULT 0,
    received_at     TEXT NOT NULL,
    updated_at      TEXT NOT NULL,
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
"""


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
            adapter=r["adapter"], source_id=r["source_id"], content_type=r["content_type"],
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
    """SQLite-backed record store. Thread-safe; every public method is one transaction."""

    def __init__(self, path: str | Path):
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.RLock()
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
                        "SELECT id FROM records WHERE record_id = ? AND state NOT IN (?, ?, ?, ?)",
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
        db.execute("UPDATE records SET state = ?, updated_at = ? WHERE id = ?", (state, now, pk))
        db.execute("INSERT INTO history (record, at, state, detail) VALUES (?, ?, ?, ?)", (pk, now, state, detail))

    def advance(self, pk: int, expected: str, state: str, *, detail: str | None = None,
                **fields: Any) -> None:
        """Move a record from ``expected`` to ``state`` and store ``fields`` with it, atomically.

        ``fields`` may be: normalized (dict), pdf (bytes), errors (list[str]), receipt (dict),
        school_code, school_year, attempts.
        """
        now = _now()
        columns, values = [], []
        for name, value in fields.items():
            if name not in {"normalized", "pdf", "errors", "receipt", "school_code", "school_year", "attempts"}:
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

    def note_attempt(self, pk: int, error: str) -> int:
        """Count a failed attempt without changing state; returns the attempt count."""
        with self._tx() as db:
            db.execute("UPDATE records SET attempts = attempts + 1, errors = ?, updated_at = ? WHERE id = ?",
                       (json.dumps([error], ensure_ascii=False), _now(), pk))
            db.execute("INSERT INTO history (record, at, state, detail) VALUES "
                       "(?, ?, (SELECT state FROM records WHERE id = ?), ?)", (pk, _now(), pk, f"retry: {error}"))
            return db.execute("SELECT attempts FROM records WHERE id = ?", (pk,)).fetchone()[0]

    # --- queries ----------------------------------------------------------------------------

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
