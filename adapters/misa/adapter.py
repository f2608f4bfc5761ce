"""Pull adapter for EMIS-style school software: the contract in CONTRACT.md, nothing more.

``fetch`` follows the server's continuation token through ``GET /api/v1/transcripts``, every
request signed with HMAC-SHA256 (API key, timestamp, nonce, signature headers); ``normalize``
maps the nested camelCase JSON record to the central format's snake_case fields and leaves
value cleaning (comma decimals, NFD names, ``…T00:00:00`` dates) to ``hub.records``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any, ClassVar
from urllib.parse import quote

import aiohttp
import structlog
from pydantic import Field, SecretStr
from yarl import URL

from hub import (
    Adapter,
    Health,
    HttpPullMixin,
    HttpPullSettings,
    Page,
    PluginContext,
    PluginError,
    PluginSettings,
    RawRecord,
    TokenPaging,
    Transient,
    as_list,
    as_object,
    base64_document,
    load_json,
    map_keys,
    vietnam_time,
    where,
)

log = structlog.get_logger(__name__)

RECORDS_PATH = "/api/v1/transcripts"
# What the operator should do about each refusal the contract defines.
AUTH_HINTS = {
    "INVALID_API_KEY": "check api_key",
    "INVALID_SIGNATURE": "check api_secret",
    "STALE_TIMESTAMP": "check the hub's clock (NTP): X-Timestamp must be within 5 minutes of the server's",
    "REPLAYED_NONCE": "the server kept refusing fresh nonces as replays; report this to the vendor",
    "MISSING_AUTH": "the request lacked a signature header; report this, it is a bug",
}


class MisaError(PluginError):
    """The vendor's server answered in a way the contract does not allow, or not at all."""


class _TokenExpired(Exception):
    """The server no longer honours a continuation token (``410``)."""


class MisaSettings(HttpPullSettings):
    """The ``settings`` of a ``misa`` adapter in the hub's YAML.

    ``api_key`` identifies the province and travels in every request, like an access-key id;
    ``api_secret`` only ever keys the HMAC and never leaves the hub.
    """
    api_key: str = Field(min_length=1, max_length=200, pattern=r"^[\x21-\x7e]+$",
                         description="API key id issued to the province (sent as X-Api-Key)")
    api_secret: SecretStr = Field(min_length=16, description="HMAC-SHA256 signing secret; use ${ENV_VAR}")
    page_size: int = Field(default=100, ge=1, le=500, description="Records per page (limit)")


# --- request signing -------------------------------------------------------------------------

def canonical_query(params: Iterable[tuple[str, str]]) -> str:
    """Parameters sorted by name then value, each RFC 3986-encoded (only ``A-Za-z0-9-._~`` kept).

    The exact string is signed and sent, so client and server cannot disagree on encoding.
    """
    return "&".join(f"{quote(k, safe='-._~')}={quote(v, safe='-._~')}" for k, v in sorted(params))


def signature(secret: bytes, method: str, path: str, query: str, timestamp: str, nonce: str) -> str:
    """Lower-case hex HMAC-SHA256 of ``METHOD\\npath\\nquery\\ntimestamp\\nnonce``."""
    message = "\n".join((method.upper(), path, query, timestamp, nonce)).encode("utf-8")
    return hmac.new(secret, message, hashlib.sha256).hexdigest()




