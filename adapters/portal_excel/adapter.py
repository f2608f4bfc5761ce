"""The school portal's import workbooks, written into a folder (destination): see CONTRACT.md.

Every delivery updates the adapter's ledger (a SQLite file in the folder: which version of each
record is held, and the record itself) and rewrites the workbook of the record's class from it,
under one write transaction, so concurrent deliveries for one class cannot interleave their
files. A workbook is written to a temporary file beside it and renamed over it: a reader (the
school, the admin download, a sync tool) sees the old file or the new one, never half of one.
The ledger commits only after the file is in place, so a crash in between leaves a file the
next delivery of the same version rewrites (the outbox re-sends what it has no receipt for).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import os
import re
import sqlite3
import tempfile
import unicodedata
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError

from hub import (
    VIETNAM_TIME,
    Adapter,
    Delivery,
    DeliveryError,
    ExportFile,
    Health,
    PluginContext,
    PluginError,
    PluginSettings,
    Receipt,
    parse_transcript,
)

from adapters.portal_excel.layout import workbook

XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
LEDGER = ".hocba-portal-excel.sqlite3"
_YEAR = re.compile(r"^[0-9]{4}-[0-9]{4}$")
_SCHOOL = re.compile(r"^[0-9]{2,12}$")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS held (
    record_id   TEXT PRIMARY KEY,
    version     INTEGER NOT NULL,
    digest      TEXT NOT NULL,
    event       TEXT NOT NULL,
    school_year TEXT NOT NULL,
    school_code TEXT NOT NULL,
    class_name  TEXT NOT NULL,
    level       TEXT NOT NULL,
    record      TEXT            -- the central record (snake_case JSON); NULL once cancelled
);
CREATE INDEX IF NOT EXISTS held_class ON held (school_year, school_code, class_name);
"""


class PortalExcelSettings(PluginSettings):
    """The ``portal_excel`` destination's YAML section."""
    directory: Path = Field(description="Folder the workbooks are written into (must exist): "
                                        "<school year>/<school code>/<school code>_<class>_<school year>.xlsx")
    create_directory: bool = Field(
        default=False, description="Create the folder at start-up if it is missing (a first run); otherwise a "
                                   "missing folder is an error, since it usually means a typo or an unmounted share")


def class_file(school_year: str, school_code: str, class_name: str) -> Path:
    """The workbook's path inside the folder. A class name is free text ("6/1", "10 Toán"): it is
    reduced to letters, digits, ``-`` and ``_``, with a short hash of the real name when anything
    was changed, so two classes never share a file and no name can leave the folder."""
    name = unicodedata.normalize("NFC", class_name)
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)[:40] or "lop"
    if safe != name:
        safe += "-" + hashlib.sha256(name.encode()).hexdigest()[:6]
    return Path(school_year) / school_code / f"{school_code}_{safe}_{school_year}.xlsx"


