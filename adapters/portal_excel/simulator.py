"""The folder a school (or the Department's file share) takes the import sheets from.

There is no remote system: ``start()`` makes a temporary folder, ``adapter_settings()`` points
the adapter at it, and ``accepted()`` reads the adapter's ledger there, so the demo and the
reliability suites can ask what the destination holds as they ask any other. ``workbooks()``
opens every sheet written so far with openpyxl, as a school's spreadsheet program would.
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path
from typing import Any

from openpyxl import load_workbook

from adapters.portal_excel.adapter import LEDGER
from hub import FolderSimulator


class PortalExcelSimulator(FolderSimulator):
    """A temporary folder standing in for the share the sheets go to."""
    folder_prefix = "hocba-portal-"

    def __init__(self, *, records: int = 0, invalid: int = 0, seed: int = 0, directory: Path | None = None):
        super().__init__(records=records, invalid=invalid, seed=seed, directory=directory)
        self._held: dict[str, int] | None = None  # what the ledger said when the folder was removed

    async def stop(self) -> None:
        if self._own_directory and self.directory is not None:
            # The demo asks what was accepted after stopping everything: answer from a snapshot.
            self._held = self.accepted()
        await super().stop()

    def accepted(self) -> dict[str, int]:
        if self._held is not None:
            return dict(self._held)
        ledger = Path(self.directory or ".") / LEDGER
        if not ledger.exists():
            return {}
        db = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True)
        try:
            return dict(db.execute("SELECT record_id, version FROM held"))
        finally:
            db.close()

    def save(self, folder: Path) -> list[Path]:
        """Every workbook written, with its folders (school year, school)."""
        root = Path(self.directory or ".")
        written = []
        for path in sorted(root.rglob("*.xlsx")):
            if not path.name.startswith("."):
                target = folder / path.relative_to(root)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target)
                written.append(target)
        return written

    def workbooks(self) -> dict[str, Any]:
        """Every workbook in the folder, opened again: relative path → ``openpyxl.Workbook``."""
        root = Path(self.directory or ".")
        return {str(p.relative_to(root)): load_workbook(p) for p in sorted(root.rglob("*.xlsx"))
                if not p.name.startswith(".")}
