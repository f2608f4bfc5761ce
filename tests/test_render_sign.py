"""Rendering and signing, checked by independent tools: poppler (pdftotext, pdfdetach, pdffonts,
pdfsig) and pyHanko's validator. Real keys from a throwaway PKI, real worker processes.
"""

from __future__ import annotations

import asyncio
import io
import multiprocessing
import subprocess
import unicodedata
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import pytest

from hub.contracts import (
    SIGNING_ROLES,
    PluginContext,
    PluginError,
    SigningIdentity,
    SignRequest,
)
from hub.documents.render import load_fonts, render_pdf, signature_boxes
from hub.documents.signing import SigningError, identity_for, request_for
from hub.documents.verify import extract_record, load_certs, verify_pdf
from hub.kit import pki
from hub.kit.synthetic import transcript
from hub.records import PrimaryTranscript, SecondaryTranscript, parse_transcript
from signers.pkcs12.signer import Pkcs12Signer

PASSWORD = "mật-khẩu-thử"


def record(index: int) -> PrimaryTranscript | SecondaryTranscript:
    data = transcript(index)
    data.update(record_id=f"R{index:04d}", event="NEW", version=1, updated_at="2025-06-01T08:00:00")
    return parse_transcript(data)


def poppler(tool: str, pdf: bytes, tmp: Path, *args: str) -> str:
    path = tmp / f"{tool}.pdf"
    path.write_bytes(pdf)
    done = subprocess.run([tool, *args, str(path), *(["-"] if tool == "pdftotext" else [])],
                          capture_output=True, text=True)
    return done.stdout


def first_revision(pdf: bytes) -> bytes:
    return pdf[:pdf.index(b"%%EOF")]


def signer(directory: Path, executor=None, password: str = PASSWORD) -> Pkcs12Signer:
    settings = Pkcs12Signer.Settings(directory=directory, password=password)
    return Pkcs12Signer(settings, PluginContext("keys", directory, executor))


@pytest.fixture(scope="module")
def records():
    return [record(0), record(3)]  # a primary and an upper-secondary school


@pytest.fixture(scope="module")
def keys(records, tmp_path_factory):
    directory = tmp_path_factory.mktemp("pki")
    root = pki.ensure_pki(directory, [identity_for(r, role) for r in records for role in SIGNING_ROLES],
                          PASSWORD)
    return directory, root


@pytest.fixture(scope="module")
def signed(records, keys):
    """Both records signed by all three roles in order, two documents per batch, in 2 worker processes."""
    async def sign_all() -> list[bytes]:
        pdfs = [render_pdf(r) for r in records]
        with ProcessPoolExecutor(max_workers=2) as pool:
            local = signer(keys[0], pool)
            await local.open()
            for role in SIGNING_ROLES:
                pdfs = await local.sign([request_for(r, pdf, role) for r, pdf in zip(records, pdfs)])
        return pdfs

    return asyncio.run(sign_all())


def test_rendered_text_is_exact_vietnamese_and_subsets_do_not_leak(records, tmp_path):
    primary, secondary = records
    first = render_pdf(primary)
    other = render_pdf(secondary)
    again = render_pdf(primary)
    for rec, pdf in ((primary, first), (secondary, other)):
        text = poppler("pdftotext", pdf, tmp_path, "-enc", "UTF-8")
        name = rec.student.full_name
        assert unicodedata.is_normalized("NFC", name)
        assert name in text and rec.school_name in text
        assert "CỘNG HÒA XÃ HỘI CHỦ NGHĨA VIỆT NAM" in text and "HỌC BẠ" in text
        assert "Hà Nội, ngày 31 tháng 5 năm 2025" in text
        fonts = poppler("pdffonts", pdf, tmp_path).splitlines()[2:]
        assert fonts and all(" yes yes yes " in line for line in fonts)  # embedded, subset, ToUnicode
    # The parsed font is shared between documents; its subset state is not: rendering another
    # record in between leaves the same record's document byte-for-byte unchanged.
    assert first_revision(first) == first_revision(again)
    # Record 0 is a grade-5 pupil: the level is completed, no class is gone up to.
    text = poppler("pdftotext", first, tmp_path, "-enc", "UTF-8")
    assert "Hoàn thành chương trình tiểu học" in text and "lên lớp" not in text


