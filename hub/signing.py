"""The signing workflow, whoever holds the keys.

Who signs a record (``identity_for``), what a PAdES signature into a pre-created field looks
like (``sign_pades``: ``ETSI.CAdES.detached``, SHA-256, a visible stamp in an embedded font
that has every Vietnamese glyph), the levels (``LEVELS``: B-B; B-T with an RFC 3161
timestamp; B-LT with certificates and revocation data in the document's DSS), and two ways to
get there:

- ``LocalKeySigner``, the base for signers whose keys are files on this machine: a B-B
  signature is made whole in a worker process;
- ``sign_elsewhere``, for keys that are not in this process (a remote service, a token) and
  for anything that waits on a timestamping authority: a worker process prepares the document
  (stamp, placeholder, digest), the event loop awaits the signature of the signed attributes'
  hash and the timestamp, then fills it in — no process waits on the network.

Remote and hardware signers implement ``hub.contracts.Signer`` and call ``sign_elsewhere``
with their own pyHanko signer.
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
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, NamedTuple

import aiohttp
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from fontTools import subset as ftsubset
from fontTools import ttLib
from pyhanko.pdf_utils.font.api import FontEngineFactory
from pyhanko.pdf_utils.font.opentype import GlyphAccumulator
from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter
from pyhanko.pdf_utils.text import TextBoxStyle
from pyhanko.sign import fields, signers
from pyhanko.sign.general import SigningError as PyHankoSigningError
from pyhanko.sign.signers.pdf_byterange import PreparedByteRangeDigest
from pyhanko.sign.signers.pdf_cms import ExternalSigner, PdfCMSSignedAttributes
from pyhanko.sign.timestamps import HTTPTimeStamper, TimeStamper
from pyhanko.sign.timestamps.common_utils import TimestampRequestError
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
    "LEVELS", "LocalKey", "LocalKeySigner", "Prepared", "SigningError", "chain_bytes", "complete",
    "embed_validation_blocking", "identity_for", "prepare_blocking", "request_for", "reserve_bytes",
    "sign_elsewhere", "sign_pades", "sign_pades_blocking", "stamp_style", "timestamper_for",
]


class SigningError(PluginError):
    """One request cannot be signed (unknown identity, expired certificate, missing field).

    The signer itself still works: other records go on; this one waits for a fix.
    """


# --- who signs ------------------------------------------------------------------------------------

def identity_for(record: PrimaryTranscript | SecondaryTranscript, role: str) -> SigningIdentity:
    """The identity that signs ``record`` in ``role`` (``hub.contracts.SIGNING_ROLES``).

    Raises ``SigningError`` when a person's personal id is missing: ``SigningIdentity.key``
    would fall back to the school code and pick the school seal's key to sign as that person.
    """
    s = record.signatories
    if role == "school_seal":
        return SigningIdentity(role, record.school_name, record.school_code)
    people = {
        "homeroom_teacher": (s.homeroom_teacher_name, s.homeroom_teacher_personal_id),
        "principal": (s.principal_name, s.principal_personal_id),
    }
    if role not in people:
        raise ValueError(f"unknown signing role {role!r}; expected one of {', '.join(SIGNING_ROLES)}")
    name, personal_id = people[role]
    if not personal_id:
        raise SigningError(f"signatories.{role}_personal_id: missing, so no key can be chosen "
                           f"for {role} {name}")
    return SigningIdentity(role, name, record.school_code, personal_id)


def request_for(record: PrimaryTranscript | SecondaryTranscript, pdf: bytes, role: str, *,
                level: str = "B-B", timestamp_url: str = "") -> SignRequest:
    """A request to sign ``role``'s field of the rendered ``pdf`` of ``record`` at PAdES ``level``."""
    return SignRequest(
        pdf=pdf,
        field_name=role,
        identity=identity_for(record, role),
        reason=f"{ROLE_LABELS[role]} ký học bạ {record.transcript_id}",
        location=record.signatories.issue_place,
        level=level,
        timestamp_url=timestamp_url,
    )


# --- the PAdES signature --------------------------------------------------------------------------

# A stamp shows a name, a role and a time: ASCII, Latin-1 and the Vietnamese letters. pyHanko
# parses and subsets the stamp font for every signature, so the smaller it is the better
# (≈300 glyphs instead of the page font's 1300: a fifth of the signing time saved).
_STAMP_COVERAGE = [(0x20, 0x7E), (0xA0, 0xFF), (0x102, 0x103), (0x110, 0x111), (0x128, 0x129),
                   (0x168, 0x169), (0x1A0, 0x1A1), (0x1AF, 0x1B0), (0x1EA0, 0x1EF9),
                   (0x2013, 0x2014), (0x2018, 0x201D), (0x2026, 0x2026)]
_stamp_font: bytes | None = None
_stamp_lock = threading.Lock()


