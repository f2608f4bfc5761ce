"""The XML check keeps the verdicts of chains that validated (``xmldsig._TRUSTED_PATHS``): a kept
verdict must never answer where validating again would refuse. Each test first validates
successfully (so the verdict is kept), then changes one input the verdict depends on and expects a
refusal: other trust roots, a moment outside the certificates' validity, a changed signature."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from lxml import etree

from hub.documents import xmldsig
from hub.documents.verify import load_certs
from hub.documents.xmldsig import DS, verify_document
from hub.documents.xmlsafe import parse
from tests.test_xml import FMT, record, sign_all, signer

_NS = {"ds": DS}


@pytest.fixture(scope="module")
def signed_xml(pki):
    directory, root = pki
    keys = signer(directory)

    async def make():
        await keys.open()
        return await sign_all(FMT.build(record(0)), keys)

    return asyncio.run(make()), [c.dump() for c in load_certs(root)]


@pytest.fixture(autouse=True)
def empty_cache():
    xmldsig._TRUSTED_PATHS.clear()
    yield
    xmldsig._TRUSTED_PATHS.clear()


def _first_chain(doc: bytes) -> list[x509.Certificate]:
    signature = parse(doc).getroot().find(".//ds:Signature", namespaces=_NS)
    return xmldsig._chain_of(signature)


def _other_root() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Another root")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(Encoding.DER)


def test_a_kept_verdict_does_not_answer_for_other_trust_roots(signed_xml):
    doc, roots = signed_xml
    cert, *chain = _first_chain(doc)
    assert asyncio.run(xmldsig._trusted(cert, chain, roots, None)) == (True, "")
    assert len(xmldsig._TRUSTED_PATHS) == 1  # kept
    trusted, why = asyncio.run(xmldsig._trusted(cert, chain, [_other_root()], None))
    assert not trusted and why
    # and through the whole document check: every signature refused
    report = asyncio.run(verify_document(doc, FMT, [_other_root()]))
    assert report.signatures and all(s.trusted is False for s in report.signatures)
    assert all("does not chain to a trust anchor" in " ".join(s.problems) for s in report.signatures)


def test_a_kept_verdict_does_not_answer_outside_the_certificates_validity(signed_xml):
    doc, roots = signed_xml
    cert, *chain = _first_chain(doc)
    inside = dt.datetime.now(dt.timezone.utc)
    assert asyncio.run(xmldsig._trusted(cert, chain, roots, inside)) == (True, "")
    assert asyncio.run(xmldsig._trusted(cert, chain, roots, inside + dt.timedelta(minutes=1))) == (True, "")
    for outside in (cert.not_valid_after_utc + dt.timedelta(days=1), cert.not_valid_before_utc - dt.timedelta(days=1)):
        trusted, why = asyncio.run(xmldsig._trusted(cert, chain, roots, outside))
        assert not trusted and why, outside
    # what validated at the kept moment still does
    assert asyncio.run(xmldsig._trusted(cert, chain, roots, inside)) == (True, "")


def test_a_changed_signature_is_refused_after_its_chain_was_kept(signed_xml):
    doc, roots = signed_xml
    good = asyncio.run(verify_document(doc, FMT, roots))
    assert good.signatures and not good.problems()
    assert xmldsig._TRUSTED_PATHS  # the chains are kept
    root = parse(doc).getroot()
    first = root.find(".//ds:Signature", namespaces=_NS)
    value = first.find("ds:SignatureValue", namespaces=_NS)
    raw = bytearray(value.text.encode())
    raw[10] = ord("A") if raw[10] != ord("A") else ord("B")
    value.text = raw.decode()
    tampered = asyncio.run(verify_document(etree.tostring(root), FMT, roots))
    # (later stages sign the data that holds the earlier signatures: they are refused too)
    [bad] = [s for s in tampered.signatures if s.signature_id == first.get("Id")]
    assert not bad.valid and "does not verify" in " ".join(bad.problems)
    assert bad.trusted  # the chain is still fine: the refusal is the signature's own


def test_the_kept_verdicts_are_bounded(signed_xml, monkeypatch):
    doc, roots = signed_xml
    cert, *chain = _first_chain(doc)
    monkeypatch.setattr(xmldsig, "_TRUSTED_PATHS_MAX", 2)
    extra = [_other_root(), _other_root()]
    for more in ([], [extra[0]], [extra[1]]):
        assert asyncio.run(xmldsig._trusted(cert, chain, [*roots, *more], None))[0]
    assert len(xmldsig._TRUSTED_PATHS) == 2
    assert (cert.public_bytes(Encoding.DER), tuple(c.public_bytes(Encoding.DER) for c in chain),
            tuple(roots)) not in xmldsig._TRUSTED_PATHS  # the oldest went first
