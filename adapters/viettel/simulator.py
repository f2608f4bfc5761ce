"""The SMAS-style contract (CONTRACT.md) served over real HTTP, with the faults a real server has.

Records are the secondary-school transcripts of ``hub.kit.synthetic`` (its schools at levels 03
and 04), encoded as the contract's XML with the vendor's habits: QCVN gender codes, whole
averages without a decimal (``8`` for ``8.0``), lower-case ``đ``/``cđ`` results on some records,
empty elements for unknown values. Cursors are keyset positions (``updatedAt``, ``id``) signed
by the server, so paging is stable while records change, and the server can forget them
(``expire_cursors``) as a real one does after a while.
"""

from __future__ import annotations

import datetime as dt
import secrets
import time
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from hub import (
    SCHOOLS,
    VIETNAM_TIME,
    Faults,
    FaultySimulator,
    FeedRow,
    SealedTokens,
    SyntheticFeed,
    maintenance_page,
    transcript,
)

SESSION_PATH = "/api/v2/sessions"
RECORDS_PATH = "/api/v2/transcripts"
LEAK_PATH = "/xxe-target"   # what a hostile document's external entity points at; must never be fetched
MAX_PAGE_SIZE = 200
FIRST_UPDATE = dt.datetime(2025, 6, 1, 7, 0, 0, tzinfo=VIETNAM_TIME)
_ID_NAMESPACE = uuid.UUID("2b7c4f0e-5a1d-4e8b-b3c9-7d1e0a6f4c21")
SECONDARY_SLOTS = [i for i, school in enumerate(SCHOOLS) if school[3] in ("03", "04")]


