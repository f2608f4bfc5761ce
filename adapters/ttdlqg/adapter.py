"""Delivery to the National Data Centre's sync (Trung tâm dữ liệu quốc gia, TTDLQG): see CONTRACT.md.

A destination only: ``deliver`` sends one signed transcript and turns the store's answer into
a ``Receipt`` or a ``DeliveryError`` that says whether retrying can help. Retrying itself is
the hub's outbox's job, so every call here makes exactly one request.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import aiohttp
from pydantic_core import to_json

from hub import Delivery, DeliveryError, HttpDestination, HttpDestinationSettings, Receipt

SUBMIT_PATH = "/api/v1/hocba"


class TtdlqgSettings(HttpDestinationSettings):
    """The ``ttdlqg`` destination's YAML section."""
    # token: reference it as ${TTDLQG_TOKEN}


class TtdlqgAdapter(HttpDestination):
    """Syncs signed transcripts to the National Data Centre: idempotent, versioned, never retrying."""
    name = "ttdlqg"
    Settings = TtdlqgSettings
    simulator = "adapters.ttdlqg.simulator:TtdlqgSimulator"

    settings: TtdlqgSettings

    async def deliver(self, delivery: Delivery) -> Receipt:
        what = f"{delivery.record_id} v{delivery.version}"
        _check_envelope(delivery)
        form = aiohttp.FormData()
        form.add_field("record", to_json(delivery.record).decode(), content_type="application/json")
        form.add_field(
            "document", delivery.pdf, content_type="application/pdf",
            filename=f"{delivery.record_id}-v{delivery.version}.pdf",
        )
        if delivery.reason:  # an operator's cancel says why (an assumed, optional part)
            form.add_field("reason", delivery.reason, content_type="text/plain; charset=utf-8")
        status, headers, body = await self.request("POST", SUBMIT_PATH, what, data=form)
        if status in (200, 201):
            if not isinstance(body, dict) or not body.get("receipt_id"):
                # The store may have committed: a retry gets the original receipt as a duplicate.
                raise DeliveryError(f"ttdlqg: {what}: answer {status} carries no receipt")
            return Receipt(
                receipt_id=str(body["receipt_id"]),
                received_at=str(body.get("received_at", "")),
                duplicate=bool(body.get("duplicate", status == 200)),
                detail=body,
            )
        raise self.error_for(status, headers, body, what)

    async def held_version(self, record_id: str) -> int | None:
        status = await self.status(record_id)
        return status.get("highest_version") if status else None

    async def status(self, record_id: str) -> dict[str, Any] | None:
        """What the store holds for ``record_id`` (``highest_version``, ``receipt_id``,
        ``cancelled``), or ``None`` if it holds nothing: the hub reconciles a 409 with this."""
        what = f"status of {record_id}"
        status, headers, body = await self.request("GET", f"{SUBMIT_PATH}/{quote(record_id, safe='')}", what)
        if status == 404:
            return None
        if status == 200 and isinstance(body, dict):
            return body
        raise self.error_for(status, headers, body, what)


def _check_envelope(delivery: Delivery) -> None:
    # The store keys on the record's own envelope; a Delivery that disagrees with it would be
    # acknowledged under ids the hub does not expect, so it is refused before it is sent.
    record = delivery.record
    record_id = record.get("idbanghi", record.get("record_id"))
    version = record.get("phienban", record.get("version"))
    if record_id != delivery.record_id or version != delivery.version:
        raise DeliveryError(
            f"ttdlqg: delivery says {delivery.record_id} v{delivery.version} but the record's envelope "
            f"says {record_id} v{version}",
            permanent=True,
        )
