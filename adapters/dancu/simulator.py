"""The gateway's citizen services (CONTRACT.md) served over real HTTP on loopback, with faults.

A token endpoint (client credentials, HTTP Basic) and one SOAP 1.1 endpoint answering the five
operations of ``dancu.wsdl``. The population is seeded from central-format transcripts
(``hub.kit.synthetic``): most students are registered exactly as the school has them (some with
the tone mark placed in the other style, which is the same name), and every ``disagree_every``-th
is not registered, or registered with another name, birth date or gender, in turn. ``expected``
says which, per transcript. Signers named on the transcripts are registered as named.

Requests are parsed with lxml with DTDs, entities and network access off; answers are built
with lxml. Only the operations and fields of the WSDL are understood; anything else is a SOAP
``Client`` fault.
"""

from __future__ import annotations

import datetime as dt
import secrets
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import BasicAuth, web
from lxml import etree

from adapters.dancu.adapter import name_key
from hub import (
    GIVEN,
    Faults,
    FaultySimulator,
    IdentityFinding,
    IdentitySimulator,
    XmlElement,
)

NS = "urn:hocba-hub:csdl-dan-cu:v1"
SOAP_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
TOKEN_PATH = "/token"
SERVICE_PATH = "/csdl-dan-cu/v1"
F = IdentityFinding
DISAGREEMENTS = (F.NOT_FOUND, F.NAME_DIFFERS, F.BIRTH_DATE_DIFFERS, F.GENDER_DIFFERS)
# The same syllable with the tone mark in the old and the new place.
_OTHER_STYLE = {"uỳ": "ùy", "uý": "úy", "uỷ": "ủy", "oà": "òa", "oá": "óa", "oạ": "ọa", "oả": "ỏa"}
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)


@dataclass
class DancuFaults(Faults):
    """The standard switches (``hub.contracts.Faults``; ``*_next_n`` count SOAP requests only),
    plus the gateway's own."""
    token_ttl_seconds: int = 3600     # ``expires_in`` of tokens issued from now on
    batch_polls: int = 2              # GetRequestStatus answers DangXuLy this many times per batch
    batch_fails: bool = False         # a submitted batch ends in Loi
    expire_tokens_after_n: int = 0    # the n-th SOAP request from now finds every token revoked
    expire_tokens_on_poll: int = 0    # the n-th GetRequestStatus from now finds every token revoked


@dataclass
class Citizen:
    """One registered person, as the registry holds them."""
    personal_id: str
    full_name: str
    birth_date: dt.date
    gender: int

    def parts(self) -> tuple[str, str, str]:
        """Ho, ChuDem, Ten: surname, middle names, given name."""
        words = self.full_name.split()
        return words[0], " ".join(words[1:-1]), words[-1]


@dataclass
class _Batch:
    items: list[dict[str, Any]]
    polls_left: int
    fails: bool


def other_style(name: str) -> str:
    """``name`` with its tone marks placed in the other style (``Thuỳ`` → ``Thùy``)."""
    for old, new in _OTHER_STYLE.items():
        name = name.replace(old, new)
    return name


