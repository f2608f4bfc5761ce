"""Keys held on this machine: ``LocalKeySigner``, the base for signers whose keys are files.

A B-B signature (PDF or XML) is made whole in a worker process. Each key is read and validated
once per hub (by a worker, the first time it signs) and then travels with each job as
material, so the hub process never opens key files after start-up and no process parses a key
twice.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import pickle
import threading
from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
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
    SignatureSlot,
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
from hub.documents.signing import SigningError, refuse_outside_validity
from hub.plugins import resolve


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
class ReadyKey:
    """One identity's key, ready to sign: the pyHanko signer and its container size."""
    key: LocalKey
    signer: _KeptKeySigner
    bytes_reserved: int
    bytes_reserved_timestamped: int

    @classmethod
    def of(cls, key: LocalKey | tuple) -> "ReadyKey":
        key = LocalKey(*key)
        signer = _KeptKeySigner(key)
        return cls(key, signer, reserve_bytes(signer), reserve_bytes(signer, timestamp=True))


@dataclass(frozen=True)
class _KeyMaterial:
    """A key loaded and validated once for the whole hub, as DER, for any of its processes.

    It travels only over the process pool's local pipes between the hub process and its own
    children: never written to disk, never sent off this machine. Whoever receives it parses
    it without decrypting a file and without cryptography's RSA key validation (the costly
    part of opening a .p12: ≈35 ms per key and process, PBKDF2 is a few ms): the process that
    read the key file validated this very key.
    """
    fingerprint: str                 # the signer's class and settings (see ``_KeySource``)
    key_id: str
    serial: int                      # the certificate's: a renewed certificate is a new entry
    private_key: bytes               # unencrypted PKCS#8 DER
    certificates: tuple[bytes, ...]  # DER: the signing certificate, then its chain
    not_before: dt.datetime          # the signing certificate's validity (UTC)
    not_after: dt.datetime
    version: Any = None              # ``LocalKeySigner.key_version`` when it was read

    @classmethod
    def of(cls, fingerprint: str, key_id: str, ready: ReadyKey, version: Any = None) -> "_KeyMaterial":
        key = ready.key
        der = serialization.Encoding.DER
        return cls(
            fingerprint, key_id, key.certificate.serial_number,
            key.private_key.private_bytes(der, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()),
            tuple(c.public_bytes(der) for c in (key.certificate, *key.chain)),
            key.certificate.not_valid_before_utc, key.certificate.not_valid_after_utc, version,
        )

    def valid(self, now: dt.datetime) -> bool:
        return self.not_before <= now <= self.not_after

    def ready(self) -> ReadyKey:
        key = serialization.load_der_private_key(self.private_key, None,
                                                 unsafe_skip_rsa_key_validation=True)
        cert, *chain = (x509.load_der_x509_certificate(c) for c in self.certificates)
        return ReadyKey.of(LocalKey(key, cert, tuple(chain)))


@dataclass(frozen=True)
class _KeySource:
    """What any process of the hub needs to read a signer's keys itself: picklable.

    It holds the signer's settings (a key file password among them): it goes to the hub's own
    worker processes over their local pipes, like the keys themselves.
    """
    signer_class: str                # "package.module:Class"
    settings: dict[str, Any]
    fingerprint: str                 # cache key: same class + same settings → same keys

    def _resolved(self) -> tuple[type["LocalKeySigner"], PluginSettings]:
        cached = _resolved.get(self.fingerprint)
        if cached is None:
            cls: type[LocalKeySigner] = resolve(self.signer_class)
            cached = _resolved[self.fingerprint] = (cls, cls.Settings.model_validate(self.settings))
        return cached

    def load(self, key_id: str | None = None) -> dict[str, ReadyKey]:
        """Every key (``key_id=None``) or just ``key_id`` (empty if there is none)."""
        cls, settings = self._resolved()
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
        return {k: ReadyKey.of(v) for k, v in loaded.items()}

    def version(self, key_id: str) -> Any:
        """The signer's ``key_version`` for ``key_id`` (``None``: it cannot tell)."""
        cls, settings = self._resolved()
        try:
            return cls.key_version(settings, key_id)
        except Exception:  # a subclass bug must not stop signing: fall back to validity dates
            return None

    def load_first(self) -> dict[str, ReadyKey]:
        """One key, enough to prove the configuration (directory, password) is right; every key
        when the signer class cannot list its keys (``LocalKeySigner.key_ids`` returns None)."""
        cls, settings = self._resolved()
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


