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
state. The font program a document embeds is made once per process too: the subset of every
letter Vietnamese is written with (``_REPERTOIRE``), which holds what almost every transcript
uses, so fpdf2 no longer subsets a font per document (≈40% of rendering).
"""

from __future__ import annotations

import copy
import datetime as dt
import functools
import gc
import hashlib
import html
import io
import os
import threading
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fontpkg_noto_sans
from fontTools import subset as ftsubset
from fontTools import ttLib
from fontTools.varLib import instancer
from fpdf import FPDF
from fpdf.fonts import SubsetMap, TTFFont
from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter
from pyhanko.pdf_utils.reader import PdfFileReader
from pyhanko.sign.fields import (
    FieldMDPAction,
    FieldMDPSpec,
    MDPPerm,
    SigFieldSpec,
    append_signature_field,
    enumerate_sig_fields,
)

from hub.catalogue import LEVEL_PROGRAMME_NAMES, is_final_grade
from hub.contracts import SIGNING_STAGES
from hub.records import (
    GENERAL_COMPETENCIES,
    QUALITIES,
    VIETNAM_TIME,
    Gender,
    PrimaryTranscript,
    SchoolLevel,
    SecondaryTranscript,
)

__all__ = [
    "ATTACHMENT_NAME", "FONT_FILE", "PDF_ROLES", "XML_ATTACHMENT_NAME", "ROLE_LABELS", "ROLE_TITLES", "SignatureBox",
    "cached_fonts", "font_bytes", "load_fonts", "render_pdf", "signature_boxes",
]

FONT_FILE = fontpkg_noto_sans.ROOT / "files" / "NotoSans[wdth,wght].ttf"
ATTACHMENT_NAME = "hocba.json"
XML_ATTACHMENT_NAME = "hocba.xml"
PDF_ROLES = ("homeroom_teacher", "principal", "school_seal")
"""The roles that sign the PDF (subject teachers sign their subjects in the XML only)."""

ROLE_TITLES = {
    "homeroom_teacher": "GIÁO VIÊN CHỦ NHIỆM",
    "principal": "HIỆU TRƯỞNG",
    "school_seal": "XÁC NHẬN CỦA NHÀ TRƯỜNG",
}
"""Heading of each role's signature block."""

ROLE_LABELS = {
    "subject_teacher": "Giáo viên bộ môn",
    "homeroom_teacher": "Giáo viên chủ nhiệm",
    "principal": "Hiệu trưởng",
    "school_seal": "Nhà trường",
}
"""Each role in running text (the signature stamp names the role with it)."""

PRIMARY_LEVELS = {"T": "Hoàn thành tốt", "H": "Hoàn thành", "C": "Chưa hoàn thành"}
QUALITY_LEVELS = {"T": "Tốt", "Đ": "Đạt", "C": "Cần cố gắng"}
SECONDARY_LEVELS = {"T": "Tốt", "K": "Khá", "Đ": "Đạt", "CĐ": "Chưa đạt"}
OVERALL_RESULTS = {"HTXS": "Hoàn thành xuất sắc", "HTT": "Hoàn thành tốt", "HT": "Hoàn thành",
                   "CHT": "Chưa hoàn thành"}
