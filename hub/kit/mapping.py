"""Mapping a vendor's record to central-format fields, key by key, with errors that say where.

A vendor record is nested objects with the vendor's key names. An adapter describes each
object with a table ``{vendor key: (central field, required)}`` and calls ``map_keys``: a
required key that is absent is the vendor breaking its contract, reported by the vendor's
dotted path (``student.fullName``, ``evaluation.subjects[2].subjectCode``); a key outside the
table may carry data the central format needs, so it is refused rather than dropped; a key
present with ``null`` or ``""`` is passed on, so ``hub.records`` names the central field if it
may not be empty.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from collections.abc import Iterable
from typing import Any

from hub.kit import jsonpayload
from hub.records import VIETNAM_TIME


class ContractError(ValueError):
    """The payload does not follow the adapter's documented contract (the hub quarantines it)."""


def where(path: str, key: str | int) -> str:
    """The dotted path of ``key`` under ``path`` (``a.b``, ``a[2]``)."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def as_object(value: Any, at: str) -> dict[str, Any]:
    """``value`` if it is an object; a ``ContractError`` naming ``at`` if it is missing or not one."""
    if value is None:
        raise ContractError(f"{at} is missing")
    if not isinstance(value, dict):
        raise ContractError(f"{at} is not an object")
    return value


def as_list(value: Any, at: str) -> list[Any]:
    """``value`` if it is a list; a ``ContractError`` naming ``at`` otherwise."""
    if not isinstance(value, list):
        raise ContractError(f"{at} is not a list")
    return value


def map_keys(obj: dict[str, Any], path: str, table: dict[str, tuple[str, bool]], allowed: Iterable[str] = (),
             *, contract: str) -> dict[str, Any]:
    """Rename ``obj``'s keys by ``table``; a missing required key, or a key outside ``table`` and
    ``allowed``, is a ``ContractError`` naming it and the ``contract`` (the adapter's name)."""
    allowed = frozenset(allowed)
    out: dict[str, Any] = {}
    for key, (field, required) in table.items():
        if key in obj:
            out[field] = obj[key]
        elif required:
            raise ContractError(f"{where(path, key)} is missing")
    for key in obj:
        if key not in table and key not in allowed:
            at = where(path, key) if key else f"{path or 'record'}: an empty key"
            raise ContractError(f"{at} is not part of the {contract} contract (see CONTRACT.md)")
    return out


def load_json(payload: bytes, what: str = "payload", *, max_bytes: int | None = None,
              allow_nan: bool = True) -> Any:
    """Parse a vendor's JSON strictly (``hub.kit.jsonpayload``); a payload that is not JSON (or
    was cut off), has a duplicate key, nests too deep or is too large is a ``ContractError``
    saying why."""
    try:
        return jsonpayload.loads(payload, what=what, max_bytes=max_bytes, allow_nan=allow_nan)
    except jsonpayload.PayloadError as exc:
        raise ContractError(str(exc)) from None


def stated_time(value: Any) -> dt.datetime:
    """A vendor's ISO 8601 timestamp, aware, with the offset it states; one without an offset is
    Vietnam time (every contract's clock unless it says otherwise)."""
    if not isinstance(value, str):
        raise ContractError(f"{value!r} is not an ISO 8601 timestamp")
    try:
        parsed = dt.datetime.fromisoformat(value.strip())
    except ValueError:
        raise ContractError(f"{value!r} is not an ISO 8601 timestamp") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=VIETNAM_TIME)


def vietnam_time(value: Any) -> dt.datetime:
    """A vendor's ISO 8601 timestamp as an aware time in Vietnam time (``stated_time``, converted)."""
    return stated_time(value).astimezone(VIETNAM_TIME)


def base64_document(value: Any, path: str) -> bytes | None:
    """A signed document (the XML học bạ as the vendor's software signed it) sent as base64 at
    ``path``, decoded; None when absent; a ``ContractError`` naming ``path`` when unreadable."""
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ContractError(f"{path}: expected the signed XML học bạ in base64, got {type(value).__name__}")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ContractError(f"{path}: not valid base64") from None
