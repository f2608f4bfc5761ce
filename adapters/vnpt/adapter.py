"""Pull adapter for vnEdu-style school software: the contract in CONTRACT.md, nothing more.

``fetch`` pages through ``GET /api/v1/hocba`` by update time with an OAuth2
client-credentials token; ``normalize`` maps the Vietnamese PascalCase record to the central
format's snake_case fields and leaves value cleaning to ``hub.records``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import json
import time
from collections.abc import AsyncIterator
from typing import Any, ClassVar
from urllib.parse import urlsplit

import aiohttp
import structlog
from pydantic import Field, HttpUrl, SecretStr, field_validator
from yarl import URL
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_random_exponential

from hub.contracts import Adapter, Health, Page, PluginContext, PluginError, PluginSettings, RawRecord

log = structlog.get_logger(__name__)

TOKEN_PATH = "/oauth/token"
RECORDS_PATH = "/api/v1/hocba"
VIETNAM_TIME = dt.timezone(dt.timedelta(hours=7), "ICT")
_TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%S"


class VnptError(PluginError):
    """The vendor's server answered in a way the contract does not allow, or not at all."""


class _Transient(Exception):
    """A failure worth retrying (5xx, 429, timeout, dropped connection)."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class _Unauthorized(Exception):
    """The bearer token was refused (expired or revoked)."""


class VnptSettings(PluginSettings):
    """The ``settings`` of a ``vnpt`` adapter in the hub's YAML."""
    base_url: HttpUrl = Field(description="Root of the vendor API, e.g. https://hocba.example.vn")
    client_id: str = Field(min_length=1, description="OAuth2 client id issued to the province")
    client_secret: SecretStr = Field(min_length=1, description="OAuth2 client secret; use ${ENV_VAR}")
    page_size: int = Field(default=100, ge=1, le=500, description="Records per page (sobanghi)")
    timeout: float = Field(default=30.0, gt=0, le=600, description="Seconds for one HTTP request")
    max_attempts: int = Field(default=5, ge=1, le=20, description="Tries per request before giving up")
    backoff_seconds: float = Field(default=1.0, gt=0, description="First retry delay; doubles, with jitter")
    max_backoff_seconds: float = Field(
        default=60.0, gt=0, description="Longest wait between tries; a longer Retry-After gives up until the next poll")

    @field_validator("base_url")
    @classmethod
    def _plain_root(cls, url: HttpUrl) -> HttpUrl:
        # Endpoint paths are appended to base_url; a query or fragment would end up in the middle.
        if url.query or url.fragment:
            raise ValueError("base_url must not have a query string or fragment")
        return url


def _parse_timestamp(value: Any) -> dt.datetime:
    """A vendor timestamp as naive Vietnam local time (the contract's clock)."""
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a yyyy-MM-ddTHH:mm:ss string")
    try:
        parsed = dt.datetime.fromisoformat(value.strip())
    except ValueError:
        raise ValueError(f"{value!r} is not a yyyy-MM-ddTHH:mm:ss timestamp") from None
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(VIETNAM_TIME).replace(tzinfo=None)
    return parsed


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return max(0.0, (when - dt.datetime.now(dt.timezone.utc)).total_seconds())