def _stamp_font_bytes() -> bytes:
    global _stamp_font
    if _stamp_font is not None:
        return _stamp_font
    with _stamp_lock:
        if _stamp_font is None:
            font = ttLib.TTFont(io.BytesIO(font_bytes()))
            unicodes = [c for c in font.getBestCmap() if any(a <= c <= b for a, b in _STAMP_COVERAGE)]
            options = ftsubset.Options(notdef_outline=True, recommended_glyphs=True, name_IDs=["*"],
                                       glyph_names=True)
            subsetter = ftsubset.Subsetter(options)
            subsetter.populate(unicodes=unicodes)
            subsetter.subset(font)
            out = io.BytesIO()
            font.save(out)
            _stamp_font = out.getvalue()
    return _stamp_font


class _StampFont(FontEngineFactory):
    """Noto Sans (the transcript's font), embedded as a subset in every signature appearance."""

    def __init__(self, font_size: int):
        self.font_size = font_size

    def create_font_engine(self, writer, obj_stream=None) -> GlyphAccumulator:
        if obj_stream is None and writer.stream_xrefs:
            obj_stream = writer.prepare_object_stream()
        engine = GlyphAccumulator(writer, io.BytesIO(_stamp_font_bytes()), self.font_size,
                                  obj_stream=obj_stream)
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
                timestamper: TimeStamper | None = None) -> tuple[signers.PdfSigner, dict[str, str]]:
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
                     bytes_reserved: int | None = None, timestamper: TimeStamper | None = None) -> bytes:
    """Sign ``request.field_name`` of ``pdf`` with a PAdES signature (B-B, or B-T with a timestamper).

    The field must exist (it is never created here). ``bytes_reserved`` skips pyHanko's
    dry-run signature (``reserve_bytes(signer, timestamp=timestamper is not None)`` computes
    it); ``None`` lets pyHanko measure with a dry run.
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
                        bytes_reserved: int | None = None, timestamper: TimeStamper | None = None) -> bytes:
    """``sign_pades`` for a thread or worker process that has no running event loop."""
    return asyncio.run(sign_pades(pdf, request, signer, bytes_reserved=bytes_reserved,
                                  timestamper=timestamper))


# --- levels, and signing with the key elsewhere ---------------------------------------------------

LEVELS = ("B-B", "B-T", "B-LT")
"""PAdES baseline levels the hub produces: B-T adds a signature timestamp, B-LT the
certificates and revocation data a validator needs years later, in the document's DSS."""

_timestampers: dict[str, HTTPTimeStamper] = {}


def timestamper_for(url: str) -> HTTPTimeStamper:
    """The RFC 3161 client for ``url``, one per process (it opens a connection per request)."""
    if not url.startswith(("http://", "https://")):
        raise SigningError(f"timestamp_url {url!r} is not an http(s) URL")
    stamper = _timestampers.get(url)
    if stamper is None:
        stamper = _timestampers[url] = HTTPTimeStamper(url, timeout=30)
    return stamper


@dataclass(frozen=True)
class Prepared:
    """A document with its signature placeholder written and its byte-range digest taken.

    Picklable: a worker process prepares it, the event loop fills in the CMS signature once the
    key holder (a remote service, a token, a TSA for the timestamp) has answered.
    """
    pdf: bytes
    digest: PreparedByteRangeDigest
    signing_time: dt.datetime


_placeholders: dict[tuple[bytes, ...], ExternalSigner] = {}


def _placeholder_signer(certs: tuple[bytes, ...]) -> ExternalSigner:
    # Only the certificates matter before the signature exists (the stamp shows the holder's
    # name); parsed once per process and certificate chain.
    signer = _placeholders.get(certs)
    if signer is None:
        parsed = [asn1_x509.Certificate.load(c) for c in certs]
        signer = _placeholders[certs] = ExternalSigner(
            parsed[0], SimpleCertificateStore.from_certs(parsed[1:]), signature_value=0)
    return signer


def chain_bytes(signer: signers.Signer) -> tuple[bytes, ...]:
    """DER of the signing certificate, then the others ``signer`` embeds."""
    first = signer.signing_cert.dump()
    return (first, *(c.dump() for c in signer.cert_registry if c.dump() != first))


def prepare_blocking(request: SignRequest, certs: tuple[bytes, ...], bytes_reserved: int) -> Prepared:
    """Stamp, placeholder and digest for ``request`` (CPU work: run it in a worker process)."""
    pdf_signer, text = _pdf_signer(request, _placeholder_signer(certs))

    async def prepare() -> Prepared:
        writer = IncrementalPdfFileWriter(io.BytesIO(request.pdf), strict=False)
        session = pdf_signer.init_signing_session(writer, existing_fields_only=True)
        info = await session.perform_presign_validation(writer)
        tbs = session.prepare_tbs_document(validation_info=info, bytes_reserved=bytes_reserved,
                                           appearance_text_params=text)
        digest, output = tbs.digest_tbs_document()
        return Prepared(output.getvalue(), digest, session.system_time)

    try:
        return asyncio.run(prepare())
    except PyHankoSigningError as exc:
        raise SigningError(f"cannot sign field {request.field_name!r} as {request.identity.role} "
                           f"{request.identity.name}: {exc}") from exc


