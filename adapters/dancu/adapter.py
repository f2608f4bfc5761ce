"""The national population database (CSDL quốc gia về dân cư) through the province's gateway.

An identity provider (``hub.contracts.IdentityProvider``): see CONTRACT.md. The gateway hands
out an access token (OAuth2 client credentials); the citizen services are SOAP operations,
called with zeep from the WSDL shipped beside this module (or the province's own, setting
``wsdl``), over zeep's asynchronous transport (httpx). Nothing here builds an envelope by hand.

- A person with a birth date (a student) goes to ``XacMinhThongTinNhanThan``: the answer's
  name, birth date and gender are compared here, so the hub can say which field differs.
- A person without one (a signer) goes to ``XacThucThongTinCongDan``: exists or not.
- A batch of at least ``async_batch_min`` people goes through the asynchronous form instead:
  ``SubmitRequest``, ``GetRequestStatus`` until done, ``GetRequestResult``.

Only the personal id, the name and the birth date leave the hub. No request or answer body is
logged (the transport below never logs them), and no result carries a personal value.
"""

from __future__ import annotations

import asyncio
import contextvars
import datetime as dt
import logging
import time
import unicodedata
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import zeep
from lxml.etree import XMLSyntaxError
from pydantic import AnyHttpUrl, Field, SecretStr
from zeep.exceptions import Fault, TransportError
from zeep.proxy import AsyncServiceProxy
from zeep.transports import AsyncTransport

from hub import (
    Health,
    IdentityFinding,
    IdentityProvider,
    IdentityResult,
    Person,
    PluginContext,
    PluginError,
    PluginSettings,
)

WSDL = Path(__file__).with_name("dancu.wsdl")
# Request bodies carry personal data; zeep's own transports log them at debug level. Ours does
# not, and zeep's loggers are kept above debug so no other path of zeep's can either.
logging.getLogger("zeep").setLevel(logging.WARNING)

_token_used: contextvars.ContextVar[str] = contextvars.ContextVar("dancu_token")
_TONES = frozenset("\u0300\u0301\u0303\u0309\u0323")  # huyền, sắc, ngã, hỏi, nặng
F = IdentityFinding


class DancuSettings(PluginSettings):
    """The ``dancu`` identity provider's YAML section (``identity.settings``)."""
    token_url: AnyHttpUrl = Field(description="The gateway's token endpoint (client credentials)")
    service_url: AnyHttpUrl = Field(description="The citizen services' SOAP address on the gateway")
    client_id: str = Field(min_length=1, description="The Department's application key at the gateway")
    client_secret: SecretStr = Field(min_length=1, description="Its secret: ${DANCU_CLIENT_SECRET}")
    service_code: str = Field(min_length=1, description="MaDichVu: the service the province was granted")
    officer_code: str = Field(min_length=1, description="MaCanBo: the officer account requests are made on")
    wsdl: Path | None = Field(default=None, description="The gateway's WSDL (default: the one shipped, "
                                                        "see CONTRACT.md)")
    timeout: float = Field(default=30.0, gt=0, le=600, description="Seconds for one request")
    concurrency: int = Field(default=8, ge=1, le=100, description="Single checks in flight at once")
    async_batch_min: int = Field(default=20, ge=0, description="Batches of at least this many people use the "
                                                               "asynchronous form (0: never)")
    batch_poll_seconds: float = Field(default=1.0, gt=0, description="Wait between GetRequestStatus calls")
    batch_timeout_seconds: float = Field(default=300.0, gt=0, description="Give up on a submitted batch after")


class _Unavailable(Exception):
    """The gateway could not answer now (a reason without personal data)."""


def name_key(text: str) -> tuple[tuple[str, str], ...]:
    """A name as compared: case, spacing and Unicode form ignored, and the tone mark's place in
    a syllable too (``Thuỳ`` and ``Thùy``, ``Hoà`` and ``Hòa`` are one name written in the old
    and the new style, and registries and school software each use either)."""
    out = []
    for word in unicodedata.normalize("NFD", text).casefold().split():
        tones = "".join(sorted(c for c in word if c in _TONES))
        base = unicodedata.normalize("NFC", "".join(c for c in word if c not in _TONES))
        out.append((base, tones))
    return tuple(out)


def vn_date(day: dt.date) -> str:
    return day.strftime("%d/%m/%Y")


class _GatewayTransport(AsyncTransport):
    """zeep's async transport with the gateway's bearer token, and no logging of bodies."""

    async def post(self, address: str, message: bytes, headers: dict[str, str]) -> httpx.Response:
        headers = {**headers, "Authorization": f"Bearer {_token_used.get()}"}
        return await self.client.post(address, content=message, headers=headers)


