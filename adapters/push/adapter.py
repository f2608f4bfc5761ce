"""Push adapter: school software POSTs records to ``/ingest/{name}``, signed with HMAC (CONTRACT.md).

The hub's ingest route (``hub.web.ingest``) calls ``verify_push`` (authenticity and freshness),
then ``parse_push`` (the body → raw records), commits the records and only then answers
``202``. ``normalize`` maps the envelope's ``transcript`` — already central-format
snake_case — to the hub, refusing envelope fields the hub owns.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import re
import time
import unicodedata
from collections.abc import Mapping
from typing import Any, ClassVar

from pydantic import Field, SecretStr, field_validator

from hub import (
    Adapter,
    ContractError,
    PluginSettings,
    PushNonce,
    RawRecord,
    base64_document,
    load_json,
    stated_time,
)

TIMESTAMP_HEADER = "X-Hocba-Timestamp"
SIGNATURE_HEADER = "X-Hocba-Signature"
SIGNATURE_SCHEME = "sha256"
ENVELOPE_KEYS = frozenset({"source_id", "updated_at", "deleted", "transcript", "signed_xml"})
# The hub assigns these on every version it sends; a sender setting them would be ignored
# silently, so it is told instead.
HUB_OWNED = frozenset({"record_id", "event", "version", "updated_at",
                       "idbanghi", "sukien", "phienban", "thoigiancapnhat"})
MAX_SOURCE_ID = 200
_TIMESTAMP = re.compile(r"[0-9]{1,12}")


class PushRefused(PermissionError):
    """A push whose signature or timestamp is not acceptable; the message says which."""


class PushSettings(PluginSettings):
    """The ``settings`` of a ``push`` adapter in the hub's YAML."""
    secret: SecretStr = Field(min_length=16, description="Shared HMAC-SHA256 key; use ${ENV_VAR}")
    previous_secret: SecretStr | None = Field(
        default=None, min_length=16, description="The key being rotated out: still accepted until removed")
    replay_window_seconds: int = Field(
        default=300, ge=10, le=3600, description="Pushes signed longer ago (or later) than this are refused")
    max_body_bytes: int = Field(
        default=5 * 1024 * 1024, ge=1024, le=100 * 1024 * 1024, description="Larger bodies get 413 unread")
    max_records: int = Field(default=500, ge=1, le=10_000, description="Records in one push, at most")

    @field_validator("previous_secret", mode="before")
    @classmethod
    def _blank_is_none(cls, value: Any) -> Any:
        # ``${OLD_SECRET:-}`` expands to "" when no rotation is under way; an empty key would let
        # anyone sign, so blank means "no previous secret", never "the empty secret".
        if isinstance(value, str) and not value.strip():
            return None
        return value


def sign(secret: str | bytes, timestamp: str | int, body: bytes) -> str:
    """The ``X-Hocba-Signature`` value for ``body`` sent at ``timestamp`` (Unix seconds)."""
    key = secret.encode("utf-8") if isinstance(secret, str) else secret
    digest = hmac.new(key, f"{timestamp}.".encode("ascii") + body, hashlib.sha256).hexdigest()
    return f"{SIGNATURE_SCHEME}={digest}"


def _timestamp(value: Any, where: str) -> dt.datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{where}.updated_at is not an ISO 8601 string")
    try:
        # Kept as the sender states it; the contract's clock is Vietnam time when it gives no offset.
        return stated_time(value)
    except ContractError:
        raise ValueError(f"{where}.updated_at {value!r} is not an ISO 8601 timestamp") from None


def _signed_xml(item: dict[str, Any], where: str) -> bytes | None:
    return base64_document(item.get("signed_xml"), f"{where}.signed_xml")


