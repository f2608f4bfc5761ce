"""What a plugin class looks like: the protocols adapters, signers and simulators follow.

A plugin registers classes through the hooks in ``hub.hookspecs``; the hub instantiates one
object per configured instance with the plugin's own validated ``Settings`` and a
``PluginContext``. Everything a vendor or signing provider needs to know is on this page.
"""

from __future__ import annotations

import datetime as dt
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict


class PluginSettings(BaseModel):
    """Base for a plugin's ``Settings``: unknown keys are config errors, not silently ignored."""
    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class PluginContext:
    """What the hub hands each plugin instance."""
    name: str                        # the instance's name in the config (``adapters[].name``)
    data_dir: Path                   # a directory the instance may keep files in
    executor: Executor | None = None  # the hub's process pool, for CPU-heavy work


@dataclass(frozen=True)
class Health:
    """Result of ``check()``: ``detail`` says what is wrong when ``ok`` is false."""
    ok: bool
    detail: str = ""


@dataclass(frozen=True)
class RawRecord:
    """One vendor record exactly as received; the hub stores ``payload`` before anything else."""
    source_id: str                   # the vendor's stable id for this transcript
    payload: bytes                   # the bytes as received (a JSON object, an XML element…)
    content_type: str = "application/json"
    updated_at: dt.datetime | None = None
    deleted: bool = False            # the vendor recalled the transcript → a CANCEL event


@dataclass(frozen=True)
class Page:
    """A page of a pull: its records and the cursor that resumes after them.

    The hub saves ``cursor`` in the same transaction as the page's records, so a crash re-reads
    a page rather than skipping it.
    """
    records: list[RawRecord]
    cursor: str | None


@dataclass(frozen=True)
class Delivery:
    """A signed transcript on its way to a destination."""
    record_id: str
    version: int
    event: str
    record: dict[str, Any]           # central format, catalogue names (``model_dump(by_alias=True)``)
    pdf: bytes                       # the signed PDF


@dataclass(frozen=True)
class Receipt:
    """The destination's acknowledgement of one delivery."""
    receipt_id: str
    received_at: str
    duplicate: bool = False          # the destination already held this record_id + version
    detail: dict[str, Any] = field(default_factory=dict)


class DeliveryError(Exception):
    """A delivery that failed; ``permanent`` means retrying the same request cannot succeed.

    ``conflict`` marks a version conflict (the destination holds this version with other
    content, or a higher one: ``held_version`` when it says which). The hub reconciles a
    conflict by sending the record again as the next version, never by retrying blindly.
    """

    def __init__(self, message: str, *, permanent: bool = False, retry_after: float | None = None,
                 conflict: bool = False, held_version: int | None = None):
        super().__init__(message)
        self.permanent = permanent or conflict
        self.retry_after = retry_after
        self.conflict = conflict
        self.held_version = held_version


class PluginError(Exception):
    """A plugin cannot start or work (wrong password, missing key file, bad credentials).

    The message is shown to an operator as it is: say what is wrong and which setting to fix.
    """


