"""The store on PostgreSQL, for several hub workers sharing one database.

A sibling of ``hub.store.sqlite.SQLiteStore``: the same public behaviour and the shared SQL of
``hub.store.base.Store``; what is PostgreSQL's own is what several writers need:

- **Leases.** ``claim`` and ``claim_deliveries`` take work with ``SELECT … FOR UPDATE SKIP
  LOCKED``, so two workers never get the same record and neither waits for the other. A lease
  runs out at ``lease_until`` (the database's clock, one clock for every worker) or as soon as
  the worker's session ends: each store connection holds a session advisory lock
  ``(hub namespace, session number)`` and stamps its leases with that number, so when a worker
  is killed PostgreSQL drops its connection and its lock, and its records are claimable at
  once instead of after the lease time.
- **Transitions** lock the row they check (``FOR UPDATE``); versions of one ``record_id`` are
  numbered under a transaction advisory lock on that id, so a push and a pull of the same
  record never both create version n+1.
- **Audit chain.** Appends lock the single ``audit_head`` row (next id and last hash) until
  commit: two workers never fork the chain, and ids stay gapless (a sequence would leave a gap
  on rollback, which ``hub.store.audit.verify_chain`` rightly reads as a removed entry).
- **Deadlocks** between workers (PostgreSQL detects and aborts one side) are retried: the
  whole transaction runs again.
- **Space.** ``prune`` clears payloads and PDFs, then runs ``VACUUM (ANALYZE)`` on the records
  table: PostgreSQL marks the dead rows' space (mostly TOAST chunks of the PDFs) free for new
  rows of the same table, so the database stops growing; it does not give the space back to
  the file system (only ``VACUUM FULL`` does, under an exclusive lock that stops every worker:
  run it by hand in a maintenance window if the disk must shrink).
- **Connection loss**: the call that meets it raises; the next call reconnects (with a new
  session number), so ``/readyz`` recovers by itself when the database is back.
- **Placeholders.** The shared statements bind by name (``:name``); psycopg spells that
  ``%(name)s``. Each distinct statement is compiled once by SQLAlchemy's bind compiler for
  psycopg (``_pyformat``, cached by its text), which also doubles a literal ``%``, so no SQL is
  edited by hand or by pattern here. A statement without values (DDL, ``VACUUM``) runs as written.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from hub.store import migrations
from hub.store.base import Store, T
from hub.store.model import audit_entry, audit_hash, of_destination

try:
    import psycopg
    import sqlalchemy
    from psycopg import errors as pg_errors
    from sqlalchemy.dialects.postgresql import psycopg as sa_psycopg
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError("the PostgreSQL store needs psycopg 3 and SQLAlchemy: pip install 'hocba-hub[postgres]'") from exc

NS = migrations.LOCK_NAMESPACE
# What PostgreSQL aborts a whole transaction for, so that running it again is safe (SQLSTATE
# class 40; in psycopg these derive from OperationalError, not from TransactionRollback).
_ROLLED_BACK = (pg_errors.DeadlockDetected, pg_errors.SerializationFailure, pg_errors.TransactionRollback)
_DEADLOCK_RETRIES = 8


def _live_sessions() -> str:
    """SQL: the session numbers whose worker is connected (holds its advisory lock)."""
    return ("ARRAY(SELECT l.objid::bigint FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted"
            f" AND l.classid = {NS} AND l.objsubid = 2"
            " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()))")


def _void(table: str) -> str:
    """SQL: ``table``'s lease is free — never taken, run out, or its worker's session is gone."""
    return (f"({table}.lease_until IS NULL OR {table}.lease_until < now()"
            f" OR {table}.lease_session <> ALL ({_live_sessions()}))")


_DIALECT = sa_psycopg.dialect()


@functools.lru_cache(maxsize=2048)
def _pyformat(sql: str) -> str:
    """``sql`` with its ``:name`` binds as psycopg's ``%(name)s`` (and a literal ``%`` as ``%%``),
    compiled once per distinct statement. Statements differ only by the length of their
    ``IN (…)`` lists, so the cache holds a few hundred at most."""
    return str(sqlalchemy.text(sql).compile(dialect=_DIALECT))


def mask_url(url: str) -> str:
    """The URL without its password, for logs and ``/readyz``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    netloc = f"{parts.username}:***@{host}" if parts.username else f"***@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


class _Row:
    """A result row readable by index and by column name, like ``sqlite3.Row``."""
    __slots__ = ("_values", "_index")

    def __init__(self, values: Any, index: dict[str, int]):
        self._values = values
        self._index = index

    def __getitem__(self, key: int | str) -> Any:
        return self._values[self._index[key]] if isinstance(key, str) else self._values[key]

    def keys(self) -> list[str]:
        return list(self._index)

    def __len__(self) -> int:
        return len(self._values)

    def __iter__(self) -> Any:
        return iter(self._values)


def _row_factory(cursor: Any) -> Callable[[Any], _Row]:
    index = {column.name: i for i, column in enumerate(cursor.description or ())}
    return lambda values: _Row(values, index)


class _Connection:
    """What the shared store code calls ``db``: ``execute(sql, params)`` with named binds and a
    dict of values, reconnecting when the connection broke."""

    def __init__(self, store: "PostgresStore"):
        self._store = store

    def execute(self, sql: str, params: dict[str, Any] | None = None) -> Any:
        # Inside a transaction, only its own connection: a reconnect there would run the rest
        # of the transaction's statements outside it.
        conn = self._store.tx_conn or self._store.connection()
        if not params:
            return conn.execute(sql)
        return conn.execute(_pyformat(sql), params)


