"""XML Signatures (XAdES) in a document format's slots: signed as digests, verified per slot.

Every signature goes into its role's slot (``DocumentFormat.slots``) and references the element
it covers by ``URI="#Id"`` from outside that element: a detached signature inside the same
document, never an enveloped one (the sector's validators refuse a signature inside the element
it references). signxml builds it: RSA-SHA256 or ECDSA-SHA256 by the certificate's key, SHA-256
digests, exclusive (default) or inclusive canonicalisation, XAdES-BES signed properties
(``SigningTime``, ``SigningCertificateV2``). XAdES-T adds a ``SignatureTimeStamp`` from an
RFC 3161 authority over the canonical ``ds:SignatureValue``.

Keys never come here. Signing is three steps so that a remote service or a token can sign:
``prepare`` builds each signature with an empty value and returns the SHA-256 digest of its
canonical ``SignedInfo``; the signer plugin signs those digests (``Signer.sign_digests``);
``complete`` writes the values in (and ``add_timestamps`` the XAdES-T tokens). ``sign_slots`` does
all of it for one signer.

``verify_document`` checks every ``ds:Signature`` in a document: that it sits in a slot, outside
what it references and references what its slot covers; its digests and value (signxml's XAdES
verifier, so ``SigningCertificateV2`` must match); the chain to the trust anchors given
(pyhanko-certvalidator, offline); its timestamp. Binding a signature to the person the record
names is ``hub.documents.binding``'s.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import logging
import threading
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from asn1crypto import cms, tsp
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from cryptography.hazmat.primitives.serialization import Encoding
from lxml import etree
from signxml import (
    CanonicalizationMethod,
    DigestAlgorithm,
    SignatureConstructionMethod,
    SignatureMethod,
)
from signxml.exceptions import InvalidInput, SignXMLException
from signxml.xades import XAdESSignatureConfiguration, XAdESSigner, XAdESVerifier

from hub.contracts import DigestSignRequest, DocumentFormat, SignatureSlot, Signer, SigningIdentity
from hub.documents.signing import SigningError
from hub.documents.xmlsafe import XmlElement, parse
from hub.logs import get_logger

__all__ = ["C14N", "DS", "XADES", "Prepared", "XmlSignatureReport", "XmlVerifyReport", "add_timestamps",
           "complete", "prepare", "prepare_enveloped", "sign_enveloped", "sign_slots", "signed_slots",
           "unsigned_differences", "verify_document", "verify_document_blocking", "verify_enveloped"]

DS = "http://www.w3.org/2000/09/xmldsig#"
XADES = "http://uri.etsi.org/01903/v1.3.2#"
C14N = {"exclusive": CanonicalizationMethod.EXCLUSIVE_XML_CANONICALIZATION_1_0,
        "inclusive": CanonicalizationMethod.CANONICAL_XML_1_0}
"""The canonicalisations a configuration may choose (``xml.c14n``)."""
_NS = {"ds": DS, "xades": XADES}
_EXC_C14N = CanonicalizationMethod.EXCLUSIVE_XML_CANONICALIZATION_1_0.value
_log = get_logger()


def _ds(tag: str) -> str:
    return f"{{{DS}}}{tag}"


def _xades(tag: str) -> str:
    return f"{{{XADES}}}{tag}"


# --- signing ---------------------------------------------------------------------------------

class _DeferredKey:
    """Stands in for the private key while signxml builds a signature: it keeps what signxml
    asks it to sign (the canonical SignedInfo) and returns a placeholder of the right shape.
    The real signature is made by the signer plugin from the digest, and written in after."""

    def __init__(self, certificate: x509.Certificate):
        self._public = certificate.public_key()
        self.key_size = self._public.key_size
        self.signed_info: bytes | None = None

    def public_key(self):
        return self._public

    def sign(self, data: bytes, *args, **kwargs) -> bytes:
        self.signed_info = bytes(data)
        if isinstance(self._public, ec.EllipticCurvePublicKey):
            return encode_dss_signature(1, 1)
        return bytes(self.key_size // 8)


class _SlotSigner(XAdESSigner):
    """signxml's XAdES signer with the hub's choices: the signing certificate alone in
    ``SigningCertificateV2`` (signxml lists the whole chain), a signing time the hub decides
    (the same one the record's history shows), and stable ``Id``s derived from the slot."""

    def __init__(self, *, signature_id: str, signing_time: dt.datetime, **kwargs):
        super().__init__(**kwargs)
        self._signature_id = signature_id
        self._signing_time = signing_time
        # KeyInfo and the reference to the data get Ids before signxml's XAdES annotator runs.
        self.signature_annotators.insert(1, self._name_parts)

    def _name_parts(self, sig_root, signing_settings) -> None:
        sig_root.set("Id", self._signature_id)
        key_info = sig_root.find("ds:KeyInfo", namespaces=_NS)
        if key_info is not None:
            key_info.set("Id", f"{self._signature_id}-keyinfo")
        reference = sig_root.find("ds:SignedInfo/ds:Reference", namespaces=_NS)
        if reference is not None:
            reference.set("Id", f"{self._signature_id}-ref")

    def _add_reference_to_signed_info(self, sig_root, node_to_reference, **attrs):
        # signxml digests SignedProperties and KeyInfo with the configured canonicalisation but
        # names no transform, and a verifier then applies the default (inclusive C14N 1.0): with
        # exclusive canonicalisation the digests would not match. Name it.
        super()._add_reference_to_signed_info(sig_root, node_to_reference, **attrs)
        reference = sig_root.find("ds:SignedInfo", namespaces=_NS)[-1]
        transforms = etree.Element(_ds("Transforms"))
        etree.SubElement(transforms, _ds("Transform"), Algorithm=self.c14n_alg.value)
        reference.insert(0, transforms)

    def _get_token(self, length=4):
        # Ids inside one signature (SignedProperties): deterministic, and unique in the document
        # because every signature's own Id is.
        return "0"

    def add_signing_time(self, signed_signature_properties, sig_root, signing_settings):
        el = etree.SubElement(signed_signature_properties, _xades("SigningTime"))
        el.text = self._signing_time.isoformat(timespec="seconds")

    def add_signing_certificate(self, signed_signature_properties, sig_root, signing_settings):
        first = signing_settings.cert_chain[0]
        signing_settings = type(signing_settings)(**{**signing_settings.__dict__, "cert_chain": [first]})
        super().add_signing_certificate(signed_signature_properties, sig_root, signing_settings)


@dataclass(frozen=True)
class Prepared:
    """A document with signatures whose values are still empty, and what each must sign."""
    document: bytes
    digests: dict[str, bytes]              # signature Id → SHA-256 of its canonical SignedInfo
    key_sizes: dict[str, tuple[str, int]]  # signature Id → ("rsa" | "ec", key size in bits)


def _slot_element(root: XmlElement, slot: SignatureSlot) -> XmlElement:
    el = root.find(slot.path)
    if el is None:
        raise SigningError(f"{slot.name}: the document has no such slot")
    return el


def prepare(document: bytes, slots: Sequence[tuple[SignatureSlot, Sequence[bytes]]], *,
            signing_time: dt.datetime, c14n: str = "exclusive") -> Prepared:
    """Put an unsigned XAdES signature for each ``(slot, certificates DER)`` into its slot.

    Refuses a slot that already holds a signature (a signature is never replaced) and a slot
    inside the element it would reference.
    """
    root = parse(document).getroot()
    digests: dict[str, bytes] = {}
    sizes: dict[str, tuple[str, int]] = {}
    for slot, certs in slots:
        target = _slot_element(root, slot)
        if target.find("ds:Signature", namespaces=_NS) is not None:
            raise SigningError(f"{slot.name}: already signed; a signature is never replaced")
        referenced = root.xpath("//*[@Id=$id]", id=slot.reference)
        if len(referenced) != 1:
            raise SigningError(f"{slot.name}: the element with Id {slot.reference!r} it signs is "
                               f"{'missing' if not referenced else 'not unique'}")
        if referenced[0] is target or referenced[0] in target.iterancestors():
            raise SigningError(f"{slot.name}: the slot lies inside #{slot.reference}, the element it signs")
        signature, digests[slot.signature_id], sizes[slot.signature_id] = _build(
            root, certs, slot.name, slot.signature_id, signing_time, c14n,
            SignatureConstructionMethod.detached, f"#{slot.reference}")
        target.append(signature)
    return Prepared(etree.tostring(root, xml_declaration=True, encoding="UTF-8"), digests, sizes)


def _build(root: XmlElement, certs: Sequence[bytes], name: str, signature_id: str, signing_time: dt.datetime,
           c14n: str, method: SignatureConstructionMethod, reference_uri: str | None,
           ) -> tuple[XmlElement, bytes, tuple[str, int]]:
    # One signature with an empty value: what signxml returns (the ds:Signature, or for an
    # enveloped one the document holding it), the digest to sign, and the key's kind and size.
    chain = [x509.load_der_x509_certificate(c) for c in certs]
    key = _DeferredKey(chain[0])
    is_ec = isinstance(key.public_key(), ec.EllipticCurvePublicKey)
    signer = _SlotSigner(
        signature_id=signature_id, signing_time=signing_time, method=method,
        signature_algorithm=SignatureMethod.ECDSA_SHA256 if is_ec else SignatureMethod.RSA_SHA256,
        digest_algorithm=DigestAlgorithm.SHA256, c14n_algorithm=C14N[c14n])
    try:
        built = signer.sign(root, key=key, cert=chain, reference_uri=reference_uri, always_add_key_value=False)
    except SignXMLException as exc:
        raise SigningError(f"{name}: cannot build the signature: {exc}") from exc
    return built, hashlib.sha256(key.signed_info or b"").digest(), ("ec" if is_ec else "rsa", key.key_size)


def prepare_enveloped(document: bytes, certs: Sequence[bytes], *, name: str, signature_id: str,
                      signing_time: dt.datetime, c14n: str = "exclusive") -> Prepared:
    """An unsigned enveloped XAdES signature over the whole ``document`` (``Reference URI=""``),
    appended as the root's last child: for a document that is signed once, as a whole, by one
    party (a class package's manifest). The root must carry no ``Id`` (signxml would reference
    it instead of the document) and no signature yet."""
    root = parse(document).getroot()
    if root.get("Id") is not None:
        raise SigningError(f"{name}: the root carries an Id; an enveloped signature covers the whole document")
    if root.find(".//ds:Signature", namespaces=_NS) is not None:
        raise SigningError(f"{name}: already signed; a signature is never replaced")
    signed, digest, size = _build(root, certs, name, signature_id, signing_time, c14n,
                                  SignatureConstructionMethod.enveloped, None)
    return Prepared(etree.tostring(signed, xml_declaration=True, encoding="UTF-8"),
                    {signature_id: digest}, {signature_id: size})


def _signature_by_id(root: XmlElement, signature_id: str) -> XmlElement:
    found = root.xpath("//ds:Signature[@Id=$id]", namespaces=_NS, id=signature_id)
    if len(found) != 1:
        raise SigningError(f"signature {signature_id!r} is {'missing' if not found else 'not unique'}")
    return found[0]


def complete(prepared: Prepared, signatures: dict[str, bytes]) -> bytes:
    """Write each raw signature (RSA PKCS#1 v1.5, or DER ECDSA from the signer) into its
    ``ds:SignatureValue``; XML Signature wants ECDSA as r‖s, so it is converted here."""
    root = parse(prepared.document).getroot()
    for signature_id, raw in signatures.items():
        kind, bits = prepared.key_sizes[signature_id]
        if kind == "ec":
            r, s = decode_dss_signature(raw)
            size = (bits + 7) // 8
            raw = r.to_bytes(size, "big") + s.to_bytes(size, "big")
        value = _signature_by_id(root, signature_id).find("ds:SignatureValue", namespaces=_NS)
        value.text = base64.b64encode(raw).decode()
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


def signature_value_digest(document: bytes, signature_id: str) -> bytes:
    """SHA-256 of the canonical (exclusive) ``ds:SignatureValue``: what XAdES-T timestamps."""
    root = parse(document).getroot()
    value = _signature_by_id(root, signature_id).find("ds:SignatureValue", namespaces=_NS)
    return hashlib.sha256(etree.tostring(value, method="c14n", exclusive=True)).digest()


def add_timestamps(document: bytes, tokens: dict[str, bytes]) -> bytes:
    """XAdES-T: a ``SignatureTimeStamp`` (the RFC 3161 token, DER) in each signature's unsigned
    properties."""
    root = parse(document).getroot()
    for signature_id, token in tokens.items():
        signature = _signature_by_id(root, signature_id)
        props = signature.find("ds:Object/xades:QualifyingProperties", namespaces=_NS)
        unsigned = props.find("xades:UnsignedProperties", namespaces=_NS)
        if unsigned is None:
            unsigned = etree.SubElement(props, _xades("UnsignedProperties"))
        usp = unsigned.find("xades:UnsignedSignatureProperties", namespaces=_NS)
        if usp is None:
            usp = etree.SubElement(unsigned, _xades("UnsignedSignatureProperties"))
        stamp = etree.SubElement(usp, _xades("SignatureTimeStamp"), Id=f"{signature_id}-ts")
        etree.SubElement(stamp, _ds("CanonicalizationMethod"), Algorithm=_EXC_C14N)
        etree.SubElement(stamp, _xades("EncapsulatedTimeStamp")).text = base64.b64encode(token).decode()
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


async def sign_slots(document: bytes, slots: Sequence[SignatureSlot], signer: Signer, *, level: str = "B-B",
                     timestamp_url: str = "", c14n: str = "exclusive", description: str = "",
                     executor: Executor | None = None) -> bytes:
    """Sign every slot in ``slots`` with ``signer`` (one call, so one approval per identity).

    The XML work (building the signatures, writing their values) runs in ``executor`` (the
    hub's worker pool), a thread without one: only the digests pass through this process. A
    signer with keys on this machine (``LocalKeySigner``) makes B-B signatures whole in its own
    executor instead: one job per step, the key never loaded in this process.
    """
    if not slots:
        return document
    now = _signing_time()
    if signs_whole(signer, level):
        # The key is on this machine: the whole signature is made where the key is kept.
        return await signer.sign_xml(document, slots, signing_time=now, c14n=c14n)
    certs = {}
    for identity in dict.fromkeys(s.identity for s in slots):
        certs[identity] = await signer.certificates(identity)
    loop = asyncio.get_running_loop()
    prepared = await loop.run_in_executor(executor, partial(
        prepare, document, [(s, certs[s.identity]) for s in slots], signing_time=now, c14n=c14n))
    requests = [DigestSignRequest(s.identity, prepared.digests[s.signature_id], "sha256",
                                  description or f"{s.name}") for s in slots]
    raw = await signer.sign_digests(requests)
    document = await loop.run_in_executor(executor, complete, prepared,
                                          {s.signature_id: r for s, r in zip(slots, raw)})
    if level != "B-B":
        from hub.documents.pades import timestamper_for

        stamper = timestamper_for(timestamp_url)
        try:
            tokens = await asyncio.gather(*(
                stamper.async_timestamp(signature_value_digest(document, s.signature_id), "sha256")
                for s in slots))
        except Exception as exc:  # the TSA's failure is the record's reason, not a crash
            raise SigningError(f"timestamp from {timestamp_url} for {slots[0].name} failed: "
                               f"{type(exc).__name__}: {exc}") from exc
        document = add_timestamps(document, {s.signature_id: t.dump() for s, t in zip(slots, tokens)})
    return document


def signs_whole(signer: Signer, level: str) -> bool:
    """Whether ``signer`` makes ``level`` signatures whole where its keys are (B-B with keys on
    this machine, ``LocalKeySigner``): then nothing but the finished document comes back."""
    from hub.documents.local_keys import LocalKeySigner

    return level == "B-B" and isinstance(signer, LocalKeySigner)


def _signing_time() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0)


