"""The status page at ``/``: the operators' wall screen, in Vietnamese (``?lang=en`` for English).

One server-rendered HTML page, no JavaScript and no build step; it reloads itself every 15 s.
It answers what an operator asks first during the year-end rush: how many transcripts are
where (per adapter and per school), which are stuck and why — with the reason explained in
plain words, not only the validator's line — when each school system was last read, and
whether the central store and the signing services are up.

**Access.** The page needs no token: it is meant for a screen on the wall of the department's
operations room. It therefore shows no personal data at all — store ids, record ids, adapter
names, school codes, states, and error lines with personal ids masked and quoted values and
dates blanked (``hub.web.admin.public_error``); no configured secret can appear (every string is
scrubbed of them). Anything more (names, PDFs, actions) is the admin API's, behind a token. The
hub's port belongs on the internal network like every other route.

Plugin health comes from ``hub.web.metrics.health``: at most one round of ``check()`` calls per
10 s whatever the number of screens and scrapes.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import time
from collections import Counter, defaultdict
from importlib.resources import files
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import BaseRoute, Route

from hub import __version__
from hub import lifecycle as lc
from hub.logs import no_internals, public_error, scrub, secret_values
from hub.records import VIETNAM_TIME
from hub.web.templating import strings, stylesheet, templates

if TYPE_CHECKING:
    from hub.engine.pipeline import Hub

REFRESH_SECONDS = 15
STUCK_SHOWN = 50
STUCK_STATES = (lc.QUARANTINED, lc.FAILED, lc.DEAD_LETTER, lc.BLOCKED_IDENTITY)
# The operators work in Vietnam: times on the wall screen are local (UTC+7, no daylight saving).

ROLE_LABELS = {
    "vi": {"subject_teacher": "GVBM", "homeroom_teacher": "GVCN", "principal": "Hiệu trưởng", "school_seal": "Nhà trường"},
    "en": {"subject_teacher": "subject teacher", "homeroom_teacher": "homeroom teacher", "principal": "principal", "school_seal": "school seal"},
}
STATE_LABELS = {
    "vi": {lc.RECEIVED: "đã nhận", lc.NORMALIZED: "đã chuẩn hoá", lc.RENDERED: "đã tạo PDF",
           lc.DELIVERED: "đã gửi", lc.QUARANTINED: "cách ly", lc.FAILED: "lỗi xử lý",
           lc.DEAD_LETTER: "gửi thất bại", lc.SUPERSEDED: "đã thay thế", lc.UNCHANGED: "không thay đổi",
           lc.IDENTITY_CLEARED: "đã xác minh danh tính", lc.BLOCKED_IDENTITY: "chờ sửa danh tính",
           "queued": "đang chờ gửi", "recalled": "đã thu hồi"},
    "en": {lc.RECEIVED: "received", lc.NORMALIZED: "normalized", lc.RENDERED: "PDF rendered",
           lc.DELIVERED: "delivered", lc.QUARANTINED: "quarantined", lc.FAILED: "failed",
           lc.DEAD_LETTER: "dead letter", lc.SUPERSEDED: "superseded", lc.UNCHANGED: "unchanged",
           lc.IDENTITY_CLEARED: "identity verified", lc.BLOCKED_IDENTITY: "blocked on identity",
           "queued": "waiting to be sent", "recalled": "recalled"},
}

TEXT = strings("status", refresh=REFRESH_SECONDS)

# Plain-words explanations (i18n/explanations.json, translations beside their match words):
# why a record is stuck, most specific first, and what a plugin's health line means.
_EXPLANATIONS = json.loads(files("hub.web").joinpath("i18n", "explanations.json").read_text(encoding="utf-8"))
REASONS: list[dict[str, Any]] = _EXPLANATIONS["stuck"]
PLUGIN_PROBLEMS: list[dict[str, Any]] = _EXPLANATIONS["plugin"]


def _matches(entry: dict[str, Any], text: str, state: str | None = None) -> bool:
    # An entry with states applies in those only; one with words needs one of them in the text.
    return (("states" not in entry or state in entry["states"])
            and ("words" not in entry or any(word in text for word in entry["words"])))


def explain(state: str, errors: list[str]) -> tuple[str, str, str]:
    """``(key, Vietnamese, English)`` explanation of why a record in ``state`` is stuck."""
    text = " ".join(errors).lower()
    for reason in REASONS:
        if _matches(reason, text, state):
            return reason["key"], reason["vi"], reason["en"]
    raise AssertionError("the last reason matches everything")


# Pydantic's own wording: explained in plain words above, never shown as it is.
_RAW_VALIDATION = ("validation error", "input should", "field required", "for further information visit")


def plugin_detail(detail: str, lang: str) -> str:
    """A plugin's health line for people: the plain-words cause first (Vietnamese unless
    ``lang`` is "en"), then the technical line with personal data masked — unless it is a
    validator's raw message, which says nothing more to an operator."""
    if not detail:
        return ""
    low = detail.lower()
    plain = next(((p["vi"], p["en"]) for p in PLUGIN_PROBLEMS if _matches(p, low)),
                 ("Có lỗi; xem dòng kỹ thuật.", "Something failed; see the technical line."))
    text = plain[0] if lang == "vi" else plain[1]
    if any(k in low for k in _RAW_VALIDATION):
        return text
    technical = no_internals(public_error(detail.splitlines()[0]))
    return f"{text} ({technical[:200]})"


