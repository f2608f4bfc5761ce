"""The signing workflow, whoever holds the keys.

Who signs a record (``identity_for``), what a PAdES signature into a pre-created field looks
like (``sign_pades``: ``ETSI.CAdES.detached``, SHA-256, a visible stamp in an embedded font
that has every Vietnamese glyph), and ``LocalKeySigner``, the base for signers whose keys are
files on this machine. Remote and hardware signers implement ``hub.contracts.Signer`` and call
``sign_pades`` with their own pyHanko signer.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import importlib
import io
import pickle
import threading
import unicodedata
from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from pyhanko.pdf_utils.font.api import FontEngineFactory
from pyhanko.pdf_utils.font.opentype import GlyphAccumulator
from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter
from pyhanko.pdf_utils.text import TextBoxStyle
from pyhanko.sign import fields, signers
from pyhanko.sign.general import SigningError as PyHankoSigningError
from pyhanko.stamp import TextStampStyle
from pyhanko_certvalidator.registry import SimpleCertificateStore
from pyhanko_certvalidator.util import get_pyca_cryptography_hash, process_pss_params

from hub.contracts import (
    SIGNING_ROLES,
    Health,
    PluginContext,
    PluginError,
    PluginSettings,
    Signer,
    SignRequest,
    SigningIdentity,
)
from hub.records import PrimaryTranscript, SecondaryTranscript
from hub.render import ROLE_LABELS, font_bytes

__all__ = [
    "LocalKey", "LocalKeySigner", "SigningError", "identity_for", "request_for",
    "reserve_bytes", "sign_pades", "sign_pades_blocking", "stamp_style",
]


class SigningError(PluginError):
    """One request cannot be signed (unknown identity, expired certificate, missing field).

    The signer itself still works: other records go on; this one waits for a fix.
    """


# --- who signs ------------------------------------------------------------------------------------

def identity_for(record: PrimaryTranscript | SecondaryTranscript, role: str) -> SigningIdentity:
    """The identity that signs ``record`` in ``role`` (``hub.contracts.SIGNING_ROLES``)."""
    s = record.signatories
    if role == "homeroom_teacher":
        return SigningIdentity(role, s.homeroom_teacher_name, record.school_code,
                               s.homeroom_teacher_personal_id)
    if role == "principal":
        return SigningIdentity(role, s.principal_name, record.school_code, s.principal_personal_id)
    if role == "school_seal":
        return SigningIdentity(role, record.school_name, record.school_code)
    raise ValueError(f"unknown signing role {role!r}; expected one of {', '.join(SIGNING_ROLES)}")


def request_for(record: PrimaryTranscript | SecondaryTranscript, pdf: bytes, role: str) -> SignRequest:
    """A request to sign ``role``'s field of the rendered ``pdf`` of ``record``."""
    return SignRequest(
        pdf=pdf,
        field_name=role,
        identity=identity_for(record, role),
        reason=f"{ROLE_LABELS[role]} ký học bạ {record.transcript_id}",
        location=record.signatories.issue_place,
    )


# --- the PAdES signature --------------------------------------------------------------------------

class _StampFont(FontEngineFactory):
    """The transcript's own Noto Sans, embedded (as a subset) in every signature appearance."""

    def __init__(self, font_size: int):
        self.font_size = font_size

    def create_font_engine(self, writer, obj_stream=None) -> GlyphAccumulator:
        if obj_stream is None and writer.stream_xrefs:
            obj_stream = writer.prepare_object_stream()
        engine = GlyphAccumulator(writer, io.BytesIO(font_bytes()), self.font_size, obj_stream=obj_stream)
        # The outlines are final; recomputing every glyph's bounding box on save is wasted work.
        engine.tt.recalcBBoxes = False
        return engine


_stamp_style: TextStampStyle | None = None


def stamp_style() -> TextStampStyle:
    """The visible signature: signer, role and time, in an embedded font with Vietnamese glyphs.

    pyHanko's default stamp uses a standard PDF font: not embedded, no Vietnamese.
    """
    global _stamp_style
    if _stamp_style is None:
        _stamp_style = TextStampStyle(
            stamp_text="Ký bởi: %(signer)s\nVai trò: %(role)s\nThời gian: %(ts)s",
            text_box_style=TextBoxStyle(font=_StampFont(8), font_size=8, leading=11),
            timestamp_format="%d/%m/%Y %H:%M:%S %z",
            border_width=1,
        )
    return _stamp_style


