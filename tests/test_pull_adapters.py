"""What every pull adapter does alike, against each one's simulator over real HTTP on loopback:
registration, retries and giving up, Retry-After, outages, dropped connections, bad pages and
health checks. What a vendor words or orders its own way is in ``pull_vendors.PULL_VENDORS``;
each vendor's own behaviour (signing, sessions, tokens, cursors, its payload) stays in its file.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import structlog
from conftest import only_plugins
from pull_vendors import MISA, PULL_VENDORS, VIETTEL
from pydantic import ValidationError

from hub import plugins
from hub.store import Store

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(params=PULL_VENDORS, ids=repr)
def pull(request):
    return request.param


def only(*vendors):
    """Run a test against these vendors alone (what the others' simulators or contracts lack)."""
    return pytest.mark.parametrize("pull", vendors, ids=repr, indirect=True)


@pytest.fixture
async def vendor(pull, tmp_path):
    async with pull.starting(tmp_path) as start:
        yield start


def all_ids(sim, records: int) -> list[str]:
    return sorted(sim.source_id(i) for i in range(records))


def test_registered_through_the_entry_point(pull):
    # Load only this entry point: the test must not depend on other plugins being finished.
    with only_plugins(pull.name):
        info = plugins.adapter_types()[pull.name]
    assert info.cls is pull.adapter
    assert info.cls.can("fetch") and info.cls.can("normalize") and not info.cls.can("deliver")
    assert pull.adapter.simulator == f"adapters.{pull.name}.simulator:{pull.simulator.__name__}"


@pytest.mark.parametrize("url", ["ftp://school.example.vn", "not a url", "https://school.example.vn/api?x=1",
                                 "https://school.example.vn/api#x", ""])
def test_settings_reject_a_bad_base_url(pull, url):
    with pytest.raises(ValidationError) as err:
        pull.adapter.Settings(**{**pull.settings, "base_url": url})
    assert [e["loc"] for e in err.value.errors()] == [("base_url",)]


BAD_VALUES = {  # each vendor's own limits besides the ones every pull adapter has
    "misa": [("page_size", 501), ("api_key", ""), ("api_key", "has space"), ("api_secret", "short"),
             ("backoff_seconds", 0)],
    "viettel": [("page_size", 201), ("max_attempts", 0), ("api_key", "")],
    "vnpt": [("page_size", 501), ("client_id", "")],
}


@pytest.mark.parametrize("pull, field, value", [
    (vendor, field, value) for vendor in PULL_VENDORS
    for field, value in [("page_size", 0), ("timeout", 0), ("colour", "blue"), *BAD_VALUES[vendor.name]]
], ids=repr, indirect=["pull"])
def test_settings_reject_bad_values(pull, field, value):
    with pytest.raises(ValidationError) as err:
        pull.adapter.Settings(**{**pull.settings, field: value})
    assert err.value.errors()[0]["loc"] == (field,)


def test_settings_keep_the_credential_out_of_their_repr(pull):
    settings = pull.adapter.Settings(**{**pull.settings, pull.credential: "hunter2-hunter2-hunter2"})
    assert "hunter2" not in repr(settings) and "hunter2" not in str(settings.model_dump())
    assert settings.page_size == 100


CLI_EXAMPLES = [
    (MISA, "record.json", 0, '"madinhdanhhocba": "HB01004001000007"'),
    (MISA, "invalid.json", 1, "student.birth_date: impossible date or time (day is out of range for month)"),
    (VIETTEL, "record.xml", 0, '"madinhdanhhocba": "HB01004001000011"'),
    (VIETTEL, "invalid.xml", 1, "subjects[0].year_average: Input should be less than or equal to 10"),
]


@pytest.mark.parametrize("pull, example, code, output", CLI_EXAMPLES, ids=repr, indirect=["pull"])
def test_the_cli_normalizes_the_examples(pull, example, code, output):
    env = {**os.environ, "HOCBA_HUB_LOAD_PLUGINS": pull.name}
    done = subprocess.run([sys.executable, "-m", "hub.cli", "normalize", "--adapter", pull.name,
                           str(ROOT / "adapters" / pull.name / "examples" / example)],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)
    assert done.returncode == code, done.stderr
    assert output in (done.stdout if code == 0 else done.stderr)


# --- reading ------------------------------------------------------------------------------------

@only(MISA, VIETTEL)  # vnpt's cursor is an inclusive instant: a resumed read repeats the boundary
async def test_a_crash_mid_read_resumes_after_the_last_saved_page(pull, vendor):
    sim, adapter = await vendor(records=11, page_size=3)
    first_two = []
    async for page in adapter.fetch(None):
        first_two.append(page)
        if len(first_two) == 2:
            break  # the hub died after committing page 2
    _, rest = await pull.read(adapter, first_two[-1].cursor)
    got = [r.source_id for p in first_two for r in p.records] + [r.source_id for r in rest]
    assert sorted(got) == all_ids(sim, 11)  # every record, none twice


async def test_a_wrong_credential_stops_the_read_without_leaking_it(pull, vendor, tmp_path):
    sim, _ = await vendor(records=3)
    adapter = pull.make_adapter({**sim.adapter_settings(), pull.credential: "wrong-credential-123"}, tmp_path)
    await adapter.open()
    try:
        with structlog.testing.capture_logs() as logs, pytest.raises(pull.adapter.Error) as err:
            await pull.read(adapter)
        assert re.search(pull.refused.lstrip("^"), str(err.value)), str(err.value)
        assert "wrong-credential-123" not in str(err.value) and "wrong-credential-123" not in repr(logs)
    finally:
        await adapter.close()


# --- faults and retries ----------------------------------------------------------------------------

async def test_5xx_is_retried(pull, vendor):
    sim, adapter = await vendor(records=3)
    sim.faults.fail_next_n = 2
    _, raws = await pull.read(adapter)
    assert len(raws) == 3 and pull.statuses(sim, pull.faulted_path)[:3] == [503, 503, 200]


async def test_persistent_5xx_gives_up_with_a_clear_error(pull, vendor):
    sim, adapter = await vendor(records=3, max_attempts=3)
    assert (await adapter.check()).ok  # signed in: what fails now is the records themselves
    sim.log.clear()
    sim.faults.fail_next_n = 10
    path = re.escape(pull.records_path)
    with pytest.raises(pull.adapter.Error, match=rf"GET http://127\.0\.0\.1:\d+{path}.*gave up after 3 attempt.*HTTP 503"):
        await pull.read(adapter)
    assert pull.statuses(sim, pull.records_path) == [503] * 3


async def test_429_waits_for_retry_after(pull, vendor):
    sim, adapter = await vendor(records=3)
    sim.faults.rate_limit_next_n = 1
    sim.faults.retry_after_seconds = 1
    started = time.monotonic()
    _, raws = await pull.read(adapter)
    assert time.monotonic() - started >= 1.0
    assert len(raws) == 3 and pull.statuses(sim, pull.faulted_path)[:2] == [429, 200]


async def test_a_retry_after_longer_than_allowed_stops_at_once(pull, vendor):
    sim, adapter = await vendor(records=3, max_backoff_seconds=2)
    sim.faults.rate_limit_next_n = 1
    sim.faults.retry_after_seconds = 120
    with pytest.raises(pull.adapter.Error, match="Retry-After 120 s"):
        await pull.read(adapter)
    assert sim.requests[pull.faulted_path] == 1


@only(MISA, VIETTEL)  # vnpt's contract honours Retry-After on a 429 alone: a 5xx backs off
async def test_an_outage_is_waited_out(pull, vendor):
    sim, adapter = await vendor(records=3)
    sim.faults.outage = True
    sim.faults.retry_after_seconds = 1

    async def recover():
        await asyncio.sleep(0.5)
        sim.faults.outage = False

    recovery = asyncio.create_task(recover())
    _, raws = await pull.read(adapter)
    await recovery
    assert len(raws) == 3 and sim.log[0][2] == 503


async def test_dropped_connections_and_timeouts_are_retried(pull, vendor):
    sim, adapter = await vendor(records=3, timeout=0.3)
    sim.faults.drop_next_n_connections = 2
    sim.faults.stall_next_n = 1
    _, raws = await pull.read(adapter)
    assert len(raws) == 3
    # Two drops, then a stall the client gave up on, then the answer; nothing else was asked twice.
    assert sim.requests[pull.faulted_path] == 4 and pull.statuses(sim, pull.faulted_path)[:2] == [0, 0]
    assert all(n == 1 for path, n in sim.requests.items() if path != pull.faulted_path), sim.requests


async def test_an_html_page_with_200_is_a_clear_error(pull, vendor):
    sim, adapter = await vendor(records=3)
    assert (await adapter.check()).ok
    sim.faults.html_next_n = 1
    with pytest.raises(pull.adapter.Error) as err:
        await pull.read(adapter)
    message = str(err.value)
    assert pull.records_path in message and "text/html" in message and "Bảo trì" in message
    # No parser traceback chained underneath: the message is the whole story.
    assert err.value.__context__ is None or err.value.__suppress_context__


async def test_a_truncated_page_is_a_clear_error(pull, vendor):
    sim, adapter = await vendor(records=3)
    assert (await adapter.check()).ok
    sim.faults.truncate_next_n = 1
    path = re.escape(pull.records_path)
    with pytest.raises(pull.adapter.Error, match=rf"GET http://127\.0\.0\.1:\d+{path}\?.*{pull.truncated}") as err:
        await pull.read(adapter)
    assert err.value.__suppress_context__


# --- bad pages: the sync survives and nothing is lost (vendors whose simulator serves them) -------

BAD_PAGES = only(MISA, VIETTEL)
REPEATED = {"misa": "the continuation token it was given", "viettel": "the cursor it was given"}
NO_ID = {"misa": "items[0].id is missing", "viettel": "transcripts/transcript[1]/@id is missing"}


@BAD_PAGES
async def test_a_repeated_page_stops_the_poll_and_the_next_poll_finishes(pull, vendor):
    sim, adapter = await vendor(records=10, page_size=3)
    store = Store(":memory:")
    # The first page has nothing to repeat; the second request gets the first page again.
    sim.faults.repeat_next_n = 1
    error = await pull.poll(adapter, store)
    assert error is not None and REPEATED[pull.name] in str(error) and pull.records_path in str(error)
    assert await pull.poll(adapter, store) is None
    assert sorted(r.source_id for r in store.rows()) == all_ids(sim, 10)


@BAD_PAGES
async def test_an_empty_page_mid_stream_is_followed(pull, vendor):
    sim, adapter = await vendor(records=7, page_size=3)
    sim.faults.empty_next_n = 1
    pages, raws = await pull.read(adapter)
    assert pages[0].records == [] and len(pages) == 4
    assert sorted(r.source_id for r in raws) == all_ids(sim, 7)


@BAD_PAGES
async def test_a_record_listed_twice_in_a_page_is_stored_once(pull, vendor):
    sim, adapter = await vendor(records=6, page_size=3)
    store = Store(":memory:")
    sim.faults.duplicate_next_n = 1
    assert await pull.poll(adapter, store) is None
    rows = store.rows()
    assert sorted(r.source_id for r in rows) == all_ids(sim, 6) and {r.version for r in rows} == {1}


@BAD_PAGES
async def test_a_record_without_id_stops_the_poll_and_loses_nothing(pull, vendor):
    sim, adapter = await vendor(records=7, page_size=3)
    store = Store(":memory:")
    assert (await adapter.check()).ok
    sim.faults.missing_id_next_n = 1
    error = await pull.poll(adapter, store)
    assert error is not None and pull.records_path in str(error) and NO_ID[pull.name] in str(error)
    assert store.rows() == []
    assert await pull.poll(adapter, store) is None
    assert sorted(r.source_id for r in store.rows()) == all_ids(sim, 7)


# --- check -----------------------------------------------------------------------------------------

async def test_check_with_a_wrong_credential(pull, vendor, tmp_path):
    sim, _ = await vendor(records=1)
    right = sim.adapter_settings()[pull.credential]
    wrong = "not-the-credential-" + right[:4]
    adapter = pull.make_adapter({**sim.adapter_settings(), pull.credential: wrong}, tmp_path)
    health = await adapter.check()  # not opened: check opens and closes its own session
    assert not health.ok and re.search(pull.refused, health.detail), health.detail
    assert wrong not in health.detail and right not in health.detail


async def test_check_when_the_server_is_down(pull, tmp_path):
    sim = pull.simulator()
    await sim.start()
    settings = sim.adapter_settings()
    await sim.stop()
    health = await pull.make_adapter(settings, tmp_path, timeout=2).check()
    assert not health.ok and settings["base_url"] in health.detail
    assert settings[pull.credential] not in health.detail