def field_of(line: str) -> str:
    """The field path an error line names, and the rule if it cites one — never the message,
    which may be a validator's raw wording or quote what the vendor sent."""
    path = line.split(": ", 1)[0] if ": " in line else ""
    if not re.fullmatch(r"[\w.\[\]()]{1,120}", path):
        path = ""
    rule = re.search(r"\brule (TT\d+[\w.]*)", line)
    return " — ".join(p for p in (path, rule.group(1) if rule else "") if p) or "(hồ sơ / record)"


def error_line(state: str, line: str, lang: str) -> str:
    """One stored error line as people read it: for a record whose data is wrong, the field (and
    rule) it names — the explanation beside it says what is wrong in plain words; for a person
    who does not match the population database, the field and the reason in ``lang``; otherwise
    the hub's own line with personal data masked (``public_error``), unless it is a validator's."""
    if state == lc.BLOCKED_IDENTITY:
        from hub.engine.identity import parse_reason

        field, vi, en = parse_reason(line)
        return f"{field}: {vi if lang == 'vi' else en}"
    if state == lc.QUARANTINED or any(k in line.lower() for k in _RAW_VALIDATION):
        return field_of(line)
    return public_error(line)


def state_label(state: str, lang: str) -> str:
    if state.startswith(lc.SIGNED_PREFIX):
        role = state.removeprefix(lc.SIGNED_PREFIX)
        who = ROLE_LABELS[lang].get(role, role)
        return f"đã ký ({who})" if lang == "vi" else f"signed ({who})"
    return STATE_LABELS[lang].get(state, state)


def local_time(iso: str | None) -> str:
    """A stored time (ISO, UTC) as operators read it: Vietnam time, ``dd/mm/yyyy hh:mm:ss``."""
    if not iso:
        return ""
    try:
        value = dt.datetime.fromisoformat(iso)
    except ValueError:
        return iso
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    return value.astimezone(VIETNAM_TIME).strftime("%d/%m/%Y %H:%M:%S")


_local = local_time


