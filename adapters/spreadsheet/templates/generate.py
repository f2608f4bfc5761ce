"""Write the spreadsheet adapter's templates and examples from its column set.

    python -m adapters.spreadsheet.templates.generate

The column set lives in ``adapters/spreadsheet/adapter.py``; these files are derived from it,
and ``tests/test_spreadsheet.py`` fails when a shipped template no longer matches it.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from openpyxl import Workbook
from openpyxl.styles import Alignment, Font, PatternFill
from openpyxl.utils import get_column_letter

from adapters.spreadsheet.adapter import (
    ROW_NUMBER,
    iter_rows,
    template_columns,
    to_central,
)
from hub import invalid_transcript, transcript

HERE = Path(__file__).resolve().parent
EXAMPLES = HERE.parent / "examples"
TEMPLATES = {"primary": "mau_hoc_ba_tieu_hoc", "secondary": "mau_hoc_ba_trung_hoc"}
ROWS_WITH_TEXT_FORMAT = 1000     # cells pre-formatted as Text, so Excel keeps leading zeros


def write_xlsx(path: Path, level: str, rows: list[dict[str, str]] = ()) -> None:
    """A workbook: the sheet to fill (header + ``rows``) and a Hướng dẫn sheet with each column's rule."""
    columns = template_columns(level)
    book = Workbook()
    sheet = book.active
    sheet.title = "Học bạ"
    sheet.append([header for header, _, _ in columns])
    bold, fill = Font(bold=True), PatternFill("solid", fgColor="DDEBF7")
    for cell in sheet[1]:
        cell.font, cell.fill = bold, fill
        cell.alignment = Alignment(wrap_text=True, vertical="top")
    text_columns = {i for i, (_, _, is_text) in enumerate(columns, start=1) if is_text}
    for number, row in enumerate(rows, start=2):
        for i, (header, _, _) in enumerate(columns, start=1):
            sheet.cell(number, i, row.get(header, "") or None)
    for i in text_columns:
        for number in range(2, max(len(rows) + 2, ROWS_WITH_TEXT_FORMAT)):
            sheet.cell(number, i).number_format = "@"
    for i, (header, _, _) in enumerate(columns, start=1):
        sheet.column_dimensions[get_column_letter(i)].width = max(10, min(32, len(header) + 2))
    sheet.freeze_panes = "E2"
    guide = book.create_sheet("Hướng dẫn")
    guide.append(["Cột", "Cách ghi", "Định dạng"])
    for cell in guide[1]:
        cell.font = bold
    for header, note, is_text in columns:
        guide.append([header, note, "Text (giữ số 0 ở đầu)" if is_text else ""])
    guide.column_dimensions["A"].width = 42
    guide.column_dimensions["B"].width = 60
    book.save(path)


def write_csv(path: Path, level: str, rows: list[dict[str, str]] = ()) -> None:
    """CSV UTF-8 with a BOM (what Excel's "CSV UTF-8" writes and reads back with Vietnamese intact)."""
    headers = [header for header, _, _ in template_columns(level)]
    with path.open("w", encoding="utf-8-sig", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(headers)
        for row in rows:
            writer.writerow([row.get(h, "") for h in headers])


def main() -> None:
    for level, stem in TEMPLATES.items():
        write_xlsx(HERE / f"{stem}.xlsx", level)
        write_csv(HERE / f"{stem}.csv", level)
    # Examples: a primary class as CSV, a secondary one as XLSX, one row payload as fetch stores it.
    primary = [transcript(i, seed=11) for i in range(0, 12, 4)]
    secondary = [transcript(i, seed=11) for i in range(3, 15, 4)]
    broken, _, _ = invalid_transcript(12, seed=11, kind="personal_id")  # a fourth student
    write_csv(EXAMPLES / "lop_tieu_hoc.csv", "primary", list(iter_rows(primary + [broken])))
    write_xlsx(EXAMPLES / "lop_trung_hoc.xlsx", "secondary", list(iter_rows(secondary)))
    row = next(iter_rows(primary))
    row.pop(ROW_NUMBER)
    payload = {k: row[k] for k in sorted(row)}
    to_central(payload)  # the example must map
    (EXAMPLES / "record.json").write_text(json.dumps(payload, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
