"""The vnEdu-style contract (CONTRACT.md) served over real HTTP, with the faults a real server has.

Records come from ``hub.kit.synthetic`` and are encoded in the vendor's shape with its quirks:
some names in NFD, ``dd/MM/yyyy`` dates, ``Nam``/``Nữ``, some averages as comma-decimal
strings, ``""`` for unknown values. Timestamps are deterministic (several records share one
``NgayCapNhat``, as a bulk edit in a school produces) so paging is stable and the inclusive
``capnhattu`` boundary is exercised.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from hub import (
    Faults,
    FaultySimulator,
    FeedRow,
    SyntheticFeed,
    maintenance_page,
    nfd,
)

TOKEN_PATH = "/oauth/token"
RECORDS_PATH = "/api/v1/hocba"
MAX_PAGE_SIZE = 500
FIRST_UPDATE = dt.datetime(2025, 6, 1, 7, 0, 0)
_ID_NAMESPACE = uuid.UUID("6f1c0b4e-8d7a-4c1e-9a51-5b0e2f1d7c3a")
_TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}")

QUALITY_KEYS = {"yeu_nuoc": "YeuNuoc", "nhan_ai": "NhanAi", "cham_chi": "ChamChi",
                "trung_thuc": "TrungThuc", "trach_nhiem": "TrachNhiem"}
COMPETENCY_KEYS = {"tu_chu_tu_hoc": "TuChuTuHoc", "giao_tiep_hop_tac": "GiaoTiepHopTac",
                   "giai_quyet_van_de_sang_tao": "GiaiQuyetVanDeSangTao", "ngon_ngu": "NgonNgu",
                   "tinh_toan": "TinhToan", "khoa_hoc": "KhoaHoc", "cong_nghe": "CongNghe",
                   "tin_hoc": "TinHoc", "tham_my": "ThamMi", "the_chat": "TheChat"}
TERM_KEYS = {"term1": "HK1", "term2": "HK2", "year": "CN"}


@dataclass
class VnptFaults(Faults):
    """The standard switches (``hub.contracts.Faults``) plus this vendor's own misbehaviour.

    Unlike the base contract, every ``*_next_n`` here counts down on every request, the token
    endpoint too (where a real vnEdu-style server fails first), checked in this order:
    ``outage``, drop, stall, 5xx, 429, HTML, truncate; a test can still predict exactly which
    request fails.
    """
    stall_next_n: int = 0              # hang for ``stall_seconds`` (longer than a client timeout)
    stall_seconds: float = 30.0
    status_5xx: int = 503              # the status ``fail_next_n`` answers with
    html_next_n: int = 0               # 200 with an HTML maintenance page (a proxy in front)
    truncate_next_n: int = 0           # 200 with JSON cut off half-way
    token_ttl_seconds: int = 3600      # ``expires_in`` of tokens issued from now on


def _vn_date(iso: str | None) -> str | None:
    """ISO ``yyyy-MM-dd`` → the vendor's ``dd/MM/yyyy``, keeping impossible dates impossible."""
    if iso is None:
        return None
    year, month, day = iso.split("-")
    return f"{day}/{month}/{year}"


def _comma(value: float | None) -> str | None:
    return None if value is None else f"{value:.1f}".replace(".", ",")