def reserve_bytes(signer: signers.Signer, *, timestamp: bool = False) -> int:
    """Room for ``signer``'s CMS signature, so pyHanko need not sign a dry run to measure it.

    Certificates, the raw signature and the signed attributes are the CMS object's size; a
    signature timestamp adds a token with the TSA's own certificates. pyHanko counts the
    reservation in hex digits, two per byte.
    """
    certs = [signer.signing_cert, *signer.cert_registry] if signer.signing_cert else list(signer.cert_registry)
    cert_bytes = sum(len(c.dump()) for c in {c.dump(): c for c in certs if c is not None}.values())
    issuer = len(signer.signing_cert.issuer.dump()) if signer.signing_cert else 256
    key_bytes = 1024
    if signer.signing_cert is not None:
        key_bytes = max(signer.signing_cert.public_key.bit_size // 8, 132) + 16
    # Signed attributes (digest, signing-certificate-v2, algorithm protection) and SignerInfo
    # name the issuer twice; 1 KiB more covers the DER framing with room to spare.
    size = cert_bytes + key_bytes + 2 * issuer + 1024
    if timestamp:
        size += 8192
    return 2 * size


def _pdf_signer(request: SignRequest, signer: signers.Signer,
                timestamper: Any = None) -> tuple[signers.PdfSigner, dict[str, str]]:
    meta = signers.PdfSignatureMetadata(
        field_name=request.field_name,
        md_algorithm="sha256",
        subfilter=fields.SigSeedSubFilter.PADES,
        reason=request.reason or None,
        location=request.location or None,
        name=request.identity.name,
    )
    shown = request.identity.name
    if signer.signing_cert is not None:
        # The stamp shows who the certificate says signed, not who the request claims.
        shown = signer.signing_cert.subject.native.get("common_name", shown)
    text = {"signer": unicodedata.normalize("NFC", shown),
            "role": ROLE_LABELS.get(request.identity.role, request.identity.role)}
    return signers.PdfSigner(meta, signer, timestamper=timestamper, stamp_style=stamp_style()), text


async def sign_pades(pdf: bytes, request: SignRequest, signer: signers.Signer, *,
                     bytes_reserved: int | None = None, timestamper: Any = None) -> bytes:
    """Sign ``request.field_name`` of ``pdf`` with a PAdES signature (B-B, or B-T with a timestamper).

    The field must exist (it is never created here). ``bytes_reserved`` skips pyHanko's
    dry-run signature (``reserve_bytes`` computes it); ``None`` lets pyHanko estimate.
    """
    pdf_signer, text = _pdf_signer(request, signer, timestamper)
    writer = IncrementalPdfFileWriter(io.BytesIO(pdf), strict=False)
    try:
        out = await pdf_signer.async_sign_pdf(writer, existing_fields_only=True,
                                              bytes_reserved=bytes_reserved,
                                              appearance_text_params=text)
    except PyHankoSigningError as exc:
        raise SigningError(f"cannot sign field {request.field_name!r} as {request.identity.role} "
                           f"{request.identity.name}: {exc}") from exc
    return out.getvalue()


def sign_pades_blocking(pdf: bytes, request: SignRequest, signer: signers.Signer, *,
                        bytes_reserved: int | None = None, timestamper: Any = None) -> bytes:
    """``sign_pades`` for a thread or worker process that has no running event loop."""
    return asyncio.run(sign_pades(pdf, request, signer, bytes_reserved=bytes_reserved,
                                  timestamper=timestamper))


# --- keys on this machine -------------------------------------------------------------------------

class LocalKey(NamedTuple):
    """A private key, its certificate, and the certificates up to (and maybe including) a root."""
    private_key: Any                 # a ``cryptography`` private key object
    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...] = ()


class _KeptKeySigner(signers.Signer):
    """A pyHanko signer that holds the loaded key object.

    ``SimpleSigner`` re-parses its key from DER on every signature (≈50 ms for RSA-2048);
    this one parses it once.
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


@dataclass(frozen=True)
class _KeySource:
    """What a worker process needs to load a signer's keys itself: picklable, no key material."""
    signer_class: str                # "package.module:Class"
    settings: dict[str, Any]
    fingerprint: str                 # cache key: same class + same settings → same keys


# Each process (the hub and every pool worker) loads a signer's keys once and keeps them here.
_keys: dict[str, dict[str, _Ready]] = {}
_keys_lock = threading.Lock()


