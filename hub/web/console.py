"""The operators' console under ``/console``: the status page grown into a place to work from.

Vietnamese first (``?lang=en`` for English), the status page's templates and stylesheet, and
a layout that works on a phone. What it shows, per school and class: how many transcripts wait
for each stage (normalisation, identity, rendering, each signing role, delivery), how many are
blocked on identity, quarantined, failed, dead-lettered or delivered; the problems in plain
words (``hub.web.status_page.explain``); one record with its history; and for each school an
XLSX of what it must fix (``hub.documents.school_report``).

**Sign-in.** With an ``admin.tokens`` token, checked exactly as the admin API checks a bearer
token (``hub.web.admin.caller_for``). The session lives in a cookie (HttpOnly, SameSite=Strict,
``Secure`` over https, path ``/console``) signed with HMAC-SHA256 under a key derived from the
configured tokens: every worker of one config accepts it, and changing the tokens ends every
session. A session lasts ``SESSION_SECONDS`` and names the token (``name``, ``role``), which
must still be configured on every request. Every form carries the session's CSRF token, and
every POST — sign-in included (it gets a session without a caller first) — is refused without it.

**Roles**, as in the admin API: a viewer sees ids, states, school and class codes and explained
problems; an operator also sees the student's name on a record's page and may replay records and
pause or resume an adapter. Every action goes through the engine calls the admin API uses
(``Hub.replay``, ``Store.set_paused``) and is in the audit log under the token's name, as is
every sign-in and every school report taken.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import hmac
import json
import re
import secrets
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlencode

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from hub import __version__
from hub import lifecycle as lc
from hub.catalogue import name_of
from hub.contracts import SIGNING_ROLES
from hub.engine.signing_status import waiting_for
from hub.store import StateConflict
from hub.engine.normalize import known_codes
from hub.logs import get_logger, scrub, secret_values
from hub.web.admin import OPERATOR, XLSX, AdminApi, Caller, caller_for
from hub.web.status_page import (
    ROLE_LABELS,
    STUCK_STATES,
    explain,
    field_of,
    plugin_detail,
    state_label,
)
from hub.web.status_page import local_time as _local
from hub.web.templating import strings, stylesheet, templates

if TYPE_CHECKING:
    from hub.engine.pipeline import Hub

COOKIE = "hocba_console"
SESSION_SECONDS = 12 * 3600   # one working day
PROBLEMS_SHOWN = 100
_MAX_FORM = 16 * 1024
_PK = re.compile(r"^\d{1,18}$")
_SCHOOL = re.compile(r"^[\w.-]{1,64}$")

TEXT = strings("console")


# --- the session cookie -------------------------------------------------------------------------

@dataclass(frozen=True)
class Session:
    """A console session: its CSRF token, when it began, and who signed in (None: not yet)."""
    csrf: str
    issued: float
    caller: Caller | None = None


class Sessions:
    """Signs and reads session cookies for one configuration's tokens."""

    def __init__(self, tokens: list[Any]):
        self.tokens = tokens
        material = b"".join(sorted(hashlib.sha256(t.token.get_secret_value().encode()).digest() for t in tokens))
        # No tokens: nobody can sign in, and a random key makes sure no cookie is accepted either.
        self.key = hmac.new(b"hocba-hub console session v1", material or secrets.token_bytes(32),
                            hashlib.sha256).digest()

    def new(self, caller: Caller | None = None) -> Session:
        return Session(secrets.token_urlsafe(24), time.time(), caller)

    def dump(self, session: Session) -> str:
        body = {"c": session.csrf, "t": int(session.issued)}
        if session.caller:
            body |= {"n": session.caller.name, "r": session.caller.role}
        data = base64.urlsafe_b64encode(json.dumps(body, separators=(",", ":")).encode()).decode().rstrip("=")
        return f"{data}.{self._sign(data)}"

    def load(self, cookie: str | None) -> Session | None:
        """The session a cookie holds, or None if it is missing, forged, expired or names a
        token no longer configured."""
        data, _, signature = (cookie or "").partition(".")
        if not data or not hmac.compare_digest(signature, self._sign(data)):
            return None
        try:
            body = json.loads(base64.urlsafe_b64decode(data + "=" * (-len(data) % 4)))
            csrf, issued = str(body["c"]), float(body["t"])
        except (ValueError, KeyError, TypeError):
            return None
        if not 0 <= time.time() - issued < SESSION_SECONDS:
            return None
        caller = None
        if "n" in body:
            caller = Caller(str(body["n"]), str(body.get("r")))
            if not any(t.name == caller.name and t.role == caller.role for t in self.tokens):
                return None
        return Session(csrf, issued, caller)

    def _sign(self, data: str) -> str:
        return base64.urlsafe_b64encode(hmac.new(self.key, data.encode(), hashlib.sha256).digest()).decode().rstrip("=")