def to_vendor(central: dict[str, Any], *, source_id: str, updated: dt.datetime,
              deleted: bool = False, quirks: int = 0) -> dict[str, Any]:
    """Encode one central-format transcript (``hub.kit.synthetic`` shape) as a vendor record.

    ``quirks`` picks which vendor habits this record shows, so a run mixes them.
    """
    student, signer = central["student"], central["signatories"]
    decomposed_student = quirks % 3 == 1
    decomposed_signers = quirks % 3 == 2
    s_text = nfd if decomposed_student else (lambda t: t)
    k_text = nfd if decomposed_signers else (lambda t: t)
    gender = {1: "Nam", 2: "Nữ"}.get(student.get("gender"), "")
    record: dict[str, Any] = {
        "IdHocBa": source_id,
        "NgayCapNhat": updated.strftime("%Y-%m-%dT%H:%M:%S"),
        "DaXoa": deleted,
        "NguoiCapNhat": "gvcn." + central["school_code"],
        "MaDinhDanhHocBa": central["transcript_id"],
        "TrangThaiHocBa": central.get("status", "1"),
        "MaSoGD": central["department_code"],
        "MaTruong": central["school_code"],
        "TenTruong": central["school_name"],
        "CapHoc": central["level"],
        "Khoi": central["grade"],
        "TenLop": central["class_name"],
        "NamHoc": central["school_year"],
        "HocSinh": {
            "MaHocSinh": student["student_code"],
            "SoDinhDanh": student.get("personal_id") or "",
            "HoTen": s_text(student["full_name"]),
            "NgaySinh": _vn_date(student["birth_date"]),
            "GioiTinh": s_text(gender),
            "DanToc": student.get("ethnicity") or "",
            "QuocTich": student.get("nationality") or "",
            "HoTenCha": s_text(student.get("father_name") or ""),
            "HoTenMe": s_text(student.get("mother_name") or ""),
            "HoTenNguoiGiamHo": s_text(student.get("guardian_name") or ""),
            "DoiTuongChinhSach": student.get("policy_group") or "",
            "KhuyetTatKhongDanhGia": bool(student.get("disability_not_assessed", False)),
            "NoiSinh": student.get("birth_place") or "",
            "NoiOHienNay": s_text(student.get("residence") or ""),
            "SoDangBo": student.get("registration_number") or "",
        },
        "NhanXetGVCN": central.get("homeroom_comment") or "",
    }
    if "qualities" in central:
        record["KetQua"] = [
            {"MaMon": s["subject_code"], "TenMon": s["subject_name"],
             "MucDatHK1": s.get("term1_level"), "MucDatCN": s["year_level"],
             "DiemHK1": s.get("term1_score"), "DiemCN": s.get("year_score"),
             "NhanXet": s.get("comment") or ""}
            for s in central["subjects"]
        ]
        record["PhamChat"] = {QUALITY_KEYS[k]: v for k, v in central["qualities"].items()}
        record["NangLuc"] = {COMPETENCY_KEYS[k]: v for k, v in central["competencies"].items()}
        record["HoanThanhChuongTrinhLopHoc"] = central["completed_grade_program"]
        record["HoanThanhChuongTrinhTieuHoc"] = central.get("completed_primary_program")
        record["LenLop"] = central["promoted"]
        record["KhenThuong"] = list(central.get("awards", []))
        record["KetQuaGiaoDuc"] = central.get("overall_result")
        record["NhanXetPhamChat"] = central.get("qualities_comment") or ""
        record["NhanXetNangLucChung"] = central.get("general_competencies_comment") or ""
        record["NhanXetNangLucDacThu"] = central.get("subject_competencies_comment") or ""
    else:
        # Older school databases keep averages as text with a decimal comma.
        score = _comma if quirks % 2 == 1 else (lambda v: v)
        record["KetQua"] = []
        for s in central["subjects"]:
            if s.get("year_comment") is not None:
                record["KetQua"].append(
                    {"MaMon": s["subject_code"], "TenMon": s["subject_name"],
                     "KetQuaHK1": s.get("term1_comment"), "KetQuaHK2": s.get("term2_comment"),
                     "KetQuaCN": s["year_comment"], "GiaoVienBoMon": s.get("teacher_name") or ""})
            else:
                record["KetQua"].append(
                    {"MaMon": s["subject_code"], "TenMon": s["subject_name"],
                     "DiemTBHK1": score(s.get("term1_average")), "DiemTBHK2": score(s.get("term2_average")),
                     "DiemTBCN": score(s["year_average"]), "GiaoVienBoMon": s.get("teacher_name") or ""})
        record["HocLuc"] = {TERM_KEYS[k]: v for k, v in central["learning"].items()}
        record["HanhKiem"] = {TERM_KEYS[k]: v for k, v in central["conduct"].items()}
        record["SoNgayNghi"] = central.get("days_absent", 0)
        record["LenLop"] = central["promoted"]
        record["HoanThanhChuongTrinhCapHoc"] = central.get("completed_level_program")
        record["KhenThuong"] = list(central.get("awards", []))
        record["ChungChi"] = [
            {"TenChungChi": c["name"], "NgayCap": _vn_date(c.get("issued_on")), "NoiCap": c.get("issuer") or ""}
            for c in central.get("certificates", [])
        ]
    record["KyDuyet"] = {
        "GVCN": k_text(signer["homeroom_teacher_name"]),
        "SoDinhDanhGVCN": signer.get("homeroom_teacher_personal_id") or "",
        "HieuTruong": k_text(signer["principal_name"]),
        "SoDinhDanhHieuTruong": signer.get("principal_personal_id") or "",
        "ChucVu": signer.get("principal_title", "Hiệu trưởng"),
        "NgayKy": _vn_date(signer["issue_date"]),
        "DiaDanh": signer["issue_place"],
    }
    return record


@dataclass
class _Row(FeedRow):
    def vendor(self) -> dict[str, Any]:
        return to_vendor(self.central, source_id=self.source_id, updated=self.updated,
                         deleted=self.deleted, quirks=self.quirks)


