"""The school portal's import sheets: synthetic transcripts delivered through the adapter, every
workbook opened again with openpyxl; then a running hub writing them and the admin download."""

from __future__ import annotations

import asyncio
import copy
import uuid
import zipfile
from collections import defaultdict
from io import BytesIO
from pathlib import Path

import aiohttp
import pytest
from conftest import deliver_to, hub_config, pull_from
from openpyxl import load_workbook

from adapters.portal_excel.adapter import LEDGER, PortalExcelAdapter, PortalExcelSettings, class_file
from adapters.portal_excel.layout import QUALITY_NAMES
from adapters.portal_excel.simulator import PortalExcelSimulator
from adapters.vnpt.simulator import VnptSimulator
from hub import Delivery, DeliveryError, PluginContext, PluginError, parse_transcript, transcript
from hub import lifecycle as lc
from hub.web.server import serving_hub


def classes(n: int = 200) -> dict[tuple[str, str], list[dict]]:
    """Synthetic transcripts grouped by school and class."""
    out: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for i in range(n):
        t = transcript(i, seed=3)
        out[(t["school_code"], t["class_name"])].append(t)
    return out


def a_class(level: str, size: int = 3) -> list[dict]:
    return next(v for (_s, _c), v in sorted(classes().items()) if v[0]["level"] == level and len(v) >= size)[:size]


RECORD_IDS: dict[str, str] = {}


def delivery(t: dict, version: int = 1, event: str = "NEW") -> Delivery:
    record_id = RECORD_IDS.setdefault(t["transcript_id"], str(uuid.uuid4()))
    record = parse_transcript({**t, "record_id": record_id, "event": event, "version": version,
                               "updated_at": f"2025-05-31T10:00:0{version % 10}"})
    return Delivery(record_id, version, event, record.model_dump(mode="json", by_alias=True), b"")


