"""The PAdES signature: ``ETSI.CAdES.detached``, SHA-256, a visible stamp in an embedded font.

``sign_pades`` signs a pre-created field; ``LEVELS`` are B-B, B-T (an RFC 3161 timestamp) and
B-LT (certificates and revocation data in the document's DSS). ``sign_elsewhere`` is for keys
that are not in this process (a remote service, a token) and for anything that waits on a
timestamping authority: a worker process prepares the document (stamp, placeholder, digest),
the event loop awaits the signature of the signed attributes' hash and the timestamp, then
fills it in — no process waits on the network.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import threading
import unicodedata
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import aiohttp
from asn1crypto import x509 as asn1_x509
from fontTools import subset as ftsubset
from fontTools import ttLib
from pyhanko.pdf_utils import generic
from pyhanko.pdf_utils.font.api import FontEngineFactory
from pyhanko.pdf_utils.font.opentype import CIDFontType2, GlyphAccumulator
from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter
from pyhanko.pdf_utils.text import TextBoxStyle
from pyhanko.sign import fields, signers
from pyhanko.sign.fields import MDPPerm
from pyhanko.sign.general import SigningError as PyHankoSigningError
from pyhanko.sign.signers.pdf_byterange import PreparedByteRangeDigest
from pyhanko.sign.signers.pdf_cms import ExternalSigner, PdfCMSSignedAttributes
from pyhanko.sign.timestamps import HTTPTimeStamper, TimeStamper
from pyhanko.sign.timestamps.common_utils import TimestampRequestError
from pyhanko.stamp import TextStampStyle
from pyhanko_certvalidator.registry import SimpleCertificateStore

from hub.contracts import (
    SignRequest,
)
from hub.documents.render import ROLE_LABELS, font_bytes
from hub.documents.signing import SigningError
from hub.records import VIETNAM_TIME

_STAMP_COVERAGE = [(0x20, 0x7E), (0xA0, 0xFF), (0x102, 0x103), (0x110, 0x111), (0x128, 0x129),
                   (0x168, 0x169), (0x1A0, 0x1A1), (0x1AF, 0x1B0), (0x1EA0, 0x1EF9),
                   (0x2013, 0x2014), (0x2018, 0x201D), (0x2026, 0x2026)]
_stamp_font: bytes | None = None
_stamp_lock = threading.Lock()


def stamp_font_bytes() -> bytes:
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


# Every stamp holds these, whatever its text, so that stamps differing only in their time share
# one subset (digits and the time's punctuation).
_STAMP_ALWAYS = "0123456789/:+ "
_SUBSETS_KEPT = 512
_subsets: dict[frozenset[int], bytes] = {}


class _KeptProgram(CIDFontType2):
    """pyHanko's TrueType CID font, embedding a subset program made before for the same glyphs."""
    program: bytes | None = None

    def set_font_file(self, writer: Any) -> Any:
        if self.program is None:
            return super().set_font_file(writer)
        stream = generic.StreamObject(stream_data=self.program)
        stream.compress()
        ref = writer.add_object(stream)
        self._font_descriptor[generic.pdf_name("/FontFile2")] = ref
        return ref