async def sign_step(document: bytes | None, slots: Sequence[SignatureSlot], requests: Sequence[Any],
                    signer: Signer, *, level: str = "B-B", timestamp_url: str = "", c14n: str = "exclusive",
                    executor: Executor | None = None, description: str = "") -> tuple[bytes | None, list[bytes]]:
    """One signing step's XML ``slots`` in ``document`` and PDF ``requests``
    (``hub.contracts.SignRequest``) with ``signer``: (the XML, the signed PDFs).

    Both in one job where the keys are (``signs_whole``); otherwise concurrently, so a remote
    signer's one approval covers both.
    """
    if slots and requests and signs_whole(signer, level):
        return await signer.sign_documents(document, slots, requests, signing_time=_signing_time(), c14n=c14n)
    jobs = [sign_slots(document, list(slots), signer, level=level, timestamp_url=timestamp_url, c14n=c14n,
                       executor=executor, description=description)] if slots else []
    if requests:
        jobs.append(signer.sign(list(requests)))
    results = await asyncio.gather(*jobs)
    return (results[0] if slots else document), (list(results[-1]) if requests else [])


async def sign_enveloped(document: bytes, identity: SigningIdentity, signer: Signer, *, signature_id: str,
                         c14n: str = "exclusive", description: str = "",
                         executor: Executor | None = None) -> bytes:
    """Sign the whole ``document`` as ``identity`` with ``signer``: one enveloped XAdES-BES
    signature (``prepare_enveloped``), the digest signed by the signer plugin like any slot's."""
    certs = await signer.certificates(identity)
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    loop = asyncio.get_running_loop()
    name = description or identity.role
    prepared = await loop.run_in_executor(executor, partial(
        prepare_enveloped, document, certs, name=name, signature_id=signature_id, signing_time=now, c14n=c14n))
    [raw] = await signer.sign_digests([DigestSignRequest(identity, prepared.digests[signature_id], "sha256", name)])
    return await loop.run_in_executor(executor, complete, prepared, {signature_id: raw})


