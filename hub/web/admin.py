"""The admin API under ``/api/``: find records, see why they are stuck, replay them, pause adapters.

Every ``/api`` request needs ``Authorization: Bearer <token>`` with a token from
``admin.tokens``; with no token configured the API answers 401 to everyone (secure by default).
The presented token is compared with every configured token in constant time, so neither the
answer's timing nor its content tells which tokens exist.

Two roles. A **viewer** sees ids, states, adapters, school codes, versions, times and error
lines with personal ids, quoted values and dates blanked. An **operator** may also act
(replay, pause, resume), download a transcript's PDF, and sees the student's name, code and
personal id in the single-record view. Lists never carry personal data, whoever asks. No
response ever carries a secret: every string that leaves the API is scrubbed of the
configured tokens, keys and passwords first.

Malformed queries are a 400 whose ``error`` starts with the parameter's name, so an operator's
typo (``?stat=failed``) is an error, not a silently unfiltered list. ``/openapi.json`` (public:
it holds no data) describes all of it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import hmac
import json
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, WithJsonSchema
from starlette.datastructures import Headers
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from hub import __version__
from hub import lifecycle as lc
from hub import store as st
from hub.contracts import SIGNING_ROLES
from hub.logs import mask, public_error, scrub, secret_values
from hub.web.bodies import read_body

if TYPE_CHECKING:
    from hub.engine.pipeline import Hub

OPERATOR, VIEWER = "operator", "viewer"
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
STAGES = lc.REPLAY_STAGES
MAX_LIMIT = 1000
_MAX_BODY = 1 << 20
_MAX_SELECT = 10_000
_YEAR = re.compile(r"^\d{4}-\d{4}$")
_PK = re.compile(r"^\d{1,18}$")  # SQLite integers are 64-bit: a longer number cannot be an id
_CALLER = "hocba.caller"
_HEX = "[0-9a-fA-F]"
_ID_PATTERN = rf"^(\d{{1,18}}|{_HEX}{{8}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{12}})$"


def all_states(roles: tuple[str, ...] = SIGNING_ROLES) -> list[str]:
    """Every state a record can be in (``hub.lifecycle.all_states``) for the default roles."""
    return lc.all_states(roles)


# --- auth -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Caller:
    """Who is calling: the token's name (the audit log's actor) and its role."""
    name: str
    role: str


def _digest(value: str) -> bytes:
    # Equal-length digests make compare_digest's time independent of the token's length too.
    return hashlib.sha256(value.encode()).digest()


def authenticate(header: str | None, tokens: list[Any]) -> Caller | None:
    """The caller a ``Bearer`` header belongs to, or None."""
    scheme, _, presented = (header or "").strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return caller_for(presented, tokens)


def caller_for(presented: str, tokens: list[Any]) -> Caller | None:
    """The caller a presented token belongs to (the API's header, the console's login form), or
    None. Every configured token is compared, match or not, so the time taken does not depend
    on which one (if any) matched."""
    if not presented.strip():
        return None
    offered = _digest(presented.strip())
    caller = None
    for token in tokens:
        if hmac.compare_digest(offered, _digest(token.token.get_secret_value())) and caller is None:
            caller = Caller(token.name, token.role)
    return caller


class _Bearer:
    """ASGI middleware in front of every ``/api`` route: nothing reaches a handler unauthenticated."""

    def __init__(self, app: ASGIApp, tokens: list[Any]):
        self.app, self.tokens = app, tokens

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        caller = authenticate(Headers(scope=scope).get("authorization"), self.tokens)
        if caller is None:
            response = _error(401, "authorization", "a valid bearer token is required",
                              headers={"WWW-Authenticate": 'Bearer realm="hocba-hub"'})
            await response(scope, receive, send)
            return
        scope[_CALLER] = caller
        await self.app(scope, receive, send)


class ApiError(Exception):
    """A request the API refuses: ``status`` and a reason that starts with the parameter's name."""

    def __init__(self, status: int, parameter: str, reason: str):
        super().__init__(f"{parameter}: {reason}")
        self.status, self.parameter, self.reason = status, parameter, reason


def _error(status: int, parameter: str, reason: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": f"{parameter}: {reason}", "parameter": parameter}, status_code=status,
                        headers={"Cache-Control": "no-store", **(headers or {})})


# --- the API ----------------------------------------------------------------------------------

Handler = Callable[[Request, Caller], Awaitable[Any]]


# Text without NUL, which PostgreSQL cannot store (the API refuses it with a 400 naming the field).
_NO_NUL = r"^[^\x00]*$"


def _first_error(exc: ValidationError, where: str) -> ApiError:
    """A model's first validation error as the 400 naming its field."""
    error = exc.errors(include_url=False)[0]
    field = str(error["loc"][0]) if error["loc"] else where
    return ApiError(400, field[:50], error["msg"])


def _openapi_schema(model: type[BaseModel]) -> dict[str, Any]:
    """``model``'s JSON Schema in OpenAPI 3.0 terms (optional fields without ``null``)."""
    schema = model.model_json_schema()
    for prop in schema.get("properties", {}).values():
        options = [o for o in prop.pop("anyOf", []) if o.get("type") != "null"]
        if options:
            prop.update(options[0])
        if prop.get("default", ...) is None:
            del prop["default"]
        prop.pop("title", None)
    schema.pop("title", None)
    return schema


class StrictBody(BaseModel):
    """A JSON request body read strictly: a JSON ``true`` is not an id, ``"1"`` is not a list,
    unknown fields are refused; the first error is a 400 naming its field."""
    model_config = ConfigDict(extra="forbid", strict=True)

    @classmethod
    def parse(cls, body: Any) -> Any:
        if not isinstance(body, dict):
            raise ApiError(400, "body", "must be a JSON object")
        try:
            # JSON mode: a UUID arrives as a string, and strict mode still refuses true for an id.
            request = cls.model_validate_json(json.dumps(body))
        except ValidationError as exc:
            raise _first_error(exc, "body") from None
        request.check()
        return request

    def check(self) -> None:
        """Rules across fields; raise ``ApiError``."""

    @classmethod
    def openapi_schema(cls) -> dict[str, Any]:
        """This model's JSON Schema in OpenAPI 3.0 terms (optional fields without ``null``)."""
        schema = _openapi_schema(cls)
        schema["additionalProperties"] = False
        schema["minProperties"] = 1
        return schema


