"""The ttdlqg destination adapter against its simulator, over real HTTP on loopback."""

from __future__ import annotations

import asyncio
import email.utils
import importlib
import time
from pathlib import Path

import aiohttp
import pytest
import test_http_destination as destination
from test_http_destination import adapter, sim  # noqa: F401  (fixtures, given this file's kind)

import adapters.ttdlqg
from adapters.ttdlqg.adapter import TtdlqgAdapter
from adapters.ttdlqg.simulator import TtdlqgSimulator
from hub import parse_retry_after as _retry_after
from hub.contracts import Delivery, DeliveryError, PluginError, Receipt
from hub.kit.synthetic import invalid_transcript, transcript
from hub.records import parse_transcript

# Enough of a signed PDF for the store's checks; real PAdES documents come from hub signing.
SIGNED_PDF = (
    b"%PDF-1.7\n1 0 obj\n<< /Type /Sig /Filter /Adobe.PPKLite /SubFilter /ETSI.CAdES.detached "
    b"/ByteRange [0 120 220 40] /Contents <3082> >>\nendobj\n%%EOF\n"
)
UNSIGNED_PDF = b"%PDF-1.7\n1 0 obj\n<< /Type /Catalog >>\nendobj\n%%EOF\n"


def record(record_id: str = "R-0001", version: int = 1, event: str = "NEW", index: int = 0,
           data: dict | None = None, by_alias: bool = True) -> dict:
    base = data if data is not None else transcript(index)
    model = parse_transcript({**base, "record_id": record_id, "event": event, "version": version,
                              "updated_at": "2025-06-01T10:00:00"})
    return model.model_dump(mode="json", by_alias=by_alias)


def delivery(record_id: str = "R-0001", version: int = 1, event: str = "NEW", index: int = 0,
             pdf: bytes = SIGNED_PDF) -> Delivery:
    return Delivery(record_id, version, event, record(record_id, version, event, index), pdf)

KIND = (TtdlqgAdapter, TtdlqgSimulator)
kind = destination.only(KIND)


def make_adapter(settings: dict, tmp_path: Path, **overrides) -> TtdlqgAdapter:
    return destination.make_adapter(KIND, settings, tmp_path, **overrides)


async def rejected(adapter: TtdlqgAdapter, d: Delivery) -> DeliveryError:
    with pytest.raises(DeliveryError) as info:
        await adapter.deliver(d)
    return info.value


# --- registration and settings ----------------------------------------------------------------

def test_registers_a_destination_only():
    registered = []
    adapters.ttdlqg.hocba_hub_adapter_types(register=registered.append)
    assert registered == [TtdlqgAdapter]
    assert TtdlqgAdapter.name == "ttdlqg"
    assert TtdlqgAdapter.can("deliver")
    assert not TtdlqgAdapter.can("fetch")
    assert not TtdlqgAdapter.can("normalize")
    module, _, cls = TtdlqgAdapter.simulator.partition(":")
    assert getattr(importlib.import_module(module), cls) is TtdlqgSimulator


def test_retry_after_reads_seconds_and_http_dates():
    assert _retry_after("7") == 7.0
    assert _retry_after(None) is None and _retry_after("soon") is None
    later = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 27 <= _retry_after(later) <= 31


# --- delivery ---------------------------------------------------------------------------------

async def test_delivers_and_the_store_keeps_record_and_document(adapter, sim):
    d = delivery()
    receipt = await adapter.deliver(d)
    assert isinstance(receipt, Receipt) and not receipt.duplicate
    assert receipt.receipt_id and receipt.received_at
    assert receipt.detail["idbanghi"] == "R-0001" and receipt.detail["phienban"] == 1
    assert sim.accepted() == {"R-0001": 1}
    assert sim.documents[("R-0001", 1)] == SIGNED_PDF
    assert sim.records[("R-0001", 1)] == d.record
    assert [a.status for a in sim.attempts] == [201]


async def test_same_version_again_is_a_duplicate_with_the_original_receipt(adapter, sim):
    first = await adapter.deliver(delivery())
    again = await adapter.deliver(delivery())
    assert again.duplicate and again.receipt_id == first.receipt_id
    assert again.received_at == first.received_at
    assert sim.accepted() == {"R-0001": 1} and sim.counters.duplicates == 1


async def test_duplicate_is_judged_on_content_not_spelling(adapter, sim):
    first = await adapter.deliver(delivery())
    snake = record(by_alias=False)
    assert "record_id" in snake and "idbanghi" not in snake
    again = await adapter.deliver(Delivery("R-0001", 1, "NEW", snake, SIGNED_PDF))
    assert again.duplicate and again.receipt_id == first.receipt_id


