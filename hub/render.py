"""Render a transcript as the PDF a person reads, a machine reads, and signers sign.

The page follows the layout a Vietnamese school recognises (national motto, *HỌC BẠ*, the
student, the results table, qualities/competencies or learning/conduct, promotion, awards,
the issue line and one signature block per role). Text is set in Noto Sans, embedded and
subset, so every Vietnamese glyph renders and extracts back exactly. The central-format
record is embedded as ``hocba.json`` (``AFRelationship /Data``), so the signatures cover the
very data that is delivered, and an empty signature field exists for every role before the
first signature: a later signature must only fill a field, never add one.

Speed: the Noto Sans file is a 2 MB variable font. fpdf2 parses it on every ``add_font`` and
subsets the whole variable font on every ``output``; instancing a bold weight through fpdf2
costs seconds. Here the font is reduced once per process (Latin + Vietnamese, static regular
and bold instances) and each document gets a clone of the parsed font with its own subset
state, so a document pays only for the glyphs it uses.
"""

from __future__ import annotations

import copy
import datetime as dt
import io
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import fontpkg_noto_sans
from fontTools import subset as ftsubset
from fontTools import ttLib
from fontTools.varLib import instancer
from fpdf import FPDF
from fpdf.fonts import FontFace, SubsetMap, TTFFont
from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter
from pyhanko.sign.fields import SigFieldSpec, append_signature_field

from hub.contracts import SIGNING_ROLES
from hub.records import (
    GENERAL_COMPETENCIES,
    QUALITIES,
    Gender,
    PrimaryTranscript,
    SchoolLevel,
    SecondaryTranscript,
)

__all__ = [
    "ATTACHMENT_NAME", "FONT_FILE", "ROLE_LABELS", "ROLE_TITLES", "SignatureBox",
    "font_bytes", "load_fonts", "render_pdf", "signature_boxes",
]

FONT_FILE = fontpkg_noto_sans.ROOT / "files" / "NotoSans[wdth,wght].ttf"
ATTACHMENT_NAME = "hocba.json"

ROLE_TITLES = {
    "homeroom_teacher": "GIÁO VIÊN CHỦ NHIỆM",
    "principal": "HIỆU TRƯỞNG",
    "school_seal": "XÁC NHẬN CỦA NHÀ TRƯỜNG",
}
"""Heading of each role's signature block."""

ROLE_LABELS = {
    "homeroom_teacher": "Giáo viên chủ nhiệm",
    "principal": "Hiệu trưởng",
    "school_seal": "Nhà trường",
}
"""Each role in running text (the signature stamp names the role with it)."""

PRIMARY_LEVELS = {"T": "Hoàn thành tốt", "H": "Hoàn thành", "C": "Chưa hoàn thành"}
QUALITY_LEVELS = {"T": "Tốt", "Đ": "Đạt", "C": "Cần cố gắng"}
SECONDARY_LEVELS = {"T": "Tốt", "K": "Khá", "Đ": "Đạt", "CĐ": "Chưa đạt"}
COMMENT_RESULTS = {"Đ": "Đạt", "CĐ": "Chưa đạt"}
QUALITY_NAMES = {
    "yeu_nuoc": "Yêu nước", "nhan_ai": "Nhân ái", "cham_chi": "Chăm chỉ",
    "trung_thuc": "Trung thực", "trach_nhiem": "Trách nhiệm",
}
COMPETENCY_NAMES = {
    "tu_chu_tu_hoc": "Tự chủ và tự học",
    "giao_tiep_hop_tac": "Giao tiếp và hợp tác",
    "giai_quyet_van_de_sang_tao": "Giải quyết vấn đề và sáng tạo",
    # Subject-specific competencies (Thông tư 27, năng lực đặc thù).
    "ngon_ngu": "Ngôn ngữ", "tinh_toan": "Tính toán", "khoa_hoc": "Khoa học",
    "cong_nghe": "Công nghệ", "tin_hoc": "Tin học", "tham_my": "Thẩm mỹ", "the_chat": "Thể chất",
}
LEVEL_NAMES = {
    SchoolLevel.PRIMARY: "TIỂU HỌC",
    SchoolLevel.LOWER_SECONDARY: "TRUNG HỌC CƠ SỞ",
    SchoolLevel.UPPER_SECONDARY: "TRUNG HỌC PHỔ THÔNG",
}
GENDERS = {Gender.MALE: "Nam", Gender.FEMALE: "Nữ", Gender.UNKNOWN: "Không rõ"}