class MisaAdapter(HttpPullMixin, Adapter):
    """Pulls transcripts from EMIS-style school software (REST/JSON, HMAC-signed requests).

    The hub's cursor is the server's continuation token: after the last page it is a sync
    token that returns only what changed since. An expired token (``410``) means a full
    resync, which the hub absorbs because unchanged records create no new version.
    """
    name: ClassVar[str] = "misa"
    Settings: ClassVar[type[PluginSettings]] = MisaSettings
    simulator: ClassVar[str | None] = "adapters.misa.simulator:MisaSimulator"

    settings: MisaSettings
    Error: ClassVar[type[Exception]] = MisaError

    def __init__(self, settings: PluginSettings, context: PluginContext):
        super().__init__(settings, context)
        # The signing clock; a test can skew it to see what a drifting server clock does.
        self._clock: Callable[[], float] = time.time

    # --- lifecycle: open/close, base_url and retries come from hub.HttpPullMixin -----------------------

    def configure_http(self, http: aiohttp.ClientSession) -> None:
        # aiohttp silently resends an idempotent request once when a connection drops, with
        # the same headers, hence the same nonce, which the server must refuse as a replay.
        # Our own retries sign every attempt afresh, so that resend is switched off (there is
        # no public switch; REPLAYED_NONCE is also retried below in case this one goes away).
        if hasattr(http, "_retry_connection"):
            http._retry_connection = False

    # --- HTTP plumbing -----------------------------------------------------------------------

    def _url(self, params: dict[str, Any]) -> tuple[URL, str]:
        query = canonical_query((k, str(v)) for k, v in params.items())
        raw = self.base_url + RECORDS_PATH + (f"?{query}" if query else "")
        # encoded=True: the bytes on the wire are exactly the query that was signed.
        return URL(raw, encoded=True), query

    def _signed_headers(self, method: str, url: URL, query: str) -> dict[str, str]:
        # Signed afresh for every attempt: a retry after a long Retry-After must not reuse a
        # timestamp the server now finds stale, nor a nonce it has already seen.
        timestamp = str(int(self._clock()))
        nonce = secrets.token_hex(16)
        mac = signature(self.settings.api_secret.get_secret_value().encode("utf-8"),
                        method, url.raw_path, query, timestamp, nonce)
        return {"X-Api-Key": self.settings.api_key, "X-Timestamp": timestamp, "X-Nonce": nonce,
                "X-Signature": mac}

    async def _send_once(self, method: str, url: URL, query: str) -> tuple[int, str, bytes]:
        status, content_type, body, retry_after = await self.request(
            method, url, headers=self._signed_headers(method, url, query))
        self.raise_if_unavailable(method, url, status, retry_after)
        if status == 401 and self._error(status, body)[0] == "REPLAYED_NONCE":
            # Only a transport-level resend of our own request can repeat a nonce; the next
            # attempt carries a fresh one.
            raise Transient("401 REPLAYED_NONCE (a resent request)")
        return status, content_type, body

    async def _send(self, method: str, url: URL, query: str, *, attempts: int | None = None) -> tuple[int, str, bytes]:
        """One request, retried on transient faults; ``MisaError`` once the attempts are spent."""
        return await self.retry(method, url, attempts, lambda: self._send_once(method, url, query))

    @staticmethod
    def _error(status: int, body: bytes) -> tuple[str, str]:
        """``(code, message)`` of an ``{"error": {…}}`` answer, or the status and a snippet."""
        try:
            error = json.loads(body)["error"]
            return str(error["code"]), str(error.get("message", ""))
        except (ValueError, KeyError, TypeError):
            return f"HTTP {status}", body[:200].decode("utf-8", "replace")

    async def _get(self, params: dict[str, Any], *, attempts: int | None = None) -> tuple[URL, Any]:
        url, query = self._url(params)
        status, content_type, body = await self._send("GET", url, query, attempts=attempts)
        if status == 200:
            return url, self.json_body("GET", url, content_type, body)
        code, message = self._error(status, body)
        if status == 410:
            raise _TokenExpired(code)
        if status == 401:
            # There is no token to renew: a refused signature needs an operator, not a retry.
            hint = AUTH_HINTS.get(code, "check api_key and api_secret")
            raise MisaError(self.scrub(
                f"GET {url}: request refused: {code}: {message} ({hint}; key {self.settings.api_key!r})"))
        raise MisaError(self.scrub(f"GET {url} answered HTTP {status}: {code}: {message}"))

    # --- pull --------------------------------------------------------------------------------

    def _page(self, data: Any, shown: str) -> tuple[bool, str, list[dict[str, Any]]]:
        data = self.page_answer(data, shown)
        items, has_more, token = data.get("items"), data.get("hasMore"), data.get("continuationToken")
        if not isinstance(items, list) or not isinstance(has_more, bool):
            raise MisaError(f"GET {shown}: the answer lacks an items list or a hasMore boolean")
        if not isinstance(token, str) or not token:
            raise MisaError(f"GET {shown}: continuationToken is missing or empty")
        return has_more, token, self.each_an_object(items, f"GET {shown}: items")

    def _raw(self, item: dict[str, Any], where: str) -> tuple[RawRecord, dt.datetime]:
        return self.json_record(item, where, id_key="id", updated_key="modifiedAt", deleted_key="isDeleted",
                                parse_time=vietnam_time)

    async def fetch(self, cursor: str | None) -> AsyncIterator[Page]:
        """Yield one ``Page`` per HTTP page; each page's cursor is the token that resumes after it."""
        token = cursor.strip() if cursor and cursor.strip() else None
        paging = TokenPaging(MisaError, "continuation token")
        while True:
            params: dict[str, Any] = {"limit": self.settings.page_size}
            if token:
                params["continuationToken"] = token
            try:
                url, data = await self._get(params)
            except _TokenExpired:
                if not token:
                    raise MisaError(f"GET {self._url(params)[0]} answered 410 to a request without a token") from None
                # Nothing else can say where we were: read everything again. The hub stores a new
                # version only for records whose payload changed, so a resync costs bandwidth, not data.
                log.warning("misa.continuation_token_expired", action="full resync")
                token = None
                continue
            shown = str(url)
            has_more, next_token, items = self._page(data, shown)
            paging.check_advance(shown, token, next_token, has_more)
            records = paging.oldest_first([self._raw(item, f"GET {shown}: items[{i}]") for i, item in enumerate(items)])
            token = next_token
            yield Page(records, token)
            if not has_more:
                return
            paging.count(shown, records)

    async def check(self) -> Health:
        """Read one record with a signed request: proves reachability, key, secret and clock."""
        async def probe() -> str:
            url, data = await self._get({"limit": 1}, attempts=1)
            self._page(data, str(url))
            return "signed request accepted; transcript feed readable"
        return await self.checked(probe)

    # --- normalise ---------------------------------------------------------------------------

    def read_file(self, name: str, data: bytes) -> list[RawRecord]:
        """One vendor record saved as JSON, with its envelope (``isDeleted`` → ``CANCEL``)."""
        return self.one_json_record(name, data, self._raw)

    def signed_document(self, raw: RawRecord) -> bytes | None:
        """``signedXml``: the XML học bạ as signed in the school's software (CONTRACT.md)."""
        return signed_xml(load_json(raw.payload))

    def normalize(self, raw: RawRecord) -> dict[str, Any]:
        # Duplicate keys, deep nesting and non-JSON are refused with the reason (ContractError).
        return to_central(load_json(raw.payload))