async def test_concurrent_copies_of_one_version_store_it_once(adapter, sim):
    results = await asyncio.gather(*(adapter.deliver(delivery()) for _ in range(5)))
    assert sorted(r.duplicate for r in results) == [False, True, True, True, True]
    assert len({r.receipt_id for r in results}) == 1
    assert sim.counters.created == 1


async def test_same_version_with_other_content_is_a_permanent_conflict(adapter, sim):
    await adapter.deliver(delivery())
    err = await rejected(adapter, delivery(index=4))
    assert err.permanent and "409" in str(err) and "highest version held is 1" in str(err)
    err = await rejected(adapter, delivery(pdf=SIGNED_PDF + b"% another signature\n"))
    assert err.permanent and "409" in str(err)
    assert sim.records[("R-0001", 1)]["madinhdanhhocba"] == record()["madinhdanhhocba"]


async def test_a_version_not_above_the_highest_is_refused_naming_it(adapter, sim):
    await adapter.deliver(delivery(version=1))
    await adapter.deliver(delivery(version=3, event="UPDATE"))
    err = await rejected(adapter, delivery(version=2, event="UPDATE"))
    assert err.permanent and err.retry_after is None
    assert "highest version held is 3" in str(err)
    assert sim.accepted() == {"R-0001": 3} and ("R-0001", 2) not in sim.records
    assert sim.attempts[-1].status == 409 and sim.attempts[-1].version == 2


async def test_status_reports_what_is_held_for_reconciliation(adapter, sim):
    assert await adapter.status("R-0001") is None
    receipt = await adapter.deliver(delivery(version=2))
    assert await adapter.status("R-0001") == {
        "idbanghi": "R-0001", "highest_version": 2, "receipt_id": receipt.receipt_id, "cancelled": False,
        "reason": None,
    }


async def test_cancel_is_a_version_that_marks_the_record_cancelled(adapter, sim):
    await adapter.deliver(delivery(version=1))
    receipt = await adapter.deliver(delivery(version=2, event="CANCEL"))
    assert not receipt.duplicate
    state = await adapter.status("R-0001")
    assert state["cancelled"] is True and state["highest_version"] == 2
    await adapter.deliver(delivery(version=3, event="UPDATE"))
    assert (await adapter.status("R-0001"))["cancelled"] is False


async def test_wrong_token_is_permanent_never_shown_and_stores_nothing(sim, tmp_path):
    secret = "wrong-token-4f9a"
    ttdlqg = make_adapter(sim.adapter_settings(), tmp_path, token=secret)
    await ttdlqg.open()
    try:
        err = await rejected(ttdlqg, delivery())
    finally:
        await ttdlqg.close()
    assert err.permanent and "token rejected" in str(err)
    assert secret not in str(err) and sim.token not in str(err)
    assert sim.records == {} and sim.documents == {} and sim.accepted() == {}
    assert [a.status for a in sim.attempts] == [401]


async def test_invalid_record_is_rejected_with_the_field_named(adapter, sim):
    data, _, _ = invalid_transcript(0, kind="personal_id")
    # Built without validation: an invalid record cannot come out of parse_transcript.
    bad = {**record(), "hocsinh": {**record()["hocsinh"], "sodinhdanhcanhan": data["student"]["personal_id"]}}
    err = await rejected(adapter, Delivery("R-0001", 1, "NEW", bad, SIGNED_PDF))
    # The path comes back in the names the sender used: catalogue names here.
    assert err.permanent and "422" in str(err) and "hocsinh.sodinhdanhcanhan:" in str(err)
    assert sim.accepted() == {} and sim.attempts[-1].status == 422


async def test_unsigned_or_non_pdf_document_is_rejected(adapter, sim):
    err = await rejected(adapter, delivery(pdf=UNSIGNED_PDF))
    assert err.permanent and "422" in str(err) and "signature" in str(err)
    err = await rejected(adapter, delivery(pdf=b"<html>/ByteRange /Sig</html>"))
    assert err.permanent and "not a PDF" in str(err)
    assert sim.accepted() == {}


async def test_payload_over_the_limit_is_413_permanent(tmp_path):
    small = TtdlqgSimulator(max_bytes=8192)
    await small.start()
    ttdlqg = make_adapter(small.adapter_settings(), tmp_path)
    await ttdlqg.open()
    try:
        err = await rejected(ttdlqg, delivery(pdf=SIGNED_PDF + b"0" * 16384))
        assert err.permanent and "413" in str(err)
        assert (await ttdlqg.deliver(delivery())).receipt_id  # under the limit still works
    finally:
        await ttdlqg.close()
        await small.stop()


async def test_envelope_disagreeing_with_the_delivery_is_refused_before_sending(adapter, sim):
    err = await rejected(adapter, Delivery("R-0001", 2, "UPDATE", record(version=1), SIGNED_PDF))
    assert err.permanent and "v2" in str(err) and "v1" in str(err)
    assert sim.counters.requests == 0