class PortalExcelAdapter(Adapter):
    """Writes one import workbook per school, class and school year; the latest version of each
    transcript is its student's row, and a cancelled transcript has none."""
    name = "portal_excel"
    Settings = PortalExcelSettings
    simulator = "adapters.portal_excel.simulator:PortalExcelSimulator"

    settings: PortalExcelSettings

    def __init__(self, settings: PortalExcelSettings, context: PluginContext):
        super().__init__(settings, context)
        self.directory = Path(settings.directory) if settings.directory else Path(".")

    # --- life -------------------------------------------------------------------------------

    async def open(self) -> None:
        if self.settings.create_directory:
            self.directory.mkdir(parents=True, exist_ok=True)
        problem = self._folder_problem()
        if problem:
            raise PluginError(problem)
        await asyncio.to_thread(lambda: self._ledger().close())  # creates the ledger's tables

    async def check(self) -> Health:
        problem = self._folder_problem()
        return Health(not problem, problem or f"portal_excel: writing into {self.directory}")

    def _folder_problem(self) -> str:
        # Not created: a typo or an unmounted share must not look like an empty folder.
        if not self.directory.is_dir():
            return f"portal_excel: settings.directory {self.directory} does not exist or is not a folder"
        if not os.access(self.directory, os.W_OK | os.X_OK):
            return f"portal_excel: settings.directory {self.directory} is not writable by the hub"
        return ""

    def _ledger(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.directory / LEDGER, timeout=60, isolation_level=None)
        db.row_factory = sqlite3.Row
        db.executescript(_SCHEMA)
        return db

    # --- delivery ---------------------------------------------------------------------------

    async def deliver(self, delivery: Delivery) -> Receipt:
        what = f"{delivery.record_id} v{delivery.version}"
        try:
            record = parse_transcript(delivery.record)
        except ValidationError as exc:
            raise DeliveryError(f"portal_excel: {what} is not a central record: {exc.errors()[0]['msg']}",
                                permanent=True) from None
        if record.record_id != delivery.record_id or record.version != delivery.version:
            raise DeliveryError(f"portal_excel: delivery says {what} but the record's envelope says "
                                f"{record.record_id} v{record.version}", permanent=True)
        data = record.model_dump(mode="json")
        digest = hashlib.sha256(json.dumps(data, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
        try:
            duplicate, path = await asyncio.to_thread(self._apply, delivery, data, digest)
        except OSError as exc:
            # A full disk or a share gone away: the ledger was not committed, a retry may succeed.
            raise DeliveryError(f"portal_excel: {what} not written: {exc.strerror or exc}") from None
        except sqlite3.OperationalError as exc:
            raise DeliveryError(f"portal_excel: {what} not written: ledger busy or unwritable ({exc})") from None
        return Receipt(receipt_id=f"{delivery.record_id}:v{delivery.version}",
                       received_at=dt.datetime.now(VIETNAM_TIME).isoformat(timespec="seconds"),
                       duplicate=duplicate, detail={"file": str(path)})

    def _apply(self, delivery: Delivery, data: dict[str, Any], digest: str) -> tuple[bool, Path]:
        key = (data["school_year"], data["school_code"], data["class_name"])
        db = self._ledger()
        try:
            db.execute("BEGIN IMMEDIATE")  # one writer: the class's file follows the ledger's order
            held = db.execute("SELECT * FROM held WHERE record_id = ?", (delivery.record_id,)).fetchone()
            if held is not None and (held["version"] > delivery.version
                                     or (held["version"] == delivery.version and held["digest"] != digest)):
                db.execute("ROLLBACK")
                raise DeliveryError(
                    f"portal_excel: {delivery.record_id} v{delivery.version} refused: version {held['version']} "
                    f"is held{' with other content' if held['version'] == delivery.version else ''}",
                    conflict=True, held_version=held["version"])
            duplicate = held is not None and held["version"] == delivery.version
            cancelled = delivery.event == "CANCEL"
            db.execute(
                "INSERT OR REPLACE INTO held (record_id, version, digest, event, school_year, school_code, "
                "class_name, level, record) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (delivery.record_id, delivery.version, digest, delivery.event, *key, str(data["level"]),
                 None if cancelled else json.dumps(data, ensure_ascii=False)))
            classes = {key}
            if held is not None:
                # A corrected transcript may name another class: the old class loses the row.
                classes.add((held["school_year"], held["school_code"], held["class_name"]))
            for year, school, class_name in sorted(classes):
                self._write_class(db, year, school, class_name)
            db.execute("COMMIT")
            return duplicate, class_file(*key)
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        finally:
            db.close()

    def _write_class(self, db: sqlite3.Connection, year: str, school: str, class_name: str) -> None:
        rows = db.execute("SELECT level, record FROM held WHERE school_year = ? AND school_code = ? "
                          "AND class_name = ? AND record IS NOT NULL", (year, school, class_name)).fetchall()
        target = self.directory / class_file(year, school, class_name)
        if not rows:
            # The class's last transcript was cancelled (or moved): no sheet to import.
            target.unlink(missing_ok=True)
            return
        records = [json.loads(r["record"]) for r in rows]
        # A class is one level; should records disagree, the sheet follows the first (the rest
        # still get their row, under the columns they share).
        book = workbook(records, rows[0]["level"])
        target.parent.mkdir(parents=True, exist_ok=True)
        # Dot-prefixed temporary name: folder watchers and sync tools skip it until the rename.
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as out:
                book.save(out)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_dir(target.parent)

    async def held_version(self, record_id: str) -> int | None:
        def read() -> int | None:
            db = self._ledger()
            try:
                row = db.execute("SELECT version FROM held WHERE record_id = ?", (record_id,)).fetchone()
                return row["version"] if row else None
            finally:
                db.close()
        return await asyncio.to_thread(read)

    # --- download ---------------------------------------------------------------------------

    async def export(self, school_code: str, class_name: str, school_year: str | None = None) -> ExportFile | None:
        """The class's current workbook (the latest school year it has one for, unless given)."""
        if not _SCHOOL.match(school_code) or (school_year is not None and not _YEAR.match(school_year)):
            return None

        def read() -> ExportFile | None:
            db = self._ledger()
            try:
                years = [r[0] for r in db.execute(
                    "SELECT DISTINCT school_year FROM held WHERE school_code = ? AND class_name = ? "
                    "AND record IS NOT NULL ORDER BY school_year DESC", (school_code, class_name))]
            finally:
                db.close()
            year = school_year if school_year in years else (years[0] if years and school_year is None else None)
            if year is None:
                return None
            path = class_file(year, school_code, class_name)
            try:
                content = (self.directory / path).read_bytes()
            except FileNotFoundError:
                return None
            return ExportFile(path.name, XLSX, content)
        return await asyncio.to_thread(read)


def _fsync_dir(path: Path) -> None:
    # The rename is durable only once the folder's entry is on disk.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