class _StampGlyphs(GlyphAccumulator):
    """pyHanko's glyph accumulator, keeping each subset it makes of the stamp font.

    Subsetting the font and writing the subset was half of a signature's CPU. The subset
    depends only on the glyphs used (glyph ids are kept), and a school's principal and seal
    stamp the same text but for the time, a class's homeroom teacher too: the program made for
    one signature serves every later one with the same glyphs. This overrides pyHanko's
    ``_extract_subset`` and its CID font's ``set_font_file`` (checked on pyHanko 0.38).
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.cidfont_obj = _KeptProgram(self.tt, self.cidfont_obj.name.partition("+")[2], self.subset_prefix)

    def _extract_subset(self, options: Any = None) -> None:
        key = frozenset(self._glyphs)
        program = _subsets.get(key)
        if program is None:
            super()._extract_subset(options)
            buffer = io.BytesIO()
            self.tt.save(buffer)
            program = buffer.getvalue()
            if len(_subsets) >= _SUBSETS_KEPT:  # the oldest goes (dicts keep insertion order)
                _subsets.pop(next(iter(_subsets), None), None)
            _subsets[key] = program
        self.cidfont_obj.program = program


class _StampFont(FontEngineFactory):
    """Noto Sans (the transcript's font), embedded as a subset in every signature appearance."""

    def __init__(self, font_size: int):
        self.font_size = font_size

    def create_font_engine(self, writer, obj_stream=None) -> GlyphAccumulator:
        if obj_stream is None and writer.stream_xrefs:
            obj_stream = writer.prepare_object_stream()
        engine = _StampGlyphs(writer, io.BytesIO(stamp_font_bytes()), self.font_size,
                              obj_stream=obj_stream)
        # The outlines are final; recomputing every glyph's bounding box on save is wasted work.
        engine.tt.recalcBBoxes = False
        engine.shape(_STAMP_ALWAYS)
        return engine


_stamp_style: TextStampStyle | None = None
_STAMP_CLOCK = dt.timezone(VIETNAM_TIME.utcoffset(None), "+07:00")
"""Vietnam's clock (``hub.records.VIETNAM_TIME``), named as the stamp prints it. pyHanko stamps
the signing session's ``system_time``, which it takes from the machine's zone (UTC on a server)
unless set."""


def stamp_style() -> TextStampStyle:
    """The visible signature: signer, role and time, in an embedded font with Vietnamese glyphs.

    pyHanko's default stamp uses a standard PDF font: not embedded, no Vietnamese.
    """
    global _stamp_style
    if _stamp_style is None:
        _stamp_style = TextStampStyle(
            stamp_text="Ký bởi: %(signer)s\nVai trò: %(role)s\nThời gian: %(ts)s",
            text_box_style=TextBoxStyle(font=_StampFont(8), font_size=8, leading=11),
            # ``%Z`` prints the zone's name, and _STAMP_CLOCK is named "+07:00": a school reads
            # Vietnam time written the ISO way (``%z`` would print "+0700"; 3.11 has no ``%:z``).
            timestamp_format="%d/%m/%Y %H:%M:%S %Z",
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


def refuse_locked(pdf: bytes, field_name: str) -> None:
    """``SigningError`` when a signature in ``pdf`` locked the document (DocMDP "no changes",
    as the school's issuing signature does): anything signed after it would invalidate it."""
    if b"/FieldMDP" not in pdf and b"/DocMDP" not in pdf:
        return  # no signature with a lock: skip parsing the document
    from pyhanko.pdf_utils.reader import PdfFileReader

    for sig in PdfFileReader(io.BytesIO(pdf), strict=False).embedded_regular_signatures:
        if sig.docmdp_level == MDPPerm.NO_CHANGES:
            raise SigningError(f"cannot sign field {field_name!r}: the signature in {sig.field_name!r} locked "
                               f"the document (no changes allowed after it)")


def _pdf_signer(request: SignRequest, signer: signers.Signer,
                timestamper: TimeStamper | None = None) -> tuple[signers.PdfSigner, dict[str, str]]:
    meta = signers.PdfSignatureMetadata(
        field_name=request.field_name,
        md_algorithm="sha256",
        subfilter=fields.SigSeedSubFilter.PADES,
        reason=request.reason or None,
        location=request.location or None,
        name=request.identity.name,
        # Applies only to a field that carries a lock (the last one, DocMDP P=1): asking for what
        # the lock already says keeps pyHanko from warning that it overrides the default.
        docmdp_permissions=MDPPerm.NO_CHANGES,
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
    refuse_locked(pdf, request.field_name)
    pdf_signer, text = _pdf_signer(request, signer, timestamper)
    writer = IncrementalPdfFileWriter(io.BytesIO(pdf), strict=False)
    try:
        # ``PdfSigner.async_sign_pdf`` step by step, only to set the session's clock (see
        # _STAMP_CLOCK): the stamp and the CMS signing time are the same instant.
        session = _session(pdf_signer, writer)
        info = await session.perform_presign_validation(writer)
        if bytes_reserved is None:
            bytes_reserved = await session.estimate_signature_container_size(
                info, tight=pdf_signer.signature_meta.tight_size_estimates)
        tbs = session.prepare_tbs_document(validation_info=info, bytes_reserved=bytes_reserved,
                                           appearance_text_params=text)
        digest, output = tbs.digest_tbs_document()
        post = await tbs.perform_signature(
            document_digest=digest.document_digest,
            pdf_cms_signed_attrs=PdfCMSSignedAttributes(
                signing_time=session.system_time,
                adobe_revinfo_attr=None if info is None else info.adobe_revinfo_attr,
                cades_signed_attrs=pdf_signer.signature_meta.cades_signed_attr_spec))
        await post.post_signature_processing(output)
    except PyHankoSigningError as exc:
        raise SigningError(f"cannot sign field {request.field_name!r} as {request.identity.role} "
                           f"{request.identity.name}: {exc}") from exc
    return output.getvalue()


def _session(pdf_signer: signers.PdfSigner, writer: IncrementalPdfFileWriter) -> Any:
    session = pdf_signer.init_signing_session(writer, existing_fields_only=True)
    session.system_time = dt.datetime.now(_STAMP_CLOCK)
    return session


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
    refuse_locked(request.pdf, request.field_name)
    pdf_signer, text = _pdf_signer(request, _placeholder_signer(certs))

    async def prepare() -> Prepared:
        writer = IncrementalPdfFileWriter(io.BytesIO(request.pdf), strict=False)
        session = _session(pdf_signer, writer)
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