# --- the vendor record → central-format fields ---------------------------------------------------
#
# Each table maps a vendor key to (central field, required). A required key that is absent is
# the vendor breaking the contract and is reported by its dotted path (``student.fullName``,
# ``evaluation.subjects[2].subjectCode``); a key present with null or "" means "unknown" and is
# passed on, so hub.records names the central field if it may not be empty.

ENVELOPE_KEYS = frozenset({"id", "modifiedAt", "isDeleted"})    # read by fetch, not content
IGNORED_KEYS = frozenset({"modifiedBy"})                       # audit trail, not on a transcript
SIGNED_XML = "signedXml"   # the XML học bạ signed in the school's software, base64 (optional)

SCHOOL = {"departmentCode": ("department_code", True), "schoolCode": ("school_code", True),
          "schoolName": ("school_name", True), "schoolLevel": ("level", True)}
TRANSCRIPT = {"transcriptCode": ("transcript_id", True), "status": ("status", False),
              "schoolYear": ("school_year", True), "grade": ("grade", True), "className": ("class_name", True),
              "homeroomComment": ("homeroom_comment", False)}
STUDENT = {
    "studentCode": ("student_code", True), "personalIdentifier": ("personal_id", False),
    "fullName": ("full_name", True), "dateOfBirth": ("birth_date", True), "gender": ("gender", True),
    "ethnicity": ("ethnicity", False), "nationality": ("nationality", False),
    "policyGroup": ("policy_group", False), "disabilityNotAssessed": ("disability_not_assessed", False),
    "placeOfBirth": ("birth_place", False), "residence": ("residence", False),
    "registrationNumber": ("registration_number", False),
}
FAMILY = {"fatherName": ("father_name", False), "motherName": ("mother_name", False),
          "guardianName": ("guardian_name", False)}
APPROVAL = {"signedDate": ("issue_date", True), "issuePlace": ("issue_place", True)}
HOMEROOM_TEACHER = {"fullName": ("homeroom_teacher_name", True),
                    "personalIdentifier": ("homeroom_teacher_personal_id", False)}
PRINCIPAL = {"fullName": ("principal_name", True), "personalIdentifier": ("principal_personal_id", False),
             "title": ("principal_title", False)}