class Refused(Exception):
    """A request the console refuses, with the status and the ``TEXT`` key of the reason."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


def _action(handler: Callable[..., Awaitable[Response]]) -> Callable[[Any, Request], Awaitable[Response]]:
    """An operator's POST: ``handler(self, request, lang, session, form)`` runs once the session,
    its role and its CSRF token pass; a ``Refused`` from either answers with the refused page."""
    @functools.wraps(handler)
    async def run(self: Any, request: Request) -> Response:
        lang = self._lang(request)
        try:
            session, form = await self._post(request)
            return await handler(self, request, lang, session, form)
        except Refused as exc:
            return self._refused(request, lang, self._session(request), exc)
    return run


# --- the console --------------------------------------------------------------------------------

class Console:
    """The ``/console`` routes of one hub."""

    def __init__(self, hub: "Hub"):
        self.hub = hub
        self.api = AdminApi(hub)   # the record view and its rules, shared with /api/records/{id}
        self.sessions = Sessions(hub.config.admin.tokens)
        self.secrets = secret_values(hub.config)
        self.roles = hub.roles or SIGNING_ROLES
        self.identity = hub.config.identity is not None
        self.log = get_logger(component="console")

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/console", self.overview),
            Route("/console/login", self.login_page),
            Route("/console/login", self.login, methods=["POST"]),
            Route("/console/logout", self.logout, methods=["POST"]),
            Route("/console/records/{id}", self.record),
            Route("/console/schools/{school}/report.xlsx", self.report),
            Route("/console/replay", self.replay, methods=["POST"]),
            Route("/console/cancel", self.cancel, methods=["POST"]),
            Route("/console/packages", self.packages),
            Route("/console/recall", self.recall, methods=["POST"]),
            Route("/console/adapters/{name}/{action}", self.pause, methods=["POST"]),
        ]

    # --- plumbing -----------------------------------------------------------------------------

    @staticmethod
    def _lang(request: Request) -> str:
        return "en" if request.query_params.get("lang") == "en" else "vi"

    def _session(self, request: Request) -> Session | None:
        return self.sessions.load(request.cookies.get(COOKIE))

    def _set_cookie(self, request: Request, response: Response, session: Session) -> None:
        response.set_cookie(COOKIE, self.sessions.dump(session), max_age=SESSION_SECONDS, path="/console",
                            httponly=True, samesite="strict", secure=request.url.scheme == "https")

    def _page(self, request: Request, template: str, lang: str, session: Session | None, status: int = 200,
              **context: Any) -> HTMLResponse:
        t = TEXT[lang]
        caller = session.caller if session else None
        query = dict(request.query_params)
        context = {
            "lang": lang, "t": t, "title": t["title"], "css": stylesheet(), "version": __version__,
            "caller": caller, "operator": bool(caller and caller.role == OPERATOR),
            "csrf": session.csrf if session else "", "switch_url": "?" + urlencode({**query, "lang": t["switch_lang"]}),
            "q": (lambda **kw: _query(lang, **kw)), **context,
        }
        response = templates().TemplateResponse(request, template, scrub(context, self.secrets), status_code=status,
                                                headers=_HEADERS | {"Content-Language": lang})
        if session is not None and request.cookies.get(COOKIE) is None:
            self._set_cookie(request, response, session)
        return response

    def _refused(self, request: Request, lang: str, session: Session | None, exc: Refused) -> HTMLResponse:
        return self._page(request, "console_refused.html", lang, session, status=exc.status,
                          reason=TEXT[lang][exc.reason])

    def _signed_in(self, request: Request) -> Session | RedirectResponse:
        session = self._session(request)
        if session is None or session.caller is None:
            return RedirectResponse("/console/login" + _query(self._lang(request)), status_code=303)
        return session

    async def _post(self, request: Request, *, operator: bool = True) -> tuple[Session, dict[str, str]]:
        """The session and form of a POST: refused without a session (or an operator's, when
        ``operator``) or without the session's CSRF token."""
        session = self._session(request)
        form = await _form(request)
        offered = form.get("csrf", "")
        if session is None or not offered or not hmac.compare_digest(offered.encode(), session.csrf.encode()):
            raise Refused(403, "csrf")
        if operator and (session.caller is None or session.caller.role != OPERATOR):
            raise Refused(403, "need_operator")
        return session, form

    # --- sign-in ------------------------------------------------------------------------------

    async def login_page(self, request: Request) -> Response:
        lang = self._lang(request)
        session = self._session(request) or self.sessions.new()
        return self._page(request, "console_login.html", lang, session, failed=False)

    async def login(self, request: Request) -> Response:
        lang = self._lang(request)
        try:
            _, form = await self._post(request, operator=False)
        except Refused as exc:
            return self._refused(request, lang, self.sessions.new(), exc)
        caller = caller_for(form.get("token", ""), self.hub.config.admin.tokens)
        if caller is None:
            self.log.warning("console.login_refused")  # never the offered value: it may be a real token mistyped
            return self._page(request, "console_login.html", lang, self.sessions.new(), status=401, failed=True)
        await self.hub.db(self.hub.store.audit, "console.login", caller.name, None, {"role": caller.role})
        # A fresh session (and CSRF token) on sign-in: nothing from before it carries over.
        response = RedirectResponse("/console" + _query(lang), status_code=303)
        self._set_cookie(request, response, self.sessions.new(caller))
        return response

    async def logout(self, request: Request) -> Response:
        lang = self._lang(request)
        try:
            await self._post(request, operator=False)
        except Refused as exc:
            return self._refused(request, lang, self._session(request), exc)
        response = RedirectResponse("/console/login" + _query(lang), status_code=303)
        response.delete_cookie(COOKIE, path="/console", httponly=True, samesite="strict")
        return response

    # --- pages --------------------------------------------------------------------------------

    def columns(self) -> list[str]:
        """The console's columns in pipeline order: what each state waits for, or the state."""
        out: list[str] = []
        for state in lc.all_states(self.roles):
            key = self.column_of(state)
            if key not in out:
                out.append(key)
        return out

    def column_of(self, state: str) -> str:
        stage = lc.stage_of(state, self.roles, identity=self.identity)
        if stage == "sign":
            return "sign:" + (lc.next_signer(state, self.roles) or "")
        return f"wait:{stage}" if stage else state

    def column_label(self, key: str, lang: str) -> str:
        if key.startswith("sign:"):
            role = key.removeprefix("sign:")
            return TEXT[lang]["sign"].format(who=ROLE_LABELS[lang].get(role, role))
        return TEXT[lang].get(key) or state_label(key, lang)

    async def overview(self, request: Request) -> Response:
        session = self._signed_in(request)
        if isinstance(session, Response):
            return session
        lang = self._lang(request)
        hub = self.hub
        school = request.query_params.get("school") or None
        if school is not None and not _SCHOOL.match(school):
            school = None
        schools = await hub.db(hub.store.schools)
        counts = await hub.db(hub.store.class_breakdown, school)
        at_destinations = self._at_destinations(lang, await hub.db(hub.store.class_deliveries, school), school)
        await hub.metrics.health.refresh()
        paused = await hub.db(hub.store.paused)
        stuck: list[dict[str, Any]] = []
        for state in STUCK_STATES:
            stuck += await hub.db(lambda s=state: hub.store.search(state=s, school=school, limit=PROBLEMS_SHOWN))
        stuck.sort(key=lambda r: (r["updated_at"], r["id"]), reverse=True)
        done = _done(request, lang)
        # Who has not signed names teachers: operators only, as ``GET /api/signing``; per school,
        # so the page reads only that school's transcripts in the signing stage.
        operator = bool(session.caller and session.caller.role == OPERATOR)
        unsigned = self._unsigned(lang, await waiting_for(hub, school)) if school and operator else None
        return self._page(request, "console.html", lang, session, school=school, schools=schools,
                          table=self._table(lang, counts, school), problems=self._problems(lang, stuck),
                          adapters=self._adapters(lang, paused), unsigned=unsigned, done=done,
                          at_destinations=at_destinations)

    def _at_destinations(self, lang: str, counts: list[dict[str, Any]], school: str | None) -> dict[str, Any]:
        """Per school (or class of ``school``) and destination: versions delivered there, waiting
        to go, dead-lettered, recalled."""
        key = "class_name" if school else "school_code"
        grid: dict[str, dict[str, Counter]] = defaultdict(lambda: defaultdict(Counter))
        for row in counts:
            grid[row[key] or ""][row["destination"]][row["state"]] += row["n"]
        destinations = [name for name in self.hub.config.route_names if any(name in g for g in grid.values())]
        states = ("delivered", "queued", "dead_letter", "recalled")
        return {"destinations": destinations, "rows": [
            {"label": name or TEXT[lang]["no_class" if school else "unknown_school"],
             "cells": [[(state, grid[name][d][state], state_label(state, lang)) for state in states
                        if grid[name][d][state]] for d in destinations]}
            for name in sorted(grid, key=lambda n: (n == "", n))]}

    @staticmethod
    def _unsigned(lang: str, classes: list[dict[str, Any]]) -> list[dict[str, Any]]:
        roles = ROLE_LABELS[lang]
        return [{"class_name": c["class_name"], "transcripts": c["transcripts"],
                 "waiting": [(roles.get(r, r), n) for r, n in c["waiting"].items()],
                 "people": [{"role": roles.get(u["role"], u["role"]), "name": u["name"],
                             "subject": (name_of(u["subject"]) or u["subject"]) if u["subject"] else "",
                             "transcripts": u["transcripts"]} for u in c["unsigned"]]}
                for c in classes]

    def _table(self, lang: str, counts: list[dict[str, Any]], school: str | None) -> dict[str, Any]:
        t = TEXT[lang]
        key = "class_name" if school else "school_code"
        grid: dict[str, Counter] = defaultdict(Counter)
        for row in counts:
            grid[row[key] or ""][self.column_of(row["state"])] += row["n"]
        used = {c for cells in grid.values() for c in cells}
        columns = [c for c in self.columns() if c in used]
        rows = [{"key": name, "label": name or (t["no_class"] if school else t["unknown_school"]),
                 "cells": [(c, grid[name][c]) for c in columns], "total": sum(grid[name].values())}
                for name in sorted(grid, key=lambda n: (n == "", n))]
        totals = [(c, sum(grid[n][c] for n in grid)) for c in columns]
        return {"title": t["by_class"] if school else t["by_school"], "key_title": t["class"] if school else t["school"],
                "columns": [(c, self.column_label(c, lang)) for c in columns], "rows": rows, "totals": totals,
                "total": sum(n for _, n in totals), "per_school": not school}

    def _problems(self, lang: str, stuck: list[dict[str, Any]]) -> dict[str, Any]:
        reasons: Counter = Counter()
        texts: dict[str, str] = {}
        rows = []
        for r in stuck[:PROBLEMS_SHOWN]:
            key, vi, en = explain(r["state"], r["errors"])
            reasons[key] += 1
            texts[key] = vi if lang == "vi" else en
            rows.append({"id": r["id"], "reason": key, "school": r["school_code"] or "", "adapter": r["adapter"],
                         "state": r["state"], "state_label": state_label(r["state"], lang),
                         "changed": _local(r["updated_at"]), "why": texts[key],
                         "fields": sorted({field_of(e) for e in r["errors"]})})
        return {"rows": rows, "reasons": [(n, texts[k]) for k, n in reasons.most_common()]}

    def _adapters(self, lang: str, paused: set[str]) -> list[dict[str, Any]]:
        t = TEXT[lang]
        out = []
        for section in self.hub.config.adapters:
            status = self.hub.status.get(section.name)
            out.append({"name": section.name, "type": section.type, "paused": section.name in paused,
                        "ok": None if status is None else status.health.ok,
                        "sync": _local(status.last_sync) if status and status.last_sync else t["never"],
                        "detail": plugin_detail(status.health.detail, lang) if status and not status.health.ok
                        else ""})
        return out

    async def record(self, request: Request) -> Response:
        session = self._signed_in(request)
        if isinstance(session, Response):
            return session
        lang = self._lang(request)
        raw = request.path_params["id"]
        row = None
        if _PK.match(raw):
            try:
                row = await self.hub.db(self.hub.store.get, int(raw))
            except KeyError:
                row = None
        if row is None:
            return self._refused(request, lang, session, Refused(404, "not_found"))
        assert session.caller is not None
        detail = await self.api.detail(row, session.caller)
        problems = []
        if row.state in STUCK_STATES:
            for line in row.errors:
                _, vi, en = explain(row.state, [line])
                problems.append({"field": field_of(line), "why": vi if lang == "vi" else en})
        history = [{"at": _local(h["at"]), "state": h["state"], "label": state_label(h["state"], lang),
                    "detail": h["detail"] or ""} for h in detail["history"]]
        record = row.normalized or {}
        codes = {"class_name": record.get("class_name"), "student_code": (record.get("student") or {}).get("student_code")}
        if not row.normalized and row.payload and row.adapter in self.hub.adapters:
            # Never a central record: the codes the adapter can still map say whose it is.
            codes |= await self.hub.db(known_codes, self.hub.adapters[row.adapter], row.raw())
        return self._page(request, "console_record.html", lang, session, r=detail, problems=problems,
                          history=history, label=state_label(row.state, lang), class_name=codes.get("class_name"),
                          student_code=codes.get("student_code"),
                          received=_local(row.received_at), changed=_local(row.updated_at),
                          stages=lc.REPLAY_STAGES, done=_done(request, lang),
                          cancellable=row.event != "CANCEL" and row.state not in (lc.SUPERSEDED,))

    async def report(self, request: Request) -> Response:
        session = self._signed_in(request)
        if isinstance(session, Response):
            return session
        from hub.documents.school_report import school_problems, to_xlsx

        school = request.path_params["school"]
        lang = self._lang(request)
        if not _SCHOOL.match(school):
            return self._refused(request, lang, session, Refused(404, "not_found"))
        entries = await self.hub.db(school_problems, self.hub.store, self.hub.adapters, school)
        assert session.caller is not None
        await self.hub.db(self.hub.store.audit, "console.school_report", session.caller.name, school,
                          {"rows": len(entries)})
        body = await asyncio.to_thread(to_xlsx, school, entries)
        return Response(body, media_type=XLSX, headers={
            "Content-Disposition": f'attachment; filename="hocba-{school}-can-sua.xlsx"', "Cache-Control": "no-store"})

    # --- actions ------------------------------------------------------------------------------

    @_action
    async def replay(self, request: Request, lang: str, session: Session, form: dict[str, str]) -> Response:
        pk, stage = form.get("id", ""), form.get("stage", "normalize")
        if not _PK.match(pk) or stage not in lc.REPLAY_STAGES:
            raise Refused(404, "not_found")
        assert session.caller is not None
        moved = await self.hub.replay([int(pk)], stage=stage, actor=session.caller.name)
        await self.hub.db(self.hub.store.audit, "console.replay", session.caller.name, None,
                          {"ids": [int(pk)], "stage": stage, "moved": len(moved)})
        return RedirectResponse(f"/console/records/{pk}" + _query(lang, done="replay", n=len(moved)), status_code=303)

    @_action
    async def cancel(self, request: Request, lang: str, session: Session, form: dict[str, str]) -> Response:
        """Cancel the transcript with the reason the operator typed (``Hub.cancel``): a new
        version, signed and sent to every destination; the record page then shows it."""
        pk = form.get("id", "")
        if not _PK.match(pk):
            raise Refused(404, "not_found")
        try:
            reason = lc.cancel_reason(form.get("reason", ""))
        except ValueError:
            raise Refused(400, "cancel_reason") from None
        assert session.caller is not None
        try:
            row = await self.hub.db(self.hub.store.get, int(pk))
            new = await self.hub.cancel(row.record_id, reason, session.caller.name)
        except KeyError:
            raise Refused(404, "not_found") from None
        except StateConflict:
            raise Refused(409, "already_cancelled") from None
        return RedirectResponse(f"/console/records/{new}" + _query(lang, done="cancel"), status_code=303)

    async def packages(self, request: Request) -> Response:
        """The class packages destinations accepted (one school's, with ``?school=``), with a
        recall form per package for operators."""
        session = self._signed_in(request)
        if isinstance(session, Response):
            return session
        lang = self._lang(request)
        school = request.query_params.get("school") or None
        if school is not None and not _SCHOOL.match(school):
            school = None
        items = await self.hub.db(self.hub.store.packages, school=school, limit=PROBLEMS_SHOWN * 10)
        return self._page(request, "console_packages.html", lang, session, school=school,
                          packages=[p.public() for p in items], done=_done(request, lang))

    @_action
    async def recall(self, request: Request, lang: str, session: Session, form: dict[str, str]) -> Response:
        """Recall a package with the reason the operator typed (``Hub.recall``); the route's
        worker sends it."""
        package_id = form.get("package_id", "")
        try:
            reason = lc.cancel_reason(form.get("reason", ""), "the package is recalled")
        except ValueError:
            raise Refused(400, "recall_reason") from None
        assert session.caller is not None
        try:
            await self.hub.recall(package_id, reason, session.caller.name)
        except KeyError:
            raise Refused(404, "no_package") from None
        except StateConflict:
            raise Refused(409, "already_recalled") from None
        return RedirectResponse("/console/packages" + _query(lang, done="recall", name=package_id), status_code=303)

    @_action
    async def pause(self, request: Request, lang: str, session: Session, _form: dict[str, str]) -> Response:
        name, action = request.path_params["name"], request.path_params["action"]
        if name not in self.api.adapter_names or action not in ("pause", "resume"):
            raise Refused(404, "not_found")
        assert session.caller is not None
        await self.hub.db(self.hub.store.set_paused, name, action == "pause", session.caller.name)
        return RedirectResponse("/console" + _query(lang, done=action, name=name), status_code=303)