def _load(source: _KeySource) -> dict[str, _Ready]:
    module, _, name = source.signer_class.partition(":")
    cls: type[LocalKeySigner] = getattr(importlib.import_module(module), name)
    settings = cls.Settings.model_validate(source.settings)
    try:
        loaded = cls.load_keys(settings)
    except PluginError:
        raise
    except Exception as exc:  # a subclass bug or an unreadable file: still an operator's message
        raise PluginError(f"{cls.name}: cannot load keys: {exc}") from exc
    ready = {}
    for key_id, key in loaded.items():
        signer = _KeptKeySigner(LocalKey(*key))
        ready[key_id] = _Ready(LocalKey(*key), signer, reserve_bytes(signer))
    return ready


def _keys_for(source: _KeySource, key_id: str | None = None, *, reload: bool = False) -> dict[str, _Ready]:
    with _keys_lock:
        keys = _keys.get(source.fingerprint)
        # A key issued after start-up (a new teacher) is picked up by reloading once on a miss.
        if keys is None or reload or (key_id is not None and key_id not in keys):
            keys = _keys[source.fingerprint] = _load(source)
        return keys


def _refuse_if_invalid(ready: _Ready, identity: SigningIdentity, now: dt.datetime) -> None:
    cert = ready.key.certificate
    who = f"{identity.role} {identity.name} (key {identity.key})"
    if now < cert.not_valid_before_utc:
        raise SigningError(f"certificate of {who} is not valid until "
                           f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC; not signing")
    if now > cert.not_valid_after_utc:
        raise SigningError(f"certificate of {who} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} "
                           f"UTC; renew it before signing")


def _sign_job(source: _KeySource, request: SignRequest) -> bytes:
    # Runs in a pool worker (or a thread): no event loop here, keys from this process's cache.
    ready = _keys_for(source, request.identity.key)[request.identity.key]
    _refuse_if_invalid(ready, request.identity, dt.datetime.now(dt.timezone.utc))
    return sign_pades_blocking(request.pdf, request, ready.signer, bytes_reserved=ready.bytes_reserved)


class LocalKeySigner(Signer):
    """Base for signers whose private keys are on this machine (key files, a local keystore).

    A subclass implements ``load_keys``. This class keeps the keys loaded (once per process,
    pool workers included), refuses expired or not-yet-valid certificates before signing, and
    runs the CPU work in ``context.executor`` (a thread when there is none).
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

    def missing_key_hint(self, identity: SigningIdentity) -> str:
        """Where the key for ``identity`` was expected, for the error message."""
        return ""

    async def open(self) -> None:
        """Load the keys now, so a wrong password or a missing directory stops start-up."""
        keys = await asyncio.to_thread(_keys_for, self._source, reload=True)
        if not keys:
            raise PluginError(f"{self.name}: no keys found")

    async def check(self) -> Health:
        try:
            keys = await asyncio.to_thread(_keys_for, self._source, reload=True)
        except PluginError as exc:
            return Health(False, str(exc))
        return Health(True, f"{len(keys)} keys")

    def _ready(self, identity: SigningIdentity) -> _Ready:
        keys = _keys.get(self._source.fingerprint, {})
        if identity.key not in keys:
            hint = self.missing_key_hint(identity)
            raise SigningError(f"{self.name}: no key for {identity.role} {identity.name} "
                               f"(key {identity.key})" + (f"; {hint}" if hint else ""))
        return keys[identity.key]

    async def sign(self, requests: Sequence[SignRequest]) -> list[bytes]:
        """Sign every request concurrently; all are checked before any is signed."""
        keys = _keys.get(self._source.fingerprint)
        if keys is None or any(r.identity.key not in keys for r in requests):
            # Not opened yet, or a key issued since: reading key files is blocking work.
            await asyncio.to_thread(_keys_for, self._source, reload=True)
        now = dt.datetime.now(dt.timezone.utc)
        for request in requests:
            _refuse_if_invalid(self._ready(request.identity), request.identity, now)
        if self.context.executor is None:
            jobs = [asyncio.to_thread(_sign_job, self._source, r) for r in requests]
        else:
            loop = asyncio.get_running_loop()
            jobs = [loop.run_in_executor(self.context.executor, _sign_job, self._source, r)
                    for r in requests]
        return list(await asyncio.gather(*jobs))


def _reveal(value: Any) -> Any:
    # Settings with secrets: the fingerprint must change when a password does.
    if isinstance(value, dict):
        return {k: _reveal(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_reveal(v) for v in value]
    if hasattr(value, "get_secret_value"):
        return value.get_secret_value()
    return value
