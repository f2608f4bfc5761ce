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
from pydantic import BaseModel, SecretStr

# A key or setting whose name says its value is a secret.
SECRET_NAME = re.compile(r"(password|passwd|secret|token|authorization|api_key|apikey|pin|private_key)", re.I)
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
        return {k: "***" if SECRET_NAME.search(str(k)) else _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def redact_secrets(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    """structlog processor: drop the value of every key that names a secret."""
    return {k: ("***" if SECRET_NAME.search(k) and k != "event" else v) for k, v in event.items()}


def mask_personal_ids(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    """structlog processor: mask personal ids and inline secrets in every value."""
    return {k: _clean(v) for k, v in event.items()}


# What ``configure`` was last called with: worker processes log the way their hub does.
current: tuple[str, str] = ("json", "info")


def configure(fmt: str = "json", level: str = "info", stream: Any = None) -> None:
    """Configure structlog for the process (idempotent)."""
    global current
    current = (fmt, level)
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
    capture_library_logs(level)


class _LibraryRecords(logging.Handler):
    """Libraries' log records (pyHanko's path building, aiohttp, …) as one structured event each:
    the message with quoted values blanked (a certificate's subject names a person) and the
    exception's one-line reason — never a traceback on an operator's terminal."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            exc = record.exc_info[1] if record.exc_info else None
            reason = public_error(f"{type(exc).__name__}: {exc}")[:300] if exc is not None else None
            get_logger().log(record.levelno, f"library.{record.levelname.lower()}", logger=record.name,
                             message=public_error(record.getMessage())[:300], reason=reason)
        except Exception:  # a log line must never break the work that wrote it
            self.handleError(record)


def capture_library_logs(level: str = "warning") -> None:
    """Route the standard library's logging (what libraries use) through structlog (idempotent)."""
    logging.captureWarnings(True)   # ``warnings`` from libraries too
    root = logging.getLogger()
    root.handlers = [h for h in root.handlers if not isinstance(h, _LibraryRecords)] + [_LibraryRecords()]
    root.setLevel(max(logging.WARNING, getattr(logging, level.upper())))


def get_logger(**bound: Any) -> Any:
    return structlog.get_logger("hocba_hub").bind(**bound)


# --- what may leave the hub: no secret, and for viewers no personal value --------------------

_QUOTED = re.compile(r"""'[^']*'|"[^"]*\"""")
# A calendar date, year first or last (2015-02-30, 30/02/2015, 30.02.2015), with any time of day;
# the look-arounds keep IP addresses and version numbers intact.
_DATE = re.compile(r"(?<![\d.])(?:\d{4}[-/.]\d{1,2}[-/.]\d{1,2}|\d{1,2}[-/.]\d{1,2}[-/.]\d{4})(?![\d.]?\d)"
                   r"(?:[T ]\d{1,2}:\d{2}(?::\d{2})?(?:\.\d+)?)?")


# A certificate's subject as libraries print it names its holder (a teacher).
_CERT_NAME = re.compile(r"(Common Name: |CN=)[^,]+")


# Where the hub's systems live: a URL (with its user and host) or an absolute file path. Pages
# anyone may read (``/readyz``, the status page) show neither.
_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>,]+")
_PATH = re.compile(r"(?<![\w:/.~])(?:/[\w.@~+-]+){2,}/?|\b[A-Za-z]:\\[^\s'\"]+")
_USER_AT_HOST = re.compile(r"\b[\w.-]+@[\w-]+(?:\.[\w-]+)*(?::\d+)?(?=[/\s,'\")]|$)")


def no_internals(line: str) -> str:
    """``line`` without internal URLs, file paths or ``user@host`` (shown as ``<url>``,
    ``<path>``, ``<host>``), for surfaces that need no token."""
    return _USER_AT_HOST.sub("<host>", _PATH.sub("<path>", _URL.sub("<url>", line)))


def public_error(line: str) -> str:
    """An error line fit for a viewer or the wall screen: personal ids masked (``hub.logs.mask``)
    and quoted values, certificate holders' names and dates blanked, since a vendor's message may
    quote a name or birth date."""
    return _DATE.sub("…", _CERT_NAME.sub(r"\1…", _QUOTED.sub("'…'", mask(line))))


def secrets_in(settings: Any) -> list[str]:
    """Every secret in a settings object: ``SecretStr`` values and any value whose name says it
    is a secret. Longest first, so a secret containing another is replaced whole."""
    found: set[str] = set()

    def walk(node: Any, key: str = "") -> None:
        if isinstance(node, SecretStr):
            found.add(node.get_secret_value())
        elif isinstance(node, BaseModel):
            for name in type(node).model_fields:
                walk(getattr(node, name), name)
        elif isinstance(node, dict):
            for k, v in node.items():
                walk(v, str(k))
        elif isinstance(node, (list, tuple)):
            for v in node:
                walk(v, key)
        elif isinstance(node, str) and key and SECRET_NAME.search(key):
            found.add(node)

    walk(settings)
    # Very short values ("1", "on") would blank ordinary text and protect nothing.
    return sorted((s for s in found if len(s) >= 4), key=len, reverse=True)


def secret_values(config: Any) -> list[str]:
    """Every secret in a loaded config: admin tokens and every section's settings' secrets."""
    found: set[str] = {t.token.get_secret_value() for t in config.admin.tokens}

    def walk(node: Any) -> None:
        found.update(secrets_in(node))

    identity = [config.identity] if getattr(config, "identity", None) is not None else []
    for section in [*config.adapters, *config.routes, *config.signers, *identity]:
        walk(section.settings)
    if identity:
        try:
            walk(config.identity_settings())
        except AssertionError:  # the identity section failed validation: nothing loaded
            pass
    for getter, names in ((config.adapter_settings, [a.name for a in config.adapters]),
                          (config.signer_settings, [s.name for s in config.signers]),
                          (config.route_settings, [r.name for r in config.routes])):
        for name in names:
            try:
                walk(getter(name))
            except KeyError:  # a section that failed validation has no settings object
                pass
    # Very short values ("1", "on") would blank ordinary text and protect nothing.
    return sorted((s for s in found if len(s) >= 4), key=len, reverse=True)


def scrub(value: Any, secrets: list[str]) -> Any:
    """``value`` with every secret in every string replaced by ``***``."""
    if isinstance(value, str):
        for secret in secrets:
            if secret in value:
                value = value.replace(secret, "***")
        return value
    if isinstance(value, dict):
        return {k: scrub(v, secrets) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [scrub(v, secrets) for v in value]
    return value
