"""The durable store: every record's raw payload, state and products.

The raw payload is committed before anything else happens to a record; every state change is
one transaction that checks the state it leaves (so two workers cannot both advance a record)
and appends to the record's history. A restarted hub asks ``pending()`` for every record not
in a final state and carries on from there.

Two backends, one behaviour (``tests/test_store_contract.py`` runs the same cases on both):

- ``Store``: SQLite, the default. One file in WAL mode with ``synchronous=FULL``: a commit
  survives a crash of the process and of the machine. One hub process owns the file.
- ``hub.store.postgres.PostgresStore``: PostgreSQL, for several hub workers on one database
  (``store: postgresql://…``). Work is leased with ``SELECT … FOR UPDATE SKIP LOCKED``.

``open_store(location)`` picks the backend. The schema of both comes from
``hub.store.migrations``. All calls go through one connection guarded by a lock; the pipeline calls
the store from a dedicated thread so the event loop never waits on the disk.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from hub.contracts import RawRecord, source_id_problem, storable_id
from hub.lifecycle import (
    BLOCKED_STATES,
    DEAD_LETTER,
    DELIVERED,
    FINAL_STATES,
    NORMALIZED,
    RECEIVED,
    REPLAYABLE,
    SETTLED,
    SUPERSEDED,
    UNCHANGED,
)
from hub.store import migrations
from hub.store.issuance import IssuanceRegistry
from hub.store.packages import PackageLedger

# A destination's job waiting in the outbox (``deliveries.state``; the others are record states).
QUEUED = "queued"

# Record ids are derived from (adapter instance, vendor id) so a re-read maps to the same id.
_RECORD_NS = uuid.UUID("6f1d3f5c-43d1-4a56-9a4e-9d1c0e0b7a11")

T = TypeVar("T")

_SUMMARY_COLUMNS = ("id, record_id, version, event, adapter, source_id, state, school_code, school_year,"
                    " errors, receipt, attempts, received_at, updated_at, pruned_at")


def audit_hash(prev: str, entry: dict[str, Any]) -> str:
    """The chained hash of one audit entry (its id, time, kind, actor, subject, detail)."""
    body = json.dumps({k: entry[k] for k in ("id", "at", "kind", "actor", "subject", "detail")},
                      sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256((prev + body).encode()).hexdigest()


def content_hash(normalized: dict[str, Any]) -> str:
    """Hash of a transcript's content, without the envelope (which changes on every version).

    A cancel is other content than the same transcript in force: a version restoring it after
    a cancel is sent, never taken for "unchanged"."""
    body = {k: v for k, v in normalized.items() if k not in {"record_id", "event", "version", "updated_at"}}
    if normalized.get("event") == "CANCEL":
        body["cancelled"] = True
    return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def _cancelled_as_is(latest: Any, raw: RawRecord, digest: str) -> bool:
    """An operator cancelled the record (``Store.cancel``) and the vendor still serves the very
    payload that was cancelled: re-reading it is not a new version; a changed one is."""
    return (latest["event"] == "CANCEL" and latest["reason"] is not None and not raw.deleted
            and hashlib.sha256(latest["payload"]).hexdigest() == digest)


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


def _older(updated: dt.datetime | None, latest: str | None, horizon: dt.datetime | None = None) -> bool:
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


def is_postgres_url(location: str | Path) -> bool:
    return str(location).startswith(("postgresql://", "postgres://"))


def open_store(location: str | Path) -> "Store":
    """The store at ``location``: a ``postgresql://`` URL, or a SQLite file path."""
    if is_postgres_url(location):
        from hub.store.postgres import PostgresStore

        return PostgresStore(str(location))
    return Store(location)


