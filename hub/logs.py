"""Structured logs: JSON in production, readable in a terminal, never a secret or a full id.

Two processors guard every event whatever the caller passes: ``redact_secrets`` replaces the
value of any key that names a secret, and ``mask_personal_ids`` keeps only the last three
digits of any 12-digit personal id (số định danh) anywhere in a string value.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

import structlog

_SECRET_KEY = re.compile(r"(password|passwd|secret|token|authorization|api_key|apikey|pin|private_key)", re.I)
_PERSONAL_ID = re.compile(r"(?<!\d)\d{9}(\d{3})(?!\d)")
# Bearer tokens and key=value secrets inside free text (an exception message that quotes a URL).
_INLINE_SECRET = re.compile(r"(?i)(bearer\s+|(?:password|secret|token)=)[^\s&\"',]+")


def mask(text: str) -> str:
    """Mask personal ids and inline secrets in free text."""
    text = _PERSONAL_ID.sub(lambda m: "*********" + m.group(1), text)
    return _INLINE_SECRET.sub(lambda m: m.group(1) + "***", text)


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return mask(value)
    if isinstance(value, dict):
        return {k: "***" if _SECRET_KEY.search(str(k)) else _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def redact_secrets(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    """structlog processor: drop the value of every key that names a secret."""
    return {k: ("***" if _SECRET_KEY.search(k) and k != "event" else v) for k, v in event.items()}


def mask_personal_ids(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    """structlog processor: mask personal ids and inline secrets in every value."""
    return {k: _clean(v) for k, v in event.items()}


def configure(fmt: str = "json", level: str = "info", stream: Any = None) -> None:
    """Configure structlog for the process (idempotent)."""
    renderer = (
        structlog.processors.JSONRenderer(ensure_ascii=False)
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact_secrets,
            mask_personal_ids,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stderr),
        cache_logger_on_first_use=False,
    )


def get_logger(**bound: Any) -> Any:
    return structlog.get_logger("hocba_hub").bind(**bound)


class _LibraryEvents(logging.Handler):
    """Standard-library log records (pyHanko, signxml, ``warnings``) as one structured event each,
    never a traceback on the terminal."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            # Only the logger and the exception's type: libraries' messages quote certificate
            # subjects (names, personal ids), which never go into the hub's logs.
            error = None
            if record.exc_info and record.exc_info[1] is not None:
                error = type(record.exc_info[1]).__name__
            log = get_logger(library=record.name)
            method = {"CRITICAL": log.error, "ERROR": log.error, "WARNING": log.warning}.get(
                record.levelname, log.info)
            method("library.log", error=error)
        except Exception:  # logging must never be what fails
            self.handleError(record)


def capture_library_logs(level: str = "warning") -> None:
    """Route the standard library's logging (and ``warnings``) through structlog, tracebacks dropped."""
    logging.captureWarnings(True)
    root = logging.getLogger()
    root.handlers = [h for h in root.handlers if not isinstance(h, _LibraryEvents)] + [_LibraryEvents()]
    root.setLevel(getattr(logging, level.upper()))