class StatusPage:
    """Renders ``/`` for one hub."""

    def __init__(self, hub: "Hub"):
        self.hub = hub
        self.secrets = secret_values(hub.config)
        self.order = {s: i for i, s in enumerate(lc.all_states(hub.roles))}

    async def handle(self, request: Request) -> HTMLResponse:
        lang = "en" if request.query_params.get("lang") == "en" else "vi"
        hub = self.hub
        await hub.metrics.health.refresh()
        breakdown = await hub.db(hub.store.breakdown)
        paused = await hub.db(hub.store.paused)
        outbox = await hub.db(hub.store.outbox_size)
        # Per destination, the versions by delivery state, as rows of the tables' shape.
        per_route = await hub.db(hub.store.destination_counts)
        routes = [{"destination": name, "state": state, "n": n} for name in hub.config.route_names
                  for state, n in per_route.get(name, {}).items() if state != "due"]
        stuck: list[dict[str, Any]] = []
        for state in STUCK_STATES:
            stuck += await hub.db(lambda s=state: hub.store.search(state=s, limit=STUCK_SHOWN))
        stuck.sort(key=lambda r: (r["updated_at"], r["id"]), reverse=True)
        context = scrub(self.context(lang, breakdown, paused, outbox, stuck, routes), self.secrets)
        return templates().TemplateResponse(request, "status.html", context,
                                            headers={"Cache-Control": "no-store", "Content-Language": lang})

    # --- what the page shows ------------------------------------------------------------------

    def context(self, lang: str, breakdown: list[dict[str, Any]], paused: set[str], outbox: int,
                stuck: list[dict[str, Any]], routes: list[dict[str, Any]] = ()) -> dict[str, Any]:
        t = TEXT[lang]
        counts: Counter = Counter()
        for row in breakdown:
            counts[row["state"]] += row["n"]
        stuck_total = sum(counts[s] for s in STUCK_STATES)
        in_progress = sum(n for s, n in counts.items() if s not in lc.FINAL_STATES | lc.BLOCKED_STATES)
        tiles = [{"key": key, "n": n, "cls": cls} for key, n, cls in (
            ("total", sum(counts.values()), ""), ("delivered", counts[lc.DELIVERED], "good"),
            ("in_progress", in_progress, ""), ("stuck_n", stuck_total, "bad" if stuck_total else "good"),
            ("outbox", outbox, "warn" if outbox else ""))]
        checked = self.hub.metrics.health.checked_at
        return {
            "lang": lang, "t": t, "title": t["title"], "css": stylesheet(), "version": __version__,
            "refresh": REFRESH_SECONDS, "now": _local(dt.datetime.now(dt.timezone.utc).isoformat()),
            "tiles": tiles, "plugins": self._plugins(t, paused, lang),
            "checked": None if checked is None else _local(
                (dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=time.monotonic() - checked)).isoformat()),
            **self._stuck(t, lang, stuck, stuck_total),
            "tables": [self._table(lang, "by-adapter", t["by_adapter"], t["adapter"], breakdown, "adapter"),
                       self._table(lang, "by-school", t["by_school"], t["school"], breakdown, "school_code"),
                       self._table(lang, "by-destination", t["by_destination"], t["destination"], list(routes),
                                   "destination")],
        }

    def _plugins(self, t: dict[str, str], paused: set[str], lang: str) -> list[dict[str, Any]]:
        hub = self.hub
        plugins = [(a.name, "adapter") for a in hub.config.adapters]
        plugins += [(name, "destination") for name in hub.config.route_names]
        plugins += [(s.name, "signer") for s in hub.config.signers]
        if hub.config.identity is not None:
            plugins += [(hub.config.identity.name, "identity")]
        rows = []
        for name, kind in plugins:
            status = hub.status.get(name)
            sync = "—"
            if kind == "adapter":
                sync = _local(status.last_sync) if status and status.last_sync else t["never"]
            rows.append({"name": name, "kind": kind, "ok": None if status is None else status.health.ok,
                         "paused": name in paused, "sync": sync,
                         # A healthy plugin's line ("last pull succeeded") says nothing the badge does not.
                         "detail": plugin_detail(status.health.detail, lang) if status and not status.health.ok
                         else ""})
        return rows

    def _table(self, lang: str, anchor: str, title: str, key_title: str,
               breakdown: list[dict[str, Any]], key: str) -> dict[str, Any]:
        grid: dict[str, Counter] = defaultdict(Counter)
        if key == "adapter":
            for section in self.hub.config.adapters:  # a configured adapter shows even before its first record
                grid[section.name]
        if key == "destination":
            for name in self.hub.config.route_names:
                grid[name]
        for row in breakdown:
            grid[row[key] or ""][row["state"]] += row["n"]
        states = sorted({s for c in grid.values() for s in c}, key=lambda s: self.order.get(s, 99))
        rows = [{"name": name, "cells": [(s, grid[name][s]) for s in states], "total": sum(grid[name].values())}
                for name in sorted(grid)]
        return {"anchor": anchor, "title": title, "key_title": key_title,
                "states": [(s, state_label(s, lang)) for s in states], "rows": rows}

    def _stuck(self, t: dict[str, str], lang: str, stuck: list[dict[str, Any]], total: int) -> dict[str, Any]:
        reasons: Counter = Counter()
        texts: dict[str, str] = {}
        rows = []
        shown = stuck[:STUCK_SHOWN]
        for r in shown:
            key, vi, en = explain(r["state"], r["errors"])
            reasons[key] += 1
            texts[key] = vi if lang == "vi" else en
            rows.append({"id": r["id"], "reason": key, "record_id": r["record_id"], "version": r["version"],
                         "adapter": r["adapter"], "school": r["school_code"] or "", "state": r["state"],
                         "state_label": state_label(r["state"], lang), "changed": _local(r["updated_at"]),
                         "errors": "\n".join(error_line(r["state"], e, lang) for e in r["errors"][:5]),
                         "why": texts[key]})
        more = t["more"].format(shown=len(shown), total=total) if total > len(shown) else ""
        return {"stuck_total": total, "stuck": rows, "more": more,
                "reasons": [(n, texts[k]) for k, n in reasons.most_common()]}


def status_routes(hub: "Hub") -> list[BaseRoute]:
    """``GET /``: the status page of ``hub`` (needs ``hub.web.metrics``, set by ``create_app``)."""
    return [Route("/", StatusPage(hub).handle)]
