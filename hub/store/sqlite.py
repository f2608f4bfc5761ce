"""The store on SQLite, the default: one file, one hub process.

What is SQLite's own beside the shared ``hub.store.base.Store``:

- **Durability.** WAL mode with ``synchronous=FULL``: a commit survives a crash of the process
  and of the machine. Incremental auto-vacuum, so ``prune`` hands pages back to the file system.
- **Transactions.** ``BEGIN IMMEDIATE`` takes the single writer's lock at the start, so a whole
  transaction is serialised: no row locks (``FOR UPDATE``), no version-numbering locks and no
  migration lock are needed.
- **Leases** are timed by this process's clock (the only process working from the file);
  ``release_all`` at start frees what a killed process held.
- **Audit chain.** ``AUTOINCREMENT`` numbers entries under the writer's lock.
- **Placeholders.** sqlite3 binds ``:name`` natively, so the shared statements run as written.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hub.store.base import Store, T
from hub.store.model import GENESIS, audit_entry, audit_hash, of_destination


class SQLiteStore(Store):
    """The record store in a SQLite file (``:memory:`` for tests). Thread-safe; every public
    method is one transaction. ``shared`` is false: one hub process owns a SQLite file
    (several workers need PostgreSQL)."""
    shared = False
    # Locked, disk full, read-only: the record is fine and stays at its state for a later try.
    unavailable: tuple[type[Exception], ...] = (sqlite3.OperationalError,)
    dialect = "sqlite"
    # The single writer already serialises a whole transaction.
    _for_update = ""
    _skip_locked = ""

    def __init__(self, path: str | Path = ":memory:"):
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

    def _write(self, work: Callable[[Any], T]) -> T:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                result = work(self._db)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            return result

    def _serialise_migrations(self, db: Any) -> None:
        """One file, one writer: ``BEGIN IMMEDIATE`` already keeps a second process out."""

    def _lock_record_ids(self, db: Any, record_ids: list[str]) -> None:
        """One writer: nobody else numbers versions while this transaction runs."""

    # --- leases: this process's clock -------------------------------------------------------

    def _lease_terms(self, lease_seconds: float) -> tuple[dict[str, str], dict[str, Any]]:
        now = dt.datetime.now(dt.timezone.utc)
        until = now + dt.timedelta(seconds=lease_seconds)
        return {"lease_until": ":lease_until"}, {"lease_until": until.isoformat(timespec="milliseconds"),
                                                 "lease_now": now.isoformat(timespec="milliseconds")}

    def _lease_free(self, table: str) -> str:
        # ``:lease_now`` is bound by ``_lease_terms``: a lease past it was its worker's, now nobody's.
        return f"({table}.lease_until IS NULL OR {table}.lease_until < :lease_now)"

    def next_due(self, destination: str | None = None) -> str | None:
        # Only jobs nobody holds: a lease running late here is this process's own worker, still at it.
        where, args = of_destination(destination)
        with self._lock:
            return self._db.execute(f"SELECT MIN(due_at) FROM outbox WHERE lease_until IS NULL{where}",
                                    args).fetchone()[0]

    # --- audit chain, JSON, space -----------------------------------------------------------

    def _audit(self, db: Any, kind: str, actor: str, subject: str | None, detail: dict[str, Any]) -> None:
        # AUTOINCREMENT numbers the entry (under the writer's lock); its hash covers that number.
        prev = db.execute("SELECT hash FROM audit ORDER BY id DESC LIMIT 1").fetchone()
        prev_hash = prev[0] if prev else GENESIS
        entry = audit_entry(None, kind, actor, subject, detail)
        entry["id"] = db.execute("INSERT INTO audit (at, kind, actor, subject, detail, prev, hash)"
                                 " VALUES (:at, :kind, :actor, :subject, :detail, :prev, '') RETURNING id",
                                 {**entry, "prev": prev_hash}).fetchone()[0]
        db.execute("UPDATE audit SET hash = :hash WHERE id = :id",
                   {"hash": audit_hash(prev_hash, entry), "id": entry["id"]})

    @staticmethod
    def _class_name_sql(table: str = "records") -> str:
        return f"json_extract({table}.normalized, '$.class_name')"

    def _reclaim(self, pruned: int) -> int:
        with self._lock:
            before = self._db.execute("PRAGMA freelist_count").fetchone()[0]
            # Each step of this pragma frees one page and execute() steps once: run it to the end.
            self._db.executescript("PRAGMA incremental_vacuum;")
            after = self._db.execute("PRAGMA freelist_count").fetchone()[0]
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return before - after

    def storage_bytes(self) -> int:
        """The database file's size (WAL checkpointed first)."""
        with self._lock:
            if self.path == ":memory:":
                return self._db.execute("PRAGMA page_count").fetchone()[0] * \
                    self._db.execute("PRAGMA page_size").fetchone()[0]
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return Path(self.path).stat().st_size

    def describe(self) -> str:
        return f"sqlite {self.path}, schema {self.schema_version()}"
