"""The Quảng Ích-style export (CONTRACT.md) served over real HTTP on loopback, with faults.

It encodes ``hub.kit.synthetic`` transcripts itself, independently of the adapter, so a mapping bug
in the adapter shows as a difference rather than cancelling out. The conformance kit and the
demo start it through ``QuangIchAdapter.simulator``.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import secrets
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from hub import INVALID_KINDS, FaultySimulator, invalid_transcript, nfd, transcript

SESSION_PATH = "/qi/v2/phien"
RECORDS_PATH = "/qi/v2/hocba"
MAX_PAGE = 500
FIRST_UPDATE = dt.datetime(2025, 6, 1, 7, 0, 0)

PRIMARY_SUBJECT = {"ma": "subject_code", "ten": "subject_name", "muc_hk1": "term1_level",
                   "muc_cn": "year_level", "diem_hk1": "term1_score", "diem_cn": "year_score",
                   "nhan_xet": "comment"}
SECONDARY_SUBJECT = {"ma": "subject_code", "ten": "subject_name", "tb_hk1": "term1_average",
                     "tb_hk2": "term2_average", "tb_cn": "year_average", "kq_hk1": "term1_comment",
                     "kq_hk2": "term2_comment", "kq_cn": "year_comment", "gv": "teacher_name"}
CERTIFICATE = {"ten": "name", "ngay_cap": "issued_on", "noi_cap": "issuer"}
STUDENT = {"hs_ma": "student_code", "hs_dinh_danh": "personal_id", "hs_ho_ten": "full_name",
           "hs_ngay_sinh": "birth_date", "hs_gioi_tinh": "gender", "hs_dan_toc": "ethnicity",
           "hs_quoc_tich": "nationality", "hs_cha": "father_name", "hs_me": "mother_name",
           "hs_giam_ho": "guardian_name", "hs_doi_tuong": "policy_group", "hs_kt_kdg": "disability_not_assessed",
           "hs_noi_sinh": "birth_place", "hs_noi_o": "residence", "hs_so_dang_bo": "registration_number"}
SIGNATORIES = {"ky_gvcn": "homeroom_teacher_name", "ky_gvcn_dinh_danh": "homeroom_teacher_personal_id",
               "ky_hieu_truong": "principal_name", "ky_hieu_truong_dinh_danh": "principal_personal_id",
               "ky_chuc_vu": "principal_title", "ky_ngay": "issue_date", "ky_dia_danh": "issue_place"}
TRANSCRIPT = {"ma_hoc_ba": "transcript_id", "trang_thai": "status", "ma_so": "department_code",
              "ma_truong": "school_code", "ten_truong": "school_name", "cap_hoc": "level", "khoi": "grade",
              "lop": "class_name", "nam_hoc": "school_year", "nx_gvcn": "homeroom_comment"}
QUALITIES = ("yeu_nuoc", "nhan_ai", "cham_chi", "trung_thuc", "trach_nhiem")
COMPETENCIES = ("tu_chu_tu_hoc", "giao_tiep_hop_tac", "giai_quyet_van_de_sang_tao", "ngon_ngu", "tinh_toan",
                "khoa_hoc", "cong_nghe", "tin_hoc", "tham_my", "the_chat")
TERMS = {"hk1": "term1", "hk2": "term2", "cn": "year"}

COLUMNS = [
    "seq", "id", "cap_nhat", "xoa", *TRANSCRIPT, *STUDENT, *SIGNATORIES, "mon_hoc", "len_lop",
    *(f"pc_{q}" for q in QUALITIES), *(f"nl_{c}" for c in COMPETENCIES),
    "hoan_thanh_lop", "hoan_thanh_tieu_hoc", "khen_thuong", "ket_qua_gd", "nx_pham_chat", "nx_nang_luc_chung",
    "nx_nang_luc_dac_thu",
    *(f"hoc_luc_{t}" for t in TERMS), *(f"hanh_kiem_{t}" for t in TERMS), "so_ngay_nghi", "chung_chi",
    "hoan_thanh_cap_hoc",
]


def _cell(value: Any) -> str:
    """A value as the export writes it: CSV heritage, so always text."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return f"{value:.1f}".replace(".", ",")
    return str(value)


