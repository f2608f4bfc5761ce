"""A PostgreSQL server for tests: found once, each test on a database of its own.

``HOCBA_HUB_TEST_POSTGRES`` names the server (``postgresql://postgres@127.0.0.1:5432/postgres``,
as ``.ci/run`` sets it); a test that needs it fails when it is set and unreachable, so CI never
passes by skipping. Unset, the same default address is tried and the tests skip, saying why,
when nothing answers there.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from urllib.parse import urlsplit, urlunsplit

import pytest

ENV = "HOCBA_HUB_TEST_POSTGRES"
DEFAULT = "postgresql://postgres@127.0.0.1:5432/postgres"


@lru_cache(maxsize=1)
def _probe() -> tuple[str | None, str]:
    url = os.environ.get(ENV) or DEFAULT
    try:
        import psycopg
    except ImportError:
        return None, "psycopg is not installed (pip install -e '.[test]')"
    try:
        with psycopg.connect(url, connect_timeout=3, autocommit=True) as conn:
            conn.execute("SELECT 1")
    except Exception as exc:
        return None, f"no PostgreSQL server at {url} ({type(exc).__name__}: {str(exc).strip()[:120]})"
    return url, ""


def server_url() -> str:
    """The server's URL; skips (or fails, when ``HOCBA_HUB_TEST_POSTGRES`` is set) without one."""
    url, reason = _probe()
    if url is None:
        if os.environ.get(ENV):
            pytest.fail(f"{ENV} is set but unusable: {reason}")
        pytest.skip(f"PostgreSQL tests skipped: {reason}; set {ENV} to a server")
    return url


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


@contextmanager
def scratch_database(prefix: str = "hocba_test") -> Iterator[str]:
    """A new, empty database for one test (dropped afterwards, even with clients connected)."""
    import psycopg

    server = server_url()
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield with_database(server, name)
    finally:
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
