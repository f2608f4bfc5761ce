"""Strict JSON for vendor payloads: one parser every JSON adapter and the webhook use.

The standard library's ``json.loads`` keeps the last of two equal keys (a payload that says
``"HoTen"`` twice has two answers, and the hub would silently pick one), and overflows the
interpreter's stack on input nested a few thousand levels deep (``RecursionError``, which no
caller expects). ``loads`` refuses both with a ``PayloadError`` (a ``ValueError``, so the
pipeline quarantines the record with the reason, and the webhook answers 400).
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["PayloadError", "loads", "MAX_DEPTH"]

# No transcript shape goes deeper than six levels; 64 leaves room for any vendor's envelope.
MAX_DEPTH = 64


class PayloadError(ValueError):
    """The payload is not JSON the hub accepts; the message says why (never quoting a value)."""


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            # Keys are the vendor's field names, not personal data: naming one is safe.
            raise PayloadError(f"duplicate key {key!r} in one JSON object")
        out[key] = value
    return out


def _depth(value: Any, limit: int) -> bool:
    """Whether ``value`` nests deeper than ``limit`` (iterative: no recursion to overflow)."""
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


def _no_constant(name: str) -> Any:
    raise PayloadError(f"{name} is not a JSON number")


def loads(payload: bytes | str, *, max_depth: int = MAX_DEPTH, max_bytes: int | None = None,
          what: str = "payload", allow_nan: bool = True) -> Any:
    """Parse ``payload`` as JSON; ``PayloadError`` for a payload larger than ``max_bytes``,
    nested deeper than ``max_depth``, with a duplicate key, not UTF-8, or not JSON (with
    ``allow_nan=False`` also for the ``NaN``/``Infinity`` extensions)."""
    if max_bytes is not None and len(payload) > max_bytes:
        raise PayloadError(f"{what} is {len(payload)} bytes, more than the limit of {max_bytes}")
    try:
        text = payload.decode("utf-8") if isinstance(payload, (bytes, bytearray)) else payload
        value = json.loads(text, object_pairs_hook=_pairs, **({} if allow_nan else {"parse_constant": _no_constant}))
    except UnicodeDecodeError as exc:
        raise PayloadError(f"{what} is not UTF-8 (byte {exc.start})") from None
    except RecursionError:
        raise PayloadError(f"{what} is nested deeper than {max_depth} levels") from None
    except json.JSONDecodeError as exc:
        raise PayloadError(f"{what} is not JSON, or is truncated ({exc.msg} at char {exc.pos})") from None
    if _depth(value, max_depth):
        raise PayloadError(f"{what} is nested deeper than {max_depth} levels")
    return value
