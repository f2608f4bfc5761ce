"""The rendered transcript reads as the official forms do (Thông tư 27 primary, Thông tư 22
secondary), checked with poppler's own tools, and its pages match committed reference images.

Regenerate the references after an intended layout change (then look at them):

    HOCBA_UPDATE_GOLDEN=1 python -m pytest tests/test_forms.py -k golden
"""

from __future__ import annotations

import asyncio
import codecs
import datetime as dt
import io
import os
import re
import subprocess
from pathlib import Path

import pytest
from PIL import Image, ImageChops
from pyhanko.pdf_utils.reader import PdfFileReader

from hub.catalogue import subjects_for
from hub.contracts import SIGNING_ROLES, PluginContext
from hub.documents.render import render_pdf
from hub.documents.signing import identity_for, request_for
from hub.kit import pki
from hub.kit.synthetic import transcript
from hub.records import PrimaryTranscript, SecondaryTranscript, parse_transcript
from signers.pkcs12.signer import Pkcs12Signer

GOLDEN = Path(__file__).parent / "golden"
PASSWORD = "mật-khẩu-thử"
ENVELOPE = {"event": "NEW", "version": 1, "updated_at": "2025-06-01T08:00:00"}


def make(data: dict) -> PrimaryTranscript | SecondaryTranscript:
    return parse_transcript({"record_id": f"R-{data['transcript_id']}", **ENVELOPE, **data})


def synthetic(level: str, grade: int) -> PrimaryTranscript | SecondaryTranscript:
    """The first synthetic transcript of that level and grade."""
    for i in range(400):
        data = transcript(i)
        if data["level"] == level and data["grade"] == grade:
            return make(data)
    raise AssertionError(f"no synthetic transcript for {level}/{grade}")


def text_of(pdf: bytes, tmp: Path, *pages: int) -> str:
    path = tmp / "t.pdf"
    path.write_bytes(pdf)
    first_last = ["-f", str(pages[0]), "-l", str(pages[-1])] if pages else []
    return subprocess.run(["pdftotext", "-enc", "UTF-8", *first_last, str(path), "-"],
                          capture_output=True, text=True, check=True).stdout


def test_grade_5_lists_its_own_subjects_and_no_tu_nhien_va_xa_hoi(tmp_path):
    rec = synthetic("02", 5)
    text = text_of(render_pdf(rec), tmp_path)
    assert "Khoa học" in text and "Lịch sử và Địa lí" in text and "Tin học và Công nghệ" in text
    assert "Ngoại ngữ 1" in text
    assert "Tự nhiên và Xã hội" not in text
    assert "Hoàn thành chương trình tiểu học" in text and "lên lớp" not in text


def test_grade_2_has_tu_nhien_va_xa_hoi_and_no_grade_5_subjects(tmp_path):
    text = text_of(render_pdf(synthetic("02", 2)), tmp_path)
    assert "Tự nhiên và Xã hội" in text
    assert "Lịch sử và Địa lí" not in text and "Tin học và Công nghệ" not in text
    assert "lên lớp 3" in text


def test_grade_11_has_gdqp_an_and_its_electives(tmp_path):
    rec = synthetic("04", 11)
    text = text_of(render_pdf(rec), tmp_path)
    assert "Giáo dục quốc phòng và an ninh" in text
    assert "Lịch sử và Địa lí" not in text  # the lower-secondary subject
    electives = [s.subject_name for s in rec.subjects if s.subject_code in ("DL", "GDKTPL", "VL", "HH", "SH",
                                                                             "CN", "TH", "AN", "MT")]
    assert len(electives) == 4 and all(name in text for name in electives)
    # Every subject teacher the record names is printed.
    assert all(s.teacher_name and s.teacher_name in text for s in rec.subjects)
    assert "Được lên lớp 12" in text or "Không được lên lớp 12" in text


def test_grade_12_states_completion_and_never_promotion(tmp_path):
    rec = synthetic("04", 12)
    text = text_of(render_pdf(rec), tmp_path)
    assert "lên lớp" not in text.lower()
    assert "Hoàn thành chương trình trung học phổ thông" in text


