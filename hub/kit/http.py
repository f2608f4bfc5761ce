"""What HTTP pull adapters share: session lifecycle, Retry-After, and retrying transient faults.

Every pull adapter talks to a vendor server that can be slow, drop connections, answer 5xx or
rate-limit with ``Retry-After``; the hub's answer to those is the same whatever the vendor, so
it lives here once. Authentication, signing and the shape of the vendor's answers stay in each
adapter. This module never names a vendor.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import json
import math
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, TypeVar

import aiohttp
import structlog
from pydantic import Field, HttpUrl, field_validator
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)
from yarl import URL

from hub import logs
from hub.contracts import Health, PluginSettings, RawRecord
from hub.kit.mapping import load_json
from hub.records import VIETNAM_TIME

log = structlog.get_logger(__name__)

T = TypeVar("T")


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` as seconds to wait: delta-seconds (RFC 9110 §10.2.3; a decimal is taken too)
    or an HTTP date; None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return max(0.0, (when - dt.datetime.now(dt.timezone.utc)).total_seconds())


def root_url(url: Any) -> Any:
    """Refuse a base URL with a query or fragment: paths are appended to it, and those would end
    up in the middle of every request's URL."""
    if url.query or url.fragment:
        raise ValueError("must not carry a query string or fragment")
    return url


class HttpPullSettings(PluginSettings):
    """What every HTTP pull adapter's settings have: where, how long, how often to try.

    Subclass it and add the vendor's credentials and paging; override a default with a field of
    the same name (``backoff_seconds: float = Field(default=0.5, ...)``).
    """
    base_url: HttpUrl = Field(description="Root of the vendor API, e.g. https://hocba.example.vn")
    timeout: float = Field(default=30.0, gt=0, le=600, description="Seconds for one HTTP request")
    max_attempts: int = Field(default=5, ge=1, le=20, description="Tries per request before giving up")
    backoff_seconds: float = Field(default=1.0, gt=0, description="First retry delay; doubles, with jitter")
    max_backoff_seconds: float = Field(
        default=60.0, gt=0, description="Longest wait between tries; a longer Retry-After gives up until the next poll")

    @field_validator("base_url")
    @classmethod
    def _plain_root(cls, url: HttpUrl) -> HttpUrl:
        return root_url(url)


def retrying(attempts: int, backoff_seconds: float, max_backoff_seconds: float,
             retry_on: type[BaseException] | tuple[type[BaseException], ...],
             before_sleep: Callable[[Any], None] | None = None,
             wait: Callable[[Any], float] | None = None) -> AsyncRetrying:
    """The hub's one retry policy: ``attempts`` tries, exponential backoff with full jitter capped
    at ``max_backoff_seconds``, a server's ``Retry-After`` (on ``Transient``) beating the backoff.

    Adapters, remote signers and third-party plugins all use it, so a vendor outage is met the
    same way everywhere::

        async for attempt in retrying(5, 1.0, 60.0, Transient):
            with attempt:
                return await once()
    """
    backoff = wait_random_exponential(multiplier=backoff_seconds, max=max_backoff_seconds)

    def honour_retry_after(retry_state: Any) -> float:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        if isinstance(exc, Transient) and exc.retry_after is not None:
            return exc.retry_after
        return backoff(retry_state)

    return AsyncRetrying(stop=stop_after_attempt(attempts), wait=wait or honour_retry_after,
                         retry=retry_if_exception_type(retry_on), reraise=True, before_sleep=before_sleep)


class Transient(Exception):
    """A failure worth retrying (5xx, 429, timeout, dropped connection).

    ``retry_after`` is the server's own estimate of when to try again; it beats our backoff.
    """

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class TokenPaging:
    """The guards a pull paged by the server's token needs, whatever the vendor calls the token.

    A page that hands back the token it was given while saying more follow would loop forever,
    and so would a server that keeps answering "no records, but more to come": both stop the
    poll with ``error`` (what was read is saved; the next poll resumes from the last token).
    """
    max_empty_pages: ClassVar[int] = 50

    def __init__(self, error: type[Exception], token: str = "token"):
        self.error, self.token, self.empty_pages = error, token, 0

    def check_advance(self, shown: str, given: str | None, answered: str | None, has_more: bool) -> None:
        """Raise unless a page that says more follow moved the token on."""
        if has_more and answered == given:
            raise self.error(f"GET {shown}: the server answered with the {self.token} it was given and "
                             "hasMore=true, so the pull cannot advance")

    def count(self, shown: str, records: list[Any]) -> None:
        """After a page that says more follow: raise once too many in a row came empty."""
        self.empty_pages = 0 if records else self.empty_pages + 1
        if self.empty_pages >= self.max_empty_pages:
            raise self.error(f"GET {shown}: {self.empty_pages} empty pages in a row with hasMore=true; "
                             f"stopping, the next poll resumes from the last {self.token}")

    @staticmethod
    def oldest_first(read: list[tuple[Any, dt.datetime]]) -> list[Any]:
        """The page's records by their update time: should a page break the feed's order or list
        a record twice, the newest copy must be the one the hub stores last."""
        return [record for record, _ in sorted(read, key=lambda pair: pair[1])]