class VnptSimulator(SyntheticFeed, FaultySimulator):
    """A vnEdu-style school-software server on loopback, serving CONTRACT.md with fault switches.

    ``faults`` flips failures on (``VnptFaults``); ``requests`` counts requests by path and
    ``log`` lists ``(method, path, status)`` in order (status 0: connection dropped), so tests
    can prove a retry or a re-authentication happened.
    """
    id_namespace = _ID_NAMESPACE
    first_update = FIRST_UPDATE
    row_type = _Row
    # Small enough that a few dozen records span several pages, so the demo and the
    # conformance kit's paging cases exercise paging; ``adapter_settings`` asks for it.
    page_size: int | None = 20

    def __init__(self, *, records: int = 0, invalid: int = 0, seed: int = 0,
                 client_id: str = "sogddt-hocba-hub", client_secret: str | None = None,
                 per_timestamp: int = 3):
        super().__init__(records=records, invalid=invalid, seed=seed)
        self.client_id = client_id
        self.client_secret = client_secret or secrets.token_urlsafe(24)
        self.faults = VnptFaults()
        self._tokens: dict[str, float] = {}
        self.fill(records, invalid, per_timestamp)

    # --- what tests and the demo use ---------------------------------------------------------

    def vendor_record(self, index: int) -> dict[str, Any]:
        """Record ``index`` as the API serves it (invalid records follow the valid ones)."""
        return self._rows[index].vendor()

    def expire_tokens(self) -> None:
        """Revoke every issued token, as a server restart or a key rotation does."""
        self._tokens.clear()

    # --- Simulator protocol ------------------------------------------------------------------

    def routes(self) -> list[web.RouteDef]:
        return [web.post(TOKEN_PATH, self._token), web.get(RECORDS_PATH, self._records)]

    def adapter_settings(self) -> dict[str, Any]:
        return {"base_url": self.base_url, "client_id": self.client_id, "client_secret": self.client_secret,
                "page_size": self.page_size}

    # --- HTTP --------------------------------------------------------------------------------

    # Standard switches: hub.kit.simulation.FaultySimulator (every request counts them down here).

    def _fault_response(self, kind: str, status: int, headers: dict[str, str] | None = None) -> web.Response:
        message = {"outage": "Hệ thống đang bảo trì", "fail": "Hệ thống đang bận",
                   "rate_limit": "Quá nhiều yêu cầu"}[kind]
        return web.json_response({"error": message}, status=status, headers=headers)

    async def _vendor_faults(self, request: web.Request, handler) -> web.StreamResponse:
        f = self.faults
        if f.html_next_n > 0:
            f.html_next_n -= 1
            return maintenance_page()
        if f.truncate_next_n > 0:
            f.truncate_next_n -= 1
            full = await handler(request)
            body = full.body if isinstance(full, web.Response) and isinstance(full.body, bytes) else b"{}"
            return web.Response(body=body[: max(1, len(body) // 2)], status=full.status,
                                content_type="application/json", charset="utf-8")
        return await handler(request)

    @staticmethod
    def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
        return web.Response(body=json.dumps(data, ensure_ascii=False).encode("utf-8"), status=status,
                            content_type="application/json", charset="utf-8", headers=headers)

    async def _token(self, request: web.Request) -> web.Response:
        form = await request.post()
        if form.get("grant_type") != "client_credentials":
            return self._json({"error": "unsupported_grant_type",
                               "error_description": "Chỉ hỗ trợ grant_type=client_credentials"}, 400)
        client_id, client_secret = form.get("client_id"), form.get("client_secret")
        if not (isinstance(client_id, str) and isinstance(client_secret, str)
                and secrets.compare_digest(client_id, self.client_id)
                and secrets.compare_digest(client_secret.encode(), self.client_secret.encode())):
            return self._json({"error": "invalid_client",
                               "error_description": "Sai mã ứng dụng hoặc khoá bí mật"}, 401)
        token = secrets.token_urlsafe(32)
        ttl = self.faults.token_ttl_seconds
        self._tokens[token] = time.monotonic() + ttl
        return self._json({"access_token": token, "token_type": "Bearer", "expires_in": ttl})

    def _authorized(self, request: web.Request) -> bool:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        expires = self._tokens.get(token.strip()) if scheme.lower() == "bearer" else None
        if expires is None:
            return False
        if time.monotonic() >= expires:
            del self._tokens[token.strip()]
            return False
        return True

    async def _records(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._json({"error": "invalid_token", "error_description": "Token không hợp lệ hoặc đã hết hạn"},
                              401, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
        query = request.query
        since: dt.datetime | None = None
        if query.get("capnhattu"):
            if not _TIMESTAMP.fullmatch(query["capnhattu"]):
                return self._json({"error": "invalid_request",
                                   "error_description": "capnhattu phải có dạng yyyy-MM-ddTHH:mm:ss"}, 400)
            since = dt.datetime.fromisoformat(query["capnhattu"])
        try:
            page = int(query.get("trang", "1"))
            size = int(query.get("sobanghi", "100"))
        except ValueError:
            page = size = 0
        if page < 1 or not 1 <= size <= MAX_PAGE_SIZE:
            return self._json({"error": "invalid_request",
                               "error_description": f"trang ≥ 1, sobanghi từ 1 đến {MAX_PAGE_SIZE}"}, 400)
        rows = sorted((r for r in self._rows if since is None or r.updated >= since),
                      key=lambda r: (r.updated, r.source_id))
        chunk = rows[(page - 1) * size: page * size]
        return self._json({"TongSo": len(rows), "Trang": page, "SoBanGhi": size,
                           "DuLieu": [r.vendor() for r in chunk]})
