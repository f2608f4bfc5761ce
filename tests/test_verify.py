"""The issuance registry, the QR code on the PDF and the public verification page (/verify).

One hub delivers three transcripts with ``signing.trust`` and ``verify.public_base_url`` set. The
QR code is read back from a signed page by zbarimg; codes, uploaded PDFs and XML, a tampered
file and an unknown code are checked over real HTTP and in Chromium (Playwright, Debian's
Chromium); a recalled record reads as recalled; fifty uploads from ten clients are all answered.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from conftest import ROLES
from test_admin import OP, serve_hub, wait_for
from test_status_page import personal_values

from hub import lifecycle as lc
from hub.contracts import RawRecord
from hub.store.audit import verify_chain
from hub.store.issuance import format_code

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import verify_load  # noqa: E402

pytestmark = pytest.mark.asyncio(loop_scope="module")

BASE = "https://hocba.sogd.example.vn/verify"
CHROMIUM = shutil.which("chromium")
ZBARIMG = shutil.which("zbarimg")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(tmp_path_factory, pki):
    extra = {"signing": {"steps": [{"role": r, "signer": "keys"} for r in ROLES], "trust": [str(pki[1])]},
             "verify": {"public_base_url": BASE, "burst": 30, "rate_per_minute": 60}}
    async with serve_hub(tmp_path_factory.mktemp("verify") / "data", pki, records=3, invalid=0,
                         extra=extra) as running:
        yield running


def delivered(env):
    rows = [r for r in env.hub.store.rows(state=lc.DELIVERED) if r.version == 1]
    assert len(rows) == 3
    return rows


async def api(env, path: str, **kw):
    method = "POST" if "data" in kw else "GET"
    async with env.http.request(method, path, **kw) as resp:
        return resp.status, await resp.json(), resp.headers


# --- registry and QR --------------------------------------------------------------------------

async def test_every_delivered_document_is_issued_under_its_versions_code(env):
    for row in delivered(env):
        assert row.verify_code and len(row.verify_code) == 16
        entries = env.hub.store.issued(code=row.verify_code)
        assert {(e.document, e.recipient, e.actor) for e in entries} == {("pdf", "central", "hub"),
                                                                         ("xml", "central", "hub")}
        by_doc = {e.document: e for e in entries}
        assert by_doc["pdf"].sha256 == hashlib.sha256(row.pdf).hexdigest()
        assert by_doc["xml"].sha256 == hashlib.sha256(row.xml).hexdigest()
        assert {(e.record_id, e.version) for e in entries} == {(row.record_id, row.version)}
    assert len({r.verify_code for r in delivered(env)}) == 3


async def test_admin_download_is_an_issued_copy_in_the_audit_chain(env):
    row = delivered(env)[0]
    async with env.http.get(f"/api/records/{row.id}/pdf", params={"to": "Đại học Bách khoa", "purpose": "tuyển sinh"},
                            headers=OP) as resp:
        assert resp.status == 200 and await resp.read() == row.pdf
    last = env.hub.store.issued(code=row.verify_code)[-1]
    assert (last.document, last.actor, last.recipient, last.purpose) == ("pdf", "an.nguyen", "Đại học Bách khoa",
                                                                        "tuyển sinh")
    entries = list(env.hub.store.audit_entries())
    assert entries[-1]["kind"] == "admin.pdf" and json.loads(entries[-1]["detail"])["issuance"] == last.id
    assert verify_chain(entries).ok
    async with env.http.get(f"/api/records/{row.id}/pdf", params={"whom": "x"}, headers=OP) as resp:
        assert resp.status == 400


@pytest.mark.skipif(ZBARIMG is None, reason="zbarimg is not installed (Debian: zbar-tools; .ci/run installs it)")
async def test_qr_code_on_the_signed_pdf_carries_the_verification_url(env, tmp_path):
    row = delivered(env)[0]
    (tmp_path / "t.pdf").write_bytes(row.pdf)
    subprocess.run(["pdftoppm", "-r", "150", "-png", str(tmp_path / "t.pdf"), str(tmp_path / "page")], check=True)
    found = []
    for page in sorted(tmp_path.glob("page*.png")):
        out = subprocess.run([ZBARIMG, "-q", "--raw", str(page)], capture_output=True, text=True)
        found += out.stdout.split()
    assert found == [f"{BASE}/{row.verify_code}"]
    # Drawn before the first signature: every signature (pdfsig, independently) covers it.
    sig = subprocess.run(["pdfsig", str(tmp_path / "t.pdf")], capture_output=True, text=True).stdout
    assert sig.count("Signature is Valid.") == 3


# --- the JSON API -----------------------------------------------------------------------------

async def test_code_gives_valid_signers_school_year_and_current(env):
    row = delivered(env)[0]
    status, body, headers = await api(env, f"/verify/api/code/{format_code(row.verify_code).lower()}")
    assert status == 200, body
    assert body["verdict"] == "valid" and body["valid"] and body["trust_checked"] and body["reasons"] == []
    assert body["status"] == {"key": "current", "latest_version": 1}
    assert [s["role"] for s in body["signatures"]] == ROLES and all(s["ok"] for s in body["signatures"])
    record = row.normalized
    assert body["signatures"][0]["signer"] == record["signatories"]["homeroom_teacher_name"]
    assert all(s["time"].endswith("+07:00") for s in body["signatures"])
    assert body["about"]["school_name"] == record["school_name"]
    assert body["about"]["school_year"] == record["school_year"]
    assert headers["Cache-Control"] == "no-store"


async def test_uploaded_pdf_and_xml_are_verified_and_matched_to_the_registry(env):
    row = delivered(env)[1]
    for body_bytes, kind, ctype in ((row.pdf, "pdf", "application/pdf"), (row.xml, "xml", "application/xml")):
        status, body, _ = await api(env, "/verify/api/document", data=body_bytes, headers={"Content-Type": ctype})
        assert status == 200 and body["verdict"] == "valid", body
        assert body["document"] == kind and body["status"]["key"] == "current"
        assert body["issued_copy"] is True and body["code"] == format_code(row.verify_code)
    form = aiohttp.FormData()
    form.add_field("file", row.pdf, filename="hocba.pdf", content_type="application/pdf")
    status, body, _ = await api(env, "/verify/api/document", data=form)
    assert status == 200 and body["verdict"] == "valid"


async def test_tampered_unknown_oversized_and_garbage_give_clear_answers(env):
    row = delivered(env)[2]
    tampered = row.pdf.replace(b"841.89]", b"841.88]", 1)
    assert tampered != row.pdf
    status, body, _ = await api(env, "/verify/api/document", data=tampered, headers={"Content-Type": "application/pdf"})
    assert status == 200 and body["verdict"] == "invalid" and body["reasons"], body
    xml = row.xml.replace(row.normalized["school_year"].encode(), b"2019-2020", 1)
    status, body, _ = await api(env, "/verify/api/document", data=xml, headers={"Content-Type": "application/xml"})
    assert status == 200 and body["verdict"] == "invalid" and body["reasons"]
    status, body, _ = await api(env, "/verify/api/code/AAAAAAAAAAAAAAAA")
    assert status == 404 and body["verdict"] == "unknown_code"
    status, body, _ = await api(env, "/verify/api/code/not-a-code")
    assert status == 400 and body["verdict"] == "bad_code"
    status, body, _ = await api(env, "/verify/api/document", data=b"<!DOCTYPE x [<!ENTITY e SYSTEM 'file:///etc/passwd'>]><x>&e;</x>",
                                headers={"Content-Type": "application/xml"})
    assert status == 200 and body["verdict"] == "invalid" and "passwd" not in json.dumps(body)
    big = b"%PDF-1.7\n" + b"0" * (5 * 1024 * 1024)
    async with env.http.post("/verify/api/document", data=big, headers={"Content-Type": "application/pdf"}) as resp:
        assert resp.status == 413


async def test_no_personal_data_in_any_answer(env):
    rows = delivered(env)
    values = [v for v in personal_values() if any(v in json.dumps(r.normalized, ensure_ascii=False) for r in rows)]
    assert values
    answers = []
    for row in rows:
        answers.append(json.dumps((await api(env, f"/verify/api/code/{row.verify_code}"))[1], ensure_ascii=False))
        async with env.http.get(f"/verify/{row.verify_code}") as resp:
            answers.append(await resp.text())
    for text in answers:
        for value in values:
            assert value not in text, value


async def test_recalled_record_reads_as_recalled(env):
    row = delivered(env)[2]
    raw = row.raw()
    await env.hub.ingest(row.adapter, [RawRecord(raw.source_id, raw.payload, raw.content_type, deleted=True)])
    await wait_for(lambda: env.hub.store.latest_of(row.record_id)["latest_event"] == "CANCEL")
    status, body, _ = await api(env, f"/verify/api/code/{row.verify_code}")
    assert status == 200 and body["status"]["key"] == "cancelled" and body["status"]["latest_version"] == 2
    async with env.http.get(f"/verify/{row.verify_code}") as resp:
        assert "đã bị thu hồi" in await resp.text()


async def test_rate_limited_per_client_with_retry_after(env):
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.99", 0))
    async with aiohttp.ClientSession(env.url, connector=connector) as client:
        statuses, retry = [], None
        for _ in range(60):  # the bucket holds 30 and refills one a second: 60 at once cannot all pass
            async with client.get("/verify/api/code/nope") as resp:
                statuses.append(resp.status)
                if resp.status == 429:
                    retry = resp.headers["Retry-After"]
        assert 429 in statuses and statuses[0] == 400 and int(retry) >= 1
    # Another address is not held back by that one.
    assert (await api(env, "/verify/api/code/nope"))[0] == 400


async def test_fifty_uploads_from_ten_clients_all_answered(env):
    documents = verify_load.documents_of(env.hub)
    figures = await verify_load.load(env.url, documents, clients=10, uploads=50, time_limit=300)
    print(verify_load.report(figures))
    assert figures["errors"] == [] and figures["statuses"] == {200: 50}
    # Two of the three records are still current; the recalled one's documents stay validly signed.
    assert figures["verdicts"] == {"valid": 50}


# --- HTML, and in a real browser --------------------------------------------------------------

async def test_html_page_vietnamese_by_default_english_on_request(env):
    row = delivered(env)[0]
    async with env.http.get(f"/verify/{row.verify_code}") as resp:
        html = await resp.text()
        assert resp.status == 200 and resp.content_type == "text/html"
    assert '<html lang="vi">' in html and "HỢP LỆ" in html and "Hiệu lực" in html and "hiệu trưởng" in html
    async with env.http.get(f"/verify?code={row.verify_code}&lang=en") as resp:
        html = await resp.text()
    assert '<html lang="en">' in html and "VALID" in html and "homeroom teacher" in html


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian: chromium; .ci/run installs it)")
async def test_in_chromium_upload_pdf_xml_enter_code_tampered_and_unknown(env, tmp_path):
    from playwright.async_api import async_playwright

    rows = delivered(env)
    current = rows[0]
    (tmp_path / "hocba.pdf").write_bytes(current.pdf)
    (tmp_path / "hocba.xml").write_bytes(current.xml)
    (tmp_path / "sua.pdf").write_bytes(current.pdf.replace(b"841.89]", b"841.88]", 1))
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--no-first-run"])
        try:
            page = await browser.new_page()

            async def upload(name: str) -> tuple[str, str]:
                await page.goto(env.url + "/verify")
                await page.set_input_files("#file", str(tmp_path / name))
                await page.click("#check-file")
                await page.wait_for_selector("#result")
                return await page.inner_text("#verdict"), await page.inner_text("#result")

            verdict, text = await upload("hocba.pdf")
            assert verdict == "HỢP LỆ" and "Đây là phiên bản mới nhất" in text
            assert current.normalized["school_name"] in text and current.normalized["school_year"] in text
            assert "+07:00" in text and "giáo viên chủ nhiệm" in text
            verdict, _ = await upload("hocba.xml")
            assert verdict == "HỢP LỆ"
            verdict, text = await upload("sua.pdf")
            assert verdict == "KHÔNG HỢP LỆ" and "Lý do" in text

            await page.goto(env.url + "/verify?lang=en")
            await page.fill("#code", format_code(current.verify_code))
            await page.click("#check-code")
            await page.wait_for_selector("#result")
            assert await page.inner_text("#verdict") == "VALID"
            await page.fill("#code", "ZZZZ-ZZZZ-ZZZZ-ZZZZ")
            await page.click("#check-code")
            await page.wait_for_selector("#result")
            assert await page.inner_text("#verdict") == "CODE NOT FOUND"
            assert "No transcript was issued with this verification code" in await page.inner_text("#result")
        finally:
            await browser.close()
