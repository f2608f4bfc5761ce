"""Pull adapter for vnEdu-style school software: the contract in CONTRACT.md, nothing more.

``fetch`` pages through ``GET /api/v1/hocba`` by update time with an OAuth2
client-credentials token; ``normalize`` maps the Vietnamese PascalCase record to the central
format's snake_case fields and leaves value cleaning to ``hub.records``.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any, ClassVar

from pydantic import Field, SecretStr
from yarl import URL

from hub import (
    VIETNAM_TIME,
    Adapter,
    Health,
    HttpPullMixin,
    HttpPullSettings,
    Page,
    PluginContext,
    PluginError,
    PluginSettings,
    RawRecord,
    Transient,
    as_list,
    as_object,
    load_json,
    map_keys,
    vietnam_time,
    where,
)

TOKEN_PATH = "/oauth/token"
RECORDS_PATH = "/api/v1/hocba"
_TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%S"


class VnptError(PluginError):
    """The vendor's server answered in a way the contract does not allow, or not at all."""


class _Unauthorized(Exception):
    """The bearer token was refused (expired or revoked)."""


class VnptSettings(HttpPullSettings):
    """The ``settings`` of a ``vnpt`` adapter in the hub's YAML."""
    client_id: str = Field(min_length=1, description="OAuth2 client id issued to the province")
    client_secret: SecretStr = Field(min_length=1, description="OAuth2 client secret; use ${ENV_VAR}")
    page_size: int = Field(default=100, ge=1, le=500, description="Records per page (sobanghi)")


def _parse_timestamp(value: Any) -> dt.datetime:
    """A vendor timestamp as naive Vietnam local time (the contract's clock)."""
    return vietnam_time(value).replace(tzinfo=None)