def test_a_primary_transcript_shows_its_overall_result(tmp_path):
    data = transcript(0)
    for value, words in (("HTXS", "Hoàn thành xuất sắc"), ("Hoàn thành tốt", "Hoàn thành tốt")):
        data["overall_result"] = value
        text = text_of(render_pdf(make(data)), tmp_path, 2)
        assert f"4. Đánh giá kết quả giáo dục\n{words}\n" in text


@pytest.mark.parametrize("index", range(8))
def test_every_transcript_prints_the_parents_names_it_signs(index, tmp_path):
    rec = make(transcript(index))
    text = text_of(render_pdf(rec), tmp_path)
    assert rec.student.father_name and rec.student.father_name in text
    assert rec.student.mother_name and rec.student.mother_name in text
    assert rec.student.residence in text and rec.student.birth_place in text
    assert rec.signatories.homeroom_teacher_personal_id in text  # the attached-data section


def test_dates_are_written_in_administrative_style(tmp_path):
    data = transcript(3)
    text = text_of(render_pdf(make(data)), tmp_path)
    assert "Hà Nội, ngày 31 tháng 5 năm 2025" in text and "tháng 05" not in text
    data["signatories"]["issue_date"] = "2025-02-03"
    text = text_of(render_pdf(make(data)), tmp_path)
    assert "ngày 03 tháng 02 năm 2025" in text


def test_the_first_page_is_the_particulars_page(tmp_path):
    rec = make(transcript(1))
    first = text_of(render_pdf(rec), tmp_path, 1)
    assert "HỌC BẠ" in first and "QUÁ TRÌNH HỌC TẬP" in first and "Số đăng bộ" in first
    assert rec.student.registration_number in first and "Nơi ở hiện nay" in first
    assert "Các môn học và hoạt động giáo dục" not in first  # the year's page comes after


def test_pdfinfo_reports_a_metadata_stream_and_pdfa_identification(tmp_path):
    pdf = render_pdf(make(transcript(0)))
    path = tmp_path / "m.pdf"
    path.write_bytes(pdf)
    info = subprocess.run(["pdfinfo", str(path)], capture_output=True, text=True, check=True).stdout
    assert "Metadata Stream: yes" in info
    meta = subprocess.run(["pdfinfo", "-meta", str(path)], capture_output=True, text=True, check=True).stdout
    assert 'pdfaid:part="3"' in meta and 'pdfaid:conformance="B"' in meta
    assert b"/OutputIntents" in pdf and b"/GTS_PDFA1" in pdf and b"/AFRelationship /Data" in pdf
    fonts = subprocess.run(["pdffonts", str(path)], capture_output=True, text=True, check=True).stdout
    names = [line.split()[0] for line in fonts.splitlines()[2:]]
    assert len(names) == 2 and len(set(names)) == 2, names  # regular and bold, told apart by name
    assert all(" yes yes yes " in line for line in fonts.splitlines()[2:])


def test_catalogue_grades_follow_the_programme():
    names = lambda level, grade, electives=(): {s.name for s in subjects_for(level, grade, electives)}  # noqa: E731
    assert "Tự nhiên và Xã hội" in names("02", 3) and "Tự nhiên và Xã hội" not in names("02", 4)
    assert "Ngoại ngữ 1" not in names("02", 2) and "Ngoại ngữ 1" in names("02", 3)
    assert "Giáo dục quốc phòng và an ninh" in names("04", 10, ("VL", "HH", "SH", "TH"))
    with pytest.raises(ValueError, match="4 electives"):
        subjects_for("04", 10, ("VL",))


def test_signatures_on_the_form_verify_with_pdfsig(tmp_path):
    records = [make(transcript(0)), make(transcript(3))]
    pki.ensure_pki(tmp_path, [identity_for(r, role) for r in records for role in SIGNING_ROLES], PASSWORD)

    async def sign_all() -> list[bytes]:
        signer = Pkcs12Signer(Pkcs12Signer.Settings(directory=tmp_path, password=PASSWORD),
                              PluginContext("keys", tmp_path, None))
        await signer.open()
        pdfs = [render_pdf(r) for r in records]
        for role in SIGNING_ROLES:
            pdfs = await signer.sign([request_for(r, pdf, role) for r, pdf in zip(records, pdfs)])
        return pdfs

    for pdf in asyncio.run(sign_all()):
        path = tmp_path / "s.pdf"
        path.write_bytes(pdf)
        out = subprocess.run(["pdfsig", str(path)], capture_output=True, text=True).stdout
        assert out.count("Signature Validation: Signature is Valid.") == 3, out
        _stamps_show_vietnam_time(pdf)


