"""Sign with keys on a PKCS#11 token: the school seal's USB token, an HSM (SoftHSM2 in tests).

The token holds each key with its certificate under one label; ``keys`` says which label
signs for which identity (``SigningIdentity.key``: the school code for a seal, a personal id
for a person). The PIN comes from the environment through ``${ENV_VAR}``::

    signers:
      - name: seal-token-01001001
        type: pkcs11
        settings:
          library: /usr/lib/x86_64-linux-gnu/pkcs11/vendor-token.so
          token: HOCBA-SEAL
          pin: ${HOCBA_SEAL_PIN}
          keys:
            "01001001": seal-01001001

``open()`` logs in and finds every label, so a wrong PIN, a missing token or a missing label
is a start-up error naming the setting. The private key never leaves the token: the document
is prepared in a worker process and only the signed attributes' hash is passed to the token,
from one thread per token (a PKCS#11 session is not for concurrent use).
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from asn1crypto import x509 as asn1_x509
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from pydantic import Field, SecretStr
from pyhanko.sign import signers
from pyhanko.sign.pkcs11 import select_pkcs11_signing_params
from pyhanko_certvalidator.registry import SimpleCertificateStore

from hub import (
    DigestSignRequest,
    Health,
    PluginContext,
    PluginError,
    PluginSettings,
    Signer,
    SigningError,
    SigningIdentity,
    SignRequest,
    digest_info,
    refuse_outside_validity,
    reserve_bytes,
    sign_elsewhere,
)

_libraries: dict[str, Any] = {}


def load_library(path: str) -> Any:
    """The PKCS#11 module at ``path``, loaded once per process (a second C_Initialize fails)."""
    try:
        import pkcs11
    except ImportError:
        raise PluginError("the pkcs11 signer needs python-pkcs11: pip install 'hocba-hub[pkcs11]'") from None

    lib = _libraries.get(path)
    if lib is None:
        lib = _libraries[path] = pkcs11.lib(path)
    return lib


class Pkcs11Signer(Signer):
    """Keys on a PKCS#11 token or HSM, found by label; the PIN from the environment."""

    name = "pkcs11"

    class Settings(PluginSettings):
        library: Path = Field(description="The token's PKCS#11 module (.so), e.g. SoftHSM2's "
                                          "/usr/lib/softhsm/libsofthsm2.so")
        token: str = Field(min_length=1, description="Label of the token")
        pin: SecretStr = Field(description="User PIN of the token; use ${ENV_VAR}")
        keys: dict[str, str] = Field(
            min_length=1,
            description="Identity key (school code for a seal, personal id for a person) → label "
                        "of the private key and its certificate on the token")

    def __init__(self, settings: Settings, context: PluginContext):
        super().__init__(settings, context)
        self.settings: Pkcs11Signer.Settings = settings
        # Every call into the token happens on this one thread.
        self._thread = ThreadPoolExecutor(1, thread_name_prefix=f"pkcs11-{context.name}")
        self._session: Any = None
        self._keys: dict[str, _TokenKey] = {}

    def _where(self) -> str:
        return f"{self.name}: token {self.settings.token!r} ({self.settings.library})"

    async def open(self) -> None:
        """Log in and find every configured label (wrong PIN, missing label → ``PluginError``)."""
        await asyncio.get_running_loop().run_in_executor(self._thread, self._open)

    def _open(self) -> None:
        from pkcs11 import Attribute, ObjectClass
        from pkcs11 import exceptions as p11

        library = self.settings.library
        if not library.is_file():
            raise PluginError(f"{self.name}: PKCS#11 module {library} does not exist (settings.library)")
        try:
            token = load_library(str(library)).get_token(token_label=self.settings.token)
        except p11.NoSuchToken:
            raise PluginError(f"{self._where()} is not present; is it plugged in? (settings.token)") from None
        except (OSError, RuntimeError, p11.PKCS11Error) as exc:
            raise PluginError(f"{self.name}: cannot load PKCS#11 module {library}: {exc} (settings.library)") from None
        try:
            session = token.open(user_pin=self.settings.pin.get_secret_value())
        except p11.PinIncorrect:
            raise PluginError(f"{self._where()}: wrong PIN (settings.pin)") from None
        except p11.PinLocked:
            raise PluginError(f"{self._where()}: the PIN is locked after too many wrong tries") from None
        except (p11.PinLenRange, p11.ArgumentsBad):
            raise PluginError(f"{self._where()}: the PIN has the wrong length (settings.pin)") from None
        except p11.PKCS11Error as exc:
            raise PluginError(f"{self._where()}: cannot log in: {type(exc).__name__}") from None
        try:
            certificates = [asn1_x509.Certificate.load(c[Attribute.VALUE])
                            for c in session.get_objects({Attribute.CLASS: ObjectClass.CERTIFICATE})]
            # The chain: every CA certificate on the token goes into each signature.
            chain = [c for c in certificates if c.ca]
            keys = {}
            for identity_key, label in self.settings.keys.items():
                try:
                    handle = session.get_key(object_class=ObjectClass.PRIVATE_KEY, label=label)
                except p11.NoSuchKey:
                    raise PluginError(f"{self._where()}: no private key labelled {label!r} "
                                      f"(settings.keys[{identity_key!r}])") from None
                except p11.MultipleObjectsReturned:
                    raise PluginError(f"{self._where()}: several private keys are labelled {label!r}; "
                                      f"labels must be unique") from None
                found = [c for c in session.get_objects({Attribute.CLASS: ObjectClass.CERTIFICATE,
                                                         Attribute.LABEL: label})]
                if not found:
                    raise PluginError(f"{self._where()}: no certificate labelled {label!r} beside its key "
                                      f"(settings.keys[{identity_key!r}])")
                cert = asn1_x509.Certificate.load(found[0][Attribute.VALUE])
                keys[identity_key] = _TokenKey(handle, cert, chain, self._thread)
        except BaseException:
            session.close()
            raise
        self._session, self._keys = session, keys

    async def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await asyncio.get_running_loop().run_in_executor(self._thread, session.close)
        self._thread.shutdown(wait=False)

    async def check(self) -> Health:
        if self._session is None:
            return Health(False, f"{self._where()}: not logged in")
        return Health(True, f"{len(self._keys)} keys on token {self.settings.token!r}")

    def _key_for(self, identity: SigningIdentity, now: dt.datetime) -> "_TokenKey":
        key = self._keys.get(identity.key)
        who = f"{identity.role} {identity.name} (key {identity.key})"
        if key is None:
            raise SigningError(f"{self.name}: no key for {who} on token {self.settings.token!r}; "
                               f"add it to settings.keys")
        refuse_outside_validity(who, key.not_before, key.not_after, now, held="on the token")
        return key

    async def certificates(self, identity: SigningIdentity) -> tuple[bytes, ...]:
        """The certificate beside the identity's key on the token, then the token's CA certificates."""
        key = self._key_for(identity, dt.datetime.now(dt.timezone.utc))
        return (key.signing_cert.dump(), *(c.dump() for c in key.cert_registry))

    async def sign_digests(self, requests: Sequence[DigestSignRequest]) -> list[bytes]:
        """Check every identity first, then have the token sign each digest (one at a time)."""
        now = dt.datetime.now(dt.timezone.utc)
        keys = [self._key_for(r.identity, now) for r in requests]
        return [await key.sign_digest(r.digest, r.digest_algorithm) for r, key in zip(requests, keys)]

    async def sign(self, requests: Sequence[SignRequest]) -> list[bytes]:
        """Check every identity first, then sign each (the token signs one hash at a time)."""
        now = dt.datetime.now(dt.timezone.utc)
        keys = [self._key_for(r.identity, now) for r in requests]
        return list(await asyncio.gather(*(
            sign_elsewhere(r, key, executor=self.context.executor,
                           bytes_reserved=key.reserved_timestamped if r.level != "B-B" else key.reserved)
            for r, key in zip(requests, keys))))