class PushAdapter(Adapter):
    """Receives transcripts that school software POSTs, authenticated by an HMAC-SHA256 signature.

    Push receivers implement ``verify_push`` and ``parse_push`` (``hub.web.ingest`` calls them for
    any adapter that has them) and expose ``max_push_bytes``. Nothing is pulled: ``fetch`` is
    not implemented, so the hub starts no poller for this adapter.
    """
    name: ClassVar[str] = "push"
    Settings: ClassVar[type[PluginSettings]] = PushSettings
    simulator: ClassVar[str | None] = "adapters.push.simulator:PushSimulator"

    settings: PushSettings

    @property
    def max_push_bytes(self) -> int:
        return self.settings.max_body_bytes

    # --- receiving ---------------------------------------------------------------------------

    def verify_push(self, headers: Mapping[str, str], body: bytes) -> PushNonce:
        """Raise ``PushRefused`` unless ``body`` is signed with a configured secret, recently, once.

        Comparison is constant-time. Returns the request's ``PushNonce``: the hub refuses a
        signature already accepted within the window as a replay (every attempt, retries
        included, is signed afresh with the current time).
        """
        lowered = {k.lower(): v for k, v in headers.items()}
        stamp = lowered.get(TIMESTAMP_HEADER.lower(), "").strip()
        given = lowered.get(SIGNATURE_HEADER.lower(), "").strip()
        if not stamp or not given:
            raise PushRefused(f"missing {TIMESTAMP_HEADER} or {SIGNATURE_HEADER} header")
        if not _TIMESTAMP.fullmatch(stamp):
            raise PushRefused(f"{TIMESTAMP_HEADER} must be Unix seconds, got {stamp[:20]!r}")
        now = time.time()
        window = self.settings.replay_window_seconds
        if abs(now - int(stamp)) > window:
            raise PushRefused(f"{TIMESTAMP_HEADER} is {now - int(stamp):+.0f} s from the hub's clock, "
                              f"outside the {window} s replay window")
        secrets = [self.settings.secret] + ([self.settings.previous_secret] if self.settings.previous_secret else [])
        expected = [sign(s.get_secret_value(), stamp, body) for s in secrets]
        # A sender rotating its key may send both signatures, comma-separated.
        offered = [part.strip() for part in given.split(",") if part.strip()]
        matched = None
        for candidate in offered:
            for good in expected:
                if hmac.compare_digest(candidate.encode("ascii", "replace"), good.encode("ascii")):
                    matched = good
        if matched is None:
            raise PushRefused(f"{SIGNATURE_HEADER} does not match the body (HMAC-SHA256 over "
                              f"'<{TIMESTAMP_HEADER}>.<body>' with the shared secret)")
        # The hub spends this in its store: the same request a second time is a replay, on any
        # worker and after a restart. A digest, so the store keeps no signature.
        return PushNonce(hashlib.sha256(matched.encode("ascii")).hexdigest(), int(stamp) + window)

    def parse_push(self, body: bytes) -> list[RawRecord]:
        """The body (one envelope or an array of them) as raw records; ``ValueError`` if malformed.

        Each envelope is stored re-encoded as canonical JSON (sorted keys, UTF-8), so a re-push
        that only reorders keys is not a new version.
        """
        # Duplicate keys, NaN, deep nesting: a 400 naming the reason, never a 500.
        data = load_json(body, "the body", allow_nan=False)
        if isinstance(data, dict):
            items, paths = [data], ["(record)"]
        elif isinstance(data, list):
            items, paths = data, [f"[{i}]" for i in range(len(data))]
        else:
            raise ValueError("the body must be a JSON object (one record) or an array of them")
        if not items:
            raise ValueError("the body is an empty array: send at least one record")
        if len(items) > self.settings.max_records:
            raise ValueError(f"{len(items)} records in one push, more than max_records ({self.settings.max_records})")
        records: list[RawRecord] = []
        seen: dict[str, str] = {}
        for item, where in zip(items, paths):
            if not isinstance(item, dict):
                raise ValueError(f"{where} is not an object")
            unknown = sorted(set(item) - ENVELOPE_KEYS)
            if unknown:
                raise ValueError(f"{where}.{unknown[0]} is not part of the push envelope "
                                 f"({', '.join(sorted(ENVELOPE_KEYS))})")
            source_id = item.get("source_id")
            if not isinstance(source_id, str) or not source_id.strip() or len(source_id) > MAX_SOURCE_ID:
                raise ValueError(f"{where}.source_id must be a non-empty string of at most {MAX_SOURCE_ID} characters")
            if any(unicodedata.category(ch)[0] == "C" for ch in source_id):
                # NUL and other controls: no database stores them all alike (PostgreSQL refuses NUL).
                raise ValueError(f"{where}.source_id must not contain control or invisible characters")
            if source_id in seen:
                raise ValueError(f"{where}.source_id {source_id!r} is also {seen[source_id]}: one record per id per push")
            seen[source_id] = where
            deleted = item.get("deleted", False)
            if not isinstance(deleted, bool):
                raise ValueError(f"{where}.deleted must be true or false")
            if not isinstance(item.get("transcript"), dict):
                raise ValueError(f"{where}.transcript must be an object (a deleted record carries its last content)")
            _signed_xml(item, where)  # malformed base64 refuses the request, like any malformed envelope
            updated = _timestamp(item.get("updated_at"), where)
            payload = json.dumps(item, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode("utf-8")
            records.append(RawRecord(source_id, payload, updated_at=updated, deleted=deleted))
        return records

    # --- normalise ---------------------------------------------------------------------------

    def read_file(self, name: str, data: bytes) -> list[RawRecord]:
        """A saved push body: one envelope or an array of them, as ``parse_push`` reads it."""
        return self.parse_push(data)

    def signed_document(self, raw: RawRecord) -> bytes | None:
        """``signed_xml``: the XML học bạ as signed in the sender's software (CONTRACT.md)."""
        item = load_json(raw.payload)
        return _signed_xml(item, "(record)") if isinstance(item, dict) else None

    def normalize(self, raw: RawRecord) -> dict[str, Any]:
        item = load_json(raw.payload)
        transcript = item.get("transcript") if isinstance(item, dict) else None
        if not isinstance(transcript, dict):
            raise ValueError("transcript is missing or not an object")
        owned = sorted(HUB_OWNED & set(transcript))
        if owned:
            raise ValueError(f"transcript.{owned[0]} is set by the hub, not the sender: leave it out")
        return dict(transcript)
