"""Delivery to the Ministry's digital transcript store (MOET): see CONTRACT.md.

A destination that takes class packages only: ``deliver_package`` sends one class package the
Department signed (``hub.package_class``), ``recall`` withdraws a package and ``cancel`` one
transcript, each with a reason. One transcript at a time is the National Data Centre's sync
(``adapters/ttdlqg``), not this store's. Every answer becomes a receipt or a ``DeliveryError``
that says whether retrying can help. Retrying itself is the hub's outbox's job, so every call
here makes exactly one request.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import quote

import aiohttp
from pydantic import AnyHttpUrl, Field, SecretStr, field_validator

from hub import (
    PACKAGE_MEDIA_TYPE,
    Adapter,
    ClassPackage,
    DeliveryError,
    Health,
    PackageReceipt,
    PluginContext,
    PluginError,
    PluginSettings,
    Receipt,
    parse_retry_after,
)

PACKAGES_PATH = "/api/v2/packages"
TRANSCRIPTS_PATH = "/api/v2/transcripts"
PING_PATH = "/api/v1/ping"
HEALTH_PATH = "/healthz"


class MoetSettings(PluginSettings):
    """The ``moet`` destination's YAML section."""
    base_url: AnyHttpUrl = Field(description="The store's base URL, e.g. https://hocba.example.gov.vn")
    token: SecretStr = Field(min_length=1, description="Bearer token; reference it as ${MOET_TOKEN}")
    timeout: float = Field(default=30.0, gt=0, le=600, description="Seconds for one request, answer included")

    @field_validator("base_url")
    @classmethod
    def _no_query(cls, url: AnyHttpUrl) -> AnyHttpUrl:
        # Paths are appended to the base; a query or fragment would end up in the middle of them.
        if url.query or url.fragment:
            raise ValueError("must not carry a query string or fragment")
        return url


