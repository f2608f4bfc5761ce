"""Keys held on this machine: ``LocalKeySigner``, the base for signers whose keys are files.

A B-B signature is made whole in a worker process; keys are loaded once per process and
shipped to the workers, never re-parsed per signature.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import importlib
import pickle
import threading
from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from pyhanko.sign import signers
from pyhanko_certvalidator.registry import SimpleCertificateStore
from pyhanko_certvalidator.util import get_pyca_cryptography_hash, process_pss_params

from hub.contracts import (
    DigestSignRequest,
    Health,
    PluginContext,
    PluginError,
    PluginSettings,
    Signer,
    SigningIdentity,
    SignRequest,
)
from hub.documents.digests import sign_digest
from hub.documents.pades import (
    LEVELS,
    reserve_bytes,
    sign_elsewhere,
    sign_pades_blocking,
    stamp_font_bytes,
)
from hub.documents.signing import SigningError


class LocalKey(NamedTuple):
    """A private key, its certificate, and the certificates up to (and maybe including) a root."""
    private_key: Any                 # a ``cryptography`` private key object
    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...] = ()


class _KeptKeySigner(signers.Signer):
    """A pyHanko signer that holds the loaded key object.

    ``SimpleSigner`` re-parses its key from DER on every signature, and parsing an RSA key
    validates it (≈35 ms for RSA-2048); this one parses it once.
    """

    def __init__(self, key: LocalKey):
        def der(cert: x509.Certificate) -> asn1_x509.Certificate:
            return asn1_x509.Certificate.load(cert.public_bytes(serialization.Encoding.DER))

        # The registry holds the other certificates only: pyHanko embeds the signing
        # certificate itself, and would embed it twice.
        super().__init__(signing_cert=der(key.certificate),
                         cert_registry=SimpleCertificateStore.from_certs([der(c) for c in key.chain]))
        self._key = key.private_key

    async def async_sign_raw(self, data: bytes, digest_algorithm: str, dry_run: bool = False) -> bytes:
        return self.sign_raw(data, digest_algorithm)

    def sign_raw(self, data: bytes, digest_algorithm: str) -> bytes:
        mechanism = self.get_signature_mechanism_for_digest(digest_algorithm)
        algo = mechanism["algorithm"].native
        key = self._key
        if isinstance(key, rsa.RSAPrivateKey):
            if algo == "rsassa_pss":
                pss, md = process_pss_params(mechanism["parameters"])
                return key.sign(data, pss, md)
            return key.sign(data, padding.PKCS1v15(), get_pyca_cryptography_hash(digest_algorithm))
        if isinstance(key, ec.EllipticCurvePrivateKey):
            return key.sign(data, ec.ECDSA(get_pyca_cryptography_hash(digest_algorithm)))
        if isinstance(key, (ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)):
            return key.sign(data)
        raise SigningError(f"unsupported key type {type(key).__name__} for {algo}")


@dataclass(frozen=True)
class _Ready:
    """One identity's key, ready to sign: the pyHanko signer and its container size."""
    key: LocalKey
    signer: _KeptKeySigner
    bytes_reserved: int
    bytes_reserved_timestamped: int

    @classmethod
    def of(cls, key: LocalKey | tuple) -> "_Ready":
        key = LocalKey(*key)
        signer = _KeptKeySigner(key)
        return cls(key, signer, reserve_bytes(signer), reserve_bytes(signer, timestamp=True))


@dataclass(frozen=True)
class _KeyMaterial:
    """A key the hub process has loaded and validated, as DER, for a pool worker to sign with.

    It goes with the job over the process pool's local pipe to the hub's own child process
    only: never written to disk, never sent off this machine. The worker then parses it
    without decrypting a .p12 and without cryptography's RSA key validation (≈33 ms per key
    and process): the hub process validated this very key when it loaded it.
    """
    fingerprint: str                 # the signer's class and settings (see ``_KeySource``)
    key_id: str
    serial: int                      # the certificate's: a renewed certificate is a new entry
    private_key: bytes               # unencrypted PKCS#8 DER
    certificates: tuple[bytes, ...]  # DER: the signing certificate, then its chain

    @classmethod
    def of(cls, fingerprint: str, key_id: str, ready: _Ready) -> "_KeyMaterial":
        key = ready.key
        der = serialization.Encoding.DER
        return cls(
            fingerprint, key_id, key.certificate.serial_number,
            key.private_key.private_bytes(der, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()),
            tuple(c.public_bytes(der) for c in (key.certificate, *key.chain)),
        )

    def ready(self) -> _Ready:
        key = serialization.load_der_private_key(self.private_key, None,
                                                 unsafe_skip_rsa_key_validation=True)
        cert, *chain = (x509.load_der_x509_certificate(c) for c in self.certificates)
        return _Ready.of(LocalKey(key, cert, tuple(chain)))


