"""What a plugin class looks like: the protocols adapters, signers and simulators follow.

A plugin registers classes through the hooks in ``hub.hookspecs``; the hub instantiates one
object per configured instance with the plugin's own validated ``Settings`` and a
``PluginContext``. Everything a vendor or signing provider needs to know is on this page.
"""

from __future__ import annotations

import datetime as dt
import unicodedata
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from hub.documents.package import ClassPackage, PackageReceipt


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


MAX_SOURCE_ID = 200  # characters: a vendor's id is a short key, never a document


def source_id_problem(source_id: object) -> str | None:
    """What makes ``source_id`` unfit to name a record, or None (the one rule: the webhook, the
    store and the normalisation path all apply it).

    The id becomes the store's ``source_id`` and, with the adapter's name, the ``record_id``
    every destination keys on. A control or invisible character (NUL, a zero-width space, a
    BOM: Unicode category C) would make two ids that look alike name two transcripts, and no
    database keeps them all alike (PostgreSQL refuses NUL in text). U+FFFD, the replacement
    character, is what such a character becomes when the store keeps the id (``storable_id``),
    and what a decoder leaves for bytes it could not read: an id that lost characters is refused
    too. Messages name the character by code point, never quote the id."""
    if not isinstance(source_id, str) or not source_id.strip():
        return "missing or empty"
    if len(source_id) > MAX_SOURCE_ID:
        return f"longer than {MAX_SOURCE_ID} characters ({len(source_id)})"
    for i, ch in enumerate(source_id):
        if ch == "\ufffd":
            return (f"U+FFFD at position {i + 1}: a character the vendor sent could not be kept "
                    "(a control or invisible one, or bytes that were not text)")
        if unicodedata.category(ch)[0] == "C":
            return f"a control or invisible character (U+{ord(ch):04X}) at position {i + 1}"
    return None


def storable_id(source_id: object) -> str:
    """``source_id`` as the store can keep it whatever its backend: every control or invisible
    character replaced by U+FFFD, cut to ``MAX_SOURCE_ID`` (+ U+FFFD) — so the record, refused
    by ``source_id_problem``, is kept and shown rather than failing its whole page."""
    text = source_id if isinstance(source_id, str) else str(source_id)
    kept = "".join("\ufffd" if unicodedata.category(ch)[0] == "C" else ch for ch in text)
    return kept if len(kept) <= MAX_SOURCE_ID else kept[:MAX_SOURCE_ID] + "\ufffd"


@dataclass(frozen=True)
class RawRecord:
    """One vendor record exactly as received; the hub stores ``payload`` before anything else."""
    source_id: str                   # the vendor's stable id for this transcript
    payload: bytes                   # the bytes as received (a JSON object, an XML element…)
    content_type: str = "application/json"
    updated_at: dt.datetime | None = None
    deleted: bool = False            # the vendor recalled the transcript → a CANCEL event


@dataclass(frozen=True)
class PushNonce:
    """What ``verify_push`` returns for a request that must be accepted only once: ``value``
    identifies the request (e.g. a digest of its signature), ``until`` (Unix seconds) is when
    the adapter's own freshness check would refuse it anyway. The hub keeps it in the store,
    so a replay is refused by every worker and after a restart."""
    value: str
    until: float


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
    pdf: bytes                       # the signed PDF (empty when the configuration makes none)
    xml: bytes | None = None         # the signed XML học bạ, when the configuration makes one
    reason: str | None = None        # why this version exists, when someone asked (an operator's cancel)


@dataclass(frozen=True)
class Receipt:
    """The destination's acknowledgement of one delivery."""
    receipt_id: str
    received_at: str
    duplicate: bool = False          # the destination already held this record_id + version
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ExportFile:
    """A file a destination wrote, handed out by the admin API's download (``Adapter.export``)."""
    filename: str
    media_type: str
    content: bytes


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


class Plugin(ABC):
    """What every plugin instance has: its validated settings, its context, and a life.

    ``name`` is the registered type name; ``Settings`` validates the YAML section; ``simulator``
    names a class (``"package.module:Class"``) serving the contract the plugin talks to, which
    the demo, ``hocba-hub simulate`` and the conformance kit start.
    """
    name: ClassVar[str]
    Settings: ClassVar[type[PluginSettings]] = PluginSettings
    simulator: ClassVar[str | None] = None

    def __init__(self, settings: PluginSettings, context: PluginContext):
        self.settings = settings
        self.context = context

    async def open(self) -> None:
        """Acquire resources (session, keys, tokens). Raise ``PluginError`` with a clear reason."""

    async def close(self) -> None:
        """Release what ``open`` acquired."""