class MoetAdapter(Adapter):
    """Delivers class packages to the central store: idempotent per package, never retrying.

    Every request is sent with ``allow_redirects=False``: the session carries the token, and a
    redirect to another host would carry it along.
    """
    name = "moet"
    Settings = MoetSettings
    simulator = "adapters.moet.simulator:MoetSimulator"

    settings: MoetSettings

    def __init__(self, settings: MoetSettings, context: PluginContext):
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
            raise PluginError("moet: open() must be called before deliver_package(), recall() or cancel()")
        return self._session

    # --- class packages -------------------------------------------------------------------

    async def deliver_package(self, package: ClassPackage) -> PackageReceipt:
        """Submit ``package`` (``PUT``, so the package id makes a retry safe): its receipt, one
        ``Receipt`` per transcript; ``DeliveryError`` otherwise (``permanent`` when resending the
        same package cannot help: refused, conflicting versions, bad token)."""
        what = f"package {package.package_id}"
        url = f"{self.base_url}{PACKAGES_PATH}/{quote(package.package_id, safe='')}"
        status, headers, body = await self._request("PUT", url, what, data=package.to_zip(),
                                                    headers={"Content-Type": PACKAGE_MEDIA_TYPE})
        if status in (200, 201):
            try:
                return _package_receipt(body, duplicate=status == 200)
            except (KeyError, TypeError, ValueError):
                # The store may have committed: a retry gets the original receipt as a duplicate.
                raise DeliveryError(f"moet: {what}: answer {status} carries no readable receipt") from None
        raise _error_for(status, headers, body, what)

    async def package_receipt(self, package_id: str) -> PackageReceipt | None:
        """The store's receipt and current state of ``package_id`` (``detail["status"]``:
        accepted or recalled), or ``None`` if it holds no such package."""
        what = f"package {package_id}"
        status, headers, body = await self._request(
            "GET", f"{self.base_url}{PACKAGES_PATH}/{quote(package_id, safe='')}", what)
        if status == 404:
            return None
        if status == 200 and isinstance(body, dict):
            return _package_receipt(body, duplicate=False)
        raise _error_for(status, headers, body, what)

    async def recall(self, package_id: str, reason: str) -> Receipt:
        """Withdraw a submitted package, saying why (mandatory): every transcript it brought is
        recalled; a corrected transcript goes again as its next version, in a new package."""
        what = f"recall of package {package_id}"
        url = f"{self.base_url}{PACKAGES_PATH}/{quote(package_id, safe='')}/recall"
        return await self._withdraw(url, what, reason)

    async def cancel(self, record_id: str, version: int, reason: str) -> Receipt:
        """Cancel one delivered transcript version, saying why (mandatory)."""
        what = f"cancel of {record_id} v{version}"
        url = f"{self.base_url}{TRANSCRIPTS_PATH}/{quote(record_id, safe='')}/versions/{int(version)}/cancel"
        return await self._withdraw(url, what, reason)

    async def _withdraw(self, url: str, what: str, reason: str) -> Receipt:
        if not isinstance(reason, str) or not reason.strip():
            raise DeliveryError(f"moet: {what}: a reason is required", permanent=True)
        status, headers, body = await self._request("POST", url, what, json={"reason": reason.strip()})
        if status == 200 and isinstance(body, dict) and body.get("receipt_id"):
            return Receipt(str(body["receipt_id"]), str(body.get("received_at", "")),
                           duplicate=bool(body.get("duplicate")), detail=body)
        if status in (404, 409):
            # Unknown to the store, or recalled with its package already: asking again cannot help.
            raise DeliveryError(f"moet: {what} refused ({status}): {_reasons(body)}", permanent=True)
        raise _error_for(status, headers, body, what)

    async def _request(self, method: str, url: str, what: str, **kwargs: Any) -> tuple[int, Any, Any]:
        session = self._require_session()
        try:
            async with session.request(method, url, allow_redirects=False, **kwargs) as resp:
                return resp.status, resp.headers, await _json_body(resp)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise DeliveryError(f"moet: {what} not confirmed: {_describe(exc)}") from None

    # --- health ---------------------------------------------------------------------------

    async def check(self) -> Health:
        # Usable before open(), so ``hocba-hub check`` can test a config without starting.
        session = self._session or self._new_session()
        try:
            async with session.get(self.base_url + HEALTH_PATH, allow_redirects=False) as resp:
                if resp.status != 200:
                    return Health(False, f"moet: {self.base_url}{HEALTH_PATH} answered {resp.status}")
            async with session.get(self.base_url + PING_PATH, allow_redirects=False) as resp:
                if resp.status in (401, 403):
                    return Health(False, f"moet: token rejected by {self.base_url} ({resp.status}); check settings.token")
                if resp.status != 200:
                    return Health(False, f"moet: {self.base_url}{PING_PATH} answered {resp.status}")
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            return Health(False, f"moet: cannot reach {self.base_url}: {_describe(exc)}")
        finally:
            if session is not self._session:
                await session.close()
        return Health(True, f"moet: {self.base_url} reachable, token accepted")


def _package_receipt(body: Any, *, duplicate: bool) -> PackageReceipt:
    transcripts = {}
    for t in body["transcripts"]:
        transcripts[(str(t["record_id"]), int(t["version"]))] = Receipt(
            str(t["receipt_id"]), str(body.get("received_at", "")), duplicate=t.get("status") == "duplicate",
            detail=t)
    if not body["receipt_id"]:
        raise ValueError("empty receipt id")
    return PackageReceipt(str(body["package_id"]), str(body["receipt_id"]), str(body.get("received_at", "")),
                          duplicate=bool(body.get("duplicate", duplicate)), transcripts=transcripts, detail=body)


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
        return DeliveryError(f"moet: {what} refused (409): {held}; {reasons}", conflict=True,
                             held_version=highest if isinstance(highest, int) else None)
    if status in (401, 403):
        return DeliveryError(f"moet: token rejected ({status}); check settings.token", permanent=True)
    if status == 429:
        return DeliveryError(
            f"moet: {what} rate limited (429)", retry_after=parse_retry_after(headers.get("Retry-After"))
        )
    if status >= 500 or status == 408:
        return DeliveryError(
            f"moet: {what} failed ({status}): {reasons}", retry_after=parse_retry_after(headers.get("Retry-After"))
        )
    # 400, 413, 422 and anything unexpected: the same request will be answered the same way.
    return DeliveryError(f"moet: {what} rejected ({status}): {reasons}", permanent=True)


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