@dataclass(frozen=True)
class _KeySource:
    """What a worker process needs to load a signer's keys itself: picklable, no key material."""
    signer_class: str                # "package.module:Class"
    settings: dict[str, Any]
    fingerprint: str                 # cache key: same class + same settings → same keys

    def load(self, key_id: str | None = None) -> dict[str, _Ready]:
        """Every key (``key_id=None``) or just ``key_id`` (empty if there is none)."""
        module, _, name = self.signer_class.partition(":")
        cls: type[LocalKeySigner] = getattr(importlib.import_module(module), name)
        settings = cls.Settings.model_validate(self.settings)
        try:
            if key_id is None:
                loaded = cls.load_keys(settings)
            else:
                one = cls.load_key(settings, key_id)
                loaded = {} if one is None else {key_id: one}
        except PluginError:
            raise
        except Exception as exc:  # a subclass bug or an unreadable file: still an operator's message
            raise PluginError(f"{cls.name}: cannot load keys: {exc}") from exc
        return {k: _Ready.of(v) for k, v in loaded.items()}

    def load_first(self) -> dict[str, _Ready]:
        """One key, enough to prove the configuration (directory, password) is right; every key
        when the signer class cannot list its keys (``LocalKeySigner.key_ids`` returns None)."""
        module, _, name = self.signer_class.partition(":")
        cls: type[LocalKeySigner] = getattr(importlib.import_module(module), name)
        settings = cls.Settings.model_validate(self.settings)
        try:
            ids = cls.key_ids(settings)
        except PluginError:
            raise
        except Exception as exc:  # a subclass bug or an unreadable directory
            raise PluginError(f"{cls.name}: cannot list keys: {exc}") from exc
        if ids is None:
            return self.load()
        for key_id in ids:
            loaded = self.load(key_id)
            if loaded:
                return loaded
        return {}


# The hub process keeps the keys it has loaded here, per signer class and settings: one at
# open(), the others on first use. Pool workers never read key files: they get the key with
# each job (``_KeyMaterial``) and keep what they built in ``_worker_keys``.
_keys: dict[str, dict[str, _Ready]] = {}
_keys_lock = threading.Lock()
_worker_keys: dict[tuple[str, str], tuple[int, _Ready]] = {}


def _load_first(source: _KeySource) -> dict[str, _Ready]:
    with _keys_lock:
        keys = _keys.setdefault(source.fingerprint, {})
        if not keys:
            keys.update(source.load_first())
        return keys


def _valid_now(ready: _Ready, now: dt.datetime) -> bool:
    cert = ready.key.certificate
    return cert.not_valid_before_utc <= now <= cert.not_valid_after_utc


def _ready_for(source: _KeySource, key_id: str, now: dt.datetime) -> _Ready | None:
    """The cached key, re-read from its source when missing (issued since) or not valid now
    (renewed since): a signer never needs a restart to pick up a new certificate."""
    with _keys_lock:
        keys = _keys.setdefault(source.fingerprint, {})
        ready = keys.get(key_id)
        if ready is None or not _valid_now(ready, now):
            fresh = source.load(key_id).get(key_id)
            if fresh is not None:
                keys[key_id] = ready = fresh
        return ready


