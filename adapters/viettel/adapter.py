"""Pull adapter for SMAS-style school software: the contract in CONTRACT.md, nothing more.

``fetch`` follows the server's opaque cursor through ``GET /api/v2/transcripts`` with a session
token opened with the province's API key; ``normalize`` maps the English camelCase XML record
to the central format's snake_case fields and leaves value cleaning to ``hub.records``. Every
XML document is parsed with defusedxml and refused if it carries a DTD, so entity expansion
(billion laughs) and external entities never run.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass
from typing import Any, ClassVar
from xml.etree.ElementTree import Element, ParseError, tostring

import structlog
from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring
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
    TokenPaging,
    vietnam_time,
)

log = structlog.get_logger(__name__)

SESSION_PATH = "/api/v2/sessions"
RECORDS_PATH = "/api/v2/transcripts"
XML_MEDIA_TYPES = ("application/xml", "text/xml")


class ViettelError(PluginError):
    """The vendor's server answered in a way the contract does not allow, or not at all."""


class _CursorExpired(Exception):
    """The server no longer honours a cursor it issued (``410 CURSOR_EXPIRED``)."""


class ViettelSettings(HttpPullSettings):
    """The ``settings`` of a ``viettel`` adapter in the hub's YAML."""
    api_key: SecretStr = Field(min_length=1, description="API key issued to the province; use ${ENV_VAR}")
    page_size: int = Field(default=100, ge=1, le=200, description="Records per page (pageSize)")


# --- XML, safely -----------------------------------------------------------------------------

def parse_xml(data: bytes, what: str) -> Element:
    """Parse untrusted XML with no DTD at all, hence no entities, internal or external.

    ``forbid_dtd`` stops expat at ``<!DOCTYPE``, before any entity is declared, so neither a
    billion-laughs expansion nor an external fetch can start. Raises ``ValueError``.
    """
    try:
        return fromstring(data, forbid_dtd=True)
    except DefusedXmlException as exc:
        raise ValueError(
            f"{what} carries a document type declaration (DTD); the contract forbids DTDs and "
            f"entities, so it was refused before anything was expanded ({type(exc).__name__})") from None
    except ParseError as exc:
        raise ValueError(f"{what} is not well-formed XML or is truncated ({exc})") from None




def _iso(value: dt.datetime) -> str:
    return value.astimezone(VIETNAM_TIME).isoformat(timespec="seconds")


@dataclass
class _Position:
    """Where a pull stands: the server's cursor, and the newest ``updatedAt`` read before it.

    The hub stores it as compact JSON. ``after`` is the fallback when the server has forgotten
    the cursor: the pull restarts at ``updatedAfter = after - 1 s`` (timestamps are whole
    seconds and ``updatedAfter`` is exclusive), so the boundary instant is read again, the hub
    drops what did not change, and nothing is skipped.
    """
    after: dt.datetime | None = None
    token: str | None = None

    @classmethod
    def parse(cls, cursor: str | None) -> "_Position":
        if not cursor or not cursor.strip():
            return cls()
        text = cursor.strip()
        try:
            if not text.startswith("{"):
                # A bare instant: an operator asking to re-read everything changed since then.
                return cls(vietnam_time(text), None)
            data = json.loads(text)
            if not isinstance(data, dict) or not set(data) <= {"after", "cursor"}:
                raise ValueError("expected {\"after\": …, \"cursor\": …}")
            token = data.get("cursor")
            if token is not None and (not isinstance(token, str) or not token):
                raise ValueError("cursor must be a non-empty string or null")
            after = data.get("after")
            return cls(vietnam_time(after) if after is not None else None, token)
        except ValueError as exc:
            raise ViettelError(f"cursor {cursor!r} is not a viettel cursor: {exc}") from None

    def dump(self) -> str | None:
        if self.after is None and self.token is None:
            return None
        return json.dumps({"after": _iso(self.after) if self.after else None, "cursor": self.token},
                          separators=(",", ":"))


