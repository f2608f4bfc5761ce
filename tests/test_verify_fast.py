"""What the cheaper final check must still catch.

The XML check keeps the verdicts of chains that validated (``xmldsig._TRUSTED_PATHS``): a kept
verdict must never answer where validating again would refuse. Each XML test first validates
successfully (so the verdict is kept), then changes one input the verdict depends on and expects a
refusal: other trust roots, a moment outside the certificates' validity, a changed signature.

The PDF check runs pyHanko's difference analysis once per signature (not again for the B-LT
question): a page whose content changes after a signature must still show against it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import io

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from lxml import etree
from pyhanko.pdf_utils.reader import PdfFileReader

from hub.documents import xmldsig
from hub.documents.render import render_pdf
from hub.documents.signing import request_for
from hub.documents.verify import load_certs, trust_roots_der, verify_blocking
from hub.documents.xmldsig import DS, verify_document
from hub.documents.xmlsafe import parse
from tests.conftest import changed_page
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


# --- PDF ---------------------------------------------------------------------------------------

PDF_ROLES = ("homeroom_teacher", "principal", "school_seal")


@pytest.fixture(scope="module")
def signed_pdfs(pki):
    """The three PDF signatures in order, and the same with the page changed after the first."""
    directory, root = pki
    keys = signer(directory)
    rec = record(0)

    async def make(change_after: str | None) -> bytes:
        await keys.open()
        pdf = render_pdf(rec)
        for role in PDF_ROLES:
            [pdf] = await keys.sign([request_for(rec, pdf, role)])
            if role == change_after:
                pdf = changed_page(pdf)
        return pdf

    return asyncio.run(make(None)), asyncio.run(make("homeroom_teacher")), trust_roots_der((str(root),))


def test_a_page_changed_after_the_first_signature_shows_against_it(signed_pdfs):
    good, changed, roots = signed_pdfs
    assert verify_blocking(good, roots).ok
    report = verify_blocking(changed, roots)
    by_field = {s.field: s for s in report.signatures}
    assert list(by_field) == list(PDF_ROLES)
    first = by_field["homeroom_teacher"]
    assert first.intact and first.valid and first.trusted  # its own bytes are untouched
    assert first.modified and not first.ok and first.modification_level not in (
        "NONE", "LTA_UPDATES", "FORM_FILLING")
    assert any(p.startswith("homeroom_teacher: the document was modified") for p in report.problems())
    # the signatures made after the change cover it
    assert by_field["principal"].ok and by_field["school_seal"].ok
    assert not report.ok


def test_a_page_changed_after_the_last_signature_shows_against_every_one(signed_pdfs):
    good, _changed, roots = signed_pdfs
    report = verify_blocking(changed_page(good), roots)
    assert len(report.signatures) == 3 and all(s.modified and not s.ok for s in report.signatures)


def test_a_changed_pdf_signature_and_an_untrusted_root_are_refused(signed_pdfs):
    good, _changed, roots = signed_pdfs
    assert verify_blocking(good, roots).ok  # validated first, as the final check does every time
    # one digit of the school's signature value (its hex in /Contents) changed
    [*_, seal] = PdfFileReader(io.BytesIO(good), strict=False).embedded_regular_signatures
    value = seal.signer_info["signature"].native.hex().encode()
    at = good.lower().index(value) + len(value) // 2
    flipped = good[:at] + (b"0" if good[at:at + 1] != b"0" else b"1") + good[at + 1:]
    report = verify_blocking(flipped, roots)
    assert not report.ok and not {s.field: s for s in report.signatures}["school_seal"].valid
    untrusted = verify_blocking(good, (_other_root(),))
    assert untrusted.signatures and not any(s.trusted for s in untrusted.signatures)
    assert "does not chain to a trusted root" in " ".join(untrusted.problems())