# --- verification ----------------------------------------------------------------------------

@dataclass(frozen=True)
class XmlSignatureReport:
    """One ``ds:Signature`` of an XML document, checked."""
    slot: str                          # the slot's name, or where the signature was found
    role: str                          # the slot's role ("" when it is in no slot)
    signature_id: str
    signer: str = ""                   # the certificate's common name
    certificate: bytes = b""           # DER of the signing certificate
    signing_time: dt.datetime | None = None   # XAdES SigningTime
    timestamp_time: dt.datetime | None = None  # the XAdES-T token's time, if any
    valid: bool = False                # digests, value and signed properties check out
    trusted: bool | None = None        # chains to a trust anchor (None: none were given)
    problems: tuple[str, ...] = ()

    @property
    def level(self) -> str:
        return "XAdES-T" if self.timestamp_time else "XAdES-BES"


@dataclass(frozen=True)
class XmlVerifyReport:
    """Every signature in an XML document and the slots it offers."""
    signatures: list[XmlSignatureReport] = field(default_factory=list)
    slots: list[SignatureSlot] = field(default_factory=list)
    error: str = ""

    @property
    def signed(self) -> dict[str, XmlSignatureReport]:
        """Slot name → its signature."""
        return {s.slot: s for s in self.signatures if s.role}

    def problems(self) -> list[str]:
        if self.error:
            return [self.error]
        return [p for s in self.signatures for p in s.problems]