class DancuSimulator(FaultySimulator, IdentitySimulator):
    """The population database behind the province's gateway, on loopback.

    ``population`` maps personal ids to ``Citizen``; ``calls`` counts SOAP operations;
    ``sent_fields`` is every element name a request carried about a person (what left the hub).
    """
    data_paths = frozenset({SERVICE_PATH})

    def __init__(self, *, records: int = 0, invalid: int = 0, seed: int = 0, disagree_every: int = 6,
                 client_id: str = "sogddt-hocba", client_secret: str | None = None):
        super().__init__(records=records, invalid=invalid, seed=seed)
        self.faults = DancuFaults()
        self.disagree_every = disagree_every
        self.client_id = client_id
        self.client_secret = client_secret or secrets.token_urlsafe(24)
        self.service_code = "XACMINH_HOCBA"
        self.officer_code = "SOGDDT.CB001"
        self.population: dict[str, Citizen] = {}
        self.expected: dict[str, frozenset[IdentityFinding]] = {}
        self.calls: Counter[str] = Counter()
        self.batched = 0                  # people received in submitted batches
        self.sent_fields: set[str] = set()
        self.tokens_issued = 0
        self._tokens: dict[str, float] = {}
        self._batches: dict[str, _Batch] = {}

    # --- the population -----------------------------------------------------------------------

    def register(self, citizen: Citizen) -> None:
        self.population[citizen.personal_id] = citizen

    def forget(self, personal_id: str) -> None:
        self.population.pop(personal_id, None)

    def populate(self, transcripts: Sequence[Mapping[str, Any]],
                 plan: Mapping[str, IdentityFinding] | None = None) -> None:
        """Register the students and signers of ``transcripts``; ``plan`` (transcript id →
        finding) overrides the default round of disagreements."""
        for k, record in enumerate(transcripts):
            student = record["student"]
            tid = record["transcript_id"]
            if plan is not None:
                kind = plan.get(tid, F.VERIFIED)
            elif self.disagree_every and k % self.disagree_every == self.disagree_every - 1:
                kind = DISAGREEMENTS[(k // self.disagree_every) % len(DISAGREEMENTS)]
            else:
                kind = F.VERIFIED
            if student.get("personal_id"):
                self._register_student(student, kind, k)
                if kind != F.VERIFIED:
                    self.expected[tid] = frozenset({kind})
            signers = record["signatories"]
            for name, pid in ((signers["homeroom_teacher_name"], signers.get("homeroom_teacher_personal_id")),
                              (signers["principal_name"], signers.get("principal_personal_id"))):
                if pid and pid not in self.population:
                    # Signers have no birth date on the record: the registry's is its own.
                    self.register(Citizen(pid, name, dt.date(1980, 1, 1), 0))

    def _register_student(self, student: Mapping[str, Any], kind: IdentityFinding, k: int) -> None:
        name = student["full_name"]
        birth = dt.date.fromisoformat(student["birth_date"])
        gender = int(student["gender"])
        if kind == F.NOT_FOUND:
            self.forget(student["personal_id"])
            return
        if kind == F.NAME_DIFFERS:
            words = name.split()
            given = GIVEN.get(gender) or GIVEN[1]   # a name that fits the student's gender
            words[-1] = next(g for g in given[k % len(given):] + given if g != words[-1])
            name = " ".join(words)
        elif kind == F.BIRTH_DATE_DIFFERS:
            birth += dt.timedelta(days=1)
        elif kind == F.GENDER_DIFFERS:
            gender = 3 - gender
        elif k % 2:
            name = other_style(name)  # the same name, written in the other style
        self.register(Citizen(student["personal_id"], name, birth, gender))

    # --- Simulator protocol -------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        app = web.Application(middlewares=[self._faults_middleware], client_max_size=4 * 1024 * 1024)
        app.router.add_post(TOKEN_PATH, self._token)
        app.router.add_post(SERVICE_PATH, self._soap)
        return await self._serve(app, host, port, shutdown_timeout=1.0)

    def adapter_settings(self) -> dict[str, Any]:
        return {"token_url": self.base_url + TOKEN_PATH, "service_url": self.base_url + SERVICE_PATH,
                "client_id": self.client_id, "client_secret": self.client_secret,
                "service_code": self.service_code, "officer_code": self.officer_code,
                "batch_poll_seconds": 0.05}

    def expire_tokens(self) -> None:
        """Revoke every issued token, as the gateway does when they expire."""
        self._tokens.clear()

    def _fault_response(self, kind: str, status: int, headers: dict[str, str] | None = None) -> web.Response:
        text = {"outage": "Hệ thống đang bảo trì", "fail": "Lỗi hệ thống", "rate_limit": "Quá nhiều yêu cầu"}[kind]
        return web.Response(text=text, status=status, headers=headers, content_type="text/plain")

    # --- token --------------------------------------------------------------------------------

    async def _token(self, request: web.Request) -> web.Response:
        form = await request.post()
        try:
            auth = BasicAuth.decode(request.headers.get("Authorization", ""))
        except ValueError:
            auth = None
        if form.get("grant_type") != "client_credentials":
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        if not (auth and secrets.compare_digest(auth.login, self.client_id)
                and secrets.compare_digest(auth.password.encode(), self.client_secret.encode())):
            return web.json_response({"error": "invalid_client"}, status=401)
        token = secrets.token_urlsafe(32)
        ttl = self.faults.token_ttl_seconds
        self._tokens[token] = time.monotonic() + ttl
        self.tokens_issued += 1
        return web.json_response({"access_token": token, "token_type": "Bearer", "expires_in": ttl})

    def _authorized(self, request: web.Request) -> bool:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        expires = self._tokens.get(token.strip()) if scheme.lower() == "bearer" else None
        if expires is None or time.monotonic() >= expires:
            self._tokens.pop(token.strip(), None)
            return False
        return True

    # --- SOAP ---------------------------------------------------------------------------------

    async def _soap(self, request: web.Request) -> web.Response:
        f = self.faults
        if f.expire_tokens_after_n > 0:
            f.expire_tokens_after_n -= 1
            if f.expire_tokens_after_n == 0:
                self.expire_tokens()
        if f.expire_tokens_on_poll > 0 and request.headers.get("SOAPAction", "").endswith('/GetRequestStatus"'):
            f.expire_tokens_on_poll -= 1
            if f.expire_tokens_on_poll == 0:
                self.expire_tokens()
        if not self._authorized(request):
            return web.Response(text="Invalid Credentials", status=401, content_type="text/plain")
        body = await request.read()
        try:
            doc = etree.fromstring(body, _PARSER)
            if doc.getroottree().docinfo.doctype:
                raise ValueError("DTDs are not accepted")
            payload = doc.find(f"{{{SOAP_ENV}}}Body")[0]
        except (etree.XMLSyntaxError, ValueError, TypeError, IndexError):
            return _fault("Client", "Yêu cầu không hợp lệ")
        operation = etree.QName(payload).localname
        handler = {"XacThucThongTinCongDan": self._xac_thuc, "XacMinhThongTinNhanThan": self._xac_minh,
                   "SubmitRequest": self._submit, "GetRequestStatus": self._status,
                   "GetRequestResult": self._result}.get(operation)
        if handler is None or etree.QName(payload).namespace != NS:
            return _fault("Client", "Không hỗ trợ thao tác này")
        self.calls[operation] += 1
        values = {etree.QName(c).localname: c for c in payload}
        try:
            return _answer(handler(values))
        except KeyError as exc:
            return _fault("Client", f"Thiếu trường {exc.args[0]}")

    def _person(self, values: Mapping[str, Any]) -> dict[str, str]:
        person = {k: (values[k].text or "") for k in ("SoDinhDanh", "HoVaTen", "NgayThangNamSinh") if k in values}
        self.sent_fields.update(etree.QName(v).localname for v in values.values())
        if "SoDinhDanh" not in person or "HoVaTen" not in person:
            raise KeyError("SoDinhDanh" if "SoDinhDanh" not in person else "HoVaTen")
        return person

    def _header(self, values: Mapping[str, Any]) -> None:
        for key in ("MaYeuCau", "MaDichVu", "MaCanBo"):
            if not (values[key].text or "").strip():
                raise KeyError(key)

    def _xac_thuc(self, values: Mapping[str, Any]) -> XmlElement:
        self._header(values)
        person = self._person(values)
        citizen = self.population.get(person["SoDinhDanh"])
        exists = citizen is not None and name_key(citizen.full_name) == name_key(person["HoVaTen"])
        return _el("XacThucThongTinCongDanResponse", _el("MaYeuCau", values["MaYeuCau"].text),
                   _el("TonTai", "true" if exists else "false"))

    def _citizen(self, personal_id: str) -> list[XmlElement]:
        citizen = self.population.get(personal_id)
        if citizen is None:
            return [_el("TonTai", "false")]
        ho, chu_dem, ten = citizen.parts()
        return [_el("TonTai", "true"), _el(
            "CongDan", _el("SoDinhDanh", citizen.personal_id),
            _el("HoVaTen", _el("Ho", ho), _el("ChuDem", chu_dem), _el("Ten", ten)),
            _el("NgayThangNamSinh", citizen.birth_date.strftime("%d/%m/%Y")),
            *([_el("GioiTinh", str(citizen.gender))] if citizen.gender else []))]

    def _xac_minh(self, values: Mapping[str, Any]) -> XmlElement:
        self._header(values)
        person = self._person(values)
        if "NgayThangNamSinh" not in person:
            raise KeyError("NgayThangNamSinh")
        return _el("XacMinhThongTinNhanThanResponse", _el("MaYeuCau", values["MaYeuCau"].text),
                   *self._citizen(person["SoDinhDanh"]))

    def _submit(self, values: Mapping[str, Any]) -> XmlElement:
        self._header(values)
        items = []
        for item in values["DanhSach"]:
            fields = {etree.QName(c).localname: c for c in item}
            items.append({"order": int(fields["SoThuTu"].text), **self._person(fields)})
        request_id = values["MaYeuCau"].text
        self.batched += len(items)
        self._batches[request_id] = _Batch(items, self.faults.batch_polls, self.faults.batch_fails)
        return _el("SubmitRequestResponse", _el("MaYeuCau", request_id), _el("TrangThai", "DangXuLy"))

    def _status(self, values: Mapping[str, Any]) -> XmlElement:
        request_id = values["MaYeuCau"].text
        batch = self._batches.get(request_id)
        if batch is None:
            state = "Loi"
        elif batch.polls_left > 0:
            batch.polls_left -= 1
            state = "DangXuLy"
        else:
            state = "Loi" if batch.fails else "HoanThanh"
        return _el("GetRequestStatusResponse", _el("MaYeuCau", request_id), _el("TrangThai", state))

    def _result(self, values: Mapping[str, Any]) -> XmlElement:
        request_id = values["MaYeuCau"].text
        batch = self._batches.get(request_id)
        answers = []
        if batch is not None and batch.polls_left == 0 and not batch.fails:
            for item in batch.items:
                answers.append(_el("KetQua", _el("SoThuTu", str(item["order"])), *self._citizen(item["SoDinhDanh"])))
        return _el("GetRequestResultResponse", _el("MaYeuCau", request_id), _el("DanhSach", *answers))


def _el(name: str, *children: Any) -> XmlElement:
    element = etree.Element(f"{{{NS}}}{name}", nsmap={"cd": NS})
    for child in children:
        if isinstance(child, XmlElement):
            element.append(child)
        elif child is not None:
            element.text = str(child)
    return element


def _envelope(payload: XmlElement) -> bytes:
    envelope = etree.Element(f"{{{SOAP_ENV}}}Envelope", nsmap={"soap": SOAP_ENV})
    etree.SubElement(envelope, f"{{{SOAP_ENV}}}Body").append(payload)
    return etree.tostring(envelope, xml_declaration=True, encoding="utf-8")


def _answer(payload: XmlElement) -> web.Response:
    return web.Response(body=_envelope(payload), content_type="text/xml", charset="utf-8")


def _fault(code: str, text: str) -> web.Response:
    fault = etree.Element(f"{{{SOAP_ENV}}}Fault")
    etree.SubElement(fault, "faultcode").text = f"soap:{code}"
    etree.SubElement(fault, "faultstring").text = text
    return web.Response(body=_envelope(fault), status=500, content_type="text/xml", charset="utf-8")