class _TokenKey(signers.Signer):
    """A pyHanko signer whose raw signature is made by the token, on the token's thread.

    pyHanko's own ``PKCS11Signer`` signs on the event loop's default executor, where two
    documents could use one session at once.
    """

    def __init__(self, handle: Any, cert: asn1_x509.Certificate, chain: list[asn1_x509.Certificate],
                 thread: ThreadPoolExecutor):
        super().__init__(signing_cert=cert, cert_registry=SimpleCertificateStore.from_certs(chain))
        self._handle = handle
        self._thread = thread
        validity = cert["tbs_certificate"]["validity"]
        self.not_before: dt.datetime = validity["not_before"].native
        self.not_after: dt.datetime = validity["not_after"].native
        self.reserved = reserve_bytes(self)
        self.reserved_timestamped = reserve_bytes(self, timestamp=True)

    async def sign_digest(self, digest: bytes, digest_algorithm: str) -> bytes:
        """A raw signature over ``digest`` (``hub.documents.digests`` convention), made on the token:
        RSA with CKM_RSA_PKCS over the DigestInfo, ECDSA with CKM_ECDSA over the digest."""
        from pkcs11 import Mechanism

        is_ec = self.signing_cert.public_key.algorithm == "ec"

        def on_token() -> bytes:
            if not is_ec:
                return self._handle.sign(digest_info(digest, digest_algorithm), mechanism=Mechanism.RSA_PKCS)
            raw = self._handle.sign(digest, mechanism=Mechanism.ECDSA)
            half = len(raw) // 2  # PKCS#11 gives r‖s; the convention is DER
            return encode_dss_signature(int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big"))

        try:
            return await asyncio.get_running_loop().run_in_executor(self._thread, on_token)
        except Exception as exc:  # the token's errors (removed, session closed) are the record's reason
            raise SigningError(f"the token could not sign: {type(exc).__name__}: {exc}") from exc

    async def async_sign_raw(self, data: bytes, digest_algorithm: str, dry_run: bool = False) -> bytes:
        if dry_run:
            return bytes(self.signing_cert.public_key.bit_size // 8 + 16)
        spec = select_pkcs11_signing_params(self.get_signature_mechanism_for_digest(digest_algorithm),
                                            digest_algorithm, use_raw_mechanism=False, sign_kwargs={})

        def on_token() -> bytes:
            payload = spec.pre_sign_transform(data) if spec.pre_sign_transform else data
            signature = self._handle.sign(payload, **spec.sign_kwargs)
            return spec.post_sign_transform(signature) if spec.post_sign_transform else signature

        try:
            return await asyncio.get_running_loop().run_in_executor(self._thread, on_token)
        except Exception as exc:  # the token's errors (removed, session closed) are the record's reason
            raise SigningError(f"the token could not sign: {type(exc).__name__}: {exc}") from exc