class Adapter(ABC):
    """A connection to one kind of system: a vendor's school software, or a destination.

    Implement ``fetch`` + ``normalize`` for a pull source, ``normalize`` alone for a push
    source, ``deliver`` for a destination. ``simulator`` names a ``Simulator`` class
    (``"package.module:Class"``) that serves the contract this adapter implements; the demo and
    the conformance kit start it.
    """
    name: ClassVar[str]
    Settings: ClassVar[type[PluginSettings]] = PluginSettings
    simulator: ClassVar[str | None] = None

    def __init__(self, settings: PluginSettings, context: PluginContext):
        self.settings = settings
        self.context = context

    async def open(self) -> None:
        """Acquire resources (HTTP session, tokens). Raise ``PluginError`` with a clear reason."""

    async def close(self) -> None:
        """Release what ``open`` acquired."""

    async def fetch(self, cursor: str | None) -> AsyncIterator[Page]:
        """Yield pages of records changed since ``cursor`` (``None``: everything)."""
        raise NotImplementedError
        yield  # pragma: no cover

    def normalize(self, raw: RawRecord) -> dict[str, Any]:
        """Map one raw record to central-format fields (``hub.records``; no envelope).

        Return a dict; the hub adds the envelope and validates it, so cleaning that every
        vendor needs (NFC, dates, comma decimals) is already done there. Raise ``ValueError``
        naming the field for what cannot be mapped. Must work offline, without ``open()`` and
        on an instance whose settings are unset (``hocba-hub normalize FILE`` runs it so).
        """
        raise NotImplementedError

    def read_file(self, name: str, data: bytes) -> list[RawRecord]:
        """The raw records a saved payload holds, with their envelope (deleted, update time) as
        ``fetch`` or a push would store them; ``ValueError`` naming what is wrong.

        ``hocba-hub normalize FILE`` uses it to show the envelope the hub would really make (a
        recalled record is a ``CANCEL``). The default: the whole file is one record's payload.
        """
        return [RawRecord(source_id=Path(name).stem, payload=data)]

    def verify_push(self, headers: Mapping[str, str], body: bytes) -> None:
        """For a push source: raise ``PermissionError`` (a reason safe to show the sender)
        unless the request to ``POST /ingest/{name}`` is authentic and fresh. Runs before
        the body is parsed; nothing of a refused request is stored."""
        raise NotImplementedError

    def parse_push(self, body: bytes) -> list[RawRecord]:
        """For a push source: the body as raw records, or ``ValueError`` naming what is wrong."""
        raise NotImplementedError

    max_push_bytes: int = 1024 * 1024
    """For a push source: larger bodies are refused (413) without being read."""

    async def deliver(self, delivery: Delivery) -> Receipt:
        """Send a signed transcript. Raise ``DeliveryError`` on failure; do not retry (the hub's
        outbox owns the retry policy)."""
        raise NotImplementedError

    async def held_version(self, record_id: str) -> int | None:
        """For a destination: the highest version it holds for ``record_id`` (``None``: none or
        unknown). Used to reconcile a version conflict whose answer did not say."""
        return None

    async def acknowledge(self, page: Page) -> None:
        """Called once ``page``'s records and cursor are committed to the store.

        Only now may a source forget them: a file-drop adapter moves the file to ``done/``, a
        queue adapter acknowledges the messages. A crash before this call re-reads the page.
        """

    async def check(self) -> Health:
        """Is the remote system reachable and are the credentials accepted?"""
        return Health(True)

    @classmethod
    def can(cls, capability: str) -> bool:
        """Whether the class implements ``fetch``, ``normalize``, ``verify_push`` or ``deliver``."""
        return getattr(cls, capability) is not getattr(Adapter, capability)


SIGNING_ROLES = ("homeroom_teacher", "principal", "school_seal")
"""The Ministry's signing order: homeroom teacher → principal → school seal."""


@dataclass(frozen=True)
class SigningIdentity:
    """Who signs: a person (``personal_id``) or a school (the seal, ``school_code``)."""
    role: str                        # homeroom_teacher | principal | school_seal
    name: str
    school_code: str
    personal_id: str | None = None

    @property
    def key(self) -> str:
        """The id a signer looks its key up by: the personal id, or the school code for a seal.

        A person without a personal id has no key: falling back to the school code would hand
        them the school seal's key.
        """
        if self.role == "school_seal":
            return self.school_code
        if not self.personal_id:
            raise ValueError(f"{self.role} {self.name!r} has no personal id to find a signing key by")
        return self.personal_id


@dataclass(frozen=True)
class SignRequest:
    """Sign ``field_name`` of ``pdf`` as ``identity``."""
    pdf: bytes
    field_name: str
    identity: SigningIdentity
    reason: str = ""
    location: str = ""
    level: str = "B-B"               # PAdES level: B-B, B-T (+ signature timestamp), B-LT (+ validation data)
    timestamp_url: str = ""          # the RFC 3161 timestamping authority, for B-T and B-LT


