"""The verification QR code on a transcript's PDF, drawn as vector squares.

segno builds the symbol; it is drawn here module by module (runs of dark modules merged into one
rectangle per row) rather than embedded as an image: the page stays small, sharp at any zoom and
byte-for-byte the same for the same record, and nothing depends on an image codec. Error
correction level M survives a printed copy's creases and stains at this size.
"""

from __future__ import annotations

from typing import Any

import segno

__all__ = ["draw_qr", "qr_matrix"]

QUIET_ZONE = 4  # modules of white around the symbol, as the standard asks


def qr_matrix(data: str) -> list[list[bool]]:
    """The QR symbol of ``data`` (error correction M or better), dark modules ``True``, no quiet zone."""
    symbol = segno.make_qr(data, error="m", boost_error=True)
    return [[bool(v) for v in row] for row in symbol.matrix]


def draw_qr(pdf: Any, data: str, x: float, y: float, size: float) -> None:
    """Draw the QR code of ``data`` on ``pdf`` (an fpdf2 ``FPDF``) in a ``size`` square at
    ``(x, y)`` (the page's units), quiet zone included."""
    matrix = qr_matrix(data)
    modules = len(matrix) + 2 * QUIET_ZONE
    unit = size / modules
    pdf.set_fill_color(255, 255, 255)
    pdf.rect(x, y, size, size, style="F")
    pdf.set_fill_color(0, 0, 0)
    for r, row in enumerate(matrix):
        c = 0
        while c < len(row):
            if not row[c]:
                c += 1
                continue
            start = c
            while c < len(row) and row[c]:
                c += 1
            pdf.rect(x + (QUIET_ZONE + start) * unit, y + (QUIET_ZONE + r) * unit, (c - start) * unit, unit,
                     style="F")