class ViettelAdapter(HttpPullMixin, Adapter):
    """Pulls secondary-school transcripts from SMAS-style school software (XML over HTTP).

    Authentication is an API key exchanged for a session token; paging follows the server's
    opaque ``nextCursor``, which also resumes the next poll after the last record read.
    """
    name: ClassVar[str] = "viettel"
    Settings: ClassVar[type[PluginSettings]] = ViettelSettings
    simulator: ClassVar[str | None] = "adapters.viettel.simulator:ViettelSimulator"

    settings: ViettelSettings
    Error: ClassVar[type[Exception]] = ViettelError
    accept: ClassVar[str] = "application/xml"

    def __init__(self, settings: PluginSettings, context: PluginContext):
        super().__init__(settings, context)
        self._session_token: str | None = None
        self._session_expires = 0.0

    # --- lifecycle: open/close, base_url and retries come from hub.HttpPullMixin -----------------------

    def forget_credentials(self) -> None:
        self._session_token = None

    # --- HTTP plumbing -----------------------------------------------------------------------

    def live_secrets(self) -> list[str]:
        return [self._session_token or ""]

    async def _send_once(self, method: str, url: URL, **kwargs: Any) -> tuple[int, str, bytes]:
        status, content_type, body, retry_after = await self.request(method, url, **kwargs)
        self.raise_if_unavailable(method, url, status, retry_after)
        return status, content_type, body

    async def _send(self, method: str, url: URL, *, attempts: int | None = None,
                    **kwargs: Any) -> tuple[int, str, bytes]:
        """One request, retried on transient faults; ``ViettelError`` once the attempts are spent."""
        return await self.retry(method, url, attempts, lambda: self._send_once(method, url, **kwargs))

    def _document(self, method: str, url: URL, content_type: str, body: bytes) -> Element:
        """Parse a 200 body, or say clearly that the server sent something else."""
        media = content_type.split(";")[0].strip().lower()
        if media not in XML_MEDIA_TYPES and not media.endswith("+xml"):
            snippet = body[:120].decode("utf-8", "replace").replace("\n", " ")
            raise ViettelError(f"{method} {url} answered 200 with {media or 'no Content-Type'}, "
                               f"not XML: {self.scrub(snippet)!r}")
        try:
            return parse_xml(body, f"the answer ({len(body)} bytes)")
        except ValueError as exc:
            raise ViettelError(f"{method} {url}: {exc}") from None

    def _error(self, status: int, body: bytes) -> tuple[str, str]:
        """``(code, message)`` of an ``<error>`` answer, or the status and a snippet."""
        try:
            root = parse_xml(body, "error")
            if root.tag == "error":
                return (root.findtext("code") or f"HTTP {status}").strip(), (root.findtext("message") or "").strip()
        except ValueError:
            pass
        return f"HTTP {status}", self.scrub(body[:200].decode("utf-8", "replace"))

    async def _open_session(self, attempts: int | None = None) -> None:
        url = URL(self.base_url + SESSION_PATH)
        self._session_token = None
        status, content_type, body = await self._send(
            "POST", url, attempts=attempts, headers={"X-Api-Key": self.settings.api_key.get_secret_value()})
        if status not in (200, 201):
            code, message = self._error(status, body)
            reason = f"{code}: {message}" if message else code
            raise ViettelError(self.scrub(f"API key refused: {reason} (POST {url}; check api_key)"))
        root = self._document("POST", url, content_type, body)
        token = (root.findtext("token") or "").strip() if root.tag == "session" else ""
        if not token:
            raise ViettelError(f"POST {url} answered {status} without <session><token>")
        try:
            lifetime = float(root.findtext("expiresIn") or "")
        except ValueError:
            lifetime = 300.0
        lifetime = lifetime if lifetime > 0 else 300.0
        self._session_token = token
        # Renew a little early so a session does not expire between sending and the server checking it.
        self._session_expires = time.monotonic() + lifetime - min(30.0, lifetime * 0.1)

    async def _get(self, url: URL, *, attempts: int | None = None) -> Element:
        """GET an XML document in a valid session, opening a new one once if it was refused."""
        for renewed in (False, True):
            if renewed or self._session_token is None or time.monotonic() >= self._session_expires:
                await self._open_session(attempts)
            status, content_type, body = await self._send(
                "GET", url, attempts=attempts, headers={"X-Session-Token": self._session_token or ""})
            if status == 401:
                if not renewed:
                    continue
                self._session_token = None
                raise ViettelError(f"GET {url}: a freshly opened session was refused (401)")
            if status == 410:
                raise _CursorExpired()
            if status != 200:
                code, message = self._error(status, body)
                raise ViettelError(self.scrub(f"GET {url} answered HTTP {status}: {code}: {message}"))
            return self._document("GET", url, content_type, body)
        raise AssertionError("unreachable")  # pragma: no cover

    # --- pull --------------------------------------------------------------------------------

    def _page(self, root: Element, shown: str) -> tuple[bool, str, list[Element]]:
        if root.tag != "transcriptPage":
            raise ViettelError(f"GET {shown}: the root element is <{root.tag}>, not <transcriptPage>")
        has_more = (root.findtext("hasMore") or "").strip()
        if has_more not in ("true", "false"):
            raise ViettelError(f"GET {shown}: <hasMore> is {has_more!r}, not true or false")
        next_cursor = (root.findtext("nextCursor") or "").strip()
        if not next_cursor:
            raise ViettelError(f"GET {shown}: <nextCursor> is missing or empty")
        container = root.find("transcripts")
        if container is None:
            raise ViettelError(f"GET {shown}: <transcripts> is missing")
        elements = list(container)
        for i, element in enumerate(elements, 1):
            if element.tag != "transcript":
                raise ViettelError(f"GET {shown}: transcripts/{element.tag}[{i}] is not a <transcript>")
        return has_more == "true", next_cursor, elements

    def _raw(self, element: Element, where: str) -> tuple[RawRecord, dt.datetime]:
        source_id = self.record_id(element.get("id"), f"{where}/@id")
        try:
            updated = vietnam_time(element.get("updatedAt"))
        except ValueError as exc:
            raise ViettelError(f"{where}/@updatedAt: {exc}") from None
        deleted = (element.get("deleted") or "false").strip()
        if deleted not in ("true", "false"):
            raise ViettelError(f"{where}/@deleted: {deleted!r} is not true or false")
        element.tail = None  # the whitespace after the element belongs to the page, not the record
        payload = tostring(element, encoding="utf-8")
        return RawRecord(source_id=source_id, payload=payload, content_type="application/xml",
                         updated_at=updated, deleted=deleted == "true"), updated

    async def fetch(self, cursor: str | None) -> AsyncIterator[Page]:
        """Yield one ``Page`` per HTTP page, each with the cursor that resumes after it.

        The server's cursor is keyset-based (after the last ``updatedAt``, ``id`` served), so a
        record edited during the pull moves to the end of the feed and is read there. The last
        page's cursor is where the next poll starts: it returns only what changed since.
        """
        position = _Position.parse(cursor)
        now = dt.datetime.now(VIETNAM_TIME)
        if position.after is not None and position.after > now:
            # A saved position past the hub's clock (a vendor clock that ran ahead, or a cursor
            # saved before positions were clamped) would skip every real edit until that date,
            # and its server cursor stands there too: read the whole feed again (the hub stores
            # a new version only for a changed record).
            log.warning("viettel.cursor_in_the_future", action="full resync")
            position = _Position()
        # A record dated past the hub's clock puts the server's keyset cursor behind it: every
        # real edit made later sorts before it and would never be served. Once one is read, the
        # saved position is the newest real instant, without the server's cursor.
        ahead = False
        paging = TokenPaging(ViettelError, "cursor")
        while True:
            params: dict[str, Any] = {"pageSize": self.settings.page_size}
            if position.token:
                params["cursor"] = position.token
            elif position.after is not None:
                params["updatedAfter"] = _iso(position.after - dt.timedelta(seconds=1))
            url = URL(self.base_url + RECORDS_PATH).with_query(params)
            shown = str(url)
            try:
                root = await self._get(url)
            except _CursorExpired:
                if not position.token:
                    raise ViettelError(f"GET {shown} answered 410 to a request without a cursor") from None
                log.warning("viettel.cursor_expired", resume_after=_iso(position.after) if position.after else None)
                position = _Position(position.after, None)
                continue
            has_more, next_cursor, elements = self._page(root, shown)
            paging.check_advance(shown, position.token, next_cursor, has_more)
            read = [self._raw(e, f"GET {shown}: transcripts/transcript[{i}]") for i, e in enumerate(elements, 1)]
            now = dt.datetime.now(VIETNAM_TIME)
            real = sorted(updated for _, updated in read if updated <= now)
            ahead = ahead or len(real) < len(read)
            if real:
                position.after = real[-1] if position.after is None else max(position.after, real[-1])
            position.token = next_cursor
            saved = _Position(position.after, None) if ahead else position
            records = paging.oldest_first(read)
            yield Page(records, saved.dump())
            if not has_more:
                return
            paging.count(shown, records)

    async def check(self) -> Health:
        """Open a session and read one record: proves reachability, the key and permission."""
        async def probe() -> str:
            # Always a fresh session: a revoked key must show here, not when the session expires.
            await self._open_session(attempts=1)
            url = URL(self.base_url + RECORDS_PATH).with_query({"pageSize": 1})
            self._page(await self._get(url, attempts=1), str(url))
            return "API key accepted; transcript feed readable"
        return await self.checked(probe)

    # --- normalise ---------------------------------------------------------------------------

    def read_file(self, name: str, data: bytes) -> list[RawRecord]:
        """One ``<transcript>`` saved as XML, with its envelope (``deleted="true"`` → ``CANCEL``)."""
        try:
            return [self._raw(parse_xml(data, name), name)[0]]
        except ViettelError as exc:
            raise ValueError(str(exc)) from None

    def normalize(self, raw: RawRecord) -> dict[str, Any]:
        return to_central(parse_xml(raw.payload, "payload"))


