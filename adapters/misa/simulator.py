"""The EMIS-style contract (CONTRACT.md) served over real HTTP, with the faults a real server has.

Records come from ``hub.kit.synthetic`` (every school level) and are encoded in the vendor's
shape with its quirks: scores as strings with a decimal comma (``"8,5"``), dates as
``yyyy-MM-ddT00:00:00``, some names in NFD, ``null`` for unknown values. Every request must be
signed (HMAC-SHA256); the server refuses bad signatures, unknown keys, stale timestamps and
replayed nonces. The feed is a change log: every edit or recall moves a record to its end, and
a continuation token is a position in that log.
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import hashlib
import hmac
import json
import secrets
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from aiohttp import web

from hub import (
    ROOT_CERT,
    VIETNAM_TIME,
    Faults,
    FaultySimulator,
    FeedRow,
    SealedTokens,
    SyntheticFeed,
    drop_connection,
    maintenance_page,
    nfd,
    record_id_for,
    sign_xml,
    with_subject_teachers,
)

RECORDS_PATH = "/api/v1/transcripts"
MAX_PAGE_SIZE = 500
MAX_SKEW_SECONDS = 300
FIRST_UPDATE = dt.datetime(2025, 6, 1, 7, 0, 0, tzinfo=VIETNAM_TIME)
_ID_NAMESPACE = uuid.UUID("9e3a6c1d-2f4b-4d7e-8a0c-5b6d7e8f9a10")

QUALITY_KEYS = {"yeu_nuoc": "patriotism", "nhan_ai": "compassion", "cham_chi": "diligence",
                "trung_thuc": "honesty", "trach_nhiem": "responsibility"}
COMPETENCY_KEYS = {"tu_chu_tu_hoc": "selfReliance", "giao_tiep_hop_tac": "communication",
                   "giai_quyet_van_de_sang_tao": "problemSolving", "ngon_ngu": "language",
                   "tinh_toan": "mathematics", "khoa_hoc": "science", "cong_nghe": "technology",
                   "tin_hoc": "informatics", "tham_my": "aesthetics", "the_chat": "physical"}
TERM_KEYS = {"term1": "term1", "term2": "term2", "year": "yearEnd"}


@dataclass
class MisaFaults(Faults):
    """The standard switches plus this vendor's own; every ``*_next_n`` counts down per data request.

    Standard ones (outage, fail_next_n, rate_limit_next_n, drop_next_n_connections,
    slow_seconds) act before the signature is checked; the page faults change what a page holds.
    """
    stall_next_n: int = 0             # hang for ``stall_seconds`` (longer than a client timeout)
    stall_seconds: float = 30.0
    html_next_n: int = 0              # 200 with an HTML maintenance page (a proxy in front)
    truncate_next_n: int = 0          # 200 with the JSON cut off half-way
    duplicate_next_n: int = 0         # the page lists its first record twice
    repeat_next_n: int = 0            # the previous answer again, byte for byte (token included)
    empty_next_n: int = 0             # no records, hasMore=true, a re-issued token at the same place
    missing_id_next_n: int = 0        # the page's first record has no ``id``
    drop_after_auth_next_n: int = 0   # accept the signature (the nonce is spent), then close the socket


def _date(iso: str | None) -> str | None:
    # .NET-style serialisers write a date as midnight local time.
    return None if iso is None else f"{iso}T00:00:00"


def _comma(value: float | int | None, decimals: int = 1) -> str | None:
    if value is None:
        return None
    return f"{value:.{decimals}f}".replace(".", ",")


def to_vendor(central: dict[str, Any], *, source_id: str, updated: dt.datetime,
              deleted: bool = False, quirks: int = 0) -> dict[str, Any]:
    """Encode one central-format transcript (``hub.kit.synthetic`` shape) as a vendor record.

    ``quirks`` picks which vendor habits this record shows, so a run mixes them.
    """
    student, signer = central["student"], central["signatories"]
    s_text = nfd if quirks % 3 == 1 else (lambda t: t)
    k_text = nfd if quirks % 3 == 2 else (lambda t: t)
    optional = (lambda t: None if t is None else s_text(t))
    record: dict[str, Any] = {
        "id": source_id,
        "modifiedAt": updated.isoformat(timespec="milliseconds"),
        "isDeleted": deleted,
        "modifiedBy": "gvcn." + central["school_code"],
        "school": {"departmentCode": central["department_code"], "schoolCode": central["school_code"],
                   "schoolName": central["school_name"], "schoolLevel": central["level"]},
        "transcript": {"transcriptCode": central["transcript_id"], "status": central.get("status", "1"),
                       "schoolYear": central["school_year"], "grade": central["grade"],
                       "className": central["class_name"],
                       "homeroomComment": central.get("homeroom_comment")},
        "student": {
            "studentCode": student["student_code"],
            "personalIdentifier": student.get("personal_id"),
            "fullName": s_text(student["full_name"]),
            "dateOfBirth": _date(student["birth_date"]),
            "gender": student.get("gender", 0),
            "ethnicity": student.get("ethnicity"),
            "nationality": student.get("nationality"),
            "family": {"fatherName": optional(student.get("father_name")),
                       "motherName": optional(student.get("mother_name")),
                       "guardianName": optional(student.get("guardian_name"))},
            "policyGroup": student.get("policy_group"),
            "disabilityNotAssessed": bool(student.get("disability_not_assessed", False)),
            "placeOfBirth": student.get("birth_place"),
            "residence": optional(student.get("residence")),
            "registrationNumber": student.get("registration_number"),
        },
    }
    if "qualities" in central:
        evaluation: dict[str, Any] = {
            "subjects": [
                {"subjectCode": s["subject_code"], "subjectName": s["subject_name"],
                 "term1Level": s.get("term1_level"), "yearEndLevel": s["year_level"],
                 "term1TestScore": _comma(s.get("term1_score"), 0), "yearEndTestScore": _comma(s.get("year_score"), 0),
                 "teacherComment": s.get("comment")}
                for s in central["subjects"]
            ],
            "qualities": {QUALITY_KEYS[k]: v for k, v in central["qualities"].items()},
            "competencies": {COMPETENCY_KEYS[k]: v for k, v in central["competencies"].items()},
            "completedGradeProgram": central["completed_grade_program"],
            "completedPrimaryProgram": central.get("completed_primary_program"),
            "promoted": central["promoted"],
            "awards": list(central.get("awards", [])),
            "overallResult": central.get("overall_result"),
            "qualitiesComment": central.get("qualities_comment"),
            "generalCompetenciesComment": central.get("general_competencies_comment"),
            "subjectCompetenciesComment": central.get("subject_competencies_comment"),
        }
    else:
        subjects = []
        for s in central["subjects"]:
            if s.get("year_comment") is not None:
                subjects.append({"subjectCode": s["subject_code"], "subjectName": s["subject_name"],
                                 "evaluationType": "comment", "term1": s.get("term1_comment"),
                                 "term2": s.get("term2_comment"), "yearEnd": s["year_comment"],
                                 "teacherName": s.get("teacher_name")})
            else:
                subjects.append({"subjectCode": s["subject_code"], "subjectName": s["subject_name"],
                                 "evaluationType": "score", "term1": _comma(s.get("term1_average")),
                                 "term2": _comma(s.get("term2_average")), "yearEnd": _comma(s["year_average"]),
                                 "teacherName": s.get("teacher_name")})
        for item, s in zip(subjects, central["subjects"]):
            if s.get("teacher_personal_id"):  # only schools that record it (CONTRACT.md)
                item["teacherPersonalIdentifier"] = s["teacher_personal_id"]
        evaluation = {
            "subjects": subjects,
            "learningResult": {TERM_KEYS[k]: v for k, v in central["learning"].items()},
            "conduct": {TERM_KEYS[k]: v for k, v in central["conduct"].items()},
            "daysAbsent": central.get("days_absent", 0),
            "promoted": central["promoted"],
            "completedLevelProgram": central.get("completed_level_program"),
            "awards": list(central.get("awards", [])),
            "certificates": [{"name": c["name"], "issuedDate": _date(c.get("issued_on")), "issuer": c.get("issuer")}
                             for c in central.get("certificates", [])],
        }
    record["evaluation"] = evaluation
    record["approval"] = {
        "homeroomTeacher": {"fullName": k_text(signer["homeroom_teacher_name"]),
                            "personalIdentifier": signer.get("homeroom_teacher_personal_id")},
        "principal": {"fullName": k_text(signer["principal_name"]),
                      "personalIdentifier": signer.get("principal_personal_id"),
                      "title": signer.get("principal_title", "Hiệu trưởng")},
        "signedDate": _date(signer["issue_date"]),
        "issuePlace": signer["issue_place"],
    }
    return record


@dataclass
class _Row(FeedRow):
    version: int = 1         # the hub's version of this record once it has read every change
    signed: tuple[int, str] | None = None  # (version, signedXml) once signed

    def vendor(self) -> dict[str, Any]:
        record = to_vendor(self.central, source_id=self.source_id, updated=self.updated,
                           deleted=self.deleted, quirks=self.quirks)
        if self.signed is not None:
            record["signedXml"] = self.signed[1]
        return record


def _string_to_sign(method: str, path: str, params: list[tuple[str, str]], timestamp: str, nonce: str) -> bytes:
    # Written here from CONTRACT.md rather than imported from the adapter: a shared bug would
    # make both sides agree and the tests prove nothing.
    query = "&".join(f"{quote(k, safe='-._~')}={quote(v, safe='-._~')}" for k, v in sorted(params))
    return f"{method}\n{path}\n{query}\n{timestamp}\n{nonce}".encode("utf-8")


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=json.dumps(data, ensure_ascii=False).encode("utf-8"), status=status,
                        content_type="application/json", charset="utf-8", headers=headers)


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return _json({"error": {"code": code, "message": message}}, status, headers)


class MisaSimulator(SyntheticFeed, FaultySimulator):
    """An EMIS-style school-software server on loopback, serving CONTRACT.md with fault switches.

    ``faults`` flips failures on; ``requests`` counts requests by path, ``log`` lists
    ``(method, path_qs, status)`` in order (status 0: connection dropped) and ``auth_failures``
    the refusal codes, so tests can prove a retry, a re-signature or a resync happened.
    """
    id_namespace = _ID_NAMESPACE
    first_update = FIRST_UPDATE
    row_type = _Row

    def __init__(self, *, records: int = 0, invalid: int = 0, seed: int = 0, api_key: str = "sogddt-hocba-hub",
                 api_secret: str | None = None, page_size: int = 50, per_timestamp: int = 3):
        super().__init__(records=records, invalid=invalid, seed=seed)
        self.api_key = api_key
        self.api_secret = api_secret or secrets.token_urlsafe(32)
        self.page_size = page_size
        self.faults: MisaFaults = MisaFaults()
        self.auth_failures: list[str] = []
        self.nonces: list[str | None] = []
        """The X-Nonce of every request received, in order, faulted ones included."""
        self._seen_nonces: dict[str, float] = {}
        self._continuation = SealedTokens()
        self._last_answer: bytes | None = None
        self._signing: tuple[str, Path, str, tuple[str, ...]] | None = None
        self.fill(records, invalid, per_timestamp)

    # --- what tests and the demo use ---------------------------------------------------------

    def vendor_record(self, index: int) -> dict[str, Any]:
        """Record ``index`` as the API serves it (invalid records follow the valid ones)."""
        return self._rows[index].vendor()

    def expire_tokens(self) -> None:
        """Nothing to expire: the contract has no tokens, every request is signed (see ``rotate_secret``)."""

    def expire_continuation_tokens(self) -> None:
        """Forget every continuation token issued so far: they answer ``410`` from now on."""
        self._continuation.forget()

    def rotate_secret(self) -> str:
        """Issue a new signing secret (the old one stops working at once); return it."""
        self.api_secret = secrets.token_urlsafe(32)
        return self.api_secret

    def _touch(self, row: _Row) -> None:
        super()._touch(row)
        row.version += 1
        if self._signing is not None and row.signed is not None:
            self._sign(row)

    def sign_xml(self, instance: str, directory: Path, password: str,
                 roles: tuple[str, ...] = ("subject_teacher", "homeroom_teacher"),
                 teachers: bool = True) -> Path:
        """From now on every valid record carries ``signedXml``: its XML học bạ signed in
        ``roles`` with this vendor's own test PKI in ``directory`` (root "MISA EMIS Test CA",
        created there), as teachers who sign in the school's software deliver it. ``instance``
        is the hub's adapter name (the XML states the hub's record id, CONTRACT.md);
        ``teachers`` also names each subject's teacher's personal id. Returns the root to trust."""
        self._signing = (instance, Path(directory), password, roles)
        for row in self._rows:
            if row.source_id in self.defects:
                continue
            if teachers:
                row.central = with_subject_teachers(row.central)
            self._sign(row)
        return Path(directory) / ROOT_CERT

    def _sign(self, row: _Row) -> None:
        instance, directory, password, roles = self._signing
        event = "CANCEL" if row.deleted else ("NEW" if row.version == 1 else "UPDATE")
        central = {**copy.deepcopy(row.central), "record_id": record_id_for(instance, row.source_id),
                   "version": row.version, "event": event,
                   "updated_at": row.updated.astimezone(VIETNAM_TIME).strftime("%Y-%m-%dT%H:%M:%S")}
        document = sign_xml(central, roles, directory, password, root_name="MISA EMIS Test CA")
        row.signed = (row.version, base64.b64encode(document).decode("ascii"))

    # --- Simulator protocol ------------------------------------------------------------------

    def routes(self) -> list[web.RouteDef]:
        return [web.get(RECORDS_PATH, self._records)]

    def adapter_settings(self) -> dict[str, Any]:
        return {"base_url": self.base_url, "api_key": self.api_key, "api_secret": self.api_secret,
                "page_size": self.page_size}

    # --- HTTP --------------------------------------------------------------------------------

    # Standard switches: hub.kit.simulation.FaultySimulator (every request counts the switches down).
    log_path_qs = True

    _FAULT_CODES = {"outage": ("MAINTENANCE", "Hệ thống đang bảo trì"), "fail": ("BUSY", "Hệ thống đang bận"),
                    "rate_limit": ("RATE_LIMITED", "Quá nhiều yêu cầu")}

    def _fault_response(self, kind: str, status: int, headers: dict[str, str] | None = None) -> web.Response:
        return _error(status, *self._FAULT_CODES[kind], headers)

    def _on_request(self, request: web.Request) -> None:
        self.nonces.append(request.headers.get("X-Nonce"))

    def _refuse(self, code: str, message: str) -> web.Response:
        self.auth_failures.append(code)
        return _error(401, code, message)

    def _authenticate(self, request: web.Request) -> web.Response | None:
        """None if the request is signed correctly, else the 401 to answer."""
        headers = request.headers
        key, timestamp = headers.get("X-Api-Key"), headers.get("X-Timestamp")
        nonce, mac = headers.get("X-Nonce"), headers.get("X-Signature")
        if not (key and timestamp and nonce and mac):
            return self._refuse("MISSING_AUTH", "Thiếu X-Api-Key, X-Timestamp, X-Nonce hoặc X-Signature")
        if not secrets.compare_digest(key.encode(), self.api_key.encode()):
            return self._refuse("INVALID_API_KEY", "Khoá API không tồn tại")
        now = time.time()
        if not timestamp.isdigit() or abs(now - int(timestamp)) > MAX_SKEW_SECONDS:
            return self._refuse("STALE_TIMESTAMP", f"X-Timestamp lệch quá {MAX_SKEW_SECONDS} giây")
        message = _string_to_sign(request.method, request.rel_url.raw_path, list(request.query.items()),
                                  timestamp, nonce)
        expected = hmac.new(self.api_secret.encode("utf-8"), message, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, mac.lower()):
            return self._refuse("INVALID_SIGNATURE", "Chữ ký không hợp lệ")
        # A nonce is remembered for as long as its timestamp would be accepted.
        self._seen_nonces = {n: t for n, t in self._seen_nonces.items() if now - t <= 2 * MAX_SKEW_SECONDS}
        if nonce in self._seen_nonces:
            return self._refuse("REPLAYED_NONCE", "Nonce đã được dùng")
        self._seen_nonces[nonce] = now
        return None

    # A continuation token seals the last seq served.
    def _read_token(self, token: str) -> int | web.Response:
        try:
            fields = self._continuation.read(token)
            if fields is not None:
                (seq,) = fields
                return int(seq)
        except (ValueError, TypeError):
            return _error(400, "INVALID_CONTINUATION_TOKEN", "continuationToken không hợp lệ")
        return _error(410, "CONTINUATION_TOKEN_EXPIRED", "continuationToken đã hết hạn, hãy đồng bộ lại từ đầu")

    async def _records(self, request: web.Request) -> web.Response:
        refused = self._authenticate(request)
        if refused is not None:
            return refused
        f, query = self.faults, request.query
        if f.drop_after_auth_next_n > 0:
            f.drop_after_auth_next_n -= 1
            self._log(request, 0)
            drop_connection(request)
        try:
            size = int(query.get("limit", "100"))
        except ValueError:
            size = 0
        if not 1 <= size <= MAX_PAGE_SIZE:
            return _error(400, "INVALID_PARAMETER", f"limit từ 1 đến {MAX_PAGE_SIZE}")
        after = 0
        if "continuationToken" in query:
            read = self._read_token(query["continuationToken"])
            if isinstance(read, web.Response):
                return read
            after = read

        if f.repeat_next_n > 0 and self._last_answer is not None:
            f.repeat_next_n -= 1
            return web.Response(body=self._last_answer, content_type="application/json", charset="utf-8")
        if f.html_next_n > 0:
            f.html_next_n -= 1
            return maintenance_page()

        rows = sorted((r for r in self._rows if r.seq > after), key=lambda r: r.seq)
        chunk, has_more, last = self.next_page(rows, size, after, key=lambda r: r.seq)
        items = [r.vendor() for r in chunk]
        if f.missing_id_next_n > 0 and items:
            f.missing_id_next_n -= 1
            del items[0]["id"]
        body = json.dumps({"items": items, "hasMore": has_more, "continuationToken": self._continuation.issue(last)},
                          ensure_ascii=False).encode("utf-8")
        self._last_answer = body
        if f.truncate_next_n > 0:
            f.truncate_next_n -= 1
            body = body[: len(body) // 2]
        return web.Response(body=body, content_type="application/json", charset="utf-8")
