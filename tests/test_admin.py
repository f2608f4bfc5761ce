"""The admin API over real HTTP against a running hub: auth, roles, filters, replay, pause, PDFs,
no personal data for viewers, no secret for anyone, a valid OpenAPI document and schemathesis.

One hub serves the whole module (starting one costs seconds). It starts with the central store
down and one delivery attempt allowed, so every valid record is dead-lettered and every invalid
one quarantined; the replay test then brings them home. Tests that change state say so and
check what they change.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from conftest import PASSWORD, ROLES, deliver_to, hub_config, pull_from

from adapters.ttdlqg.simulator import TtdlqgSimulator
from adapters.vnpt.simulator import VnptSimulator
from hub import lifecycle as lc
from hub.contracts import Health
from hub.engine.pipeline import Hub
from hub.web.server import serving_hub

pytestmark = pytest.mark.asyncio(loop_scope="module")

OPERATOR_TOKEN = "op-token-3f9a1c7e5b2d4a60"
VIEWER_TOKEN = "viewer-token-8e21b7c4d9f05a3"
TOKENS = [{"name": "an.nguyen", "token": OPERATOR_TOKEN, "role": "operator"},
          {"name": "wallboard", "token": VIEWER_TOKEN, "role": "viewer"}]
OP = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
VIEW = {"Authorization": f"Bearer {VIEWER_TOKEN}"}


@dataclass
class Running:
    """A hub serving HTTP on loopback, with the simulators it talks to."""
    hub: Hub
    vendor: VnptSimulator
    central: TtdlqgSimulator
    url: str
    http: aiohttp.ClientSession

    def secrets(self) -> list[str]:
        return [OPERATOR_TOKEN, VIEWER_TOKEN, PASSWORD, self.vendor.client_secret, self.central.token]

    async def get(self, path: str, headers: dict[str, str] | None = None, **kw: Any) -> tuple[int, Any]:
        async with self.http.get(path, headers=headers, **kw) as resp:
            body = await resp.json() if resp.content_type == "application/json" else await resp.read()
            return resp.status, body

    async def post(self, path: str, headers: dict[str, str] | None = None, **kw: Any) -> tuple[int, Any]:
        async with self.http.post(path, headers=headers, **kw) as resp:
            body = await resp.json() if resp.content_type == "application/json" else await resp.read()
            return resp.status, body


@asynccontextmanager
async def serve_hub(data_dir, pki, *, records: int = 4, invalid: int = 2, seed: int = 7,
                    tokens: list[dict[str, str]] = TOKENS, delivery: dict[str, Any] | None = None,
                    central_down: bool = False, extra: dict[str, Any] | None = None,
                    poll_interval: float = 3600) -> AsyncIterator[Running]:
    """Simulators, a started hub on ``data_dir`` and its app under uvicorn on 127.0.0.1, port 0;
    waits until the first pull has been worked through."""
    vendor = VnptSimulator(records=records, invalid=invalid, seed=seed)
    central = TtdlqgSimulator()
    await vendor.start()
    await central.start()
    central.faults.outage = central_down
    config = hub_config(data_dir, pki[0], adapters=[{**pull_from(vendor), "poll_interval": poll_interval}],
                        delivery={"breaker_threshold": 100, **(delivery or {})}, admin={"tokens": tokens},
                        routes=[deliver_to(central, kind="ttdlqg")], **(extra or {}))
    try:
        async with serving_hub(config, drain_timeout=1) as (hub, base):
            await asyncio.wait_for(hub.wait_idle(), 120)
            async with aiohttp.ClientSession(base) as http:
                yield Running(hub, vendor, central, base, http)
    finally:
        await vendor.stop()
        await central.stop()


async def wait_for(predicate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(tmp_path_factory, pki):
    # The central store is down and one attempt is allowed: valid records are dead-lettered.
    async with serve_hub(tmp_path_factory.mktemp("admin") / "data", pki, central_down=True,
                         delivery={"max_attempts": 1}) as running:
        running.central.faults.outage = False  # up again for whoever replays
        yield running


def snapshot(hub: Hub) -> tuple[dict[str, int], int, set[str]]:
    """What an unauthorised request must not change: states, audit entries, paused adapters."""
    return hub.store.counts(), len(list(hub.store.audit_entries())), hub.store.paused()


def ids_in(hub: Hub, state: str) -> list[int]:
    return [r.id for r in hub.store.rows(state=state)]


# --- the document ------------------------------------------------------------------------------

async def test_openapi_document_is_valid_and_covers_the_api(env):
    from openapi_spec_validator import validate

    status, doc = await env.get("/openapi.json")
    assert status == 200
    validate(doc)  # raises on any violation of the OpenAPI 3.0 schema
    assert set(doc["paths"]) == {
        "/api/records", "/api/records/{id}", "/api/records/{id}/pdf", "/api/records/{id}/cancel",
        "/api/quarantine", "/api/dead-letters",
        "/api/replay", "/api/adapters", "/api/adapters/{name}/pause", "/api/adapters/{name}/resume",
        "/api/identity/blocked", "/api/identity/blocked.xlsx", "/api/signing", "/api/destinations",
        "/api/exports/{school}/{class_name}", "/api/packages", "/api/packages/{package_id}/recall"}
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert "signed:school_seal" in doc["paths"]["/api/records"]["get"]["parameters"][0]["schema"]["enum"]


# --- authentication and roles -----------------------------------------------------------------

def _concrete(path: str) -> str:
    return (path.replace("{id}", "1").replace("{name}", "school-a").replace("{school}", "01001001")
            .replace("{class_name}", "5A").replace("{package_id}", "GT-01001001-2024-2025-0"))


async def test_every_api_route_refuses_a_missing_or_wrong_token_and_changes_nothing(env):
    _, doc = await env.get("/openapi.json")
    before = snapshot(env.hub)
    wrong = [None, {"Authorization": "Bearer not-a-configured-token-at-all"},
             {"Authorization": f"Basic {OPERATOR_TOKEN}"},           # right secret, wrong scheme
             {"Authorization": f"Bearer {OPERATOR_TOKEN}x"},          # a longer token is another token
             {"Authorization": f"Bearer {OPERATOR_TOKEN[:-1]}"},      # and so is a prefix
             {"Authorization": "Bearer "}]
    for path, ops in doc["paths"].items():
        for method in ops:
            for headers in wrong:
                body = {"state": "dead_letter", "stage": "deliver"} if method == "post" else None
                async with env.http.request(method.upper(), _concrete(path), headers=headers, json=body) as resp:
                    assert resp.status == 401, (method, path, headers)
                    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
                    assert (await resp.json())["parameter"] == "authorization"
    # Paths that do not exist are no way around it either.
    assert (await env.get("/api/no-such-thing"))[0] == 401
    assert snapshot(env.hub) == before


async def test_without_configured_tokens_nobody_gets_in(tmp_path_factory, pki):
    async with serve_hub(tmp_path_factory.mktemp("notokens") / "data", pki, records=1, invalid=0,
                         tokens=[]) as running:
        assert (await running.get("/api/records", headers=OP))[0] == 401
        assert (await running.get("/api/records", headers={"Authorization": "Bearer "}))[0] == 401
        assert (await running.get("/healthz"))[0] == 200  # the rest of the hub serves as usual


async def test_a_viewer_may_look_but_not_act(env):
    before = snapshot(env.hub)
    dead = ids_in(env.hub, lc.DEAD_LETTER)
    assert dead, "the fixture should have dead-lettered the valid records"
    for method, path, body in [
        ("POST", "/api/replay", {"ids": dead, "stage": "deliver"}),
        ("POST", "/api/adapters/school-a/pause", None),
        ("POST", "/api/adapters/school-a/resume", None),
        ("GET", f"/api/records/{dead[0]}/pdf", None),
        ("GET", "/api/signing", None),   # it names teachers
        ("POST", f"/api/records/{dead[0]}/cancel", {"reason": "a viewer may not cancel"}),
    ]:
        async with env.http.request(method, path, headers=VIEW, json=body) as resp:
            assert resp.status == 403, path
            assert "operator" in (await resp.json())["error"]
    assert snapshot(env.hub) == before
    await asyncio.sleep(0.2)  # a replay that slipped through would be on its way by now
    assert env.central.accepted() == {}
    status, body = await env.get("/api/records", headers=VIEW)
    assert status == 200 and body["count"] == len(env.hub.store.rows())


# --- listing and filtering --------------------------------------------------------------------

async def test_lists_filter_by_state_adapter_school_year_and_time(env):
    rows = env.hub.store.rows()
    status, body = await env.get("/api/records", headers=VIEW)
    assert status == 200 and {i["id"] for i in body["items"]} == {r.id for r in rows}
    # Newest change first.
    assert [i["updated_at"] for i in body["items"]] == sorted((i["updated_at"] for i in body["items"]), reverse=True)

    status, body = await env.get("/api/quarantine", headers=VIEW)
    quarantined = [r for r in rows if r.state == lc.QUARANTINED]
    assert status == 200 and {i["id"] for i in body["items"]} == {r.id for r in quarantined}
    assert len(quarantined) == 2 and all(i["errors"] for i in body["items"])

    status, body = await env.get("/api/records", headers=VIEW, params={"state": "quarantined"})
    assert {i["id"] for i in body["items"]} == {r.id for r in quarantined}
    assert (await env.get("/api/records", headers=VIEW, params={"adapter": "school-b"}))[1]["items"] == []
    assert (await env.get("/api/records", headers=VIEW, params={"adapter": "school-a"}))[1]["count"] == len(rows)

    normalized = [r for r in rows if r.school_code]
    school, year = normalized[0].school_code, normalized[0].school_year
    _, body = await env.get("/api/records", headers=VIEW, params={"school": school, "year": year})
    assert {i["id"] for i in body["items"]} == {r.id for r in normalized
                                                 if r.school_code == school and r.school_year == year}

    # Time filters: everything changed after the epoch, nothing after tomorrow.
    assert (await env.get("/api/records", headers=VIEW, params={"since": "2000-01-01"}))[1]["count"] == len(rows)
    _, body = await env.get("/api/records", headers=VIEW, params={"since": "2999-01-01T00:00:00+07:00"})
    assert body["items"] == []
    _, body = await env.get("/api/records", headers=VIEW, params={"until": "2000-01-01T00:00:00Z"})
    assert body["items"] == []

    # Paging walks every record once.
    seen = []
    for offset in range(0, len(rows), 2):
        _, page = await env.get("/api/records", headers=VIEW, params={"limit": "2", "offset": str(offset)})
        assert page["limit"] == 2 and page["offset"] == offset
        seen += [i["id"] for i in page["items"]]
    assert sorted(seen) == sorted(r.id for r in rows)


@pytest.mark.parametrize("path, params, parameter", [
    ("/api/records", {"state": "lost"}, "state"),
    ("/api/records", {"school": "01\x00"}, "school"),
    ("/api/records", {"state": "signed:notary"}, "state"),
    ("/api/records", {"limit": "ten"}, "limit"),
    ("/api/records", {"limit": "1001"}, "limit"),
    ("/api/records", {"limit": "0"}, "limit"),
    ("/api/records", {"limit": "-5"}, "limit"),
    ("/api/records", {"limit": " 12"}, "limit"),
    ("/api/records", {"offset": "1.5"}, "offset"),
    ("/api/records", {"since": "yesterday"}, "since"),
    ("/api/records", {"until": "2025-02-30"}, "until"),
    ("/api/records", {"year": "2024"}, "year"),
    ("/api/records", {"stat": "failed"}, "stat"),
    ("/api/quarantine", {"state": "delivered"}, "state"),
    ("/api/dead-letters", {"limit": "100000"}, "limit"),
    ("/api/records/abc", {}, "id"),
    ("/api/records/99999999999999999999999", {}, "id"),
    ("/api/adapters", {"verbose": "1"}, "verbose"),
])
async def test_malformed_queries_are_400_naming_the_parameter(env, path, params, parameter):
    status, body = await env.get(path, headers=VIEW, params=params)
    assert status == 400, body
    assert body["parameter"] == parameter and body["error"].startswith(parameter + ":")


async def test_duplicate_parameters_are_refused(env):
    status, body = await env.get("/api/records?state=failed&state=delivered", headers=VIEW)
    assert status == 400 and body["parameter"] == "state"


# --- one record -------------------------------------------------------------------------------

async def test_one_record_with_its_history_by_store_id_or_record_id(env):
    row = env.hub.store.rows(state=lc.DEAD_LETTER)[0]
    status, body = await env.get(f"/api/records/{row.id}", headers=VIEW)
    assert status == 200
    assert body["record_id"] == row.record_id and body["state"] == lc.DEAD_LETTER and body["has_pdf"]
    assert [h["state"] for h in body["history"]] == [
        "received", "normalized", "rendered", *[f"signed:{r}" for r in ROLES], "dead_letter"]
    assert body["errors"] and body["replayable"]
    assert body["versions"] == [{"id": row.id, "version": 1, "event": "NEW", "state": lc.DEAD_LETTER}]
    # Where it stands at each destination (one route here).
    [there] = body["destinations"]
    assert (there["destination"], there["state"], there["receipt_id"]) == ("central", lc.DEAD_LETTER, None)
    assert there["last_error"]
    # The envelope's record_id finds the same record.
    assert (await env.get(f"/api/records/{row.record_id}", headers=VIEW))[1]["id"] == row.id
    assert (await env.get("/api/records/987654", headers=VIEW))[0] == 404
    assert (await env.get("/api/records/6f1d3f5c-43d1-4a56-9a4e-9d1c0e0b7a11", headers=VIEW))[0] == 404


async def test_viewers_see_no_personal_data_and_operators_do(env):
    row = env.hub.store.rows(state=lc.DEAD_LETTER)[0]
    student = row.normalized["student"]
    personal = [student["full_name"], student["student_code"], student["birth_date"]]
    if student.get("personal_id"):
        personal.append(student["personal_id"])
    async with env.http.get(f"/api/records/{row.id}", headers=VIEW) as resp:
        text = await resp.text()
    for value in personal:
        assert value not in text
    assert "student" not in json.loads(text) and "source_id" not in json.loads(text)
    # Lists never carry personal data, whoever asks.
    for headers in (VIEW, OP):
        async with env.http.get("/api/records", headers=headers, params={"limit": "1000"}) as resp:
            listing = await resp.text()
        for value in personal:
            assert value not in listing
    status, body = await env.get(f"/api/records/{row.id}", headers=OP)
    assert body["student"]["full_name"] == student["full_name"]
    assert body["student"]["personal_id"] == student.get("personal_id")
    assert body["source_id"] == row.source_id


async def test_viewer_error_lines_are_masked(env):
    # A quarantined record's error may quote what the vendor sent; a viewer sees it blanked.
    quarantined = env.hub.store.rows(state=lc.QUARANTINED)
    raw = {r.id: r.errors for r in quarantined}
    quoted = [q for errors in raw.values() for e in errors for q in re.findall(r"'([^']+)'", e)]
    # The central format no longer quotes values at all: the impossible birth date the vendor
    # sent is named by its field, never repeated.
    lines = [e for errors in raw.values() for e in errors]
    assert any(e.startswith("student.birth_date: impossible date") for e in lines), lines
    assert not any("30/02/2015" in e for e in lines)
    _, body = await env.get("/api/quarantine", headers=VIEW)
    for item in body["items"]:
        for shown, original in zip(item["errors"], raw[item["id"]], strict=True):
            assert shown.split(":")[0] == original.split(":")[0]  # the field is still named
            assert not any(q in shown for q in quoted), shown
    _, body = await env.get("/api/quarantine", headers=OP)
    assert {i["id"]: i["errors"] for i in body["items"]} == raw  # an operator sees what to fix
    # A 12-digit personal id anywhere in an error keeps only its last three digits.
    from hub.web.admin import public_error
    assert public_error("student.personal_id: 001204012345 is already used") == \
        "student.personal_id: *********345 is already used"


# --- PDFs -------------------------------------------------------------------------------------

async def test_operator_downloads_the_signed_pdf_and_it_is_audited(env):
    row = env.hub.store.rows(state=lc.DEAD_LETTER)[0]
    async with env.http.get(f"/api/records/{row.id}/pdf", headers=OP) as resp:
        assert resp.status == 200 and resp.content_type == "application/pdf"
        assert row.record_id in resp.headers["Content-Disposition"]
        pdf = await resp.read()
    assert pdf == row.pdf and pdf.startswith(b"%PDF")
    last = list(env.hub.store.audit_entries())[-1]
    assert (last["kind"], last["actor"], last["subject"]) == ("admin.pdf", "an.nguyen", row.record_id)
    quarantined = env.hub.store.rows(state=lc.QUARANTINED)[0]
    status, body = await env.get(f"/api/records/{quarantined.id}/pdf", headers=OP)
    assert status == 404 and "no PDF" in body["error"]
    assert (await env.get("/api/records/987654/pdf", headers=OP))[0] == 404


# --- acting -----------------------------------------------------------------------------------

@pytest.mark.parametrize("body, parameter", [
    ({}, "body"),
    ({"stage": "deliver"}, "body"),
    ({"ids": "1"}, "ids"),
    ({"ids": [True]}, "ids"),
    ({"ids": []}, "ids"),
    ({"record_ids": ["not-a-uuid"]}, "record_ids"),
    ({"state": "delivered"}, "state"),
    ({"state": "dead_letter", "stage": "sign"}, "stage"),
    ({"adapter": ""}, "adapter"),
    ({"adapters": "school-a"}, "adapters"),
    ([1, 2], "body"),
    # Values of the wrong JSON type are a 400 naming the field, never a 500.
    ({"state": {}}, "state"),
    ({"state": []}, "state"),
    ({"state": "dead_letter", "stage": {}}, "stage"),
    ([], "body"),
    # NUL, which PostgreSQL cannot store: named, never a database error.
    ({"record_ids": ["a\x00b"]}, "record_ids[0]"),
    ({"state": "dead_letter", "reason": "x\x00"}, "reason"),
])
async def test_malformed_replays_are_400_and_change_nothing(env, body, parameter):
    before = snapshot(env.hub)
    status, answer = await env.post("/api/replay", headers=OP, json=body)
    assert status == 400, answer
    assert answer["parameter"] == parameter
    assert snapshot(env.hub) == before


async def test_replay_needs_a_json_body(env):
    status, body = await env.post("/api/replay", headers=OP, data="state=dead_letter")
    assert status == 415 and body["parameter"] == "body"
    status, body = await env.post("/api/replay", headers={**OP, "Content-Type": "application/json"}, data="{oops")
    assert status == 400 and body["parameter"] == "body"


async def test_replay_quarantined_renormalises_and_is_audited_by_token_name(env):
    target = env.hub.store.rows(state=lc.QUARANTINED)[0]
    status, body = await env.post("/api/replay", headers=OP, json={"ids": [target.id]})
    assert status == 200 and body["moved"] == [{"id": target.id, "state": lc.RECEIVED}]
    # The adapter still cannot map it: it is quarantined again, with a replay in its history.
    await wait_for(lambda: env.hub.store.get(target.id).state == lc.QUARANTINED
                   and len(env.hub.store.history(target.id)) > 2)
    history = [h["state"] for h in env.hub.store.history(target.id)]
    assert history == ["received", "quarantined", "received", "quarantined"]
    entries = list(env.hub.store.audit_entries())
    assert any(e["kind"] == "replay" and e["actor"] == "an.nguyen" and e["subject"] == target.record_id
               for e in entries)
    assert entries[-1]["kind"] == "admin.replay" and entries[-1]["actor"] == "an.nguyen"


async def test_destinations_show_where_each_routes_records_stand(env):
    dead = env.hub.store.rows(state=lc.DEAD_LETTER)
    status, body = await env.get("/api/destinations", headers=VIEW)
    assert status == 200
    [central] = body["items"]
    assert (central["name"], central["type"], central["filters"]) == ("central", "ttdlqg", {})
    assert central["counts"]["dead_letter"] == len(dead) and central["counts"]["due"] == 0
    assert central["health"] is not None and central["circuit_open"] is False
    # A replay naming a destination that is not a route is refused, naming the field.
    status, body = await env.post("/api/replay", headers=OP,
                                  json={"state": "dead_letter", "stage": "deliver", "destination": "nowhere"})
    assert status == 400 and body["parameter"] == "destination"
    assert env.hub.store.rows(state=lc.DEAD_LETTER) == dead


async def test_dead_letters_replayed_for_delivery_arrive_once_without_resigning(env):
    dead = env.hub.store.rows(state=lc.DEAD_LETTER)
    status, body = await env.get("/api/dead-letters", headers=VIEW)
    assert status == 200 and {i["id"] for i in body["items"]} == {r.id for r in dead}
    assert all(i["errors"] for i in body["items"])  # the last error is kept
    pdfs = {r.id: r.pdf for r in dead}

    status, body = await env.post("/api/replay", headers=OP,
                                  json={"state": "dead_letter", "stage": "deliver", "destination": "central"})
    assert status == 200 and body["matched"] == len(dead) and body["skipped"] == 0
    assert sorted(m["id"] for m in body["moved"]) == sorted(pdfs)
    assert all(m["state"] == "signed:school_seal" for m in body["moved"])
    await wait_for(lambda: all(env.hub.store.get(pk).state == lc.DELIVERED for pk in pdfs))
    assert env.central.accepted() == {r.record_id: 1 for r in dead}
    # Re-delivered, not re-signed: the central store holds the very PDF that was dead-lettered.
    for r in dead:
        assert env.central.documents[(r.record_id, 1)] == pdfs[r.id]

    # Replaying what is delivered sends nothing.
    submissions = env.central.counters.submissions
    status, body = await env.post("/api/replay", headers=OP,
                                  json={"ids": sorted(pdfs), "stage": "deliver"})
    assert status == 200 and body["moved"] == [] and body["skipped"] == len(pdfs)
    await asyncio.sleep(0.3)
    assert env.central.counters.submissions == submissions


async def test_pause_and_resume_an_adapter(env):
    status, body = await env.post("/api/adapters/no-such-school/pause", headers=OP)
    assert status == 404 and body["parameter"] == "name"
    status, body = await env.post("/api/adapters/school-a/pause", headers=OP)
    assert status == 200 and body == {"adapter": "school-a", "paused": True}
    assert env.hub.store.paused() == {"school-a"}
    _, listing = await env.get("/api/adapters", headers=VIEW)
    [adapter] = listing["items"]
    assert adapter["name"] == "school-a" and adapter["paused"] and adapter["type"] == "vnpt"
    assert adapter["last_sync"] and adapter["health"]["ok"]
    last = list(env.hub.store.audit_entries())[-1]
    assert (last["kind"], last["actor"], last["subject"]) == ("pause", "an.nguyen", "school-a")
    status, body = await env.post("/api/adapters/school-a/resume", headers=OP)
    assert status == 200 and not body["paused"] and env.hub.store.paused() == set()


async def test_no_secret_appears_in_any_response(env):
    rows = env.hub.store.rows()
    paths = ["/", "/?lang=en", "/metrics", "/openapi.json", "/api/records", "/api/quarantine",
             "/api/dead-letters", "/api/adapters", *[f"/api/records/{r.id}" for r in rows]]
    # A health detail that quotes a secret (as a careless plugin might) is scrubbed, not shown;
    # the health cache is marked fresh so no check overwrites it during the test.
    env.hub.metrics.health.checked_at = time.monotonic()
    env.hub.status["school-a"].health = Health(
        False, f"login refused for {env.vendor.client_secret} and token={env.central.token}")
    try:
        for headers in (OP, VIEW):
            for path in paths:
                async with env.http.get(path, headers=headers) as resp:
                    text = await resp.text()
                    assert resp.status == 200, path
                    if path.startswith("/api/adapters"):
                        assert "login refused for ***" in text
                for secret in env.secrets():
                    assert secret not in text, (path, secret)
            for path in ("/api/records/1/pdf", "/api/records/abc"):
                async with env.http.get(path, headers=headers) as resp:
                    raw = await resp.read()
                for secret in env.secrets():
                    assert secret.encode() not in raw
    finally:
        env.hub.metrics.health.checked_at = None  # the next page load checks for real


# --- schemathesis -----------------------------------------------------------------------------

def _fuzz(base_url: str, doc: dict[str, Any]) -> int:
    """Every operation of the document, authenticated as an operator, with bounded examples:
    schemathesis's default checks (no 5xx; status codes, content types and bodies as
    documented; schema-valid input accepted). Raises on the first failing operation; returns
    the number of requests sent."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings

    schema = schemathesis.openapi.from_dict(doc)
    sent = 0
    for result in schema.get_all_operations():
        operation = result.ok()

        @settings(max_examples=20, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def run(case):
            nonlocal sent
            response = case.call_and_validate(base_url=base_url, headers=OP, timeout=10)
            sent += 1
            assert response.status_code < 500, (case.method, case.formatted_path, case.query, case.body)

        run()
    return sent


async def test_schemathesis_finds_no_server_error(env):
    _, doc = await env.get("/openapi.json")
    started = time.monotonic()
    sent = await asyncio.to_thread(_fuzz, env.url, doc)
    assert sent >= 9 * 5  # every operation was exercised, not skipped
    assert time.monotonic() - started < 40


async def test_cancel_with_a_reason_reaches_the_destination_and_a_correction_is_the_next_version(pki, tmp_path):
    async with serve_hub(tmp_path / "data", pki, records=2, invalid=0, poll_interval=1) as env:
        target = next(r for r in env.hub.store.rows() if r.state == lc.DELIVERED)
        path = f"/api/records/{target.id}/cancel"
        reason = "Nhập nhầm học sinh của lớp khác"
        assert (await env.post(path, headers=VIEW, json={"reason": reason}))[0] == 403
        for body, field in (({}, "reason"), ({"reason": "x"}, "reason"), ({"reason": "     "}, "reason"),
                            ({"reason": "a\nb c d e"}, "reason"), ({"reason": reason, "why": 1}, "why"),
                            ({"reason": True}, "reason")):
            status, answer = await env.post(path, headers=OP, json=body)
            assert status == 400 and answer["parameter"] == field, (body, answer)
        status, answer = await env.post(path, headers=OP, json={"reason": reason})
        assert status == 200 and (answer["version"], answer["event"]) == (2, "CANCEL"), answer
        await wait_for(lambda: (env.central.state(target.record_id) or {}).get("cancelled") is True)
        assert env.central.state(target.record_id)["highest_version"] == 2
        assert env.central.state(target.record_id)["reason"] == reason  # the destination is told why
        await wait_for(lambda: env.hub.store.get(answer["id"]).state == lc.DELIVERED)
        cancelled = env.hub.store.get(answer["id"])
        assert cancelled.reason == reason
        assert f"CANCEL by an.nguyen: {reason}" in env.hub.store.history(cancelled.id)[0]["detail"]
        audit = [e for e in env.hub.store.audit_entries() if e["kind"] == "cancel"]
        assert audit[-1]["actor"] == "an.nguyen" and audit[-1]["subject"] == target.record_id
        assert (await env.post(path, headers=OP, json={"reason": reason}))[0] == 409  # already cancelled
        # The school sends the transcript again (the same content, a new timestamp): it is in
        # force again as the next version, never taken for unchanged.
        assert target.source_id in [env.vendor.update(i, change=lambda record: None) for i in range(2)]
        await wait_for(lambda: env.central.state(target.record_id)["highest_version"] == 3)
        assert env.central.state(target.record_id)["cancelled"] is False
        def versions():
            return [(r.version, r.event, r.state) for r in env.hub.store.rows() if r.record_id == target.record_id]
        await wait_for(lambda: versions()[-1][2] == lc.DELIVERED)
        assert versions() == [(1, "NEW", lc.DELIVERED), (2, "CANCEL", lc.DELIVERED), (3, "UPDATE", lc.DELIVERED)]


async def test_cli_cancel_needs_a_reason_and_a_known_record(pki, tmp_path):
    import subprocess
    import sys

    import yaml

    config = tmp_path / "hub.yaml"
    config.write_text(yaml.safe_dump({
        "data_dir": str(tmp_path / "data"),
        "adapters": [{"name": "school-a", "type": "push", "settings": {"secret": "s" * 32}}],
        "destination": {"name": "central", "type": "ttdlqg", "settings": {"base_url": "http://127.0.0.1:9", "token": "t"}},
        "signers": [{"name": "keys", "type": "pkcs12", "settings": {"directory": str(pki[0]), "password": PASSWORD}}],
        "signing": {"steps": [{"role": r, "signer": "keys"} for r in ROLES]},
    }))
    from hub.contracts import RawRecord
    from hub.store import open_store

    store = open_store(tmp_path / "data" / "hub.sqlite3")
    [pk] = store.receive("school-a", [RawRecord("s-1", b"{}")])
    record_id = store.get(pk).record_id
    store.close()

    def cancel(*args):
        return subprocess.run([sys.executable, "-m", "hub.cli", "cancel", "--config", str(config), *args],
                              capture_output=True, text=True, timeout=120)

    short = cancel("--record-id", record_id, "--reason", " x ")
    assert short.returncode == 2 and "--reason" in short.stderr and "Traceback" not in short.stderr
    unknown = cancel("--record-id", "nope", "--reason", "Sai lớp của học sinh")
    assert unknown.returncode == 1 and "no record 'nope'" in unknown.stderr
    done = cancel("--record-id", record_id, "--reason", "Sai lớp của học sinh", "--actor", "binh.tran")
    assert done.returncode == 0 and "version 2 CANCEL" in done.stdout, done.stderr
    again = cancel("--record-id", record_id, "--reason", "Sai lớp của học sinh")
    assert again.returncode == 1 and "already cancelled" in again.stderr
    store = open_store(tmp_path / "data" / "hub.sqlite3")
    [entry] = [e for e in store.audit_entries() if e["kind"] == "cancel"]
    assert entry["actor"] == "cli:binh.tran" and entry["subject"] == record_id
    store.close()