def _where(el: XmlElement) -> str:
    parts = []
    for node in [el, *el.iterancestors()]:
        if not isinstance(node.tag, str):
            continue
        name = etree.QName(node).localname
        parts.append(f"{name}[@Id='{node.get('Id')}']" if node.get("Id") else name)
    return "/".join(reversed(parts))


def _chain_of(signature: XmlElement) -> list[x509.Certificate]:
    out = []
    for el in signature.iterfind("ds:KeyInfo/ds:X509Data/ds:X509Certificate", namespaces=_NS):
        out.append(x509.load_der_x509_certificate(base64.b64decode("".join((el.text or "").split()))))
    return out


# Verdicts of chains that validated, kept per process: the same few certificates sign every
# document of a school, and building a ValidationContext and validating a path costs about as much
# as checking the signature itself. A verdict is reused only where validating again must give the
# same answer: the same certificate, chain and trust roots (all that path building sees), and a
# moment inside every validity period of the path that validated (the only input that changes with
# the time: revocation is soft-fail with no revocation data and no fetching, and the algorithm
# policy does not depend on the moment). Failures are never kept: they are rare, and their reason
# is worth saying afresh.
_TRUSTED_PATHS: OrderedDict[tuple[bytes, tuple[bytes, ...], tuple[bytes, ...]],
                            tuple[dt.datetime, dt.datetime]] = OrderedDict()