class Adapter(Plugin):
    """A connection to one kind of system: a vendor's school software, or a destination.

    Implement ``fetch`` + ``normalize`` for a pull source, ``normalize`` alone for a push
    source, ``deliver`` for a destination. ``simulator`` names a ``Simulator`` class
    (``"package.module:Class"``) that serves the contract this adapter implements; the demo and
    the conformance kit start it.
    """
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

    def signed_document(self, raw: RawRecord) -> bytes | None:
        """The XML học bạ the school's software delivered with ``raw``, already signed for the
        stages done there (subject teachers, the homeroom teacher…), or ``None`` (the default).

        The hub keeps that document instead of building its own, once its content (signatures
        aside) is exactly the document the hub builds from the normalised record; it validates
        every signature against the trust anchors and the record, and signs only the stages left.
        Raise ``ValueError`` naming the field when the payload carries something unreadable.
        """
        return None

    def verify_push(self, headers: Mapping[str, str], body: bytes) -> "PushNonce | None":
        """For a push source: raise ``PermissionError`` (a reason safe to show the sender)
        unless the request to ``POST /ingest/{name}`` is authentic and fresh. Runs before
        the body is parsed; nothing of a refused request is stored. Return a ``PushNonce``
        for the hub to refuse the same request a second time (``None``: no replay check)."""
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

    async def deliver_package(self, package: "ClassPackage") -> "PackageReceipt":
        """For a destination that takes a class at a time (a transcript store): submit one class
        package the Department signed (``hub.documents.package``). The hub then sends it
        packages instead of single records, once no transcript of the class is still being
        signed. Idempotent on ``package.package_id``; ``DeliveryError`` as for ``deliver``."""
        raise NotImplementedError

    async def recall(self, package_id: str, reason: str) -> Receipt:
        """For a package destination: withdraw a package it accepted, saying why."""
        raise NotImplementedError

    async def cancel(self, record_id: str, version: int, reason: str) -> Receipt:
        """For a package destination: cancel one transcript version it holds, saying why (what an
        operator's cancel, a ``CANCEL`` version, becomes there)."""
        raise NotImplementedError

    async def held_version(self, record_id: str) -> int | None:
        """For a destination: the highest version it holds for ``record_id`` (``None``: none or
        unknown). Used to reconcile a version conflict whose answer did not say."""
        return None

    async def export(self, school_code: str, class_name: str, school_year: str | None = None) -> ExportFile | None:
        """For a destination that writes a file per class (an import sheet): the class's current
        file, for ``school_year`` or the latest one it has (``None``: no such file). The admin
        API serves it to operators at ``GET /api/exports/{school}/{class}``."""
        raise NotImplementedError

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
        """Whether the class implements ``fetch``, ``normalize``, ``verify_push``, ``deliver``,
        ``deliver_package`` or ``export``."""
        return getattr(cls, capability) is not getattr(Adapter, capability)


SIGNING_ROLES = ("homeroom_teacher", "principal", "school_seal")
"""The roles that sign both documents, in the Ministry's order: homeroom teacher → principal →
school seal (the school's issuing signature, its organisation certificate)."""

SIGNING_STAGES = ("subject_teacher", *SIGNING_ROLES)
"""Every signing stage, in order: subject teachers (secondary: each signs their subject's results
in the XML học bạ) come first. A configuration takes these in this order, any subset."""


ORGANISATION_ROLES = ("school_seal", "department")
"""Roles that sign with an organisation's certificate, found by its code rather than a personal id."""


@dataclass(frozen=True)
class SigningIdentity:
    """Who signs: a person (``personal_id``), a school (the seal, ``school_code``) or the
    Department of Education (``department``, its code in ``school_code``: it signs class packages)."""
    role: str                        # subject_teacher | homeroom_teacher | principal | school_seal | department
    name: str
    school_code: str
    personal_id: str | None = None

    @property
    def key(self) -> str:
        """The id a signer looks its key up by: the personal id, or the school's (the
        Department's) code for an organisation's certificate.

        A person without a personal id has no key: falling back to the school code would hand
        them the school seal's key.
        """
        if self.role in ORGANISATION_ROLES:
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


