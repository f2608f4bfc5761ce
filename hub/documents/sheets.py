"""Reports the hub writes as spreadsheets never hold a cell a spreadsheet program evaluates.

A value that begins with ``= + - @`` (or a tab or carriage return, which some programs skip
before looking) is a formula to Excel and LibreOffice when it is typed or imported from CSV: a
school's column header or a vendor's text could then run ``=HYPERLINK(…)`` or ``=WEBSERVICE(…)``
on the computer of whoever opens the report. In XLSX such a value is written as a text cell
with the quote prefix (shown as typed, kept text when edited); in CSV it gets a leading ``'``,
the usual defence (OWASP, "CSV injection"), which the program shows and never evaluates.
"""

from __future__ import annotations

from typing import Any

from hub.records import FORMULA_START

__all__ = ["FORMULA_CHARACTERS", "as_text_cells", "csv_text"]

FORMULA_CHARACTERS = (*FORMULA_START, "\t", "\r")


def csv_text(value: Any) -> Any:
    """``value`` as a CSV cell a spreadsheet program shows as text (non-text values unchanged)."""
    if isinstance(value, str) and value.startswith(FORMULA_CHARACTERS):
        return "'" + value
    return value


def as_text_cells(sheet: Any) -> None:
    """Make every cell of an openpyxl ``sheet`` whose text begins like a formula a text cell."""
    for row in sheet.iter_rows():
        for cell in row:
            if isinstance(cell.value, str) and cell.value.startswith(FORMULA_CHARACTERS):
                cell.data_type = "s"       # openpyxl would write "=…" as a formula
                cell.quotePrefix = True