def _stamps_show_vietnam_time(pdf: bytes) -> None:
    """Each visible stamp's time line is the signature's own signing time, in +07:00.

    The stamp is drawn in a subset font; its words are in the appearance stream's
    ``/ActualText`` (UTF-16), which is what a reader copies and a screen reader speaks.
    """
    reader = PdfFileReader(io.BytesIO(pdf))
    assert len(reader.embedded_signatures) == 3
    for sig in reader.embedded_signatures:
        stream = sig.sig_field["/AP"]["/N"].data
        lines = [bytes(codecs.escape_decode(m)[0]).decode("utf-16")
                 for m in re.findall(rb"/ActualText \(((?:\\.|[^\\)])*)\)", stream)]
        [shown] = [line for line in lines if line.startswith("Thời gian: ")]
        assert shown.endswith(" +07:00"), shown
        when = dt.datetime.strptime(shown.removeprefix("Thời gian: ")[:-len(" +07:00")], "%d/%m/%Y %H:%M:%S")
        signed = sig.self_reported_timestamp.astimezone(dt.timezone(dt.timedelta(hours=7)))
        assert when == signed.replace(tzinfo=None, microsecond=0), (shown, signed)


# --- golden pages --------------------------------------------------------------------------------

def _fixed_primary() -> PrimaryTranscript:
    data = transcript(0)  # grade 5
    data["history"] = [{"school_year": f"{y}-{y + 1}", "class_name": f"{g}B",
                        "school_name": data["school_name"], "registration_number": "393/2020",
                        "enrolled_on": "2020-09-05" if g == 1 else None}
                       for g, y in zip(range(1, 5), range(2020, 2024))]
    return make(data)


def _fixed_secondary() -> SecondaryTranscript:
    data = transcript(3)  # grade 12
    # Re-assessment and summer training shown where they apply.
    data["subjects"][0]["reassessment_average"] = 6.5
    data["learning_reassessed"] = data["learning"]["year"]
    return make(data)


def _pages(pdf: bytes, tmp: Path) -> list[Image.Image]:
    path = tmp / "g.pdf"
    path.write_bytes(pdf)
    subprocess.run(["pdftoppm", "-r", "50", "-png", str(path), str(tmp / "page")], check=True)
    return [Image.open(p).convert("L") for p in sorted(tmp.glob("page-*.png"))]


def _difference(a: Image.Image, b: Image.Image) -> float:
    """Share of pixels whose grey level differs by more than a quarter of the range."""
    if a.size != b.size:
        return 1.0
    diff = ImageChops.difference(a, b).point(lambda v: 255 if v > 64 else 0)
    return sum(diff.histogram()[255:]) / (a.size[0] * a.size[1])


@pytest.mark.parametrize("name, build", [("primary", _fixed_primary), ("secondary", _fixed_secondary)])
def test_golden_pages(name, build, tmp_path):
    pages = _pages(render_pdf(build()), tmp_path)
    references = sorted(GOLDEN.glob(f"{name}-*.png"))
    if os.environ.get("HOCBA_UPDATE_GOLDEN"):
        GOLDEN.mkdir(exist_ok=True)
        for old in references:
            old.unlink()
        for i, page in enumerate(pages, 1):
            page.save(GOLDEN / f"{name}-{i}.png", optimize=True)
        pytest.skip("references written: look at them before committing")
    assert len(pages) == len(references), f"{len(pages)} pages, {len(references)} references"
    for page, ref in zip(pages, references):
        # Font rasterisation differs by a few pixels between poppler builds; a moved block or a
        # missing line changes far more.
        assert _difference(page, Image.open(ref).convert("L")) < 0.004, ref.name