class VnptAdapter(HttpPullMixin, Adapter):
    """Pulls transcripts from vnEdu-style school software (REST/JSON, OAuth2 client credentials).

    The cursor is the latest ``NgayCapNhat`` already handed to the hub (``yyyy-MM-ddTHH:mm:ss``,
    Vietnam time); the next pull asks for ``capnhattu`` ≥ it, so records sharing that instant
    are read again and the hub drops them as unchanged.
    """
    name: ClassVar[str] = "vnpt"
    Settings: ClassVar[type[PluginSettings]] = VnptSettings
    simulator: ClassVar[str | None] = "adapters.vnpt.simulator:VnptSimulator"

    settings: VnptSettings
    Error: ClassVar[type[Exception]] = VnptError

    def __init__(self, settings: PluginSettings, context: PluginContext):
        super().__init__(settings, context)
        self._token: str | None = None
        self._token_expires = 0.0

    # --- lifecycle: open/close, base_url and retries come from hub.HttpPullMixin -----------------------

    def forget_credentials(self) -> None:
        self._token = None

    # --- HTTP plumbing -----------------------------------------------------------------------

    async def _send_once(self, method: str, url: str | URL, **kwargs: Any) -> tuple[int, str, bytes]:
        status, content_type, body, retry_after = await self.request(method, url, **kwargs)
        # Unlike hub.kit.http's default, only a 429's Retry-After is honoured; a 5xx backs off.
        if status == 429:
            if retry_after is not None and retry_after > self.settings.max_backoff_seconds:
                raise VnptError(
                    f"{method} {url}: rate limited, Retry-After {retry_after:g} s is longer than "
                    f"max_backoff_seconds ({self.settings.max_backoff_seconds:g}); the next poll resumes")
            raise Transient("429 Too Many Requests", retry_after)
        if status >= 500:
            raise Transient(f"HTTP {status}")
        return status, content_type, body

    async def _send(self, method: str, url: str | URL, *, attempts: int | None = None,
                    **kwargs: Any) -> tuple[int, str, bytes]:
        """One request, retried on transient faults; ``VnptError`` once the attempts are spent."""
        return await self.retry(method, url, attempts, lambda: self._send_once(method, url, **kwargs))

    async def _fetch_token(self, attempts: int | None = None) -> None:
        url = self.base_url + TOKEN_PATH
        status, content_type, body = await self._send(
            "POST", url, attempts=attempts,
            data={"grant_type": "client_credentials", "client_id": self.settings.client_id,
                  "client_secret": self.settings.client_secret.get_secret_value()})
        if status != 200:
            reason = f"HTTP {status}"
            try:
                answer = json.loads(body)
                reason = f"{answer.get('error', reason)}: {answer.get('error_description', '')}".rstrip(": ")
            except (ValueError, AttributeError):
                pass
            raise VnptError(self.scrub(
                f"token rejected: {reason} (POST {url}, client_id {self.settings.client_id!r}; "
                "check client_id and client_secret)"))
        answer = self.json_body("POST", url, content_type, body)
        token = answer.get("access_token") if isinstance(answer, dict) else None
        if not isinstance(token, str) or not token:
            raise VnptError(f"POST {url} answered 200 without an access_token")
        expires_in = answer.get("expires_in")
        lifetime = float(expires_in) if isinstance(expires_in, (int, float)) and expires_in > 0 else 300.0
        self._token = token
        # Renew a little early so a token does not expire between sending and the server checking it.
        self._token_expires = time.monotonic() + lifetime - min(30.0, lifetime * 0.1)

    async def _get(self, path: str, params: dict[str, Any], *, attempts: int | None = None) -> Any:
        """GET a JSON document with a valid token, re-authenticating once if the token was refused."""
        url = URL(self.base_url + path).with_query(params)
        shown = str(url)
        for renewed in (False, True):
            if renewed or self._token is None or time.monotonic() >= self._token_expires:
                await self._fetch_token(attempts)
            status, content_type, body = await self._send(
                "GET", url, attempts=attempts, headers={"Authorization": f"Bearer {self._token}"})
            if status == 401:
                if not renewed:
                    continue
                self._token = None
                raise VnptError(f"GET {shown}: a freshly issued token was refused (401)")
            if status != 200:
                snippet = body[:200].decode("utf-8", "replace")
                raise VnptError(f"GET {shown} answered HTTP {status}: {self.scrub(snippet)}")
            return self.json_body("GET", shown, content_type, body)
        raise AssertionError("unreachable")  # pragma: no cover

    # --- pull --------------------------------------------------------------------------------

    def _page(self, data: Any, shown: str) -> tuple[int, int, list[dict[str, Any]]]:
        data = self.page_answer(data, shown)
        total, size, rows = data.get("TongSo"), data.get("SoBanGhi"), data.get("DuLieu")
        if not isinstance(total, int) or not isinstance(size, int) or size < 1 or not isinstance(rows, list):
            raise VnptError(f"GET {shown}: the answer lacks TongSo, SoBanGhi (≥ 1) or a DuLieu list")
        return total, size, self.each_an_object(rows, f"GET {shown}: DuLieu")

    def _raw(self, row: dict[str, Any], where: str) -> tuple[RawRecord, dt.datetime]:
        # DaXoa may be 0/1 as well as a boolean (CONTRACT.md); NgayCapNhat has no offset.
        return self.json_record(row, where, id_key="IdHocBa", updated_key="NgayCapNhat", deleted_key="DaXoa",
                                parse_time=_parse_timestamp, numeric_deleted=True)

    async def fetch(self, cursor: str | None) -> AsyncIterator[Page]:
        """Yield one ``Page`` per HTTP page of records updated at or after ``cursor``.

        Each request re-anchors ``capnhattu`` at the newest timestamp read so far, so a record
        edited during the pull moves to the end of the feed and is read there, instead of
        shifting page numbers under the reader. Records already yielded in this pull at the
        anchor instant are skipped; page numbers only advance inside one instant.
        """
        since: dt.datetime | None = None
        if cursor:
            try:
                since = _parse_timestamp(cursor)
            except ValueError as exc:
                raise VnptError(f"cursor {cursor!r} is not a vnpt cursor: {exc}") from None
        page_no = 1
        seen_at_since: set[str] = set()   # ids yielded in this pull whose NgayCapNhat == since
        while True:
            params: dict[str, Any] = {"trang": page_no, "sobanghi": self.settings.page_size}
            if since is not None:
                params = {"capnhattu": since.strftime(_TIMESTAMP_FORMAT), **params}
            shown = str(URL(self.base_url + RECORDS_PATH).with_query(params))
            total, size, rows = self._page(await self._get(RECORDS_PATH, params), shown)
            read = [self._raw(row, f"GET {shown}: DuLieu[{i}]") for i, row in enumerate(rows)]
            records = [raw for raw, updated in read
                       if not (updated == since and raw.source_id in seen_at_since)]
            last_page = not read or page_no * size >= total
            if read:
                newest = max(updated for _, updated in read)
                if since is None or newest > since:
                    since, page_no = newest, 1
                    seen_at_since = {raw.source_id for raw, updated in read if updated == newest}
                else:
                    # The whole page shares one instant: only here do page numbers advance.
                    page_no += 1
                    seen_at_since |= {raw.source_id for raw, _ in read}
            # The saved cursor never passes the hub's own clock: a record the vendor dates in the
            # future must not make the next poll skip every real edit until that date.
            saved = min(since, dt.datetime.now(VIETNAM_TIME).replace(tzinfo=None, microsecond=0)) if since else None
            yield Page(records, saved.strftime(_TIMESTAMP_FORMAT) if saved is not None else None)
            if last_page:
                return

    async def check(self) -> Health:
        """Get a token and read one record: proves reachability, credentials and permission."""
        async def probe() -> str:
            # Always a fresh token: a rotated secret must show here, not when the cached token expires.
            await self._fetch_token(attempts=1)
            data = await self._get(RECORDS_PATH, {"trang": 1, "sobanghi": 1}, attempts=1)
            total = data.get("TongSo") if isinstance(data, dict) else None
            return f"token accepted; {total} transcript(s) available"
        return await self.checked(probe)

    # --- normalise ---------------------------------------------------------------------------

    def read_file(self, name: str, data: bytes) -> list[RawRecord]:
        """One vendor record (a ``DuLieu`` element) saved as JSON, with its envelope."""
        return self.one_json_record(name, data, self._raw)

    def normalize(self, raw: RawRecord) -> dict[str, Any]:
        # Duplicate keys, deep nesting and non-JSON are refused with the reason (ContractError).
        return to_central(load_json(raw.payload))