def _refuse_if_invalid(ready: _Ready, identity: SigningIdentity, now: dt.datetime) -> None:
    cert = ready.key.certificate
    who = f"{identity.role} {identity.name} (key {identity.key})"
    if now < cert.not_valid_before_utc:
        raise SigningError(f"certificate of {who} is not valid until "
                           f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC; not signing")
    if now > cert.not_valid_after_utc:
        raise SigningError(f"certificate of {who} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} "
                           f"UTC; renew it before signing")


def _worker_ready(material: _KeyMaterial) -> _Ready:
    # Cached per (fingerprint, key id) for the certificate serial it was built for: a renewed
    # certificate (new serial) replaces the entry instead of piling up next to it.
    slot = (material.fingerprint, material.key_id)
    with _keys_lock:
        cached = _worker_keys.get(slot)
        if cached is not None and cached[0] == material.serial:
            return cached[1]
    ready = material.ready()
    with _keys_lock:
        _worker_keys[slot] = (material.serial, ready)
    return ready


def _sign_job(material: _KeyMaterial, request: SignRequest) -> bytes:
    # Runs in a pool worker: no event loop here, the key came with the job (the hub process
    # refused expired and not-yet-valid certificates before sending it).
    ready = _worker_ready(material)
    return sign_pades_blocking(request.pdf, request, ready.signer, bytes_reserved=ready.bytes_reserved)


def _sign_in_thread(ready: _Ready, request: SignRequest) -> bytes:
    # No executor: a thread of the hub process, which holds the loaded key already.
    return sign_pades_blocking(request.pdf, request, ready.signer, bytes_reserved=ready.bytes_reserved)


class LocalKeySigner(Signer):
    """Base for signers whose private keys are on this machine (key files, a local keystore).

    A subclass implements ``load_keys`` (and, to load one key cheaply, ``load_key``; to let
    ``open()`` check one key instead of all, ``key_ids``). This class loads keys in the hub
    process (one at ``open()``, the others on first use) and keeps them, refuses expired or
    not-yet-valid certificates before signing, and runs the CPU work in ``context.executor``
    (a thread when there is none), sending the key with each job.
    """

    def __init__(self, settings: PluginSettings, context: PluginContext):
        super().__init__(settings, context)
        cls = type(self)
        dumped = settings.model_dump()
        self._source = _KeySource(
            signer_class=f"{cls.__module__}:{cls.__qualname__}",
            settings=dumped,
            fingerprint=hashlib.sha256(
                pickle.dumps((cls.__module__, cls.__qualname__, _reveal(dumped)))).hexdigest(),
        )

    @classmethod
    @abstractmethod
    def load_keys(cls, settings: PluginSettings) -> dict[str, LocalKey | tuple]:
        """Load every key: ``SigningIdentity.key`` → ``(private_key, certificate, chain)``.

        Raise ``PluginError`` naming the file and the setting to fix.
        """

    @classmethod
    def load_key(cls, settings: PluginSettings, key: str) -> LocalKey | tuple | None:
        """Load one key (``None`` if there is none); override when that is cheaper than all."""
        return cls.load_keys(settings).get(key)

    @classmethod
    def key_ids(cls, settings: PluginSettings) -> list[str] | None:
        """The keys there are, without loading them; ``None`` (the default) if unknown.

        When a subclass lists them, ``open()`` loads only the first (with ``load_key``) to
        prove the settings right, and the others are loaded on first use. Raise
        ``PluginError`` naming the setting when the keys cannot be listed (no directory).
        """
        return None

    def missing_key_hint(self, identity: SigningIdentity) -> str:
        """Where the key for ``identity`` was expected, for the error message."""
        return ""

    async def open(self) -> None:
        """Load one key now (every key if ``key_ids`` cannot list them), so a wrong password or
        a missing directory stops start-up; the others are loaded on first use."""
        keys = await asyncio.to_thread(_load_first, self._source)
        if not keys:
            raise PluginError(f"{self.name}: no keys found")
        if self.context.executor is None:
            # Signing happens in this process: the stamp font now, not on the first signature.
            # (The hub's pool workers make their own when they start: they are spawned.)
            await asyncio.to_thread(stamp_font_bytes)

    async def check(self) -> Health:
        # open() proved the settings with one key; decrypting every file on each health check
        # would keep a core busy. Report the keys loaded so far and whether they are usable now.
        keys = _keys.get(self._source.fingerprint, {})
        if not keys:
            return Health(False, "no keys loaded")
        now = dt.datetime.now(dt.timezone.utc)
        expired = sum(1 for ready in keys.values() if not _valid_now(ready, now))
        detail = f"{len(keys)} keys loaded" + (f", {expired} certificate(s) expired or not yet valid" if expired else "")
        return Health(expired < len(keys), detail)

    async def _check(self, identity: SigningIdentity, now: dt.datetime) -> _Ready:
        ready = _keys.get(self._source.fingerprint, {}).get(identity.key)
        if ready is None or not _valid_now(ready, now):
            # Not loaded yet, issued or renewed since: reading a key file is blocking work.
            ready = await asyncio.to_thread(_ready_for, self._source, identity.key, now)
        if ready is None:
            hint = self.missing_key_hint(identity)
            raise SigningError(f"{self.name}: no key for {identity.role} {identity.name} "
                               f"(key {identity.key})" + (f"; {hint}" if hint else ""))
        _refuse_if_invalid(ready, identity, now)
        return ready

    async def certificates(self, identity: SigningIdentity) -> tuple[bytes, ...]:
        """The identity's certificate and chain (DER); refused when missing, expired or not yet valid."""
        ready = await self._check(identity, dt.datetime.now(dt.timezone.utc))
        der = serialization.Encoding.DER
        return tuple(c.public_bytes(der) for c in (ready.key.certificate, *ready.key.chain))

    async def sign_digests(self, requests: Sequence[DigestSignRequest]) -> list[bytes]:
        """Sign each digest with its identity's key, in a thread (≈1 ms per RSA-2048 signature)."""
        now = dt.datetime.now(dt.timezone.utc)
        ready = {identity: await self._check(identity, now)
                 for identity in dict.fromkeys(r.identity for r in requests)}

        def work() -> list[bytes]:
            return [sign_digest(ready[r.identity].key.private_key, r.digest, r.digest_algorithm)
                    for r in requests]

        try:
            return await asyncio.to_thread(work)
        except ValueError as exc:
            raise SigningError(f"{self.name}: {exc}") from exc

    async def sign(self, requests: Sequence[SignRequest]) -> list[bytes]:
        """Sign every request concurrently, in the executor; all are checked before any is signed.

        B-B signs whole in a worker. B-T and B-LT wait on a timestamping authority: the worker
        prepares the document, and this process signs the hash (the key is loaded here too) and
        awaits the TSA, so no worker process idles on the network.
        """
        now = dt.datetime.now(dt.timezone.utc)
        ready = {identity: await self._check(identity, now)
                 for identity in dict.fromkeys(r.identity for r in requests)}
        for r in requests:
            if r.level not in LEVELS:
                raise SigningError(f"unknown PAdES level {r.level!r}; expected one of {', '.join(LEVELS)}")
        loop = asyncio.get_running_loop()
        material: dict[SigningIdentity, _KeyMaterial] = {}
        if self.context.executor is not None:
            material = {identity: _material_for(self._source.fingerprint, identity.key, ready[identity])
                        for identity in {r.identity for r in requests if r.level == "B-B"}}

        def job(r: SignRequest) -> Any:
            if r.level != "B-B":
                key = ready[r.identity]
                return sign_elsewhere(r, key.signer, executor=self.context.executor,
                                      bytes_reserved=key.bytes_reserved_timestamped)
            if self.context.executor is None:
                return asyncio.to_thread(_sign_in_thread, ready[r.identity], r)
            # The key, loaded and validated here, goes with the job over the pool's local pipe
            # to the hub's own worker process: never to disk, never off this machine.
            return loop.run_in_executor(self.context.executor, _sign_job, material[r.identity], r)

        return list(await asyncio.gather(*(job(r) for r in requests)))


_materials: dict[tuple[str, str], tuple[_Ready, _KeyMaterial]] = {}


def _material_for(fingerprint: str, key_id: str, ready: _Ready) -> _KeyMaterial:
    # Serialised once per loaded key in the hub process; a reloaded (renewed) key is a new
    # ``_Ready`` and gets new material.
    cached = _materials.get((fingerprint, key_id))
    if cached is None or cached[0] is not ready:
        cached = _materials[(fingerprint, key_id)] = (ready, _KeyMaterial.of(fingerprint, key_id, ready))
    return cached[1]


def _reveal(value: Any) -> Any:
    # Settings with secrets: the fingerprint must change when a password does.
    if isinstance(value, dict):
        return {k: _reveal(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_reveal(v) for v in value]
    if hasattr(value, "get_secret_value"):
        return value.get_secret_value()
    return value