# --- the vendor record → central-format fields ---------------------------------------------------
#
# Each table maps a child element to (central field, required). Paths in errors are XPath-like
# and count list items from 1 (``subjects/subject[2]/code``). A required element that is absent
# is the vendor breaking the contract and is reported by its element path; one that is present
# but empty (``<personalId/>``) means "unknown" and is passed on, so hub.records names the
# central field if it may not be empty.

TRANSCRIPT = {
    "transcriptCode": ("transcript_id", True), "status": ("status", False),
    "departmentCode": ("department_code", True), "schoolCode": ("school_code", True),
    "schoolName": ("school_name", True), "schoolLevel": ("level", True), "grade": ("grade", True),
    "className": ("class_name", True), "schoolYear": ("school_year", True),
    "daysAbsent": ("days_absent", True), "promoted": ("promoted", True),
    "completedLevelProgram": ("completed_level_program", False), "homeroomComment": ("homeroom_comment", False),
}
TRANSCRIPT_CONTAINERS = {"student": True, "subjects": True, "learning": True, "conduct": True,
                         "certificates": False, "awards": False, "signatories": True}
STUDENT = {
    "studentCode": ("student_code", True), "personalId": ("personal_id", False),
    "fullName": ("full_name", True), "birthDate": ("birth_date", True), "gender": ("gender", True),
    "ethnicity": ("ethnicity", False), "nationality": ("nationality", False),
    "fatherName": ("father_name", False), "motherName": ("mother_name", False),
    "guardianName": ("guardian_name", False), "policyGroup": ("policy_group", False),
    "disabilityNotAssessed": ("disability_not_assessed", False),
    "birthPlace": ("birth_place", False), "residence": ("residence", False),
    "registrationNumber": ("registration_number", False),
}
SUBJECT = {
    "code": ("subject_code", True), "name": ("subject_name", True),
    "term1Average": ("term1_average", False), "term2Average": ("term2_average", False),
    "yearAverage": ("year_average", False), "term1Result": ("term1_comment", False),
    "term2Result": ("term2_comment", False), "yearResult": ("year_comment", False),
    "teacher": ("teacher_name", False),
}
TERMS = {"term1": ("term1", False), "term2": ("term2", False), "year": ("year", True)}
CERTIFICATE = {"name": ("name", True), "issuedOn": ("issued_on", False), "issuer": ("issuer", False)}
SIGNATORIES = {"issueDate": ("issue_date", True), "issuePlace": ("issue_place", True)}
HOMEROOM_TEACHER = {"name": ("homeroom_teacher_name", True),
                    "personalId": ("homeroom_teacher_personal_id", False)}