def _table(header: dict[str, str], rows: list[dict[str, Any]]) -> str:
    """An embedded table: ``;``-separated CSV with a header line; no rows → ``""``."""
    if not rows:
        return ""
    out = io.StringIO()
    writer = csv.writer(out, delimiter=";", lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow(_cell(row.get(field)) for field in header.values())
    return out.getvalue()


def to_row(central: dict[str, Any], *, source_id: str, seq: int, updated: dt.datetime,
           deleted: bool = False, quirks: int = 0) -> dict[str, str]:
    """One central-format transcript (``hub.kit.synthetic`` shape) as an export row, every cell text."""
    names = nfd if quirks % 3 == 1 else (lambda t: t)
    student = dict(central["student"])
    for key in ("full_name", "father_name", "mother_name"):
        if student.get(key):
            student[key] = names(student[key])
    row = {column: "" for column in COLUMNS}
    row.update(seq=str(seq), id=source_id, cap_nhat=updated.strftime("%Y-%m-%d %H:%M:%S"), xoa=_cell(deleted))
    row.update({col: _cell(central.get(field)) for col, field in TRANSCRIPT.items()})
    row["trang_thai"] = central.get("status", "1")
    row.update({col: _cell(student.get(field)) for col, field in STUDENT.items()})
    row["hs_kt_kdg"] = _cell(bool(student.get("disability_not_assessed", False)))
    row.update({col: _cell(central["signatories"].get(field)) for col, field in SIGNATORIES.items()})
    row["len_lop"] = _cell(central["promoted"])
    if "qualities" in central:
        row["mon_hoc"] = _table(PRIMARY_SUBJECT, central["subjects"])
        row.update({f"pc_{q}": v for q, v in central["qualities"].items()})
        row.update({f"nl_{c}": v for c, v in central["competencies"].items()})
        row["hoan_thanh_lop"] = _cell(central["completed_grade_program"])
        row["hoan_thanh_tieu_hoc"] = _cell(central.get("completed_primary_program"))
        for col, field in (("ket_qua_gd", "overall_result"), ("nx_pham_chat", "qualities_comment"),
                           ("nx_nang_luc_chung", "general_competencies_comment"),
                           ("nx_nang_luc_dac_thu", "subject_competencies_comment")):
            row[col] = _cell(central.get(field))
    else:
        row["mon_hoc"] = _table(SECONDARY_SUBJECT, central["subjects"])
        for col, period in TERMS.items():
            row[f"hoc_luc_{col}"] = _cell(central["learning"].get(period))
            row[f"hanh_kiem_{col}"] = _cell(central["conduct"].get(period))
        row["so_ngay_nghi"] = _cell(central.get("days_absent", 0))
        row["chung_chi"] = _table(CERTIFICATE, central.get("certificates", []))
        row["hoan_thanh_cap_hoc"] = _cell(central.get("completed_level_program"))
    row["khen_thuong"] = _table({"ten": "name"}, [{"name": a} for a in central.get("awards", [])])
    return row


@dataclass
class _Record:
    central: dict[str, Any]
    source_id: str
    seq: int
    updated: dt.datetime
    quirks: int
    deleted: bool = False

    def row(self) -> dict[str, str]:
        return to_row(self.central, source_id=self.source_id, seq=self.seq, updated=self.updated,
                      deleted=self.deleted, quirks=self.quirks)


class QuangIchSimulator(FaultySimulator):
    """A Quảng Ích-style export server on loopback; ``faults`` are the standard switches."""
    page_size: int | None = 25   # what adapter_settings() asks for: a few dozen records page
    shutdown_timeout = 0.5       # a stalled request must not hold stop() for aiohttp's minute

    def __init__(self, *, records: int = 0, invalid: int = 0, seed: int = 0,
                 connection_id: str = "sogddt-qi", api_key: str | None = None):
        super().__init__(records=records, invalid=invalid, seed=seed)
        self.connection_id = connection_id
        self.api_key = api_key or secrets.token_urlsafe(24)
        self._sessions: dict[str, float] = {}
        self._records: list[_Record] = []
        self._seq = 0
        for i in range(records):
            central = transcript(i, seed)
            self._add(central, f"QI-{central['school_code']}-{i:06d}", i)
        for j in range(invalid):
            central, _kind, _field = invalid_transcript(records + j, seed, INVALID_KINDS[j % len(INVALID_KINDS)])
            # invalid_transcript borrows valid indices; its own transcript id keeps ids unique.
            central["transcript_id"] = f"HBLOI{seed % 1000:03d}{j:06d}"
            self._add(central, f"QI-LOI-{seed % 1000:03d}-{j:06d}", records + j)

    def _add(self, central: dict[str, Any], source_id: str, index: int) -> None:
        self._seq += 1
        self._records.append(_Record(central, source_id, self._seq,
                                     FIRST_UPDATE + dt.timedelta(minutes=index), quirks=index))

    def _touch(self, record: _Record) -> str:
        self._seq += 1
        record.seq = self._seq
        record.updated = max(r.updated for r in self._records) + dt.timedelta(minutes=1)
        return record.source_id

    # --- what tests and the kit use ------------------------------------------------------------

    def update(self, index: int) -> str:
        """Re-issue valid record ``index`` a day later (a new ``seq``); return its ``id``."""
        record = self._records[index]
        issued = dt.date.fromisoformat(record.central["signatories"]["issue_date"])
        record.central["signatories"]["issue_date"] = (issued + dt.timedelta(days=1)).isoformat()
        return self._touch(record)

    def delete(self, index: int) -> str:
        """Mark record ``index`` deleted (``xoa`` = 1, a new ``seq``); return its ``id``."""
        self._records[index].deleted = True
        return self._touch(self._records[index])

    def expire_tokens(self) -> None:
        self._sessions.clear()

    # --- Simulator protocol ---------------------------------------------------------------------

    def routes(self) -> list[web.RouteDef]:
        return [web.post(SESSION_PATH, self._session), web.get(RECORDS_PATH, self._page)]

    def adapter_settings(self) -> dict[str, Any]:
        return {"base_url": self.base_url, "connection_id": self.connection_id, "api_key": self.api_key,
                "page_size": self.page_size}

    # --- HTTP ---------------------------------------------------------------------------------

    # The standard switches come from hub.kit.simulation.FaultySimulator; only the error bodies are ours.
    data_paths = frozenset({RECORDS_PATH})   # sessions are not counted (hub.contracts.Faults)

    def _fault_response(self, kind: str, status: int, headers: dict[str, str] | None = None) -> web.Response:
        body = {"outage": {"ok": False, "loi": "BAO_TRI", "thong_bao": "Hệ thống đang bảo trì"},
                "fail": {"ok": False, "loi": "LOI_MAY_CHU"},
                "rate_limit": {"ok": False, "loi": "QUA_NHIEU_YEU_CAU"}}[kind]
        return web.json_response(body, status=status, headers=headers)

    async def _session(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return web.json_response({"ok": False, "loi": "YEU_CAU_SAI", "thong_bao": "Cần JSON"}, status=400)
        who, key = body.get("ma_ket_noi"), body.get("khoa")
        if not (isinstance(who, str) and isinstance(key, str) and secrets.compare_digest(who, self.connection_id)
                and secrets.compare_digest(key.encode(), self.api_key.encode())):
            return web.json_response({"ok": False, "loi": "SAI_KHOA",
                                      "thong_bao": "Sai mã kết nối hoặc khoá"}, status=403)
        session, ttl = secrets.token_urlsafe(24), 900
        self._sessions[session] = time.monotonic() + ttl
        return web.json_response({"ok": True, "phien": session, "het_han_sau": ttl})

    async def _page(self, request: web.Request) -> web.Response:
        expires = self._sessions.get(request.headers.get("X-QI-Phien", ""))
        if expires is None or time.monotonic() >= expires:
            return web.json_response({"ok": False, "loi": "PHIEN_HET_HAN"}, status=401)
        try:
            after, size = int(request.query.get("sau", "0")), int(request.query.get("so_luong", "100"))
        except ValueError:
            after = size = -1
        if after < 0 or not 1 <= size <= MAX_PAGE:
            return web.json_response({"ok": False, "loi": "YEU_CAU_SAI",
                                      "thong_bao": f"sau ≥ 0, so_luong từ 1 đến {MAX_PAGE}"}, status=400)
        newer = sorted((r for r in self._records if r.seq > after), key=lambda r: r.seq)
        chunk = newer[:size]
        return web.json_response({
            "ok": True,
            "cot": COLUMNS,
            "dong": [[row[c] for c in COLUMNS] for row in (r.row() for r in chunk)],
            "seq_cuoi": chunk[-1].seq if chunk else after,
            "con_nua": len(newer) > size,
        })