QUALITY_NAMES = {
    "yeu_nuoc": "Yêu nước", "nhan_ai": "Nhân ái", "cham_chi": "Chăm chỉ",
    "trung_thuc": "Trung thực", "trach_nhiem": "Trách nhiệm",
}
COMPETENCY_NAMES = {
    # Keys in the form's order (the specific competencies are sorted by it).
    "tu_chu_tu_hoc": "Tự chủ và tự học",
    "giao_tiep_hop_tac": "Giao tiếp và hợp tác",
    "giai_quyet_van_de_sang_tao": "Giải quyết vấn đề và sáng tạo",
    # Subject-specific competencies (Thông tư 27, năng lực đặc thù).
    "ngon_ngu": "Ngôn ngữ", "tinh_toan": "Tính toán", "khoa_hoc": "Khoa học",
    "cong_nghe": "Công nghệ", "tin_hoc": "Tin học", "tham_my": "Thẩm mĩ", "the_chat": "Thể chất",
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


def _vietnamese_letters() -> str:
    """Every letter of the Vietnamese alphabet, both cases, each tone (NFC, as records are)."""
    vowels = "aăâeêioôơuưy"
    tones = ("", "\u0300", "\u0301", "\u0303", "\u0309", "\u0323")  # ngang huyền sắc ngã hỏi nặng
    letters = {unicodedata.normalize("NFC", v + t) for v in vowels + vowels.upper() for t in tones}
    return "".join(sorted(letters)) + "đĐ"


_REPERTOIRE = "".join(chr(c) for c in range(0x20, 0x7F)) + _vietnamese_letters()
"""The characters of the font program every document embeds (``_KeptProgram``): printable ASCII
and every Vietnamese letter. A document using a character beyond them (a foreign name's ñ, a
typographic dash) embeds the repertoire and those glyphs, made once per such set."""
_EXTENDED_KEPT = 32
"""Programs kept for documents beyond the repertoire (style and extra glyphs → program)."""


@dataclass(frozen=True)
class _Program:
    """A subset font program as a PDF embeds it, and the glyph ids of its glyphs by name."""
    data: bytes
    glyph_ids: dict[str, int]


def _subset_program(font_data: bytes, glyph_names: Iterable[str]) -> _Program:
    font = ttLib.TTFont(io.BytesIO(font_data), lazy=True, recalcTimestamp=False, recalcBBoxes=False)
    # fpdf2's own subsetting options for an embedded font (the reduced font has no layout tables
    # or bitmaps left for its extra drop list to remove); post format 3: a PDF needs no glyph names.
    subsetter = ftsubset.Subsetter(ftsubset.Options(notdef_outline=True, recommended_glyphs=True))
    subsetter.populate(glyphs=glyph_names)
    subsetter.subset(font)
    glyph_ids = {name: gid for gid, name in enumerate(font.getGlyphOrder())}
    buffer = io.BytesIO()
    font.save(buffer)
    return _Program(buffer.getvalue(), glyph_ids)


@dataclass(frozen=True)
class _FontSet:
    data: dict[str, bytes]          # fpdf2 style ("" or "B") → static TrueType font
    parsed: dict[str, TTFFont]      # fpdf2 style → parsed once, cloned per document
    kept: dict[str, _Program]       # fpdf2 style → the repertoire's program, embedded by every document
    repertoire: dict[str, frozenset[str]]  # fpdf2 style → the glyph names in ``kept``


_fonts: _FontSet | None = None
_fonts_lock = threading.Lock()


def _reduce_font() -> dict[str, bytes]:
    font = ttLib.TTFont(FONT_FILE, recalcTimestamp=False)
    unicodes = [cp for cp in font.getBestCmap() if any(a <= cp <= b for a, b in _COVERAGE)]
    # Glyph names kept (post format 2): without them fontTools rebuilds every name from the
    # cmap each time a document's copy is loaded.
    options = ftsubset.Options(notdef_outline=True, recommended_glyphs=True, name_IDs=["*"],
                               glyph_names=True)
    # Layout tables only serve shaping, which neither fpdf2 (shaping off) nor NFC text needs.
    options.drop_tables += ["GSUB", "GPOS", "GDEF"]
    subsetter = ftsubset.Subsetter(options)
    subsetter.populate(unicodes=unicodes)
    subsetter.subset(font)
    out = {}
    for style, weight in (("", 400), ("B", 700)):
        static = instancer.instantiateVariableFont(font, {"wght": weight, "wdth": 100}, static=True)
        # One Windows Unicode BMP cmap is all a PDF font program needs; each extra subtable is
        # decoded again for every document.
        cmap = static["cmap"]
        cmap.tables = [t for t in cmap.tables if (t.platformID, t.platEncID) == (3, 1)]
        # Both instances would keep the variable font's one name; a PDF (and PDF/A validators)
        # must tell the regular font from the bold one by name.
        _name_instance(static["name"], "Bold" if style else "Regular")
        buffer = io.BytesIO()
        static.save(buffer)
        out[style] = buffer.getvalue()
    return out


def _name_instance(table: Any, weight: str) -> None:
    for name_id in (16, 17, 21, 22, 25):  # typographic and variations names: not a static font's
        table.removeNames(nameID=name_id)
    for name_id, value in ((1, "Noto Sans"), (2, weight), (4, f"Noto Sans {weight}"),
                           (6, f"NotoSans-{weight}")):
        table.removeNames(nameID=name_id)
        table.setName(value, name_id, 3, 1, 0x409)


def _font_set(prepared: dict[str, bytes] | None = None) -> _FontSet:
    global _fonts
    if _fonts is None:
        with _fonts_lock:
            if _fonts is None:
                data = dict(prepared) if prepared else _reduce_font()
                host = FPDF()
                parsed = {style: TTFFont(host, io.BytesIO(blob), _FAMILY + style, style)
                          for style, blob in data.items()}
                repertoire = {style: frozenset(font.cmap[ord(c)] for c in _REPERTOIRE if ord(c) in font.cmap)
                              for style, font in parsed.items()}
                kept = {style: _subset_program(data[style], names) for style, names in repertoire.items()}
                _fonts = _FontSet(data, parsed, kept, repertoire)
                # Instancing leaves ~40 000 dead objects; collect them now rather than in the
                # middle of some later render.
                gc.collect()
    return _fonts


def load_fonts(prepared: dict[str, bytes] | None = None) -> dict[str, bytes]:
    """Prepare the fonts now rather than in the first render; return them as font programs.

    Reducing Noto Sans takes ≈1.5 s once per process. A worker pool (spawned processes start
    empty) skips it by receiving the main process's result::

        ProcessPoolExecutor(n, initializer=load_fonts, initargs=(load_fonts(),))
    """
    return dict(_font_set(prepared).data)


def cached_fonts(directory: Path) -> dict[str, bytes]:
    """``load_fonts()``, with the reduced font programs kept in ``directory`` between starts.

    Reducing Noto Sans is ≈1.5 s of a hub's start-up; the result depends only on the font file
    and the fontTools version, which name the cached files. A damaged or missing cache is
    rebuilt; the files are written whole (temporary file, then rename).
    """
    import fontTools

    stat = FONT_FILE.stat()
    key = hashlib.sha256(f"{stat.st_size}:{stat.st_mtime_ns}:{fontTools.version}:{sorted(_COVERAGE)}"
                         .encode()).hexdigest()[:16]
    paths = {style: directory / f"noto-sans-{key}{'-bold' if style else ''}.ttf" for style in ("", "B")}
    try:
        data = {style: path.read_bytes() for style, path in paths.items()}
        for blob in data.values():
            ttLib.TTFont(io.BytesIO(blob), lazy=True)  # a truncated file fails here
    except Exception:  # no cache yet, or an unreadable one: prepare the fonts and keep them
        data = load_fonts()
        directory.mkdir(parents=True, exist_ok=True)
        for style, path in paths.items():
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_bytes(data[style])
            tmp.replace(path)
        return data
    # Not parsed for fpdf2 here: the hub process renders nothing (its workers do, and parse
    # them in their initializer); ``font_bytes`` serves these programs as they are.
    global _font_data
    _font_data = data
    return dict(data)


_font_data: dict[str, bytes] | None = None


def font_bytes(bold: bool = False) -> bytes:
    """The static Noto Sans instance (Latin + Vietnamese) the transcript is set in, as TTF bytes."""
    if _fonts is None and _font_data is not None:
        return _font_data["B" if bold else ""]
    return _font_set().data["B" if bold else ""]


@functools.lru_cache(maxsize=_EXTENDED_KEPT)
def _extended_program(style: str, extra: frozenset[str]) -> _Program:
    fonts = _font_set()
    return _subset_program(fonts.data[style], fonts.repertoire[style] | extra)


class _KeptProgram(ttLib.TTFont):
    """The fontTools font fpdf2 subsets and embeds on output, standing in for a kept program.

    fpdf2's output() runs fontTools' subsetter on the document's font, asks it the glyph id of
    each used glyph, and saves it as the embedded program. Subsetting was ≈40% of rendering and
    its result depends only on the glyphs: this font has no tables (the subsetter has nothing
    to do), answers glyph ids from the program made once per process, and saves that program.
    Relies on fpdf2's output calling ``getGlyphID`` and ``save`` on ``TTFFont.ttfont`` (checked
    on fpdf2 2.8.9).
    """

    def __init__(self, style: str, font: TTFFont, glyph_order: list[str]):
        super().__init__()
        # The subsetter checks the glyphs it is asked for against the font's glyph order.
        self.setGlyphOrder(glyph_order)
        self._style = style
        self._font = font
        self._program: _Program | None = None

    def _kept(self) -> _Program:
        if self._program is None:  # the glyphs used are known only once the layout is done
            fonts = _font_set()
            extra = frozenset(self._font.subset.get_all_glyph_names()) - fonts.repertoire[self._style]
            self._program = (_extended_program(self._style, extra) if extra
                             else fonts.kept[self._style])
        return self._program

    def getGlyphID(self, glyphName: str) -> int:  # noqa: N802, N803 - fontTools' names
        return self._kept().glyph_ids[glyphName]

    def save(self, file: Any, reorderTables: bool | None = True) -> None:  # noqa: N803
        file.write(self._kept().data)


def _add_fonts(pdf: FPDF) -> None:
    # fpdf2's output() subsets the font's fontTools object in place and closes it, and keeps
    # the used glyphs in ``subset``: those are per-document state. Everything else (cmap,
    # widths, descriptor) is read-only after parsing and is shared. This reaches into
    # TTFFont's attributes (checked on fpdf2 2.8.9); test_render_sign proves two documents
    # rendered in turn do not share glyphs.
    fonts = _font_set()
    for style, template in fonts.parsed.items():
        font = copy.copy(template)
        font.i = len(pdf.fonts) + 1
        font.ttfont = _KeptProgram(style, font, template.ttfont.getGlyphOrder()[:])
        font.cw = template.cw.copy()  # a defaultdict: reading an unknown char writes to it
        font.missing_glyphs = []
        font.biggest_size_pt = 0
        font.subset = SubsetMap(font)
        pdf.fonts[_FAMILY + style] = font


# --- layout -------------------------------------------------------------------------------------

_MARGIN = 15.0
_SIG_BOX_H = 22.0          # mm: the visible signature field
_SIG_SECTION_H = 50.0      # mm: issue line + headings + field + name, kept on one page
# PDF/A-3 (ISO 19005-3) level B: the archival profile that allows the attached record. fpdf2
# then refuses unembedded fonts, writes no Info dictionary (the XMP carries the metadata) and
# adds an sRGB output intent from the ICC profile it ships (sRGB2014.icc).
_COMPLIANCE = "PDF/A-3B"


def _xmp(title: str, author: str, subject: str, when: dt.datetime) -> str:
    """The XMP packet body: Dublin Core, the dates, the producer and the PDF/A identification."""
    esc = lambda text: html.escape(text, quote=True)  # noqa: E731 - four uses, one line each
    stamp = when.isoformat(timespec="seconds")
    return (
        '<x:xmpmeta xmlns:x="adobe:ns:meta/">\n'
        ' <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">\n'
        '  <rdf:Description rdf:about=""\n'
        '    xmlns:dc="http://purl.org/dc/elements/1.1/"\n'
        '    xmlns:xmp="http://ns.adobe.com/xap/1.0/"\n'
        '    xmlns:pdf="http://ns.adobe.com/pdf/1.3/"\n'
        '    xmlns:pdfaid="http://www.aiim.org/pdfa/ns/id/"\n'
        f'    xmp:CreatorTool="hocba-hub" xmp:CreateDate="{stamp}" xmp:ModifyDate="{stamp}"\n'
        f'    xmp:MetadataDate="{stamp}" pdf:Producer="{esc("fpdf2 (hocba-hub)")}"\n'
        '    pdfaid:part="3" pdfaid:conformance="B">\n'
        f'   <dc:title><rdf:Alt><rdf:li xml:lang="x-default">{esc(title)}</rdf:li></rdf:Alt></dc:title>\n'
        f'   <dc:creator><rdf:Seq><rdf:li>{esc(author)}</rdf:li></rdf:Seq></dc:creator>\n'
        f'   <dc:description><rdf:Alt><rdf:li xml:lang="x-default">{esc(subject)}</rdf:li></rdf:Alt></dc:description>\n'
        '   <dc:language><rdf:Bag><rdf:li>vi</rdf:li></rdf:Bag></dc:language>\n'
        '  </rdf:Description>\n'
        ' </rdf:RDF>\n'
        '</x:xmpmeta>'
    )


@dataclass(frozen=True)
class SignatureBox:
    """Where a role's signature field sits: 0-based page and ``(x1, y1, x2, y2)`` in PDF points."""
    page: int
    box: tuple[int, int, int, int]


def _date(value: dt.date | None) -> str:
    return value.strftime("%d/%m/%Y") if value else ""


def _score(value: float | int | None) -> str:
    if value is None:
        return ""
    if isinstance(value, int):
        return str(value)
    return f"{value:.1f}".replace(".", ",")  # Vietnamese decimal comma


def _yes_no(value: bool | None) -> str:
    return {True: "Có", False: "Không", None: ""}[value]


_WIDTHS_KEPT = 8192
_widths: dict[tuple[str, float, str], float] = {}
"""Text widths measured before (style, size, text → mm). Every document is set in the same
fonts, and most of its texts (labels, headings, subjects, levels) are every document's."""


class _Page:
    """A few drawing helpers over one FPDF document, all in millimetres."""

    def __init__(self, pdf: FPDF):
        self.pdf = pdf
        self.width = pdf.epw

    def measure(self, text: str) -> float:
        """``get_string_width`` in the current font, which costs a text layout per call."""
        pdf = self.pdf
        key = (pdf.font_family + pdf.font_style, pdf.font_size_pt, text)
        width = _widths.get(key)
        if width is None:
            width = pdf.get_string_width(text)
            if len(_widths) >= _WIDTHS_KEPT:  # the oldest goes (dicts keep insertion order)
                _widths.pop(next(iter(_widths), None), None)
            _widths[key] = width
        return width

    def text(self, text: str, *, size: float = 10, bold: bool = False, align: str = "L",
             w: float | None = None, x: float | None = None, h: float | None = None) -> None:
        pdf = self.pdf
        pdf.set_font(_FAMILY, "B" if bold else "", size)
        if x is not None:
            pdf.set_x(x)
        w = w if w is not None else self.width
        # multi_cell runs the full line breaker; most lines fit, and cell() is much cheaper.
        draw = pdf.cell if self.measure(text) <= w - 2 * pdf.c_margin else pdf.multi_cell
        draw(w, h or size * 0.5, text, align=align, new_x="LMARGIN", new_y="NEXT")

    def fields(self, pairs: Sequence[tuple[str, str]], *, size: float = 10) -> None:
        """One line of ``label: value`` pairs spread over equal columns, values in bold."""
        pdf = self.pdf
        col = self.width / len(pairs)
        line_h = size * 0.55
        y = bottom = pdf.get_y()
        for i, (label, value) in enumerate(pairs):
            pdf.set_xy(pdf.l_margin + i * col, y)
            pdf.set_font(_FAMILY, "", size)
            label_w = self.measure(label + ": ") + 0.5
            pdf.cell(label_w, line_h, label + ": ")
            pdf.set_font(_FAMILY, "B", size)
            if self.measure(value) <= col - label_w - 2 * pdf.c_margin:
                pdf.cell(col - label_w, line_h, value)
                bottom = max(bottom, y + line_h)
            else:  # long lists (awards, certificates) wrap inside their column
                pdf.multi_cell(col - label_w, line_h, value, new_x="LEFT", new_y="NEXT")
                bottom = max(bottom, pdf.get_y())
        pdf.set_xy(pdf.l_margin, bottom)

    def heading(self, text: str) -> None:
        self.pdf.ln(2)
        self.text(text, size=10.5, bold=True)
        self.pdf.ln(0.5)

    def table(self, widths: Sequence[float], head: Sequence[str], rows: Sequence[Sequence[str]],
              *, align: Sequence[str] | None = None, size: float = 8.5) -> None:
        """A bordered table; the heading row repeats after a page break."""
        # fpdf2's table() lays every cell out twice with its full line breaker (≈30 ms for a
        # transcript); cells here are short, so measuring first and wrapping only what
        # overflows costs a tenth of that.
        pdf = self.pdf
        pdf.set_line_width(0.2)
        self.row(widths, head, ["C"] * len(head), size, bold=True)
        for values in rows:
            self.row(widths, values, align or ["C"] * len(values), size, repeat=(widths, head))

    def row(self, widths: Sequence[float], values: Sequence[str], align: Sequence[str],
             size: float, *, bold: bool = False,
             repeat: tuple[Sequence[float], Sequence[str]] | None = None) -> None:
        pdf = self.pdf
        pad, line_h = 1.0, size * 0.42
        pdf.set_font(_FAMILY, "B" if bold else "", size)
        cells = []
        for w, text in zip(widths, values):
            # cell() keeps its own inner margin: a text that only fits without it overflows.
            if self.measure(text) <= w - 2 * pad - 2 * pdf.c_margin:
                cells.append([text])
            else:
                cells.append(pdf.multi_cell(w - 2 * pad, line_h, text, dry_run=True, output="LINES"))
        height = max(len(lines) for lines in cells) * line_h + 2 * pad
        if pdf.will_page_break(height):
            pdf.add_page()
            if repeat:
                self.row(repeat[0], repeat[1], ["C"] * len(repeat[1]), size, bold=True)
                pdf.set_font(_FAMILY, "B" if bold else "", size)
        x, y = pdf.l_margin, pdf.get_y()
        if bold:
            pdf.set_fill_color(235, 235, 235)
        for w, lines, how in zip(widths, cells, align):
            pdf.rect(x, y, w, height, style="DF" if bold else "D")
            top = y + (height - len(lines) * line_h) / 2
            for i, line in enumerate(lines):
                pdf.set_xy(x + pad, top + i * line_h)
                pdf.cell(w - 2 * pad, line_h, line, align=how[0])
            x += w
        pdf.set_xy(pdf.l_margin, y + height)


def _issue_date(value: dt.date) -> str:
    """A date in Vietnamese administrative style (Nghị định 30/2020/NĐ-CP): ``ngày 31 tháng 5
    năm 2025``; a leading zero only for days below 10 and for months 1 and 2."""
    month = f"{value.month:02d}" if value.month <= 2 else str(value.month)
    return f"ngày {value.day:02d} tháng {month} năm {value.year}"


def _merged(page: _Page, widths: Sequence[float], head: Sequence[str],
            rows: Sequence[Sequence[str]], comment: str, *, size: float = 8.5) -> None:
    """A table whose last column is one cell spanning every row (the forms' *Nhận xét*)."""
    pdf = page.pdf
    pad, line_h = 1.0, size * 0.42
    pdf.set_font(_FAMILY, "", size)
    comment_w = widths[-1] - 2 * pad
    lines = (pdf.multi_cell(comment_w, line_h, comment, dry_run=True, output="LINES")
             if comment else [""])
    row_h = line_h + 2 * pad
    height = max(row_h * len(rows), len(lines) * line_h + 2 * pad)
    row_h = height / max(len(rows), 1)
    if pdf.will_page_break(height + row_h + 2):
        pdf.add_page()
    page.row(widths, head, ["C"] * len(head), size, bold=True)
    pdf.set_font(_FAMILY, "", size)
    top = pdf.get_y()
    for r, values in enumerate(rows):
        x, y = pdf.l_margin, top + r * row_h
        for w, text, how in zip(widths[:-1], values, "LC"):
            pdf.rect(x, y, w, row_h)
            pdf.set_xy(x + pad, y + (row_h - line_h) / 2)
            pdf.cell(w - 2 * pad, line_h, text, align=how)
            x += w
    x = pdf.l_margin + sum(widths[:-1])
    pdf.rect(x, top, widths[-1], height)
    for i, line in enumerate(lines):
        pdf.set_xy(x + pad, top + pad + i * line_h)
        pdf.cell(comment_w, line_h, line)
    pdf.set_xy(pdf.l_margin, top + height)


def _motto(page: _Page, record: PrimaryTranscript | SecondaryTranscript) -> None:
    pdf = page.pdf
    top = pdf.get_y()
    left_w = 78.0
    page.text(record.school_name.upper(), size=10, bold=True, align="C", w=left_w)
    page.text(f"Mã trường: {record.school_code}", size=9, align="C", w=left_w)
    left_bottom = pdf.get_y()
    right_x, right_w = pdf.l_margin + left_w + 2, page.width - left_w - 2
    pdf.set_y(top)
    page.text("CỘNG HÒA XÃ HỘI CHỦ NGHĨA VIỆT NAM", size=10, bold=True, align="C", w=right_w, x=right_x)
    page.text("Độc lập - Tự do - Hạnh phúc", size=10.5, bold=True, align="C", w=right_w, x=right_x)
    motto_w = page.measure("Độc lập - Tự do - Hạnh phúc")
    mid = right_x + right_w / 2
    pdf.set_line_width(0.3)
    pdf.line(mid - motto_w / 2, pdf.get_y(), mid + motto_w / 2, pdf.get_y())
    pdf.set_y(max(left_bottom, pdf.get_y()) + 4)


def _particulars(page: _Page, record: PrimaryTranscript | SecondaryTranscript) -> None:
    """The first page: who the student is and the school years (both forms open with it).

    Order and labels follow the Thông tư 27 and 22 transcripts' particulars page as the
    circulars describe it (no published copy of the form could be consulted here): the
    student, date and place of birth, ethnicity, nationality, residence, parents or guardian,
    then the principal's confirmation and the school history (*quá trình học tập*) with the
    register number (*số đăng bộ*).
    """
    pdf = page.pdf
    s = record.student
    _motto(page, record)
    pdf.ln(6)
    page.text("HỌC BẠ", size=24, bold=True, align="C", h=11)
    page.text(LEVEL_NAMES[record.level], size=14, bold=True, align="C", h=8)
    page.text(f"Mã học bạ: {record.transcript_id}", size=9.5, align="C", h=6)
    pdf.ln(6)
    page.fields([("Họ và tên học sinh", s.full_name), ("Giới tính", GENDERS[s.gender])])
    page.fields([("Ngày, tháng, năm sinh", _date(s.birth_date)), ("Dân tộc", s.ethnicity or "")])
    page.fields([("Nơi sinh", s.birth_place or ""), ("Quốc tịch", s.nationality or "")])
    page.fields([("Nơi ở hiện nay", s.residence or "")])
    page.fields([("Mã học sinh", s.student_code), ("Số định danh cá nhân", s.personal_id or "")])
    page.fields([("Họ và tên cha", s.father_name or "")])
    page.fields([("Họ và tên mẹ", s.mother_name or "")])
    page.fields([("Người giám hộ (nếu có)", s.guardian_name or "")])
    if s.policy_group:
        page.fields([("Đối tượng chính sách", s.policy_group)])
    if s.disability_not_assessed:
        page.fields([("Khuyết tật", "không đánh giá các nội dung học sinh không đáp ứng được")])

    pdf.ln(4)
    half = page.width / 2
    x = pdf.l_margin + half
    page.text(f"{record.signatories.issue_place}, {_issue_date(record.signatories.issue_date)}",
              size=10, align="C", w=half, x=x)
    page.text(record.signatories.principal_title.upper(), size=10, bold=True, align="C", w=half, x=x)
    page.text("(Ký, ghi rõ họ tên và đóng dấu)", size=8.5, align="C", w=half, x=x)
    # The principal signs the whole transcript once; the signature itself is on the year's page.
    page.text("(chữ ký số ở phần phê duyệt cuối học bạ)", size=8, align="C", w=half, x=x)
    pdf.ln(5)
    page.text(record.signatories.principal_name, size=10, bold=True, align="C", w=half, x=x)

    pdf.ln(6)
    page.text("QUÁ TRÌNH HỌC TẬP", size=11, bold=True, align="C", h=7)
    rows = [(h.school_year, h.class_name, h.school_name, h.registration_number or "", _date(h.enrolled_on))
            for h in record.history if h.school_year != record.school_year]
    rows.append((record.school_year, record.class_name, record.school_name,
                 s.registration_number or "", ""))
    page.table((26, 18, 82, 26, 28),
               ("Năm học", "Lớp", "Tên trường", "Số đăng bộ", "Ngày nhập học/ chuyển đến"),
               rows, align="CCLCC", size=9)


def _year_heading(page: _Page, record: PrimaryTranscript | SecondaryTranscript) -> None:
    page.pdf.add_page()
    page.fields([("Họ và tên", record.student.full_name), ("Lớp", record.class_name),
                 ("Năm học", record.school_year)])
    page.fields([("Trường", record.school_name)])
    page.pdf.ln(1)


def _completion(record: PrimaryTranscript | SecondaryTranscript) -> str:
    """Promotion, or completion of the level in its final grade (grade 5, 9, 12): the final
    grade's transcript never speaks of going up a class."""
    programme = LEVEL_PROGRAMME_NAMES[record.level.value]
    if is_final_grade(record.level.value, record.grade):
        if isinstance(record, PrimaryTranscript):
            done = record.completed_primary_program
            done = record.completed_grade_program if done is None else done
        else:
            # A vendor that states no completion sends the year's pass as ``promoted``.
            done = record.completed_level_program
            done = record.promoted if done is None else done
        return f"{'Hoàn thành' if done else 'Chưa hoàn thành'} chương trình {programme}"
    if isinstance(record, PrimaryTranscript):
        grade = (f"{'Hoàn thành' if record.completed_grade_program else 'Chưa hoàn thành'} "
                 f"chương trình lớp {record.grade}")
        return f"{grade}; {'được' if record.promoted else 'chưa được'} lên lớp {record.grade + 1}"
    return f"{'Được' if record.promoted else 'Không được'} lên lớp {record.grade + 1}"


def _primary(page: _Page, record: PrimaryTranscript) -> None:
    """The year's page of the Thông tư 27 transcript (art. 7-9 and the form's sections 1-6)."""
    page.heading("1. Các môn học và hoạt động giáo dục")
    rows = [(s.subject_name, s.year_level.value, _score(s.year_score), s.comment or "")
            for s in record.subjects]
    page.table((50, 20, 20, 90), ("Môn học và hoạt động giáo dục", "Mức đạt được", "Điểm KTĐK",
                                  "Nhận xét"), rows, align="LCCL")
    page.text("Mức đạt được: T - Hoàn thành tốt; H - Hoàn thành; C - Chưa hoàn thành. "
              "Điểm KTĐK: điểm bài kiểm tra định kì cuối năm học.", size=8)

    page.heading("2. Những phẩm chất chủ yếu")
    rows = [(QUALITY_NAMES.get(k, k), record.qualities[k].value) for k in QUALITIES if k in record.qualities]
    _merged(page, (50, 20, 110), ("Phẩm chất", "Mức đạt được", "Nhận xét"), rows,
            record.qualities_comment or "")

    page.heading("3. Những năng lực cốt lõi")
    general = [(COMPETENCY_NAMES[k], record.competencies[k].value) for k in GENERAL_COMPETENCIES
               if k in record.competencies]
    _merged(page, (50, 20, 110), ("Năng lực chung", "Mức đạt được", "Nhận xét"), general,
            record.general_competencies_comment or "")
    specific = [(COMPETENCY_NAMES.get(k, k), v.value) for k, v in record.competencies.items()
                if k not in GENERAL_COMPETENCIES]
    specific.sort(key=lambda row: list(COMPETENCY_NAMES.values()).index(row[0])
                  if row[0] in COMPETENCY_NAMES.values() else len(COMPETENCY_NAMES))
    if specific:
        page.pdf.ln(1)
        _merged(page, (50, 20, 110), ("Năng lực đặc thù", "Mức đạt được", "Nhận xét"), specific,
                record.subject_competencies_comment or "")
    page.text("Mức đạt được: T - Tốt; Đ - Đạt; C - Cần cố gắng.", size=8)

    page.heading("4. Đánh giá kết quả giáo dục")
    page.text(OVERALL_RESULTS[record.overall_result.value] if record.overall_result else
              "(không ghi)", size=10, bold=True)
    page.heading("5. Khen thưởng")
    page.text("; ".join(record.awards) or "Không", size=10)
    page.heading("6. Hoàn thành chương trình lớp học/chương trình tiểu học")
    page.text(_completion(record), size=10, bold=True)


def _secondary(page: _Page, record: SecondaryTranscript) -> None:
    """The year's page of the Thông tư 22 transcript (art. 5-15).

    Columns per subject as the circular's transcript form lists them: the term and whole-year
    averages, or Đ/CĐ for the subjects assessed by comment, the re-assessed result where there
    was one, and the subject teacher who confirms the row.
    """
    page.heading("1. Kết quả học tập các môn học")
    rows = []
    for s in record.subjects:
        if s.is_comment_only:
            values = [c.value if c else "" for c in (s.term1_comment, s.term2_comment, s.year_comment)]
            again = s.reassessment_comment.value if s.reassessment_comment else ""
        else:
            values = [_score(v) for v in (s.term1_average, s.term2_average, s.year_average)]
            again = _score(s.reassessment_average)
        rows.append((s.subject_name, *values, again, s.teacher_name or ""))
    page.table((56, 15, 15, 15, 22, 57),
               ("Môn học/Hoạt động giáo dục", "Học kì I", "Học kì II", "Cả năm",
                "Điểm hoặc mức đánh giá lại (nếu có)", "Giáo viên môn học"),
               rows, align="LCCCCL")
    page.text("Môn học đánh giá bằng nhận xét: Đ - Đạt, CĐ - Chưa đạt. Điểm trung bình môn học "
              "có một chữ số thập phân.", size=8)

    page.heading("2. Kết quả rèn luyện và kết quả học tập")
    rows = [(label, SECONDARY_LEVELS[getattr(record.conduct, p).value] if getattr(record.conduct, p) else "",
             SECONDARY_LEVELS[getattr(record.learning, p).value] if getattr(record.learning, p) else "")
            for label, p in (("Học kì I", "term1"), ("Học kì II", "term2"), ("Cả năm", "year"))]
    if record.learning_reassessed or record.conduct_after_summer:
        rows.append(("Sau đánh giá lại, rèn luyện trong kì nghỉ hè",
                     SECONDARY_LEVELS[record.conduct_after_summer.value] if record.conduct_after_summer else "",
                     SECONDARY_LEVELS[record.learning_reassessed.value] if record.learning_reassessed else ""))
    page.table((80, 50, 50), ("Học kì", "Kết quả rèn luyện", "Kết quả học tập"), rows, align="LCC")
    page.fields([("Số ngày nghỉ học cả năm học", str(record.days_absent))])
    if record.conduct_after_summer:
        page.fields([("Rèn luyện trong kì nghỉ hè", SECONDARY_LEVELS[record.conduct_after_summer.value])])
    if record.learning_reassessed:
        page.fields([("Kết quả học tập sau đánh giá lại", SECONDARY_LEVELS[record.learning_reassessed.value])])
    page.fields([("Kết quả", _completion(record))])
    page.fields([("Khen thưởng", "; ".join(record.awards) or "Không")])
    certificates = []
    for c in record.certificates:
        details = ", ".join(p for p in (c.issuer, _date(c.issued_on)) if p)
        certificates.append(f"{c.name} ({details})" if details else c.name)
    page.fields([("Chứng chỉ", "; ".join(certificates) or "Không")])


def _homeroom_comment(page: _Page, record: PrimaryTranscript | SecondaryTranscript) -> None:
    if page.pdf.will_page_break(18):  # a heading never ends a page without its text
        page.pdf.add_page()
    page.heading("NHẬN XÉT CỦA GIÁO VIÊN CHỦ NHIỆM" if isinstance(record, SecondaryTranscript)
                 else "7. Nhận xét của giáo viên chủ nhiệm")
    page.text(record.homeroom_comment or "(không ghi)", size=9.5)


def _signatures(page: _Page, record: PrimaryTranscript | SecondaryTranscript,
                roles: Sequence[str]) -> dict[str, SignatureBox]:
    pdf = page.pdf
    if pdf.will_page_break(_SIG_SECTION_H):
        pdf.add_page()
    pdf.ln(4)
    half = page.width / 2
    page.text(f"{record.signatories.issue_place}, {_issue_date(record.signatories.issue_date)}",
              size=10, align="C", w=half, x=pdf.l_margin + half)
    pdf.ln(2)
    top = pdf.get_y()
    col = page.width / max(len(roles), 1)
    names = {
        "homeroom_teacher": record.signatories.homeroom_teacher_name,
        "principal": record.signatories.principal_name,
        "school_seal": record.school_name,
    }
    titles = {**ROLE_TITLES, "principal": record.signatories.principal_title.upper(),
              "school_seal": "NHÀ TRƯỜNG"}
    overtitles = {"homeroom_teacher": "Xác nhận của", "principal": "Phê duyệt của",
                  "school_seal": "Ký phát hành học bạ"}
    hints = {"homeroom_teacher": "(Ký và ghi rõ họ tên)", "principal": "(Ký, ghi rõ họ tên và đóng dấu)",
             "school_seal": "(Ký số của nhà trường)"}
    boxes = {}
    to_pt = 72 / 25.4
    for i, role in enumerate(roles):
        x = pdf.l_margin + i * col
        pdf.set_y(top)
        page.text(overtitles.get(role, "Phát hành"), size=9, align="C", w=col, x=x)
        page.text(titles.get(role, role), size=10, bold=True, align="C", w=col, x=x)
        page.text(hints.get(role, "(Ký số, ghi rõ họ tên)"), size=8.5, align="C", w=col, x=x)
        box_w = min(col - 4, 58.0)
        bx, by = x + (col - box_w) / 2, pdf.get_y() + 1.5
        pdf.set_draw_color(190, 190, 190)
        pdf.set_line_width(0.2)
        pdf.rect(bx, by, box_w, _SIG_BOX_H)
        pdf.set_draw_color(0, 0, 0)
        pdf.set_y(by + _SIG_BOX_H + 1.5)
        page.text(names.get(role, ""), size=10, bold=True, align="C", w=col, x=x)
        boxes[role] = SignatureBox(
            page=pdf.page - 1,
            box=(round(bx * to_pt), round((pdf.h - by - _SIG_BOX_H) * to_pt),
                 round((bx + box_w) * to_pt), round((pdf.h - by) * to_pt)),
        )
    return boxes


def _attached_data(page: _Page, record: PrimaryTranscript | SecondaryTranscript) -> None:
    """Every signed value the form itself has no place for, so that everything signed is printed."""
    pdf = page.pdf
    rows: list[tuple[str, str]] = [
        ("Mã định danh bản ghi; sự kiện; phiên bản", f"{record.record_id}; {record.event.value}; {record.version}"),
        ("Thời gian cập nhật", record.updated_at.isoformat(timespec="seconds")),
        ("Mã sở; mã trường; cấp học; khối", f"{record.department_code}; {record.school_code}; "
                                           f"{record.level.value}; {record.grade}"),
        ("Trạng thái thông tin học bạ", record.status),
        ("Số định danh giáo viên chủ nhiệm", record.signatories.homeroom_teacher_personal_id or ""),
        ("Số định danh hiệu trưởng", record.signatories.principal_personal_id or ""),
    ]
    if isinstance(record, PrimaryTranscript):
        # The form keeps the year-end results; the term-I ones are signed too.
        rows += [(f"{s.subject_name}: cuối học kì I",
                  "; ".join(p for p in ((s.term1_level.value if s.term1_level else ""),
                                        (f"điểm KTĐK {s.term1_score}" if s.term1_score is not None else "")) if p))
                 for s in record.subjects if s.term1_level or s.term1_score is not None]
        rows.append(("Hoàn thành chương trình lớp học", _yes_no(record.completed_grade_program)))
    # ``promoted`` in a final grade means the year is passed: that transcript never speaks of
    # going up a class.
    final = is_final_grade(record.level.value, record.grade)
    rows.append(("Được công nhận hoàn thành năm học" if final else "Được lên lớp", _yes_no(record.promoted)))
    height = 16 + (len(rows) + 1) * 5.0
    if pdf.will_page_break(height):  # the section stays on one page
        pdf.add_page()
    pdf.ln(6)
    page.text("DỮ LIỆU KÈM THEO HỌC BẠ", size=10, bold=True)
    page.text(f"Các dữ liệu dưới đây thuộc bản ghi {ATTACHMENT_NAME} đính kèm và được ký cùng học bạ; "
              "biểu mẫu không có chỗ ghi riêng.", size=8)
    page.table((80, 100), ("Dữ liệu", "Giá trị"), rows, align="LL", size=8)


def _verification(page: _Page, code: str, url: str | None) -> None:
    """The code anyone can check the transcript with, and its QR code (the public page's URL).

    Drawn with the page content, before any signature field is filled: the signatures cover it."""
    from hub.documents.qr import draw_qr
    from hub.store.issuance import format_code

    pdf = page.pdf
    size = 28.0
    if pdf.will_page_break(size + 10):
        pdf.add_page()
    pdf.ln(4)
    top = pdf.get_y()
    text_x = pdf.l_margin
    if url:
        draw_qr(pdf, url, pdf.l_margin, top, size)
        text_x += size + 4
    width = page.width - (text_x - pdf.l_margin)
    pdf.set_y(top + 2)
    page.text("XÁC THỰC HỌC BẠ", size=10, bold=True, x=text_x, w=width)
    page.text(f"Mã xác thực: {format_code(code)}", size=10, bold=True, x=text_x, w=width)
    page.text("Quét mã QR hoặc nhập mã xác thực tại trang xác thực học bạ số của Sở GD&ĐT để kiểm tra "
              "chữ ký số, người ký, thời điểm ký và bản học bạ này còn hiệu lực hay không."
              + (f" Địa chỉ: {url}" if url else ""), size=8.5, x=text_x, w=width)
    pdf.set_y(max(pdf.get_y(), top + size))


def _layout(record: PrimaryTranscript | SecondaryTranscript,
            roles: Sequence[str], xml: bytes | None = None,
            verification: tuple[str, str | None] | None = None) -> tuple[bytes, dict[str, SignatureBox]]:
    pdf = FPDF(format="A4", unit="mm", enforce_compliance=_COMPLIANCE)
    pdf.set_margins(_MARGIN, 12, _MARGIN)
    pdf.set_auto_page_break(True, margin=12)
    _add_fonts(pdf)
    name = record.student.full_name
    updated = record.updated_at if record.updated_at.tzinfo else record.updated_at.replace(tzinfo=VIETNAM_TIME)
    pdf.set_lang("vi")
    title = f"Học bạ - {name} - {record.class_name} - {record.school_year}"
    pdf.set_title(title)
    pdf.set_author(record.school_name)
    pdf.set_subject(f"Học bạ số {record.transcript_id}")
    pdf.set_creator("hocba-hub")
    pdf.set_creation_date(updated)
    # fpdf2 would write the XMP's modification time as "now": the same record must give the
    # same bytes, so the metadata is set here from the record.
    pdf.set_xmp_metadata(_xmp(title, record.school_name, f"Học bạ số {record.transcript_id}", updated))
    pdf.add_page()
    page = _Page(pdf)
    _particulars(page, record)
    _year_heading(page, record)
    if isinstance(record, PrimaryTranscript):
        _primary(page, record)
    else:
        _secondary(page, record)
    _homeroom_comment(page, record)
    boxes = _signatures(page, record, roles)
    _attached_data(page, record)
    if verification is not None:
        _verification(page, *verification)
    pdf.embed_file(
        bytes=record.model_dump_json(by_alias=True).encode(),
        basename=ATTACHMENT_NAME,
        mime_type="application/json",
        associated_file_relationship="Data",
        modification_date=updated,
        desc="Dữ liệu học bạ theo định dạng trung tâm",
        compress=True,
    )
    if xml is not None:
        # The XML học bạ as it stands before this PDF's first signature: as built from the
        # record, or as it arrived signed by teachers in the school's software. The signatures
        # of this PDF cover exactly that; a signed PDF cannot take a new attachment, so the
        # XML's later signatures travel in the XML document delivered beside it.
        pdf.embed_file(
            bytes=xml, basename=XML_ATTACHMENT_NAME, mime_type="application/xml",
            associated_file_relationship="Source", modification_date=updated,
            desc="Học bạ số định dạng XML (dữ liệu được ký)", compress=True,
        )
    return bytes(pdf.output()), boxes


def render_pdf(record: PrimaryTranscript | SecondaryTranscript,
               roles: Sequence[str] = PDF_ROLES, *, xml: bytes | None = None,
               verification: tuple[str, str | None] | None = None) -> bytes:
    """Render ``record`` as a PDF with ``hocba.json`` attached and an empty field per role.

    ``verification``: the version's code and the public verification URL that carries it, printed
    with a QR code of the URL (``hub.store.issuance``) under everything the signatures cover.

    Field names are the role strings (``homeroom_teacher``, ``principal``, ``school_seal``);
    signing fills them in ``roles`` order. Thread-safe; CPU-bound (≈30 ms), so the hub runs it
    in its worker pool.
    """
    unknown = [r for r in roles if r not in SIGNING_STAGES]
    if unknown:
        raise ValueError(f"unknown signing role(s) {', '.join(unknown)}; expected {SIGNING_STAGES}")
    body, boxes = _layout(record, [r for r in roles if r in PDF_ROLES], xml, verification)
    # fpdf2 creates at most one /Sig field, and only as part of its own signing; pyHanko adds
    # all of them in one incremental update (≈2 ms).
    writer = IncrementalPdfFileWriter(io.BytesIO(body))
    fields = [r for r in roles if r in PDF_ROLES]
    for role in fields:
        lock = {}
        if role == fields[-1]:
            # The last signature (the school's issuing one) locks the document: its field carries
            # a lock dictionary (every field, DocMDP P=1 "no changes"), so a change after it other
            # than validation data and document timestamps invalidates it.
            lock = {"field_mdp_spec": FieldMDPSpec(FieldMDPAction.ALL), "doc_mdp_update_value": MDPPerm.NO_CHANGES}
        spec = SigFieldSpec(sig_field_name=role, on_page=boxes[role].page, box=boxes[role].box, **lock)
        append_signature_field(writer, spec)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def signature_boxes(pdf: bytes) -> dict[str, SignatureBox]:
    """The signature fields of a rendered transcript: field name → page and rectangle."""
    reader = PdfFileReader(io.BytesIO(pdf))
    pages = {}
    for index in range(reader.root["/Pages"]["/Count"]):
        pages[reader.find_page_for_modification(index)[0].idnum] = index
    out = {}
    for name, _value, ref in enumerate_sig_fields(reader):
        field = ref.get_object()
        page_ref = field.get_value_as_reference("/P")
        rect = [round(float(v)) for v in field["/Rect"]]
        out[name] = SignatureBox(page=pages.get(page_ref.idnum, 0), box=tuple(rect))
    return out