class Store(IssuanceRegistry, PackageLedger):
    """SQLite-backed record store. Thread-safe; every public method is one transaction.

    ``shared`` is false: one hub process owns a SQLite file (several workers need PostgreSQL).
    The PostgreSQL store subclasses this one and changes only what the dialect needs: row
    locks, leases, the audit chain's numbering, space reclamation.
    """
    shared = False
    # What the database raises when it cannot be reached or written just now (locked, disk
    # full, connection dropped): the record is fine and stays at its state for a later try.
    unavailable: tuple[type[Exception], ...] = (sqlite3.OperationalError,)
    dialect = "sqlite"
    # How far ahead of this clock a vendor's update time is still trusted (``clock_skew_seconds``).
    clock_skew_seconds = 300.0
    # SQLite's single writer already serialises a whole transaction; PostgreSQL needs the rows
    # a transition checks locked until it commits.
    _for_update = ""

    def __new__(cls, path: str | Path = ":memory:", *args: Any, **kwargs: Any) -> "Store":
        # ``Store(config.store_path)`` is how callers open the configured store: a PostgreSQL URL
        # must open PostgreSQL, never a SQLite file named after the URL.
        if cls is Store and is_postgres_url(path):
            from hub.store.postgres import PostgresStore

            return super().__new__(PostgresStore)
        return super().__new__(cls)

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
        self._db.execute("PRAGMA busy_timeout=10000")
        self._migrate()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _migrate(self) -> None:
        def work(db: Any) -> None:
            self._serialise_migrations(db)
            db.execute(migrations.VERSION_TABLE)
            applied = {r[0] for r in db.execute("SELECT version FROM schema_version").fetchall()}
            for step in migrations.pending(applied):
                for statement in step.statements(self.dialect):
                    db.execute(statement)
                db.execute("INSERT INTO schema_version (version, name, applied_at) VALUES (?, ?, ?)",
                           (step.version, step.name, now_iso()))
        self._write(work)

    def schema_version(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()[0]

    def _write(self, work: Callable[[Any], T]) -> T:
        """Run ``work(db)`` in one write transaction; roll back if it raises."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                result = work(self._db)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            return result

    # Dialect hooks: what SQLite's single writer makes unnecessary, PostgreSQL overrides.

    def _serialise_migrations(self, db: Any) -> None:
        """Keep workers starting together from migrating at once (one file, one writer: nothing to do)."""

    def _lock_record_ids(self, db: Any, record_ids: list[str]) -> None:
        """Serialise version numbering per record_id against other workers (sorted: no deadlock)."""

    def _lease_times(self, lease_seconds: float) -> tuple[str, str]:
        now = dt.datetime.now(dt.timezone.utc)
        until = now + dt.timedelta(seconds=lease_seconds)
        return now.isoformat(timespec="milliseconds"), until.isoformat(timespec="milliseconds")

    # --- intake ---------------------------------------------------------------------------

    def receive(self, adapter: str, records: Iterable[RawRecord], cursor: str | None = None,
                *, save_cursor: bool = False, lease_owner: str | None = None) -> list[int]:
        """Commit raw records (and the cursor that covers them) in one transaction.

        A record whose payload is unchanged since its latest version is skipped, and so is one the
        vendor dates before the latest version (a delayed retry or a re-sent old page: the hub
        already holds newer data); a changed one becomes the next version (``UPDATE``, or
        ``CANCEL`` when the vendor deleted it), and any older version still on its way is
        superseded so a stale version is never sent.
        ``lease_owner``: commit only while that worker holds the adapter's pull lease
        (``claim_pull``), else raise ``LeaseLost`` — a worker that lost it never moves the
        cursor back. Returns the store ids of the new versions.
        """
        page = list(records)  # one page; a failing iterator commits nothing
        if cursor is not None and "\x00" in cursor:
            # No backend keeps it alike (PostgreSQL refuses NUL): the adapter's error, named,
            # before anything of the page is written.
            raise ValueError(f"adapter {adapter}: the page's cursor contains a NUL character")
        now = now_iso()
        horizon = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=self.clock_skew_seconds)
        placeholders = ",".join("?" * len(SETTLED))

        def work(db: Any) -> list[int]:
            if lease_owner is not None:
                self._check_pull_lease(db, adapter, lease_owner)
            rids = [record_id_for(adapter, raw.source_id) for raw in page]
            self._lock_record_ids(db, sorted(set(rids)))
            new_ids: list[int] = []
            for raw, rid in zip(page, rids):
                digest = hashlib.sha256(raw.payload + (b"\x00deleted" if raw.deleted else b"")).hexdigest()
                latest = db.execute(
                    "SELECT id, version, payload, payload_hash, event, reason, source_updated FROM records"
                    " WHERE record_id = ? ORDER BY version DESC LIMIT 1", (rid,),
                ).fetchone()
                if latest is not None and (latest["payload_hash"] == digest
                                           or _older(raw.updated_at, latest["source_updated"], horizon)
                                           or _cancelled_as_is(latest, raw, digest)):
                    continue
                if raw.deleted:
                    event = "CANCEL"
                else:
                    event = "UPDATE" if latest is not None else "NEW"
                version = latest["version"] + 1 if latest is not None else 1
                if latest is not None:
                    for old in db.execute(
                        f"SELECT id FROM records WHERE record_id = ? AND state NOT IN ({placeholders})"
                        f" ORDER BY id{self._for_update}",
                        (rid, *sorted(SETTLED)),
                    ).fetchall():
                        self._set_state(db, old["id"], SUPERSEDED, f"version {version} received", now)
                pk = db.execute(
                    "INSERT INTO records (record_id, version, event, adapter, source_id, source_updated,"
                    " content_type, payload, payload_hash, state, received_at, updated_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                    (rid, version, event, adapter, storable_id(raw.source_id),
                     raw.updated_at.isoformat() if raw.updated_at else None, raw.content_type,
                     raw.payload, digest, RECEIVED, now, now),
                ).fetchone()[0]
                new_ids.append(pk)
                # An id no store keeps alike (NUL, other controls: RawRecord.source_id) is kept
                # as ``storable_id`` says, so its page still commits; the normalise stage
                # quarantines it (``source_id_problem``), and the history names what it held.
                problem = source_id_problem(raw.source_id)
                db.execute("INSERT INTO history (record, at, state, detail) VALUES (?, ?, ?, ?)",
                           (pk, now, RECEIVED, f"version {version} {event}"
                            + (f"; source_id: {problem}" if problem else "")))
            if save_cursor:
                db.execute(
                    "INSERT INTO cursors (adapter, cursor, updated_at) VALUES (?, ?, ?) "
                    "ON CONFLICT (adapter) DO UPDATE SET cursor = excluded.cursor, updated_at = excluded.updated_at",
                    (adapter, cursor, now),
                )
            return new_ids
        return self._write(work)

    def cursor(self, adapter: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT cursor FROM cursors WHERE adapter = ?", (adapter,)).fetchone()
        return row["cursor"] if row else None

    # --- pull leases: one worker at a time reads an adapter ----------------------------------

    def claim_pull(self, adapter: str, owner: str, lease_seconds: float) -> bool:
        """Lease pulling ``adapter`` (and moving its cursor) to ``owner``; false while another
        worker holds it. Holding it already renews it."""
        now, until = self._lease_times(lease_seconds)
        return self._write(lambda db: db.execute(
            "INSERT INTO pull_leases (adapter, owner, lease_until) VALUES (?, ?, ?)"
            " ON CONFLICT (adapter) DO UPDATE SET owner = excluded.owner, lease_until = excluded.lease_until"
            " WHERE pull_leases.owner = excluded.owner OR pull_leases.lease_until < ? RETURNING adapter",
            (adapter, owner, until, now)).fetchone() is not None)

    def release_pull(self, adapter: str, owner: str) -> None:
        self._write(lambda db: db.execute("DELETE FROM pull_leases WHERE adapter = ? AND owner = ?",
                                          (adapter, owner)))

    def pull_owner(self, adapter: str) -> str | None:
        """Who holds ``adapter``'s pull lease (expired or not), if anyone."""
        with self._lock:
            row = self._db.execute("SELECT owner FROM pull_leases WHERE adapter = ?", (adapter,)).fetchone()
        return row[0] if row else None

    def _check_pull_lease(self, db: Any, adapter: str, owner: str) -> None:
        row = db.execute(f"SELECT owner FROM pull_leases WHERE adapter = ?{self._for_update}", (adapter,)).fetchone()
        if row is None or row[0] != owner:
            raise LeaseLost(f"{adapter}: the pull lease is held by {row[0] if row else 'nobody'}, not {owner}")

    # --- state changes ----------------------------------------------------------------------

    def _set_state(self, db: Any, pk: int, state: str, detail: str | None, now: str) -> None:
        # A state change ends the worker's lease: the next stage claims the record afresh.
        db.execute("UPDATE records SET state = ?, updated_at = ?, lease_owner = NULL, lease_until = NULL"
                   " WHERE id = ?", (state, now, pk))
        if state in FINAL_STATES:  # a record that is done (or superseded) has no delivery due
            db.execute("DELETE FROM outbox WHERE record = ?", (pk,))
            outcome = state if state in (DELIVERED, DEAD_LETTER, SUPERSEDED) else "dropped"
            db.execute("UPDATE deliveries SET state = ?, updated_at = ? WHERE record = ? AND state = ?",
                       (outcome, now, pk, QUEUED))
        db.execute("INSERT INTO history (record, at, state, detail) VALUES (?, ?, ?, ?)", (pk, now, state, detail))

    def advance(self, pk: int, expected: str, state: str, *, detail: str | None = None,
                due: bool | Sequence[str] = False, issued_to: str | None = None, **fields: Any) -> None:
        """Move a record from ``expected`` to ``state`` and store ``fields`` with it, atomically.

        ``fields`` may be: normalized (dict), pdf (bytes), xml (bytes), errors (list[str]), receipt (dict),
        school_code, school_year, attempts, content_hash. ``due`` writes the delivery jobs in the
        same transaction: one per destination named (``True``: the one destination of a hub
        without routes); an empty list (no route takes the record) delivers it to nobody at once.
        Reaching ``delivered`` directly (not through ``delivery_done``) records the version as held
        by ``issued_to`` and enters each document in the issuance registry for it;
        ``dead_letter`` closes the jobs. ``verify_code`` is set once per version.
        """
        self._write(self._advancing(pk, expected, state, detail=detail, due=due, issued_to=issued_to, **fields))

    def advance_many(self, changes: Sequence[tuple[tuple[Any, ...], dict[str, Any]]]) -> list[Exception | None]:
        """Several ``advance`` calls, each ``(args, kwargs)``, committed in one transaction.

        Each change checks the state it leaves inside its own savepoint: one that conflicts
        (``StateConflict``) or names an unknown field (``ValueError``) is left out and the others
        commit. Returns, per change, that exception or ``None``; any other error commits none.
        """
        def work(db: Any) -> list[Exception | None]:
            outcome: list[Exception | None] = []
            for args, kwargs in changes:
                try:
                    step = self._advancing(*args, **kwargs)
                except ValueError as exc:
                    outcome.append(exc)
                    continue
                db.execute("SAVEPOINT advance_one")
                try:
                    step(db)
                except StateConflict as exc:
                    db.execute("ROLLBACK TO SAVEPOINT advance_one")
                    outcome.append(exc)
                else:
                    outcome.append(None)
                db.execute("RELEASE SAVEPOINT advance_one")
            return outcome

        return self._write(work)

    def _advancing(self, pk: int, expected: str, state: str, *, detail: str | None = None,
                   due: bool = False, issued_to: str | None = None, **fields: Any) -> Callable[[Any], None]:
        """``advance``'s work, to run in a write transaction (``ValueError`` for an unknown field)."""
        now = now_iso()
        columns, values = [], []
        for name, value in fields.items():
            if name not in {"normalized", "pdf", "xml", "errors", "receipt", "school_code", "school_year",
                            "attempts", "content_hash", "verify_code"}:
                raise ValueError(f"unknown record field {name!r}")
            if name in {"normalized", "errors", "receipt"} and value is not None:
                value = json.dumps(value, ensure_ascii=False)
            columns.append(f"{name} = ?")
            values.append(value)
        destinations = None if due is False else [migrations.ROUTELESS] if due is True else list(due)

        def work(db: Any) -> None:
            row = db.execute(f"SELECT state FROM records WHERE id = ?{self._for_update}", (pk,)).fetchone()
            if row is None or row["state"] != expected:
                raise StateConflict(f"record {pk} is {row['state'] if row else 'missing'}, not {expected}")
            if columns:
                db.execute(f"UPDATE records SET {', '.join(columns)} WHERE id = ?", (*values, pk))
            self._set_state(db, pk, state, detail, now)
            if destinations is not None:
                self._queue(db, pk, destinations, now)
                self._settle(db, pk, state, now)  # nothing to send (no route, or all hold it): settled now
            if state == DELIVERED:
                r = db.execute("SELECT record_id, version, content_hash, receipt FROM records WHERE id = ?",
                               (pk,)).fetchone()
                self._held(db, r["record_id"], issued_to or migrations.ROUTELESS, r["version"], r["content_hash"],
                           r["receipt"], now)
                self._audit(db, "receipt", "hub", r["record_id"], {"version": r["version"], "receipt": fields.get("receipt")})
                if issued_to is not None:
                    self._issue_to(db, pk, issued_to, now)
        return work

    def _issue_to(self, db: Any, pk: int, destination: str, now: str) -> None:
        have = db.execute("SELECT verify_code, pdf IS NOT NULL AS p, xml IS NOT NULL AS x FROM records"
                          " WHERE id = ?", (pk,)).fetchone()
        for document, present in (("pdf", have["p"]), ("xml", have["x"])):
            if present and have["verify_code"]:
                self._issue(db, pk, document, actor="hub", recipient=destination, purpose="delivery",
                            audit_kind="issue", now=now)

    def _held(self, db: Any, record_id: str, destination: str, version: int, digest: str | None,
              receipt: str | None, now: str) -> None:
        """``destination`` holds ``version`` of ``record_id`` (the highest version wins)."""
        db.execute(
            "INSERT INTO sent_to (record_id, destination, version, content_hash, receipt, sent_at)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (record_id, destination) DO UPDATE SET version = excluded.version,"
            " content_hash = excluded.content_hash, receipt = excluded.receipt, sent_at = excluded.sent_at"
            " WHERE excluded.version > sent_to.version",
            (record_id, destination, version, digest, receipt, now))

    def note_attempt(self, pk: int, error: str) -> int:
        """Count a failed attempt without changing state; returns the attempt count."""
        def work(db: Any) -> int:
            db.execute("UPDATE records SET attempts = attempts + 1, errors = ?, updated_at = ? WHERE id = ?",
                       (json.dumps([error], ensure_ascii=False), now_iso(), pk))
            db.execute("INSERT INTO history (record, at, state, detail) VALUES "
                       "(?, ?, (SELECT state FROM records WHERE id = ?), ?)", (pk, now_iso(), pk, f"retry: {error}"))
            return db.execute("SELECT attempts FROM records WHERE id = ?", (pk,)).fetchone()[0]
        return self._write(work)

    # --- leases ------------------------------------------------------------------------------

    def claim(self, states: Iterable[str], owner: str, lease_seconds: float, limit: int) -> list[int]:
        """Lease up to ``limit`` records in ``states`` that nobody holds (or whose lease ran
        out: its worker died) to ``owner``, oldest first. A state change ends the lease."""
        states = list(states)
        now, until = self._lease_times(lease_seconds)
        rows = self._write(lambda db: db.execute(
            "UPDATE records SET lease_owner = ?, lease_until = ? WHERE id IN ("
            f" SELECT id FROM records WHERE state IN ({','.join('?' * len(states))})"
            "  AND (lease_until IS NULL OR lease_until < ?) ORDER BY id LIMIT ?) RETURNING id",
            (owner, until, *states, now, limit)).fetchall())
        return sorted(r[0] for r in rows)

    def release(self, pks: Iterable[int], owner: str) -> None:
        """Give records back without changing their state (the worker could not finish)."""
        pks = list(pks)
        if not pks:
            return
        self._write(lambda db: db.execute(
            f"UPDATE records SET lease_owner = NULL, lease_until = NULL WHERE lease_owner = ?"
            f" AND id IN ({','.join('?' * len(pks))})", (owner, *pks)))

    def renew(self, owner: str, lease_seconds: float) -> None:
        """Extend every lease ``owner`` holds (a heartbeat while long work is under way)."""
        _, until = self._lease_times(lease_seconds)

        def work(db: Any) -> None:
            db.execute("UPDATE records SET lease_until = ? WHERE lease_owner = ?", (until, owner))
            db.execute("UPDATE outbox SET lease_until = ? WHERE lease_owner = ?", (until, owner))
            db.execute("UPDATE pull_leases SET lease_until = ? WHERE owner = ?", (until, owner))
        self._write(work)

    def release_all(self) -> None:
        """Drop every lease: for a store only one hub process uses, at that process's start."""
        def work(db: Any) -> None:
            db.execute("UPDATE records SET lease_owner = NULL, lease_until = NULL WHERE lease_owner IS NOT NULL")
            db.execute("UPDATE outbox SET lease_owner = NULL, lease_until = NULL WHERE lease_owner IS NOT NULL")
            db.execute("DELETE FROM pull_leases")
        self._write(work)

    # --- delivery (outbox): one job per (record version, destination) ---------------------

    def _queue(self, db: Any, pk: int, destinations: Iterable[str], now: str) -> None:
        for dest in destinations:
            had = db.execute("SELECT state FROM deliveries WHERE record = ? AND destination = ?", (pk, dest)).fetchone()
            if had is not None and had["state"] == DELIVERED:
                continue  # a destination holding this version never gets it twice (a replay from render)
            db.execute("INSERT INTO outbox (record, destination, due_at, attempts) VALUES (?, ?, ?, 0)"
                       " ON CONFLICT (record, destination) DO UPDATE SET due_at = excluded.due_at, attempts = 0,"
                       " lease_owner = NULL, lease_until = NULL", (pk, dest, now))
            db.execute("INSERT INTO deliveries (record, destination, state, attempts, updated_at) VALUES (?, ?, ?, 0, ?)"
                       " ON CONFLICT (record, destination) DO UPDATE SET state = excluded.state, attempts = 0,"
                       " last_error = NULL, updated_at = excluded.updated_at", (pk, dest, QUEUED, now))

    def _settle(self, db: Any, pk: int, expected: str, now: str) -> str | None:
        """Once no destination's job is left, move the record from ``expected`` to its outcome:
        ``dead_letter`` if any destination gave up, else ``delivered`` if any holds it (or none was
        to: no route takes it), else ``superseded`` (each holds a newer version). Returns it."""
        row = db.execute("SELECT state FROM records WHERE id = ?", (pk,)).fetchone()
        if row["state"] != expected or db.execute("SELECT 1 FROM outbox WHERE record = ?", (pk,)).fetchone():
            return None
        outcomes = db.execute("SELECT destination, state, last_error FROM deliveries WHERE record = ?"
                              " ORDER BY destination", (pk,)).fetchall()
        dead = [o for o in outcomes if o["state"] == DEAD_LETTER]
        held = [o["destination"] for o in outcomes if o["state"] == DELIVERED]
        if dead:
            errors = [f"{o['destination'] or 'destination'}: {o['last_error']}" for o in dead]
            db.execute("UPDATE records SET errors = ? WHERE id = ?", (json.dumps(errors, ensure_ascii=False), pk))
            state, detail = DEAD_LETTER, "dead letter at " + ", ".join(o["destination"] or "the destination" for o in dead)
        elif held or not outcomes:
            state = DELIVERED
            detail = ("delivered to " + ", ".join(d or "the destination" for d in held)) if outcomes else \
                "no route takes this record: nothing to send"
        else:
            state, detail = SUPERSEDED, "every destination holds a newer version"
        self._set_state(db, pk, state, detail, now)
        return state

    def claim_deliveries(self, owner: str, lease_seconds: float, limit: int,
                         destination: str | None = None) -> list[tuple[int, str, int]]:
        """Lease delivery jobs that are due (of one ``destination``, or of all), oldest first:
        ``(record pk, destination, attempts so far)``."""
        now, until = self._lease_times(lease_seconds)
        where, args = ("AND destination = ?", (destination,)) if destination is not None else ("", ())
        rows = self._write(lambda db: db.execute(
            "UPDATE outbox SET lease_owner = ?, lease_until = ? WHERE (record, destination) IN ("
            " SELECT record, destination FROM outbox WHERE due_at <= ? AND (lease_until IS NULL OR lease_until < ?)"
            f" {where} ORDER BY due_at, record LIMIT ?) RETURNING record, destination, attempts, due_at",
            (owner, until, now, now, *args, limit)).fetchall())
        return [(r[0], r[1], r[2]) for r in sorted(rows, key=lambda r: (r[3], r[0], r[1]))]

    def next_due(self, destination: str | None = None) -> str | None:
        where, args = (" AND destination = ?", (destination,)) if destination is not None else ("", ())
        with self._lock:
            row = self._db.execute(f"SELECT MIN(due_at) FROM outbox WHERE lease_until IS NULL{where}", args).fetchone()
        return row[0]

    def release_delivery(self, pk: int, owner: str, destination: str | None = None) -> None:
        """Give a delivery job back untouched (the worker stopped before an outcome)."""
        where, args = (" AND destination = ?", (destination,)) if destination is not None else ("", ())
        self._write(lambda db: db.execute(
            f"UPDATE outbox SET lease_owner = NULL, lease_until = NULL WHERE record = ? AND lease_owner = ?{where}",
            (pk, owner, *args)))

    def drop_delivery(self, pk: int, destination: str | None = None) -> None:
        """Remove a job whose record is no longer waiting for delivery."""
        where, args = (" AND destination = ?", (destination,)) if destination is not None else ("", ())
        self._write(lambda db: db.execute(f"DELETE FROM outbox WHERE record = ?{where}", (pk, *args)))

    def outbox_size(self, destination: str | None = None) -> int:
        where, args = (" WHERE destination = ?", (destination,)) if destination is not None else ("", ())
        with self._lock:
            return self._db.execute(f"SELECT COUNT(*) FROM outbox{where}", args).fetchone()[0]

    def delivery_attempted(self, pk: int, record_id: str, version: int, destination: str | None = None) -> None:
        """Audit a submission before it is sent (so a crash mid-send still shows it)."""
        detail: dict[str, Any] = {"version": version}
        if destination:
            detail["destination"] = destination
        self._write(lambda db: self._audit(db, "submission", "hub", record_id, detail))

    def retry_later(self, pk: int, error: str, due_at: str, count: bool = True,
                    destination: str = migrations.ROUTELESS) -> int:
        """Keep ``destination``'s job for another attempt at ``due_at`` (``count``: the attempt
        counts toward the limit); returns the attempts counted so far."""
        def work(db: Any) -> int:
            db.execute("UPDATE outbox SET attempts = attempts + ?, due_at = ?, last_error = ?,"
                       " lease_owner = NULL, lease_until = NULL WHERE record = ? AND destination = ?",
                       (int(count), due_at, error, pk, destination))
            db.execute("UPDATE deliveries SET attempts = attempts + ?, last_error = ?, updated_at = ?"
                       " WHERE record = ? AND destination = ?", (int(count), error, now_iso(), pk, destination))
            db.execute("UPDATE records SET attempts = attempts + 1, errors = ?, updated_at = ? WHERE id = ?",
                       (json.dumps([f"{destination}: {error}" if destination else error], ensure_ascii=False),
                        now_iso(), pk))
            db.execute("INSERT INTO history (record, at, state, detail) VALUES "
                       "(?, ?, (SELECT state FROM records WHERE id = ?), ?)",
                       (pk, now_iso(), pk, f"retry: {destination}: {error}" if destination else f"retry: {error}"))
            row = db.execute("SELECT attempts FROM outbox WHERE record = ? AND destination = ?",
                             (pk, destination)).fetchone()
            return row[0] if row else 0
        return self._write(work)

    def make_due(self, now: str, destination: str | None = None) -> int:
        """Make every waiting delivery (to ``destination``) due now (it came back after an outage)."""
        where, args = (" AND destination = ?", (destination,)) if destination is not None else ("", ())
        return self._write(lambda db: db.execute(f"UPDATE outbox SET due_at = ? WHERE due_at > ?{where}",
                                                 (now, now, *args)).rowcount)

    def delivery_done(self, pk: int, destination: str, expected: str, receipt: dict[str, Any]) -> str | None:
        """``destination`` accepted record ``pk``'s version: its outcome, the version it holds, the
        issuance of each document to it and the audit entry, in one transaction; the record
        moves on from ``expected`` once no destination's job is left. A version accepted while a
        newer one superseded it keeps its receipt (and is ``delivered``): the store's view and the
        destination's must agree. Returns the record's new state, if it moved."""
        now = now_iso()
        return self._write(lambda db: self._delivery_done(db, pk, destination, expected, receipt, now))

    def _delivery_done(self, db: Any, pk: int, destination: str, expected: str, receipt: dict[str, Any],
                       now: str) -> str | None:
        text = json.dumps(receipt, ensure_ascii=False)
        row = db.execute(f"SELECT record_id, version, state, content_hash FROM records WHERE id = ?"
                         f"{self._for_update}", (pk,)).fetchone()
        if row is None:
            raise KeyError(pk)
        db.execute("DELETE FROM outbox WHERE record = ? AND destination = ?", (pk, destination))
        db.execute("INSERT INTO deliveries (record, destination, state, receipt, updated_at) VALUES (?, ?, ?, ?, ?)"
                   " ON CONFLICT (record, destination) DO UPDATE SET state = excluded.state,"
                   " receipt = excluded.receipt, last_error = NULL, updated_at = excluded.updated_at",
                   (pk, destination, DELIVERED, text, now))
        db.execute("UPDATE records SET receipt = ? WHERE id = ?",
                   (json.dumps({**receipt, "destination": destination}, ensure_ascii=False), pk))
        self._held(db, row["record_id"], destination, row["version"], row["content_hash"], text, now)
        self._audit(db, "receipt", "hub", row["record_id"],
                    {"version": row["version"], "destination": destination, "receipt": receipt})
        self._issue_to(db, pk, destination, now)
        if row["state"] == SUPERSEDED:
            self._set_state(db, pk, DELIVERED, f"accepted by {destination} while a newer version was received", now)
            return DELIVERED
        return self._settle(db, pk, expected, now)

    def delivery_given_up(self, pk: int, destination: str, expected: str, error: str, *,
                          superseded: bool = False) -> str | None:
        """``destination``'s job ends without a receipt: a dead letter (``error`` says why), or,
        with ``superseded``, because it already holds a newer version. The record moves on from
        ``expected`` once no destination's job is left; returns its new state, if it moved."""
        now = now_iso()
        outcome = SUPERSEDED if superseded else DEAD_LETTER

        def work(db: Any) -> str | None:
            row = db.execute(f"SELECT record_id, version FROM records WHERE id = ?{self._for_update}", (pk,)).fetchone()
            if row is None:
                raise KeyError(pk)
            db.execute("DELETE FROM outbox WHERE record = ? AND destination = ?", (pk, destination))
            db.execute("INSERT INTO deliveries (record, destination, state, last_error, updated_at) VALUES (?, ?, ?, ?, ?)"
                       " ON CONFLICT (record, destination) DO UPDATE SET state = excluded.state,"
                       " last_error = excluded.last_error, updated_at = excluded.updated_at",
                       (pk, destination, outcome, error, now))
            # No history line yet: the record's own state has not changed (``deliveries`` shows
            # this destination's outcome; the record's history says it once all are settled).
            return self._settle(db, pk, expected, now)
        return self._write(work)

    def sent_version(self, record_id: str, destination: str | None = None) -> tuple[int, str | None] | None:
        """The highest version ``destination`` (any destination, if None) holds for ``record_id``
        and its content hash."""
        where, args = (" AND destination = ?", (destination,)) if destination is not None else ("", ())
        with self._lock:
            row = self._db.execute(f"SELECT version, content_hash FROM sent_to WHERE record_id = ?{where}"
                                   " ORDER BY version DESC LIMIT 1", (record_id, *args)).fetchone()
        return (row["version"], row["content_hash"]) if row else None

    def cancel(self, record_id: str, reason: str, actor: str) -> int:
        """An operator cancels a transcript: a new version with event ``CANCEL`` and the latest
        payload, which goes through the signing chain and reaches every destination with its
        ``reason``; older versions still on their way are superseded. A later change from the
        school is the next version. Returns the new row's id; ``KeyError`` if no such record,
        ``StateConflict`` if its latest version is already a cancel."""
        now = now_iso()

        def work(db: Any) -> int:
            self._lock_record_ids(db, [record_id])
            latest = db.execute("SELECT * FROM records WHERE record_id = ? ORDER BY version DESC LIMIT 1",
                                (record_id,)).fetchone()
            if latest is None:
                raise KeyError(record_id)
            if latest["event"] == "CANCEL":
                raise StateConflict(f"record {record_id} is already cancelled (version {latest['version']})")
            version = latest["version"] + 1
            placeholders = ",".join("?" * len(SETTLED))
            for old in db.execute(f"SELECT id FROM records WHERE record_id = ? AND state NOT IN ({placeholders})"
                                  f" ORDER BY id{self._for_update}", (record_id, *sorted(SETTLED))).fetchall():
                self._set_state(db, old["id"], SUPERSEDED, f"version {version} cancelled by {actor}", now)
            # The digest a vendor's own deletion of this payload would have: the same cancel
            # arriving from the vendor afterwards is not a new version.
            digest = hashlib.sha256(latest["payload"] + b"\x00deleted").hexdigest()
            pk = db.execute(
                "INSERT INTO records (record_id, version, event, adapter, source_id, source_updated,"
                " content_type, payload, payload_hash, state, received_at, updated_at, reason)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (record_id, version, "CANCEL", latest["adapter"], latest["source_id"], latest["source_updated"],
                 latest["content_type"], latest["payload"], digest, RECEIVED, now, now, reason)).fetchone()[0]
            db.execute("INSERT INTO history (record, at, state, detail) VALUES (?, ?, ?, ?)",
                       (pk, now, RECEIVED, f"version {version} CANCEL by {actor}: {reason}"))
            self._audit(db, "cancel", actor, record_id,
                        {"cancelled_version": latest["version"], "new_version": version, "reason": reason})
            return pk
        return self._write(work)

    def sent_versions(self, record_id: str) -> dict[str, tuple[int, str | None]]:
        """Per destination, the highest version it holds for ``record_id`` and its content hash."""
        with self._lock:
            rows = self._db.execute("SELECT destination, version, content_hash FROM sent_to WHERE record_id = ?",
                                    (record_id,)).fetchall()
        return {r["destination"]: (r["version"], r["content_hash"]) for r in rows}

    def deliveries_of(self, pk: int) -> list[dict[str, Any]]:
        """Each destination's outcome for record ``pk``: state, attempts, last error, receipt."""
        with self._lock:
            rows = self._db.execute("SELECT destination, state, attempts, last_error, receipt, updated_at"
                                    " FROM deliveries WHERE record = ? ORDER BY destination", (pk,)).fetchall()
        out = []
        for r in rows:
            item = dict(zip(r.keys(), r))
            item["receipt"] = json.loads(item["receipt"]) if item["receipt"] else None
            out.append(item)
        return out

    def destination_counts(self) -> dict[str, dict[str, int]]:
        """Per destination, record versions by delivery state (``queued``, ``delivered``,
        ``dead_letter``, ``superseded``, ``dropped``) and ``due`` (jobs in its outbox)."""
        out: dict[str, dict[str, int]] = {}
        with self._lock:
            for r in self._db.execute("SELECT destination, state, COUNT(*) AS n FROM deliveries"
                                      " GROUP BY destination, state").fetchall():
                out.setdefault(r[0], {})[r[1]] = r[2]
            for r in self._db.execute("SELECT destination, COUNT(*) FROM outbox GROUP BY destination").fetchall():
                out.setdefault(r[0], {})["due"] = r[1]
        return out

    def adopt_routeless(self, destination: str) -> int:
        """Hand the jobs, outcomes and held versions of the store's one destination from before
        routes (filed under ``migrations.ROUTELESS``) to ``destination``; returns the jobs moved."""
        blank = migrations.ROUTELESS

        def work(db: Any) -> int:
            n = db.execute("UPDATE outbox SET destination = ? WHERE destination = ?", (destination, blank)).rowcount
            db.execute("UPDATE deliveries SET destination = ? WHERE destination = ? AND NOT EXISTS (SELECT 1 FROM"
                       " deliveries d WHERE d.record = deliveries.record AND d.destination = ?)",
                       (destination, blank, destination))
            db.execute("UPDATE sent_to SET destination = ? WHERE destination = ? AND NOT EXISTS (SELECT 1 FROM"
                       " sent_to s WHERE s.record_id = sent_to.record_id AND s.destination = ?)",
                       (destination, blank, destination))
            db.execute("DELETE FROM deliveries WHERE destination = ?", (blank,))
            db.execute("DELETE FROM sent_to WHERE destination = ?", (blank,))
            return n
        return self._write(work)

    def delivered_content(self, record_id: str) -> tuple[int, dict[str, Any]] | None:
        """The highest delivered version of ``record_id`` whose central record is still kept
        (not pruned), and that record; ``None`` if there is none. A recall whose own content
        is invalid carries this content (the envelope is what recalls)."""
        with self._lock:
            row = self._db.execute(
                "SELECT version, normalized FROM records WHERE record_id = ? AND state = ? AND normalized IS NOT NULL"
                " ORDER BY version DESC LIMIT 1", (record_id, DELIVERED)).fetchone()
        return (row["version"], json.loads(row["normalized"])) if row else None

    def reissue(self, pk: int, expected: str, held_version: int, reason: str,
                destination: str = migrations.ROUTELESS) -> int:
        """``destination`` holds ``held_version`` ≥ ours: send the same payload again as the
        next version above it (to every route that takes it). The old row is superseded;
        returns the new row's id."""
        now = now_iso()

        def work(db: Any) -> int:
            row = db.execute(f"SELECT * FROM records WHERE id = ?{self._for_update}", (pk,)).fetchone()
            if row["state"] != expected:
                raise StateConflict(f"record {pk} is {row['state']}, not {expected}")
            self._lock_record_ids(db, [row["record_id"]])
            latest = db.execute("SELECT MAX(version) FROM records WHERE record_id = ?", (row["record_id"],)).fetchone()[0]
            version = max(held_version, latest) + 1
            self._set_state(db, pk, SUPERSEDED, reason, now)
            self._held(db, row["record_id"], destination, held_version, None, None, now)
            new_pk = db.execute(
                "INSERT INTO records (record_id, version, event, adapter, source_id, source_updated,"
                " content_type, payload, payload_hash, state, received_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (row["record_id"], version, "CANCEL" if row["event"] == "CANCEL" else "UPDATE", row["adapter"],
                 row["source_id"], row["source_updated"], row["content_type"], row["payload"],
                 row["payload_hash"], RECEIVED, now, now)).fetchone()[0]
            db.execute("INSERT INTO history (record, at, state, detail) VALUES (?, ?, ?, ?)",
                       (new_pk, now, RECEIVED, f"version {version}: {reason}"))
            self._audit(db, "reconcile", "hub", row["record_id"],
                        {"held_version": held_version, "old_version": row["version"], "new_version": version})
            return new_pk
        return self._write(work)

    # --- identity cache -------------------------------------------------------------------

    def identity_known(self, keys: Iterable[str], now: str) -> dict[str, str]:
        """The remembered outcome of each of ``keys`` whose entry has not expired by ``now``."""
        keys = list(keys)
        if not keys:
            return {}
        with self._lock:
            rows = self._db.execute(
                f"SELECT person_key, outcome FROM identity_cache WHERE person_key IN ({','.join('?' * len(keys))})"
                " AND expires_at > ?", (*keys, now)).fetchall()
        return {r[0]: r[1] for r in rows}

    def identity_remember(self, entries: Iterable[tuple[str, str]], now: str, expires_at: str) -> None:
        """Remember ``(key, outcome)`` pairs until ``expires_at``; entries expired by ``now`` go."""
        entries = list(entries)

        def work(db: Any) -> None:
            for key, outcome in entries:
                db.execute("INSERT INTO identity_cache (person_key, outcome, checked_at, expires_at)"
                           " VALUES (?, ?, ?, ?) ON CONFLICT (person_key) DO UPDATE SET outcome = excluded.outcome,"
                           " checked_at = excluded.checked_at, expires_at = excluded.expires_at",
                           (key, outcome, now, expires_at))
            db.execute("DELETE FROM identity_cache WHERE expires_at <= ?", (now,))
        self._write(work)

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
               deliver_from: str | None = None, destination: str | None = None,
               routes: Sequence[str] = ()) -> list[tuple[int, str]]:
        """Send quarantined, failed or dead-lettered records through the pipeline again.

        ``stage``: ``normalize`` (from the stored raw payload, so a fixed adapter re-maps it),
        ``render`` (from the normalised record) or ``deliver`` (the signed PDF as it is; needs
        ``deliver_from``, the state after the last signing step). ``deliver`` sends again only
        to the destinations that dead-lettered it (only ``destination``'s, if given), even while
        other destinations' jobs of the record are still under way; ``routes``: where a dead
        letter that names no destination goes. Records in any other state are skipped — a
        delivered version is never sent twice. Returns ``(id, new state)`` of the records that moved.
        """
        pks = sorted(set(pks))  # row locks in one order: two replays never deadlock
        now = now_iso()

        def work(db: Any) -> list[tuple[int, str]]:
            moved = []
            for pk in pks:
                row = db.execute("SELECT state, record_id, version, normalized, pdf, pruned_at, errors"
                                 f" FROM records WHERE id = ?{self._for_update}", (pk,)).fetchone()
                if row is None or row["pruned_at"]:
                    continue
                dead: list[str] = []
                if stage == "deliver":
                    dead = [r[0] for r in db.execute(
                        "SELECT destination FROM deliveries WHERE record = ? AND state = ? ORDER BY destination",
                        (pk, DEAD_LETTER)).fetchall() if destination is None or r[0] == destination]
                    if row["state"] == deliver_from and dead:
                        # Still on its way to other destinations: only the dead letters go again.
                        self._queue(db, pk, dead, now)
                        self._audit(db, "replay", actor, row["record_id"], {
                            "version": row["version"], "from": DEAD_LETTER, "stage": stage, "destinations": dead})
                        moved.append((pk, deliver_from))
                        continue
                    if not dead:
                        known = db.execute("SELECT 1 FROM deliveries WHERE record = ?", (pk,)).fetchone()
                        dead = [] if known else [d for d in (routes or [migrations.ROUTELESS])
                                                 if destination is None or d == destination]
                if row["state"] not in REPLAYABLE:
                    continue
                if stage == "normalize":
                    target, reset = RECEIVED, "normalized = NULL, pdf = NULL, xml = NULL, content_hash = NULL"
                elif stage == "render" and row["normalized"]:
                    target, reset = NORMALIZED, "pdf = NULL, xml = NULL"
                elif stage == "deliver" and dead and row["pdf"] and deliver_from and db.execute(
                        "SELECT 1 FROM history WHERE record = ? AND state = ?", (pk, deliver_from)).fetchone():
                    target, reset = deliver_from, "pdf = pdf"  # the fully signed PDF goes as it is
                else:
                    continue
                db.execute(f"UPDATE records SET {reset}, errors = NULL, attempts = 0 WHERE id = ?", (pk,))
                self._set_state(db, pk, target, f"replay ({stage}) by {actor}", now)
                detail: dict[str, Any] = {"version": row["version"], "from": row["state"], "stage": stage}
                if stage == "deliver":
                    self._queue(db, pk, dead, now)
                    detail["destinations"] = dead
                self._audit(db, "replay", actor, row["record_id"], detail)
                moved.append((pk, target))
            return moved
        return self._write(work)

    def spend_nonce(self, adapter: str, nonce: str, until: float) -> bool:
        """Record that a push to ``adapter`` carrying ``nonce`` was accepted: True the first time,
        False if it was already spent (a replay), by this process or any other on this store.
        Kept until ``until`` (Unix seconds), when the adapter's own freshness check refuses it;
        spent nonces past that are dropped here."""
        now = int(time.time())

        def work(db: Any) -> bool:
            db.execute("DELETE FROM push_nonces WHERE until < ?", (now,))
            return db.execute("INSERT INTO push_nonces (adapter, nonce, until) VALUES (?, ?, ?)"
                              " ON CONFLICT (adapter, nonce) DO NOTHING",
                              (adapter, nonce, max(int(until) + 1, now))).rowcount == 1
        return self._write(work)

    def set_paused(self, adapter: str, paused: bool, actor: str) -> None:
        def work(db: Any) -> None:
            db.execute("INSERT INTO adapters (name, paused, updated_at) VALUES (?, ?, ?) ON CONFLICT (name)"
                       " DO UPDATE SET paused = excluded.paused, updated_at = excluded.updated_at",
                       (adapter, int(paused), now_iso()))
            self._audit(db, "pause" if paused else "resume", actor, adapter, {})
        self._write(work)

    def paused(self) -> set[str]:
        with self._lock:
            return {r[0] for r in self._db.execute("SELECT name FROM adapters WHERE paused = 1")}

    def audit(self, kind: str, actor: str, subject: str | None = None, detail: dict[str, Any] | None = None) -> None:
        """Append an audit entry (admin actions)."""
        self._write(lambda db: self._audit(db, kind, actor, subject, detail or {}))

    def _audit(self, db: Any, kind: str, actor: str, subject: str | None, detail: dict[str, Any]) -> None:
        prev = db.execute("SELECT hash FROM audit ORDER BY id DESC LIMIT 1").fetchone()
        prev_hash = prev[0] if prev else "0" * 64
        at = now_iso()
        detail_text = json.dumps(detail, sort_keys=True, ensure_ascii=False, default=str)
        pk = db.execute("INSERT INTO audit (at, kind, actor, subject, detail, prev, hash)"
                        " VALUES (?, ?, ?, ?, ?, ?, '') RETURNING id",
                        (at, kind, actor, subject, detail_text, prev_hash)).fetchone()[0]
        entry = {"id": pk, "at": at, "kind": kind, "actor": actor, "subject": subject, "detail": detail_text}
        db.execute("UPDATE audit SET hash = ? WHERE id = ?", (audit_hash(prev_hash, entry), pk))

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
        def work(db: Any) -> int:
            n = db.execute(
                "UPDATE records SET payload = ?, pdf = NULL, xml = NULL, normalized = NULL, pruned_at = ?"
                " WHERE state IN (?, ?, ?) AND updated_at < ? AND pruned_at IS NULL",
                (b"", now_iso(), DELIVERED, SUPERSEDED, UNCHANGED, older_than)).rowcount
            if n:
                self._audit(db, "prune", "hub", None, {"records": n, "older_than": older_than})
            return n
        n = self._write(work)
        return {"records": n, "pages_reclaimed": self._reclaim(n)}

    def _reclaim(self, pruned: int) -> int:
        """Hand freed pages back to the file system; returns how many."""
        with self._lock:
            before = self._db.execute("PRAGMA freelist_count").fetchone()[0]
            # Each step of this pragma frees one page and execute() steps once: run it to the end.
            self._db.executescript("PRAGMA incremental_vacuum;")
            after = self._db.execute("PRAGMA freelist_count").fetchone()[0]
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return before - after

    def storage_bytes(self) -> int:
        """Bytes the store occupies on disk (the database file; WAL checkpointed first)."""
        with self._lock:
            if self.path == ":memory:":
                return self._db.execute("PRAGMA page_count").fetchone()[0] * \
                    self._db.execute("PRAGMA page_size").fetchone()[0]
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return Path(self.path).stat().st_size

    def describe(self) -> str:
        """One line for operators (``/readyz``): backend, location, schema version."""
        return f"sqlite {self.path}, schema {self.schema_version()}"

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

    # The class a normalised record names, in this backend's SQL (PostgreSQL overrides it).
    @staticmethod
    def _class_name_sql(table: str = "records") -> str:
        """SQL: the class name of a ``table`` row's normalised record (the dialect's JSON access)."""
        return f"json_extract({table}.normalized, '$.class_name')"

    def class_breakdown(self, school: str | None = None) -> list[dict[str, Any]]:
        """Record counts by school, class and state (of one school): the operators' console.
        A record never normalised has no class (``class_name`` None)."""
        where, args = ("WHERE school_code = ?", (school,)) if school is not None else ("", ())
        with self._lock:
            rows = self._db.execute(
                f"SELECT school_code, {self._class_name_sql()} AS class_name, state, COUNT(*) AS n FROM records"
                f" {where} GROUP BY school_code, class_name, state ORDER BY school_code, class_name, state", args)
            return [dict(r) for r in rows]

    def class_deliveries(self, school: str | None = None) -> list[dict[str, Any]]:
        """Record versions by school, class, destination and delivery state (of one school): where
        each class stands at each destination, for the operators' console."""
        where, args = ("WHERE r.school_code = ?", (school,)) if school is not None else ("", ())
        with self._lock:
            rows = self._db.execute(
                f"SELECT r.school_code AS school_code, {self._class_name_sql('r')} AS class_name, d.destination AS destination,"
                f" d.state AS state, COUNT(*) AS n FROM deliveries d JOIN records r ON r.id = d.record {where}"
                f" GROUP BY r.school_code, class_name, d.destination, d.state", args)
            return [dict(r) for r in rows]

    def schools(self) -> list[str]:
        """Every school code a record names."""
        with self._lock:
            rows = self._db.execute("SELECT DISTINCT school_code FROM records WHERE school_code IS NOT NULL"
                                    " ORDER BY school_code")
            return [r[0] for r in rows]

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
        return Row.from_db(r)

    def pending(self) -> list[tuple[int, str]]:
        """Every record a stage still has to work on (neither final nor blocked waiting for a
        school or an operator), oldest first, as ``(id, state)``."""
        settled = tuple(FINAL_STATES | BLOCKED_STATES)
        with self._lock:
            rows = self._db.execute(
                f"SELECT id, state FROM records WHERE state NOT IN ({','.join('?' * len(settled))}) ORDER BY id",
                settled,
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
            return [Row.from_db(r) for r in self._db.execute(f"SELECT * FROM records {where} ORDER BY id", args)]

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