def synthetic_index(k: int) -> int:
    """The ``hub.kit.synthetic.transcript`` index of the simulator's ``k``-th record (secondary only)."""
    return (k // len(SECONDARY_SLOTS)) * len(SCHOOLS) + SECONDARY_SLOTS[k % len(SECONDARY_SLOTS)]


@dataclass
class ViettelFaults(Faults):
    """The standard switches plus this vendor's own; every ``*_next_n`` counts down per data request.

    Standard ones (outage, fail_next_n, rate_limit_next_n, drop_next_n_connections,
    slow_seconds) act before the handler; the page faults below change what a page contains.
    """
    stall_next_n: int = 0             # hang for ``stall_seconds`` (longer than a client timeout)
    stall_seconds: float = 30.0
    html_next_n: int = 0              # 200 with an HTML maintenance page (a proxy in front)
    truncate_next_n: int = 0          # 200 with the XML cut off half-way
    hostile_next_n: int = 0           # 200 with a hostile document, see ``hostile_kind``
    hostile_kind: str = "billion_laughs"   # or "external_entity" (points at LEAK_PATH)
    duplicate_next_n: int = 0         # the page lists its first record twice
    repeat_next_n: int = 0            # the previous answer again, byte for byte (cursor included)
    empty_next_n: int = 0             # no records, hasMore=true, a re-issued cursor at the same place
    missing_id_next_n: int = 0        # the page's first record has no ``id`` attribute
    session_ttl_seconds: int = 1800   # ``expiresIn`` of sessions opened from now on


def _text(parent: ET.Element, tag: str, value: Any) -> ET.Element:
    child = ET.SubElement(parent, tag)
    if value is not None:
        child.text = value if isinstance(value, str) else str(value)
    return child


def _bool(value: Any) -> str:
    return "true" if value else "false"


def _average(value: float) -> str:
    # SMAS-style exports drop a trailing ".0": 8.0 is written 8.
    return f"{value:g}" if value == int(value) else f"{value:.1f}"


def to_vendor(central: dict[str, Any], *, source_id: str, updated: dt.datetime,
              deleted: bool = False, quirks: int = 0) -> ET.Element:
    """Encode one central-format secondary transcript as a ``<transcript>`` element."""
    student, signer = central["student"], central["signatories"]
    result = (lambda v: v.lower()) if quirks % 2 == 1 else (lambda v: v)
    record = ET.Element("transcript", {"id": source_id, "updatedAt": updated.isoformat(timespec="seconds"),
                                       "deleted": _bool(deleted)})
    for tag, key in (("transcriptCode", "transcript_id"), ("status", "status"),
                     ("departmentCode", "department_code"), ("schoolCode", "school_code"),
                     ("schoolName", "school_name"), ("schoolLevel", "level"), ("grade", "grade"),
                     ("className", "class_name"), ("schoolYear", "school_year")):
        _text(record, tag, central.get(key, "1" if key == "status" else None))
    s = ET.SubElement(record, "student")
    for tag, key in (("studentCode", "student_code"), ("personalId", "personal_id"), ("fullName", "full_name"),
                     ("birthDate", "birth_date"), ("gender", "gender"), ("ethnicity", "ethnicity"),
                     ("nationality", "nationality"), ("fatherName", "father_name"),
                     ("motherName", "mother_name"), ("guardianName", "guardian_name"),
                     ("policyGroup", "policy_group")):
        _text(s, tag, student.get(key))
    _text(s, "disabilityNotAssessed", _bool(student.get("disability_not_assessed", False)))
    for tag, key in (("birthPlace", "birth_place"), ("residence", "residence"),
                     ("registrationNumber", "registration_number")):
        _text(s, tag, student.get(key))
    subjects = ET.SubElement(record, "subjects")
    for subject in central["subjects"]:
        item = ET.SubElement(subjects, "subject")
        _text(item, "code", subject["subject_code"])
        _text(item, "name", subject["subject_name"])
        if subject.get("year_comment") is not None:
            for tag, key in (("term1Result", "term1_comment"), ("term2Result", "term2_comment"),
                             ("yearResult", "year_comment")):
                _text(item, tag, result(subject[key]) if subject.get(key) is not None else None)
        else:
            for tag, key in (("term1Average", "term1_average"), ("term2Average", "term2_average"),
                             ("yearAverage", "year_average")):
                value = subject.get(key)
                _text(item, tag, _average(value) if isinstance(value, (int, float)) else value)
        _text(item, "teacher", subject.get("teacher_name"))
    for tag, key in (("learning", "learning"), ("conduct", "conduct")):
        levels = ET.SubElement(record, tag)
        for period in ("term1", "term2", "year"):
            _text(levels, period, central[key].get(period))
    _text(record, "daysAbsent", central.get("days_absent", 0))
    _text(record, "promoted", _bool(central["promoted"]))
    completed = central.get("completed_level_program")
    _text(record, "completedLevelProgram", None if completed is None else _bool(completed))
    _text(record, "homeroomComment", central.get("homeroom_comment"))
    awards = ET.SubElement(record, "awards")
    for award in central.get("awards", []):
        _text(awards, "award", award)
    certificates = ET.SubElement(record, "certificates")
    for c in central.get("certificates", []):
        item = ET.SubElement(certificates, "certificate")
        _text(item, "name", c["name"])
        _text(item, "issuedOn", c.get("issued_on"))
        _text(item, "issuer", c.get("issuer"))
    sig = ET.SubElement(record, "signatories")
    teacher = ET.SubElement(sig, "homeroomTeacher")
    _text(teacher, "name", signer["homeroom_teacher_name"])
    _text(teacher, "personalId", signer.get("homeroom_teacher_personal_id"))
    principal = ET.SubElement(sig, "principal")
    _text(principal, "name", signer["principal_name"])
    _text(principal, "personalId", signer.get("principal_personal_id"))
    _text(principal, "title", signer.get("principal_title", "Hiệu trưởng"))
    _text(sig, "issueDate", signer["issue_date"])
    _text(sig, "issuePlace", signer["issue_place"])
    return record


def _xml(element: ET.Element) -> bytes:
    ET.indent(element)
    return ET.tostring(element, encoding="utf-8", xml_declaration=True)


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    root = ET.Element("error")
    _text(root, "code", code)
    _text(root, "message", message)
    return web.Response(body=_xml(root), status=status, content_type="application/xml", charset="utf-8",
                        headers=headers)


def billion_laughs() -> bytes:
    """The classic entity-expansion bomb: ten levels of ten, 10⁹ ``lol``s if expanded."""
    entities = ['<!ENTITY lol0 "lol">'] + [
        f'<!ENTITY lol{i} "{("&lol" + str(i - 1) + ";") * 10}">' for i in range(1, 10)]
    return (f'<?xml version="1.0"?>\n<!DOCTYPE transcriptPage [\n{chr(10).join(entities)}\n]>\n'
            "<transcriptPage><hasMore>false</hasMore><nextCursor>&lol9;</nextCursor>"
            "<transcripts/></transcriptPage>").encode()


def external_entity(url: str) -> bytes:
    """An external-entity (XXE) document whose entity points at ``url``."""
    return (f'<?xml version="1.0"?>\n<!DOCTYPE transcriptPage [\n<!ENTITY leak SYSTEM "{url}">\n]>\n'
            "<transcriptPage><hasMore>false</hasMore><nextCursor>&leak;</nextCursor>"
            "<transcripts/></transcriptPage>").encode()


@dataclass
class _Row(FeedRow):
    @property
    def key(self) -> tuple[dt.datetime, str]:
        return self.updated, self.source_id

    def vendor(self) -> ET.Element:
        return to_vendor(self.central, source_id=self.source_id, updated=self.updated,
                         deleted=self.deleted, quirks=self.quirks)


class ViettelSimulator(SyntheticFeed, FaultySimulator):
    """An SMAS-style school-software server on loopback, serving CONTRACT.md with fault switches.

    ``faults`` flips failures on; ``requests`` counts requests by path and ``log`` lists
    ``(method, path_qs, status)`` in order (status 0: connection dropped), so tests can prove a
    retry, a new session or a cursor fallback happened.
    """
    id_namespace = _ID_NAMESPACE
    first_update = FIRST_UPDATE
    row_type = _Row

    def __init__(self, *, records: int = 0, invalid: int = 0, seed: int = 0, api_key: str | None = None,
                 page_size: int = 50, per_timestamp: int = 3):
        super().__init__(records=records, invalid=invalid, seed=seed)
        self.api_key = api_key or secrets.token_urlsafe(24)
        self.page_size = page_size
        self.faults: ViettelFaults = ViettelFaults()
        self._sessions: dict[str, float] = {}
        self._cursors = SealedTokens()
        self._last_answer: bytes | None = None
        self.fill(records, invalid, per_timestamp, synthetic_index)

    # --- what tests and the demo use ---------------------------------------------------------

    def seeded(self, index: int) -> dict[str, Any]:
        # This vendor serves secondary schools only: the k-th record is a secondary transcript.
        return transcript(synthetic_index(index), self.seed)

    def vendor_xml(self, index: int) -> bytes:
        """Record ``index`` as the API serves it, one ``<transcript>`` element (invalid ones follow the valid)."""
        element = self._rows[index].vendor()
        ET.indent(element)
        return ET.tostring(element, encoding="utf-8")

    def expire_tokens(self) -> None:
        """Close every open session, as a server restart does."""
        self._sessions.clear()

    def expire_cursors(self) -> None:
        """Forget every cursor issued so far: they answer ``410 CURSOR_EXPIRED`` from now on."""
        self._cursors.forget()

    # --- Simulator protocol ------------------------------------------------------------------

    def routes(self) -> list[web.RouteDef]:
        return [web.post(SESSION_PATH, self._session), web.get(RECORDS_PATH, self._records),
                web.get(LEAK_PATH, self._leak)]

    def adapter_settings(self) -> dict[str, Any]:
        return {"base_url": self.base_url, "api_key": self.api_key, "page_size": self.page_size}

    # --- HTTP --------------------------------------------------------------------------------

    # Standard switches: hub.kit.simulation.FaultySimulator (only data requests count the *_next_n switches down).
    log_path_qs = True
    data_paths = frozenset({RECORDS_PATH})

    _FAULT_CODES = {"outage": ("MAINTENANCE", "Hệ thống đang bảo trì"), "fail": ("BUSY", "Hệ thống đang bận"),
                    "rate_limit": ("RATE_LIMITED", "Quá nhiều yêu cầu")}

    def _fault_response(self, kind: str, status: int, headers: dict[str, str] | None = None) -> web.Response:
        return _error(status, *self._FAULT_CODES[kind], headers)

    async def _leak(self, request: web.Request) -> web.Response:
        return web.Response(text="LEAKED-" + self.api_key)

    async def _session(self, request: web.Request) -> web.Response:
        key = request.headers.get("X-Api-Key", "")
        if not secrets.compare_digest(key.encode(), self.api_key.encode()):
            return _error(401, "INVALID_API_KEY", "Khoá API không hợp lệ")
        token = secrets.token_urlsafe(32)
        ttl = self.faults.session_ttl_seconds
        self._sessions[token] = time.monotonic() + ttl
        root = ET.Element("session")
        _text(root, "token", token)
        _text(root, "expiresIn", ttl)
        return web.Response(body=_xml(root), status=201, content_type="application/xml", charset="utf-8")

    def _authorized(self, request: web.Request) -> bool:
        token = request.headers.get("X-Session-Token", "")
        expires = self._sessions.get(token)
        if expires is None:
            return False
        if time.monotonic() >= expires:
            del self._sessions[token]
            return False
        return True

    # A cursor seals the position read up to: [updatedAt|null, id|null].
    def _issue_cursor(self, position: tuple[dt.datetime | None, str | None]) -> str:
        updated, source_id = position
        return self._cursors.issue(updated.isoformat() if updated else None, source_id)

    def _read_cursor(self, token: str) -> tuple[dt.datetime | None, str | None] | web.Response:
        try:
            fields = self._cursors.read(token)
            if fields is not None:
                updated, source_id = fields
                return (dt.datetime.fromisoformat(updated) if updated else None), source_id
        except (ValueError, TypeError):
            return _error(400, "INVALID_CURSOR", "cursor không hợp lệ")
        return _error(410, "CURSOR_EXPIRED", "cursor đã hết hạn, hãy đọc lại bằng updatedAfter")

    async def _records(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _error(401, "SESSION_EXPIRED", "Phiên làm việc không hợp lệ hoặc đã hết hạn")
        f, query = self.faults, request.query
        try:
            size = int(query.get("pageSize", "100"))
        except ValueError:
            size = 0
        if not 1 <= size <= MAX_PAGE_SIZE:
            return _error(400, "INVALID_PARAMETER", f"pageSize từ 1 đến {MAX_PAGE_SIZE}")
        if "cursor" in query and "updatedAfter" in query:
            return _error(400, "INVALID_PARAMETER", "cursor và updatedAfter không dùng cùng nhau")
        position: tuple[dt.datetime | None, str | None] = (None, None)
        if "cursor" in query:
            read = self._read_cursor(query["cursor"])
            if isinstance(read, web.Response):
                return read
            position = read
        elif "updatedAfter" in query:
            try:
                after = dt.datetime.fromisoformat(query["updatedAfter"])
            except ValueError:
                return _error(400, "INVALID_PARAMETER", "updatedAfter phải theo ISO 8601")
            position = (after if after.tzinfo else after.replace(tzinfo=VIETNAM_TIME), None)

        if f.repeat_next_n > 0 and self._last_answer is not None:
            f.repeat_next_n -= 1
            return self._page_response(self._last_answer)
        if f.html_next_n > 0:
            f.html_next_n -= 1
            return maintenance_page()
        if f.hostile_next_n > 0:
            f.hostile_next_n -= 1
            body = (billion_laughs() if f.hostile_kind == "billion_laughs"
                    else external_entity(self.base_url + LEAK_PATH))
            return self._page_response(body)

        updated, last_id = position
        rows = sorted((r for r in self._rows
                       if updated is None or r.updated > updated
                       or (last_id is not None and r.updated == updated and r.source_id > last_id)),
                      key=lambda r: r.key)
        chunk, has_more, after = self.next_page(rows, size, position, key=lambda r: r.key)
        elements = [r.vendor() for r in chunk]
        if f.missing_id_next_n > 0 and elements:
            f.missing_id_next_n -= 1
            del elements[0].attrib["id"]
        root = ET.Element("transcriptPage")
        _text(root, "hasMore", _bool(has_more))
        _text(root, "nextCursor", self._issue_cursor(after))
        container = ET.SubElement(root, "transcripts")
        container.extend(elements)
        body = _xml(root)
        self._last_answer = body
        if f.truncate_next_n > 0:
            f.truncate_next_n -= 1
            body = body[: len(body) // 2]
        return self._page_response(body)

    @staticmethod
    def _page_response(body: bytes) -> web.Response:
        return web.Response(body=body, content_type="application/xml", charset="utf-8")