PRIMARY = {"completedGradeProgram": ("completed_grade_program", True),
           "completedPrimaryProgram": ("completed_primary_program", False), "promoted": ("promoted", True),
           "overallResult": ("overall_result", False), "qualitiesComment": ("qualities_comment", False),
           "generalCompetenciesComment": ("general_competencies_comment", False),
           "subjectCompetenciesComment": ("subject_competencies_comment", False)}
PRIMARY_SUBJECT = {
    "subjectCode": ("subject_code", True), "subjectName": ("subject_name", True),
    "term1Level": ("term1_level", False), "yearEndLevel": ("year_level", True),
    "term1TestScore": ("term1_score", False), "yearEndTestScore": ("year_score", False),
    "teacherComment": ("comment", False),
}
QUALITIES = {"patriotism": ("yeu_nuoc", True), "compassion": ("nhan_ai", True), "diligence": ("cham_chi", True),
             "honesty": ("trung_thuc", True), "responsibility": ("trach_nhiem", True)}
GENERAL_COMPETENCIES = {"selfReliance": ("tu_chu_tu_hoc", True), "communication": ("giao_tiep_hop_tac", True),
                        "problemSolving": ("giai_quyet_van_de_sang_tao", True)}
SUBJECT_COMPETENCIES = {"language": ("ngon_ngu", False), "mathematics": ("tinh_toan", False),
                        "science": ("khoa_hoc", False), "technology": ("cong_nghe", False),
                        "informatics": ("tin_hoc", False), "aesthetics": ("tham_my", False),
                        "physical": ("the_chat", False)}
SECONDARY = {"daysAbsent": ("days_absent", True), "promoted": ("promoted", True),
             "completedLevelProgram": ("completed_level_program", False)}
SECONDARY_SUBJECT_KEYS = frozenset({"subjectCode", "subjectName", "evaluationType", "term1", "term2", "yearEnd",
                                    "teacherName", "teacherPersonalIdentifier"})
EVALUATION_FIELDS = {"score": ("term1_average", "term2_average", "year_average"),
                     "comment": ("term1_comment", "term2_comment", "year_comment")}
TERMS = {"term1": ("term1", False), "term2": ("term2", False), "yearEnd": ("year", True)}
CERTIFICATE = {"name": ("name", True), "issuedDate": ("issued_on", False), "issuer": ("issuer", False)}

PRIMARY_KEYS = frozenset(PRIMARY) | {"subjects", "qualities", "competencies", "awards"}
SECONDARY_KEYS = frozenset(SECONDARY) | {"subjects", "learningResult", "conduct", "certificates", "awards"}
TOP_KEYS = (frozenset({"school", "transcript", "student", "evaluation", "approval", SIGNED_XML})
            | ENVELOPE_KEYS | IGNORED_KEYS)


def _object(parent: dict[str, Any], key: str, path: str) -> dict[str, Any]:
    return as_object(parent.get(key), where(path, key))


def _map(obj: dict[str, Any], path: str, table: dict[str, tuple[str, bool]],
         allowed: Iterable[str] = ()) -> dict[str, Any]:
    return map_keys(obj, path, table, allowed, contract="misa")


def _shape(level: Any, evaluation: dict[str, Any]) -> str:
    """Primary or secondary: by ``school.schoolLevel``, else by the keys the evaluation carries."""
    code = str(level).strip().zfill(2) if isinstance(level, (str, int)) and not isinstance(level, bool) else None
    if code == "02":
        return "primary"
    if code in ("03", "04"):
        return "secondary"
    # An unknown level is the central format's error to name (``level``): map the content by
    # the keys it carries so that error is the one reported.
    keys = set(evaluation)
    if keys & (PRIMARY_KEYS - SECONDARY_KEYS):
        return "primary"
    if keys & (SECONDARY_KEYS - PRIMARY_KEYS):
        return "secondary"
    raise ValueError("school.schoolLevel is not 02, 03 or 04")


