"""Delivery to the Ministry's digital transcript store (MOET): see CONTRACT.md.

A destination that takes class packages only: ``deliver_package`` sends one class package the
Department signed (``hub.package_class``), ``recall`` withdraws a package and ``cancel`` one
transcript, each with a reason. One transcript at a time is the National Data Centre's sync
(``adapters/ttdlqg``), not this store's. Every answer becomes a receipt or a ``DeliveryError``
that says whether retrying can help. Retrying itself is the hub's outbox's job, so every call
here makes exactly one request.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote


from hub import (
    PACKAGE_MEDIA_TYPE,
    ClassPackage,
    DeliveryError,
    HttpDestination,
    HttpDestinationSettings,
    PackageReceipt,
    Receipt,
    reasons,
)

PACKAGES_PATH = "/api/v2/packages"
TRANSCRIPTS_PATH = "/api/v2/transcripts"


class MoetSettings(HttpDestinationSettings):
    """The ``moet`` destination's YAML section."""
    # token: reference it as ${MOET_TOKEN}


class MoetAdapter(HttpDestination):
    """Delivers class packages to the central store: idempotent per package, never retrying."""
    name = "moet"
    Settings = MoetSettings
    simulator = "adapters.moet.simulator:MoetSimulator"

    settings: MoetSettings

    async def deliver_package(self, package: ClassPackage) -> PackageReceipt:
        """Submit ``package`` (``PUT``, so the package id makes a retry safe): its receipt, one
        ``Receipt`` per transcript; ``DeliveryError`` otherwise (``permanent`` when resending the
        same package cannot help: refused, conflicting versions, bad token)."""
        what = f"package {package.package_id}"
        path = f"{PACKAGES_PATH}/{quote(package.package_id, safe='')}"
        status, headers, body = await self.request("PUT", path, what, data=package.to_zip(),
                                                   headers={"Content-Type": PACKAGE_MEDIA_TYPE})
        if status in (200, 201):
            try:
                return _package_receipt(body, duplicate=status == 200)
            except (KeyError, TypeError, ValueError):
                # The store may have committed: a retry gets the original receipt as a duplicate.
                raise DeliveryError(f"moet: {what}: answer {status} carries no readable receipt") from None
        raise self.error_for(status, headers, body, what)

    async def package_receipt(self, package_id: str) -> PackageReceipt | None:
        """The store's receipt and current state of ``package_id`` (``detail["status"]``:
        accepted or recalled), or ``None`` if it holds no such package."""
        what = f"package {package_id}"
        status, headers, body = await self.request("GET", f"{PACKAGES_PATH}/{quote(package_id, safe='')}", what)
        if status == 404:
            return None
        if status == 200 and isinstance(body, dict):
            return _package_receipt(body, duplicate=False)
        raise self.error_for(status, headers, body, what)

    async def recall(self, package_id: str, reason: str) -> Receipt:
        """Withdraw a submitted package, saying why (mandatory): every transcript it brought is
        recalled; a corrected transcript goes again as its next version, in a new package."""
        what = f"recall of package {package_id}"
        path = f"{PACKAGES_PATH}/{quote(package_id, safe='')}/recall"
        return await self._withdraw(path, what, reason)

    async def cancel(self, record_id: str, version: int, reason: str) -> Receipt:
        """Cancel one delivered transcript version, saying why (mandatory)."""
        what = f"cancel of {record_id} v{version}"
        path = f"{TRANSCRIPTS_PATH}/{quote(record_id, safe='')}/versions/{int(version)}/cancel"
        return await self._withdraw(path, what, reason)

    async def _withdraw(self, path: str, what: str, reason: str) -> Receipt:
        if not isinstance(reason, str) or not reason.strip():
            raise DeliveryError(f"moet: {what}: a reason is required", permanent=True)
        status, headers, body = await self.request("POST", path, what, json={"reason": reason.strip()})
        if status == 200 and isinstance(body, dict) and body.get("receipt_id"):
            return Receipt(str(body["receipt_id"]), str(body.get("received_at", "")),
                           duplicate=bool(body.get("duplicate")), detail=body)
        if status in (404, 409):
            # Unknown to the store, or recalled with its package already: asking again cannot help.
            raise DeliveryError(f"moet: {what} refused ({status}): {reasons(body)}", permanent=True)
        raise self.error_for(status, headers, body, what)


def _package_receipt(body: Any, *, duplicate: bool) -> PackageReceipt:
    transcripts = {}
    for t in body["transcripts"]:
        transcripts[(str(t["record_id"]), int(t["version"]))] = Receipt(
            str(t["receipt_id"]), str(body.get("received_at", "")), duplicate=t.get("status") == "duplicate",
            detail=t)
    if not body["receipt_id"]:
        raise ValueError("empty receipt id")
    return PackageReceipt(str(body["package_id"]), str(body["receipt_id"]), str(body.get("received_at", "")),
                          duplicate=bool(body.get("duplicate", duplicate)), transcripts=transcripts, detail=body)