_resolved: dict[str, tuple[type, PluginSettings]] = {}

# Keys read so far, per (signer fingerprint, key id), as material: the hub process keeps them
# (``_materials``) and every process keeps the signing objects it built from them
# (``_built``), so a key file is opened once per hub, not once per process, and never by the
# hub process after start-up (a worker opens it the first time a signature needs it).
_materials: dict[tuple[str, str], _KeyMaterial] = {}
_built: dict[tuple[str, str], tuple[int, ReadyKey]] = {}
_built_lock = threading.Lock()


def _refuse_if_invalid(material: _KeyMaterial, identity: SigningIdentity, now: dt.datetime) -> None:
    refuse_outside_validity(f"{identity.role} {identity.name} (key {identity.key})",
                            material.not_before, material.not_after, now)


def _ready(material: _KeyMaterial) -> ReadyKey:
    # Cached per (fingerprint, key id) for the certificate serial it was built for: a renewed
    # certificate (new serial) replaces the entry instead of piling up next to it.
    slot = (material.fingerprint, material.key_id)
    with _built_lock:
        cached = _built.get(slot)
        if cached is not None and cached[0] == material.serial:
            return cached[1]
    ready = material.ready()
    with _built_lock:
        _built[slot] = (material.serial, ready)
    return ready


def _load_job(source: _KeySource, key_id: str) -> _KeyMaterial | None:
    """Read and validate one key (in a pool worker, or a thread without one); the caller keeps
    the material so no other process opens the file again."""
    version = source.version(key_id)  # before reading: a file replaced meanwhile is read again
    ready = source.load(key_id).get(key_id)
    if ready is None:
        return None
    material = _KeyMaterial.of(source.fingerprint, key_id, ready, version)
    with _built_lock:
        _built[(source.fingerprint, key_id)] = (material.serial, ready)
    return material


def _sign_job(material: _KeyMaterial, request: SignRequest) -> bytes:
    # Runs in a pool worker (or a thread): no event loop here, the key came with the job (the
    # hub process refused expired and not-yet-valid certificates before sending it).
    ready = _ready(material)
    return sign_pades_blocking(request.pdf, request, ready.signer, bytes_reserved=ready.bytes_reserved)


def _sign_xml_job(document: bytes, slots: list[tuple[SignatureSlot, _KeyMaterial]],
                  signing_time: dt.datetime, c14n: str) -> bytes:
    """Every slot's XML signature built, signed and written in one go, where the key is."""
    from hub.documents.xmldsig import complete, prepare

    prepared = prepare(document, [(slot, m.certificates) for slot, m in slots],
                       signing_time=signing_time, c14n=c14n)
    return complete(prepared, {slot.signature_id: sign_digest(_ready(m).key.private_key,
                                                              prepared.digests[slot.signature_id])
                               for slot, m in slots})


def _sign_step_job(document: bytes, slots: list[tuple[SignatureSlot, _KeyMaterial]], signing_time: dt.datetime,
                   c14n: str, requests: list[tuple[_KeyMaterial, SignRequest]]) -> tuple[bytes, list[bytes]]:
    """A signing step's XML slots and PDF signatures, made in one job where the keys are."""
    return (_sign_xml_job(document, slots, signing_time, c14n) if slots else document,
            [_sign_job(material, request) for material, request in requests])