def _secondary_subject(subject: dict[str, Any], where: str) -> dict[str, Any]:
    out = _map(subject, where, {"subjectCode": ("subject_code", True), "subjectName": ("subject_name", True)},
               SECONDARY_SUBJECT_KEYS)
    kind = subject.get("evaluationType")
    if not isinstance(kind, str) or kind not in EVALUATION_FIELDS:
        if "evaluationType" not in subject:
            raise ValueError(f"{where}.evaluationType is missing")
        raise ValueError(f"{where}.evaluationType is not 'score' or 'comment'")
    # The same three keys hold averages or Đ/CĐ results; evaluationType says which.
    for key, field in zip(("term1", "term2", "yearEnd"), EVALUATION_FIELDS[kind]):
        if key in subject:
            out[field] = subject[key]
        elif key == "yearEnd":
            raise ValueError(f"{where}.yearEnd is missing")
    if "teacherName" in subject:
        out["teacher_name"] = subject["teacherName"]
    if subject.get("teacherPersonalIdentifier") is not None:
        out["teacher_personal_id"] = subject["teacherPersonalIdentifier"]
    return out


def signed_xml(record: Any) -> bytes | None:
    """The ``signedXml`` of a vendor record, decoded; ``ValueError`` naming it when unreadable."""
    return base64_document(record.get(SIGNED_XML) if isinstance(record, dict) else None, SIGNED_XML)


def to_central(record: Any) -> dict[str, Any]:
    """Map one vendor record (an ``items`` element) to central-format fields, no envelope."""
    if not isinstance(record, dict):
        raise ValueError("(record) is not an object")
    _map(record, "", {}, TOP_KEYS)
    school, info = _object(record, "school", ""), _object(record, "transcript", "")
    student, evaluation = _object(record, "student", ""), _object(record, "evaluation", "")
    approval = _object(record, "approval", "")
    if "schoolLevel" not in school:
        raise ValueError("school.schoolLevel is missing")
    shape = _shape(school["schoolLevel"], evaluation)

    out = {**_map(school, "school", SCHOOL), **_map(info, "transcript", TRANSCRIPT)}
    out["student"] = _map(student, "student", STUDENT, {"family"})
    if student.get("family") is not None:
        out["student"].update(_map(_object(student, "family", "student"), "student.family", FAMILY))
    signatories = _map(approval, "approval", APPROVAL, {"homeroomTeacher", "principal"})
    signatories.update(_map(_object(approval, "homeroomTeacher", "approval"), "approval.homeroomTeacher",
                            HOMEROOM_TEACHER))
    signatories.update(_map(_object(approval, "principal", "approval"), "approval.principal", PRINCIPAL))
    out["signatories"] = signatories

    if "subjects" not in evaluation:
        raise ValueError("evaluation.subjects is missing")
    subjects = as_list(evaluation["subjects"], "evaluation.subjects")
    items = []
    for i, subject in enumerate(subjects):
        where = f"evaluation.subjects[{i}]"
        if not isinstance(subject, dict):
            raise ValueError(f"{where} is not an object")
        items.append(_map(subject, where, PRIMARY_SUBJECT) if shape == "primary"
                     else _secondary_subject(subject, where))
    out["subjects"] = items

    if shape == "primary":
        out.update(_map(evaluation, "evaluation", PRIMARY, PRIMARY_KEYS))
        out["qualities"] = _map(_object(evaluation, "qualities", "evaluation"), "evaluation.qualities", QUALITIES)
        competencies = _object(evaluation, "competencies", "evaluation")
        # A subject competency the school did not assess comes as null: it is simply absent.
        out["competencies"] = {
            **_map({k: v for k, v in competencies.items() if k not in SUBJECT_COMPETENCIES},
                   "evaluation.competencies", GENERAL_COMPETENCIES),
            **{field: competencies[key] for key, (field, _) in SUBJECT_COMPETENCIES.items()
               if competencies.get(key) is not None},
        }
        if evaluation.get("awards") is not None:
            out["awards"] = as_list(evaluation["awards"], "evaluation.awards")
    else:
        out.update(_map(evaluation, "evaluation", SECONDARY, SECONDARY_KEYS))
        out["learning"] = _map(_object(evaluation, "learningResult", "evaluation"), "evaluation.learningResult", TERMS)
        out["conduct"] = _map(_object(evaluation, "conduct", "evaluation"), "evaluation.conduct", TERMS)
        if evaluation.get("awards") is not None:
            out["awards"] = as_list(evaluation["awards"], "evaluation.awards")
        if evaluation.get("certificates") is not None:
            certificates = []
            for i, certificate in enumerate(as_list(evaluation["certificates"], "evaluation.certificates")):
                where = f"evaluation.certificates[{i}]"
                if not isinstance(certificate, dict):
                    raise ValueError(f"{where} is not an object")
                certificates.append(_map(certificate, where, CERTIFICATE))
            out["certificates"] = certificates
    return out