_TRUSTED_PATHS_MAX = 256
_trusted_paths_lock = threading.Lock()


async def _trusted(cert: x509.Certificate, chain: list[x509.Certificate], roots: list[bytes],
                   at: dt.datetime | None) -> tuple[bool, str]:
    from pyhanko_certvalidator import CertificateValidator, ValidationContext

    def der(c: x509.Certificate) -> asn1_x509.Certificate:
        return asn1_x509.Certificate.load(c.public_bytes(Encoding.DER))

    moment = at or dt.datetime.now(dt.timezone.utc)
    key = (cert.public_bytes(Encoding.DER), tuple(c.public_bytes(Encoding.DER) for c in chain), tuple(roots))
    with _trusted_paths_lock:
        window = _TRUSTED_PATHS.get(key)
        if window is not None and window[0] <= moment <= window[1]:
            _TRUSTED_PATHS.move_to_end(key)
            return True, ""
    context = ValidationContext(trust_roots=[asn1_x509.Certificate.load(r) for r in roots],
                                other_certs=[der(c) for c in chain], allow_fetching=False,
                                revocation_mode="soft-fail", moment=moment)
    try:
        path = await CertificateValidator(der(cert), validation_context=context).async_validate_usage(
            {"digital_signature"})
    except Exception as exc:  # the validator's exceptions all mean "not trusted", with a reason
        return False, str(exc) or type(exc).__name__
    # Every certificate of the path, the root's too (stricter than the validator, which does not
    # check a trust anchor's dates): a narrower window only means validating again.
    certs = list(path.iter_certs(include_root=True))
    window = (max(c.not_valid_before for c in certs), min(c.not_valid_after for c in certs))
    with _trusted_paths_lock:
        _TRUSTED_PATHS[key] = window
        _TRUSTED_PATHS.move_to_end(key)
        while len(_TRUSTED_PATHS) > _TRUSTED_PATHS_MAX:
            _TRUSTED_PATHS.popitem(last=False)
    return True, ""