class Signer(Plugin):
    """A signing provider: local key files, a remote signing service, a hardware token.

    ``sign`` receives requests for one or many documents and returns the signed PDFs in the
    same order; a provider that can approve a batch at once (remote signing) should.
    ``simulator`` names a class (``"package.module:Class"``) serving the provider's contract
    on loopback, which the demo starts with keys from its test PKI.
    """
    async def open(self) -> None:
        """Load keys or log in. Raise ``PluginError`` (wrong password, missing file) here, at start-up."""

    @abstractmethod
    async def sign(self, requests: Sequence[SignRequest]) -> list[bytes]:
        """Return each request's PDF with its field signed (PAdES, ``ETSI.CAdES.detached``)."""

    async def certificates(self, identity: SigningIdentity) -> tuple[bytes, ...]:
        """DER of ``identity``'s signing certificate, then the chain the signer holds for it.

        For formats that sign digests (the XML học bạ): the document layer needs the
        certificate before it prepares what is signed (XAdES signs a digest of it). Raise
        ``PluginError`` (``hub.documents.signing.SigningError``) when there is no key for the
        identity or its certificate is not valid now.
        """
        raise PluginError(f"signer {self.name!r} cannot sign digests (XML documents); "
                          f"use pkcs12, csc or pkcs11, or implement Signer.sign_digests")

    async def sign_digests(self, requests: Sequence["DigestSignRequest"]) -> list[bytes]:
        """Sign each request's ``digest`` with its identity's key; raw signatures, same order.

        RSA: PKCS#1 v1.5 over the DigestInfo of ``digest``; ECDSA: the DER ``ECDSA-Sig-Value``.
        Only the digest reaches the key holder. Requests for one identity given together should
        share one approval (a remote service: one confirmation for the class batch).
        """
        raise PluginError(f"signer {self.name!r} cannot sign digests (XML documents); "
                          f"use pkcs12, csc or pkcs11, or implement Signer.sign_digests")

    async def check(self) -> Health:
        return Health(True)


class IdentityFinding(StrEnum):
    """What an identity provider says about one person.

    ``VERIFIED`` stands alone; any of the ``*_DIFFERS`` may come together (the name and the
    birth date can both be wrong); ``UNAVAILABLE`` means the service cannot say now (down,
    timing out, refusing the hub's credentials): the hub keeps the record waiting, it is not
    a verdict on the person.
    """
    VERIFIED = "verified"
    NOT_FOUND = "not_found"
    NAME_DIFFERS = "name_differs"
    BIRTH_DATE_DIFFERS = "birth_date_differs"
    GENDER_DIFFERS = "gender_differs"
    UNAVAILABLE = "unavailable"


@dataclass(frozen=True)
class Person:
    """One person to verify, as the transcript names them.

    Only ``personal_id``, ``full_name`` and ``birth_date`` may leave the hub; ``gender`` is for
    comparing with what the service answers, never for sending. ``birth_date`` is ``None`` for
    people the record gives no birth date for (the signers).
    """
    personal_id: str
    full_name: str
    birth_date: dt.date | None = None
    gender: int | None = None        # QCVN 109:2017: 1 male, 2 female; None or 0: not compared


@dataclass(frozen=True)
class IdentityResult:
    """A provider's answer about one ``Person``: one or more findings, and for ``UNAVAILABLE``
    a reason for operators (no personal value in it)."""
    findings: frozenset[IdentityFinding]
    detail: str = ""

    @classmethod
    def of(cls, *findings: IdentityFinding, detail: str = "") -> "IdentityResult":
        return cls(frozenset(findings), detail)

    @property
    def verified(self) -> bool:
        return self.findings == {IdentityFinding.VERIFIED}

    @property
    def available(self) -> bool:
        return IdentityFinding.UNAVAILABLE not in self.findings


class IdentityProvider(Plugin):
    """A service that says whether a person is who the record says: the population database.

    The hub calls ``verify`` with a batch of people (students, and signers when configured) and
    expects one ``IdentityResult`` per person, in order. A provider never raises for a service
    that is down: it answers ``UNAVAILABLE`` for the people it could not check, and the hub
    keeps their records waiting behind a circuit breaker. Only what ``Person`` documents as
    sendable may leave the hub, and nothing personal may be logged. ``simulator`` names an
    ``IdentitySimulator`` class (``"package.module:Class"``) serving the provider's contract.
    """
    @abstractmethod
    async def verify(self, people: Sequence[Person]) -> list[IdentityResult]:
        """One result per person, in order; ``UNAVAILABLE`` for those the service could not check."""

    async def check(self) -> Health:
        """Is the service reachable and are the credentials accepted?"""
        return Health(True)