def test_spawned_workers_render_the_same_document_from_prepared_fonts(records):
    # Spawned workers start empty; handing them the prepared fonts spares each the reduction.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=context, initializer=load_fonts,
                             initargs=(load_fonts(),)) as pool:
        in_worker = pool.submit(render_pdf, records[1]).result()
    assert first_revision(in_worker) == first_revision(render_pdf(records[1]))


# Every Vietnamese letter in both cases and each tone, one vowel's six forms per word.
_VOWELS = "aăâeêioôơuưyAĂÂEÊIOÔƠUƯY"
ALL_LETTERS = " ".join(unicodedata.normalize("NFC", "".join(v + t for t in ("", "\u0300", "\u0301", "\u0303",
                                                                         "\u0309", "\u0323")))
                       for v in _VOWELS) + " đĐ"


def drawn_glyphs(pdf: bytes) -> dict[str, list[tuple[str, object, int]]]:
    """Per embedded font (by base name): each text the font's ToUnicode map gives a code, with
    the outline and advance of the glyph the code draws, read from the embedded program through
    the CIDToGIDMap, as a viewer draws it."""
    import io
    import re

    from fontTools.pens.recordingPen import DecomposingRecordingPen
    from fontTools.ttLib import TTFont
    from pyhanko.pdf_utils.reader import PdfFileReader

    reader = PdfFileReader(io.BytesIO(pdf))
    out: dict[str, list[tuple[str, object, int]]] = {}
    for index in range(reader.root["/Pages"]["/Count"]):
        page = reader.find_page_for_modification(index)[0].get_object()
        for font in page["/Resources"]["/Font"].values():
            font = font.get_object()
            name = str(font["/BaseFont"]).partition("+")[2]
            if name in out:
                continue
            cid_font = font["/DescendantFonts"][0].get_object()
            gid_map = cid_font["/CIDToGIDMap"].get_object().data
            program = TTFont(io.BytesIO(cid_font["/FontDescriptor"]["/FontFile2"].get_object().data))
            glyphs, order, metrics = program.getGlyphSet(), program.getGlyphOrder(), program["hmtx"].metrics
            out[name] = []
            to_unicode = font["/ToUnicode"].get_object().data
            pairs = [pair for block in re.findall(rb"beginbfchar(.*?)endbfchar", to_unicode, re.S)
                     for pair in re.findall(rb"<([0-9A-F]{4})> <([0-9A-F]+)>", block)]
            for code, text in pairs:
                code = int(code, 16)
                gid = gid_map[2 * code] << 8 | gid_map[2 * code + 1]
                pen = DecomposingRecordingPen(glyphs)
                glyphs[order[gid]].draw(pen)
                out[name].append((bytes.fromhex(text.decode()).decode("utf-16-be"), pen.value,
                                  metrics[order[gid]][0]))
    return out


def assert_glyphs_are_the_fonts(pdf: bytes) -> set[str]:
    """Every glyph a document draws is the transcript font's glyph for the text it extracts as."""
    from fontTools.pens.recordingPen import DecomposingRecordingPen
    from fontTools.ttLib import TTFont

    from hub.documents.render import font_bytes

    seen = set()
    for name, drawn in drawn_glyphs(pdf).items():
        font = TTFont(io.BytesIO(font_bytes(bold=name.endswith("Bold"))))
        cmap, glyphs, metrics = font.getBestCmap(), font.getGlyphSet(), font["hmtx"].metrics
        for text, outline, advance in drawn:
            if text in ("\x00", " "):  # .notdef and space: fpdf2's reserved codes, no outline
                continue
            pen = DecomposingRecordingPen(glyphs)
            glyphs[cmap[ord(text)]].draw(pen)
            assert (outline, advance) == (pen.value, metrics[cmap[ord(text)]][0]), (name, text)
            seen.add(text)
    return seen


def test_every_vietnamese_letter_draws_its_own_glyph_and_extracts_back(tmp_path):
    # Every document embeds the font program made once per process; a wrong glyph id would
    # still extract right (ToUnicode) but draw another letter: the outlines are compared too.
    data = transcript(0)
    data.update(record_id="R-letters", event="NEW", version=1, updated_at="2025-06-01T08:00:00",
                homeroom_comment=ALL_LETTERS)
    pdf = render_pdf(parse_transcript(data))
    text = poppler("pdftotext", pdf, tmp_path, "-enc", "UTF-8")
    assert all(word in text.split() for word in ALL_LETTERS.split())
    assert set(ALL_LETTERS.replace(" ", "")) <= assert_glyphs_are_the_fonts(pdf)


