"""Fixtures shared by the integration tests."""

import pytest

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