class HttpPullMixin:
    """Session lifecycle, plain requests and retries for an adapter pulling over HTTP.

    Mix in before ``hub.contracts.Adapter``. The adapter's settings need ``base_url``,
    ``timeout``, ``max_attempts``, ``backoff_seconds`` and ``max_backoff_seconds``; ``Error`` is
    the adapter's ``PluginError`` subclass, raised once a request is beyond retrying.
    """
    name: ClassVar[str]
    Error: ClassVar[type[Exception]]
    accept: ClassVar[str] = "application/json"
    settings: Any
    _http: aiohttp.ClientSession | None = None

    @property
    def base_url(self) -> str:
        # Read when a request is made, not in __init__: `hocba-hub normalize` builds the adapter
        # without settings, and normalising needs none.
        return str(self.settings.base_url).rstrip("/")

    # --- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        if self._http is None:
            self._http = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.settings.timeout),
                headers={"User-Agent": f"hocba-hub {self.name}-adapter", "Accept": self.accept},
            )
            self.configure_http(self._http)

    def configure_http(self, http: aiohttp.ClientSession) -> None:
        """Hook: adjust a newly opened client session."""

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None
        self.forget_credentials()

    def forget_credentials(self) -> None:
        """Hook: drop tokens tied to the closed session, so a reopened adapter authenticates again."""

    async def checked(self, probe: Callable[[], Awaitable[str]]) -> Health:
        """``check()``'s usual shape: run ``probe`` on an open session (opened for the check if
        the adapter is closed); healthy with what ``probe`` returns, or down with the scrubbed
        error. Probes should make one attempt each: a health check must answer promptly."""
        opened_here = self._http is None
        await self.open()
        try:
            return Health(True, await probe())
        except self.Error as exc:
            return Health(False, self.scrub(str(exc)))
        finally:
            if opened_here:
                await self.close()

    # A policy of its own instead of the hub's (which honours Retry-After); ``None`` keeps the
    # hub's. The conformance kit's tests use it to prove that ignoring Retry-After is caught.
    wait_override: ClassVar[Callable[[Any], float] | None] = None

    def live_secrets(self) -> list[str]:
        """Hook: secrets obtained at run time (session tokens) that ``scrub`` removes too."""
        return []

    def scrub(self, text: str) -> str:
        """``text`` without any secret of this adapter: a vendor error page may echo the request,
        and neither a credential nor a session token may reach a log line or a health page."""
        return logs.scrub(text, [*logs.secrets_in(self.settings), *filter(None, self.live_secrets())])

    def json_body(self, method: str, url: Any, content_type: str, body: bytes) -> Any:
        """A 200 answer's JSON, or ``Error`` saying plainly what the server sent instead: another
        media type (a proxy's HTML page, quoted without secrets), JSON cut off or not UTF-8, or
        nested too deeply to read (refused as a whole; a record nested less deep than the parser's
        limit is quarantined by ``normalize`` with the reason)."""
        media = content_type.split(";")[0].strip().lower()
        if media != "application/json" and not media.endswith("+json"):
            snippet = body[:120].decode("utf-8", "replace").replace("\n", " ")
            raise self.Error(f"{method} {url} answered 200 with {media or 'no Content-Type'}, "
                             f"not JSON: {self.scrub(snippet)!r}")
        try:
            return json.loads(body.decode("utf-8"))
        except RecursionError:
            raise self.Error(f"{method} {url} answered 200 with JSON nested too deeply to read") from None
        except UnicodeDecodeError as exc:
            raise self.Error(f"{method} {url} answered 200 with a body that is not UTF-8 "
                             f"(byte {exc.start})") from None
        except json.JSONDecodeError as exc:
            raise self.Error(f"{method} {url} answered 200 with invalid or truncated JSON "
                             f"({exc.msg} at char {exc.pos} of {len(body)} bytes)") from None

    # --- the records of a page ---------------------------------------------------------------

    def page_answer(self, data: Any, shown: str) -> dict[str, Any]:
        """A page's JSON answer if it is an object; else ``Error`` naming the request."""
        if not isinstance(data, dict):
            raise self.Error(f"GET {shown}: the answer is not a JSON object")
        return data

    def each_an_object(self, items: list[Any], at: str) -> list[dict[str, Any]]:
        """``items`` if each is an object; else ``Error`` naming the first that is not (``at[i]``)."""
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                raise self.Error(f"{at}[{i}] is not an object")
        return items

    def one_json_record(self, name: str, data: bytes,
                        read: Callable[[dict[str, Any], str], tuple[Any, Any]]) -> list[Any]:
        """``read_file`` for a vendor whose records are JSON objects: the file's one record, read
        by ``read(item, where)`` as a page's records are (a fault is a ``ValueError`` naming it)."""
        item = load_json(data, "the file")
        if not isinstance(item, dict):
            raise ValueError(f"the file is not one {self.name} record (a JSON object)")
        try:
            return [read(item, name)[0]]
        except self.Error as exc:
            raise ValueError(str(exc)) from None

    def json_record(self, item: dict[str, Any], where: str, *, id_key: str, updated_key: str, deleted_key: str,
                    parse_time: Callable[[Any], dt.datetime],
                    numeric_deleted: bool = False) -> tuple[RawRecord, dt.datetime]:
        """One record of a JSON feed as the hub stores it, with its update time (to order a page):
        id, update time (naive is Vietnam time) and recall flag from its envelope keys (a
        ``numeric_deleted`` flag may be 0 or 1), the whole object as the payload. A record the
        pull cannot store stops it with ``Error`` naming ``where`` and the key."""
        source_id = self.record_id(item.get(id_key), f"{where}.{id_key}")
        try:
            updated = parse_time(item.get(updated_key))
        except ValueError as exc:
            raise self.Error(f"{where}.{updated_key}: {exc}") from None
        deleted = item.get(deleted_key, False)
        if numeric_deleted and deleted in (0, 1) and not isinstance(deleted, float):
            deleted = bool(deleted)
        if not isinstance(deleted, bool):
            raise self.Error(f"{where}.{deleted_key}: {deleted!r} is not true or false")
        payload = json.dumps(item, ensure_ascii=False).encode("utf-8")
        stamp = updated if updated.tzinfo else updated.replace(tzinfo=VIETNAM_TIME)
        return RawRecord(source_id=source_id, payload=payload, updated_at=stamp, deleted=deleted), updated

    def record_id(self, value: Any, at: str) -> str:
        """A record's id as text (a number is taken as its digits). Without one a record cannot be
        stored, quarantined or replayed, so the pull stops with ``Error`` naming ``at``."""
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str) or not value.strip():
            raise self.Error(f"{at} is missing or empty")
        return value.strip()

    # --- requests ----------------------------------------------------------------------------

    async def request(self, method: str, url: str | URL, **kwargs: Any) -> tuple[int, str, bytes, float | None]:
        """One request: ``(status, content type, body, Retry-After seconds)``; network faults → ``Transient``."""
        if self._http is None:
            raise self.Error(f"the {self.name} adapter is not open: await open() before fetch()")
        try:
            async with self._http.request(method, url, **kwargs) as response:
                body = await response.read()
                status, content_type = response.status, response.headers.get("Content-Type", "")
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
        except asyncio.TimeoutError:
            raise Transient(f"no answer within {self.settings.timeout:g} s") from None
        except aiohttp.ClientError as exc:
            # Connection refused/reset/dropped and bodies cut off in transfer all land here.
            raise Transient(f"{type(exc).__name__}: {exc}") from None
        return status, content_type, body, retry_after

    def raise_if_unavailable(self, method: str, url: str | URL, status: int, retry_after: float | None) -> None:
        """429 and 5xx → ``Transient``; a Retry-After beyond ``max_backoff_seconds`` → ``Error`` at once.

        A 503 with Retry-After is a planned outage: its own estimate beats our backoff. A wait
        longer than we allow gives up now, and the next poll resumes, instead of holding a worker.
        """
        if status in (429, 503) and retry_after is not None and retry_after > self.settings.max_backoff_seconds:
            raise self.Error(
                f"{method} {url}: HTTP {status} with Retry-After {retry_after:g} s, longer than "
                f"max_backoff_seconds ({self.settings.max_backoff_seconds:g}); the next poll resumes")
        if status == 429:
            raise Transient("429 Too Many Requests", retry_after)
        if status >= 500:
            raise Transient(f"HTTP {status}", retry_after if status == 503 else None)

    async def retry(self, method: str, url: str | URL, attempts: int | None,
                        once: Callable[[], Awaitable[T]]) -> T:
        """Run ``once`` until it does not raise ``Transient``; ``Error`` once the attempts are spent."""
        attempts = attempts or self.settings.max_attempts
        try:
            async for attempt in retrying(
                attempts, self.settings.backoff_seconds, self.settings.max_backoff_seconds, Transient,
                wait=self.wait_override,
                before_sleep=lambda rs: log.debug(f"{self.name}.retry", url=str(url), attempt=rs.attempt_number,
                                                  error=str(rs.outcome.exception())),
            ):
                with attempt:
                    return await once()
        except Transient as exc:
            raise self.Error(f"{method} {url}: gave up after {attempts} attempt(s), last error: {exc}") from None
        raise AssertionError("unreachable")  # pragma: no cover
