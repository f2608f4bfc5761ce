"""The durable store: every record's raw payload, state and products — what a store must do.

The raw payload is committed before anything else happens to a record; every state change is
one transaction that checks the state it leaves (so two workers cannot both advance a record)
and appends to the record's history. A restarted hub asks ``pending()`` for every record not
in a final state and carries on from there.

``Store`` here holds the behaviour and the SQL both databases share; two siblings supply what
differs (``tests/test_store_contract.py`` runs the same cases on both):

- ``hub.store.sqlite.SQLiteStore``: SQLite, the default. One file in WAL mode with
  ``synchronous=FULL``: a commit survives a crash of the process and of the machine. One hub
  process owns the file.
- ``hub.store.postgres.PostgresStore``: PostgreSQL, for several hub workers on one database
  (``store: postgresql://…``). Work is leased with ``SELECT … FOR UPDATE SKIP LOCKED``.

``Store(location)`` (and ``open_store``) opens the sibling ``location`` names: a
``postgresql://`` URL opens PostgreSQL, anything else a SQLite file (``:memory:`` too). The
schema of both comes from ``hub.store.migrations``, the audit chain's rules from
``hub.store.model`` and ``hub.store.audit``.

**Placeholders.** Every statement here binds its values by name (``:name``, with a dict of
values). SQLite runs that spelling natively; the PostgreSQL sibling hands each distinct
statement once to SQLAlchemy's bind compiler, which turns ``:name`` into psycopg's
``%(name)s`` and doubles a literal ``%``. So each statement is written once, in plain SQL, and
neither the base nor a sibling edits SQL text: a ``?`` or ``%`` inside a literal stays what it
is. (SQLAlchemy's one rule: ``:word`` after a space or a bracket is a bind even inside quotes,
so a literal holding such text is passed as a value instead.) Where the dialects really differ (leases, row locks, the audit chain's numbering, JSON
access, space), the base asks its sibling through the hooks below, each sibling writing its own
SQL.

All calls go through one connection guarded by a lock; the pipeline calls the store from a
dedicated thread so the event loop never waits on the disk.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
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
from hub.store.model import (
    GENESIS,
    LeaseLost,
    Row,
    StateConflict,
    audit_entry,
    audit_hash,
    bind_list,
    content_hash,
    is_future,
    is_postgres_url,
    now_iso,
    of_destination,
    older,
    payload_digest,
    record_id_for,
)
from hub.store.packages import PackageLedger

__all__ = ["GENESIS", "QUEUED", "LeaseLost", "Row", "StateConflict", "Store", "audit_entry", "audit_hash",
           "bind_list", "content_hash", "is_future", "is_postgres_url", "now_iso", "open_store", "record_id_for"]

# A destination's job waiting in the outbox (``deliveries.state``; the others are record states).
QUEUED = "queued"

T = TypeVar("T")

_SUMMARY_COLUMNS = ("id, record_id, version, event, adapter, source_id, state, school_code, school_year,"
                    " errors, receipt, attempts, received_at, updated_at, pruned_at")


def _cancelled_as_is(latest: Any, raw: RawRecord, digest: str) -> bool:
    """An operator cancelled the record (``Store.cancel``) and the vendor still serves the very
    payload that was cancelled: re-reading it is not a new version; a changed one is."""
    return (latest["event"] == "CANCEL" and latest["reason"] is not None and not raw.deleted
            and payload_digest(latest["payload"], False) == digest)


def _assign(terms: dict[str, str]) -> str:
    """``column = value, …`` of a lease's terms (``Store._lease_terms``)."""
    return ", ".join(f"{column} = {value}" for column, value in terms.items())


def open_store(location: str | Path) -> "Store":
    """The store at ``location``: a ``postgresql://`` URL, or a SQLite file path."""
    return Store(location)


