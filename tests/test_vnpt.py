"""The vnpt adapter against its simulator over real HTTP on loopback (see adapters/vnpt/CONTRACT.md)."""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import json
from pathlib import Path

import pytest
from pull_vendors import VNPT
from pydantic import ValidationError

from adapters.vnpt.adapter import VnptAdapter, VnptError
from adapters.vnpt.simulator import RECORDS_PATH, TOKEN_PATH, VnptSimulator
from hub.contracts import RawRecord
from hub.kit.synthetic import transcript
from hub.records import field_errors

EXAMPLES = Path(__file__).resolve().parents[1] / "adapters" / "vnpt" / "examples"


vendor = VNPT.fixture()
make_adapter, read, central, expected = VNPT.make_adapter, VNPT.read, VNPT.central, VNPT.expected


def api_statuses(sim: VnptSimulator) -> list[tuple[str, int]]:
    return [(path, status) for _, path, status in sim.log]


# --- reading -----------------------------------------------------------------------------------

async def test_full_read_returns_every_record_once_and_round_trips(vendor):
    seed = 7
    sim, adapter = await vendor(records=13, invalid=5, seed=seed, page_size=4)
    pages, raws = await read(adapter)

    assert len(pages) > 1
    assert sorted(r.source_id for r in raws) == sorted([sim.source_id(i) for i in range(13)] + list(sim.defects))
    by_transcript = {transcript(i, seed)["transcript_id"]: i for i in range(13)}
    checked_nfd = 0
    for raw in raws:
        assert raw.updated_at is not None and raw.updated_at.utcoffset() == dt.timedelta(hours=7)
        assert not raw.deleted
        if VNPT.broken_on_purpose(sim, adapter, raw):
            continue
        index = by_transcript[adapter.normalize(raw)["transcript_id"]]
        # The payload is the element as served: NFD text stays NFD until the central format cleans it.
        assert json.loads(raw.payload) == sim.vendor_record(index)
        source = transcript(index, seed)
        assert central(adapter, raw) == expected(source)
        if index % 3 == 1:
            checked_nfd += 1
            VNPT.name_stays_nfd(adapter, raw, source)
    assert checked_nfd >= 3
    assert pages[-1].cursor == max(r.updated_at for r in raws).strftime("%Y-%m-%dT%H:%M:%S")


@pytest.mark.parametrize("records, page_size, requests", [(0, 5, 1), (1, 5, 1), (5, 5, 1), (23, 5, 6)])
async def test_paging_boundaries(vendor, records, page_size, requests):
    # One record per instant, so the number of requests is exact: each page after the first
    # starts at the newest record already read (the inclusive capnhattu boundary).
    sim, adapter = await vendor(records=records, page_size=page_size, per_timestamp=1)
    pages, raws = await read(adapter)
    assert sorted(r.source_id for r in raws) == sorted(sim.source_id(i) for i in range(records))
    assert sim.requests[RECORDS_PATH] == requests == len(pages)
    if records == 0:
        assert pages[0].records == [] and pages[0].cursor is None


async def test_more_records_in_one_instant_than_a_page_holds(vendor):
    sim, adapter = await vendor(records=17, page_size=2, per_timestamp=6)
    pages, raws = await read(adapter)
    assert sorted(r.source_id for r in raws) == sorted(sim.source_id(i) for i in range(17))
    assert all(len(p.records) <= 2 for p in pages)


async def test_incremental_read_from_a_saved_cursor(vendor):
    sim, adapter = await vendor(records=10, page_size=4)
    pages, raws = await read(adapter)
    cursor = pages[-1].cursor
    newest = max(r.updated_at for r in raws)
    boundary = {r.source_id for r in raws if r.updated_at == newest}

    _, again = await read(adapter, cursor)
    assert {r.source_id for r in again} == boundary

    changed = sim.update(2)
    deleted = sim.delete(5)
    pages, delta = await read(adapter, cursor)
    assert sorted(r.source_id for r in delta) == sorted(boundary | {changed, deleted})
    by_id = {r.source_id: r for r in delta}
    assert by_id[deleted].deleted and not by_id[changed].deleted
    assert central(adapter, by_id[changed]) == expected(sim.central(2))
    assert central(adapter, by_id[changed]) != expected(transcript(2, 0))

    _, last = await read(adapter, pages[-1].cursor)
    assert [r.source_id for r in last] == [deleted]


async def test_a_record_edited_during_a_read_is_still_read(vendor):
    sim, adapter = await vendor(records=12, page_size=3, per_timestamp=1)
    seen = []
    async for page in adapter.fetch(None):
        if not seen:
            # Page numbering would shift every later record back by one; re-anchoring must not lose one.
            sim.update(1)
        seen.extend(r.source_id for r in page.records)
    assert set(seen) == {sim.source_id(i) for i in range(12)}
    assert seen.count(sim.source_id(1)) == 2


async def test_a_bad_cursor_is_a_clear_error(vendor):
    _, adapter = await vendor(records=1)
    with pytest.raises(VnptError, match="cursor 'yesterday'"):
        await read(adapter, "yesterday")


# --- tokens, faults and retries ----------------------------------------------------------------

async def test_token_expiry_mid_read_recovers(vendor):
    sim, adapter = await vendor(records=12, page_size=3, per_timestamp=1)
    seen = []
    async for page in adapter.fetch(None):
        if not seen:
            sim.expire_tokens()
        seen.extend(r.source_id for r in page.records)
    assert sorted(seen) == sorted(sim.source_id(i) for i in range(12))
    statuses = api_statuses(sim)
    refused = statuses.index((RECORDS_PATH, 401))
    assert statuses[refused + 1] == (TOKEN_PATH, 200) and statuses[refused + 2] == (RECORDS_PATH, 200)
    assert sim.requests[TOKEN_PATH] == 2