PRINCIPAL = {"name": ("principal_name", True), "personalId": ("principal_personal_id", False),
             "title": ("principal_title", False)}


def _children(element: Element, path: str, allowed: Collection[str]) -> dict[str, Element]:
    """The child elements of a container by tag: unknown, repeated or text content is an error."""
    if (element.text or "").strip():
        raise ValueError(f"{path} holds text where elements are expected")
    out: dict[str, Element] = {}
    for child in element:
        where = f"{path}/{child.tag}"
        if child.tag not in allowed:
            # An unknown element may carry data the central format needs: refuse rather than drop it.
            raise ValueError(f"{where} is not part of the viettel contract (see CONTRACT.md)")
        if child.tag in out:
            raise ValueError(f"{where} appears more than once")
        if (child.tail or "").strip():
            raise ValueError(f"{path} holds text between elements")
        out[child.tag] = child
    return out


def _value(element: Element, path: str) -> str:
    if len(element):
        raise ValueError(f"{path} has child elements where a value is expected")
    return element.text or ""


def _map(element: Element, path: str, table: dict[str, tuple[str, bool]],
         containers: Collection[str] = ()) -> tuple[dict[str, Any], dict[str, Element]]:
    """Leaf values renamed by ``table``, and the allowed container children left to the caller."""
    children = _children(element, path, set(table) | set(containers))
    out: dict[str, Any] = {}
    for tag, (field, required) in table.items():
        if tag in children:
            out[field] = _value(children[tag], f"{path}/{tag}")
        elif required:
            raise ValueError(f"{path}/{tag} is missing")
    return out, {tag: child for tag, child in children.items() if tag in containers}