def _check_timestamp(token_b64: str, value_digest: bytes) -> tuple[dt.datetime | None, str]:
    try:
        info = cms.ContentInfo.load(base64.b64decode(token_b64))
        signed = info["content"]
        tst = tsp.TSTInfo.load(signed["encap_content_info"]["content"].parsed.dump())
    except Exception as exc:  # a damaged token
        return None, f"the timestamp cannot be read ({type(exc).__name__})"
    imprint = tst["message_imprint"]
    if imprint["hashed_message"].native != value_digest:
        return tst["gen_time"].native, "the timestamp does not cover this signature's value"
    return tst["gen_time"].native, ""


async def _checked(root: XmlElement, signature: XmlElement, sid: str, name: str, role: str, location: str,
                   chain: list[x509.Certificate], trust_roots: Sequence[bytes], problems: list[str],
                   ) -> XmlSignatureReport:
    # What every XAdES signature must pass wherever it sits: value and digests (signxml, at the
    # ``location`` given, so a signature moved elsewhere does not verify), SigningTime, its
    # timestamp, the chain to the trust anchors. ``problems`` holds what the caller found.
    cert = chain[0]
    cn = cert.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)
    signer_name = str(cn[0].value) if cn else cert.subject.rfc4514_string()
    valid = True
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            XAdESVerifier().verify(
                root, x509_cert=cert, id_attribute="Id",
                expect_config=XAdESSignatureConfiguration(location=location, expect_references=3))
        for w in caught:
            _log.warning("xml.verify_warning", slot=name, warning=str(w.message))
    except (SignXMLException, InvalidInput, ValueError) as exc:
        valid = False
        problems.append(f"{name}: the signature does not verify ({exc})")
    except Exception as exc:  # a malformed signature is a verdict, never a traceback
        valid = False
        problems.append(f"{name}: the signature cannot be checked ({type(exc).__name__}: {exc})")
    when_text = signature.findtext("ds:Object/xades:QualifyingProperties/xades:SignedProperties/"
                                   "xades:SignedSignatureProperties/xades:SigningTime", namespaces=_NS)
    signing_time = None
    if when_text:
        try:
            signing_time = dt.datetime.fromisoformat(when_text.replace("Z", "+00:00"))
        except ValueError:
            problems.append(f"{name}: SigningTime {when_text!r} is not a date and time")
    else:
        problems.append(f"{name}: no XAdES SigningTime")
    ts_time = None
    token = signature.findtext("ds:Object/xades:QualifyingProperties/xades:UnsignedProperties/"
                               "xades:UnsignedSignatureProperties/xades:SignatureTimeStamp/"
                               "xades:EncapsulatedTimeStamp", namespaces=_NS)
    if token:
        value = signature.find("ds:SignatureValue", namespaces=_NS)
        digest = hashlib.sha256(etree.tostring(value, method="c14n", exclusive=True)).digest()
        ts_time, ts_problem = _check_timestamp(token, digest)
        if ts_problem:
            problems.append(f"{name}: {ts_problem}")
    trusted = None
    if trust_roots:
        trusted, why = await _trusted(cert, chain[1:], list(trust_roots), None)
        if not trusted:
            problems.append(f"{name}: the certificate of {signer_name} does not chain to a "
                            f"trust anchor ({why})")
    return XmlSignatureReport(
        name, role, sid, signer_name, cert.public_bytes(Encoding.DER), signing_time, ts_time,
        valid, trusted, tuple(problems))


