"""Delivery to the National Data Centre's sync (Trung tâm dữ liệu quốc gia, TTDLQG): see CONTRACT.md.

A destination only: ``deliver`` sends one signed transcript and turns the store's answer into
a ``Receipt`` or a ``DeliveryError`` that says whether retrying can help. Retrying itself is
the hub's outbox's job, so every call here makes exactly one request.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import quote

import aiohttp
from pydantic import AnyHttpUrl, Field, SecretStr, field_validator
from pydantic_core import to_json

from hub import (
    Adapter,
    Delivery,
    DeliveryError,
    Health,
    PluginContext,
    PluginError,
    PluginSettings,
    Receipt,
    parse_retry_after,
)

SUBMIT_PATH = "/api/v1/hocba"
PING_PATH = "/api/v1/ping"
HEALTH_PATH = "/healthz"


class TtdlqgSettings(PluginSettings):
    """The ``ttdlqg`` destination's YAML section."""
    base_url: AnyHttpUrl = Field(description="The store's base URL, e.g. https://hocba.example.gov.vn")
    token: SecretStr = Field(min_length=1, description="Bearer token; reference it as ${TTDLQG_TOKEN}")
    timeout: float = Field(default=30.0, gt=0, le=600, description="Seconds for one request, answer included")

    @field_validator("base_url")
    @classmethod
    def _no_query(cls, url: AnyHttpUrl) -> AnyHttpUrl:
        # Paths are appended to the base; a query or fragment would end up in the middle of them.
        if url.query or url.fragment:
            raise ValueError("must not carry a query string or fragment")
        return url


class TtdlqgAdapter(Adapter):
    """Syncs signed transcripts to the National Data Centre: idempotent, versioned, never retrying.

    Every request is sent with ``allow_redirects=False``: the session carries the token, and a
    redirect to another host would carry it along.
    """
    name = "ttdlqg"
    Settings = TtdlqgSettings
    simulator = "adapters.ttdlqg.simulator:TtdlqgSimulator"

    settings: TtdlqgSettings

    def __init__(self, settings: TtdlqgSettings, context: PluginContext):
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

    def _require_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise PluginError("ttdlqg: open() must be called before deliver() or status()")
        return self._session

    # --- delivery -------------------------------------------------------------------------

    async def deliver(self, delivery: Delivery) -> Receipt:
        session = self._require_session()
        what = f"{delivery.record_id} v{delivery.version}"
        _check_envelope(delivery)
        form = aiohttp.FormData()
        form.add_field("record", to_json(delivery.record).decode(), content_type="application/json")
        form.add_field(
            "document", delivery.pdf, content_type="application/pdf",
            filename=f"{delivery.record_id}-v{delivery.version}.pdf",
        )
        if delivery.reason:  # an operator's cancel says why (an assumed, optional part)
            form.add_field("reason", delivery.reason, content_type="text/plain; charset=utf-8")
        try:
            async with session.post(self.base_url + SUBMIT_PATH, data=form, allow_redirects=False) as resp:
                body = await _json_body(resp)
                status, headers = resp.status, resp.headers
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise DeliveryError(f"ttdlqg: {what} not confirmed: {_describe(exc)}") from None

        if status in (200, 201):
            if not isinstance(body, dict) or not body.get("receipt_id"):
                # The store may have committed: a retry gets the original receipt as a duplicate.
                raise DeliveryError(f"ttdlqg: {what}: answer {status} carries no receipt")
            return Receipt(
                receipt_id=str(body["receipt_id"]),
                received_at=str(body.get("received_at", "")),
                duplicate=bool(body.get("duplicate", status == 200)),
                detail=body,
            )
        raise _error_for(status, headers, body, what)

    async def held_version(self, record_id: str) -> int | None:
        status = await self.status(record_id)
        return status.get("highest_version") if status else None

    async def status(self, record_id: str) -> dict[str, Any] | None:
        """What the store holds for ``record_id`` (``highest_version``, ``receipt_id``,
        ``cancelled``), or ``None`` if it holds nothing: the hub reconciles a 409 with this."""
        session = self._require_session()
        url = f"{self.base_url}{SUBMIT_PATH}/{quote(record_id, safe='')}"
        try:
            async with session.get(url, allow_redirects=False) as resp:
                body = await _json_body(resp)
                status, headers = resp.status, resp.headers
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise DeliveryError(f"ttdlqg: status of {record_id} unknown: {_describe(exc)}") from None
        if status == 404:
            return None
        if status == 200 and isinstance(body, dict):
            return body
        raise _error_for(status, headers, body, f"status of {record_id}")

    # --- health ---------------------------------------------------------------------------

    async def check(self) -> Health:
        # Usable before open(), so ``hocba-hub check`` can test a config without starting.
        session = self._session or self._new_session()
        try:
            async with session.get(self.base_url + HEALTH_PATH, allow_redirects=False) as resp:
                if resp.status != 200:
                    return Health(False, f"ttdlqg: {self.base_url}{HEALTH_PATH} answered {resp.status}")
            async with session.get(self.base_url + PING_PATH, allow_redirects=False) as resp:
                if resp.status in (401, 403):
                    return Health(False, f"ttdlqg: token rejected by {self.base_url} ({resp.status}); check settings.token")
                if resp.status != 200:
                    return Health(False, f"ttdlqg: {self.base_url}{PING_PATH} answered {resp.status}")
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            return Health(False, f"ttdlqg: cannot reach {self.base_url}: {_describe(exc)}")
        finally:
            if session is not self._session:
                await session.close()
        return Health(True, f"ttdlqg: {self.base_url} reachable, token accepted")