class DancuProvider(IdentityProvider):
    """Verifies students (and signers) against the population database via the gateway."""
    name = "dancu"
    Settings = DancuSettings
    simulator = "adapters.dancu.simulator:DancuSimulator"

    settings: DancuSettings

    def __init__(self, settings: DancuSettings, context: PluginContext):
        super().__init__(settings, context)
        self._http: httpx.AsyncClient | None = None
        self._wsdl_http: httpx.Client | None = None
        self._service: Any = None
        self._token: str | None = None
        self._token_expires = 0.0
        self._token_lock = asyncio.Lock()

    # --- life cycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        if self._service is not None:
            return
        wsdl = self.settings.wsdl or WSDL
        self._http = httpx.AsyncClient(timeout=self.settings.timeout, follow_redirects=False)
        self._wsdl_http = httpx.Client(timeout=self.settings.timeout)
        transport = _GatewayTransport(client=self._http, wsdl_client=self._wsdl_http)
        # No DTDs, entities or external references in the WSDL or in any answer.
        options = zeep.Settings(strict=True, forbid_dtd=True, forbid_entities=True, forbid_external=True)
        try:
            client = await asyncio.to_thread(zeep.AsyncClient, str(wsdl), transport=transport, settings=options)
            # The WSDL's port, at the configured address: create_service would give zeep's sync proxy.
            binding = client.wsdl.services["CongDanService"].ports["CongDanPort"].binding
            self._service = AsyncServiceProxy(client, binding, address=str(self.settings.service_url))
        except (OSError, XMLSyntaxError, zeep.exceptions.Error, ValueError) as exc:
            await self.close()
            raise PluginError(f"cannot load the WSDL {wsdl} (setting wsdl): {type(exc).__name__}: {exc}") from None

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None
        if self._wsdl_http is not None:
            self._wsdl_http.close()
            self._wsdl_http = None
        self._service = None
        self._token = None

    async def check(self) -> Health:
        try:
            await self._bearer(stale=self._token)
        except _Unavailable as exc:
            return Health(False, str(exc))
        return Health(True, "token issued")

    # --- the token ----------------------------------------------------------------------------

    async def _bearer(self, stale: str | None = None) -> str:
        """The current token, fetching one when there is none, it is about to expire, or the
        gateway refused ``stale`` (only the first of many concurrent refusals fetches anew)."""
        async with self._token_lock:
            fresh = self._token is not None and time.monotonic() < self._token_expires - 30
            if fresh and self._token != stale:
                return self._token  # type: ignore[return-value]
            if self._http is None:
                raise _Unavailable("the provider is not open")
            secret = self.settings.client_secret.get_secret_value()
            try:
                response = await self._http.post(str(self.settings.token_url), data={"grant_type": "client_credentials"},
                                                 auth=(self.settings.client_id, secret))
            except httpx.TimeoutException:
                raise _Unavailable(f"token: no answer within {self.settings.timeout:g} s") from None
            except httpx.HTTPError as exc:
                raise _Unavailable(f"token: {type(exc).__name__}") from None
            if response.status_code in (400, 401, 403):
                raise _Unavailable(f"token: the gateway refuses client_id/client_secret (HTTP {response.status_code})")
            if response.status_code != 200:
                raise _Unavailable(f"token: HTTP {response.status_code}")
            try:
                body = response.json()
                token, ttl = str(body["access_token"]), float(body.get("expires_in", 300))
            except (ValueError, KeyError, TypeError):
                raise _Unavailable("token: the answer is not a token") from None
            self._token, self._token_expires = token, time.monotonic() + ttl
            return token

    async def _request(self, operation: str, **body: Any) -> Any:
        """A new request: it names itself, the service used and the officer it is made for."""
        return await self._call(operation, MaYeuCau=uuid.uuid4().hex, MaDichVu=self.settings.service_code,
                                MaCanBo=self.settings.officer_code, **body)

    async def _call(self, operation: str, **body: Any) -> Any:
        """One SOAP operation; a refused (expired) token is renewed once."""
        if self._service is None:
            raise _Unavailable("the provider is not open")
        stale: str | None = None
        for attempt in (1, 2):
            token = await self._bearer(stale)
            _token_used.set(token)
            try:
                return await getattr(self._service, operation)(**body)
            except TransportError as exc:
                if exc.status_code == 401 and attempt == 1:
                    stale = token
                    continue
                raise _Unavailable(f"{operation}: HTTP {exc.status_code}") from None
            except Fault as exc:  # the fault's text may quote the request: only its code is kept
                raise _Unavailable(f"{operation}: SOAP fault {exc.code}") from None
            except httpx.TimeoutException:
                raise _Unavailable(f"{operation}: no answer within {self.settings.timeout:g} s") from None
            except httpx.HTTPError as exc:
                raise _Unavailable(f"{operation}: {type(exc).__name__}") from None
            except (XMLSyntaxError, zeep.exceptions.Error, ValueError) as exc:
                raise _Unavailable(f"{operation}: unreadable answer ({type(exc).__name__})") from None
        raise AssertionError("unreachable")  # pragma: no cover

    # --- verification -------------------------------------------------------------------------

    async def verify(self, people: Sequence[Person]) -> list[IdentityResult]:
        if not people:
            return []
        minimum = self.settings.async_batch_min
        if minimum and len(people) >= minimum:
            try:
                return await self._verify_batch(people)
            except _Unavailable as exc:
                return [IdentityResult.of(F.UNAVAILABLE, detail=str(exc))] * len(people)
        limit = asyncio.Semaphore(self.settings.concurrency)

        async def one(person: Person) -> IdentityResult:
            async with limit:
                try:
                    return await self._verify_one(person)
                except _Unavailable as exc:
                    return IdentityResult.of(F.UNAVAILABLE, detail=str(exc))

        return list(await asyncio.gather(*(one(p) for p in people)))

    async def _verify_one(self, person: Person) -> IdentityResult:
        if person.birth_date is None:
            answer = await self._request("XacThucThongTinCongDan", SoDinhDanh=person.personal_id,
                                      HoVaTen=person.full_name)
            return IdentityResult.of(F.VERIFIED if answer.TonTai else F.NOT_FOUND)
        answer = await self._request("XacMinhThongTinNhanThan", SoDinhDanh=person.personal_id,
                                  HoVaTen=person.full_name, NgayThangNamSinh=vn_date(person.birth_date))
        return compare(person, answer.TonTai, answer.CongDan)

    async def _verify_batch(self, people: Sequence[Person]) -> list[IdentityResult]:
        items = [{"SoThuTu": i, "SoDinhDanh": p.personal_id, "HoVaTen": p.full_name,
                  **({"NgayThangNamSinh": vn_date(p.birth_date)} if p.birth_date else {})}
                 for i, p in enumerate(people)]
        submitted = await self._request("SubmitRequest", DanhSach={"NguoiCanXacMinh": items})
        request_id = submitted.MaYeuCau
        deadline = time.monotonic() + self.settings.batch_timeout_seconds
        state = submitted.TrangThai
        while state != "HoanThanh":
            if state == "Loi":
                raise _Unavailable("SubmitRequest: the gateway reports the batch failed")
            if time.monotonic() > deadline:
                raise _Unavailable(f"SubmitRequest: not done after {self.settings.batch_timeout_seconds:g} s")
            await asyncio.sleep(self.settings.batch_poll_seconds)
            state = (await self._call("GetRequestStatus", MaYeuCau=request_id)).TrangThai
        result = await self._call("GetRequestResult", MaYeuCau=request_id)
        answers = {int(r.SoThuTu): r for r in (result.DanhSach.KetQua if result.DanhSach else [])}
        out = []
        for i, person in enumerate(people):
            r = answers.get(i)
            if r is None:
                out.append(IdentityResult.of(F.UNAVAILABLE, detail="GetRequestResult: no answer for an item"))
            else:
                out.append(compare(person, r.TonTai, r.CongDan))
        return out


def compare(person: Person, exists: bool, citizen: Any) -> IdentityResult:
    """The findings for ``person`` given the registry's answer (``CongDan``, or none)."""
    if not exists or citizen is None:
        return IdentityResult.of(F.NOT_FOUND)
    findings = set()
    parts = citizen.HoVaTen
    registered = " ".join(p for p in (parts.Ho, parts.ChuDem, parts.Ten) if p)
    if name_key(registered) != name_key(person.full_name):
        findings.add(F.NAME_DIFFERS)
    if person.birth_date is not None and citizen.NgayThangNamSinh != vn_date(person.birth_date):
        findings.add(F.BIRTH_DATE_DIFFERS)
    if person.gender and citizen.GioiTinh and int(citizen.GioiTinh) != int(person.gender):
        findings.add(F.GENDER_DIFFERS)
    return IdentityResult(frozenset(findings) or frozenset({F.VERIFIED}))