async def verify_document(document: bytes, fmt: DocumentFormat, trust_roots: Sequence[bytes] = (),
                          ) -> XmlVerifyReport:
    """Check every ``ds:Signature`` of ``document``; trust only if ``trust_roots`` (DER) are given."""
    try:
        root = parse(document).getroot()
        slots = fmt.slots(document)
    except ValueError as exc:
        return XmlVerifyReport(error=f"cannot read the XML: {exc}")
    by_element = {}
    for slot in slots:
        el = root.find(slot.path)
        if el is not None:
            by_element[el] = slot
    reports = []
    for signature in root.iter(_ds("Signature")):
        sid = signature.get("Id") or "(no Id)"
        parent = signature.getparent()
        slot = by_element.get(parent)
        refs = signature.xpath("ds:SignedInfo/ds:Reference[not(@Type)]/@URI", namespaces=_NS)
        data_ref = next((r for r in refs if not r.startswith(f"#{sid}")), "")
        if slot is None:
            reports.append(XmlSignatureReport(
                _where(signature), "", sid,
                problems=(f"{_where(parent)}: signature {sid} is in no signature slot",)))
            continue
        problems = []
        if sum(1 for _ in parent.iterchildren(_ds("Signature"))) > 1:
            problems.append(f"{slot.name}: more than one signature in one slot")
        referenced = root.xpath("//*[@Id=$id]", id=data_ref.lstrip("#")) if data_ref else []
        if data_ref != f"#{slot.reference}":
            problems.append(f"{slot.name}: references {data_ref or 'nothing'}, not #{slot.reference} "
                            f"as this slot must")
        if referenced and (referenced[0] is parent or referenced[0] in signature.iterancestors()):
            problems.append(f"{slot.name}: sits inside {data_ref}, the element it references")
        try:
            chain = _chain_of(signature)
        except ValueError:
            chain = []
        if not chain:
            reports.append(XmlSignatureReport(slot.name, slot.role, sid,
                                              problems=(*problems, f"{slot.name}: carries no certificate"),))
            continue
        reports.append(await _checked(root, signature, sid, slot.name, slot.role, slot.path + "/", chain,
                                      trust_roots, problems))
    return XmlVerifyReport(reports, slots)


