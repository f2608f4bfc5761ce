"""Fixtures shared by the integration tests."""

import contextlib
import logging
import types
from collections.abc import Iterator

import pytest
import structlog

from hub import plugins
from hub.kit.pki import ensure_pki
from hub.kit.synthetic import signing_identities

PASSWORD = "test-key-password"
ROLES = ["homeroom_teacher", "principal", "school_seal"]


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    """A throwaway PKI with a key for every synthetic signer: (directory, root certificate)."""
    directory = tmp_path_factory.mktemp("pki")
    root = ensure_pki(directory, signing_identities(), PASSWORD)
    return directory, root


@pytest.fixture(autouse=True)
def _logging_as_it_was():
    """A test that configures logging in-process (the demo, the CLI) leaves it as it found it,
    so a later test capturing warnings still sees them."""
    config = structlog.get_config()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    structlog.configure(**config)
    root.handlers, root.level = handlers, level


@contextlib.contextmanager
def only_plugins(*names: str, **env: str) -> Iterator[None]:
    """Load only the entry points ``names`` while the block runs (with ``env`` set too): other
    plugins may be half-written in a parallel branch, and a test must not depend on them."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOCBA_HUB_LOAD_PLUGINS", ",".join(names))
        for key, value in env.items():
            mp.setenv(key, value)
        plugins.reload()
        try:
            yield
        finally:
            mp.undo()
            plugins.reload()


@contextlib.contextmanager
def counted_checks(plugin) -> Iterator[types.SimpleNamespace]:
    """Count ``plugin.check()`` calls while the block runs; the real check still answers."""
    check, counter = plugin.check, types.SimpleNamespace(calls=0)

    async def counted():
        counter.calls += 1
        return await check()

    plugin.check = counted
    try:
        yield counter
    finally:
        del plugin.check
