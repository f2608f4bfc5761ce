"""The durable store: every record's raw payload, state and products (see ``hub.store.base``).

``open_store(location)`` picks the backend: SQLite for a file path, PostgreSQL for a
``postgresql://`` URL.
"""

from hub.store.sqlite import (
    LeaseLost,
    Row,
    StateConflict,
    Store,
    audit_hash,
    content_hash,
    is_postgres_url,
    open_store,
    record_id_for,
)

__all__ = ["LeaseLost", "Row", "StateConflict", "Store", "audit_hash", "content_hash", "is_postgres_url",
           "open_store", "record_id_for"]
