"""Operator surfaces with hostile or unusual input: ``hocba-hub normalize`` shows the envelope the
hub would really make (a recalled record is a CANCEL) and reads the spreadsheet adapter's files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

ROOT = Path(__file__).resolve().parent.parent


def normalize(adapter: str, path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hub.cli", "normalize", "--adapter", adapter, str(path)],
                          capture_output=True, text=True, cwd=ROOT)


@pytest.mark.parametrize("adapter, example, flag", [
    ("vnpt", "record.json", ("DaXoa",)), ("misa", "record.json", ("isDeleted",)),
    ("push", "record.json", ("deleted",)),
])
def test_a_recalled_payload_is_shown_as_a_cancel(tmp_path, adapter, example, flag):
    record = json.loads((ROOT / "adapters" / adapter / "examples" / example).read_text("utf-8"))
    assert normalize(adapter, ROOT / "adapters" / adapter / "examples" / example).stdout.count('"sukien": "NEW"') == 1
    record[flag[0]] = True
    recalled = tmp_path / example
    recalled.write_text(json.dumps(record, ensure_ascii=False), "utf-8")
    result = normalize(adapter, recalled)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["sukien"] == "CANCEL"


def test_a_recalled_viettel_transcript_is_shown_as_a_cancel(tmp_path):
    xml = (ROOT / "adapters/viettel/examples/record.xml").read_text("utf-8").replace('deleted="false"', 'deleted="true"')
    (tmp_path / "r.xml").write_text(xml, "utf-8")
    result = normalize("viettel", tmp_path / "r.xml")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["sukien"] == "CANCEL"


@pytest.mark.parametrize("name", ["lop_tieu_hoc.csv", "lop_trung_hoc.xlsx"])
def test_normalize_reads_the_spreadsheet_files(name):
    result = normalize("spreadsheet", ROOT / "adapters/spreadsheet/examples" / name)
    records = json.loads(result.stdout)
    assert isinstance(records, list) and len(records) >= 3
    assert all(r["sukien"] == "NEW" and r["hocsinh"]["hovaten"] for r in records)
    # The primary example carries one deliberately invalid row: named with its row id, exit 1.
    if name.endswith(".csv"):
        assert result.returncode == 1 and "student.personal_id" in result.stderr
    else:
        assert result.returncode == 0, result.stderr


def test_normalize_names_a_file_that_is_no_spreadsheet(tmp_path):
    (tmp_path / "x.xlsx").write_bytes(b"PK\x03\x04 not a workbook")
    result = normalize("spreadsheet", tmp_path / "x.xlsx")
    assert result.returncode == 1 and "Traceback" not in result.stderr and result.stderr.strip()


# --- worker processes never outlive a hub killed while they start ---------------------------------

EARLY_KILL = r"""
import multiprocessing, os, signal, sys, time
from pathlib import Path
from hub.documents.render import cached_fonts
from hub.engine.pipeline import worker_processes
if __name__ == "__main__":
    context = None if sys.argv[2] == "hub" else multiprocessing.get_context(sys.argv[2])
    cache = Path(sys.argv[3])
    cached_fonts(cache)  # as the hub does before it starts its workers
    pool = worker_processes(2, cache, context)
    pool.submit(os.getpid)
    pool.submit(os.getpid)
    print(" ".join(str(pid) for pid in pool._processes), flush=True)
    time.sleep(float(sys.argv[1]))
    os.kill(os.getpid(), signal.SIGKILL)   # as the hub is killed while its workers start