class VnptAdapter(Adapter):
    """Pulls transcripts from vnEdu-style school software (REST/JSON, OAuth2 client credentials).

    The cursor is the latest ``NgayCapNhat`` already handed to the hub (``yyyy-MM-ddTHH:mm:ss``,
    Vietnam time); the next pull asks for ``capnhattu`` ≥ it, so records sharing that instant
    are read again and the hub drops them as unchanged.
    """
    name: ClassVar[str] = "vnpt"
    Settings: ClassVar[type[PluginSettings]] = VnptSettings
    simulator: ClassVar[str | None] = "adapters.vnpt.simulator:VnptSimulator"

    settings: VnptSettings

    def __init__(self, settings: PluginSettings, context: PluginContext):
        super().__init__(settings, context)
        self._base = str(self.settings.base_url).rstrip("/")
        self._session: aiohttp.ClientSession | None = None
        self._token: str | None = None
        self._token_expires = 0.0

    # --- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.settings.timeout),
                headers={"User-Agent": "hocba-hub vnpt-adapter", "Accept": "application/json"},
            )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        self._token = None

    # --- HTTP plumbing -----------------------------------------------------------------------

    def _scrub(self, text: str) -> str:
        # A vendor error page may echo the request; the secret must never reach a log or a health page.
        secret = self.settings.client_secret.get_secret_value()
        return text.replace(secret, "***") if secret else text

    async def _send_once(self, method: str, url: str, **kwargs: Any) -> tuple[int, str, bytes]:
        if self._session is None:
            raise VnptError("the vnpt adapter is not open: await open() before fetch()")
        try:
            async with self._session.request(method, url, **kwargs) as response:
                body = await response.read()
                status, content_type = response.status, response.headers.get("Content-Type", "")
                retry_after = _retry_after(response.headers.get("Retry-After"))
        except asyncio.TimeoutError:
            raise _Transient(f"no answer within {self.settings.timeout:g} s") from None
        except aiohttp.ClientError as exc:
            # Connection refused/reset/dropped and bodies cut off in transfer all land here.
            raise _Transient(f"{type(exc).__name__}: {exc}") from None
        if status == 429:
            if retry_after is not None and retry_after > self.settings.max_backoff_seconds:
                raise VnptError(
                    f"{method} {url}: rate limited, Retry-After {retry_after:g} s is longer than "
                    f"max_backoff_seconds ({self.settings.max_backoff_seconds:g}); the next poll resumes")
            raise _Transient("429 Too Many Requests", retry_after)
        if status >= 500:
            raise _Transient(f"HTTP {status}")
        return status, content_type, body

    def _wait(self, retry_state) -> float:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        if isinstance(exc, _Transient) and exc.retry_after is not None:
            return exc.retry_after
        return wait_random_exponential(multiplier=self.settings.backoff_seconds,
                                       max=self.settings.max_backoff_seconds)(retry_state)

    async def _send(self, method: str, url: str, *, attempts: int | None = None,
                    **kwargs: Any) -> tuple[int, str, bytes]:
        """One request, retried on transient faults; ``VnptError`` once the attempts are spent."""
        attempts = attempts or self.settings.max_attempts
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(attempts),
                wait=self._wait,
                retry=retry_if_exception_type(_Transient),
                reraise=True,
                before_sleep=lambda rs: log.debug("vnpt.retry", url=url, attempt=rs.attempt_number,
                                                  error=str(rs.outcome.exception())),
            ):
                with attempt:
                    return await self._send_once(method, url, **kwargs)
        except _Transient as exc:
            raise VnptError(f"{method} {url}: gave up after {attempts} attempt(s), last error: {exc}") from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _json(self, method: str, url: str, content_type: str, body: bytes) -> Any:
        """Decode a 200 body, or say clearly that the server sent something else."""
        media = content_type.split(";")[0].strip().lower()
        if media != "application/json" and not media.endswith("+json"):
            snippet = body[:120].decode("utf-8", "replace").replace("\n", " ")
            raise VnptError(f"{method} {url} answered 200 with {media or 'no Content-Type'}, "
                            f"not JSON: {self._scrub(snippet)!r}")
        try:
            return json.loads(body.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise VnptError(f"{method} {url} answered 200 with a body that is not UTF-8 "
                            f"(byte {exc.start})") from None
        except json.JSONDecodeError as exc:
            raise VnptError(f"{method} {url} answered 200 with invalid or truncated JSON "
                            f"({exc.msg} at char {exc.pos} of {len(body)} bytes)") from None

    async def _fetch_token(self, attempts: int | None = None) -> None:
        url = self._base + TOKEN_PATH
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
            raise VnptError(self._scrub(
                f"token rejected: {reason} (POST {url}, client_id {self.settings.client_id!r}; "
                "check client_id and client_secret)"))
        answer = self._json("POST", url, content_type, body)
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
        url = self._base + path
        shown = str(URL(url).with_query(params))
        for renewed in (False, True):
            if renewed or self._token is None or time.monotonic() >= self._token_expires:
                await self._fetch_token(attempts)
            status, content_type, body = await self._send(
                "GET", url, params=params, attempts=attempts,
                headers={"Authorization": f"Bearer {self._token}"})
            if status == 401:
                self._token = None
                if not renewed:
                    continue
                raise VnptError(f"GET {shown}: a freshly issued token was refused (401)")
            if status != 200:
                snippet = body[:200].decode("utf-8", "replace")
                raise VnptError(f"GET {shown} answered HTTP {status}: {self._scrub(snippet)}")
            return self._json("GET", shown, content_type, body)
        raise AssertionError("unreachable")  # pragma: no cover

    # --- pull --------------------------------------------------------------------------------

    def _page(self, data: Any, shown: str) -> tuple[int, int, list[dict[str, Any]]]:
        if not isinstance(data, dict):
            raise VnptError(f"GET {shown}: the answer is not a JSON object")
        total, size, rows = data.get("TongSo"), data.get("SoBanGhi"), data.get("DuLieu")
        if not isinstance(total, int) or not isinstance(size, int) or size < 1 or not isinstance(rows, list):
            raise VnptError(f"GET {shown}: the answer lacks TongSo, SoBanGhi (≥ 1) or a DuLieu list")
        for i, row in enumerate(rows):
            if not isinstance(row, dict):
                raise VnptError(f"GET {shown}: DuLieu[{i}] is not an object")
        return total, size, rows

    def _raw(self, row: dict[str, Any], where: str) -> tuple[RawRecord, dt.datetime]:
        source_id = row.get("IdHocBa")
        if isinstance(source_id, int) and not isinstance(source_id, bool):
            source_id = str(source_id)
        if not isinstance(source_id, str) or not source_id.strip():
            # Without its id a record cannot be stored, quarantined or replayed: stop the pull.
            raise VnptError(f"{where}.IdHocBa is missing or empty")
        try:
            updated = _parse_timestamp(row.get("NgayCapNhat"))
        except ValueError as exc:
            raise VnptError(f"{where}.NgayCapNhat: {exc}") from None
        deleted = row.get("DaXoa", False)
        if deleted in (0, 1) and not isinstance(deleted, float):
            deleted = bool(deleted)
        if not isinstance(deleted, bool):
            raise VnptError(f"{where}.DaXoa: {deleted!r} is not true or false")
        payload = json.dumps(row, ensure_ascii=False).encode("utf-8")
        return RawRecord(source_id=source_id.strip(), payload=payload, updated_at=updated.replace(tzinfo=VIETNAM_TIME),
                         deleted=deleted), updated

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
        page_no, seen_at_since = 1, set[str]()
        while True:
            params: dict[str, Any] = {"trang": page_no, "sobanghi": self.settings.page_size}
            if since is not None:
                params = {"capnhattu": since.strftime(_TIMESTAMP_FORMAT), **params}
            shown = str(URL(self._base + RECORDS_PATH).with_query(params))
            total, size, rows = self._page(await self._get(RECORDS_PATH, params), shown)
            records: list[RawRecord] = []
            stamps: list[dt.datetime] = []
            for i, row in enumerate(rows):
                raw, updated = self._raw(row, f"GET {shown}: DuLieu[{i}]")
                stamps.append(updated)
                if since is not None and updated == since and raw.source_id in seen_at_since:
                    continue
                records.append(raw)
            last_page = not rows or page_no * size >= total
            if rows:
                newest = max(stamps)
                if since is None or newest > since:
                    since, page_no = newest, 1
                    seen_at_since = {self._source_of(row) for row, s in zip(rows, stamps) if s == newest}
                else:
                    page_no += 1
                    seen_at_since |= {self._source_of(row) for row in rows}
            cursor_out = since.strftime(_TIMESTAMP_FORMAT) if since is not None else None
            yield Page(records, cursor_out)
            if last_page:
                return

    @staticmethod
    def _source_of(row: dict[str, Any]) -> str:
        return str(row["IdHocBa"]).strip()

    async def check(self) -> Health:
        """Get a token and read one record: proves reachability, credentials and permission."""
        opened_here = self._session is None
        await self.open()
        try:
            self._token = None
            data = await self._get(RECORDS_PATH, {"trang": 1, "sobanghi": 1}, attempts=1)
            total = data.get("TongSo") if isinstance(data, dict) else None
            return Health(True, f"token accepted; {total} transcript(s) available")
        except VnptError as exc:
            return Health(False, self._scrub(str(exc)))
        finally:
            if opened_here:
                await self.close()

    # --- normalise ---------------------------------------------------------------------------

    def normalize(self, raw: RawRecord) -> dict[str, Any]:
        try:
            record = json.loads(raw.payload)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"payload is not JSON: {exc}") from None
        return to_central(record)
