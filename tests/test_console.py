"""The operators' console in a real browser: Playwright driving Debian's Chromium against a hub
served on loopback with its simulators.

The module's hub has delivered four transcripts and quarantined two (a malformed personal id and
an impossible birth date). It pulls every second, so a record the school fixes at the vendor
arrives as a new version. Tests that change state say so.
"""

from __future__ import annotations

import datetime as dt
import io
import os
import shutil
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from test_admin import OPERATOR_TOKEN, VIEWER_TOKEN, serve_hub, wait_for

from hub import identifiers
from hub import lifecycle as lc
from hub.kit.synthetic import transcript

playwright_api = pytest.importorskip("playwright.async_api", reason="pip install -e '.[test]' installs playwright")

CHROMIUM = "/usr/bin/chromium"
pytestmark = [
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian's chromium is not installed (apt-get install "
                                                           "chromium; .ci/run installs it)"),
]
DELIVERED, QUARANTINED, SEED = 4, 2, 7
PERSONAL_ID_INDEX, BIRTH_DATE_INDEX = 4, 5   # the simulator's broken records follow the valid ones
DOCS = Path(__file__).resolve().parent.parent / "docs"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(tmp_path_factory, pki):
    async with serve_hub(tmp_path_factory.mktemp("console") / "data", pki, records=DELIVERED,
                         invalid=QUARANTINED, poll_interval=1) as running:
        yield running


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser():
    async with playwright_api.async_playwright() as p:
        chromium = await p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--no-first-run"])
        yield chromium
        await chromium.close()


async def signed_in(browser, env, token: str, **context_options):
    """A browser context signed in with ``token``, on the console's overview."""
    context = await browser.new_context(base_url=env.url, accept_downloads=True, **context_options)
    page = await context.new_page()
    await page.goto("/console")
    assert page.url.endswith("/console/login")  # not signed in yet: sent to the sign-in page
    await page.fill("#token", token)
    await page.click("#login-submit")
    await page.wait_for_url("**/console")
    return context, page


def quarantined_by_kind(env) -> dict[str, object]:
    rows = env.hub.store.rows(state=lc.QUARANTINED)
    return {("birth_date" if any("birth_date" in e for e in r.errors) else "personal_id"): r for r in rows}


