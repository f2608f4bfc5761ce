"""The status page: its HTML over real HTTP, then the page as headless Chromium renders it.

The module's hub delivers four transcripts and quarantines two (an impossible birth date and a
malformed personal id). The page must show those counts with Vietnamese labels, explain the
two reasons in plain Vietnamese, show no personal data, and need no token.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import struct
import time

import pytest
from conftest import counted_checks
import pytest_asyncio
from test_admin import serve_hub

from hub import lifecycle as lc
from hub.kit.synthetic import INVALID_KINDS, invalid_transcript, transcript

pytestmark = pytest.mark.asyncio(loop_scope="module")

DELIVERED, QUARANTINED = 4, 2
SEED = 7  # serve_hub's default vendor seed
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(tmp_path_factory, pki):
    async with serve_hub(tmp_path_factory.mktemp("status") / "data", pki,
                         records=DELIVERED, invalid=QUARANTINED) as running:
        health = running.hub.metrics.health
        await health.refresh()  # one real round of checks, waited for: the page shows its results
        if health._round is not None:
            await health._round
        health.max_age = 3600  # and no more: a signer's check unlocks every key, which is slow
        yield running


async def page(env, query: str = "") -> str:
    async with env.http.get("/" + query) as resp:  # no Authorization header: none is needed
        assert resp.status == 200
        assert resp.content_type == "text/html" and resp.charset == "utf-8"
        return await resp.text()


def personal_values() -> list[str]:
    """Names, student codes, personal ids and birth dates of every transcript the vendor
    simulator serves (the same synthetic data it is built from), valid or broken."""
    students = [transcript(i, SEED)["student"] for i in range(DELIVERED)]
    students += [invalid_transcript(DELIVERED + j, SEED, INVALID_KINDS[j])[0]["student"] for j in range(QUARANTINED)]
    values = []
    for s in students:
        values += [s["full_name"], s["student_code"], str(s.get("personal_id") or ""), str(s["birth_date"])]
    return [v for v in values if len(v) >= 4]


async def test_counts_per_adapter_and_school_with_vietnamese_state_names(env):
    html = await page(env)
    assert '<html lang="vi">' in html and '<meta http-equiv="refresh" content="15">' in html
    assert 'id="tile-delivered">4<' in html and 'id="tile-stuck_n">2<' in html
    by_adapter = html[html.index('id="by-adapter"'):html.index('id="by-school"')]
    assert "đã gửi" in by_adapter and "cách ly" in by_adapter
    row = re.search(r'<tr data-key="school-a">(.*?)</tr>', by_adapter).group(1)
    assert f'data-state="delivered">{DELIVERED}<' in row and f'data-state="quarantined">{QUARANTINED}<' in row
    by_school = html[html.index('id="by-school"'):]
    schools = {}
    for r in env.hub.store.rows():
        schools.setdefault(r.school_code or "", []).append(r)
    for code, rows in schools.items():
        row = re.search(rf'<tr data-key="{code}">(.*?)</tr>', by_school).group(1)
        assert f"<b>{len(rows)}</b>" in row, code
    # Quarantined at normalisation, they still name the school their payload gives: the page
    # says which school must fix them (issue 16: they used to count as "school unknown").
    assert "chưa xác định" not in by_school
    assert all(r.school_code for r in env.hub.store.rows(state=lc.QUARANTINED))


async def test_stuck_records_are_listed_with_masked_errors_and_plain_explanations(env):
    html = await page(env)
    stuck = html[html.index('id="stuck"'):html.index('id="by-adapter"')]
    quarantined = env.hub.store.rows(state=lc.QUARANTINED)
    assert len(quarantined) == QUARANTINED
    reasons = dict(re.findall(r'<tr data-id="(\d+)" data-reason="(\w+)">', stuck))
    assert reasons == {str(r.id): ("birth_date" if "birth_date" in r.errors[0] else "personal_id")
                       for r in quarantined}
    assert "Ngày sinh sai" in stuck and "Số định danh cá nhân sai" in stuck
    assert "student.birth_date" in stuck  # the field is named …
    assert "30/02/2015" not in html       # … but what the vendor sent is not shown
    assert "cách ly" in stuck


async def test_health_of_adapter_destination_and_signer(env):
    html = await page(env)
    health = html[html.index('id="health"'):html.index('id="stuck"')]
    for name, kind in (("school-a", "Phần mềm của trường"), ("central", "Kho dữ liệu trung ương"),
                       ("keys", "Dịch vụ ký số")):
        row = re.search(rf'<tr data-plugin="{name}">(.*?)</tr>', health).group(1)
        assert kind in row and "Hoạt động" in row, row
    adapter = re.search(r'<tr data-plugin="school-a">(.*?)</tr>', health).group(1)
    assert re.search(r"\d\d/\d\d/\d{4} \d\d:\d\d:\d\d", adapter)  # last sync, Vietnam time


async def test_plugin_details_are_plain_vietnamese_never_the_validators_text(env):
    from hub.contracts import Health
    from hub.web.status_page import plugin_detail

    status = env.hub.status["school-a"]
    saved = status.health
    raw = ("pull failed: 1 validation error for Page\nitems.0.IdHocBa\n  Input should be a valid string "
           "[type=string_type, input_value=12, input_type=int]")
    status.health = Health(False, raw)
    try:
        for query, plain in (("", "trả về dữ liệu không đúng mẫu"), ("?lang=en", "data the adapter does not")):
            html = await page(env, query)
            row = re.search(r'<tr data-plugin="school-a">(.*?)</tr>', html, re.S).group(1)
            assert plain in row and "Input should" not in row and "validation error" not in row, row
        assert plugin_detail("moet: cannot reach http://127.0.0.1:9: Connection refused", "vi").startswith(
            "Không kết nối được")
    finally:
        status.health = saved


async def test_english_on_request(env):
    html = await page(env, "?lang=en")
    assert '<html lang="en">' in html
    for label in ("delivered", "quarantined", "Stuck records and why", "Central store", "Signing service",
                  "The birth date is invalid"):
        assert label in html, label
    assert "đã gửi" not in html


async def test_no_personal_data_and_no_secret_on_the_page(env):
    values = personal_values()
    assert len(values) >= 3 * DELIVERED
    for query in ("", "?lang=en"):
        html = await page(env, query)
        for value in values + env.secrets():
            assert value not in html, value


async def test_health_checks_are_cached_across_page_loads(env):
    health = env.hub.metrics.health
    with counted_checks(env.hub.destination) as destination:
        try:
            health.max_age = 10.0
            health.checked_at = time.monotonic() - 11  # the last round is too old: one load refreshes
            for _ in range(8):
                await page(env)
            first = health._round
            await first
            for _ in range(8):  # the round has ended: these loads are inside max_age of it
                await page(env)
            assert destination.calls == 1 and health._round is first
        finally:
            health.max_age = 3600


# --- headless Chromium --------------------------------------------------------------------------

async def chromium(*args: str, timeout: float = 60) -> bytes:
    """Run Chromium without blocking the event loop, which is also serving the page."""
    proc = await asyncio.create_subprocess_exec(
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", "--hide-scrollbars", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
    return out


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian: apt-get install chromium; "
                                             ".ci/run installs it)")
async def test_status_page_in_headless_chromium(env, tmp_path):
    url = env.url + "/"
    dom = (await chromium(f"--user-data-dir={tmp_path / 'profile-dom'}", "--dump-dom", url)).decode()
    # What the browser built from the page: Vietnamese labels and the counts.
    assert 'lang="vi"' in dom
    for label in ("Học bạ số", "Đã gửi lên kho trung ương", "Hồ sơ bị kẹt và nguyên nhân", "đã gửi",
                  "cách ly", "Theo trường", "Kho dữ liệu trung ương", "Ngày sinh sai"):
        assert label in dom, label
    assert f'id="tile-delivered">{DELIVERED}<' in dom and f'id="tile-stuck_n">{QUARANTINED}<' in dom

    shot = tmp_path / "status.png"
    await chromium(f"--user-data-dir={tmp_path / 'profile-shot'}", f"--screenshot={shot}",
                   "--window-size=1280,1600", url)
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])  # IHDR comes first
    assert (width, height) == (1280, 1600)
    from PIL import Image  # fpdf2's dependency

    with Image.open(shot) as image:
        image.load()
        rgb = image.convert("RGB")
        colours = rgb.getcolors(maxcolors=1 << 20)
        # A blank or error page has a handful of colours; this one has text, tiles and badges.
        assert colours is not None and len(colours) > 50
        header = rgb.getpixel((5, 5))
        assert header == (0x12, 0x35, 0x5B)  # the dark blue header bar was painted
    shutil.copy(shot, env.hub.config.data_dir.parent / "status-page.png")  # kept for a person to look at
