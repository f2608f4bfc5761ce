"""The spreadsheet adapter on real CSV/XLSX files in a real folder (see adapters/spreadsheet/CONTRACT.md)."""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import json
import os
import shutil
import time
import unicodedata
from pathlib import Path

import openpyxl
import pytest
from conftest import deliver_to, hub_config, only_plugins, running, started_hub
from pydantic import ValidationError

from adapters.ttdlqg.simulator import TtdlqgSimulator
from adapters.spreadsheet.adapter import (
    SpreadsheetAdapter,
    iter_rows,
    row_from_central,
    template_columns,
    to_central,
)
from adapters.spreadsheet.templates.generate import TEMPLATES
from hub import lifecycle as lc
from hub import plugins
from hub import store as st
from hub.contracts import PluginContext, PluginError, RawRecord
from hub.kit.synthetic import invalid_transcript, transcript
from hub.records import parse_transcript

PACKAGE = Path(__file__).resolve().parents[1] / "adapters" / "spreadsheet"
ENVELOPE = {"record_id": "sheet-test", "event": "NEW", "version": 1, "updated_at": "2025-06-01T07:00:00"}
PRIMARY = [h for h, _, _ in template_columns("primary")]
SECONDARY = [h for h, _, _ in template_columns("secondary")]
REPORT_HEADER = ["row", "column", "outcome", "reason"]


@pytest.fixture(autouse=True)
def only_these_plugins():
    with only_plugins("spreadsheet", "ttdlqg", "pkcs12", "xml"):
        yield


@pytest.fixture
def drop(tmp_path) -> Path:
    folder = tmp_path / "drop"
    folder.mkdir()
    return folder


def make_adapter(folder: Path, **settings) -> SpreadsheetAdapter:
    values = {"directory": folder, "settle_seconds": 0, **settings}
    return SpreadsheetAdapter(SpreadsheetAdapter.Settings(**values), PluginContext("sheets", folder.parent))


async def opened(folder: Path, **settings) -> SpreadsheetAdapter:
    adapter = make_adapter(folder, **settings)
    await adapter.open()
    return adapter


async def read(adapter: SpreadsheetAdapter):
    pages = [page async for page in adapter.fetch(None)]
    return pages, [r for p in pages for r in p.records]


def write_csv(path: Path, headers: list[str], rows: list[dict | list], *, delimiter=",", encoding="utf-8-sig",
              above: list[list[str]] = ()) -> Path:
    with path.open("w", encoding=encoding, newline="") as out:
        writer = csv.writer(out, delimiter=delimiter)
        writer.writerows(above)
        writer.writerow(headers)
        for row in rows:
            writer.writerow(row if isinstance(row, list) else [row.get(h, "") for h in headers])
    return path


def typed(header: str, text: str):
    """A cell as a school's Excel holds it: real dates and numbers, codes as text."""
    if not text:
        return None
    if header in ("Ngày sinh", "Ngày ký"):
        day, month, year = (int(p) for p in text.split("/"))
        return dt.datetime(year, month, day)
    if header in ("Khối", "Số ngày nghỉ") or header.endswith(("Điểm KTĐK HK1", "Điểm KTĐK CN")):
        return int(text)
    if header.endswith(("ĐTB HK1", "ĐTB HK2", "ĐTB CN")):
        return float(text.replace(",", "."))
    return text


def write_xlsx(path: Path, headers: list[str], rows: list[dict | list], *, above: list[list] = ()) -> Path:
    book = openpyxl.Workbook()
    sheet = book.active
    for row in above:
        sheet.append(row)
    sheet.append(headers)
    for row in rows:
        sheet.append(row if isinstance(row, list) else [typed(h, row.get(h, "")) for h in headers])
    book.create_sheet("Hướng dẫn").append(["not read"])
    book.save(path)
    return path


def source_id(record: dict) -> str:
    return f"{record['school_code']}/{record['student']['student_code']}/{record['school_year']}"


def expected(record: dict) -> dict:
    return parse_transcript({**record, **ENVELOPE}).model_dump()


def central(adapter: SpreadsheetAdapter, raw: RawRecord) -> dict:
    return parse_transcript({**adapter.normalize(raw), **ENVELOPE}).model_dump()


