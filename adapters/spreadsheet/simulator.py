"""A school with no API: it drops its class sheets into the watched folder.

``start()`` creates a folder and writes the seeded transcripts into it as the school-portal
templates (primary classes as CSV, secondary ones as XLSX), so the demo and the conformance
kit exercise the real file path: settle, read, report, file away.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from adapters.spreadsheet.adapter import row_from_central
from adapters.spreadsheet.templates.generate import write_csv, write_xlsx
from hub import FolderSimulator, invalid_transcript, transcript


class SpreadsheetSimulator(FolderSimulator):
    """Writes ``records`` valid and ``invalid`` defective transcripts as sheets, one per school level."""
    folder_prefix = "hocba-sheets-"

    def __init__(self, *, records: int = 0, invalid: int = 0, seed: int = 0, directory: Path | None = None):
        super().__init__(records=records, invalid=invalid, seed=seed, directory=directory)
        self.defects: dict[str, tuple[str, str]] = {}

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        await super().start(host, port)
        records = [transcript(i, self.seed) for i in range(self.records)]
        for i in range(self.invalid):
            record, kind, field = invalid_transcript(i, self.seed)
            # A defective row must still be a distinct student, so it is not taken for a duplicate.
            record["student"]["student_code"] += f"X{i}"
            records.append(record)
            self.defects[f"{record['school_code']}/{record['student']['student_code']}/{record['school_year']}"] = (
                kind, field)
        for level, writer, suffix in (("primary", write_csv, "csv"), ("secondary", write_xlsx, "xlsx")):
            rows = [row_from_central(r) for r in records if ("qualities" in r) == (level == "primary")]
            if rows:
                writer(self.directory / f"hoc_ba_{level}_{self.seed}.{suffix}", level, rows)
        return str(self.directory)

    def adapter_settings(self) -> dict[str, Any]:
        # The files are complete when start() returns: nothing to wait for.
        return {"directory": str(self.directory), "settle_seconds": 0}
