"""The school's issuing signature locks the PDF (its field's lock: every field, DocMDP P=1), so a
change after it — another signature, an edit — invalidates it: pyHanko says so, pdfsig no longer
finds it covering the whole document, and the hub refuses to sign after it."""

from __future__ import annotations

import io
import shutil
import subprocess

import pytest
from pyhanko.pdf_utils import generic
from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter
from pyhanko.pdf_utils.reader import PdfFileReader
from pyhanko.sign import signers
from pyhanko.sign.fields import MDPPerm

from hub.contracts import PluginContext
from hub.documents.render import render_pdf
from hub.documents.signing import SigningError, identity_for, request_for
from hub.documents.verify import load_certs, verify_pdf
from hub.kit.synthetic import transcript
from hub.records import parse_transcript
from signers.pkcs12.signer import Pkcs12Signer
from tests.conftest import PASSWORD

ROLES = ("homeroom_teacher", "principal", "school_seal")
REC = parse_transcript({**transcript(0), "record_id": "D0001", "event": "NEW", "version": 1,
                        "updated_at": "2025-06-01T08:00:00"})


@pytest.fixture(scope="module")
def sealed(pki):
    import asyncio

    directory, root = pki
    keys = Pkcs12Signer(Pkcs12Signer.Settings(directory=directory, password=PASSWORD),
                        PluginContext("keys", directory))

    async def make() -> bytes:
        await keys.open()
        pdf = render_pdf(REC)
        for role in ROLES:
            [pdf] = await keys.sign([request_for(REC, pdf, role)])
        return pdf

    return asyncio.run(make()), directory, root


def _pdfsig(path) -> str:
    return subprocess.run(["pdfsig", str(path)], capture_output=True, text=True).stdout


async def test_the_school_signature_locks_the_document(sealed, tmp_path):
    pdf, _directory, root = sealed
    [*_, seal] = PdfFileReader(io.BytesIO(pdf)).embedded_regular_signatures
    assert seal.field_name == "school_seal" and seal.docmdp_level == MDPPerm.NO_CHANGES
    report = await verify_pdf(pdf, load_certs(root))
    assert report.ok, report.problems()
    if shutil.which("pdfsig"):
        path = tmp_path / "sealed.pdf"
        path.write_bytes(pdf)
        out = _pdfsig(path)
        assert out.count("Signature is Valid") == 3 and "Total document signed" in out.split("Field Name: school_seal")[1], out


async def test_a_signature_after_the_lock_invalidates_the_school_signature(sealed, tmp_path):
    pdf, directory, root = sealed
    # Someone adds a signature (a new field) after the school's: pyHanko lets it be made, and
    # then reports the school's signature as broken by it.
    other = signers.SimpleSigner.load_pkcs12(str(directory / f"{identity_for(REC, 'principal').key}.p12"),
                                             passphrase=PASSWORD.encode())
    writer = IncrementalPdfFileWriter(io.BytesIO(pdf), strict=False)
    later = (await signers.PdfSigner(signers.PdfSignatureMetadata(field_name="later"), other)
             .async_sign_pdf(writer, existing_fields_only=False)).getvalue()
    report = await verify_pdf(later, load_certs(root))
    by_field = {s.field: s for s in report.signatures}
    assert not by_field["school_seal"].ok and not by_field["school_seal"].docmdp_ok
    assert any(p.startswith("school_seal: the document was modified") for p in report.problems())
    # The teachers' signatures allowed form filling after them; only the lock is broken.
    assert by_field["homeroom_teacher"].docmdp_ok
    if shutil.which("pdfsig"):
        path = tmp_path / "later.pdf"
        path.write_bytes(later)
        seal_part = _pdfsig(path).split("Signature Field Name: school_seal")[1].split("Signature #")[0]
        assert "Not total document signed" in seal_part, seal_part

    # An edit (any incremental update) after the lock likewise.
    writer = IncrementalPdfFileWriter(io.BytesIO(pdf), strict=False)
    writer.root["/PageLayout"] = generic.NameObject("/TwoColumnLeft")
    writer.update_root()
    out = io.BytesIO()
    writer.write(out)
    report = await verify_pdf(out.getvalue(), load_certs(root))
    assert not {s.field: s for s in report.signatures}["school_seal"].ok


async def test_the_hub_refuses_to_sign_after_the_lock(sealed, pki):
    pdf, directory, _root = sealed
    # In the hub's documents the lock is the last field's, so nothing is left to sign after it; a
    # document whose fields were rendered in another order shows that signing is refused, not
    # made and broken.
    keys = Pkcs12Signer(Pkcs12Signer.Settings(directory=directory, password=PASSWORD),
                        PluginContext("keys", directory))
    await keys.open()
    fresh = render_pdf(REC, ("homeroom_teacher", "school_seal", "principal"))
    [fresh] = await keys.sign([request_for(REC, fresh, "homeroom_teacher")])
    [fresh] = await keys.sign([request_for(REC, fresh, "principal")])
    # The lock is on the principal's field here (the last one rendered): after it, nothing.
    with pytest.raises(SigningError, match="locked the document"):
        await keys.sign([request_for(REC, fresh, "school_seal")])