def _check_envelope(delivery: Delivery) -> None:
    # The store keys on the record's own envelope; a Delivery that disagrees with it would be
    # acknowledged under ids the hub does not expect, so it is refused before it is sent.
    record = delivery.record
    record_id = record.get("idbanghi", record.get("record_id"))
    version = record.get("phienban", record.get("version"))
    if record_id != delivery.record_id or version != delivery.version:
        raise DeliveryError(
            f"ttdlqg: delivery says {delivery.record_id} v{delivery.version} but the record's envelope "
            f"says {record_id} v{version}",
            permanent=True,
        )


async def _json_body(resp: aiohttp.ClientResponse) -> Any:
    # Error pages from a proxy in front of the store are HTML: keep their start as the reason.
    text = await resp.text(errors="replace")
    try:
        return json.loads(text)
    except ValueError:
        return text[:500]


def _error_for(status: int, headers: Any, body: Any, what: str) -> DeliveryError:
    reasons = _reasons(body)
    if status == 409:
        highest = body.get("highest_version") if isinstance(body, dict) else None
        held = f"highest version held is {highest}" if highest is not None else "highest version held unknown"
        return DeliveryError(f"ttdlqg: {what} refused (409): {held}; {reasons}", conflict=True,
                             held_version=highest if isinstance(highest, int) else None)
    if status in (401, 403):
        return DeliveryError(f"ttdlqg: token rejected ({status}); check settings.token", permanent=True)
    if status == 429:
        return DeliveryError(
            f"ttdlqg: {what} rate limited (429)", retry_after=parse_retry_after(headers.get("Retry-After"))
        )
    if status >= 500 or status == 408:
        return DeliveryError(
            f"ttdlqg: {what} failed ({status}): {reasons}", retry_after=parse_retry_after(headers.get("Retry-After"))
        )
    # 400, 413, 422 and anything unexpected: the same request will be answered the same way.
    return DeliveryError(f"ttdlqg: {what} rejected ({status}): {reasons}", permanent=True)


def _reasons(body: Any) -> str:
    if isinstance(body, dict):
        parts = [str(body.get("error", "")).strip()] + [str(e) for e in body.get("errors") or []]
        text = "; ".join(p for p in parts if p)
    else:
        text = str(body or "").strip()
    return text or "no reason given"


def _describe(exc: BaseException) -> str:
    # aiohttp's messages name host and port, never request headers, so the token stays out.
    if isinstance(exc, asyncio.TimeoutError) and not str(exc):
        return "timed out"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__