"""


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("start", ["hub", "spawn"])
@pytest.mark.parametrize("after", [0.05, 0.4, 1.5])
def test_workers_exit_when_the_hub_is_killed_while_they_start(tmp_path, after, start):
    import time

    script = tmp_path / "early_kill.py"
    script.write_text(EARLY_KILL, "utf-8")
    result = subprocess.run([sys.executable, str(script), str(after), start, str(tmp_path / "cache")],
                            capture_output=True, text=True, cwd=ROOT, timeout=60)
    pids = [int(p) for p in result.stdout.split()]
    assert len(pids) == 2, result.stderr
    deadline = time.monotonic() + 30
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = [p for p in pids if alive(p)]
    for pid in left:  # do not leave them behind even when the test fails
        os.kill(pid, 9)
    assert left == [], f"workers outlived the hub killed {after} s into their start"


# --- reports never hold a cell a spreadsheet program evaluates -------------------------------------

def formula_cells(xlsx: bytes) -> list[str]:
    """Every cell of every sheet that a spreadsheet program would evaluate or re-evaluate."""
    import io
    import zipfile

    from openpyxl import load_workbook

    book = load_workbook(io.BytesIO(xlsx))
    out = [c.coordinate for sheet in book.worksheets for row in sheet.iter_rows() for c in row
           if c.data_type == "f" or (isinstance(c.value, str) and c.value.startswith(("=", "+", "-", "@"))
                                     and not c.quotePrefix)]
    with zipfile.ZipFile(io.BytesIO(xlsx)) as z:
        out += [n for n in z.namelist() if n.startswith("xl/worksheets/") and b"<f>" in z.read(n)]
    return out


@settings(max_examples=12, deadline=None, database=None, derandomize=True)
@given(start=hs.sampled_from(["=", "+", "-", "@", "\t", "\r"]),
       rest=hs.text(hs.characters(blacklist_categories=("Cc", "Cs")), max_size=30),
       column=hs.sampled_from(["class_name", "student_code", "field", "fix_vi", "fix_en", "full_name",
                               "school_name"]))
def test_xlsx_reports_write_formula_like_text_as_text(start, rest, column):
    from hub.documents import identity_report, school_report

    value = start + "HYPERLINK(\"http://x\";\"y\")" + rest
    school = school_report.to_xlsx("01001001", [{"class_name": "5A", "student_code": "HS1", "state": "quarantined",
                                                 "field": "x", "fix_vi": "y", "fix_en": "z", "record_id": "r",
                                                 "version": 1, column: value}])
    blocked = identity_report.to_xlsx([{"school_code": "01001001", "full_name": "A", "differs": [], column: value}])
    assert formula_cells(school) == [] and formula_cells(blocked) == []
    from io import BytesIO

    from openpyxl import load_workbook
    texts = [c.value for book in (school, blocked) for row in load_workbook(BytesIO(book)).active.iter_rows()
             for c in row]
    assert value in texts  # written as it is, as text


def test_the_spreadsheet_report_quotes_a_formula_like_column_name(tmp_path):
    import asyncio
    import csv as csvmod

    from hub.contracts import PluginContext
    from hub.plugins import adapter_types

    info = adapter_types()["spreadsheet"]
    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / "lop.csv").write_text('Mã trường,Mã học sinh,Năm học,=HYPERLINK("http://x")\n01001001,HS1,2024-2025,1\n', "utf-8")
    adapter = info.cls(info.cls.Settings(directory=drop, settle_seconds=0), PluginContext("s", tmp_path))

    async def run():
        await adapter.open()
        pages = [p async for p in adapter.fetch(None)]
        for p in pages:
            await adapter.acknowledge(p)
    asyncio.run(run())
    [report] = list((drop / "rejected").glob("*.report.csv")) + list((drop / "done").glob("*.report.csv"))
    cells = [c for row in csvmod.reader(report.read_text("utf-8-sig").splitlines()) for c in row]
    assert any("HYPERLINK" in c for c in cells)
    assert not any(c.startswith(("=", "+", "-", "@")) for c in cells), cells


# --- the spreadsheet drop folder: long names, files still being written, workbook bombs ------------

def drop_adapter(tmp_path, **settings):
    from hub.contracts import PluginContext
    from hub.plugins import adapter_types

    info = adapter_types()["spreadsheet"]
    drop = tmp_path / "drop"
    drop.mkdir(exist_ok=True)
    return drop, info.cls(info.cls.Settings(directory=drop, settle_seconds=0, **settings), PluginContext("s", tmp_path))


def pull_and_file(adapter) -> list:
    import asyncio

    async def run():
        await adapter.open()
        pages = [p async for p in adapter.fetch(None)]
        for p in pages:
            await adapter.acknowledge(p)
        return pages
    return asyncio.run(run())


@pytest.mark.parametrize("chars", [188, 120])
def test_a_file_name_as_long_as_the_file_system_allows_does_not_stop_the_folder(tmp_path, chars):
    drop, adapter = drop_adapter(tmp_path)
    limit = os.pathconf(drop, "PC_NAME_MAX")
    stem = ("Lớp 5A trường Tiểu học Nguyễn Du học kỳ " * 10)[:chars]
    while len(os.fsencode(stem + ".csv")) > limit:
        stem = stem[:-1]
    header = "Mã trường,Mã học sinh,Năm học,Cột lạ\n01001001,HS1,2024-2025,1\n"
    for name in (stem + ".csv", stem[:-1] + "x.csv", "later.csv"):
        (drop / name).write_text(header, "utf-8")
    pages = pull_and_file(adapter)
    assert len(pages) == 3
    assert [p.name for p in drop.iterdir() if p.is_file()] == []  # every file filed
    reports = list((drop / "rejected").glob("*.report.csv")) + list((drop / "done").glob("*.report.csv"))
    assert len(reports) == 3 and all(len(os.fsencode(r.name)) <= limit for r in reports)
    assert len({r.name for r in reports}) == 3


def _workbook_with(sheet_rows: str, extra: tuple[str, int] | None = None) -> bytes:
    """A real openpyxl workbook whose first sheet's rows are replaced by ``sheet_rows`` (XML), and
    optionally an extra part of ``extra[1]`` zero bytes (it compresses a thousandfold)."""
    import io
    import re as _re
    import zipfile

    from openpyxl import Workbook

    book = Workbook()
    book.active.append(["Mã trường", "Mã học sinh", "Năm học"])
    plain = io.BytesIO()
    book.save(plain)
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(plain.getvalue())) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            body = src.read(info.filename)
            if info.filename == "xl/worksheets/sheet1.xml":
                body = _re.sub(rb"<sheetData>.*</sheetData>", b"<sheetData>" + sheet_rows.encode() + b"</sheetData>",
                               body, flags=_re.S)
                body = _re.sub(rb"<dimension[^>]*/>", b"", body)
            dst.writestr(info, body)
        if extra:
            with dst.open(extra[0], "w") as part:
                chunk = b"\0" * (1 << 20)
                for _ in range(extra[1] >> 20):
                    part.write(chunk)
    return out.getvalue()


HEADER_ROW = ('<row r="1"><c r="A1" t="inlineStr"><is><t>Mã trường</t></is></c><c r="B1" t="inlineStr"><is>'
              '<t>Mã học sinh</t></is></c><c r="C1" t="inlineStr"><is><t>Năm học</t></is></c></row>')


@pytest.mark.parametrize("kind", ["empty_rows", "wide_row", "expands"])
def test_an_xlsx_that_expands_without_bound_is_rejected_quickly_naming_the_bound(tmp_path, kind):
    import time

    if kind == "empty_rows":  # the case: 1.5 M empty rows in a file of a few hundred KB
        data = _workbook_with(HEADER_ROW + "<row/>" * 1_500_000)
        reason = "more than 20000 rows"
    elif kind == "wide_row":
        data = _workbook_with(HEADER_ROW + '<row r="2"><c r="ZZZ2"><v>1</v></c></row>')
        reason = "more than 1000 cells"
    else:
        data = _workbook_with(HEADER_ROW, ("xl/media/padding.bin", 120 << 20))
        reason = "expands to"
    assert len(data) < 2_000_000
    drop, adapter = drop_adapter(tmp_path)
    (drop / "bomb.xlsx").write_bytes(data)
    (drop / "later.csv").write_text("Mã trường,Mã học sinh,Năm học,Cột lạ\n01001001,HS1,2024-2025,1\n", "utf-8")
    started = time.monotonic()
    pages = pull_and_file(adapter)
    assert time.monotonic() - started < 30
    assert len(pages) == 2 and not (drop / "bomb.xlsx").exists() and not (drop / "later.csv").exists()
    report = (drop / "rejected" / "bomb.xlsx.report.csv").read_text("utf-8-sig")
    assert reason in report, report


# --- pages that need no token show no internal URL, file path or database user ----------------------

@pytest.mark.parametrize("line, hidden", [
    ("sqlite /var/lib/hocba/data/hub.sqlite3, schema 8", ["/var/lib"]),
    ("postgresql postgresql://hub:***@db.internal:5432/hocba, schema 8, 2 worker(s) connected",
     ["hub:", "db.internal", "5432"]),
    ("GET http://10.0.0.5:9101/api/v1/records?trang=1 answered HTTP 503", ["10.0.0.5", "/api/v1"]),
    ("3 file(s) waiting in /srv/drop/school-a", ["/srv/drop"]),
    ("cannot reach hub@db.internal:5432", ["hub@", "db.internal"]),
])
def test_no_internals_blanks_urls_paths_and_users(line, hidden):
    from hub.logs import no_internals

    shown = no_internals(line)
    assert not any(h in shown for h in hidden), shown
    assert shown.split()[0] == line.split()[0]  # what the line is about stays


async def test_readyz_and_the_status_page_show_no_internal_urls_paths_or_users(tmp_path, pki):
    import aiohttp
    from conftest import PASSWORD, ROLES

    from adapters.ttdlqg.simulator import TtdlqgSimulator
    from hub.config import parse_config
    from hub.engine.pipeline import Hub
    from hub.web.app import create_app
    from hub.web.server import serving

    central = TtdlqgSimulator()
    await central.start()
    drop = tmp_path / "drop-folder-secret-name"
    drop.mkdir()
    hub = Hub(parse_config({
        "data_dir": str(tmp_path / "data"), "workers": {"processes": 1},
        "adapters": [{"name": "files", "type": "spreadsheet", "poll_interval": 3600,
                      "settings": {"directory": str(drop)}}],
        "destination": {"name": "central", "type": "ttdlqg", "settings": central.adapter_settings()},
        "signers": [{"name": "keys", "type": "pkcs12", "settings": {"directory": str(pki[0]), "password": PASSWORD}}],
        "signing": {"steps": [{"role": r, "signer": "keys"} for r in ROLES]},
    }))
    await hub.start(pull=False)
    try:
        async with serving(create_app(hub)) as base:
            central.faults.outage = True  # a failing check's detail names the URL it could not reach
            await central.stop()
            async with aiohttp.ClientSession(base) as http:
                for page in ("/readyz", "/?lang=en"):
                    async with http.get(page) as resp:
                        text = await resp.text()
                    for internal in (str(tmp_path), "drop-folder-secret-name", "hub.sqlite3", central.adapter_settings()["base_url"]):
                        assert internal not in text, (page, internal)
                async with http.get("/readyz") as resp:
                    body = await resp.json()
            assert body["checks"]["store"]["detail"].startswith("sqlite <path>")
            assert not body["checks"]["central"]["ok"]
    finally:
        await hub.stop()