async def test_deliver_before_open_is_a_plugin_error(sim, tmp_path):
    with pytest.raises(PluginError, match="open"):
        await make_adapter(sim.adapter_settings(), tmp_path).deliver(delivery())


# --- faults -----------------------------------------------------------------------------------

async def test_outage_is_transient_and_delivery_succeeds_after_it(adapter, sim):
    sim.faults.outage = True
    sim.faults.retry_after_seconds = 4
    for _ in range(2):
        err = await rejected(adapter, delivery())
        assert not err.permanent and "503" in str(err) and err.retry_after == 4.0
    sim.faults.outage = False
    assert not (await adapter.deliver(delivery())).duplicate
    assert [a.status for a in sim.attempts] == [503, 503, 201]


async def test_injected_failures_are_transient_and_counted(adapter, sim):
    sim.faults.fail_next_n = 2
    for _ in range(2):
        assert not (await rejected(adapter, delivery())).permanent
    assert (await adapter.deliver(delivery())).receipt_id
    assert sim.counters.faulted == 2 and sim.faults.fail_next_n == 0


async def test_rate_limit_is_transient_with_retry_after(adapter, sim):
    sim.faults.rate_limit_next_n = 1
    sim.faults.retry_after_seconds = 7
    err = await rejected(adapter, delivery())
    assert not err.permanent and err.retry_after == 7.0 and "429" in str(err)
    assert (await adapter.deliver(delivery())).receipt_id


async def test_dropped_connection_is_transient_and_nothing_stored(adapter, sim):
    sim.faults.drop_next_n_connections = 1
    err = await rejected(adapter, delivery())
    assert not err.permanent
    assert sim.accepted() == {} and sim.attempts[-1].status is None
    assert not (await adapter.deliver(delivery())).duplicate


async def test_timeout_is_transient_and_the_retry_gets_the_committed_receipt(sim, tmp_path):
    ttdlqg = make_adapter(sim.adapter_settings(), tmp_path, timeout=0.2)
    await ttdlqg.open()
    try:
        sim.faults.slow_seconds = 0.6
        err = await rejected(ttdlqg, delivery())
        assert not err.permanent and "timed out" in str(err)
        assert sim.accepted() == {"R-0001": 1}  # committed before the answer was lost
        sim.faults.slow_seconds = 0
        receipt = await ttdlqg.deliver(delivery())
        assert receipt.duplicate and receipt.receipt_id == sim.receipts[("R-0001", 1)]["receipt_id"]
    finally:
        await ttdlqg.close()


async def test_unreachable_store_is_transient(sim, tmp_path):
    settings = sim.adapter_settings()
    await sim.stop()
    ttdlqg = make_adapter(settings, tmp_path)
    await ttdlqg.open()
    try:
        err = await rejected(ttdlqg, delivery())
        assert not err.permanent and "not confirmed" in str(err)
    finally:
        await ttdlqg.close()


# --- the simulator's contract, spoken to directly ---------------------------------------------

async def test_simulator_contract_edges_over_raw_http(sim):
    url = sim.base_url
    good = {"Authorization": f"Bearer {sim.token}"}
    async with aiohttp.ClientSession() as http:
        await destination.guarded_and_not_held(http, f"{url}/api/v1/hocba/R-0001", good)

        form = aiohttp.FormData()
        form.add_field("record", "{}", content_type="application/json")
        async with http.post(f"{url}/api/v1/hocba", data=form, headers=good) as resp:
            assert resp.status == 400 and "document" in (await resp.json())["error"]

        async with http.post(f"{url}/api/v1/hocba", json=record(), headers=good) as resp:
            assert resp.status == 400 and "multipart" in (await resp.json())["error"]

        form = aiohttp.FormData()
        form.add_field("record", "{not json", content_type="application/json")
        form.add_field("document", SIGNED_PDF, content_type="application/pdf", filename="x.pdf")
        async with http.post(f"{url}/api/v1/hocba", data=form, headers=good) as resp:
            assert resp.status == 400

        form = aiohttp.FormData()
        form.add_field("record", "{}", content_type="application/json")
        form.add_field("document", SIGNED_PDF, content_type="application/pdf", filename="x.pdf")
        async with http.post(f"{url}/api/v1/hocba", data=form, headers=good) as resp:
            body = await resp.json()
            assert resp.status == 422 and any(e.startswith("level") for e in body["errors"])
    assert sim.accepted() == {} and sim.counters.rejected == 4 and sim.counters.unauthorized == 1


def test_adapter_settings_need_a_running_simulator():
    with pytest.raises(RuntimeError, match="start"):
        TtdlqgSimulator().adapter_settings()