_HEADERS = {
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    # Inline CSS only (the one stylesheet), no script at all, forms post back here only.
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
}


def _query(lang: str, **params: Any) -> str:
    """A query string that keeps the language (Vietnamese is the default and needs nothing)."""
    params = {k: v for k, v in params.items() if v not in (None, "")}
    if lang == "en":
        params = {"lang": "en", **params}
    return "?" + urlencode(params) if params else ""


def _done(request: Request, lang: str) -> str:
    """The message an action's redirect asked for (``?done=replay&n=1``)."""
    q = request.query_params
    template = TEXT[lang].get(f"done_{q.get('done', '')}")
    if not template:
        return ""
    n = q.get("n", "0")
    return template.format(n=int(n) if n.isdigit() else 0, name=q.get("name", "")[:100])


async def _form(request: Request) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body, first value of each field."""
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/x-www-form-urlencoded":
        raise Refused(415, "csrf")
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > _MAX_FORM:
            raise Refused(413, "csrf")
    try:
        fields = parse_qs(raw.decode("utf-8", "replace"), keep_blank_values=True, max_num_fields=50)
    except ValueError:  # more fields than any console form has
        raise Refused(413, "csrf") from None
    return {k: v[0] for k, v in fields.items()}


def console_routes(hub: "Hub") -> list[BaseRoute]:
    """The ``/console`` routes of ``hub`` (needs ``hub.web.metrics``, set by ``create_app``)."""
    return Console(hub).routes()
