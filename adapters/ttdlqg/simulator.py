"""The National Data Centre sync contract (CONTRACT.md) served over real HTTP, with faults.

The simulator is the reference the ``ttdlqg`` adapter is tested against, and the destination the
demo and the conformance kit deliver to. It enforces every rule of the contract — token,
central-format validation, a signed PDF, idempotency on ``(idbanghi, phienban)``, versions
that only go up — and keeps everything it received so a test can look at it afterwards.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from hub import Attempt, DestinationSimulator, Event, Faults, Reject, field_errors, parse_transcript

DEFAULT_TOKEN = "demo-ttdlqg-token"
DEFAULT_MAX_BYTES = 20 * 1024 * 1024


@dataclass
class TtdlqgFaults(Faults):
    """The standard fault switches (``hub.contracts.Faults``), as the National Data Centre applies them.

    ``outage`` affects every route and ``slow_seconds`` every answer a route produced, so
    ``check()`` sees them too. The ``*_next_n`` counters are consumed by submissions
    (``POST /api/v1/hocba``) only, so a test can say "the next two deliveries fail" without
    health checks eating the faults. ``slow_seconds`` delays an answer after the request was
    processed.
    """


@dataclass
class TtdlqgCounters:
    """How many requests the simulator saw, and what became of the submissions."""
    requests: int = 0        # every request, any route
    submissions: int = 0     # POST /api/v1/hocba, including faulted ones
    created: int = 0         # 201
    duplicates: int = 0      # 200 duplicate
    conflicts: int = 0       # 409
    rejected: int = 0        # 400, 413, 422
    unauthorized: int = 0    # 401, any route
    faulted: int = 0         # injected 503 / 429 / dropped connection


class TtdlqgSimulator(DestinationSimulator):
    """The National Data Centre's sync service over HTTP on loopback (see ``adapters/ttdlqg/CONTRACT.md``).

    What it received stays inspectable: ``records`` and ``documents`` keyed by
    ``(record_id, version)``, ``receipts`` likewise, ``attempts`` (every submission with its
    status code), ``counters``. ``faults`` injects outages, 503s, slowness, dropped connections
    and 429s.
    """

    def __init__(
        self,
        *,
        token: str = DEFAULT_TOKEN,
        max_bytes: int = DEFAULT_MAX_BYTES,
        records: int = 0,
        invalid: int = 0,
        seed: int = 0,
    ):
        super().__init__(token=token, records=records, invalid=invalid, seed=seed)
        self.max_bytes = max_bytes
        self.faults = TtdlqgFaults()
        self.counters = TtdlqgCounters()
        self.records: dict[tuple[str, int], dict[str, Any]] = {}
        self.documents: dict[tuple[str, int], bytes] = {}
        self.receipts: dict[tuple[str, int], dict[str, Any]] = {}
        self.reasons: dict[tuple[str, int], str] = {}   # why a version was sent, when the hub said
        self._hashes: dict[tuple[str, int], str] = {}
        self._highest: dict[str, int] = {}
        self._cancelled: set[str] = set()

    realm = "ttdlqg"

    def _add_routes(self, app: web.Application) -> None:
        app.router.add_post("/api/v1/hocba", self._submit)
        app.router.add_get("/api/v1/hocba/{record_id}", self._status)

    def _submission(self, request: web.Request) -> bool:
        if request.method == "POST" and request.path == "/api/v1/hocba":
            self.counters.submissions += 1
            return True
        return False

    def accepted(self) -> dict[str, int]:
        return dict(self._highest)

    def state(self, record_id: str) -> dict[str, Any] | None:
        """What ``GET /api/v1/hocba/{idbanghi}`` answers for ``record_id``, or ``None``."""
        highest = self._highest.get(record_id)
        if highest is None:
            return None
        return {
            "idbanghi": record_id,
            "highest_version": highest,
            "receipt_id": self.receipts[(record_id, highest)]["receipt_id"],
            "cancelled": record_id in self._cancelled,
            "reason": self.reasons.get((record_id, highest)),
        }

    # --- routes ---------------------------------------------------------------------------

    async def _status(self, request: web.Request) -> web.Response:
        return self._held(self.state(request.match_info["record_id"]), "unknown idbanghi")

    def _conflict(self, reason: str, attempt: dict[str, Any], highest: int, error: str) -> web.Response:
        """409: the version cannot be taken; the answer names the highest version held."""
        self.counters.conflicts += 1
        self.attempts.append(Attempt(409, reason=reason, **attempt))
        return web.json_response({"error": error, "errors": [], "highest_version": highest}, status=409)

    async def _submit(self, request: web.Request) -> web.Response:
        try:
            raw_record, document, reason = await self._read_parts(request)
            model, record = self._validate(raw_record, document)
        except Reject as reject:
            self.counters.rejected += 1
            self.attempts.append(Attempt(reject.status, reason=reject.body["error"]))
            return reject.answer()
        # From here to the answer there is no await: concurrent submissions of the same
        # record cannot interleave between the version check and the store.
        key = (model.record_id, model.version)
        content_hash = _content_hash(model, document)
        highest = self._highest.get(model.record_id, 0)
        attempt = {"record_id": model.record_id, "version": model.version, "event": model.event.value}
        if key in self._hashes:
            if self._hashes[key] == content_hash:
                self.counters.duplicates += 1
                self.attempts.append(Attempt(200, reason="duplicate", **attempt))
                return web.json_response({**self.receipts[key], "duplicate": True}, status=200)
            return self._conflict("same version, different content", attempt, highest,
                                  f"version {model.version} of {model.record_id} is already held with different content")
        if model.version <= highest:
            return self._conflict("stale version", attempt, highest,
                                  f"version {model.version} is not above the highest held ({highest})")
        receipt = {
            "receipt_id": f"TTDLQG-{uuid.uuid4().hex}",
            "received_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "idbanghi": model.record_id,
            "phienban": model.version,
        }
        self.records[key] = record
        self.documents[key] = document
        if reason:
            self.reasons[key] = reason
        self.receipts[key] = receipt
        self._hashes[key] = content_hash
        self._highest[model.record_id] = model.version
        # The highest version decides: a CANCEL recalls the transcript, a later UPDATE restores it.
        if model.event == Event.CANCEL:
            self._cancelled.add(model.record_id)
        else:
            self._cancelled.discard(model.record_id)
        self.counters.created += 1
        self.attempts.append(Attempt(201, reason="created", **attempt))
        return web.json_response({**receipt, "duplicate": False}, status=201)

    async def _read_parts(self, request: web.Request) -> tuple[bytes, bytes, str | None]:
        if request.content_length is not None and request.content_length > self.max_bytes:
            raise Reject(413, f"payload of {request.content_length} bytes exceeds {self.max_bytes}")
        if request.content_type != "multipart/form-data":
            raise Reject(400, f"expected multipart/form-data, got {request.content_type or 'no content type'}")
        parts: dict[str, bytes] = {}
        types: dict[str, str] = {}
        size = 0
        try:
            reader = await request.multipart()
            while (part := await reader.next()) is not None:
                chunks = []
                # Counted chunk by chunk: a chunked upload has no Content-Length to check up front.
                while chunk := await part.read_chunk():
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise Reject(413, f"payload exceeds {self.max_bytes} bytes")
                    chunks.append(chunk)
                if part.name in ("record", "document", "reason"):
                    parts[part.name] = b"".join(chunks)
                    types[part.name] = part.headers.get("Content-Type", "").split(";")[0].strip().lower()
        except Reject:
            raise
        except (ValueError, AssertionError, RuntimeError) as exc:
            raise Reject(400, f"malformed multipart body: {exc}") from None
        missing = [name for name in ("record", "document") if name not in parts]
        if missing:
            raise Reject(400, f"missing part(s): {', '.join(missing)}")
        for name, expected in (("record", "application/json"), ("document", "application/pdf")):
            if types[name] != expected:
                raise Reject(400, f"part {name!r} must be {expected}, got {types[name] or 'no content type'}")
        reason = parts.get("reason", b"").decode("utf-8", "replace")[:500] or None
        return parts["record"], parts["document"], reason

    def _validate(self, raw_record: bytes, document: bytes) -> tuple[Any, dict[str, Any]]:
        try:
            record = json.loads(raw_record)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise Reject(400, f"part 'record' is not JSON: {exc}") from None
        if not isinstance(record, dict):
            raise Reject(422, "record invalid", ["(record): must be a JSON object"])
        try:
            model = parse_transcript(record)
        except ValidationError as exc:
            raise Reject(422, "record invalid", field_errors(exc, export_names=True)) from None
        except (TypeError, ValueError) as exc:
            # A validator that breaks instead of reporting is still a record the store cannot
            # take; 422 tells the sender not to retry, where a 500 would be retried forever.
            raise Reject(422, "record invalid", [f"(record): {exc}"]) from None
        if not document.startswith(b"%PDF-"):
            raise Reject(422, "document invalid", ["document: not a PDF (no %PDF- header)"])
        if b"/ByteRange" not in document or b"/Sig" not in document:
            raise Reject(422, "document invalid", ["document: carries no signature (/ByteRange, /Sig)"])
        return model, record


def _content_hash(model: Any, document: bytes) -> str:
    # Hash the validated record, not the bytes sent: the same transcript spelled with snake_case
    # names or catalogue aliases, or with keys in another order, is the same content.
    canonical = json.dumps(
        model.model_dump(mode="json", by_alias=True), sort_keys=True, ensure_ascii=False, separators=(",", ":")
    )
    digest = hashlib.sha256(canonical.encode())
    digest.update(hashlib.sha256(document).digest())
    return digest.hexdigest()