# --- the vendor record → central-format fields ---------------------------------------------------
#
# Each table maps a vendor key to (central field, required). A required key that is absent is
# the vendor breaking the contract and is reported with the vendor's name for it; a key that
# is present but blank or malformed is passed on, so hub.records names the central field.

ENVELOPE_KEYS = frozenset({"IdHocBa", "NgayCapNhat", "DaXoa"})   # read by fetch, not content
IGNORED_KEYS = frozenset({"NguoiCapNhat"})                      # audit trail, not on a transcript

TRANSCRIPT = {
    "MaDinhDanhHocBa": ("transcript_id", True), "TrangThaiHocBa": ("status", False),
    "MaSoGD": ("department_code", True), "MaTruong": ("school_code", True),
    "TenTruong": ("school_name", True), "CapHoc": ("level", True), "Khoi": ("grade", True),
    "TenLop": ("class_name", True), "NamHoc": ("school_year", True),
    "NhanXetGVCN": ("homeroom_comment", False),
}
STUDENT = {
    "MaHocSinh": ("student_code", True), "SoDinhDanh": ("personal_id", False),
    "HoTen": ("full_name", True), "NgaySinh": ("birth_date", True), "GioiTinh": ("gender", True),
    "DanToc": ("ethnicity", False), "QuocTich": ("nationality", False),
    "HoTenCha": ("father_name", False), "HoTenMe": ("mother_name", False),
    "HoTenNguoiGiamHo": ("guardian_name", False), "DoiTuongChinhSach": ("policy_group", False),
    "KhuyetTatKhongDanhGia": ("disability_not_assessed", False),
    "NoiSinh": ("birth_place", False), "NoiOHienNay": ("residence", False),
    "SoDangBo": ("registration_number", False),
}
SIGNATORIES = {
    "GVCN": ("homeroom_teacher_name", True), "SoDinhDanhGVCN": ("homeroom_teacher_personal_id", False),
    "HieuTruong": ("principal_name", True), "SoDinhDanhHieuTruong": ("principal_personal_id", False),
    "ChucVu": ("principal_title", False), "NgayKy": ("issue_date", True), "DiaDanh": ("issue_place", True),
}
PRIMARY = {
    "HoanThanhChuongTrinhLopHoc": ("completed_grade_program", True),
    "HoanThanhChuongTrinhTieuHoc": ("completed_primary_program", False),
    "LenLop": ("promoted", True),
    "KetQuaGiaoDuc": ("overall_result", False), "NhanXetPhamChat": ("qualities_comment", False),
    "NhanXetNangLucChung": ("general_competencies_comment", False),
    "NhanXetNangLucDacThu": ("subject_competencies_comment", False),
}
PRIMARY_SUBJECT = {
    "MaMon": ("subject_code", True), "TenMon": ("subject_name", True),
    "MucDatHK1": ("term1_level", False), "MucDatCN": ("year_level", True),
    "DiemHK1": ("term1_score", False), "DiemCN": ("year_score", False), "NhanXet": ("comment", False),
}
QUALITIES = {
    "YeuNuoc": ("yeu_nuoc", True), "NhanAi": ("nhan_ai", True), "ChamChi": ("cham_chi", True),
    "TrungThuc": ("trung_thuc", True), "TrachNhiem": ("trach_nhiem", True),
}
GENERAL_COMPETENCIES = {
    "TuChuTuHoc": ("tu_chu_tu_hoc", True), "GiaoTiepHopTac": ("giao_tiep_hop_tac", True),
    "GiaiQuyetVanDeSangTao": ("giai_quyet_van_de_sang_tao", True),
}
SUBJECT_COMPETENCIES = {
    "NgonNgu": ("ngon_ngu", False), "TinhToan": ("tinh_toan", False), "KhoaHoc": ("khoa_hoc", False),
    "CongNghe": ("cong_nghe", False), "TinHoc": ("tin_hoc", False), "ThamMi": ("tham_my", False),
    "TheChat": ("the_chat", False),
}
SECONDARY = {"SoNgayNghi": ("days_absent", True), "LenLop": ("promoted", True),
             "HoanThanhChuongTrinhCapHoc": ("completed_level_program", False)}
