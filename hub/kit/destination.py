"""What every HTTP destination adapter needs, written once: settings, a session, one request,
answers classified for the outbox, a health check.

A destination (the National Data Centre's sync, the Ministry's transcript store, a vendor's own
store) is reached with a bearer token over HTTPS and answers JSON. ``HttpDestination`` holds the
session (opened in ``open``, never following redirects: a redirect to another host would carry
the token along), makes exactly one request per call (retrying is the hub's outbox's job), and
turns every answer into what the outbox acts on: ``error_for`` says whether retrying can help
(5xx/408/429: yes, honouring ``Retry-After``; 409: a version conflict; 401/403 and other 4xx:
no). ``check`` asks ``HEALTH_PATH`` (no token) and ``PING_PATH`` (token checked).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, ClassVar

import aiohttp
from pydantic import AnyHttpUrl, Field, SecretStr, field_validator

from hub.contracts import Adapter, DeliveryError, Health, PluginContext, PluginError, PluginSettings
from hub.kit.http import parse_retry_after


class HttpDestinationSettings(PluginSettings):
    """A destination's YAML section: where, with which token, how long to wait."""
    base_url: AnyHttpUrl = Field(description="The store's base URL, e.g. https://hocba.example.gov.vn")
    token: SecretStr = Field(min_length=1, description="Bearer token; reference it as ${ENV_VARIABLE}")
    timeout: float = Field(default=30.0, gt=0, le=600, description="Seconds for one request, answer included")

    @field_validator("base_url")
    @classmethod
    def _no_query(cls, url: AnyHttpUrl) -> AnyHttpUrl:
        # Paths are appended to the base; a query or fragment would end up in the middle of them.
        if url.query or url.fragment:
            raise ValueError("must not carry a query string or fragment")
        return url


class HttpDestination(Adapter):
    """Base of a destination adapter over HTTP with a bearer token (see the module's docstring)."""
    HEALTH_PATH: ClassVar[str] = "/healthz"
    PING_PATH: ClassVar[str] = "/api/v1/ping"

    settings: HttpDestinationSettings

    def __init__(self, settings: HttpDestinationSettings, context: PluginContext):
        super().__init__(settings, context)
        self._session: aiohttp.ClientSession | None = None
        self.base_url = str(settings.base_url).rstrip("/")

    async def open(self) -> None:
        if self._session is None:
            self._session = self._new_session()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _new_session(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.settings.timeout),
            headers={"Authorization": f"Bearer {self.settings.token.get_secret_value()}"},
        )

    async def request(self, method: str, path: str, what: str, **kwargs: Any) -> tuple[int, Any, Any]:
        """One request to ``base_url + path``: ``(status, headers, JSON body or the start of a
        text body)``; ``DeliveryError`` (transient) when no answer came."""
        if self._session is None:
            raise PluginError(f"{self.name}: open() must be called before sending")
        try:
            async with self._session.request(method, self.base_url + path, allow_redirects=False,
                                             **kwargs) as resp:
                return resp.status, resp.headers, await _json_body(resp)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise DeliveryError(f"{self.name}: {what} not confirmed: {describe(exc)}") from None

    def error_for(self, status: int, headers: Any, body: Any, what: str) -> DeliveryError:
        """The outbox's view of an answer that is not a success."""
        why = reasons(body)
        if status == 409:
            highest = body.get("highest_version") if isinstance(body, dict) else None
            held = f"highest version held is {highest}" if highest is not None else "highest version held unknown"
            return DeliveryError(f"{self.name}: {what} refused (409): {held}; {why}", conflict=True,
                                 held_version=highest if isinstance(highest, int) else None)
        if status in (401, 403):
            return DeliveryError(f"{self.name}: token rejected ({status}); check settings.token", permanent=True)
        if status == 429:
            return DeliveryError(f"{self.name}: {what} rate limited (429)",
                                 retry_after=parse_retry_after(headers.get("Retry-After")))
        if status >= 500 or status == 408:
            return DeliveryError(f"{self.name}: {what} failed ({status}): {why}",
                                 retry_after=parse_retry_after(headers.get("Retry-After")))
        # 400, 413, 422 and anything unexpected: the same request will be answered the same way.
        return DeliveryError(f"{self.name}: {what} rejected ({status}): {why}", permanent=True)

    async def check(self) -> Health:
        # Usable before open(), so ``hocba-hub check`` can test a config without starting.
        session = self._session or self._new_session()
        try:
            async with session.get(self.base_url + self.HEALTH_PATH, allow_redirects=False) as resp:
                if resp.status != 200:
                    return Health(False, f"{self.name}: {self.base_url}{self.HEALTH_PATH} answered {resp.status}")
            async with session.get(self.base_url + self.PING_PATH, allow_redirects=False) as resp:
                if resp.status in (401, 403):
                    return Health(False, f"{self.name}: token rejected by {self.base_url} ({resp.status}); "
                                         f"check settings.token")
                if resp.status != 200:
                    return Health(False, f"{self.name}: {self.base_url}{self.PING_PATH} answered {resp.status}")
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            return Health(False, f"{self.name}: cannot reach {self.base_url}: {describe(exc)}")
        finally:
            if session is not self._session:
                await session.close()
        return Health(True, f"{self.name}: {self.base_url} reachable, token accepted")


async def _json_body(resp: aiohttp.ClientResponse) -> Any:
    # Error pages from a proxy in front of the store are HTML: keep their start as the reason.
    text = await resp.text(errors="replace")
    try:
        return json.loads(text)
    except ValueError:
        return text[:500]


def reasons(body: Any) -> str:
    """The reasons an answer gives (``error`` and ``errors``), or its text."""
    if isinstance(body, dict):
        parts = [str(body.get("error", "")).strip()] + [str(e) for e in body.get("errors") or []]
        text = "; ".join(p for p in parts if p)
    else:
        text = str(body or "").strip()
    return text or "no reason given"


def describe(exc: BaseException) -> str:
    """A transport failure in one line. aiohttp's messages name host and port, never request
    headers, so the token stays out."""
    if isinstance(exc, asyncio.TimeoutError) and not str(exc):
        return "timed out"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
