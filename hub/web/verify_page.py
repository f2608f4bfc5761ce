"""The public verification page at ``/verify``: anyone can check a transcript, no sign-in.

A university or an employer holding a học bạ enters the verification code printed under its QR
code (or scans it: the QR carries ``<verify.public_base_url>/<code>``), or uploads the PDF or the
XML it received, and reads: valid or not and why (the same verification as ``hocba-hub verify``,
binding every signature to the record, with the trust anchors of ``signing.trust`` and
``signing.trust_anchors``), each signature's role, signer and time (Vietnam time), the school and school year, and whether this is
the current version, superseded by a newer one, recalled (``CANCEL``) or never issued.

**What it does not show.** Nothing about the student: no name, birth date or personal id, not even
for a valid code (whoever holds the document already sees them; whoever guesses a code must learn
nothing). The facts shown come from ``binding.ABOUT_KEYS`` (school, year, record id, version).

**Uploads** are read into memory up to ``verify.max_upload_bytes`` (413 beyond), parsed there
(multipart by python-multipart's parser, XML without entities or DTDs) and dropped with the
response: never written to disk, never stored. Verification runs in the hub's worker processes.

**Rate limit**: a token bucket per client IP (``verify.rate_per_minute``, ``verify.burst``); over
it, 429 with ``Retry-After``. Vietnamese by default, ``?lang=en`` for English. The same answers as
JSON under ``/verify/api/``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from hub import __version__
from hub import lifecycle as lc
from hub.web.bodies import read_body
from hub.documents.binding import Reason, Verdict
from hub.records import VIETNAM_TIME
from hub.store.issuance import format_code, normalize_code
from hub.web.ratelimit import RateLimiter, client_ip
from hub.web.templating import strings, stylesheet, templates

if TYPE_CHECKING:
    from hub.engine.pipeline import Hub

__all__ = ["VerifyPage", "verify_job", "verify_routes"]

# Bytes a multipart form adds around the file (boundaries, headers, the code field).
_FORM_OVERHEAD = 16 * 1024

TEXT = strings("verify")


class TooLarge(Exception):
    """The request body is over the upload limit."""


def verify_job(data: bytes, trust_roots: tuple[bytes, ...], school_ids: dict[str, list[str]],
               xml_format: str) -> Verdict:
    """``hocba-hub verify`` on one document, in a worker process; anything unreadable is a verdict."""
    from hub.documents.binding import verify_file

    try:
        return asyncio.run(verify_file(data, trust_roots=trust_roots, school_ids=school_ids, xml_format=xml_format))
    except Exception as exc:  # a hostile or broken file is an answer, never a crash
        kind = "pdf" if data.lstrip()[:5] == b"%PDF-" else "xml"
        verdict = Verdict(kind, trust_checked=bool(trust_roots))
        verdict.reasons.append(Reason("(document)", "không đọc được tài liệu", f"cannot read the document: "
                                                                                f"{type(exc).__name__}"))
        return verdict


def _local(value: dt.datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    return value.astimezone(VIETNAM_TIME).isoformat(timespec="seconds")


class VerifyPage:
    """The public verification routes of one hub."""

    def __init__(self, hub: "Hub"):
        self.hub = hub
        settings = hub.config.verify
        self.settings = settings
        self.limiter = RateLimiter(settings.rate_per_minute / 60.0, settings.burst)
        # Public checks share the worker processes with the pipeline: at most this many at once,
        # so a crowd of uploads slows the page, never the transcripts.
        self._slots = asyncio.Semaphore(max(1, (hub.config.workers.processes or 2)))

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/verify", self.page, methods=["GET", "POST"]),
            Route("/verify/api/code/{code}", self.api_code, methods=["GET"]),
            Route("/verify/api/document", self.api_document, methods=["POST"]),
            Route("/verify/{code}", self.page_code, methods=["GET"]),
        ]

    # --- the checks ---------------------------------------------------------------------------

    async def _verify(self, data: bytes) -> Verdict:
        from hub.documents.verify import trust_roots_der

        trust = trust_roots_der(tuple(self.hub.config.trust_paths()))
        school_ids = dict(self.hub.config.signing.school_ids)
        async with self._slots:
            return await self.hub.cpu(verify_job, data, trust, school_ids, self.hub.config.xml_format or "xml")

    def _status(self, held: dict[str, Any] | None, version: int | None) -> dict[str, Any]:
        if held is None:
            return {"key": "unknown", "latest_version": None}
        latest = held["latest_version"]
        if held["latest_event"] == "CANCEL":
            key = "cancelled"
        elif version is not None and latest is not None and latest > version:
            key = "superseded"
        elif held["state"] == lc.DELIVERED:
            key = "current"
        elif held["state"] == lc.SUPERSEDED:
            key = "superseded"
        else:
            key = "not_issued"
        return {"key": key, "latest_version": latest}

    async def check_code(self, text: str) -> dict[str, Any]:
        code = normalize_code(text)
        if code is None:
            return {"verdict": "bad_code", "valid": False}
        held = await self.hub.db(self.hub.store.by_code, code)
        if held is None:
            return {"verdict": "unknown_code", "valid": False, "code": format_code(code)}
        document = held["pdf"] if held["pdf"] is not None else held["xml"]
        out: dict[str, Any] = {"code": format_code(code)}
        if document is not None:
            out.update(self._verdict(await self._verify(bytes(document))))
        else:  # pruned by retention or not rendered: what the store knows still answers the currency
            out.update({"verdict": "invalid" if held["state"] != lc.DELIVERED else "valid",
                        "valid": held["state"] == lc.DELIVERED, "document": None, "signatures": [],
                        "reasons": [], "trust_checked": False,
                        "about": {"record_id": held["record_id"], "version": str(held["version"]),
                                  "school_code": held["school_code"] or "", "school_year": held["school_year"] or ""}})
        out["status"] = self._status(held, held["version"])
        return out

    async def check_document(self, data: bytes) -> dict[str, Any]:
        out = self._verdict(await self._verify(data))
        about = out["about"]
        held = None
        try:
            version = int(about.get("version", ""))
        except ValueError:
            version = None
        if about.get("record_id") and version is not None:
            held = await self.hub.db(self.hub.store.version_of, about["record_id"], version)
        out["status"] = self._status(held, version)
        if held is not None and held.get("verify_code"):
            out["code"] = format_code(held["verify_code"])
            digest = hashlib.sha256(data).hexdigest()
            issued = await self.hub.db(self.hub.store.issued, code=held["verify_code"])
            out["issued_copy"] = any(entry.sha256 == digest for entry in issued)
        return out

    def _verdict(self, verdict: Verdict) -> dict[str, Any]:
        if not verdict.ok:
            key = "invalid"
        else:
            key = "valid" if verdict.trust_checked else "intact"
        return {
            "verdict": key, "valid": key == "valid", "document": verdict.kind,
            "trust_checked": verdict.trust_checked,
            "reasons": [{"where": r.where, "vi": r.vi, "en": r.en} for r in verdict.reasons],
            "signatures": [{"where": s.where, "role": s.role, "signer": s.signer, "time": _local(s.time), "ok": s.ok}
                           for s in verdict.signed_by],
            "about": {k: v for k, v in verdict.about.items() if k in ("record_id", "version", "event", "school_code",
                                                                      "school_name", "school_year")},
        }

    # --- HTTP ---------------------------------------------------------------------------------

    def _limited(self, request: Request, lang: str, as_json: bool) -> Response | None:
        who = client_ip(request.client.host if request.client else None, request.headers.get("x-forwarded-for"),
                        self.settings.trusted_proxies)
        wait = self.limiter.take(who)
        if not wait:
            return None
        after = self.limiter.retry_after(wait)
        message = TEXT[lang]["rate"].format(s=after)
        headers = {"Retry-After": after, "Cache-Control": "no-store"}
        if as_json:
            return JSONResponse({"error": "rate_limited", "message": message, "retry_after": int(after)},
                                status_code=429, headers=headers)
        return self._html(request, lang, {"error": message}, status=429, headers=headers)

    async def _body(self, request: Request, limit: int) -> bytes:
        body = await read_body(request, limit)
        if body is None:
            raise TooLarge
        return body

    async def _upload(self, request: Request) -> tuple[bytes | None, str | None]:
        """The uploaded file and the typed code, from a multipart form or a raw body."""
        limit = self.settings.max_upload_bytes
        content_type = request.headers.get("content-type", "")
        if content_type.startswith("multipart/form-data"):
            parts = parse_multipart(await self._body(request, limit + _FORM_OVERHEAD), content_type)
            data = parts.get("file") or None
            if data is not None and len(data) > limit:
                raise TooLarge
            code = parts.get("code", b"").decode("utf-8", "replace").strip() or None
            return data, code
        if content_type.startswith("application/x-www-form-urlencoded"):
            from urllib.parse import parse_qs

            form = parse_qs((await self._body(request, _FORM_OVERHEAD)).decode("utf-8", "replace"))
            return None, (form.get("code") or [""])[0].strip() or None
        return (await self._body(request, limit)) or None, None

    def _lang(self, request: Request) -> str:
        return "en" if request.query_params.get("lang") == "en" else "vi"

    def _html(self, request: Request, lang: str, extra: dict[str, Any], *, status: int = 200,
              headers: dict[str, str] | None = None) -> Response:
        t = TEXT[lang]
        mb = self.settings.max_upload_bytes / (1024 * 1024)
        context = {"lang": lang, "t": t, "title": t["title"], "css": stylesheet(), "version": __version__,
                   "mb": f"{mb:g}", "result": None, "error": None, "code": "", **extra}
        return templates().TemplateResponse(request, "verify.html", context, status_code=status, headers={
            "Cache-Control": "no-store", "Content-Language": lang, "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer", **(headers or {})})

    async def page(self, request: Request) -> Response:
        lang = self._lang(request)
        if request.method == "GET" and "code" not in request.query_params:
            return self._html(request, lang, {})
        if (limited := self._limited(request, lang, as_json=False)) is not None:
            return limited
        if request.method == "GET":
            code = request.query_params["code"]
            return self._html(request, lang, {"result": await self.check_code(code), "code": code})
        try:
            data, code = await self._upload(request)
        except TooLarge:
            mb = f"{self.settings.max_upload_bytes / (1024 * 1024):g}"
            return self._html(request, lang, {"error": TEXT[lang]["too_large"].format(mb=mb)}, status=413)
        if data is not None:
            return self._html(request, lang, {"result": await self.check_document(data)})
        if code:
            return self._html(request, lang, {"result": await self.check_code(code), "code": code})
        return self._html(request, lang, {"error": TEXT[lang]["no_input"]}, status=400)

    async def page_code(self, request: Request) -> Response:
        lang = self._lang(request)
        if (limited := self._limited(request, lang, as_json=False)) is not None:
            return limited
        code = request.path_params["code"]
        return self._html(request, lang, {"result": await self.check_code(code), "code": code})

    async def api_code(self, request: Request) -> Response:
        if (limited := self._limited(request, "en", as_json=True)) is not None:
            return limited
        result = await self.check_code(request.path_params["code"])
        status = 400 if result["verdict"] == "bad_code" else 404 if result["verdict"] == "unknown_code" else 200
        return JSONResponse(result, status_code=status, headers={"Cache-Control": "no-store"})

    async def api_document(self, request: Request) -> Response:
        if (limited := self._limited(request, "en", as_json=True)) is not None:
            return limited
        try:
            data, _ = await self._upload(request)
        except TooLarge:
            return JSONResponse({"error": "too_large", "max_bytes": self.settings.max_upload_bytes}, status_code=413)
        if data is None:
            return JSONResponse({"error": "no_document", "message": "send the PDF or XML as the request body "
                                                                   "or as the multipart field `file`"},
                                status_code=400)
        return JSONResponse(await self.check_document(data), headers={"Cache-Control": "no-store"})


def parse_multipart(body: bytes, content_type: str) -> dict[str, bytes]:
    """The fields of a ``multipart/form-data`` body, in memory (python-multipart's push parser:
    nothing is spooled to disk); a field's value by its name, the first of a name wins."""
    from python_multipart.multipart import MultipartParser, parse_options_header

    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        return {}
    fields: dict[str, bytes] = {}
    state: dict[str, Any] = {"name": None, "header": b"", "value": b"", "data": []}

    def on_part_begin() -> None:
        state.update(name=None, data=[])

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["header"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["value"] += data[start:end]

    def on_header_end() -> None:
        if state["header"].lower() == b"content-disposition":
            _, params = parse_options_header(state["value"])
            name = params.get(b"name")
            state["name"] = name.decode("utf-8", "replace") if name else None
        state.update(header=b"", value=b"")

    def on_part_data(data: bytes, start: int, end: int) -> None:
        state["data"].append(data[start:end])

    def on_part_end() -> None:
        if state["name"] and state["name"] not in fields:
            fields[state["name"]] = b"".join(state["data"])

    parser = MultipartParser(boundary, {
        "on_part_begin": on_part_begin, "on_header_field": on_header_field, "on_header_value": on_header_value,
        "on_header_end": on_header_end, "on_part_data": on_part_data, "on_part_end": on_part_end})
    try:
        parser.write(body)
        parser.finalize()
    except Exception:  # a malformed form carries no file; the page says so
        return {}
    return fields


def verify_routes(hub: "Hub") -> list[BaseRoute]:
    """``/verify`` (page, ``/verify/{code}`` from the QR code) and ``/verify/api/…`` (JSON) of ``hub``."""
    return VerifyPage(hub).routes()