def report_of(path: Path) -> list[list[str]]:
    with path.open(encoding="utf-8-sig", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == REPORT_HEADER and rows[1][2] == "summary"
    return rows


def problems(report: list[list[str]]) -> list[tuple[str, str, str]]:
    return [(r[0], r[1], r[2]) for r in report[2:]]


# --- registration, settings, templates ----------------------------------------------------------

def test_registered_through_the_entry_point():
    info = plugins.adapter_types()["spreadsheet"]
    assert info.cls is SpreadsheetAdapter
    assert info.cls.can("fetch") and info.cls.can("normalize") and not info.cls.can("deliver")


@pytest.mark.parametrize("field, value", [("encoding", "klingon-8"), ("settle_seconds", -1), ("colour", "blue")])
def test_settings_reject_bad_values(tmp_path, field, value):
    with pytest.raises(ValidationError) as err:
        SpreadsheetAdapter.Settings(directory=tmp_path, **{field: value})
    assert err.value.errors()[0]["loc"] == (field,)


async def test_a_missing_folder_is_a_start_up_error(tmp_path):
    adapter = make_adapter(tmp_path / "not-mounted")
    with pytest.raises(PluginError, match="not-mounted.*does not exist"):
        await adapter.open()
    assert not (await adapter.check()).ok
    assert not (tmp_path / "not-mounted").exists()  # not silently created


@pytest.mark.parametrize("level", ["primary", "secondary"])
def test_shipped_templates_match_the_column_set(level):
    headers = [h for h, _, _ in template_columns(level)]
    stem = PACKAGE / "templates" / TEMPLATES[level]
    book = openpyxl.load_workbook(stem.with_suffix(".xlsx"))
    sheet = book.worksheets[0]
    assert [c.value for c in sheet[1]] == headers, "regenerate: python -m adapters.spreadsheet.templates.generate"
    # Code columns are formatted as Text, so Excel keeps "01001001" rather than 1001001.
    code = headers.index("Mã trường") + 1
    assert sheet.cell(2, code).number_format == "@"
    assert [r[0] for r in book["Hướng dẫn"].iter_rows(min_row=2, values_only=True)] == headers
    with stem.with_suffix(".csv").open(encoding="utf-8-sig", newline="") as f:
        assert next(csv.reader(f)) == headers


# --- reading files ---------------------------------------------------------------------------------

async def test_csv_and_xlsx_files_round_trip_one_page_per_file(drop):
    primary = [transcript(i, 4) for i in (0, 1, 4, 5)]
    secondary = [transcript(i, 4) for i in (2, 3, 6)]
    write_csv(drop / "lop-tieu-hoc.csv", PRIMARY, list(iter_rows(primary)))
    write_xlsx(drop / "lop-trung-hoc.xlsx", SECONDARY, list(iter_rows(secondary)))
    adapter = await opened(drop)
    pages, raws = await read(adapter)

    assert sorted(p.cursor for p in pages) == ["lop-tieu-hoc.csv", "lop-trung-hoc.xlsx"]
    assert sorted(r.source_id for r in raws) == sorted(source_id(t) for t in primary + secondary)
    by_id = {source_id(t): t for t in primary + secondary}
    for raw in raws:
        assert central(adapter, raw) == expected(by_id[raw.source_id])
        assert raw.updated_at is not None and not raw.deleted
        assert "STT" not in json.loads(raw.payload)  # row numbers must not version records
    assert all(not p.problems for p in pages)
    # Reading does not file anything away: only acknowledge does, after the hub's commit.
    assert sorted(p.name for p in drop.iterdir()) == ["done", "lop-tieu-hoc.csv", "lop-trung-hoc.xlsx", "rejected"]


async def test_a_vietnamese_locale_csv_with_title_rows_and_loose_headers(drop):
    record = transcript(1, 2)
    row = row_from_central(record)
    # Excel in a Vietnamese locale: ';' separators; a school's own title rows; headers in NFD,
    # doubled spaces, an alias ("Họ tên") and an en dash in a subject column.
    headers = [unicodedata.normalize("NFD", h).replace(" ", "  ", 1) for h in row]
    headers[list(row).index("Họ và tên")] = "Họ tên"
    headers = [h.replace(" - ", " – ") for h in headers]
    path = write_csv(drop / "lop 2A.csv", headers, [list(row.values()), [""] * len(row)], delimiter=";",
                     above=[["SỞ GD&ĐT HÀ NỘI"], ["DANH SÁCH HỌC BẠ LỚP 2A"], []])
    adapter = await opened(drop)
    pages, raws = await read(adapter)
    assert [r.source_id for r in raws] == [source_id(record)]
    assert central(adapter, raws[0]) == expected(record)
    await adapter.acknowledge(pages[0])
    assert not path.exists() and (drop / "done" / "lop 2A.csv").exists()


async def test_bad_rows_are_refused_and_invalid_ones_sent_on_both_reported(drop):
    good = [transcript(i, 5) for i in (0, 1, 4)]
    invalid, _, _ = invalid_transcript(8, 5, "personal_id")
    rule, _, _ = invalid_transcript(3, 5, "rule_tt22")   # a secondary record in a file of its own
    rows = [row_from_central(t) for t in good + [invalid]]
    short = list(rows[0].values())[:-3]                              # row 6: cells missing
    broken = dict(row_from_central(transcript(8, 6)), **{"Ngày sinh": "#REF!"})  # row 7: an Excel error
    nameless = dict(row_from_central(transcript(12, 6)), **{"Mã học sinh": " "})  # row 8: cannot be identified
    twin_a = row_from_central(transcript(16, 6))                      # rows 9 and 10: the same student twice
    twin_b = dict(twin_a, **{"Họ và tên": "Someone Else"})
    recalled = dict(row_from_central(transcript(20, 6)), **{"Thu hồi": "x"})  # row 11
    # The columns of every grade in the file (a row leaves another grade's subjects empty).
    headers = ["STT", *dict.fromkeys(k for r in rows for k in r), "Thu hồi"]
    path = write_csv(drop / "5a.csv", headers, [
        {**r, "STT": str(i)} for i, r in enumerate(rows, start=1)
    ] + [["99", *short], broken, nameless, twin_a, twin_b, recalled])
    write_csv(drop / "9a.csv", ["STT", *row_from_central(rule)], [row_from_central(rule)])
    adapter = await opened(drop)
    pages, _ = await read(adapter)
    page = next(p for p in pages if p.cursor == "5a.csv")
    assert sorted(r.source_id for r in page.records) == sorted(
        [source_id(t) for t in good + [invalid]] + [source_id(transcript(20, 6))])
    assert [r.deleted for r in page.records if r.source_id == source_id(transcript(20, 6))] == [True]

    for p in pages:
        await adapter.acknowledge(p)
    assert not path.exists() and (drop / "done" / "5a.csv").read_bytes()
    report = report_of(drop / "done" / "5a.csv.report.csv")
    assert report[1][3] == "10 row(s) read: 5 sent to the hub (1 of them will be quarantined), 5 refused"
    assert problems(report) == [
        ("5", "Số định danh cá nhân", "quarantined"),
        ("6", "", "refused"),
        ("7", "Ngày sinh", "refused"),
        ("8", "Mã học sinh", "refused"),
        ("9", "Mã học sinh", "refused"),
        ("10", "Mã học sinh", "refused"),
    ]
    reasons = {(r[0], r[1]): r[3] for r in report[2:]}
    assert reasons[("5", "Số định danh cá nhân")].startswith("student.personal_id:")
    assert "cells" in reasons[("6", "")] and "#REF!" in reasons[("7", "Ngày sinh")]
    assert "row 10" in reasons[("9", "Mã học sinh")] and "row 9" in reasons[("10", "Mã học sinh")]
    rule_report = report_of(drop / "done" / "9a.csv.report.csv")
    assert problems(rule_report) == [("2", "Học tập CN", "quarantined")]
    assert "TT22.hoc_tap.tot" in rule_report[2][3]


async def test_xlsx_error_cells_and_cells_outside_the_header_are_refused(drop):
    first, second, third = (row_from_central(transcript(i, 7)) for i in (0, 1, 4))
    # Pupils of different grades study different subjects: a subject's cells are blank for the others.
    headers = list(dict.fromkeys([*first, *second, *third]))
    book_rows = [
        [typed(h, first.get(h, "")) for h in headers],
        [typed(h, second.get(h, "")) if h != "Ngày sinh" else "#DIV/0!" for h in headers],
        [typed(h, third.get(h, "")) for h in headers] + [None, "stray note"],
    ]
    write_xlsx(drop / "lop.xlsx", headers, book_rows, above=[["DANH SÁCH"]])
    adapter = await opened(drop)
    [page], raws = await read(adapter)
    assert [r.source_id for r in raws] == [source_id(transcript(0, 7))]
    # Sheet row numbers, as Excel shows them: a title row, the header on row 2, data from row 3.
    assert [(p.row, p.column, p.outcome) for p in page.problems] == [
        (4, "Ngày sinh", "refused"), (5, f"cell {len(headers) + 2}", "refused")]


async def test_a_file_whose_header_is_not_the_template_is_rejected_whole(drop):
    row = row_from_central(transcript(0, 1))
    original = write_csv(drop / "lop.csv", [*row, "Ghi chú"], [[*row.values(), "chuyển trường"]]).read_bytes()
    adapter = await opened(drop)
    [page], raws = await read(adapter)
    assert raws == []
    await adapter.acknowledge(page)
    assert (drop / "rejected" / "lop.csv").read_bytes() == original
    report = report_of(drop / "rejected" / "lop.csv.report.csv")
    assert ("1", "Ghi chú", "file") in problems(report)


@pytest.mark.parametrize("name, content, reason", [
    # Excel's "Unicode Text" export is UTF-16: not what the adapter is set to read.
    ("lop.csv", "Mã trường,Mã học sinh,Năm học\n01001001,HS1,2024-2025\n".encode("utf-16"), "not utf-8-sig"),
    ("lop.xls", b"\xd0\xcf\x11\xe0 an old Excel file", "save the sheet as .xlsx"),
    ("lop.xlsx", b"PK\x03\x04 not really a zip", "cannot be opened as an XLSX"),
    ("lop2.csv", "Họ và tên,Ngày sinh\nAn,01/01/2015\n".encode(), "no header row"),
    ("empty.csv", b"", "no header row"),
])
async def test_unreadable_files_are_rejected_with_a_reason_never_lost(drop, name, content, reason):
    (drop / name).write_bytes(content)
    adapter = await opened(drop)
    [page], raws = await read(adapter)
    assert raws == []
    await adapter.acknowledge(page)
    assert (drop / "rejected" / name).read_bytes() == content
    assert reason in report_of(drop / "rejected" / f"{name}.report.csv")[2][3]


async def test_temporary_hidden_and_other_files_are_left_alone(drop):
    names = ["~$lop.xlsx", ".lop.csv", "lop.csv.tmp", "LOP.XLSX.TMP", "ghi-chu.txt", ".~lock.lop.csv#"]
    for name in names:
        (drop / name).write_text("Mã trường,Mã học sinh,Năm học\n", encoding="utf-8")
    (drop / "sub").mkdir()
    write_csv(drop / "sub" / "nested.csv", PRIMARY, list(iter_rows([transcript(0)])))
    adapter = await opened(drop)
    pages, _ = await read(adapter)
    assert pages == []
    assert sorted(p.name for p in drop.iterdir()) == sorted(names + ["done", "rejected", "sub"])


async def test_a_file_is_read_only_once_size_and_mtime_have_settled(drop):
    now = [1000.0]
    # Every remaining wait below is longer than a pull waits in real time: the fake clock decides.
    adapter = await opened(drop, settle_seconds=100)
    adapter._clock = lambda: now[0]
    rows = list(iter_rows([transcript(0), transcript(1)]))
    path = write_csv(drop / "lop.csv", PRIMARY, rows[:1])
    # A copy that keeps the source's old mtime must still wait: age alone proves nothing.
    os.utime(path, (time.time() - 86400, time.time() - 86400))
    assert (await read(adapter))[0] == []
    now[0] += 50
    assert (await read(adapter))[0] == []
    with path.open("a", encoding="utf-8", newline="") as out:   # the copy goes on
        csv.writer(out).writerow([rows[1].get(h, "") for h in PRIMARY])
    now[0] += 50
    assert (await read(adapter))[0] == []                       # changed: the wait starts again
    now[0] += 80
    assert (await read(adapter))[0] == []
    now[0] += 20
    pages, raws = await read(adapter)
    assert len(pages) == 1 and len(raws) == 2


async def test_a_pull_waits_briefly_for_a_file_that_is_about_to_settle(drop):
    write_csv(drop / "lop.csv", PRIMARY, list(iter_rows([transcript(0)])))
    adapter = await opened(drop, settle_seconds=0.3)
    started = time.monotonic()
    pages, raws = await read(adapter)
    assert len(raws) == 1 and time.monotonic() - started >= 0.3


async def test_the_shipped_examples_read_as_documented(drop):
    for name in ("lop_tieu_hoc.csv", "lop_trung_hoc.xlsx"):
        shutil.copy(PACKAGE / "examples" / name, drop / name)
    adapter = await opened(drop)
    pages, raws = await read(adapter)
    assert len(raws) == 7
    assert [(page.cursor, p.column, p.outcome) for page in pages for p in page.problems] == [
        ("lop_tieu_hoc.csv", "Số định danh cá nhân", "quarantined")]
    example = RawRecord("x", (PACKAGE / "examples" / "record.json").read_bytes())
    # ``hocba-hub normalize`` builds the adapter from unvalidated defaults: normalising needs no folder.
    bare = SpreadsheetAdapter(SpreadsheetAdapter.Settings.model_construct(), PluginContext("x", Path(".")))
    assert parse_transcript({**bare.normalize(example), **ENVELOPE}).student.student_code == "HS0100100000"


def test_normalize_names_what_it_cannot_map():
    row = row_from_central(transcript(0))
    with pytest.raises(ValueError, match="'Ghi chú'"):
        to_central({**row, "Ghi chú": "x"})
    with pytest.raises(ValueError, match="'Toán - ĐTB CN' belongs to secondary"):
        to_central({**row, "Toán - ĐTB CN": "8,5"})
    with pytest.raises(ValueError, match="'Thể dục' is not in the primary catalogue"):
        to_central({**row, "Thể dục - Mức đạt CN": "T"})
    # A province's own subject, added in the settings, maps to its code.
    data, _ = to_central({**row, "Thể dục - Mức đạt CN": "T"}, {"Thể dục": "TD"})
    assert data["subjects"][-1] == {"subject_code": "TD", "subject_name": "Thể dục", "year_level": "T"}


# --- with the hub's store -------------------------------------------------------------------------

async def test_a_crash_before_acknowledge_rereads_the_file_harmlessly(drop, tmp_path):
    records = [transcript(i, 8) for i in (0, 1, 4)]
    write_csv(drop / "lop.csv", PRIMARY, list(iter_rows(records)))
    store = st.Store(tmp_path / "hub.sqlite3")
    try:
        first = await opened(drop)
        [page], _ = await read(first)
        ids = store.receive("sheets", page.records, page.cursor, save_cursor=True)
        assert len(ids) == 3
        # The hub dies here, before acknowledge: the file must still be in the folder.
        assert (drop / "lop.csv").exists() and not list((drop / "done").iterdir())

        restarted = await opened(drop)
        [page], _ = await read(restarted)
        assert store.receive("sheets", page.records, page.cursor, save_cursor=True) == []
        await restarted.acknowledge(page)
        assert not (drop / "lop.csv").exists()
        assert sorted(p.name for p in (drop / "done").iterdir()) == ["lop.csv", "lop.csv.report.csv"]
        assert sorted((r.source_id, r.version) for r in store.rows()) == sorted((source_id(t), 1) for t in records)

        # The school corrects one student and drops the file again under the same name.
        records[1]["student"]["full_name"] = "Trần Thị Sửa"
        write_csv(drop / "lop.csv", PRIMARY, list(iter_rows(records)))
        [page], _ = await read(restarted)
        [new] = store.receive("sheets", page.records, page.cursor, save_cursor=True)
        await restarted.acknowledge(page)
        row = store.get(new)
        assert (row.source_id, row.version, row.event) == (source_id(records[1]), 2, "UPDATE")
        assert store.cursor("sheets") == "lop.csv"
        done = sorted(p.name for p in (drop / "done").iterdir())
        assert len(done) == 4 and done.count("lop.csv") == 1  # both files kept, neither overwritten
    finally:
        store.close()


async def test_through_a_running_hub_to_the_central_store(drop, tmp_path, pki):
    valid = [transcript(i, 12) for i in (0, 1, 2, 3)]
    broken, _, field = invalid_transcript(4, 12, "birth_date")   # a primary record
    write_csv(drop / "lop.csv", PRIMARY, list(iter_rows([valid[0], valid[1], broken])))
    write_xlsx(drop / "lop.xlsx", SECONDARY, list(iter_rows([valid[2], valid[3]])))
    sheets = {"name": "school-files", "type": "spreadsheet", "poll_interval": 3600,
              "settings": {"directory": str(drop), "settle_seconds": 0}}
    async with running(TtdlqgSimulator()) as (central_store,):
        config = hub_config(tmp_path / "data", pki[0], adapters=[sheets], destination=deliver_to(central_store))
        async with started_hub(config) as hub:
            await asyncio.wait_for(hub.wait_idle(), 120)
            rows = {r.source_id: r for r in hub.store.rows()}
    assert {sid: r.state for sid, r in rows.items()} == {
        **{source_id(t): lc.DELIVERED for t in valid}, source_id(broken): lc.QUARANTINED}
    assert any(e.startswith(field + ":") for e in rows[source_id(broken)].errors)
    assert sorted(p.name for p in drop.iterdir()) == ["done", "rejected"]
    assert sorted(p.name for p in (drop / "done").iterdir()) == [
        "lop.csv", "lop.csv.report.csv", "lop.xlsx", "lop.xlsx.report.csv"]
    assert problems(report_of(drop / "done" / "lop.csv.report.csv")) == [("4", "Ngày sinh", "quarantined")]
