"""Pull adapter for Quảng Ích-style school software: the contract in CONTRACT.md, nothing more.

``fetch`` reads the export's change feed page by page (``sau`` = the last ``seq`` read) with a
session from ``POST /qi/v2/phien``; ``normalize`` turns one export row (every cell text, lists
as embedded ``;`` tables) into central-format fields and leaves value cleaning to
``hub.records``, which names the central field when a value is wrong.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from collections.abc import AsyncIterator
from typing import Any, ClassVar

from pydantic import Field, SecretStr

from hub import (
    GENERAL_COMPETENCIES,
    QUALITIES,
    VIETNAM_TIME,
    Adapter,
    Health,
    HttpPullMixin,
    HttpPullSettings,
    load_json,
    Page,
    PluginContext,
    PluginError,
    PluginSettings,
    RawRecord,
)

SESSION_PATH = "/qi/v2/phien"
RECORDS_PATH = "/qi/v2/hocba"


class QuangIchSettings(HttpPullSettings):
    """The ``settings`` of a ``quangich`` adapter in the hub's YAML (``base_url``, ``timeout`` and
    the retry settings come from ``hub.HttpPullSettings``)."""
    connection_id: str = Field(min_length=1, description="ma_ket_noi issued to the province")
    api_key: SecretStr = Field(min_length=1, description="khoa; reference it as ${QUANGICH_API_KEY}")
    page_size: int = Field(default=100, ge=1, le=500, description="Rows per page (so_luong)")
    backoff_seconds: float = Field(default=0.5, gt=0, description="First retry delay; doubles, with jitter")
    max_backoff_seconds: float = Field(
        default=30.0, gt=0, description="Longest wait between tries; a longer Retry-After stops the pull")


class QuangIchError(PluginError):
    """The export answered outside its contract, or not at all."""


class QuangIchAdapter(HttpPullMixin, Adapter):
    """Pulls transcripts from a Quảng Ích-style export (tabular JSON pages, change sequence).

    The cursor is the last ``seq`` handed to the hub; ``sau`` is exclusive, so an incremental
    pull returns exactly the rows changed since. Sessions, timeouts, retries and Retry-After are
    the hub kit's (``hub.HttpPullMixin``); only the export's own shape is written here.
    """
    name: ClassVar[str] = "quangich"
    Settings: ClassVar[type[PluginSettings]] = QuangIchSettings
    simulator: ClassVar[str | None] = "hocba_quangich.simulator:QuangIchSimulator"
    Error: ClassVar[type[Exception]] = QuangIchError

    settings: QuangIchSettings

    def __init__(self, settings: PluginSettings, context: PluginContext):
        super().__init__(settings, context)
        self._session_id: str | None = None

    def forget_credentials(self) -> None:
        self._session_id = None

    def live_secrets(self) -> list[str]:
        return [self._session_id or ""]

    # --- HTTP: one request, then the kit's retries --------------------------------------------

    async def _once(self, method: str, path: str, **kwargs: Any) -> tuple[int, dict[str, Any]]:
        status, _, body, retry_after = await self.request(method, self.base_url + path, **kwargs)
        self.raise_if_unavailable(method, path, status, retry_after)
        try:
            answer = json.loads(body)
        except ValueError:
            snippet = body[:80].decode("utf-8", "replace")
            raise QuangIchError(f"{method} {path} answered HTTP {status}, not JSON: {self.scrub(snippet)!r}") from None
        if not isinstance(answer, dict):
            raise QuangIchError(f"{method} {path} answered HTTP {status} with JSON that is not an object")
        return status, answer

    async def _send(self, method: str, path: str, *, attempts: int | None = None,
                    **kwargs: Any) -> tuple[int, dict[str, Any]]:
        return await self.retry(method, self.base_url + path, attempts, lambda: self._once(method, path, **kwargs))

    async def _login(self, attempts: int | None = None) -> None:
        status, answer = await self._send("POST", SESSION_PATH, attempts=attempts, json={
            "ma_ket_noi": self.settings.connection_id, "khoa": self.settings.api_key.get_secret_value()})
        session = answer.get("phien")
        if status != 200 or answer.get("ok") is not True or not isinstance(session, str) or not session:
            reason = f"{answer.get('loi', f'HTTP {status}')} {answer.get('thong_bao', '')}".strip()
            raise QuangIchError(self.scrub(f"session refused: {reason} (connection_id "
                                            f"{self.settings.connection_id!r}; check connection_id and api_key)"))
        self._session_id = session

    async def _page(self, after: int, size: int, attempts: int | None = None) -> dict[str, Any]:
        for renewed in (False, True):
            if renewed or self._session_id is None:
                await self._login(attempts)
            status, answer = await self._send("GET", RECORDS_PATH, attempts=attempts,
                                              params={"sau": after, "so_luong": size},
                                              headers={"X-QI-Phien": self._session_id or ""})
            if status == 401 and not renewed:
                continue   # the session expired or the server restarted: one new session, same page
            if status != 200 or answer.get("ok") is not True:
                reason = f"{answer.get('loi', '')} {answer.get('thong_bao', '')}".strip()
                raise QuangIchError(f"GET {RECORDS_PATH}?sau={after} answered HTTP {status} {reason}".rstrip())
            return answer
        raise AssertionError("unreachable")  # pragma: no cover

    # --- pull --------------------------------------------------------------------------------

    async def fetch(self, cursor: str | None) -> AsyncIterator[Page]:
        """One ``Page`` per export page of rows changed after ``cursor`` (a ``seq``)."""
        if cursor is None:
            after = 0
        elif cursor.isdigit():
            after = int(cursor)
        else:
            raise QuangIchError(f"cursor {cursor!r} is not a quangich cursor (a seq number)")
        while True:
            answer = await self._page(after, self.settings.page_size)
            columns, rows = answer.get("cot"), answer.get("dong")
            last, more = answer.get("seq_cuoi"), answer.get("con_nua")
            where = f"GET {RECORDS_PATH}?sau={after}"
            if not (isinstance(columns, list) and isinstance(rows, list)
                    and isinstance(last, int) and isinstance(more, bool)):
                raise QuangIchError(f"{where}: the page lacks cot, dong, seq_cuoi or con_nua")
            if last < after or (more and not rows):
                # Following it would loop forever or go back in time: stop with the facts.
                raise QuangIchError(f"{where}: seq_cuoi {last} with con_nua {more} and {len(rows)} row(s)")
            records = [_raw(columns, row, f"{where}: dong[{i}]") for i, row in enumerate(rows)]
            yield Page(records, str(last))
            if not more:
                return
            after = last

    async def check(self) -> Health:
        """A fresh session and one row: reachability, credentials and permission, no retries."""
        async def probe() -> str:
            # Always a new session: a rotated key must show here, not when the old session expires.
            await self._login(attempts=1)
            answer = await self._page(0, 1, attempts=1)
            return f"session accepted; export at seq {answer.get('seq_cuoi')}"
        return await self.checked(probe)

    def normalize(self, raw: RawRecord) -> dict[str, Any]:
        return to_central(load_json(raw.payload))


def _raw(columns: list[Any], row: Any, where: str) -> RawRecord:
    if not isinstance(row, list) or len(row) != len(columns):
        raise QuangIchError(f"{where} does not have one cell per column ({len(columns)})")
    cells = dict(zip(columns, row))
    source_id = cells.get("id")
    if not isinstance(source_id, str) or not source_id.strip():
        # Without its id a row cannot be stored, quarantined or replayed: stop the pull.
        raise QuangIchError(f"{where}.id is missing or empty")
    try:
        updated = dt.datetime.strptime(str(cells.get("cap_nhat")), "%Y-%m-%d %H:%M:%S")
    except ValueError:
        raise QuangIchError(f"{where}.cap_nhat {cells.get('cap_nhat')!r} is not yyyy-MM-dd HH:mm:ss") from None
    if cells.get("xoa") not in ("0", "1"):
        raise QuangIchError(f"{where}.xoa {cells.get('xoa')!r} is not 0 or 1")
    # The row as column → cell, so the stored raw payload reads on its own, without `cot`.
    payload = json.dumps(cells, ensure_ascii=False).encode("utf-8")
    return RawRecord(source_id.strip(), payload, updated_at=updated.replace(tzinfo=VIETNAM_TIME),
                     deleted=cells["xoa"] == "1")


# --- an export row → central-format fields ----------------------------------------------------

ENVELOPE = ("seq", "id", "cap_nhat", "xoa")   # read by fetch, not content
TRANSCRIPT = {"ma_hoc_ba": "transcript_id", "trang_thai": "status", "ma_so": "department_code",
              "ma_truong": "school_code", "ten_truong": "school_name", "cap_hoc": "level", "khoi": "grade",
              "lop": "class_name", "nam_hoc": "school_year", "len_lop": "promoted", "nx_gvcn": "homeroom_comment"}
STUDENT = {"hs_ma": "student_code", "hs_dinh_danh": "personal_id", "hs_ho_ten": "full_name",
           "hs_ngay_sinh": "birth_date", "hs_gioi_tinh": "gender", "hs_dan_toc": "ethnicity",
           "hs_quoc_tich": "nationality", "hs_cha": "father_name", "hs_me": "mother_name",
           "hs_giam_ho": "guardian_name", "hs_doi_tuong": "policy_group", "hs_kt_kdg": "disability_not_assessed",
           "hs_noi_sinh": "birth_place", "hs_noi_o": "residence", "hs_so_dang_bo": "registration_number"}
SIGNATORIES = {"ky_gvcn": "homeroom_teacher_name", "ky_gvcn_dinh_danh": "homeroom_teacher_personal_id",
               "ky_hieu_truong": "principal_name", "ky_hieu_truong_dinh_danh": "principal_personal_id",
               "ky_chuc_vu": "principal_title", "ky_ngay": "issue_date", "ky_dia_danh": "issue_place"}
SUBJECT_COMPETENCIES = ("ngon_ngu", "tinh_toan", "khoa_hoc", "cong_nghe", "tin_hoc", "tham_my", "the_chat")
PRIMARY = {"hoan_thanh_lop": "completed_grade_program", "hoan_thanh_tieu_hoc": "completed_primary_program",
           "ket_qua_gd": "overall_result", "nx_pham_chat": "qualities_comment",
           "nx_nang_luc_chung": "general_competencies_comment", "nx_nang_luc_dac_thu": "subject_competencies_comment"}
PRIMARY_COLUMNS = (*PRIMARY, *(f"pc_{q}" for q in QUALITIES),
                   *(f"nl_{c}" for c in (*GENERAL_COMPETENCIES, *SUBJECT_COMPETENCIES)))
TERMS = {"hk1": "term1", "hk2": "term2", "cn": "year"}
SECONDARY_COLUMNS = ("so_ngay_nghi", "chung_chi", "hoan_thanh_cap_hoc", *(f"hoc_luc_{t}" for t in TERMS),
                     *(f"hanh_kiem_{t}" for t in TERMS))
COLUMNS = (*ENVELOPE, *TRANSCRIPT, *STUDENT, *SIGNATORIES, "mon_hoc", "khen_thuong", *PRIMARY_COLUMNS,
           *SECONDARY_COLUMNS)

PRIMARY_SUBJECT = {"ma": "subject_code", "ten": "subject_name", "muc_hk1": "term1_level",
                   "muc_cn": "year_level", "diem_hk1": "term1_score", "diem_cn": "year_score",
                   "nhan_xet": "comment"}
SECONDARY_SUBJECT = {"ma": "subject_code", "ten": "subject_name", "tb_hk1": "term1_average",
                     "tb_hk2": "term2_average", "tb_cn": "year_average", "kq_hk1": "term1_comment",
                     "kq_hk2": "term2_comment", "kq_cn": "year_comment", "gv": "teacher_name"}
CERTIFICATE = {"ten": "name", "ngay_cap": "issued_on", "noi_cap": "issuer"}
AWARD = {"ten": "name"}


def _table(text: str, column: str, names: dict[str, str]) -> list[dict[str, str]]:
    """An embedded ``;`` table → one dict per row, keyed by central field names."""
    if not text.strip():
        return []
    header, *rows = csv.reader(io.StringIO(text), delimiter=";")
    for name in header:
        if name not in names:
            raise ValueError(f"{column}.{name} is not part of the quangich contract (see CONTRACT.md)")
    out = []
    for i, row in enumerate(rows):
        if len(row) != len(header):
            raise ValueError(f"{column}[{i}] has {len(row)} cells for {len(header)} columns")
        out.append({names[name]: cell for name, cell in zip(header, row)})
    return out


def to_central(cells: Any) -> dict[str, Any]:
    """Map one export row (column → cell text) to central-format fields, no envelope."""
    if not isinstance(cells, dict):
        raise ValueError("(record) is not an object of columns")
    for column, cell in cells.items():
        if column not in COLUMNS:
            # An unknown column may carry data the transcript needs: refuse rather than drop it.
            raise ValueError(f"{column} is not part of the quangich contract (see CONTRACT.md)")
        if not isinstance(cell, str):
            raise ValueError(f"{column} is {type(cell).__name__}, every cell is text")
    missing = [c for c in COLUMNS if c not in cells]
    if missing:
        raise ValueError(f"{missing[0]} is missing")
    header = next(csv.reader(io.StringIO(cells["mon_hoc"]), delimiter=";"), [])
    if "muc_cn" in header:
        primary = True
    elif "tb_cn" in header:
        primary = False
    else:
        raise ValueError("mon_hoc has no header naming a level (muc_cn: primary, tb_cn: secondary)")
    other = SECONDARY_COLUMNS if primary else PRIMARY_COLUMNS
    filled = [c for c in other if cells[c].strip()]
    if filled:
        raise ValueError(f"{filled[0]} belongs to {'secondary' if primary else 'primary'} records, "
                         f"and mon_hoc is {'primary' if primary else 'secondary'}")

    out: dict[str, Any] = {field: cells[col] for col, field in TRANSCRIPT.items()}
    out["student"] = {field: cells[col] for col, field in STUDENT.items()}
    out["signatories"] = {field: cells[col] for col, field in SIGNATORIES.items()
                          if not (col == "ky_chuc_vu" and not cells[col].strip())}   # empty → default title
    out["subjects"] = _table(cells["mon_hoc"], "mon_hoc", PRIMARY_SUBJECT if primary else SECONDARY_SUBJECT)
    if primary:
        out.update({field: cells[col] for col, field in PRIMARY.items()})
        out["qualities"] = {q: cells[f"pc_{q}"] for q in QUALITIES}
        # General competencies are required (an empty one is the central format's error to name);
        # an empty subject competency was not assessed and is left out.
        out["competencies"] = {
            **{c: cells[f"nl_{c}"] for c in GENERAL_COMPETENCIES},
            **{c: cells[f"nl_{c}"] for c in SUBJECT_COMPETENCIES if cells[f"nl_{c}"].strip()},
        }
    else:
        out["learning"] = {period: cells[f"hoc_luc_{t}"] for t, period in TERMS.items()}
        out["conduct"] = {period: cells[f"hanh_kiem_{t}"] for t, period in TERMS.items()}
        out["days_absent"] = cells["so_ngay_nghi"]
        out["certificates"] = _table(cells["chung_chi"], "chung_chi", CERTIFICATE)
        out["completed_level_program"] = cells["hoan_thanh_cap_hoc"]
    out["awards"] = [row["name"] for row in _table(cells["khen_thuong"], "khen_thuong", AWARD)]
    return out