class Store(IssuanceRegistry, PackageLedger, ABC):
    """The record store. Thread-safe; every public method is one transaction.

    ``Store(location)`` opens the sibling ``location`` names (``hub.store.sqlite.SQLiteStore``
    or ``hub.store.postgres.PostgresStore``); both are ``Store`` instances.

    What a sibling provides (the abstract methods and class attributes below):

    - ``dialect`` (``migrations`` picks the DDL by it), ``shared`` (several processes may work
      from one store), ``unavailable`` (what its driver raises when the database cannot be
      reached or written just now: the record stays at its state for a later try);
    - ``_db`` (an object whose ``execute(sql, params)`` runs one statement with named binds and
      returns a cursor of rows readable by index and by column name) and ``_lock`` (an
      ``RLock`` every call holds), ``_write`` (one transaction), ``close``;
    - ``_for_update`` (the clause locking the rows a transition checks until commit),
      ``_serialise_migrations``, ``_lock_record_ids`` (version numbering per record id);
    - leases: ``_lease_terms`` (the columns a lease sets), ``_lease_free`` (a lease nobody
      holds), ``_skip_locked`` (how a claim passes over rows another worker is claiming),
      ``next_due``;
    - ``_audit`` (append to the hash chain, numbered without gaps), ``_class_name_sql`` (JSON
      access), ``_reclaim`` and ``storage_bytes`` (space), ``describe``.
    """
    shared: bool
    unavailable: tuple[type[Exception], ...]
    dialect: str
    # How far ahead of this clock a vendor's update time is still trusted (``clock_skew_seconds``).
    clock_skew_seconds = 300.0
    _for_update: str
    _skip_locked: str
    _db: Any
    _lock: Any

    def __new__(cls, location: str | Path = ":memory:", *args: Any, **kwargs: Any) -> "Store":
        # ``Store(config.store_path)`` is how callers open the configured store: a PostgreSQL URL
        # must open PostgreSQL, never a SQLite file named after the URL.
        if cls is Store:
            if is_postgres_url(location):
                from hub.store.postgres import PostgresStore as cls  # optional: psycopg, SQLAlchemy
            else:
                from hub.store.sqlite import SQLiteStore as cls
        return super().__new__(cls)

    # --- dialect hooks ----------------------------------------------------------------------

    @abstractmethod
    def close(self) -> None:
        """Close the connection (PostgreSQL: the session ends, and its leases with it)."""

    @abstractmethod
    def _write(self, work: Callable[[Any], T]) -> T:
        """Run ``work(db)`` in one write transaction; roll back if it raises."""

    @abstractmethod
    def _serialise_migrations(self, db: Any) -> None:
        """Keep workers starting together from migrating at once."""

    @abstractmethod
    def _lock_record_ids(self, db: Any, record_ids: list[str]) -> None:
        """Serialise version numbering per record_id against other workers (sorted: no deadlock)."""

    @abstractmethod
    def _lease_terms(self, lease_seconds: float) -> tuple[dict[str, str], dict[str, Any]]:
        """The columns a lease of ``lease_seconds`` sets beside its owner (column → SQL value),
        and the values those bind; they also bind what ``_lease_free`` needs. Asked inside the
        transaction: the values may name the connection's session, which a reconnect at its
        start replaces."""

    @abstractmethod
    def _lease_free(self, table: str) -> str:
        """SQL: ``table``'s row is held by nobody (never leased, or its lease is void)."""

    @abstractmethod
    def next_due(self, destination: str | None = None) -> str | None:
        """When the earliest job nobody holds (of ``destination``) is due, if any is."""

    @abstractmethod
    def _audit(self, db: Any, kind: str, actor: str, subject: str | None, detail: dict[str, Any]) -> None:
        """Append an entry to the hash chain in ``db``'s transaction (ids without gaps)."""

    @staticmethod
    @abstractmethod
    def _class_name_sql(table: str = "records") -> str:
        """SQL: the class name of a ``table`` row's normalised record (the dialect's JSON access)."""

    @abstractmethod
    def _reclaim(self, pruned: int) -> int:
        """Hand the space ``prune`` freed back; returns how many pages."""

    @abstractmethod
    def storage_bytes(self) -> int:
        """Bytes the store occupies."""

    @abstractmethod
    def describe(self) -> str:
        """One line for operators (``/readyz``): backend, location, schema version."""

    # --- schema -----------------------------------------------------------------------------

    def _migrate(self) -> None:
        def work(db: Any) -> None:
            self._serialise_migrations(db)
            db.execute(migrations.VERSION_TABLE)
            applied = {r[0] for r in db.execute("SELECT version FROM schema_version").fetchall()}
            for step in migrations.pending(applied):
                for statement in step.statements(self.dialect):
                    db.execute(statement)
                db.execute("INSERT INTO schema_version (version, name, applied_at) VALUES (:version, :name, :at)",
                           {"version": step.version, "name": step.name, "at": now_iso()})
        self._write(work)

    def schema_version(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()[0]

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

        def work(db: Any) -> list[int]:
            if lease_owner is not None:
                self._check_pull_lease(db, adapter, lease_owner)
            rids = [record_id_for(adapter, raw.source_id) for raw in page]
            self._lock_record_ids(db, sorted(set(rids)))
            new_ids: list[int] = []
            for raw, rid in zip(page, rids):
                digest = payload_digest(raw.payload, raw.deleted)
                latest = db.execute(
                    "SELECT id, version, payload, payload_hash, event, reason, source_updated FROM records"
                    " WHERE record_id = :rid ORDER BY version DESC LIMIT 1", {"rid": rid},
                ).fetchone()
                if latest is not None and (latest["payload_hash"] == digest
                                           or older(raw.updated_at, latest["source_updated"], horizon)
                                           or _cancelled_as_is(latest, raw, digest)):
                    continue
                if raw.deleted:
                    event = "CANCEL"
                else:
                    event = "UPDATE" if latest is not None else "NEW"
                version = latest["version"] + 1 if latest is not None else 1
                if latest is not None:
                    self._supersede_unsettled(db, rid, f"version {version} received", now)
                pk = self._insert_version(db, {
                    "record_id": rid, "version": version, "event": event, "adapter": adapter,
                    "source_id": storable_id(raw.source_id),
                    "source_updated": raw.updated_at.isoformat() if raw.updated_at else None,
                    "content_type": raw.content_type, "payload": raw.payload, "payload_hash": digest}, now)
                new_ids.append(pk)
                # An id no store keeps alike (NUL, other controls: RawRecord.source_id) is kept
                # as ``storable_id`` says, so its page still commits; the normalise stage
                # quarantines it (``source_id_problem``), and the history names what it held.
                problem = source_id_problem(raw.source_id)
                self._history(db, pk, RECEIVED, f"version {version} {event}"
                              + (f"; source_id: {problem}" if problem else ""), now)
            if save_cursor:
                db.execute(
                    "INSERT INTO cursors (adapter, cursor, updated_at) VALUES (:adapter, :cursor, :now)"
                    " ON CONFLICT (adapter) DO UPDATE SET cursor = excluded.cursor, updated_at = excluded.updated_at",
                    {"adapter": adapter, "cursor": cursor, "now": now},
                )
            return new_ids
        return self._write(work)

    def _supersede_unsettled(self, db: Any, record_id: str, detail: str, now: str) -> None:
        """Every older version of ``record_id`` still on its way is superseded (never sent stale)."""
        marks, settled = bind_list("settled", sorted(SETTLED))
        for old in db.execute(f"SELECT id FROM records WHERE record_id = :rid AND state NOT IN ({marks})"
                              f" ORDER BY id{self._for_update}", {"rid": record_id, **settled}).fetchall():
            self._set_state(db, old["id"], SUPERSEDED, detail, now)

    @staticmethod
    def _insert_version(db: Any, values: dict[str, Any], now: str) -> int:
        """A new version, ``received`` now: ``values`` names its columns; returns its id."""
        columns = {**values, "state": RECEIVED, "received_at": now, "updated_at": now}
        return db.execute(f"INSERT INTO records ({', '.join(columns)})"
                          f" VALUES ({', '.join(':' + c for c in columns)}) RETURNING id", columns).fetchone()[0]

    @staticmethod
    def _history(db: Any, pk: int, state: str, detail: str | None, now: str) -> None:
        db.execute("INSERT INTO history (record, at, state, detail) VALUES (:pk, :now, :state, :detail)",
                   {"pk": pk, "now": now, "state": state, "detail": detail})

    @staticmethod
    def _history_as_is(db: Any, pk: int, detail: str, now: str) -> None:
        """A history line at the record's present state (an attempt, a recall: no state change)."""
        db.execute("INSERT INTO history (record, at, state, detail) VALUES"
                   " (:pk, :now, (SELECT state FROM records WHERE id = :pk), :detail)",
                   {"pk": pk, "now": now, "detail": detail})

    def cursor(self, adapter: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT cursor FROM cursors WHERE adapter = :adapter",
                                   {"adapter": adapter}).fetchone()
        return row["cursor"] if row else None

    # --- pull leases: one worker at a time reads an adapter ----------------------------------

    def claim_pull(self, adapter: str, owner: str, lease_seconds: float) -> bool:
        """Lease pulling ``adapter`` (and moving its cursor) to ``owner``; false while another
        worker holds it. Holding it already renews it."""
        def work(db: Any) -> bool:
            terms, args = self._lease_terms(lease_seconds)
            return db.execute(
                f"INSERT INTO pull_leases (adapter, owner, {', '.join(terms)})"
                f" VALUES (:adapter, :owner, {', '.join(terms.values())}) ON CONFLICT (adapter) DO UPDATE SET"
                f" owner = excluded.owner, {', '.join(f'{c} = excluded.{c}' for c in terms)}"
                f" WHERE pull_leases.owner = excluded.owner OR {self._lease_free('pull_leases')} RETURNING adapter",
                {**args, "adapter": adapter, "owner": owner}).fetchone() is not None
        return self._write(work)

    def release_pull(self, adapter: str, owner: str) -> None:
        self._write(lambda db: db.execute("DELETE FROM pull_leases WHERE adapter = :adapter AND owner = :owner",
                                          {"adapter": adapter, "owner": owner}))

    def pull_owner(self, adapter: str) -> str | None:
        """Who holds ``adapter``'s pull lease (expired or not), if anyone."""
        with self._lock:
            row = self._db.execute("SELECT owner FROM pull_leases WHERE adapter = :adapter",
                                   {"adapter": adapter}).fetchone()
        return row[0] if row else None

    def _check_pull_lease(self, db: Any, adapter: str, owner: str) -> None:
        row = db.execute(f"SELECT owner FROM pull_leases WHERE adapter = :adapter{self._for_update}",
                         {"adapter": adapter}).fetchone()
        if row is None or row[0] != owner:
            raise LeaseLost(f"{adapter}: the pull lease is held by {row[0] if row else 'nobody'}, not {owner}")

    # --- state changes ----------------------------------------------------------------------

    def _set_state(self, db: Any, pk: int, state: str, detail: str | None, now: str) -> None:
        # A state change ends the worker's lease: the next stage claims the record afresh.
        db.execute("UPDATE records SET state = :state, updated_at = :now, lease_owner = NULL, lease_until = NULL"
                   " WHERE id = :pk", {"state": state, "now": now, "pk": pk})
        if state in FINAL_STATES:  # a record that is done (or superseded) has no delivery due
            db.execute("DELETE FROM outbox WHERE record = :pk", {"pk": pk})
            outcome = state if state in (DELIVERED, DEAD_LETTER, SUPERSEDED) else "dropped"
            db.execute("UPDATE deliveries SET state = :outcome, updated_at = :now WHERE record = :pk AND state = :queued",
                       {"outcome": outcome, "now": now, "pk": pk, "queued": QUEUED})
        self._history(db, pk, state, detail, now)

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
        values: dict[str, Any] = {}
        for name, value in fields.items():
            if name not in {"normalized", "pdf", "xml", "errors", "receipt", "school_code", "school_year",
                            "attempts", "content_hash", "verify_code"}:
                raise ValueError(f"unknown record field {name!r}")
            if name in {"normalized", "errors", "receipt"} and value is not None:
                value = json.dumps(value, ensure_ascii=False)
            values[name] = value
        destinations = None if due is False else [migrations.ROUTELESS] if due is True else list(due)

        def work(db: Any) -> None:
            row = db.execute(f"SELECT state FROM records WHERE id = :pk{self._for_update}", {"pk": pk}).fetchone()
            if row is None or row["state"] != expected:
                raise StateConflict(f"record {pk} is {row['state'] if row else 'missing'}, not {expected}")
            if values:
                # The column names are the checked field names above; the values are bound.
                db.execute(f"UPDATE records SET {', '.join(f'{c} = :{c}' for c in values)} WHERE id = :pk",
                           {**values, "pk": pk})
            self._set_state(db, pk, state, detail, now)
            if destinations is not None:
                self._queue(db, pk, destinations, now)
                self._settle(db, pk, state, now)  # nothing to send (no route, or all hold it): settled now
            if state == DELIVERED:
                r = db.execute("SELECT record_id, version, content_hash, receipt FROM records WHERE id = :pk",
                               {"pk": pk}).fetchone()
                self._held(db, r["record_id"], issued_to or migrations.ROUTELESS, r["version"], r["content_hash"],
                           r["receipt"], now)
                self._audit(db, "receipt", "hub", r["record_id"], {"version": r["version"], "receipt": fields.get("receipt")})
                if issued_to is not None:
                    self._issue_to(db, pk, issued_to, now)
        return work

    def _issue_to(self, db: Any, pk: int, destination: str, now: str) -> None:
        have = db.execute("SELECT verify_code, pdf IS NOT NULL AS p, xml IS NOT NULL AS x FROM records"
                          " WHERE id = :pk", {"pk": pk}).fetchone()
        for document, present in (("pdf", have["p"]), ("xml", have["x"])):
            if present and have["verify_code"]:
                self._issue(db, pk, document, actor="hub", recipient=destination, purpose="delivery",
                            audit_kind="issue", now=now)

    @staticmethod
    def _held(db: Any, record_id: str, destination: str, version: int, digest: str | None,
              receipt: str | None, now: str) -> None:
        """``destination`` holds ``version`` of ``record_id`` (the highest version wins)."""
        db.execute(
            "INSERT INTO sent_to (record_id, destination, version, content_hash, receipt, sent_at)"
            " VALUES (:rid, :destination, :version, :digest, :receipt, :now) ON CONFLICT (record_id, destination)"
            " DO UPDATE SET version = excluded.version, content_hash = excluded.content_hash,"
            " receipt = excluded.receipt, sent_at = excluded.sent_at WHERE excluded.version > sent_to.version",
            {"rid": record_id, "destination": destination, "version": version, "digest": digest,
             "receipt": receipt, "now": now})

    def note_attempt(self, pk: int, error: str) -> int:
        """Count a failed attempt without changing state; returns the attempt count."""
        def work(db: Any) -> int:
            self._count_attempt(db, pk, [error], f"retry: {error}")
            return db.execute("SELECT attempts FROM records WHERE id = :pk", {"pk": pk}).fetchone()[0]
        return self._write(work)

    def _count_attempt(self, db: Any, pk: int, errors: list[str], detail: str) -> None:
        """A failed attempt at record ``pk`` (its state unchanged): counted, its errors kept, in its history."""
        now = now_iso()
        db.execute("UPDATE records SET attempts = attempts + 1, errors = :errors, updated_at = :now WHERE id = :pk",
                   {"errors": json.dumps(errors, ensure_ascii=False), "now": now, "pk": pk})
        self._history_as_is(db, pk, detail, now)

    # --- leases ------------------------------------------------------------------------------

    def claim(self, states: Iterable[str], owner: str, lease_seconds: float, limit: int) -> list[int]:
        """Lease up to ``limit`` records in ``states`` that nobody holds (or whose lease ran
        out: its worker died) to ``owner``, oldest first. A state change ends the lease."""
        return sorted(r["id"] for r in self._write(self._claiming(states, owner, lease_seconds, limit, "id")))

    def claim_rows(self, states: Iterable[str], owner: str, lease_seconds: float, limit: int) -> list[Row]:
        """``claim``, returning the records as the lease left them: a stage reads each record
        it claims, and this saves it asking again."""
        rows = self._write(self._claiming(states, owner, lease_seconds, limit, "*"))
        return sorted((Row.from_db(r) for r in rows), key=lambda row: row.id)

    def _claiming(self, states: Iterable[str], owner: str, lease_seconds: float, limit: int,
                  returning: str) -> Callable[[Any], list[Any]]:
        marks, wanted = bind_list("state", list(states))

        def work(db: Any) -> list[Any]:
            terms, args = self._lease_terms(lease_seconds)
            return db.execute(
                f"UPDATE records SET lease_owner = :owner, {_assign(terms)} WHERE id IN (SELECT id FROM records"
                f" WHERE state IN ({marks}) AND {self._lease_free('records')}"
                f" ORDER BY id LIMIT :limit{self._skip_locked}) RETURNING {returning}",
                {**args, **wanted, "owner": owner, "limit": limit}).fetchall()
        return work

    def release(self, pks: Iterable[int], owner: str) -> None:
        """Give records back without changing their state (the worker could not finish)."""
        pks = list(pks)
        if not pks:
            return
        marks, ids = bind_list("pk", pks)
        self._write(lambda db: db.execute(
            f"UPDATE records SET lease_owner = NULL, lease_until = NULL WHERE lease_owner = :owner"
            f" AND id IN ({marks})", {**ids, "owner": owner}))

    def renew(self, owner: str, lease_seconds: float) -> None:
        """Extend every lease ``owner`` holds (a heartbeat while long work is under way)."""
        def work(db: Any) -> None:
            terms, args = self._lease_terms(lease_seconds)
            for table, column in (("records", "lease_owner"), ("outbox", "lease_owner"), ("pull_leases", "owner")):
                db.execute(f"UPDATE {table} SET {_assign(terms)} WHERE {column} = :owner", {**args, "owner": owner})
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
            job = {"pk": pk, "destination": dest, "now": now, "queued": QUEUED}
            had = db.execute("SELECT state FROM deliveries WHERE record = :pk AND destination = :destination",
                             job).fetchone()
            if had is not None and had["state"] == DELIVERED:
                continue  # a destination holding this version never gets it twice (a replay from render)
            db.execute("INSERT INTO outbox (record, destination, due_at, attempts) VALUES (:pk, :destination, :now, 0)"
                       " ON CONFLICT (record, destination) DO UPDATE SET due_at = excluded.due_at, attempts = 0,"
                       " lease_owner = NULL, lease_until = NULL", job)
            db.execute("INSERT INTO deliveries (record, destination, state, attempts, updated_at)"
                       " VALUES (:pk, :destination, :queued, 0, :now)"
                       " ON CONFLICT (record, destination) DO UPDATE SET state = excluded.state, attempts = 0,"
                       " last_error = NULL, updated_at = excluded.updated_at", job)

    def _settle(self, db: Any, pk: int, expected: str, now: str) -> str | None:
        """Once no destination's job is left, move the record from ``expected`` to its outcome:
        ``dead_letter`` if any destination gave up, else ``delivered`` if any holds it (or none was
        to: no route takes it), else ``superseded`` (each holds a newer version). Returns it."""
        row = db.execute("SELECT state FROM records WHERE id = :pk", {"pk": pk}).fetchone()
        if row["state"] != expected or db.execute("SELECT 1 FROM outbox WHERE record = :pk", {"pk": pk}).fetchone():
            return None
        outcomes = db.execute("SELECT destination, state, last_error FROM deliveries WHERE record = :pk"
                              " ORDER BY destination", {"pk": pk}).fetchall()
        dead = [o for o in outcomes if o["state"] == DEAD_LETTER]
        held = [o["destination"] for o in outcomes if o["state"] == DELIVERED]
        if dead:
            errors = [f"{o['destination'] or 'destination'}: {o['last_error']}" for o in dead]
            db.execute("UPDATE records SET errors = :errors WHERE id = :pk",
                       {"errors": json.dumps(errors, ensure_ascii=False), "pk": pk})
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
        # Due times are written by the workers' clocks (retry backoff), so they compare with one.
        where, of = of_destination(destination)
        due = now_iso()

        def work(db: Any) -> list[Any]:
            terms, args = self._lease_terms(lease_seconds)
            return db.execute(
                f"UPDATE outbox SET lease_owner = :owner, {_assign(terms)} WHERE (record, destination) IN"
                f" (SELECT record, destination FROM outbox WHERE due_at <= :due AND {self._lease_free('outbox')}{where}"
                f" ORDER BY due_at, record LIMIT :limit{self._skip_locked}) RETURNING record, destination, attempts,"
                " due_at", {**args, **of, "owner": owner, "due": due, "limit": limit}).fetchall()
        rows = self._write(work)
        return [(r[0], r[1], r[2]) for r in sorted(rows, key=lambda r: (r[3], r[0], r[1]))]

    def release_delivery(self, pk: int, owner: str, destination: str | None = None) -> None:
        """Give a delivery job back untouched (the worker stopped before an outcome)."""
        where, of = of_destination(destination)
        self._write(lambda db: db.execute(
            f"UPDATE outbox SET lease_owner = NULL, lease_until = NULL WHERE record = :pk AND lease_owner = :owner{where}",
            {**of, "pk": pk, "owner": owner}))

    def drop_delivery(self, pk: int, destination: str | None = None) -> None:
        """Remove a job whose record is no longer waiting for delivery."""
        where, of = of_destination(destination)
        self._write(lambda db: db.execute(f"DELETE FROM outbox WHERE record = :pk{where}", {**of, "pk": pk}))

    def outbox_size(self, destination: str | None = None) -> int:
        where, of = of_destination(destination)
        with self._lock:
            return self._db.execute(f"SELECT COUNT(*) FROM outbox WHERE TRUE{where}", of).fetchone()[0]

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
        job = {"pk": pk, "destination": destination, "count": int(count), "error": error}

        def work(db: Any) -> int:
            db.execute("UPDATE outbox SET attempts = attempts + :count, due_at = :due, last_error = :error,"
                       " lease_owner = NULL, lease_until = NULL WHERE record = :pk AND destination = :destination",
                       {**job, "due": due_at})
            db.execute("UPDATE deliveries SET attempts = attempts + :count, last_error = :error, updated_at = :now"
                       " WHERE record = :pk AND destination = :destination", {**job, "now": now_iso()})
            said = f"{destination}: {error}" if destination else error
            self._count_attempt(db, pk, [said], f"retry: {said}")
            row = db.execute("SELECT attempts FROM outbox WHERE record = :pk AND destination = :destination",
                             job).fetchone()
            return row[0] if row else 0
        return self._write(work)

    def make_due(self, now: str, destination: str | None = None) -> int:
        """Make every waiting delivery (to ``destination``) due now (it came back after an outage)."""
        where, of = of_destination(destination)
        return self._write(lambda db: db.execute(f"UPDATE outbox SET due_at = :now WHERE due_at > :now{where}",
                                                 {**of, "now": now}).rowcount)

    def _end_job(self, db: Any, pk: int, destination: str, columns: str, outcome: dict[str, Any],
                 now: str) -> Any:
        """Close ``destination``'s job for record ``pk``: out of the outbox, its outcome
        (``outcome``: ``state`` and the delivery columns it sets) in ``deliveries``. Returns the
        record's ``columns``, its row locked; ``KeyError`` if there is no such record."""
        row = db.execute(f"SELECT {columns} FROM records WHERE id = :pk{self._for_update}", {"pk": pk}).fetchone()
        if row is None:
            raise KeyError(pk)
        job = {**outcome, "pk": pk, "destination": destination, "now": now}
        db.execute("DELETE FROM outbox WHERE record = :pk AND destination = :destination", job)
        db.execute(f"INSERT INTO deliveries (record, destination, {', '.join(outcome)}, updated_at)"
                   f" VALUES (:pk, :destination, {', '.join(':' + c for c in outcome)}, :now)"
                   f" ON CONFLICT (record, destination) DO UPDATE SET"
                   f" {', '.join(f'{c} = excluded.{c}' for c in outcome)}, updated_at = excluded.updated_at", job)
        return row

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
        row = self._end_job(db, pk, destination, "record_id, version, state, content_hash",
                            {"state": DELIVERED, "receipt": text, "last_error": None}, now)
        db.execute("UPDATE records SET receipt = :receipt WHERE id = :pk",
                   {"receipt": json.dumps({**receipt, "destination": destination}, ensure_ascii=False), "pk": pk})
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
        outcome = {"state": SUPERSEDED if superseded else DEAD_LETTER, "last_error": error}

        def work(db: Any) -> str | None:
            self._end_job(db, pk, destination, "record_id, version", outcome, now)
            # No history line yet: the record's own state has not changed (``deliveries`` shows
            # this destination's outcome; the record's history says it once all are settled).
            return self._settle(db, pk, expected, now)
        return self._write(work)

    def sent_version(self, record_id: str, destination: str | None = None) -> tuple[int, str | None] | None:
        """The highest version ``destination`` (any destination, if None) holds for ``record_id``
        and its content hash."""
        where, of = of_destination(destination)
        with self._lock:
            row = self._db.execute(f"SELECT version, content_hash FROM sent_to WHERE record_id = :rid{where}"
                                   " ORDER BY version DESC LIMIT 1", {**of, "rid": record_id}).fetchone()
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
            latest = db.execute("SELECT * FROM records WHERE record_id = :rid ORDER BY version DESC LIMIT 1",
                                {"rid": record_id}).fetchone()
            if latest is None:
                raise KeyError(record_id)
            if latest["event"] == "CANCEL":
                raise StateConflict(f"record {record_id} is already cancelled (version {latest['version']})")
            version = latest["version"] + 1
            self._supersede_unsettled(db, record_id, f"version {version} cancelled by {actor}", now)
            pk = self._insert_version(db, {
                "record_id": record_id, "version": version, "event": "CANCEL", "adapter": latest["adapter"],
                "source_id": latest["source_id"], "source_updated": latest["source_updated"],
                "content_type": latest["content_type"], "payload": latest["payload"],
                # The digest a vendor's own deletion of this payload would have: the same cancel
                # arriving from the vendor afterwards is not a new version.
                "payload_hash": payload_digest(latest["payload"], True), "reason": reason}, now)
            self._history(db, pk, RECEIVED, f"version {version} CANCEL by {actor}: {reason}", now)
            self._audit(db, "cancel", actor, record_id,
                        {"cancelled_version": latest["version"], "new_version": version, "reason": reason})
            return pk
        return self._write(work)

    def sent_versions(self, record_id: str) -> dict[str, tuple[int, str | None]]:
        """Per destination, the highest version it holds for ``record_id`` and its content hash."""
        with self._lock:
            rows = self._db.execute("SELECT destination, version, content_hash FROM sent_to WHERE record_id = :rid",
                                    {"rid": record_id}).fetchall()
        return {r["destination"]: (r["version"], r["content_hash"]) for r in rows}

    def deliveries_of(self, pk: int) -> list[dict[str, Any]]:
        """Each destination's outcome for record ``pk``: state, attempts, last error, receipt."""
        with self._lock:
            rows = self._db.execute("SELECT destination, state, attempts, last_error, receipt, updated_at"
                                    " FROM deliveries WHERE record = :pk ORDER BY destination", {"pk": pk}).fetchall()
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
        names = {"to": destination, "blank": migrations.ROUTELESS}

        def work(db: Any) -> int:
            n = db.execute("UPDATE outbox SET destination = :to WHERE destination = :blank", names).rowcount
            db.execute("UPDATE deliveries SET destination = :to WHERE destination = :blank AND NOT EXISTS"
                       " (SELECT 1 FROM deliveries d WHERE d.record = deliveries.record AND d.destination = :to)",
                       names)
            db.execute("UPDATE sent_to SET destination = :to WHERE destination = :blank AND NOT EXISTS"
                       " (SELECT 1 FROM sent_to s WHERE s.record_id = sent_to.record_id AND s.destination = :to)",
                       names)
            db.execute("DELETE FROM deliveries WHERE destination = :blank", names)
            db.execute("DELETE FROM sent_to WHERE destination = :blank", names)
            return n
        return self._write(work)

    def delivered_content(self, record_id: str) -> tuple[int, dict[str, Any]] | None:
        """The highest delivered version of ``record_id`` whose central record is still kept
        (not pruned), and that record; ``None`` if there is none. A recall whose own content
        is invalid carries this content (the envelope is what recalls)."""
        with self._lock:
            row = self._db.execute(
                "SELECT version, normalized FROM records WHERE record_id = :rid AND state = :delivered"
                " AND normalized IS NOT NULL ORDER BY version DESC LIMIT 1",
                {"rid": record_id, "delivered": DELIVERED}).fetchone()
        return (row["version"], json.loads(row["normalized"])) if row else None

    def reissue(self, pk: int, expected: str, held_version: int, reason: str,
                destination: str = migrations.ROUTELESS) -> int:
        """``destination`` holds ``held_version`` ≥ ours: send the same payload again as the
        next version above it (to every route that takes it). The old row is superseded;
        returns the new row's id."""
        now = now_iso()

        def work(db: Any) -> int:
            row = db.execute(f"SELECT * FROM records WHERE id = :pk{self._for_update}", {"pk": pk}).fetchone()
            if row["state"] != expected:
                raise StateConflict(f"record {pk} is {row['state']}, not {expected}")
            self._lock_record_ids(db, [row["record_id"]])
            latest = db.execute("SELECT MAX(version) FROM records WHERE record_id = :rid",
                                {"rid": row["record_id"]}).fetchone()[0]
            version = max(held_version, latest) + 1
            self._set_state(db, pk, SUPERSEDED, reason, now)
            self._held(db, row["record_id"], destination, held_version, None, None, now)
            new_pk = self._insert_version(db, {
                "record_id": row["record_id"], "version": version,
                "event": "CANCEL" if row["event"] == "CANCEL" else "UPDATE",
                **{c: row[c] for c in ("adapter", "source_id", "source_updated", "content_type", "payload",
                                       "payload_hash")}}, now)
            self._history(db, new_pk, RECEIVED, f"version {version}: {reason}", now)
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
        marks, asked = bind_list("key", keys)
        with self._lock:
            rows = self._db.execute(
                f"SELECT person_key, outcome FROM identity_cache WHERE person_key IN ({marks})"
                " AND expires_at > :now", {**asked, "now": now}).fetchall()
        return {r[0]: r[1] for r in rows}

    def identity_remember(self, entries: Iterable[tuple[str, str]], now: str, expires_at: str) -> None:
        """Remember ``(key, outcome)`` pairs until ``expires_at``; entries expired by ``now`` go."""
        entries = list(entries)

        def work(db: Any) -> None:
            for key, outcome in entries:
                db.execute("INSERT INTO identity_cache (person_key, outcome, checked_at, expires_at)"
                           " VALUES (:key, :outcome, :now, :expires) ON CONFLICT (person_key) DO UPDATE SET"
                           " outcome = excluded.outcome, checked_at = excluded.checked_at,"
                           " expires_at = excluded.expires_at",
                           {"key": key, "outcome": outcome, "now": now, "expires": expires_at})
            db.execute("DELETE FROM identity_cache WHERE expires_at <= :now", {"now": now})
        self._write(work)

    # --- operators ---------------------------------------------------------------------------

    def select(self, *, ids: Iterable[int] = (), record_ids: Iterable[str] = (), adapter: str | None = None,
               school: str | None = None, state: str | None = None) -> list[int]:
        """Store ids matching every given criterion (ids and record_ids: any of them)."""
        clauses, args = [], {}
        ids, record_ids = list(ids), list(record_ids)
        if ids or record_ids:
            parts = []
            for column, values in (("id", ids), ("record_id", record_ids)):
                if values:
                    marks, bound = bind_list(column, values)
                    parts.append(f"{column} IN ({marks})")
                    args.update(bound)
            clauses.append("(" + " OR ".join(parts) + ")")
        args_for, filters = self._filters(("adapter", adapter), ("school_code", school), ("state", state))
        clauses += filters
        args.update(args_for)
        if not clauses:
            raise ValueError("select needs at least one criterion")
        with self._lock:
            return [r[0] for r in self._db.execute(
                f"SELECT id FROM records WHERE {' AND '.join(clauses)} ORDER BY id", args)]

    @staticmethod
    def _filters(*criteria: tuple[str, Any]) -> tuple[dict[str, Any], list[str]]:
        """``column = :column`` for each ``(column, value)`` whose value is given (not None)."""
        given = {column: value for column, value in criteria if value is not None}
        return given, [f"{column} = :{column}" for column in given]

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
                                 f" FROM records WHERE id = :pk{self._for_update}", {"pk": pk}).fetchone()
                if row is None or row["pruned_at"]:
                    continue
                dead: list[str] = []
                if stage == "deliver":
                    dead = [r[0] for r in db.execute(
                        "SELECT destination FROM deliveries WHERE record = :pk AND state = :dead ORDER BY destination",
                        {"pk": pk, "dead": DEAD_LETTER}).fetchall() if destination is None or r[0] == destination]
                    if row["state"] == deliver_from and dead:
                        # Still on its way to other destinations: only the dead letters go again.
                        self._queue(db, pk, dead, now)
                        self._audit(db, "replay", actor, row["record_id"], {
                            "version": row["version"], "from": DEAD_LETTER, "stage": stage, "destinations": dead})
                        moved.append((pk, deliver_from))
                        continue
                    if not dead:
                        known = db.execute("SELECT 1 FROM deliveries WHERE record = :pk", {"pk": pk}).fetchone()
                        dead = [] if known else [d for d in (routes or [migrations.ROUTELESS])
                                                 if destination is None or d == destination]
                if row["state"] not in REPLAYABLE:
                    continue
                if stage == "normalize":
                    target, reset = RECEIVED, "normalized = NULL, pdf = NULL, xml = NULL, content_hash = NULL"
                elif stage == "render" and row["normalized"]:
                    target, reset = NORMALIZED, "pdf = NULL, xml = NULL"
                elif stage == "deliver" and dead and row["pdf"] and deliver_from and db.execute(
                        "SELECT 1 FROM history WHERE record = :pk AND state = :state",
                        {"pk": pk, "state": deliver_from}).fetchone():
                    target, reset = deliver_from, "pdf = pdf"  # the fully signed PDF goes as it is
                else:
                    continue
                db.execute(f"UPDATE records SET {reset}, errors = NULL, attempts = 0 WHERE id = :pk", {"pk": pk})
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
            db.execute("DELETE FROM push_nonces WHERE until < :now", {"now": now})
            return db.execute("INSERT INTO push_nonces (adapter, nonce, until) VALUES (:adapter, :nonce, :until)"
                              " ON CONFLICT (adapter, nonce) DO NOTHING",
                              {"adapter": adapter, "nonce": nonce, "until": max(int(until) + 1, now)}).rowcount == 1
        return self._write(work)

    def set_paused(self, adapter: str, paused: bool, actor: str) -> None:
        def work(db: Any) -> None:
            db.execute("INSERT INTO adapters (name, paused, updated_at) VALUES (:name, :paused, :now)"
                       " ON CONFLICT (name) DO UPDATE SET paused = excluded.paused, updated_at = excluded.updated_at",
                       {"name": adapter, "paused": int(paused), "now": now_iso()})
            self._audit(db, "pause" if paused else "resume", actor, adapter, {})
        self._write(work)

    def paused(self) -> set[str]:
        with self._lock:
            return {r[0] for r in self._db.execute("SELECT name FROM adapters WHERE paused = 1")}

    def audit(self, kind: str, actor: str, subject: str | None = None, detail: dict[str, Any] | None = None) -> None:
        """Append an audit entry (admin actions)."""
        self._write(lambda db: self._audit(db, kind, actor, subject, detail or {}))

    def audit_entries(self) -> Iterator[dict[str, Any]]:
        """Every audit entry in order (a snapshot, streamed)."""
        with self._lock:
            rows = self._db.execute("SELECT * FROM audit ORDER BY id").fetchall()
        for r in rows:
            yield dict(zip(r.keys(), r))

    def prune(self, older_than: str) -> dict[str, int]:
        """Drop payloads and PDFs of records that reached the destination (or were superseded or
        unchanged) before ``older_than``; keep id, version, hashes and receipt. Records still on
        their way, quarantined, failed or dead-lettered are never pruned. Reclaims the space."""
        marks, done = bind_list("state", [DELIVERED, SUPERSEDED, UNCHANGED])

        def work(db: Any) -> int:
            n = db.execute(
                "UPDATE records SET payload = :empty, pdf = NULL, xml = NULL, normalized = NULL, pruned_at = :now"
                f" WHERE state IN ({marks}) AND updated_at < :older_than AND pruned_at IS NULL",
                {**done, "empty": b"", "now": now_iso(), "older_than": older_than}).rowcount
            if n:
                self._audit(db, "prune", "hub", None, {"records": n, "older_than": older_than})
            return n
        n = self._write(work)
        return {"records": n, "pages_reclaimed": self._reclaim(n)}

    # --- queries ----------------------------------------------------------------------------

    def search(self, *, state: str | None = None, adapter: str | None = None, school: str | None = None,
               year: str | None = None, since: str | None = None, until: str | None = None,
               limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
        """Record summaries (no payload or PDF), newest change first."""
        args, clauses = self._filters(("state", state), ("adapter", adapter), ("school_code", school),
                                      ("school_year", year))
        for name, op, value in (("since", ">=", since), ("until", "<", until)):
            if value is not None:
                clauses.append(f"updated_at {op} :{name}")
                args[name] = value
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_SUMMARY_COLUMNS} FROM records {where} ORDER BY updated_at DESC, id DESC"
                " LIMIT :limit OFFSET :offset", {**args, "limit": limit, "offset": offset}).fetchall()
        out = []
        for r in rows:
            item = dict(zip(r.keys(), r))
            item["errors"] = json.loads(item["errors"]) if item["errors"] else []
            item["receipt"] = json.loads(item["receipt"]) if item["receipt"] else None
            out.append(item)
        return out

    def class_breakdown(self, school: str | None = None) -> list[dict[str, Any]]:
        """Record counts by school, class and state (of one school): the operators' console.
        A record never normalised has no class (``class_name`` None)."""
        args, clauses = self._filters(("school_code", school))
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._lock:
            rows = self._db.execute(
                f"SELECT school_code, {self._class_name_sql()} AS class_name, state, COUNT(*) AS n FROM records"
                f" {where} GROUP BY school_code, class_name, state ORDER BY school_code, class_name, state", args)
            return [dict(zip(r.keys(), r)) for r in rows]

    def class_deliveries(self, school: str | None = None) -> list[dict[str, Any]]:
        """Record versions by school, class, destination and delivery state (of one school): where
        each class stands at each destination, for the operators' console."""
        where, args = ("WHERE r.school_code = :school", {"school": school}) if school is not None else ("", {})
        with self._lock:
            rows = self._db.execute(
                f"SELECT r.school_code AS school_code, {self._class_name_sql('r')} AS class_name, d.destination AS destination,"
                f" d.state AS state, COUNT(*) AS n FROM deliveries d JOIN records r ON r.id = d.record {where}"
                f" GROUP BY r.school_code, class_name, d.destination, d.state", args)
            return [dict(zip(r.keys(), r)) for r in rows]

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
            return [dict(zip(r.keys(), r)) for r in rows]

    def get(self, pk: int) -> Row:
        with self._lock:
            r = self._db.execute("SELECT * FROM records WHERE id = :pk", {"pk": pk}).fetchone()
        if r is None:
            raise KeyError(pk)
        return Row.from_db(r)

    def pending(self) -> list[tuple[int, str]]:
        """Every record a stage still has to work on (neither final nor blocked waiting for a
        school or an operator), oldest first, as ``(id, state)``."""
        marks, settled = bind_list("settled", sorted(FINAL_STATES | BLOCKED_STATES))
        with self._lock:
            rows = self._db.execute(f"SELECT id, state FROM records WHERE state NOT IN ({marks}) ORDER BY id",
                                    settled).fetchall()
        return [(r["id"], r["state"]) for r in rows]

    def rows(self, *, state: str | None = None, adapter: str | None = None) -> list[Row]:
        args, clauses = self._filters(("state", state or None), ("adapter", adapter or None))
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
            rows = self._db.execute("SELECT at, state, detail FROM history WHERE record = :pk ORDER BY id",
                                    {"pk": pk})
            return [dict(zip(r.keys(), r)) for r in rows]

    def ping(self) -> None:
        """Raise if the database cannot be read (for readiness checks)."""
        with self._lock:
            self._db.execute("SELECT 1 FROM records LIMIT 1").fetchall()