def _items(element: Element, path: str, tag: str) -> list[tuple[Element, str]]:
    if (element.text or "").strip():
        raise ValueError(f"{path} holds text where <{tag}> elements are expected")
    items = []
    for i, child in enumerate(element, 1):
        if child.tag != tag:
            raise ValueError(f"{path}/{child.tag} is not part of the viettel contract (expected <{tag}>)")
        items.append((child, f"{path}/{tag}[{i}]"))
    return items


def to_central(element: Element) -> dict[str, Any]:
    """Map one ``<transcript>`` element to central-format fields, no envelope."""
    if element.tag != "transcript":
        raise ValueError(f"the record element is <{element.tag}>, not <transcript>")
    path = "transcript"
    out, containers = _map(element, path, TRANSCRIPT, TRANSCRIPT_CONTAINERS)
    level = out["level"].strip()
    if level.zfill(2) == "02":
        # Any other unknown level is the central format's error to name (``level``).
        raise ValueError(f"{path}/schoolLevel {level!r} is primary; the viettel contract carries "
                         "secondary transcripts (03, 04) only")
    for tag, required in TRANSCRIPT_CONTAINERS.items():
        if required and tag not in containers:
            raise ValueError(f"{path}/{tag} is missing")
    out["student"], _ = _map(containers["student"], f"{path}/student", STUDENT)
    out["subjects"] = [_map(item, where, SUBJECT)[0]
                       for item, where in _items(containers["subjects"], f"{path}/subjects", "subject")]
    out["learning"], _ = _map(containers["learning"], f"{path}/learning", TERMS)
    out["conduct"], _ = _map(containers["conduct"], f"{path}/conduct", TERMS)
    if "certificates" in containers:
        out["certificates"] = [
            _map(item, where, CERTIFICATE)[0]
            for item, where in _items(containers["certificates"], f"{path}/certificates", "certificate")]
    if "awards" in containers:
        out["awards"] = [_value(item, where)
                         for item, where in _items(containers["awards"], f"{path}/awards", "award")]
    where = f"{path}/signatories"
    signatories, people = _map(containers["signatories"], where, SIGNATORIES, ("homeroomTeacher", "principal"))
    for tag, table in (("homeroomTeacher", HOMEROOM_TEACHER), ("principal", PRINCIPAL)):
        if tag not in people:
            raise ValueError(f"{where}/{tag} is missing")
        signatories.update(_map(people[tag], f"{where}/{tag}", table)[0])
    out["signatories"] = signatories
    return out