def test_documents_needing_other_glyphs_embed_them_and_others_share_one_program(records, tmp_path):
    from hub.documents import render

    plain = [render_pdf(r) for r in records]
    data = transcript(0)
    # Beyond the kept repertoire: a foreign name, typographic dashes and quotes.
    foreign = "Muñoz Ñandú – “Čapek” — Ærø"
    data.update(record_id="R-foreign", event="NEW", version=1, updated_at="2025-06-01T08:00:00",
                homeroom_comment=foreign)
    before = render._extended_program.cache_info()
    extended = render_pdf(parse_transcript(data))
    assert render._extended_program.cache_info().currsize == min(before.currsize + 1, render._EXTENDED_KEPT)
    text = poppler("pdftotext", extended, tmp_path, "-enc", "UTF-8")
    assert foreign in text
    assert set(foreign.replace(" ", "")) <= assert_glyphs_are_the_fonts(extended)
    for rec, pdf in zip(records, plain):  # rendered before, and extracting right after it too
        assert rec.student.full_name in poppler("pdftotext", pdf, tmp_path, "-enc", "UTF-8")
        assert_glyphs_are_the_fonts(pdf)
    used = [{name: {g[0] for g in drawn} for name, drawn in drawn_glyphs(pdf).items()} for pdf in plain]
    assert used[0] != used[1]  # the glyphs used differ ...
    assert font_programs(plain[0]) == font_programs(plain[1])  # ... the programs embedded do not
    assert font_programs(extended) != font_programs(plain[0])


def font_programs(pdf: bytes) -> list[bytes]:
    import io

    from pyhanko.pdf_utils.reader import PdfFileReader

    reader = PdfFileReader(io.BytesIO(pdf))
    fonts = reader.find_page_for_modification(0)[0].get_object()["/Resources"]["/Font"].values()
    return sorted(f.get_object()["/DescendantFonts"][0]["/FontDescriptor"]["/FontFile2"].get_object().data
                  for f in fonts)


def test_programs_for_glyphs_beyond_the_repertoire_are_bounded():
    from hub.documents import render

    names = sorted(set(render._font_set().parsed[""].cmap.values()) - render._font_set().repertoire[""])
    for name in names[:render._EXTENDED_KEPT + 3]:
        render._extended_program("", frozenset({name}))
    assert render._extended_program.cache_info().currsize == render._EXTENDED_KEPT


def test_kept_text_widths_are_fpdf2s_for_the_font_and_size_and_stay_bounded(monkeypatch):
    from fpdf import FPDF

    from hub.documents import render

    monkeypatch.setattr(render, "_widths", {})
    monkeypatch.setattr(render, "_WIDTHS_KEPT", 3)
    pdf = FPDF()
    render._add_fonts(pdf)
    page = render._Page(pdf)
    for style, size, text in (("", 9, "Học kì I"), ("B", 9, "Học kì I"), ("", 12, "Học kì I"), ("", 9, ALL_LETTERS),
                              ("", 9, "Học kì I")):
        pdf.set_font("noto", style, size)
        assert page.measure(text) == pdf.get_string_width(text)  # the same, kept or measured again
    assert page.measure("Học kì I") != page.measure("Học kì II")
    assert len(render._widths) == 3


def test_record_is_attached_as_hocba_json(records, tmp_path):
    for rec in records:
        pdf = render_pdf(rec)
        assert extract_record(pdf) == rec.model_dump_json(by_alias=True).encode()
        assert "hocba.json" in poppler("pdfdetach", pdf, tmp_path, "-list")


def test_an_empty_signature_field_per_role_exists_before_signing(records, tmp_path):
    pdf = render_pdf(records[0])
    boxes = signature_boxes(pdf)
    assert list(boxes) == list(SIGNING_ROLES)
    assert all(b.box[2] - b.box[0] > 100 and b.box[3] - b.box[1] > 40 for b in boxes.values())
    assert poppler("pdfsig", pdf, tmp_path).count("The signature form field is not signed.") == 3
    assert list(signature_boxes(render_pdf(records[0], ("homeroom_teacher", "principal")))) == [
        "homeroom_teacher", "principal"]


