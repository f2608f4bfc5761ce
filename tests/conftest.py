"""Fixtures shared by the integration tests."""

import logging

import pytest
import structlog

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