class CancelRequest(StrictBody):
    """``POST /api/records/{id}/cancel``: the reason is mandatory; it goes to the destinations,
    the record's history and the audit log."""

    reason: str = Field(min_length=lc.CANCEL_REASON[0], max_length=lc.CANCEL_REASON[1],
                        pattern=r"^[^\x00-\x1f\x7f]+$",
                        description="Why the transcript is cancelled (one line, 5-500 characters)")

    def check(self) -> None:
        try:
            self.reason = lc.cancel_reason(self.reason)
        except ValueError as exc:
            raise ApiError(400, "reason", str(exc)) from None


class RecallRequest(CancelRequest):
    """``POST /api/packages/{package_id}/recall``: the reason is mandatory; it goes to the
    destination, every transcript's history and the audit log."""

    reason: str = Field(min_length=lc.CANCEL_REASON[0], max_length=lc.CANCEL_REASON[1],
                        pattern=r"^[^\x00-\x1f\x7f]+$",
                        description="Why the package is recalled (one line, 5-500 characters)")

    def check(self) -> None:
        try:
            self.reason = lc.cancel_reason(self.reason, "the package is recalled")
        except ValueError as exc:
            raise ApiError(400, "reason", str(exc)) from None


class ReplayRequest(StrictBody):
    """``POST /api/replay``: records matching every given criterion (ids and record_ids: any of them).

    Strict: a JSON ``true`` is not an id, ``"1"`` is not a list; unknown fields are refused. The
    OpenAPI document's ``ReplayRequest`` schema is generated from this model.
    """
    ids: list[Annotated[int, Field(ge=1, le=2**63 - 1)]] | None = Field(
        default=None, min_length=1, max_length=_MAX_SELECT, description="Store ids")
    record_ids: list[uuid.UUID] | None = Field(default=None, min_length=1, max_length=_MAX_SELECT,
                                               description="Record ids (every version of each)")
    adapter: str | None = Field(default=None, min_length=1, max_length=100, pattern=_NO_NUL,
                                description="Adapter instance name")
    school: str | None = Field(default=None, min_length=1, max_length=100, pattern=_NO_NUL,
                               description="School code (matruong)")
    state: Literal[tuple(sorted(lc.REPLAYABLE))] | None = None  # type: ignore[valid-type]
    stage: Literal[lc.REPLAY_STAGES] = Field(  # type: ignore[valid-type]
        default="normalize", description="normalize: from the raw payload; render: from the normalised record; "
                                         "deliver: the signed documents as they are")
    destination: str | None = Field(
        default=None, min_length=1, max_length=100, pattern=_NO_NUL,
        description="With stage deliver: send again only this route's dead letters (default: every route's)")

    def check(self) -> None:
        if not self.criteria():
            raise ApiError(400, "body", "give at least one of ids, record_ids, adapter, school, state")

    def criteria(self) -> dict[str, Any]:
        """What ``Store.select`` takes."""
        out = self.model_dump(exclude={"stage", "destination"}, exclude_none=True)
        if "record_ids" in out:
            out["record_ids"] = [str(r) for r in out["record_ids"]]
        return out

    @classmethod
    def openapi_schema(cls, routes: Any = ()) -> dict[str, Any]:
        """``routes``: the configured route names, the values ``destination`` takes."""
        schema = super().openapi_schema()
        if routes:
            schema["properties"]["destination"]["enum"] = list(routes)
        # At least one criterion: ``stage`` and ``destination`` only say how to replay.
        schema["anyOf"] = [{"required": [name]} for name in ("ids", "record_ids", "adapter", "school", "state")]
        return schema


# --- query parameters --------------------------------------------------------------------------

def _digits(value: Any) -> Any:
    # int() would also take " 12", "+12" and "1_000": a query parameter is digits or an error.
    if isinstance(value, str) and not re.fullmatch(r"\d{1,13}", value):
        raise ValueError("must be a whole number written in digits")
    return value


def _store_time(value: str) -> str:
    """An ISO date or date-time as the store writes times (UTC, milliseconds); naive is UTC."""
    try:
        moment = dt.datetime.fromisoformat(value)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=dt.timezone.utc)
        return moment.astimezone(dt.timezone.utc).isoformat(timespec="milliseconds")
    except (ValueError, OverflowError):
        raise ValueError("must be an ISO 8601 date or date-time, e.g. 2025-05-31 or "
                         "2025-05-31T08:00:00+07:00 (write + as %2B in a URL)") from None


_Digits = Annotated[int, BeforeValidator(_digits)]
_Moment = Annotated[str, AfterValidator(_store_time), WithJsonSchema({"type": "string", "format": "date-time"})]


class StrictQuery(BaseModel):
    """A route's query parameters, read strictly: an unknown, repeated or NUL-carrying parameter
    is refused (an operator's typo is an error, not an unfiltered list), and the first invalid
    value is a 400 naming it. The OpenAPI document's parameters come from the same model."""
    model_config = ConfigDict(extra="forbid")

    @classmethod
    def parse(cls, request: Request) -> Any:
        q = request.query_params
        for key in q.keys():
            if key not in cls.model_fields:
                allowed = ", ".join(cls.model_fields) or "none"
                raise ApiError(400, key[:50], f"unknown parameter (allowed: {allowed})")
            if len(q.getlist(key)) > 1:
                raise ApiError(400, key, "given more than once")
            if "\x00" in q[key]:
                raise ApiError(400, key, "contains a NUL character")
        try:
            return cls.model_validate(dict(q))
        except ValidationError as exc:
            raise _first_error(exc, "query") from None

    @classmethod
    def openapi_parameters(cls, **enums: Any) -> list[dict[str, Any]]:
        """The fields as OpenAPI 3.0 query parameters; ``enums``: the values a field takes in
        this hub (its states, its routes)."""
        out = []
        for name, prop in _openapi_schema(cls).get("properties", {}).items():
            description = prop.pop("description", "")
            if name in enums:
                prop["enum"] = list(enums[name])
            out.append({"name": name, "in": "query", "required": False, "schema": prop,
                        "description": description})
        return out