@pytest.fixture
async def adapter(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    a = PortalExcelAdapter(PortalExcelSettings(directory=out), PluginContext("portal", tmp_path / "plugin"))
    await a.open()
    yield a
    await a.close()


def sheet(adapter: PortalExcelAdapter, t: dict):
    path = adapter.directory / class_file(t["school_year"], t["school_code"], t["class_name"])
    return load_workbook(path).active


def data_rows(ws, header_rows: int) -> list[tuple]:
    return [r for r in ws.iter_rows(min_row=header_rows + 1, values_only=True) if any(v is not None for v in r)]


def column(ws, label: str, header_rows: int) -> int:
    """The 1-based column whose header cell in any header row is ``label``."""
    for r in range(1, header_rows + 1):
        for c in range(1, ws.max_column + 1):
            if ws.cell(r, c).value == label:
                return c
    raise AssertionError(f"no header {label!r}")


def test_registered_as_a_destination_that_exports():
    from hub.plugins import adapter_types

    cls = adapter_types()["portal_excel"].cls
    assert cls.can("deliver") and cls.can("export") and not cls.can("fetch")


async def test_a_missing_folder_is_refused_at_start(tmp_path):
    a = PortalExcelAdapter(PortalExcelSettings(directory=tmp_path / "nope"), PluginContext("p", tmp_path))
    with pytest.raises(PluginError, match="settings.directory"):
        await a.open()
    assert not (await a.check()).ok


async def test_primary_class_three_header_rows_and_one_row_per_student(adapter):
    pupils = a_class("02")
    for t in pupils:
        receipt = await adapter.deliver(delivery(t))
        assert not receipt.duplicate
    ws = sheet(adapter, pupils[0])
    assert ws.title == "KetQua"
    # Row 1: the student columns (merged down three rows) and the groups of Thông tư 27.
    assert [ws.cell(1, c).value for c in range(1, 6)] == ["STT", "Mã học sinh", "Họ và tên", "Ngày sinh", "Giới tính"]
    merged = {str(m) for m in ws.merged_cells.ranges}
    assert {"A1:A3", "B1:B3", "C1:C3"} <= merged
    row1 = [v for v in (ws.cell(1, c).value for c in range(1, ws.max_column + 1)) if v]
    assert row1[5:8] == ["Môn học và hoạt động giáo dục", "Năng lực cốt lõi", "Phẩm chất chủ yếu"]
    # Row 2: each subject by its official name; row 3: what is recorded under it.
    toan = column(ws, "Toán", 3)
    assert ws.cell(3, toan).value == "Mức đạt được" and ws.cell(3, toan + 1).value == "Điểm KTĐK"
    dd = column(ws, "Đạo đức", 3)  # no periodic test: the level only
    assert ws.cell(3, dd).value == "Mức đạt được" and ws.cell(3, dd + 1).value != "Điểm KTĐK"
    assert column(ws, "Năng lực chung", 3) and column(ws, "Tự chủ và tự học", 3)
    subjects = [v for v in (ws.cell(2, c).value for c in range(6, column(ws, "Năng lực chung", 3))) if v]
    assert len(subjects) == len(set(subjects)), subjects  # each subject once
    assert subjects == [s["subject_name"] for s in pupils[0]["subjects"]]  # the form's order
    rows = data_rows(ws, 3)
    assert len(rows) == len(pupils)
    assert [r[0] for r in rows] == list(range(1, len(pupils) + 1))
    # Every student's values are where the header says.
    yeu_nuoc = column(ws, QUALITY_NAMES[0][1], 3)
    for t in pupils:
        row = next(r for r in rows if r[1] == t["student"]["student_code"])
        assert row[2] == t["student"]["full_name"]
        y, m, d = t["student"]["birth_date"].split("-")
        assert row[3] == f"{d}/{m}/{y}"
        subject = next(s for s in t["subjects"] if s["subject_code"] == "TOAN")
        assert row[toan - 1] == subject["year_level"] and row[toan] == subject["year_score"]
        assert row[yeu_nuoc - 1] == t["qualities"]["yeu_nuoc"]
    # A code column is text: a leading zero survives.
    assert ws.cell(4, 2).number_format == "@"


async def test_secondary_class_subjects_by_term_and_results(adapter):
    students = a_class("03", 2)
    for t in students:
        await adapter.deliver(delivery(t))
    ws = sheet(adapter, students[0])
    toan = column(ws, "Toán", 2)
    assert [ws.cell(2, toan + i).value for i in range(3)] == ["HK1", "HK2", "CN"]
    learning = column(ws, "Kết quả học tập", 2)
    rows = data_rows(ws, 2)
    assert len(rows) == 2
    for t in students:
        row = next(r for r in rows if r[1] == t["student"]["student_code"])
        subject = next(s for s in t["subjects"] if s["subject_code"] == "TOAN")
        assert row[toan - 1:toan + 2] == (subject["term1_average"], subject["term2_average"], subject["year_average"])
        assert row[learning + 1] == t["learning"]["year"]
        assert row[column(ws, "Số ngày nghỉ", 2) - 1] == t["days_absent"]
        gdtc = next((s for s in t["subjects"] if s["subject_code"] == "GDTC"), None)
        if gdtc:  # assessed by comment: Đ / CĐ where the averages would be
            assert row[column(ws, "Giáo dục thể chất", 2) + 1] == gdtc["year_comment"]


async def test_latest_version_wins_and_older_or_conflicting_ones_are_refused(adapter):
    pupils = a_class("02")
    for t in pupils:
        await adapter.deliver(delivery(t))
    changed = copy.deepcopy(pupils[0])
    changed["student"]["full_name"] = "Nguyễn Thị Ánh"
    changed["student"]["gender"] = 2
    await adapter.deliver(delivery(changed, 2, "UPDATE"))
    rows = data_rows(sheet(adapter, changed), 3)
    assert len(rows) == len(pupils)
    assert next(r for r in rows if r[1] == changed["student"]["student_code"])[2] == "Nguyễn Thị Ánh"
    # The same version again: a duplicate, the file unchanged in content.
    assert (await adapter.deliver(delivery(changed, 2, "UPDATE"))).duplicate
    # An older version arriving late, or this version with other content: a conflict naming what is held.
    with pytest.raises(DeliveryError) as old:
        await adapter.deliver(delivery(pupils[0], 1))
    assert old.value.conflict and old.value.held_version == 2
    with pytest.raises(DeliveryError) as other:
        await adapter.deliver(delivery(pupils[0], 2, "UPDATE"))
    assert other.value.conflict and other.value.held_version == 2
    assert next(r for r in data_rows(sheet(adapter, changed), 3)
                if r[1] == changed["student"]["student_code"])[2] == "Nguyễn Thị Ánh"
    assert await adapter.held_version(RECORD_IDS[changed["transcript_id"]]) == 2


async def test_cancel_removes_the_row_and_the_last_cancel_the_file(adapter):
    pupils = a_class("02", 2)
    for t in pupils:
        await adapter.deliver(delivery(t))
    await adapter.deliver(delivery(pupils[0], 2, "CANCEL"))
    rows = data_rows(sheet(adapter, pupils[1]), 3)
    assert [r[1] for r in rows] == [pupils[1]["student"]["student_code"]]
    assert rows[0][0] == 1  # numbered again
    await adapter.deliver(delivery(pupils[1], 2, "CANCEL"))
    assert not (adapter.directory / class_file(pupils[0]["school_year"], pupils[0]["school_code"],
                                               pupils[0]["class_name"])).exists()
    assert await adapter.export(pupils[0]["school_code"], pupils[0]["class_name"]) is None


async def test_a_corrected_class_moves_the_row(adapter):
    pupils = a_class("02", 2)
    for t in pupils:
        await adapter.deliver(delivery(t))
    moved = copy.deepcopy(pupils[0])
    moved["class_name"] = moved["class_name"][:-1] + ("B" if moved["class_name"][-1] != "B" else "C")
    await adapter.deliver(delivery(moved, 2, "UPDATE"))
    assert [r[1] for r in data_rows(sheet(adapter, pupils[1]), 3)] == [pupils[1]["student"]["student_code"]]
    assert [r[1] for r in data_rows(sheet(adapter, moved), 3)] == [moved["student"]["student_code"]]


@pytest.mark.parametrize("text", ['=HYPERLINK("http://evil.example","x")', "+1+2", "-2+3", "@SUM(A1)"])
async def test_text_that_would_be_a_formula_is_written_as_text(adapter, text):
    t = a_class("02", 1)[0]
    t = copy.deepcopy(t)
    t["awards"] = [text]
    await adapter.deliver(delivery(t))
    path = adapter.directory / class_file(t["school_year"], t["school_code"], t["class_name"])
    ws = load_workbook(path).active
    cell = ws.cell(4, column(ws, "Khen thưởng", 3))
    assert cell.value == text and cell.data_type == "s"
    with zipfile.ZipFile(path) as z:
        xml = z.read("xl/worksheets/sheet1.xml").decode()
    assert "<f>" not in xml and "<f " not in xml  # no formula anywhere in the sheet


async def test_class_names_cannot_leave_the_folder():
    path = class_file("2024-2025", "01001001", "../../etc/x")
    assert path.parts[:2] == ("2024-2025", "01001001") and ".." not in path.parts
    assert class_file("2024-2025", "01001001", "6/1") != class_file("2024-2025", "01001001", "6_1")


async def test_concurrent_deliveries_for_one_class_all_land(adapter):
    pupils = a_class("02", 3)
    await asyncio.gather(*(adapter.deliver(delivery(t)) for t in pupils))
    assert len(data_rows(sheet(adapter, pupils[0]), 3)) == 3
    assert not [p for p in adapter.directory.rglob("*.tmp")]  # no temporary file left behind


# --- through a running hub ----------------------------------------------------------------------

OPERATOR_TOKEN = "op-token-portal-5c1e9a2f7b"
VIEWER_TOKEN = "viewer-token-portal-88d1c0"


async def test_a_hub_writes_the_sheets_and_operators_download_them(tmp_path, pki):
    vendor = VnptSimulator(records=6, invalid=0, seed=5)
    folder = PortalExcelSimulator()
    await vendor.start()
    await folder.start()
    tokens = [{"name": "an.nguyen", "token": OPERATOR_TOKEN, "role": "operator"},
              {"name": "wall", "token": VIEWER_TOKEN, "role": "viewer"}]
    config = hub_config(tmp_path / "data", pki[0], adapters=[pull_from(vendor)], admin={"tokens": tokens},
                        destination=deliver_to(folder, "portal", "portal_excel"))
    try:
        async with serving_hub(config, drain_timeout=1) as (hub, base):
            await asyncio.wait_for(hub.wait_idle(), 120)
            delivered = hub.store.rows(state=lc.DELIVERED)
            assert len(delivered) == 6
            assert folder.accepted() == {r.record_id: r.version for r in delivered}
            books = folder.workbooks()
            # Every delivered student has a row in their class's sheet (primary: three header rows).
            total = 0
            for book in books.values():
                primary = book.active.cell(1, 6).value == "Môn học và hoạt động giáo dục"
                total += len(data_rows(book.active, 3 if primary else 2))
            assert total == 6

            row = delivered[0]
            school, class_name = row.normalized["school_code"], row.normalized["class_name"]
            url = f"{base}/api/exports/{school}/{class_name}"
            async with aiohttp.ClientSession() as http:
                async with http.get(url) as resp:
                    assert resp.status == 401
                async with http.get(url, headers={"Authorization": f"Bearer {VIEWER_TOKEN}"}) as resp:
                    assert resp.status == 403  # the sheet names students: operators only
                async with http.get(url, headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"}) as resp:
                    assert resp.status == 200
                    assert resp.headers["Content-Type"].startswith("application/vnd.openxmlformats")
                    assert "attachment" in resp.headers["Content-Disposition"]
                    body = await resp.read()
                names = [r[2] for r in load_workbook(BytesIO(body)).active.iter_rows(values_only=True)]
                assert row.normalized["student"]["full_name"] in names
                async with http.get(url + "?year=2030-2031", headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"}) as resp:
                    assert resp.status == 404
                async with http.get(url + "?year=soon", headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"}) as resp:
                    assert resp.status == 400 and (await resp.json())["parameter"] == "year"
                async with http.get(f"{base}/api/exports/{school}/NOPE",
                                    headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"}) as resp:
                    assert resp.status == 404
            audit = [e for e in hub.store.audit_entries() if e["kind"] == "admin.export"]
            assert len(audit) == 1 and audit[0]["actor"] == "an.nguyen"
            assert (Path(folder.directory) / LEDGER).is_file()
    finally:
        await vendor.stop()
        await folder.stop()