async def complete(prepared: Prepared, request: SignRequest, signer: signers.Signer) -> bytes:
    """Have ``signer`` sign the prepared digest (and the TSA stamp it for B-T); fill it in."""
    timestamper = timestamper_for(request.timestamp_url) if request.level != "B-B" else None
    try:
        signature = await signer.async_sign(
            prepared.digest.document_digest, "sha256", use_pades=True, timestamper=timestamper,
            signed_attr_settings=PdfCMSSignedAttributes(signing_time=prepared.signing_time))
    except (PyHankoSigningError, TimestampRequestError, aiohttp.ClientError, asyncio.TimeoutError) as exc:
        raise SigningError(_explain(exc, request)) from exc
    out = io.BytesIO(prepared.pdf)
    prepared.digest.fill_with_cms(out, signature)
    return out.getvalue()


def _explain(exc: BaseException, request: SignRequest) -> str:
    # pyHanko wraps the cause ("Signature request failed"); the operator needs the cause too.
    who = f"{request.identity.role} {request.identity.name}"
    causes = [str(exc) or type(exc).__name__]
    cause = exc.__cause__
    while cause is not None:
        causes.append(str(cause) or type(cause).__name__)
        cause = cause.__cause__
    if isinstance(exc, (TimestampRequestError, aiohttp.ClientError, asyncio.TimeoutError)) or any(
            "imestamp" in c for c in causes):
        return f"timestamp from {request.timestamp_url} for {who} failed: " + ": ".join(causes)
    return f"signing as {who} failed: " + ": ".join(causes)


def embed_validation_blocking(pdf: bytes, field_name: str, certs: tuple[bytes, ...],
                              trust: tuple[bytes, ...] = ()) -> bytes:
    """B-LT: the certificates, OCSP answers and CRLs that validate ``field_name``'s signature and
    its timestamp, fetched now from the addresses in the certificates, in a DSS update.

    ``trust``: roots to build paths to; by default the self-signed certificates of the signer's
    own chain (a path is needed to know what to fetch; the trust decision is the verifier's).
    """
    from pyhanko.pdf_utils.reader import PdfFileReader
    from pyhanko.sign.validation.dss import async_add_validation_info
    from pyhanko_certvalidator import ValidationContext

    parsed = [asn1_x509.Certificate.load(c) for c in (*certs, *trust)]
    roots = [c for c in parsed if c.self_signed != "no"]
    reader = PdfFileReader(io.BytesIO(pdf), strict=False)
    embedded = next((s for s in reader.embedded_regular_signatures if s.field_name == field_name), None)
    if embedded is None:
        raise SigningError(f"B-LT: no signature in field {field_name!r} to add validation data for")
    context = ValidationContext(trust_roots=roots, other_certs=parsed, allow_fetching=True,
                                revocation_mode="hard-fail")

    async def add() -> bytes:
        try:
            out = await async_add_validation_info(embedded, context)
        finally:
            await context.aclose()
        return out.getvalue()

    try:
        return asyncio.run(add())
    except Exception as exc:  # pyHanko raises several kinds; all mean "no B-LT for this one"
        raise SigningError(f"B-LT: cannot collect revocation data for field {field_name!r}: {exc}") from exc


async def sign_elsewhere(request: SignRequest, signer: signers.Signer, *, executor: Executor | None,
                         bytes_reserved: int) -> bytes:
    """Sign where the key is not in this process: a remote service, a token, or a TSA to wait on.

    The CPU work (stamp, placeholder, digest; B-LT's DSS update) runs in ``executor`` (a thread
    without one); only the signed attributes' hash goes to ``signer`` — the event loop awaits
    its answer while other documents go on.
    """
    if request.level not in LEVELS:
        raise SigningError(f"unknown PAdES level {request.level!r}; expected one of {', '.join(LEVELS)}")
    certs = chain_bytes(signer)
    prepared = await _off_loop(executor, prepare_blocking, request, certs, bytes_reserved)
    pdf = await complete(prepared, request, signer)
    if request.level == "B-LT":
        pdf = await _off_loop(executor, embed_validation_blocking, pdf, request.field_name, certs)
    return pdf


async def _off_loop(executor: Executor | None, fn: Any, *args: Any) -> Any:
    if executor is None:
        return await asyncio.to_thread(fn, *args)
    return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)


# --- keys on this machine -------------------------------------------------------------------------

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
        # Prepared here, pool workers forked later inherit the stamp font instead of each
        # building it on its first signature.
        await asyncio.to_thread(_stamp_font_bytes)

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