class NoQuery(StrictQuery):
    """A route that takes no query parameter."""


class SchoolQuery(StrictQuery):
    school: str | None = Field(default=None, min_length=1, max_length=100, pattern=_NO_NUL,
                               description="School code (matruong)")


class YearQuery(StrictQuery):
    year: str | None = Field(default=None, pattern=_YEAR.pattern, description="School year, e.g. 2024-2025")


class RecordFilters(SchoolQuery, YearQuery):
    """A listing's filters and page, in ``Store.search``'s terms."""
    adapter: str | None = Field(default=None, min_length=1, max_length=100, pattern=_NO_NUL,
                                description="Adapter instance name")
    since: _Moment | None = Field(default=None, description="Changed at or after (ISO 8601; no offset = UTC)")
    until: _Moment | None = Field(default=None, description="Changed before (ISO 8601)")
    limit: _Digits = Field(default=100, ge=1, le=MAX_LIMIT, description="Page size")
    offset: _Digits = Field(default=0, ge=0, le=10**12, description="Records to skip")

    def search(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class StateQuery(StrictQuery):
    state: str | None = Field(default=None, description="Record state")


class RecordQuery(RecordFilters, StateQuery):
    """``/api/records``: the filters, and the state (one of the hub's: checked by the route)."""


class PackagesQuery(SchoolQuery):
    destination: str | None = Field(default=None, min_length=1, max_length=100, pattern=_NO_NUL,
                                    description="One route's name")


class IssueQuery(StrictQuery):
    """Who receives a downloaded copy and what for (the issuance registry)."""
    to: str | None = Field(default=None, min_length=1, max_length=200, pattern=_NO_NUL,
                           description="Who receives the copy (issuance registry)")
    purpose: str | None = Field(default=None, min_length=1, max_length=200, pattern=_NO_NUL,
                                description="What the copy is for (issuance registry)")


class AdminApi:
    """The ``/api`` routes of one hub."""

    def __init__(self, hub: "Hub"):
        self.hub = hub
        self.states = all_states(hub.roles or SIGNING_ROLES)
        self.secrets = secret_values(hub.config)
        self.adapter_names = [a.name for a in hub.config.adapters]

    def routes(self) -> list[BaseRoute]:
        api = [
            Route("/records", self._endpoint(self.records, VIEWER)),
            Route("/records/{id}", self._endpoint(self.record, VIEWER)),
            Route("/records/{id}/pdf", self._endpoint(self.pdf, OPERATOR)),
            Route("/records/{id}/cancel", self._endpoint(self.cancel, OPERATOR), methods=["POST"]),
            Route("/quarantine", self._endpoint(self.quarantine, VIEWER)),
            Route("/dead-letters", self._endpoint(self.dead_letters, VIEWER)),
            Route("/replay", self._endpoint(self.replay, OPERATOR), methods=["POST"]),
            Route("/adapters", self._endpoint(self.adapters, VIEWER)),
            Route("/destinations", self._endpoint(self.destinations, VIEWER)),
            Route("/signing", self._endpoint(self.signing, OPERATOR)),
            Route("/adapters/{name}/pause", self._endpoint(self.pause, OPERATOR), methods=["POST"]),
            Route("/adapters/{name}/resume", self._endpoint(self.resume, OPERATOR), methods=["POST"]),
            Route("/identity/blocked", self._endpoint(self.identity_blocked, OPERATOR)),
            Route("/identity/blocked.xlsx", self._endpoint(self.identity_blocked_xlsx, OPERATOR)),
            Route("/exports/{school}/{class_name:path}", self._endpoint(self.export, OPERATOR)),
            Route("/packages", self._endpoint(self.packages, VIEWER)),
            Route("/packages/{package_id}/recall", self._endpoint(self.recall, OPERATOR), methods=["POST"]),
        ]
        return [
            Route("/openapi.json", self.openapi),
            Mount("/api", routes=api, middleware=[Middleware(_Bearer, tokens=self.hub.config.admin.tokens)]),
        ]

    async def signing(self, request: Request, caller: Caller) -> dict[str, Any]:
        """Per school and class: transcripts waiting for each signing stage, and who has not signed.

        Operators only: it names teachers.
        """
        from hub.engine.signing_status import waiting_for

        school = SchoolQuery.parse(request).school
        return {"classes": await waiting_for(self.hub, school)}

    def _endpoint(self, handler: Handler, role: str) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            caller: Caller = request.scope[_CALLER]
            if role == OPERATOR and caller.role != OPERATOR:
                return _error(403, "authorization", "this action needs an operator token")
            try:
                result = await handler(request, caller)
            except ApiError as exc:
                return _error(exc.status, exc.parameter, scrub(exc.reason, self.secrets))
            if isinstance(result, Response):
                return result
            return JSONResponse(scrub(result, self.secrets), headers={"Cache-Control": "no-store"})
        return endpoint

    def _record_pk(self, request: Request) -> int | str:
        """The path's ``{id}``: a store id, or a ``record_id`` (then its latest version)."""
        raw = request.path_params["id"]
        if _PK.match(raw):
            return int(raw)
        try:
            return str(uuid.UUID(raw))
        except ValueError:
            raise ApiError(400, "id", "must be a store id (integer) or a record_id (UUID)") from None

    async def _row(self, request: Request) -> st.Row:
        key = self._record_pk(request)
        if isinstance(key, str):
            pks = await self.hub.db(self.hub.store.select, record_ids=[key])
            if not pks:
                raise ApiError(404, "id", f"no record {key}")
            key = max(pks)
        try:
            return await self.hub.db(self.hub.store.get, key)
        except KeyError:
            raise ApiError(404, "id", f"no record {key}") from None

    # --- views ------------------------------------------------------------------------------

    def _summary(self, item: dict[str, Any], caller: Caller) -> dict[str, Any]:
        receipt = item.get("receipt") or None
        out = {
            "id": item["id"], "record_id": item["record_id"], "version": item["version"],
            "event": item["event"], "adapter": item["adapter"], "state": item["state"],
            "school_code": item["school_code"], "school_year": item["school_year"],
            "errors": [mask(e) if caller.role == OPERATOR else public_error(e) for e in item["errors"]],
            "attempts": item["attempts"], "received_at": item["received_at"], "updated_at": item["updated_at"],
            "pruned": bool(item.get("pruned_at")),
            "receipt": {k: receipt.get(k) for k in ("receipt_id", "received_at", "duplicate")} if receipt else None,
        }
        if caller.role == OPERATOR:
            out["source_id"] = item["source_id"]
        return out

    async def _list(self, request: Request, caller: Caller, state: str | None = None) -> dict[str, Any]:
        if state:
            filters = RecordFilters.parse(request).search()
            filters["state"] = state
        else:
            query = RecordQuery.parse(request)
            if query.state is not None and query.state not in self.states:
                raise ApiError(400, "state", f"unknown state {query.state!r} (one of {', '.join(self.states)})")
            filters = query.search()
        items = await self.hub.db(lambda: self.hub.store.search(**filters))
        return {"items": [self._summary(i, caller) for i in items], "count": len(items),
                "limit": filters["limit"], "offset": filters["offset"]}

    async def records(self, request: Request, caller: Caller) -> dict[str, Any]:
        return await self._list(request, caller)

    async def quarantine(self, request: Request, caller: Caller) -> dict[str, Any]:
        return await self._list(request, caller, lc.QUARANTINED)

    async def dead_letters(self, request: Request, caller: Caller) -> dict[str, Any]:
        return await self._list(request, caller, lc.DEAD_LETTER)

    async def record(self, request: Request, caller: Caller) -> dict[str, Any]:
        NoQuery.parse(request)
        return await self.detail(await self._row(request), caller)

    async def cancel(self, request: Request, caller: Caller) -> dict[str, Any]:
        """Cancel the transcript this stored version belongs to: a new ``CANCEL`` version goes
        through the signing chain to every destination, with the reason."""
        NoQuery.parse(request)
        row = await self._row(request)
        body = CancelRequest.parse(await _json_body(request))
        try:
            pk = await self.hub.cancel(row.record_id, body.reason, caller.name)
        except st.StateConflict as exc:
            raise ApiError(409, "id", str(exc)) from None
        new = await self.hub.db(self.hub.store.get, pk)
        return {"record_id": new.record_id, "id": new.id, "version": new.version, "event": new.event,
                "state": new.state}

    async def detail(self, row: st.Row, caller: Caller) -> dict[str, Any]:
        """One record as ``caller`` may see it, with its history and versions (the API's record
        view and the console's record page)."""
        history = await self.hub.db(self.hub.store.history, row.id)
        versions = []
        for pk in await self.hub.db(self.hub.store.select, record_ids=[row.record_id]):
            other = await self.hub.db(self.hub.store.get, pk)
            versions.append({"id": other.id, "version": other.version, "event": other.event, "state": other.state})
        item = {**row.__dict__, "pruned_at": "yes" if not row.payload else None}
        out = self._summary(item, caller)
        clean = mask if caller.role == OPERATOR else public_error
        out["history"] = [{"at": h["at"], "state": h["state"], "detail": clean(h["detail"]) if h["detail"] else None}
                          for h in history]
        out["versions"] = versions
        out["destinations"] = [
            {"destination": d["destination"], "state": d["state"], "attempts": d["attempts"],
             "last_error": clean(d["last_error"]) if d["last_error"] else None,
             "receipt_id": (d["receipt"] or {}).get("receipt_id"), "updated_at": d["updated_at"]}
            for d in await self.hub.db(self.hub.store.deliveries_of, row.id)]
        out["has_pdf"] = row.pdf is not None
        out["replayable"] = row.state in lc.REPLAYABLE and bool(row.payload)
        if caller.role == OPERATOR and row.normalized:
            student = row.normalized.get("student") or {}
            out["student"] = {k: student.get(k) for k in ("full_name", "student_code", "personal_id")}
            out["class_name"] = row.normalized.get("class_name")
        return out

    async def pdf(self, request: Request, caller: Caller) -> Response:
        issued = IssueQuery.parse(request)
        row = await self._row(request)
        if row.pdf is None:
            reason = "was pruned by retention" if not row.payload else "has not been rendered"
            raise ApiError(404, "id", f"record {row.id} has no PDF: it {reason}")
        # The PDF carries personal data: who fetched which one belongs in the audit log, and the
        # copy itself in the issuance registry (one transaction: the entry and its audit line).
        if row.verify_code:
            await self.hub.db(self.hub.store.issue, row.id, "pdf", actor=caller.name, audit_kind="admin.pdf",
                              recipient=issued.to, purpose=issued.purpose)
        else:  # rendered before the registry existed: no code to issue it under
            await self.hub.db(self.hub.store.audit, "admin.pdf", caller.name, row.record_id,
                              {"version": row.version})
        return Response(row.pdf, media_type="application/pdf", headers={
            "Content-Disposition": f'attachment; filename="{row.record_id}-v{row.version}.pdf"',
            "Cache-Control": "no-store",
        })

    async def replay(self, request: Request, caller: Caller) -> dict[str, Any]:
        NoQuery.parse(request)
        body = ReplayRequest.parse(await _json_body(request))
        criteria = body.criteria()
        stage = body.stage
        pks = await self.hub.db(lambda: self.hub.store.select(**criteria))
        if body.destination is not None and body.destination not in self.hub.config.route_names:
            raise ApiError(400, "destination", f"no route named {body.destination!r}")
        moved = await self.hub.replay(pks, stage=stage, actor=caller.name,
                                      destination=body.destination) if pks else []
        await self.hub.db(self.hub.store.audit, "admin.replay", caller.name, None,
                           {"criteria": criteria, "stage": stage, "matched": len(pks), "moved": len(moved),
                            "destination": body.destination})
        return {"stage": stage, "matched": len(pks), "moved": [{"id": pk, "state": state} for pk, state in moved],
                "skipped": len(pks) - len(moved)}

    async def destinations(self, request: Request, caller: Caller) -> dict[str, Any]:
        """Each route: its filters, health, whether its circuit is open, and where its records
        stand (versions queued, delivered, dead-lettered, superseded; jobs due in its outbox)."""
        NoQuery.parse(request)
        counts = await self.hub.db(self.hub.store.destination_counts)
        outbox = self.hub.outbox
        out = []
        for route in self.hub.config.routes:
            status = self.hub.status.get(route.name)
            worker = outbox.routes.get(route.name) if outbox is not None else None
            mine = counts.get(route.name, {})
            out.append({
                "name": route.name, "type": route.type,
                "filters": route.filters.model_dump(exclude_none=True),
                "health": {"ok": status.health.ok, "detail": public_error(status.health.detail)} if status else None,
                "circuit_open": bool(worker and worker.breaker.is_open),
                "counts": {k: mine.get(k, 0)
                           for k in ("due", "queued", "delivered", "dead_letter", "superseded", "recalled")},
            })
        return {"items": out}

    async def packages(self, request: Request, caller: Caller) -> dict[str, Any]:
        """The class packages destinations accepted, newest first: members, receipt, recall."""
        q = PackagesQuery.parse(request)
        items = await self.hub.db(self.hub.store.packages, school=q.school, destination=q.destination)
        return {"items": [p.public() for p in items]}

    async def recall(self, request: Request, caller: Caller) -> dict[str, Any]:
        """Recall a package from every destination holding it, with the reason (audited); the
        route's worker sends it."""
        NoQuery.parse(request)
        package_id = request.path_params["package_id"]
        if not 0 < len(package_id) <= 200 or any(ord(c) < 32 or c == "\x7f" for c in package_id):
            raise ApiError(400, "package_id", "not a package id (1-200 characters, no control characters)")
        body = RecallRequest.parse(await _json_body(request))
        try:
            items = await self.hub.recall(package_id, body.reason, caller.name)
        except KeyError:
            raise ApiError(404, "package_id", f"no package {package_id}") from None
        except st.StateConflict as exc:
            raise ApiError(409, "package_id", str(exc)) from None
        return {"items": [p.public() for p in items]}

    async def adapters(self, request: Request, caller: Caller) -> dict[str, Any]:
        NoQuery.parse(request)
        paused = await self.hub.db(self.hub.store.paused)
        out = []
        for section in self.hub.config.adapters:
            status = self.hub.status.get(section.name)
            out.append({
                "name": section.name, "type": section.type, "enabled": section.enabled,
                "poll_interval": section.poll_interval, "paused": section.name in paused,
                "health": {"ok": status.health.ok, "detail": public_error(status.health.detail)} if status else None,
                "last_sync": status.last_sync if status else None,
            })
        return {"items": out}

    async def _set_paused(self, request: Request, caller: Caller, paused: bool) -> dict[str, Any]:
        NoQuery.parse(request)
        name = request.path_params["name"]
        if name not in self.adapter_names:
            raise ApiError(404, "name", f"no adapter {name[:100]!r} is configured")
        await self.hub.db(self.hub.store.set_paused, name, paused, caller.name)
        return {"adapter": name, "paused": paused}

    async def pause(self, request: Request, caller: Caller) -> dict[str, Any]:
        return await self._set_paused(request, caller, True)

    async def resume(self, request: Request, caller: Caller) -> dict[str, Any]:
        return await self._set_paused(request, caller, False)

    async def _blocked(self, request: Request) -> tuple[str | None, list[dict[str, Any]]]:
        from hub.documents.identity_report import blocked_students

        school = SchoolQuery.parse(request).school
        return school, await self.hub.db(blocked_students, self.hub.store, school)

    async def identity_blocked(self, request: Request, caller: Caller) -> dict[str, Any]:
        """Students blocked on identity (of one school), with what differs: names, for operators."""
        school, entries = await self._blocked(request)
        await self.hub.db(self.hub.store.audit, "admin.identity_report", caller.name, school,
                           {"students": len(entries), "format": "json"})
        return {"school": school, "count": len(entries), "items": entries}

    async def identity_blocked_xlsx(self, request: Request, caller: Caller) -> Response:
        """The same report as an XLSX for the school to fix its records from."""
        from hub.documents.identity_report import to_xlsx

        school, entries = await self._blocked(request)
        # The workbook carries names: who took one belongs in the audit log.
        await self.hub.db(self.hub.store.audit, "admin.identity_report", caller.name, school,
                           {"students": len(entries), "format": "xlsx"})
        body = await asyncio.to_thread(to_xlsx, entries)
        # A header is Latin-1: the school code as given may be anything.
        name = f"identity-blocked-{re.sub(r'[^A-Za-z0-9_-]', '_', school or 'all')}.xlsx"
        return Response(body, media_type=XLSX, headers={
            "Content-Disposition": f'attachment; filename="{name}"', "Cache-Control": "no-store"})

    async def export(self, request: Request, caller: Caller) -> Response:
        """The file a destination wrote for one class (the school portal's import sheet), as the
        destination keeps it: the core only asks ``Adapter.export``."""
        year = YearQuery.parse(request).year
        school, class_name = request.path_params["school"], request.path_params["class_name"]
        if not 0 < len(school) <= 100:
            raise ApiError(400, "school", "must be 1 to 100 characters")
        if not 0 < len(class_name) <= 100:
            raise ApiError(400, "class_name", "must be 1 to 100 characters")
        exporters = [d for d in self.hub.routes.values() if d.can("export")]
        if not exporters:
            raise ApiError(404, "school", "no configured destination writes files to download")
        found = None
        for destination in exporters:  # the first route that wrote a file for the class
            if (found := await destination.export(school, class_name, year)) is not None:
                break
        if found is None:
            raise ApiError(404, "class_name", f"no file for class {class_name!r} of school {school!r}"
                                              + (f" in {year}" if year else ""))
        # The sheet names every student of the class: who took it belongs in the audit log.
        await self.hub.db(self.hub.store.audit, "admin.export", caller.name, school,
                           {"class_name": class_name, "school_year": year, "file": found.filename})
        # A header is Latin-1: the file's name as the destination chose it may not be.
        ascii_name = re.sub(r"[^A-Za-z0-9_.-]", "_", found.filename)
        return Response(found.content, media_type=found.media_type, headers={
            "Content-Disposition": f'attachment; filename="{ascii_name}"', "Cache-Control": "no-store"})

    async def openapi(self, request: Request) -> JSONResponse:
        return JSONResponse(openapi_document(self.states, self.adapter_names, self.hub.config.route_names))


async def _json_body(request: Request) -> dict[str, Any]:
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
        raise ApiError(415, "body", "must be JSON (Content-Type: application/json)")
    raw = await read_body(request, _MAX_BODY)
    if raw is None:
        raise ApiError(413, "body", f"larger than {_MAX_BODY} bytes")
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        raise ApiError(400, "body", "is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "body", "must be a JSON object")
    if (where := _nul_in(body)) is not None:
        raise ApiError(400, where, "contains a NUL character")
    return body


def _nul_in(node: Any, path: str = "") -> str | None:
    """The path of the first key or text holding NUL, which PostgreSQL cannot store (a 400
    naming the field, not a database error)."""
    if isinstance(node, str):
        return (path or "body") if "\x00" in node else None
    if isinstance(node, dict):
        for key, value in node.items():
            here = f"{path}.{key}" if path else str(key)
            if "\x00" in str(key):
                return path or "body"
            if (found := _nul_in(value, here)) is not None:
                return found
    if isinstance(node, list):
        for i, value in enumerate(node):
            if (found := _nul_in(value, f"{path}[{i}]")) is not None:
                return found
    return None


def admin_routes(hub: "Hub") -> list[BaseRoute]:
    """``/openapi.json`` and the authenticated ``/api`` routes for ``hub``."""
    return AdminApi(hub).routes()


# --- OpenAPI --------------------------------------------------------------------------------

def openapi_document(states: list[str], adapters: list[str], routes: list[str] = ()) -> dict[str, Any]:
    """The OpenAPI 3.0 description of the admin API: the paths written out (they are the contract),
    query parameters and request bodies generated from the models that validate them."""
    ref = lambda name: {"$ref": f"#/components/schemas/{name}"}  # noqa: E731
    nullable_str = {"type": "string", "nullable": True}

    def param(name: str, where: str, schema: dict[str, Any], description: str, required: bool = False):
        return {"name": name, "in": where, "required": required or where == "path",
                "schema": schema, "description": description}

    # The query parameters come from the models that validate them.
    filters = RecordFilters.openapi_parameters()
    school = SchoolQuery.openapi_parameters()
    record_id = param("id", "path", {"type": "string", "pattern": _ID_PATTERN},
                      "Store id, or record_id (UUID) for its latest version")
    adapter_name = param("name", "path", {"type": "string", "minLength": 1, "maxLength": 100},
                         f"Adapter instance name (configured: {', '.join(adapters)})")

    def responses(ok: dict[str, Any], *codes: int, media: str = "application/json") -> dict[str, Any]:
        out: dict[str, Any] = {"200": {"description": "OK", "content": {media: {"schema": ok}}},
                               "401": {"$ref": "#/components/responses/Unauthorized"}}
        texts = {400: "Malformed request: `error` names the parameter", 403: "Needs an operator token",
                 404: "Not found", 409: "Conflicts with the record's state (e.g. already cancelled)",
                 413: "Body too large", 415: "Body is not JSON"}
        for code in codes:
            out[str(code)] = {"description": texts[code], "content": {"application/json": {"schema": ref("Error")}}}
        return out

    listing = lambda summary, params: {  # noqa: E731
        "get": {"summary": summary, "parameters": params, "responses": responses(ref("RecordList"), 400)}}
    record_summary = {
        "type": "object",
        "required": ["id", "record_id", "version", "event", "adapter", "state", "school_code", "school_year",
                     "errors", "attempts", "received_at", "updated_at", "pruned", "receipt"],
        "properties": {
            "id": {"type": "integer"}, "record_id": {"type": "string"}, "version": {"type": "integer"},
            "event": {"type": "string", "enum": ["NEW", "UPDATE", "CANCEL"]}, "adapter": {"type": "string"},
            "state": {"type": "string", "enum": states}, "school_code": nullable_str, "school_year": nullable_str,
            "errors": {"type": "array", "items": {"type": "string"}}, "attempts": {"type": "integer"},
            "received_at": {"type": "string"}, "updated_at": {"type": "string"}, "pruned": {"type": "boolean"},
            "receipt": {"type": "object", "nullable": True, "properties": {
                "receipt_id": nullable_str, "received_at": nullable_str,
                "duplicate": {"type": "boolean", "nullable": True}}},
            "source_id": {"type": "string", "description": "Operators only: the vendor's id"},
        },
    }
    return {
        "openapi": "3.0.3",
        "info": {"title": "hocba-hub admin API", "version": __version__,
                 "description": "Records, quarantine, dead letters, replay and adapters of a running hub. "
                                "Every /api route needs a bearer token; `viewer` tokens see ids and states "
                                "only, `operator` tokens may act and see the student's identity."},
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": {
            "/api/records": listing("List records, newest change first", RecordQuery.openapi_parameters(state=states)),
            "/api/records/{id}": {"get": {
                "summary": "One record with its history of state changes and errors",
                "parameters": [record_id], "responses": responses(ref("RecordDetail"), 400, 404)}},
            "/api/records/{id}/pdf": {"get": {
                "summary": "The record's (signed) PDF; operators only. Each download is a copy issued: "
                           "entered in the issuance registry under the version's verification code",
                "parameters": [record_id, *IssueQuery.openapi_parameters()],
                "responses": responses({"type": "string", "format": "binary"}, 400, 403, 404,
                                       media="application/pdf")}},
            "/api/quarantine": listing("Quarantined records with the reasons", filters),
            "/api/dead-letters": listing("Dead-lettered deliveries with the last error", filters),
            "/api/records/{id}/cancel": {"post": {
                "summary": "Cancel a transcript with a mandatory reason: a new CANCEL version is signed and "
                           "sent to every destination; operators only (audited)",
                "parameters": [record_id],
                "requestBody": {"required": True,
                                "content": {"application/json": {"schema": ref("CancelRequest")}}},
                "responses": responses(ref("CancelResult"), 400, 403, 404, 409, 413, 415)}},
            "/api/replay": {"post": {
                "summary": "Run quarantined, failed or dead-lettered records again; operators only",
                "requestBody": {"required": True,
                                "content": {"application/json": {"schema": ref("ReplayRequest")}}},
                "responses": responses(ref("ReplayResult"), 400, 403, 413, 415)}},
            "/api/signing": {"get": {
                "summary": "Per school and class: transcripts waiting for each signing stage and who has "
                           "not signed; operators only",
                "parameters": school,
                "responses": responses(ref("SigningStatus"), 400, 403)}},
            "/api/adapters": {"get": {"summary": "Adapters with health, last sync and pause state",
                                      "responses": responses(ref("AdapterList"))}},
            "/api/destinations": {"get": {"summary": "Routes (destinations) with filters, health, circuit state "
                                                     "and where their records stand",
                                          "responses": responses(ref("DestinationList"))}},
            "/api/adapters/{name}/pause": {"post": {
                "summary": "Stop pulling from an adapter; operators only", "parameters": [adapter_name],
                "responses": responses(ref("PauseResult"), 403, 404)}},
            "/api/adapters/{name}/resume": {"post": {
                "summary": "Pull from a paused adapter again; operators only", "parameters": [adapter_name],
                "responses": responses(ref("PauseResult"), 403, 404)}},
            "/api/identity/blocked": {"get": {
                "summary": "Students blocked on identity, with what differs from the population database; "
                           "operators only (names)",
                "parameters": school, "responses": responses(ref("BlockedList"), 400, 403)}},
            "/api/identity/blocked.xlsx": {"get": {
                "summary": "The same report as an XLSX for the school; operators only",
                "parameters": school,
                "responses": responses({"type": "string", "format": "binary"}, 400, 403, media=XLSX)}},
            "/api/packages": {"get": {
                "summary": "Class packages destinations accepted, newest first, with their members, receipt "
                           "and recall state",
                "parameters": PackagesQuery.openapi_parameters(),
                "responses": responses(ref("PackageList"), 400)}},
            "/api/packages/{package_id}/recall": {"post": {
                "summary": "Recall a class package with a mandatory reason: the destination withdraws every "
                           "transcript it carried; operators only (audited)",
                "parameters": [param("package_id", "path", {"type": "string", "minLength": 1, "maxLength": 200,
                                                            "pattern": r"^[^\x00-\x1f\x7f]+$"},
                                     "The package's id")],
                "requestBody": {"required": True,
                                "content": {"application/json": {"schema": ref("RecallRequest")}}},
                "responses": responses(ref("PackageList"), 400, 403, 404, 409, 413, 415)}},
            "/api/exports/{school}/{class_name}": {"get": {
                "summary": "The file the destination wrote for one class (the school portal's import "
                           "sheet), of the latest school year the class has one for unless `year` says; operators only (names)",
                "parameters": [
                    param("school", "path", {"type": "string", "minLength": 1, "maxLength": 100},
                          "School code (matruong)"),
                    param("class_name", "path", {"type": "string", "minLength": 1, "maxLength": 100},
                          "Class name (tenlop)"),
                    *YearQuery.openapi_parameters()],
                "responses": responses({"type": "string", "format": "binary"}, 400, 403, 404, media=XLSX)}},
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "responses": {"Unauthorized": {
                "description": "No token, or not a configured one",
                "content": {"application/json": {"schema": ref("Error")}}}},
            "schemas": {
                "SigningStatus": {"type": "object", "required": ["classes"], "properties": {"classes": {
                    "type": "array", "items": {
                        "type": "object",
                        "required": ["school_code", "class_name", "transcripts", "waiting", "unsigned"],
                        "properties": {
                            "school_code": {"type": "string"}, "class_name": {"type": "string"},
                            "transcripts": {"type": "integer"},
                            "waiting": {"type": "object", "additionalProperties": {"type": "integer"}},
                            "unsigned": {"type": "array", "items": {
                                "type": "object", "required": ["role", "name", "transcripts"],
                                "properties": {"role": {"type": "string"}, "name": {"type": "string"},
                                               "subject": nullable_str, "transcripts": {"type": "integer"}}}}}}}}},
                "Error": {"type": "object", "required": ["error", "parameter"], "properties": {
                    "error": {"type": "string", "description": "`<parameter>: <reason>`"},
                    "parameter": {"type": "string"}}},
                "RecordSummary": record_summary,
                "RecordList": {"type": "object", "required": ["items", "count", "limit", "offset"], "properties": {
                    "items": {"type": "array", "items": ref("RecordSummary")}, "count": {"type": "integer"},
                    "limit": {"type": "integer"}, "offset": {"type": "integer"}}},
                "RecordDetail": {"allOf": [ref("RecordSummary"), {
                    "type": "object", "required": ["history", "versions", "has_pdf", "replayable"], "properties": {
                        "history": {"type": "array", "items": {
                            "type": "object", "required": ["at", "state", "detail"], "properties": {
                                "at": {"type": "string"}, "state": {"type": "string"}, "detail": nullable_str}}},
                        "versions": {"type": "array", "items": {
                            "type": "object", "required": ["id", "version", "event", "state"], "properties": {
                                "id": {"type": "integer"}, "version": {"type": "integer"},
                                "event": {"type": "string"}, "state": {"type": "string"}}}},
                        "destinations": {"type": "array", "description": "Each route's outcome for this version",
                                         "items": {"type": "object", "required": ["destination", "state"],
                                                   "properties": {
                            "destination": {"type": "string"}, "state": {"type": "string"},
                            "attempts": {"type": "integer"}, "last_error": nullable_str,
                            "receipt_id": nullable_str, "updated_at": {"type": "string"}}}},
                        "has_pdf": {"type": "boolean"}, "replayable": {"type": "boolean"},
                        "student": {"type": "object", "description": "Operators only", "properties": {
                            "full_name": nullable_str, "student_code": nullable_str, "personal_id": nullable_str}},
                        "class_name": {**nullable_str, "description": "Operators only"}}}]},
                "ReplayRequest": ReplayRequest.openapi_schema(routes),
                "CancelRequest": CancelRequest.openapi_schema(),
                "RecallRequest": RecallRequest.openapi_schema(),
                "PackageList": {"type": "object", "required": ["items"], "properties": {"items": {
                    "type": "array", "items": {
                        "type": "object",
                        "required": ["package_id", "destination", "school_code", "class_name", "school_year",
                                     "state", "transcripts", "submitted_at", "updated_at"],
                        "properties": {
                            "package_id": {"type": "string"}, "destination": {"type": "string"},
                            "school_code": {"type": "string"}, "class_name": {"type": "string"},
                            "school_year": {"type": "string"},
                            "state": {"type": "string",
                                      "enum": ["submitted", "recall_requested", "recalled", "recall_refused"]},
                            "transcripts": {"type": "array", "items": {
                                "type": "object", "required": ["record_id", "version"],
                                "properties": {"record_id": {"type": "string"}, "version": {"type": "integer"}}}},
                            "receipt_id": nullable_str, "reason": nullable_str, "requested_by": nullable_str,
                            "last_error": nullable_str, "submitted_at": {"type": "string"},
                            "updated_at": {"type": "string"}}}}}},
                "CancelResult": {"type": "object", "required": ["record_id", "id", "version", "event", "state"],
                                 "properties": {"record_id": {"type": "string"}, "id": {"type": "integer"},
                                                "version": {"type": "integer"}, "event": {"type": "string"},
                                                "state": {"type": "string"}}},
                "ReplayResult": {"type": "object", "required": ["stage", "matched", "moved", "skipped"], "properties": {
                    "stage": {"type": "string"}, "matched": {"type": "integer"}, "skipped": {"type": "integer"},
                    "moved": {"type": "array", "items": {"type": "object", "required": ["id", "state"], "properties": {
                        "id": {"type": "integer"}, "state": {"type": "string"}}}}}},
                "AdapterList": {"type": "object", "required": ["items"], "properties": {"items": {
                    "type": "array", "items": {
                        "type": "object",
                        "required": ["name", "type", "enabled", "poll_interval", "paused", "health", "last_sync"],
                        "properties": {
                            "name": {"type": "string"}, "type": {"type": "string"}, "enabled": {"type": "boolean"},
                            "poll_interval": {"type": "number"}, "paused": {"type": "boolean"},
                            "health": {"type": "object", "nullable": True, "properties": {
                                "ok": {"type": "boolean"}, "detail": {"type": "string"}}},
                            "last_sync": nullable_str}}}}},
                "DestinationList": {"type": "object", "required": ["items"], "properties": {"items": {
                    "type": "array", "items": {
                        "type": "object", "required": ["name", "type", "filters", "health", "circuit_open", "counts"],
                        "properties": {
                            "name": {"type": "string"}, "type": {"type": "string"},
                            "filters": {"type": "object", "properties": {
                                k: {"type": "array", "items": {"type": "string"}}
                                for k in ("levels", "schools", "events")}},
                            "health": {"type": "object", "nullable": True, "properties": {
                                "ok": {"type": "boolean"}, "detail": {"type": "string"}}},
                            "circuit_open": {"type": "boolean"},
                            "counts": {"type": "object", "additionalProperties": {"type": "integer"}}}}}}},
                "PauseResult": {"type": "object", "required": ["adapter", "paused"], "properties": {
                    "adapter": {"type": "string"}, "paused": {"type": "boolean"}}},
                "BlockedList": {"type": "object", "required": ["school", "count", "items"], "properties": {
                    "school": nullable_str, "count": {"type": "integer"},
                    "items": {"type": "array", "items": {"type": "object", "required": [
                        "school_code", "record_id", "version", "differs"], "properties": {
                        "school_code": nullable_str, "school_name": nullable_str, "class_name": nullable_str,
                        "student_code": nullable_str, "full_name": nullable_str,
                        "personal_id": {**nullable_str, "description": "Masked: the last three digits"},
                        "record_id": {"type": "string"}, "version": {"type": "integer"},
                        "blocked_at": {"type": "string"},
                        "differs": {"type": "array", "items": {
                            "type": "object", "required": ["field", "vi", "en"], "properties": {
                                "field": {"type": "string"}, "vi": {"type": "string"},
                                "en": {"type": "string"}}}}}}}}},
            },
        },
    }