class PostgresStore(Store):
    """The record store on PostgreSQL (``store: postgresql://user@host/db`` in the config).

    Thread-safe; every public method is one transaction. ``shared`` is true: several hub
    processes, on one machine or many, work from the same database.
    """
    shared = True
    unavailable = (psycopg.OperationalError,)
    dialect = "postgresql"
    _for_update = " FOR UPDATE"
    _skip_locked = " FOR UPDATE SKIP LOCKED"

    @staticmethod
    def _class_name_sql(table: str = "records") -> str:
        return f"({table}.normalized::json ->> 'class_name')"

    def __init__(self, url: str, *, connect_timeout: float = 10.0):
        self.url = str(url)
        self.path = mask_url(url)
        self._connect_timeout = connect_timeout
        self._lock = threading.RLock()
        self._conn: Any = None
        self.tx_conn: Any = None
        self.session = 0
        self._db = _Connection(self)
        with self._lock:
            self._migrate()
            self._take_session()

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()  # ends the session: its advisory lock and leases go with it
                self._conn = None

    # --- connection and session -----------------------------------------------------------

    def connection(self) -> Any:
        conn = self._conn
        if conn is None or conn.closed or conn.broken:
            if conn is not None:
                conn.close()
            self._conn = psycopg.connect(self.url, autocommit=True, row_factory=_row_factory,
                                         connect_timeout=max(1, int(self._connect_timeout)),
                                         application_name="hocba-hub")
            if conn is not None:  # a reconnect: the old session (and its leases) is gone
                self._take_session()
        return self._conn

    def _take_session(self) -> None:
        """Hold an advisory lock for as long as this connection lives; leases carry its number."""
        while True:
            number = self._db.execute("SELECT nextval('worker_sessions')").fetchone()[0]
            if self._db.execute("SELECT pg_try_advisory_lock(:ns, :number)",
                                {"ns": NS, "number": number}).fetchone()[0]:
                self.session = number
                return

    def _write(self, work: Callable[[Any], T]) -> T:
        with self._lock:
            for attempt in range(_DEADLOCK_RETRIES):
                conn = self.connection()
                try:
                    with conn.transaction():
                        self.tx_conn = conn
                        return work(self._db)
                except _ROLLED_BACK:
                    # Deadlock or serialisation failure: PostgreSQL rolled this transaction back
                    # whole, so running it again is safe.
                    if attempt == _DEADLOCK_RETRIES - 1:
                        raise
                    time.sleep(0.005 * (attempt + 1))
                finally:
                    self.tx_conn = None
        raise AssertionError("unreachable")

    # --- dialect hooks -------------------------------------------------------------------

    def _serialise_migrations(self, db: Any) -> None:
        # Workers starting together: one migrates, the others wait and then find nothing to do.
        db.execute("SELECT pg_advisory_xact_lock(:ns, 0)", {"ns": NS})

    def _lock_record_ids(self, db: Any, record_ids: list[str]) -> None:
        for rid in record_ids:
            db.execute("SELECT pg_advisory_xact_lock(hashtextextended(:rid, 0))", {"rid": rid})

    def _audit(self, db: Any, kind: str, actor: str, subject: str | None, detail: dict[str, Any]) -> None:
        # The head row's lock numbers entries in commit order across workers, without gaps.
        head = db.execute("SELECT id, hash FROM audit_head WHERE one = 1 FOR UPDATE").fetchone()
        entry = audit_entry(head[0] + 1, kind, actor, subject, detail)
        chained = {**entry, "prev": head[1], "hash": audit_hash(head[1], entry)}
        db.execute("INSERT INTO audit (id, at, kind, actor, subject, detail, prev, hash)"
                   " VALUES (:id, :at, :kind, :actor, :subject, :detail, :prev, :hash)", chained)
        db.execute("UPDATE audit_head SET id = :id, hash = :hash WHERE one = 1", chained)

    def _reclaim(self, pruned: int) -> int:
        if not pruned:
            return 0
        with self._lock:
            before = self._relation_bytes()
            self._db.execute("VACUUM (ANALYZE) records")  # autocommit: VACUUM cannot run in a transaction
            after = self._relation_bytes()
        return max(0, before - after) // 8192

    def _relation_bytes(self) -> int:
        return self._db.execute("SELECT pg_total_relation_size('records')").fetchone()[0]

    # --- leases: the database's clock, tied to this session -------------------------------

    def _lease_terms(self, lease_seconds: float) -> tuple[dict[str, str], dict[str, Any]]:
        return ({"lease_until": "now() + make_interval(secs => :lease_seconds)", "lease_session": ":lease_session"},
                {"lease_seconds": float(lease_seconds), "lease_session": self.session})

    def _lease_free(self, table: str) -> str:
        return _void(table)

    def next_due(self, destination: str | None = None) -> str | None:
        # A lease whose worker is gone counts as free: another worker takes that job.
        where, args = of_destination(destination)
        with self._lock:
            return self._db.execute(f"SELECT MIN(due_at) FROM outbox WHERE {_void('outbox')}{where}",
                                    args).fetchone()[0]

    # --- operators --------------------------------------------------------------------------

    def storage_bytes(self) -> int:
        with self._lock:
            return self._db.execute(
                "SELECT COALESCE(SUM(pg_total_relation_size(c.oid)), 0)::bigint FROM pg_class c"
                " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = current_schema()"
                " AND c.relkind = 'r'").fetchone()[0]

    def workers(self) -> int:
        """Hub workers connected to this database now (sessions holding their advisory lock)."""
        with self._lock:
            return self._db.execute(f"SELECT cardinality({_live_sessions()})").fetchone()[0]

    def describe(self) -> str:
        return (f"postgresql {self.path}, schema {self.schema_version()}, "
                f"{self.workers()} worker(s) connected")
