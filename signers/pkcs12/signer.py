"""Sign with PKCS#12 key files: one ``<key>.p12`` per identity in a directory.

``key`` is the identity's personal id (teachers, principals) or the school code (the school
seal). All files share one password, given in the YAML as ``${ENV_VAR}``::

    signers:
      - name: local-keys
        type: pkcs12
        settings:
          directory: /srv/hocba/keys
          password: ${HOCBA_P12_PASSWORD}
"""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives.serialization import pkcs12
from pydantic import Field, SecretStr

from hub import LocalKey, LocalKeySigner, PluginError, PluginSettings, SigningIdentity


class Pkcs12Signer(LocalKeySigner):
    """Local PKCS#12 files: for tests, demos and small setups (keys on the hub's disk)."""

    name = "pkcs12"

    class Settings(PluginSettings):
        directory: Path = Field(description="Directory with one <personal id or school code>.p12 per signer")
        password: SecretStr = Field(description="Password of the .p12 files; use ${ENV_VAR}")

    @classmethod
    def load_keys(cls, settings: Settings) -> dict[str, LocalKey]:
        """Read every ``*.p12`` in ``settings.directory``; the file name (without .p12) is the key."""
        return {key: _read(settings.directory / f"{key}.p12", settings) for key in cls.key_ids(settings)}

    @classmethod
    def key_ids(cls, settings: Settings) -> list[str]:
        """The ``*.p12`` file names (without .p12) in ``settings.directory``, none opened."""
        directory = settings.directory
        if not directory.is_dir():
            raise PluginError(f"pkcs12: key directory {directory} does not exist (settings.directory)")
        keys = sorted(path.stem for path in directory.glob("*.p12"))
        if not keys:
            raise PluginError(f"pkcs12: no .p12 key files in {directory} (settings.directory)")
        return keys

    @classmethod
    def load_key(cls, settings: Settings, key: str) -> LocalKey | None:
        """Read ``<key>.p12`` alone (a pool worker loads only the keys its jobs use)."""
        path = settings.directory / f"{key}.p12"
        return _read(path, settings) if path.is_file() else None

    @classmethod
    def key_version(cls, settings: Settings, key: str) -> tuple[int, int] | None:
        """The file's modification time and size: a replaced ``<key>.p12`` is read again (a
        ``stat``, not a decryption, before each signature)."""
        try:
            stat = (settings.directory / f"{key}.p12").stat()
        except OSError:
            return None
        return stat.st_mtime_ns, stat.st_size

    def missing_key_hint(self, identity: SigningIdentity) -> str:
        return f"expected {self.settings.directory / (identity.key + '.p12')}"


def _read(path: Path, settings: Pkcs12Signer.Settings) -> LocalKey:
    # Opening a .p12 costs ≈40 ms, most of it cryptography validating the RSA key (PBKDF2 is a
    # few ms): LocalKeySigner does it once per key and hub, and again only when the file changes.
    try:
        key, cert, chain = pkcs12.load_key_and_certificates(
            path.read_bytes(), settings.password.get_secret_value().encode())
    except ValueError:
        raise PluginError(
            f"pkcs12: cannot open {path}: wrong password or damaged file (settings.password)"
        ) from None
    if key is None or cert is None:
        raise PluginError(f"pkcs12: {path} holds no private key with its certificate")
    return LocalKey(key, cert, tuple(chain))
