"""The durable store: every record's raw payload, state and products.

``hub.store.base.Store`` is what a store must do (the shared logic and SQL); its siblings
``hub.store.sqlite.SQLiteStore`` and ``hub.store.postgres.PostgresStore`` hold each dialect's
own. ``Store(location)`` and ``open_store(location)`` pick the sibling: SQLite for a file path,
PostgreSQL for a ``postgresql://`` URL.
"""

from hub.store.base import Store, open_store
from hub.store.model import (
    LeaseLost,
    Row,
    StateConflict,
    audit_hash,
    content_hash,
    is_postgres_url,
    record_id_for,
)

__all__ = ["LeaseLost", "Row", "StateConflict", "Store", "audit_hash", "content_hash", "is_postgres_url",
           "open_store", "record_id_for"]