async def verify_enveloped(document: bytes, trust_roots: Sequence[bytes] = (), *, name: str = "signature",
                           role: str = "") -> XmlSignatureReport:
    """Check a document signed as a whole (``sign_enveloped``): exactly one ``ds:Signature``,
    the root's last child, whose data reference is the whole document (``URI=""`` with the
    enveloped-signature transform), valid, and — with ``trust_roots`` — chaining to one.
    Anything else in the document is unsigned, so a second signature or one elsewhere is refused
    rather than ignored."""
    try:
        root = parse(document).getroot()
    except ValueError as exc:
        return XmlSignatureReport(name, role, "", problems=(f"{name}: cannot read the XML: {exc}",))
    found = list(root.iter(_ds("Signature")))
    if len(found) != 1:
        return XmlSignatureReport(name, role, "", problems=(
            f"{name}: the document carries {len(found) or 'no'} signature{'s' if len(found) != 1 else ''}; "
            f"exactly one is expected",))
    signature = found[0]
    sid = signature.get("Id") or "(no Id)"
    problems = []
    if signature.getparent() is not root or signature.getnext() is not None:
        problems.append(f"{name}: the signature must be the root's last child, found at {_where(signature)}")
    data_refs = signature.xpath("ds:SignedInfo/ds:Reference[not(@Type) and not(starts-with(@URI, '#'))]",
                                namespaces=_NS)
    enveloped = SignatureConstructionMethod.enveloped.value
    if len(data_refs) != 1 or data_refs[0].get("URI") != "" or enveloped not in data_refs[0].xpath(
            "ds:Transforms/ds:Transform/@Algorithm", namespaces=_NS):
        problems.append(f"{name}: does not sign the whole document (a Reference URI=\"\" with the "
                        f"enveloped-signature transform)")
    try:
        chain = _chain_of(signature)
    except ValueError:
        chain = []
    if not chain:
        return XmlSignatureReport(name, role, sid, problems=(*problems, f"{name}: carries no certificate"))
    return await _checked(root, signature, sid, name, role, "./", chain, trust_roots, problems)


def verify_document_blocking(document: bytes, format_name: str, trust_roots: tuple[bytes, ...] = ()) -> XmlVerifyReport:
    """``verify_document`` for a worker process (no running loop): the format by name."""
    from hub.plugins import document_formats

    fmt = document_formats()[format_name].cls()
    return asyncio.run(verify_document(document, fmt, trust_roots))


def signed_slots(document: bytes, fmt: DocumentFormat,
                 slots: Sequence[SignatureSlot] | None = None) -> set[str]:
    """Names of the slots that hold a signature (no validation); ``slots``: ``fmt.slots(document)``
    when the caller has them already."""
    root = parse(document).getroot()
    out = set()
    for slot in fmt.slots(document) if slots is None else slots:
        el = root.find(slot.path)
        if el is not None and el.find("ds:Signature", namespaces=_NS) is not None:
            out.add(slot.name)
    return out


def _label(el: XmlElement) -> str:
    name = etree.QName(el).localname
    return f"{name}[@Id='{el.get('Id')}']" if el.get("Id") else name


def _text_of(value: str | None) -> str:
    # Indentation between elements is not content (a vendor's tool may pretty-print).
    return (value or "").strip()


def unsigned_differences(expected: bytes, arrived: bytes, *, limit: int = 5) -> list[str]:
    """Where ``arrived`` (a document delivered already signed) differs from ``expected`` (the
    document built from the record), its ``ds:Signature`` elements aside: element, attribute
    and text, each named by its path. ``[]`` when what was signed is exactly the record."""
    want = parse(expected).getroot()
    got = parse(arrived).getroot()
    for signature in list(got.iter(_ds("Signature"))):
        signature.getparent().remove(signature)
    out: list[str] = []

    def walk(a: XmlElement, b: XmlElement, path: str) -> None:
        if len(out) >= limit:
            return
        if a.tag != b.tag:
            out.append(f"{path}: the signed XML has {_label(b)} where the record gives {_label(a)}")
            return
        if dict(a.attrib) != dict(b.attrib):
            out.append(f"{path}: attributes {dict(b.attrib)} in the signed XML, {dict(a.attrib)} from the record")
        if _text_of(a.text) != _text_of(b.text):
            out.append(f"{path}: the signed XML says {_text_of(b.text)!r}, the record {_text_of(a.text)!r}")
        kids_a = [k for k in a if isinstance(k.tag, str)]
        kids_b = [k for k in b if isinstance(k.tag, str)]
        for x, y in zip(kids_a, kids_b):
            walk(x, y, f"{path}/{_label(x)}")
        for x in kids_a[len(kids_b):]:
            out.append(f"{path}/{_label(x)}: missing from the signed XML")
        for y in kids_b[len(kids_a):]:
            out.append(f"{path}/{_label(y)}: in the signed XML, not in the record")

    walk(want, got, _label(want))
    return out[:limit]


# signxml logs at INFO on every verification; the hub's log says what matters.
logging.getLogger("signxml").setLevel(logging.WARNING)