@dataclass(frozen=True)
class DigestSignRequest:
    """Sign ``digest`` (the hash of what a document format prepared, e.g. an XML SignedInfo)."""
    identity: SigningIdentity
    digest: bytes
    digest_algorithm: str = "sha256"
    description: str = ""            # what is signed, for an approval prompt


@dataclass(frozen=True)
class SignatureSlot:
    """One signature a document takes: the role, who the document names for it, and where it goes.

    ``path`` is an XPath from the document's root to the element the signature goes into;
    ``reference`` the ``Id`` of the element it covers (never an ancestor of the slot);
    ``name`` how messages name the slot (``DANH_SACH_GVBM/GVBM[@Id='gvbm-TOAN']``).
    """
    role: str
    name: str
    path: str
    reference: str
    signature_id: str
    identity: SigningIdentity
    subject: str = ""                # the subject's code, for a subject teacher's slot


class DocumentFormat(ABC):
    """A signed document the hub makes from a central record beside the PDF: the XML học bạ.

    Registered through ``hocba_hub_document_formats``; ``documents: [<name>, pdf]`` in the
    configuration chooses it. A format builds the unsigned document, says which signatures it
    takes (``slots``, read from the document itself, so a verifier needs nothing else) and
    checks a document against its schema. Signing and verification (XML Signature with XAdES)
    are the hub's (``hub.documents.xmldsig``) and work for any format that names its slots.
    """
    name: ClassVar[str]
    media_type: ClassVar[str] = "application/xml"
    suffix: ClassVar[str] = ".xml"

    @abstractmethod
    def build(self, record: Any) -> bytes:
        """The unsigned document for ``record`` (``hub.records`` model), every slot empty."""

    @abstractmethod
    def slots(self, document: bytes) -> list[SignatureSlot]:
        """Every signature ``document`` takes, in signing order, with the identity it names."""

    @abstractmethod
    def schema_errors(self, document: bytes) -> list[str]:
        """What makes ``document`` invalid against the format's schema ([] when valid)."""

    def data_of(self, document: bytes) -> dict[str, Any]:
        """The facts a verifier compares with a record: ``school_code``, ``transcript_id``,
        ``updated_at`` (ISO) at least. Override to say more."""
        return {}


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

    def adopt(self, settings: dict[str, Any]) -> None:
        """Serve the credentials an adapter's configured ``settings`` name (the reverse of
        ``adapter_settings``), so ``hocba-hub simulate`` can stand in for the system a config
        points at. By default every setting named like one of this simulator's attributes
        (``client_id``, ``api_key``, ``token``, ``page_size`` …) is taken; ``base_url`` is where
        it is started, not an attribute."""
        for name, value in settings.items():
            if name != "base_url" and value is not None and hasattr(self, name):
                setattr(self, name, value.get_secret_value() if hasattr(value, "get_secret_value") else value)

    def trust(self, roots: Sequence[bytes]) -> None:
        """The roots (DER) the signatures this system checks must chain to: the demo's and
        ``hocba-hub simulate``'s test PKI. No-op for a system that checks no signature."""

    def accepted(self) -> dict[str, int]:
        """For a destination: ``record_id`` → highest version accepted so far."""
        return {}

    def save(self, folder: Path) -> list[Path]:
        """For a destination: write what it received, as a person would open it (class
        packages, workbooks…), into ``folder``; the files written. The demo calls it."""
        return []


class IdentitySimulator(Simulator):
    """An identity service's contract served on loopback, with a population seeded to agree or
    disagree with given transcripts in known ways.

    ``populate`` registers the people of central-format transcripts (``hub.kit.synthetic``
    shape); ``expected`` then maps each transcript's ``transcript_id`` to the findings the
    provider must report for its student (absent: verified). ``adapter_settings`` returns the
    provider's settings pointing at the running simulator.
    """
    expected: dict[str, frozenset[IdentityFinding]]

    @abstractmethod
    def populate(self, transcripts: Sequence[Mapping[str, Any]]) -> None:
        """Seed the population from these transcripts (their students and signers)."""