def test_three_signatures_in_order_accepted_by_pdfsig_and_pyhanko(records, keys, signed, tmp_path):
    # Each batch signed two documents concurrently; the order of the results follows the requests.
    assert [extract_record(pdf) for pdf in signed] == [r.model_dump_json(by_alias=True).encode() for r in records]
    for rec, pdf in zip(records, signed):
        out = poppler("pdfsig", pdf, tmp_path)
        assert out.count("Signature Validation: Signature is Valid.") == 3, out
        assert "Signature #3:" in out and "Signature #4:" not in out
        assert out.count("ETSI.CAdES.detached") == 3 and "Total document signed" in out
        assert rec.signatories.homeroom_teacher_name in out

        report = asyncio.run(verify_pdf(pdf, load_certs(keys[1])))
        assert report.ok, report
        assert report.fields == list(SIGNING_ROLES)
        assert [s.signer for s in report.signatures] == [
            identity_for(rec, role).name for role in SIGNING_ROLES]
        assert all(s.pades_level == "B-B" and s.intact and s.valid and s.trusted for s in report.signatures)
        assert [s.coverage for s in report.signatures] == ["ENTIRE_REVISION", "ENTIRE_REVISION", "ENTIRE_FILE"]
        # The stamps' font is embedded too: every font in the signed file is.
        fonts = poppler("pdffonts", pdf, tmp_path).splitlines()[2:]
        assert len(fonts) == 5 and all(" yes yes yes " in line for line in fonts)


async def test_signing_without_an_executor_runs_in_a_thread(records, keys):
    rec = records[1]
    pdf = render_pdf(rec, ("homeroom_teacher", "principal"))
    local = signer(keys[0])
    await local.open()
    for role in ("homeroom_teacher", "principal"):
        [pdf] = await local.sign([request_for(rec, pdf, role)])
    report = await verify_pdf(pdf, load_certs(keys[1]))
    assert report.ok and report.fields == ["homeroom_teacher", "principal"]


async def test_untrusted_root_and_changed_bytes_are_not_ok(keys, signed, tmp_path):
    pdf = signed[0]
    other_root = pki.create_root(tmp_path / "other", name="Some Other Root")
    untrusted = await verify_pdf(pdf, load_certs(other_root))
    assert not untrusted.ok
    assert all(s.intact and s.valid and not s.trusted for s in untrusted.signatures)

    # One byte inside the attached record, which every signature covers.
    at = pdf.index(b"stream", pdf.index(b"/EmbeddedFile")) + 20
    tampered = pdf[:at] + bytes([pdf[at] ^ 0x01]) + pdf[at + 1:]
    report = await verify_pdf(tampered, load_certs(keys[1]))
    assert not report.ok
    assert report.error or not any(s.intact for s in report.signatures)


async def test_a_pdf_without_signatures_is_not_ok(records, keys):
    report = await verify_pdf(render_pdf(records[0]), load_certs(keys[1]))
    assert not report.ok and report.signatures == []


async def test_open_fails_fast_with_a_clear_reason(keys, tmp_path):
    with pytest.raises(PluginError, match=r"cannot open .*\.p12: wrong password"):
        await signer(keys[0], password="wrong").open()
    with pytest.raises(PluginError, match="does not exist"):
        await signer(tmp_path / "nowhere").open()
    (tmp_path / "empty").mkdir()
    with pytest.raises(PluginError, match="no .p12 key files"):
        await signer(tmp_path / "empty").open()


async def test_expired_certificate_is_refused_before_signing(records, tmp_path):
    rec = records[0]
    teacher = identity_for(rec, "homeroom_teacher")
    pki.issue(tmp_path, [teacher], PASSWORD, expired=True)
    submitted = []

    class Watching(ThreadPoolExecutor):
        def submit(self, fn, /, *args, **kwargs):
            submitted.append(fn)
            return super().submit(fn, *args, **kwargs)

    with Watching(max_workers=1) as executor:
        local = signer(tmp_path, executor)
        await local.open()
        with pytest.raises(SigningError, match=r"homeroom_teacher .* expired on .* renew it"):
            await local.sign([request_for(rec, render_pdf(rec), "homeroom_teacher")])
    assert submitted == []