async def test_short_lived_tokens_are_renewed_before_they_expire(vendor):
    sim, adapter = await vendor(records=4, page_size=2, per_timestamp=1)
    sim.faults.token_ttl_seconds = 1
    await read(adapter)
    await asyncio.sleep(1.0)
    await read(adapter)
    assert (RECORDS_PATH, 401) not in api_statuses(sim)
    assert sim.requests[TOKEN_PATH] == 2


# --- check -------------------------------------------------------------------------------------

async def test_check_healthy(vendor):
    sim, adapter = await vendor(records=4)
    health = await adapter.check()
    assert health.ok and "4 transcript" in health.detail


# --- normalize ---------------------------------------------------------------------------------

def raw_of(record: dict) -> RawRecord:
    return RawRecord(source_id=str(record.get("IdHocBa")), payload=json.dumps(record, ensure_ascii=False).encode())


def adapter_only(tmp_path) -> VnptAdapter:
    return make_adapter({"base_url": "http://127.0.0.1:9", "client_id": "id", "client_secret": "s"}, tmp_path)


def test_the_examples(tmp_path):
    adapter = adapter_only(tmp_path)
    record = json.loads((EXAMPLES / "record.json").read_text("utf-8"))
    result = central(adapter, raw_of(record))
    assert result["competencies"]["ngon_ngu"] == "T" and "cong_nghe" not in result["competencies"]
    assert result["awards"] == ["Học sinh Xuất sắc"] and result["completed_primary_program"] is True
    invalid = json.loads((EXAMPLES / "invalid.json").read_text("utf-8"))
    with pytest.raises(ValidationError) as err:
        central(adapter, raw_of(invalid))
    assert [line.split(":")[0] for line in field_errors(err.value)] == ["student.personal_id"]
    assert json.dumps(record, ensure_ascii=False, indent=2) in (EXAMPLES.parent / "CONTRACT.md").read_text("utf-8").replace("\n    ", "\n")


def strip_level(record: dict, level: str) -> None:
    """An unknown level and no level-specific key: nothing tells which shape it is."""
    record["CapHoc"] = level
    for key in ("PhamChat", "NangLuc", "HoanThanhChuongTrinhLopHoc", "HoanThanhChuongTrinhTieuHoc",
                "KhenThuong", "LenLop", "KetQuaGiaoDuc", "NhanXetPhamChat", "NhanXetNangLucChung",
                "NhanXetNangLucDacThu"):
        record.pop(key)


@pytest.mark.parametrize("index, edit, message", [
    (0, lambda r: r["HocSinh"].pop("HoTen"), "HocSinh.HoTen is missing"),
    (0, lambda r: r["KyDuyet"].pop("NgayKy"), "KyDuyet.NgayKy is missing"),
    (0, lambda r: r["KetQua"][1].pop("MaMon"), r"KetQua\[1\].MaMon is missing"),
    (0, lambda r: r["PhamChat"].pop("YeuNuoc"), "PhamChat.YeuNuoc is missing"),
    (0, lambda r: r.pop("MaDinhDanhHocBa"), "MaDinhDanhHocBa is missing"),
    (3, lambda r: r["HocLuc"].pop("CN"), "HocLuc.CN is missing"),
    (3, lambda r: r.pop("SoNgayNghi"), "SoNgayNghi is missing"),
    (0, lambda r: r["HocSinh"].update(SoHoChieu="B1234567"), "HocSinh.SoHoChieu is not part of the vnpt contract"),
    (0, lambda r: r.update(DiemRenLuyen=9), "DiemRenLuyen is not part of the vnpt contract"),
    (0, lambda r: r.update(HocLuc={"CN": "T"}), "HocLuc belongs to secondary"),
    (3, lambda r: r["KetQua"][0].update(MucDatCN="T"), r"KetQua\[0\].MucDatCN is not part"),
    (0, lambda r: r.pop("CapHoc"), "CapHoc is missing"),
    (0, lambda r: strip_level(r, "09"), "CapHoc is not 02, 03 or 04"),
])
def test_normalize_names_the_vendor_key(tmp_path, index, edit, message):
    record = copy.deepcopy(VnptSimulator(records=4).vendor_record(index))
    edit(record)
    with pytest.raises(ValueError, match=message):
        adapter_only(tmp_path).normalize(raw_of(record))


def test_blank_values_are_left_to_the_central_format(tmp_path):
    record = VnptSimulator(records=4).vendor_record(3)
    record["HocSinh"]["DanToc"] = ""
    record["KetQua"][0]["DiemTBCN"] = "8,5"
    result = central(adapter_only(tmp_path), raw_of(record))
    assert result["student"]["ethnicity"] is None
    assert result["subjects"][0]["year_average"] == 8.5
    # A blank gender is missing, not "unknown" (0 says unknown).
    record["HocSinh"]["GioiTinh"] = ""
    with pytest.raises(ValidationError) as err:
        central(adapter_only(tmp_path), raw_of(record))
    assert [line.split(":")[0] for line in field_errors(err.value)] == ["student.gender"]
    record["HocSinh"]["GioiTinh"] = 0
    assert central(adapter_only(tmp_path), raw_of(record))["student"]["gender"] == 0
    record["HocSinh"]["HoTen"] = "  "
    with pytest.raises(ValidationError) as err:
        central(adapter_only(tmp_path), raw_of(record))
    assert [line.split(":")[0] for line in field_errors(err.value)] == ["student.full_name"]


def test_an_empty_personal_id_means_unknown(tmp_path):
    record = VnptSimulator(records=4).vendor_record(3)
    record["HocSinh"]["SoDinhDanh"] = ""
    assert central(adapter_only(tmp_path), raw_of(record))["student"]["personal_id"] is None