SECONDARY_SUBJECT = {
    "MaMon": ("subject_code", True), "TenMon": ("subject_name", True),
    "DiemTBHK1": ("term1_average", False), "DiemTBHK2": ("term2_average", False),
    "DiemTBCN": ("year_average", False), "KetQuaHK1": ("term1_comment", False),
    "KetQuaHK2": ("term2_comment", False), "KetQuaCN": ("year_comment", False),
    "GiaoVienBoMon": ("teacher_name", False),
}
TERMS = {"HK1": ("term1", False), "HK2": ("term2", False), "CN": ("year", True)}
CERTIFICATE = {"TenChungChi": ("name", True), "NgayCap": ("issued_on", False), "NoiCap": ("issuer", False)}

PRIMARY_KEYS = frozenset(PRIMARY) | {"PhamChat", "NangLuc", "KhenThuong"}
SECONDARY_KEYS = frozenset(SECONDARY) | {"HocLuc", "HanhKiem", "ChungChi", "KhenThuong"}
COMMON_KEYS = frozenset(TRANSCRIPT) | {"HocSinh", "KyDuyet", "KetQua"} | ENVELOPE_KEYS | IGNORED_KEYS


def _object(value: Any, path: str) -> dict[str, Any]:
    return as_object(value, path)


def _map(obj: dict[str, Any], path: str, table: dict[str, tuple[str, bool]],
         allowed: Iterable[str] = ()) -> dict[str, Any]:
    return map_keys(obj, path, table, allowed, contract="vnpt")