class Signer(ABC):
    """A signing provider: local key files, a remote signing service, a hardware token.

    ``sign`` receives requests for one or many documents and returns the signed PDFs in the
    same order; a provider that can approve a batch at once (remote signing) should.
    ``simulator`` names a class (``"package.module:Class"``) serving the provider's contract
    on loopback, which the demo starts with keys from its test PKI.
    """
    name: ClassVar[str]
    Settings: ClassVar[type[PluginSettings]] = PluginSettings
    simulator: ClassVar[str | None] = None

    def __init__(self, settings: PluginSettings, context: PluginContext):
        self.settings = settings
        self.context = context

    async def open(self) -> None:
        """Load keys or log in. Raise ``PluginError`` (wrong password, missing file) here, at start-up."""

    async def close(self) -> None:
        """Release what ``open`` acquired."""

    @abstractmethod
    async def sign(self, requests: Sequence[SignRequest]) -> list[bytes]:
        """Return each request's PDF with its field signed (PAdES, ``ETSI.CAdES.detached``)."""

    async def check(self) -> Health:
        return Health(True)


@dataclass
class Faults:
    """Fault switches every simulator exposes as ``simulator.faults``; flip them at any time.

    The conformance kit and the fault suites use exactly these names, so every simulator
    answers them the same way; a simulator may subclass this to add its vendor's own quirks.
    ``*_next_n`` switches count down one per data request (token and health requests are
    not counted, so a test can predict which read fails).
    """
    outage: bool = False              # every request → 503 until switched off
    fail_next_n: int = 0              # the next n requests → 503
    rate_limit_next_n: int = 0        # the next n requests → 429 with Retry-After
    retry_after_seconds: int = 1      # the Retry-After sent with 429s and outage 503s
    drop_next_n_connections: int = 0  # the next n requests: close the socket, no answer
    slow_seconds: float = 0.0         # latency added to every answer while non-zero


class Simulator(ABC):
    """A system's contract served over real HTTP on loopback, for the demo, tests and the kit.

    A source is seeded with ``hub.kit.synthetic.transcript(i, seed)`` for ``i < records`` plus
    ``invalid`` deliberately invalid ones (``hub.kit.synthetic.invalid_transcript``) in its
    vendor's shape; a destination ignores them. ``page_size`` is the page size the adapter
    settings from ``adapter_settings()`` ask for (``None`` for a source that does not page),
    so the kit can test paging boundaries.
    """
    page_size: int | None = None
    networked: ClassVar[bool] = True
    """False for a source the adapter does not reach over a network (a watched folder): there
    is no outage or transport fault to simulate, and the kit skips those checks."""

    def __init__(self, *, records: int = 0, invalid: int = 0, seed: int = 0):
        self.records = records
        self.invalid = invalid
        self.seed = seed
        self.faults = Faults()

    def expire_tokens(self) -> None:
        """Revoke every credential issued so far (for auth-expiry tests); no-op without tokens."""

    def seeded(self, index: int) -> dict[str, Any]:
        """The central-format transcript the ``index``-th valid record was seeded from: by
        default ``hub.kit.synthetic.transcript(index, seed)``; a simulator serving only some
        school levels overrides this."""
        from hub.kit.synthetic import transcript

        return transcript(index, self.seed)

    async def feed(self, hub_url: str, instance: str) -> None:
        """For a source the hub does not pull from (a pushing vendor): send the seeded records
        to the running hub at ``hub_url`` as adapter instance ``instance``. No-op otherwise."""

    @abstractmethod
    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Start serving; return the base URL (``port=0`` picks a free port)."""

    @abstractmethod
    async def stop(self) -> None:
        """Stop serving."""

    @abstractmethod
    def adapter_settings(self) -> dict[str, Any]:
        """Settings that point this system's adapter at the running simulator."""

    def accepted(self) -> dict[str, int]:
        """For a destination: ``record_id`` → highest version accepted so far."""
        return {}