class LocalKeySigner(Signer):
    """Base for signers whose private keys are on this machine (key files, a local keystore).

    A subclass implements ``load_keys`` (and, to load one key cheaply, ``load_key``; to let
    ``open()`` check one key instead of all, ``key_ids``; to have a changed key file read
    again, ``key_version``). The hub process opens one key at ``open()``; every other key is
    opened the first time it signs, in ``context.executor`` (a thread when there is none), and
    kept: the hub process holds it as material and sends it with each job, refusing expired
    and not-yet-valid certificates before any job is sent. PDFs (B-B) and XML signatures are
    made whole in the executor; only B-T and B-LT sign here while waiting on the TSA.
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
        self._loading: dict[str, asyncio.Future[_KeyMaterial | None]] = {}

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

    @classmethod
    def key_version(cls, settings: PluginSettings, key: str) -> Any:
        """Something that changes when ``key`` is replaced (a file's modification time), checked
        before each signature without opening the key; ``None`` (the default) if unknown, and
        then a kept key is read again only once its certificate is not valid any more."""
        return None

    def missing_key_hint(self, identity: SigningIdentity) -> str:
        """Where the key for ``identity`` was expected, for the error message."""
        return ""

    async def open(self) -> None:
        """Load one key now (every key if ``key_ids`` cannot list them), so a wrong password or
        a missing directory stops start-up; the others are loaded on first use."""
        source = self._source
        keys = await asyncio.to_thread(source.load_first)
        if not keys:
            raise PluginError(f"{self.name}: no keys found")
        for key_id, ready in keys.items():
            material = _KeyMaterial.of(source.fingerprint, key_id, ready, source.version(key_id))
            _materials.setdefault((source.fingerprint, key_id), material)
        if self.context.executor is None:
            # Signing happens in this process: the stamp font now, not on the first signature.
            # (The hub's pool workers make their own when they start: they are spawned.)
            await asyncio.to_thread(stamp_font_bytes)

    async def check(self) -> Health:
        # open() proved the settings with one key; decrypting every file on each health check
        # would keep a core busy. Report the keys loaded so far and whether they are usable now.
        keys = [m for (fp, _), m in _materials.items() if fp == self._source.fingerprint]
        if not keys:
            return Health(False, "no keys loaded")
        now = dt.datetime.now(dt.timezone.utc)
        expired = sum(1 for m in keys if not m.valid(now))
        detail = f"{len(keys)} keys loaded" + (f", {expired} certificate(s) expired or not yet valid" if expired else "")
        return Health(expired < len(keys), detail)

    async def _material(self, key_id: str, now: dt.datetime) -> _KeyMaterial | None:
        """The kept key, read again (in the executor) when missing (issued since), replaced
        (``key_version`` changed) or, when its version is unknown, no longer valid (renewed
        since): a signer never needs a restart to pick up a new certificate."""
        fingerprint = self._source.fingerprint
        material = _materials.get((fingerprint, key_id))
        if material is not None:
            version = self._source.version(key_id)
            if (material.version == version) if version is not None else material.valid(now):
                return material
        # One read per key however many signatures wait for it (an XML and a PDF signature of
        # one step ask at the same time).
        loading = self._loading.get(key_id)
        if loading is None:
            loop = asyncio.get_running_loop()
            executor = self.context.executor
            loading = (loop.run_in_executor(executor, _load_job, self._source, key_id) if executor is not None
                       else asyncio.ensure_future(asyncio.to_thread(_load_job, self._source, key_id)))
            self._loading[key_id] = loading
            loading.add_done_callback(lambda _: self._loading.pop(key_id, None))
        fresh = await asyncio.shield(loading)
        if fresh is not None:
            _materials[(fingerprint, key_id)] = material = fresh
        return material

    async def _check(self, identity: SigningIdentity, now: dt.datetime) -> _KeyMaterial:
        material = await self._material(identity.key, now)
        if material is None:
            hint = self.missing_key_hint(identity)
            raise SigningError(f"{self.name}: no key for {identity.role} {identity.name} "
                               f"(key {identity.key})" + (f"; {hint}" if hint else ""))
        _refuse_if_invalid(material, identity, now)
        return material

    async def certificates(self, identity: SigningIdentity) -> tuple[bytes, ...]:
        """The identity's certificate and chain (DER); refused when missing, expired or not yet valid."""
        return (await self._check(identity, dt.datetime.now(dt.timezone.utc))).certificates

    async def sign_digests(self, requests: Sequence[DigestSignRequest]) -> list[bytes]:
        """Sign each digest with its identity's key, in a thread (≈1 ms per RSA-2048 signature)."""
        now = dt.datetime.now(dt.timezone.utc)
        material = {identity: await self._check(identity, now)
                    for identity in dict.fromkeys(r.identity for r in requests)}

        def work() -> list[bytes]:
            return [sign_digest(_ready(material[r.identity]).key.private_key, r.digest, r.digest_algorithm)
                    for r in requests]

        try:
            return await asyncio.to_thread(work)
        except ValueError as exc:
            raise SigningError(f"{self.name}: {exc}") from exc

    async def sign_xml(self, document: bytes, slots: Sequence[SignatureSlot], *,
                       signing_time: dt.datetime, c14n: str = "exclusive") -> bytes:
        """Every slot's XML signature (XAdES B-B) in one executor job: the document goes to the
        key once, instead of out to be prepared, back for its digests and out again."""
        xml, _ = await self.sign_documents(document, slots, [], signing_time=signing_time, c14n=c14n)
        return xml

    async def sign_documents(self, document: bytes, slots: Sequence[SignatureSlot], requests: Sequence[SignRequest],
                             *, signing_time: dt.datetime, c14n: str = "exclusive") -> tuple[bytes, list[bytes]]:
        """A signing step's XML slots (XAdES B-B) and PDF requests (PAdES B-B) in one executor
        job: each document goes to a worker once, and the step costs the hub one hand-off.
        Every identity is checked before anything is signed."""
        now = dt.datetime.now(dt.timezone.utc)
        material = {identity: await self._check(identity, now)
                    for identity in dict.fromkeys([*(s.identity for s in slots), *(r.identity for r in requests)])}
        job = partial(_sign_step_job, document, [(s, material[s.identity]) for s in slots], signing_time, c14n,
                      [(material[r.identity], r) for r in requests])
        if self.context.executor is None:
            return await asyncio.to_thread(job)
        # The keys go with the job over the pool's local pipe to the hub's own worker process.
        return await asyncio.get_running_loop().run_in_executor(self.context.executor, job)

    async def sign(self, requests: Sequence[SignRequest]) -> list[bytes]:
        """Sign every request concurrently, in the executor; all are checked before any is signed.

        B-B signs whole in a worker. B-T and B-LT wait on a timestamping authority: the worker
        prepares the document, and this process signs the hash (with the key it holds as
        material) and awaits the TSA, so no worker process idles on the network.
        """
        now = dt.datetime.now(dt.timezone.utc)
        material = {identity: await self._check(identity, now)
                    for identity in dict.fromkeys(r.identity for r in requests)}
        for r in requests:
            if r.level not in LEVELS:
                raise SigningError(f"unknown PAdES level {r.level!r}; expected one of {', '.join(LEVELS)}")
        loop = asyncio.get_running_loop()

        def job(r: SignRequest) -> Any:
            if r.level != "B-B":
                key = _ready(material[r.identity])
                return sign_elsewhere(r, key.signer, executor=self.context.executor,
                                      bytes_reserved=key.bytes_reserved_timestamped)
            if self.context.executor is None:
                return asyncio.to_thread(_sign_job, material[r.identity], r)
            # The key goes with the job over the pool's local pipe to the hub's own worker
            # process: never to disk, never off this machine.
            return loop.run_in_executor(self.context.executor, _sign_job, material[r.identity], r)

        return list(await asyncio.gather(*(job(r) for r in requests)))


def _reveal(value: Any) -> Any:
    # Settings with secrets: the fingerprint must change when a password does.
    if isinstance(value, dict):
        return {k: _reveal(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_reveal(v) for v in value]
    if hasattr(value, "get_secret_value"):
        return value.get_secret_value()
    return value