async def test_a_wrong_token_is_refused_and_nothing_is_shown(browser, env):
    context = await browser.new_context(base_url=env.url)
    page = await context.new_page()
    await page.goto("/console")
    await page.fill("#token", "not-a-configured-token-123")
    await page.click("#login-submit")
    assert await page.locator("#login-failed").inner_text() == "Mã truy cập không đúng."
    await page.goto("/console")
    assert page.url.endswith("/console/login")
    [cookie] = [c for c in await context.cookies() if c["name"] == "hocba_console"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/console"
    assert not cookie["secure"]  # plain http on loopback; https sets Secure
    await context.close()


async def test_a_post_without_the_csrf_token_is_refused(browser, env):
    context, page = await signed_in(browser, env, OPERATOR_TOKEN)
    cookie = {c["name"]: c["value"] for c in await context.cookies()}
    csrf = await page.locator("input[name=csrf]").first.get_attribute("value")
    target = quarantined_by_kind(env)["personal_id"]
    audit = len(list(env.hub.store.audit_entries()))
    async with aiohttp.ClientSession(env.url, cookies=cookie) as http:
        for form in ({"id": str(target.id)}, {"id": str(target.id), "csrf": "forged" + csrf[6:]}):
            async with http.post("/console/replay", data=form) as resp:
                assert resp.status == 403
                assert "Biểu mẫu đã hết hạn hoặc không hợp lệ" in await resp.text()
        # Sign-in itself needs the form's CSRF token too.
        async with aiohttp.ClientSession(env.url) as fresh:
            async with fresh.post("/console/login", data={"token": OPERATOR_TOKEN}) as resp:
                assert resp.status == 403
    assert env.hub.store.get(target.id).state == lc.QUARANTINED
    assert len(list(env.hub.store.audit_entries())) == audit
    await context.close()


async def test_filter_by_school_open_a_record_and_download_the_schools_report(browser, env):
    context, page = await signed_in(browser, env, OPERATOR_TOKEN)
    login = list(env.hub.store.audit_entries())[-1]
    assert (login["kind"], login["actor"]) == ("console.login", "an.nguyen")
    rows = env.hub.store.rows()
    per_school: dict[str, int] = {}
    for r in rows:
        per_school[r.school_code] = per_school.get(r.school_code, 0) + 1
    # Quarantined records carry the school their payload names: every record has one.
    assert None not in per_school
    for code, n in per_school.items():
        assert await page.locator(f'#counts tr[data-key="{code}"] td').last.inner_text() == "XLSX"
        assert await page.locator(f'#counts tr[data-key="{code}"] td b').inner_text() == str(n)

    broken = quarantined_by_kind(env)["birth_date"]
    school = broken.school_code
    await page.select_option("#school", school)
    await page.click("#filter-submit")
    await page.wait_for_url(f"**/console?school={school}")
    classes = page.locator("#counts tr[data-key]")
    school_rows = [r for r in rows if r.school_code == school]
    assert await classes.count() == len({(r.normalized or {}).get("class_name") for r in school_rows})
    assert await page.locator('#counts tr.totals td[data-col="quarantined"]').inner_text() == str(
        sum(r.state == lc.QUARANTINED for r in school_rows))
    problem = page.locator(f'#problems tr[data-id="{broken.id}"]')
    assert "student.birth_date" in await problem.inner_text()
    assert "Ngày sinh sai" in await problem.inner_text()

    await problem.locator("a.record-link").click()
    await page.wait_for_url(f"**/console/records/{broken.id}")
    history = await page.locator("#history tr[data-state]").evaluate_all("rows => rows.map(r => r.dataset.state)")
    assert history == [h["state"] for h in env.hub.store.history(broken.id)] == ["received", "quarantined"]
    assert "cách ly" in await page.locator("#history").inner_text()
    assert "Input should" not in await page.content()  # plain words, not the validator's
    student = transcript(BIRTH_DATE_INDEX, SEED)["student"]
    # Never a central record: its class and student code as the adapter maps them, no name.
    assert await page.locator("#student-code").inner_text() == student["student_code"]
    assert await page.locator("#student-name").count() == 0
    delivered = next(r for r in school_rows if r.state == lc.DELIVERED)
    await page.goto(f"/console/records/{delivered.id}")
    name = delivered.normalized["student"]["full_name"]
    assert await page.locator("#student-name").inner_text() == name  # an operator sees it

    await page.goto(f"/console?school={school}")
    async with page.expect_download() as info:
        await page.click("#report")
    download = await info.value
    body = Path(await download.path()).read_bytes()
    from openpyxl import load_workbook

    sheet = load_workbook(io.BytesIO(body)).active
    values = [[c for c in row] for row in sheet.iter_rows(min_row=3, values_only=True)]
    assert school in sheet["A1"].value
    quarantined_here = [r for r in school_rows if r.state == lc.QUARANTINED]
    assert len(values) == sum(len(r.errors) for r in quarantined_here) >= 1
    line = next(v for v in values if v[6] == broken.record_id)
    assert line[1] == student["student_code"] and line[3] == "student.birth_date"
    assert line[4].startswith("Ngày sinh sai")
    text = " ".join(str(v) for row in values for v in row)
    for personal in (student["full_name"], "2015-02-30", "30/02/2015", str(student.get("personal_id"))):
        assert personal not in text
    report = list(env.hub.store.audit_entries())[-1]
    assert (report["kind"], report["actor"], report["subject"]) == ("console.school_report", "an.nguyen", school)
    await context.close()


async def test_a_viewer_sees_no_names_and_cannot_replay(browser, env):
    context, page = await signed_in(browser, env, VIEWER_TOKEN)
    target = quarantined_by_kind(env)["personal_id"]
    await page.goto(f"/console/records/{target.id}")
    assert await page.locator("#replay-form").count() == 0 and await page.locator("#student-name").count() == 0
    assert transcript(PERSONAL_ID_INDEX, SEED)["student"]["full_name"] not in await page.content()
    assert await page.locator("button.pause").count() == 0
    csrf = await page.locator("input[name=csrf]").first.get_attribute("value")
    cookie = {c["name"]: c["value"] for c in await context.cookies()}
    async with aiohttp.ClientSession(env.url, cookies=cookie) as http:
        async with http.post("/console/replay", data={"id": str(target.id), "csrf": csrf}) as resp:
            assert resp.status == 403 and "cần quyền điều hành viên" in await resp.text()
        async with http.post("/console/adapters/school-a/pause", data={"csrf": csrf}) as resp:
            assert resp.status == 403
    assert env.hub.store.get(target.id).state == lc.QUARANTINED and env.hub.store.paused() == set()
    await context.close()


async def test_pause_and_resume_an_adapter(browser, env):
    context, page = await signed_in(browser, env, OPERATOR_TOKEN)
    await page.click('tr[data-adapter="school-a"] button.pause')
    await page.wait_for_url("**/console?done=pause&name=school-a")
    assert env.hub.store.paused() == {"school-a"}
    assert "Đã tạm dừng school-a." == await page.locator("#done").inner_text()
    entry = list(env.hub.store.audit_entries())[-1]
    assert (entry["kind"], entry["actor"], entry["subject"]) == ("pause", "an.nguyen", "school-a")
    await page.click('tr[data-adapter="school-a"] button.resume')
    await page.wait_for_url("**/console?done=resume&name=school-a")
    assert env.hub.store.paused() == set()
    await context.close()


async def test_a_schools_fix_takes_the_old_version_off_the_list_and_a_replay_is_audited(browser, env):
    """Changes state: the school corrects the personal id at the vendor; the corrected version
    arrives and is delivered, and the broken version is superseded: it leaves the problems list
    and can no longer be replayed (its reason stays in its history). The operator then replays
    the other quarantined record, which the console shows and audits (its stored payload is
    still the broken one, so it is quarantined again)."""
    target = quarantined_by_kind(env)["personal_id"]
    other = quarantined_by_kind(env)["birth_date"]
    context, page = await signed_in(browser, env, OPERATOR_TOKEN)
    assert await page.locator(f'#problems tr[data-id="{target.id}"]').count() == 1

    def fix(central):   # a number with the citizen-id structure that fits this student
        student = central["student"]
        student["personal_id"] = identifiers.make("001", int(student["gender"]),
                                                  dt.date.fromisoformat(student["birth_date"]), 12345)

    source_id = env.vendor.update(PERSONAL_ID_INDEX, fix)
    assert source_id == target.source_id
    await wait_for(lambda: any(r.record_id == target.record_id and r.state == lc.DELIVERED
                               for r in env.hub.store.rows()))
    assert env.hub.store.get(target.id).state == lc.SUPERSEDED
    await page.goto("/console?lang=en")
    assert await page.locator(f'#problems tr[data-id="{target.id}"]').count() == 0
    assert await page.locator(f'#problems tr[data-id="{other.id}"]').count() == 1
    await page.goto(f"/console/records/{target.id}?lang=en")
    versions = await page.locator("#versions li").all_inner_texts()
    assert len(versions) == 2 and "superseded" in versions[0] and "delivered" in versions[1]
    history = await page.locator("#history tr[data-state]").evaluate_all("rows => rows.map(r => r.dataset.state)")
    assert history == ["received", "quarantined", "superseded"]
    assert "version 2 received" in await page.locator("#history").inner_text()
    assert await page.locator("#replay").count() == 0

    await page.goto(f"/console/records/{other.id}?lang=en")
    await page.select_option("#stage", "normalize")
    await page.click("#replay")
    await page.wait_for_url(f"**/console/records/{other.id}?lang=en&done=replay&n=1")
    assert await page.locator("#done").inner_text() == "Replayed 1 record(s)."
    await wait_for(lambda: len(env.hub.store.history(other.id)) == 4
                   and env.hub.store.get(other.id).state == lc.QUARANTINED)
    await page.reload()
    assert await page.locator("#history tr[data-state]").count() == 4
    assert "replay (normalize) by an.nguyen" in await page.locator("#history").inner_text()
    entries = list(env.hub.store.audit_entries())
    assert any(e["kind"] == "replay" and e["actor"] == "an.nguyen" and e["subject"] == other.record_id
               for e in entries)
    assert entries[-1]["kind"] == "console.replay" and entries[-1]["actor"] == "an.nguyen"
    await context.close()


async def test_an_operator_cancels_a_transcript_with_a_reason(browser, env):
    """Changes state: an operator cancels a delivered transcript from its page; the cancel is a
    new version, signed and delivered to the central store with the reason, and audited."""
    target = next(r for r in env.hub.store.rows() if r.state == lc.DELIVERED and r.event != "CANCEL"
                  and not any(o.record_id == r.record_id and o.version > r.version for o in env.hub.store.rows()))
    context, page = await signed_in(browser, env, OPERATOR_TOKEN)
    await page.goto(f"/console/records/{target.id}")
    reason = "Học sinh chuyển trường, hồ sơ gửi nhầm"
    await page.fill("#reason", reason)
    await page.click("#cancel")
    await page.wait_for_url("**/console/records/*done=cancel*")
    assert "Đã huỷ" in await page.locator("#done").inner_text()
    new_id = int(page.url.split("/console/records/")[1].split("?")[0])
    new = env.hub.store.get(new_id)
    assert (new.record_id, new.event, new.version, new.reason) == (target.record_id, "CANCEL", target.version + 1, reason)
    await wait_for(lambda: env.hub.store.get(new_id).state == lc.DELIVERED)
    assert env.central.state(target.record_id)["cancelled"] is True
    await page.reload()
    assert reason in await page.locator("#history").inner_text()
    assert await page.locator("#cancel").count() == 0  # a cancel is not cancelled again
    entry = [e for e in env.hub.store.audit_entries() if e["kind"] == "cancel"][-1]
    assert (entry["actor"], entry["subject"]) == ("an.nguyen", target.record_id)
    await context.close()


async def test_screenshots_at_phone_and_desktop_widths(browser, env, tmp_path):
    """Kept in docs/ for people to look at; checked here only for being real renders."""
    school = sorted(r.school_code for r in env.hub.store.rows() if r.school_code)[0]
    for name, size, mobile in (("console-phone.png", {"width": 390, "height": 844}, True),
                               ("console-desktop.png", {"width": 1366, "height": 900}, False)):
        context, page = await signed_in(browser, env, OPERATOR_TOKEN, viewport=size, is_mobile=mobile,
                                        device_scale_factor=1)
        await page.goto("/console")
        # The stylesheet arrives as written (a quote escaped to &#34; would void its rules).
        assert "Noto Sans" in await page.evaluate("getComputedStyle(document.body).fontFamily")
        # Nothing sticks out sideways on a phone: the page is as wide as the screen.
        assert await page.evaluate("document.documentElement.scrollWidth") <= size["width"]
        shot = tmp_path / name
        await page.screenshot(path=str(shot))
        from PIL import Image

        with Image.open(shot) as image:
            assert image.size == (size["width"], size["height"])
            assert len(image.convert("RGB").getcolors(maxcolors=1 << 20)) > 50
        if os.environ.get("HOCBA_HUB_SAVE_SCREENSHOTS"):
            shutil.copy(shot, DOCS / name)
        await page.goto(f"/console?school={school}")
        await page.screenshot(path=str(tmp_path / f"school-{name}"), full_page=True)
        if os.environ.get("HOCBA_HUB_SAVE_SCREENSHOTS"):
            shutil.copy(tmp_path / f"school-{name}", tmp_path.parent / f"school-{name}")
        await context.close()


async def test_an_operator_sees_per_class_who_has_not_signed_and_a_viewer_does_not(browser, pki, tmp_path):
    """The console of a hub that has not started working (nothing signs meanwhile) over a store
    holding two transcripts in the signing stage: one where only the first subject teacher has
    signed, one the teachers have finished and the principal has not."""
    from test_xml import FMT, STAGES, record, sign_all, signer

    from hub.catalogue import name_of
    from hub.config import parse_config
    from hub.contracts import RawRecord
    from hub.documents.render import render_pdf
    from hub.documents.xmldsig import sign_slots
    from hub.engine.pipeline import Hub
    from hub.web.app import create_app
    from hub.web.server import serving
    from test_admin import PASSWORD, TOKENS

    config = parse_config({
        "data_dir": str(tmp_path / "data"), "workers": {"processes": 1}, "admin": {"tokens": TOKENS},
        "documents": ["xml", "pdf"],
        "adapters": [{"name": "school-a", "type": "push", "settings": {"secret": "s" * 32}}],
        "destination": {"name": "central", "type": "ttdlqg",
                        "settings": {"base_url": "http://127.0.0.1:9", "token": "unused"}},
        "signers": [{"name": "keys", "type": "pkcs12", "settings": {"directory": str(pki[0]), "password": PASSWORD}}],
        "signing": {"steps": [{"role": r, "signer": "keys"} for r in STAGES]},
    })
    keys = signer(pki[0])
    await keys.open()
    first, second = record(3), record(7)
    first_doc = FMT.build(first)
    one_teacher = [s for s in FMT.slots(first_doc) if s.role == "subject_teacher"][:1]
    first_doc = await sign_slots(first_doc, one_teacher, keys)
    second_doc = await sign_all(FMT.build(second), keys, STAGES[:2])
    hub = Hub(config)
    for rec, doc, state in ((first, first_doc, lc.RENDERED), (second, second_doc, lc.signed("homeroom_teacher"))):
        [pk] = hub.store.receive("school-a", [RawRecord(rec.record_id, b"{}")])
        hub.store.advance(pk, lc.RECEIVED, lc.NORMALIZED, school_code=rec.school_code,
                          normalized=rec.model_dump(mode="json"))
        hub.store.advance(pk, lc.NORMALIZED, lc.RENDERED, pdf=render_pdf(rec), xml=doc)
        if state != lc.RENDERED:
            hub.store.advance(pk, lc.RENDERED, lc.signed("subject_teacher"), xml=doc)
            hub.store.advance(pk, lc.signed("subject_teacher"), state, xml=doc)
    try:
        async with serving(create_app(hub)) as base:
            served = type("Served", (), {"url": base})
            context, page = await signed_in(browser, served, OPERATOR_TOKEN)
            for rec in (first, second):
                await page.goto(f"/console?school={rec.school_code}")
                table = page.locator(f'#unsigned table[data-class="{rec.class_name}"]')
                text = await table.inner_text()
                if rec is first:
                    left = [s for s in rec.subjects if s.teacher_name][1:]
                    assert left and all(s.teacher_name in text and name_of(s.subject_code) in text for s in left)
                    assert "GVBM" in text
                else:
                    assert rec.signatories.principal_name in text and "Hiệu trưởng" in text
                    assert all(s.teacher_name not in text for s in rec.subjects if s.teacher_name)
            await context.close()
            context, page = await signed_in(browser, served, VIEWER_TOKEN)
            await page.goto(f"/console?school={first.school_code}")
            assert await page.locator("#unsigned").count() == 0  # it names teachers: operators only
            assert first.subjects[1].teacher_name not in await page.content()
            await context.close()
    finally:
        await hub.stop(drain_timeout=1)
