"""A software token (SoftHSM2) with keys from the test PKI: for tests and trying the signer out.

``init_token`` creates a token in a directory of its own (``SOFTHSM2_CONF`` points there, so
nothing touches the machine's tokens); ``import_p12`` puts a ``.p12`` key file's private key and
certificate on it under one label, with the CA certificates beside them. A real token comes
from its CA with the key generated on it and never exported; that is the point of a token.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12

__all__ = ["LIBRARY_CANDIDATES", "find_library", "import_p12", "init_token"]

LIBRARY_CANDIDATES = (
    "/usr/lib/softhsm/libsofthsm2.so",                    # Debian, Ubuntu
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib64/pkcs11/libsofthsm2.so",                   # Fedora
    "/usr/local/lib/softhsm/libsofthsm2.so",              # built from source, Homebrew
)


def find_library() -> Path | None:
    """SoftHSM2's PKCS#11 module, if it is installed."""
    for candidate in LIBRARY_CANDIDATES:
        if Path(candidate).is_file():
            return Path(candidate)
    return None


def init_token(directory: Path, label: str, *, pin: str, so_pin: str) -> Path:
    """Initialise token ``label`` in ``directory``; return the config file for ``SOFTHSM2_CONF``.

    Set ``SOFTHSM2_CONF`` to the returned path before the PKCS#11 module is first loaded in a
    process: SoftHSM2 reads it once.
    """
    util = shutil.which("softhsm2-util")
    if util is None:
        raise RuntimeError("softhsm2-util is not installed (Debian package softhsm2)")
    directory = Path(directory)
    tokens = directory / "tokens"
    tokens.mkdir(parents=True, exist_ok=True)
    conf = directory / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n"
                    "slots.removable = false\n")
    env = {**os.environ, "SOFTHSM2_CONF": str(conf)}
    done = subprocess.run([util, "--init-token", "--free", "--label", label, "--pin", pin, "--so-pin", so_pin],
                          env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"softhsm2-util --init-token failed: {done.stderr.strip() or done.stdout.strip()}")
    return conf


def import_p12(library: Path | str, token_label: str, pin: str, label: str, p12: Path, password: str) -> None:
    """Put the key and certificate of ``p12`` on the token under ``label`` (CA certificates too)."""
    from pkcs11 import Attribute, CertificateType, ObjectClass
    from pkcs11.util.rsa import decode_rsa_private_key

    from signers.pkcs11.signer import load_library

    key, cert, chain = pkcs12.load_key_and_certificates(Path(p12).read_bytes(), password.encode())
    if key is None or cert is None:
        raise ValueError(f"{p12} holds no key with its certificate")
    key_id = label.encode()
    token = load_library(str(library)).get_token(token_label=token_label)
    with token.open(rw=True, user_pin=pin) as session:
        attrs = decode_rsa_private_key(key.private_bytes(serialization.Encoding.DER,
                                                         serialization.PrivateFormat.TraditionalOpenSSL,
                                                         serialization.NoEncryption()))
        attrs.update({Attribute.LABEL: label, Attribute.ID: key_id, Attribute.TOKEN: True,
                      Attribute.PRIVATE: True, Attribute.SENSITIVE: True, Attribute.SIGN: True,
                      Attribute.EXTRACTABLE: False})
        session.create_object(attrs)
        for certificate, cert_label in ((cert, label), *((c, _ca_label(c)) for c in chain)):
            existing = list(session.get_objects({Attribute.CLASS: ObjectClass.CERTIFICATE,
                                                 Attribute.LABEL: cert_label}))
            if existing:
                continue  # a CA certificate shared by several keys goes on the token once
            session.create_object({
                Attribute.CLASS: ObjectClass.CERTIFICATE,
                Attribute.CERTIFICATE_TYPE: CertificateType.X_509,
                Attribute.TOKEN: True,
                Attribute.LABEL: cert_label,
                Attribute.ID: key_id if cert_label == label else cert_label.encode(),
                Attribute.SUBJECT: certificate.subject.public_bytes(),
                Attribute.VALUE: certificate.public_bytes(serialization.Encoding.DER),
            })


def _ca_label(cert: x509.Certificate) -> str:
    return f"ca-{cert.serial_number:x}"