def _shape(record: dict[str, Any]) -> tuple[str, Any]:
    """Primary or secondary, and the level value to hand on unchanged."""
    if "CapHoc" not in record:
        raise ValueError("CapHoc is missing")
    level = record["CapHoc"]
    if isinstance(level, int) and not isinstance(level, bool):
        level = str(level)
    code = level.strip().zfill(2) if isinstance(level, str) else None
    if code == "02":
        return "primary", level
    if code in ("03", "04"):
        return "secondary", level
    # An unknown level is the central format's error to name (``level``); map the content
    # by the keys it carries so that error is the one reported.
    if PRIMARY_KEYS & set(record):
        return "primary", level
    if SECONDARY_KEYS & set(record):
        return "secondary", level
    raise ValueError("CapHoc is not 02, 03 or 04")


def to_central(record: Any) -> dict[str, Any]:
    """Map one vendor record (a parsed ``DuLieu`` element) to central-format fields, no envelope."""
    record = _object(record, "(record)")
    shape, level = _shape(record)
    own, other = (PRIMARY_KEYS, SECONDARY_KEYS) if shape == "primary" else (SECONDARY_KEYS, PRIMARY_KEYS)
    for key in record:
        if key in other and key not in own:
            raise ValueError(f"{key} belongs to {'secondary (CapHoc 03/04)' if shape == 'primary' else 'primary (CapHoc 02)'} "
                             f"records, not to CapHoc {record['CapHoc']!r}")
    out = _map(record, "", TRANSCRIPT, COMMON_KEYS | own)
    out["level"] = level
    for key in ("HocSinh", "KyDuyet", "KetQua"):
        if key not in record:
            raise ValueError(f"{key} is missing")
    out["student"] = _map(_object(record["HocSinh"], "HocSinh"), "HocSinh", STUDENT)
    out["signatories"] = _map(_object(record["KyDuyet"], "KyDuyet"), "KyDuyet", SIGNATORIES)
    subject_table = PRIMARY_SUBJECT if shape == "primary" else SECONDARY_SUBJECT
    out["subjects"] = [
        _map(_object(s, where("KetQua", i)), where("KetQua", i), subject_table)
        for i, s in enumerate(as_list(record["KetQua"], "KetQua"))
    ]
    if shape == "primary":
        out.update(_map({k: record[k] for k in PRIMARY if k in record}, "", PRIMARY))
        for key in ("PhamChat", "NangLuc"):
            if key not in record:
                raise ValueError(f"{key} is missing")
        out["qualities"] = _map(_object(record["PhamChat"], "PhamChat"), "PhamChat", QUALITIES)
        competencies = _object(record["NangLuc"], "NangLuc")
        # A subject competency the school did not assess comes as null: it is simply absent.
        out["competencies"] = {
            **_map({k: v for k, v in competencies.items() if k not in SUBJECT_COMPETENCIES},
                   "NangLuc", GENERAL_COMPETENCIES),
            **{field: competencies[key] for key, (field, _) in SUBJECT_COMPETENCIES.items()
               if competencies.get(key) is not None},
        }
        if record.get("KhenThuong") is not None:
            out["awards"] = as_list(record["KhenThuong"], "KhenThuong")
    else:
        out.update(_map({k: record[k] for k in SECONDARY if k in record}, "", SECONDARY))
        for key, field in (("HocLuc", "learning"), ("HanhKiem", "conduct")):
            if key not in record:
                raise ValueError(f"{key} is missing")
            out[field] = _map(_object(record[key], key), key, TERMS)
        if record.get("KhenThuong") is not None:
            out["awards"] = as_list(record["KhenThuong"], "KhenThuong")
        if record.get("ChungChi") is not None:
            out["certificates"] = [
                _map(_object(c, where("ChungChi", i)), where("ChungChi", i), CERTIFICATE)
                for i, c in enumerate(as_list(record["ChungChi"], "ChungChi"))
            ]
    return out
