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
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, TypeVar

import aiohttp
import structlog
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)
from yarl import URL

log = structlog.get_logger(__name__)

T = TypeVar("T")


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` as seconds to wait: delta-seconds or an HTTP date; None if absent or unreadable."""
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


class Transient(Exception):
    """A failure worth retrying (5xx, 429, timeout, dropped connection).

    ``retry_after`` is the server's own estimate of when to try again; it beats our backoff.
    """

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


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
    def _base(self) -> str:
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
            self._configure_http(self._http)

    def _configure_http(self, http: aiohttp.ClientSession) -> None:
        """Hook: adjust a newly opened client session."""

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None
        self._forget_credentials()

    def _forget_credentials(self) -> None:
        """Hook: drop tokens tied to the closed session, so a reopened adapter authenticates again."""

    # --- requests ----------------------------------------------------------------------------

    async def _request(self, method: str, url: str | URL, **kwargs: Any) -> tuple[int, str, bytes, float | None]:
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

    def _raise_if_unavailable(self, method: str, url: str | URL, status: int, retry_after: float | None) -> None:
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

    def _wait(self, retry_state) -> float:
        """Honour the server's Retry-After; otherwise exponential backoff with jitter, capped."""
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        if isinstance(exc, Transient) and exc.retry_after is not None:
            return exc.retry_after
        return wait_random_exponential(multiplier=self.settings.backoff_seconds,
                                       max=self.settings.max_backoff_seconds)(retry_state)

    async def _retrying(self, method: str, url: str | URL, attempts: int | None,
                        once: Callable[[], Awaitable[T]]) -> T:
        """Run ``once`` until it does not raise ``Transient``; ``Error`` once the attempts are spent."""
        attempts = attempts or self.settings.max_attempts
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(attempts),
                wait=self._wait,
                retry=retry_if_exception_type(Transient),
                reraise=True,
                before_sleep=lambda rs: log.debug(f"{self.name}.retry", url=str(url), attempt=rs.attempt_number,
                                                  error=str(rs.outcome.exception())),
            ):
                with attempt:
                    return await once()
        except Transient as exc:
            raise self.Error(f"{method} {url}: gave up after {attempts} attempt(s), last error: {exc}") from None
        raise AssertionError("unreachable")  # pragma: no cover