async def test_unknown_identity_names_the_role_and_key_until_its_key_is_issued(records, tmp_path):
    rec = records[0]
    pki.ensure_pki(tmp_path, [identity_for(rec, "homeroom_teacher")], PASSWORD)
    stranger = SigningIdentity("principal", "Người Lạ", "01001001", "099999999999")
    local = signer(tmp_path)
    await local.open()
    request = SignRequest(pdf=render_pdf(rec), field_name="principal", identity=stranger)
    with pytest.raises(SigningError, match=r"no key for principal Người Lạ \(key 099999999999\); "
                                           r"expected .*099999999999\.p12"):
        await local.sign([request])
    # A key issued while the signer runs is found without a restart.
    pki.issue(tmp_path, [stranger], PASSWORD)
    [pdf] = await local.sign([request])
    report = await verify_pdf(pdf, load_certs(tmp_path / pki.ROOT_CERT))
    assert report.ok and report.signatures[0].signer == "Người Lạ"


async def test_each_key_is_read_once_where_it_signs_and_again_when_its_file_is_replaced(records, tmp_path):
    rec = records[0]
    teacher, principal = identity_for(rec, "homeroom_teacher"), identity_for(rec, "principal")
    pki.ensure_pki(tmp_path, [teacher], PASSWORD)
    pki.issue(tmp_path, [principal], PASSWORD)
    submitted = []

    class Watching(ThreadPoolExecutor):
        def submit(self, fn, /, *args, **kwargs):
            submitted.append(getattr(fn, "__name__", ""))
            return super().submit(fn, *args, **kwargs)

    pdf = render_pdf(rec)
    with Watching(max_workers=2) as executor:
        local = signer(tmp_path, executor)
        await local.open()  # reads one key file itself, to prove the password
        opened = [p.stem for p in tmp_path.glob("*.p12")]
        other = principal if sorted(opened)[0] == teacher.key else teacher
        submitted.clear()
        # Two signatures for a key not read yet, at once: the file is opened once, in the executor.
        await asyncio.gather(local.sign([request_for(rec, pdf, other.role)]),
                             local.certificates(other), local.sign([request_for(rec, pdf, other.role)]))
        assert submitted.count("_load_job") == 1 and submitted.count("_sign_job") == 2
        before = await local.certificates(other)
        submitted.clear()
        await local.sign([request_for(rec, pdf, other.role)])
        assert "_load_job" not in submitted  # kept
        # A renewed certificate written over the file is picked up without a restart.
        pki.issue(tmp_path, [other], PASSWORD, overwrite=True)
        [signed] = await local.sign([request_for(rec, pdf, other.role)])
        after = await local.certificates(other)
        assert submitted.count("_load_job") == 1 and after[0] != before[0]
    report = await verify_pdf(signed, load_certs(tmp_path / pki.ROOT_CERT))
    assert report.ok and report.signatures[0].certificate == after[0]


def test_a_person_without_a_personal_id_is_never_given_the_seal_key():
    data = transcript(0)
    data.update(record_id="R9", event="NEW", version=1, updated_at="2025-06-01T08:00:00")
    data["signatories"]["principal_personal_id"] = None
    with pytest.raises(SigningError, match="signatories.principal_personal_id: missing"):
        identity_for(parse_transcript(data), "principal")


async def test_a_stamp_with_glyphs_seen_before_reuses_their_subset(records, keys, tmp_path):
    # Subsetting the stamp font was half of a signature's CPU; a school's stamps repeat their
    # text but for the time, so the subset made once serves again (hub.documents.pades).
    from hub.documents import pades

    rec = records[1]
    local = signer(keys[0])
    await local.open()
    [first] = await local.sign([request_for(rec, render_pdf(rec), "principal")])
    kept = dict(pades._subsets)
    assert kept
    [second] = await local.sign([request_for(rec, render_pdf(rec), "principal")])
    assert pades._subsets == kept  # nothing subset again: the same glyphs, whatever the time
    for pdf in (first, second):
        out = poppler("pdfsig", pdf, tmp_path)
        assert "Signature Validation: Signature is Valid." in out, out
        fonts = poppler("pdffonts", pdf, tmp_path).splitlines()[2:]
        assert len(fonts) == 3 and all(" yes yes yes " in line for line in fonts)