# --- fonts --------------------------------------------------------------------------------------

# What a transcript can contain: Latin with every Vietnamese letter, combining marks, the
# punctuation and symbols Vietnamese text uses. Greek, Cyrillic and the rest of Noto Sans
# would only make every per-document subset slower.
_COVERAGE = [(0x20, 0x24F), (0x2B0, 0x36F), (0x1E00, 0x1EFF), (0x2000, 0x206F),
             (0x20A0, 0x20CF), (0x2100, 0x2122), (0x2190, 0x2199), (0x2212, 0x2212),
             (0x2264, 0x2265), (0x25A0, 0x25CF)]
_FAMILY = "noto"


@dataclass(frozen=True)
class _FontSet:
    data: dict[str, bytes]          # fpdf2 style ("" or "B") → static TrueType font
    parsed: dict[str, TTFFont]      # fpdf2 style → parsed once, cloned per document


_fonts: _FontSet | None = None
_fonts_lock = threading.Lock()


def _reduce_font() -> dict[str, bytes]:
    font = ttLib.TTFont(FONT_FILE, recalcTimestamp=False)
    unicodes = [cp for cp in font.getBestCmap() if any(a <= cp <= b for a, b in _COVERAGE)]
    options = ftsubset.Options(notdef_outline=True, recommended_glyphs=True, name_IDs=["*"])
    # Layout tables only serve shaping, which neither fpdf2 (shaping off) nor NFC text needs.
    options.drop_tables += ["GSUB", "GPOS", "GDEF"]
    subsetter = ftsubset.Subsetter(options)
    subsetter.populate(unicodes=unicodes)
    subsetter.subset(font)
    out = {}
    for style, weight in (("", 400), ("B", 700)):
        static = instancer.instantiateVariableFont(font, {"wght": weight, "wdth": 100}, static=True)
        buffer = io.BytesIO()
        static.save(buffer)
        out[style] = buffer.getvalue()
    return out


def _font_set() -> _FontSet:
    global _fonts
    if _fonts is None:
        with _fonts_lock:
            if _fonts is None:
                data = _reduce_font()
                host = FPDF()
                parsed = {style: TTFFont(host, io.BytesIO(blob), _FAMILY + style, style)
                          for style, blob in data.items()}
                _fonts = _FontSet(data, parsed)
    return _fonts


def load_fonts() -> None:
    """Prepare the fonts now (≈1 s once per process) rather than in the first render.

    Call it from a worker-pool initializer so no request pays the start-up cost.
    """
    _font_set()


def font_bytes(bold: bool = False) -> bytes:
    """The static Noto Sans instance (Latin + Vietnamese) the transcript is set in, as TTF bytes."""
    return _font_set().data["B" if bold else ""]


def _add_fonts(pdf: FPDF) -> None:
    # fpdf2's output() subsets the font's fontTools object in place and closes it, and keeps
    # the used glyphs in ``subset``: those are per-document state. Everything else (cmap,
    # widths, descriptor) is read-only after parsing and is shared.
    fonts = _font_set()
    for style, template in fonts.parsed.items():
        font = copy.copy(template)
        font.i = len(pdf.fonts) + 1
        font.ttfont = ttLib.TTFont(io.BytesIO(fonts.data[style]), recalcTimestamp=False, lazy=True)
        font.cw = template.cw.copy()  # a defaultdict: reading an unknown char writes to it
        font.missing_glyphs = []
        font.biggest_size_pt = 0
        font.subset = SubsetMap(font)
        pdf.fonts[_FAMILY + style] = font
