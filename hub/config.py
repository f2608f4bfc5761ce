"""The hub's YAML configuration: one file, secrets by ``${ENV_VAR}``, every error path-named.

Loading is two passes: the hub's own shape (``HubConfig``), then each plugin section against
that plugin's ``Settings``. Every error from both passes is collected, so an operator fixes a
broken file in one round: ``adapters[0].settings.base_url: Input should be a valid URL``.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from hub.contracts import SIGNING_STAGES, PluginSettings
from hub.plugins import adapter_types, identity_provider_types, signer_types

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(Exception):
    """A config that cannot be used; ``errors`` holds one ``path: message`` line each."""

    def __init__(self, errors: list[str]):
        self.errors = errors
        super().__init__("\n".join(errors))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PluginSection(_Strict):
    """One configured plugin instance: its ``type`` (registered name) and its ``settings``."""
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$", description="Instance name, used in logs and URLs")
    type: str = Field(description="Registered adapter or signer name, see `hocba-hub plugins`")
    settings: dict[str, Any] = Field(default_factory=dict)


class AdapterSection(PluginSection):
    poll_interval: float = Field(default=60.0, gt=0, description="Seconds between pulls")
    enabled: bool = True


Level = Literal["B-B", "B-T", "B-LT"]
_TSA_URL = r"^(|https?://\S+|demo)$"


class SigningStep(_Strict):
    """Who signs one role, and how: the signer instance, the PAdES level, the timestamp authority."""
    role: Literal["subject_teacher", "homeroom_teacher", "principal", "school_seal"]
    signer: str = Field(description="Name of an entry under `signers`")
    level: Level | None = Field(default=None, description="PAdES level; default `signing.level`")
    timestamp_url: str | None = Field(
        default=None, pattern=_TSA_URL,
        description="RFC 3161 timestamping authority for B-T/B-LT; default `signing.timestamp_url`. "
                    "`demo`: the loopback TSA `hocba-hub demo` starts")


class SchoolStep(_Strict):
    """A school's own choice for one role; what it leaves out comes from the province's step."""
    signer: str | None = Field(default=None, description="Name of an entry under `signers`")
    level: Level | None = None
    timestamp_url: str | None = Field(default=None, pattern=_TSA_URL)


class SigningConfig(_Strict):
    """The signing order, and which signer each role uses — province-wide, then per school.

    One school can sign with one remote signing service, another with a second provider,
    another seal with a USB token:
    ``schools`` maps a school code to the roles it does differently.
    """
    steps: list[SigningStep] = Field(min_length=1)
    level: Level = Field(default="B-B", description="PAdES level of every step that does not say")
    timestamp_url: str = Field(default="", pattern=r"^(|https?://\S+|demo)$",
                               description="Timestamping authority of every step that does not say")
    schools: dict[str, dict[Literal["subject_teacher", "homeroom_teacher", "principal", "school_seal"],
                            SchoolStep]] = Field(
        default_factory=dict, description="Per-school overrides: school code → role → signer/level/TSA")
    trust: list[Path] = Field(
        default_factory=list,
        description="PEM files of trusted roots: documents arriving signed must chain to one, and "
                    "so must every signature before delivery (empty: integrity checked, trust not)")
    trust_anchors: list[str] = Field(
        default_factory=list,
        description="Names of sets under the top-level `trust_anchors` (e.g. neac, vgca) whose roots are "
                    "trusted as `trust` is: for documents arriving signed and every signature before delivery")
    revocation_check: bool = Field(
        default=True,
        description="Before each step signs, check the signer's certificate against its CA's OCSP responder "
                    "or CRL (the addresses the certificate names); a revoked certificate fails the step "
                    "with the reason, one that cannot be checked waits for a replay")
    c14n: Literal["exclusive", "inclusive"] = Field(
        default="exclusive", description="Canonicalisation of the XML học bạ's signatures")
    school_ids: dict[str, list[str]] = Field(
        default_factory=dict,
        description="School code → identifiers its organisation certificate carries in serialNumber or "
                    "UID (e.g. MST:0101234567); the school code itself is always accepted")
    concurrency: int = Field(
        default=64, ge=1,
        description="Signing steps in flight; remote signers wait on approvals and the network, "
                    "so this is far above the number of processes")

    @field_validator("steps")
    @classmethod
    def _in_order(cls, steps: list[SigningStep]) -> list[SigningStep]:
        roles = [s.role for s in steps]
        expected = [r for r in SIGNING_STAGES if r in roles]
        if roles != expected or len(set(roles)) != len(roles):
            raise ValueError(f"steps must follow {' → '.join(SIGNING_STAGES)}, each once; got {roles}")
        return steps

    @model_validator(mode="after")
    def _timestamped_steps_have_a_tsa(self) -> "SigningConfig":
        roles = {s.role for s in self.steps}
        for code, overrides in self.schools.items():
            extra = sorted(set(overrides) - roles)
            if extra:
                raise ValueError(f"schools.{code}: {', '.join(extra)} is not a signing step")
        for code in (None, *self.schools):
            for step in self.steps:
                resolved = self.step_for(step.role, code)
                if resolved.level != "B-B" and not resolved.timestamp_url:
                    where = f"schools.{code}.{step.role}" if code else f"steps[{step.role}]"
                    raise ValueError(f"{where}: level {resolved.level} needs a timestamp_url "
                                     f"(here or in signing.timestamp_url)")
        return self

    def step_for(self, role: str, school_code: str | None) -> SigningStep:
        """The step ``role`` takes for ``school_code``: the school's override over the province's,
        and ``level``/``timestamp_url`` filled in from the signing-wide defaults."""
        base = next(s for s in self.steps if s.role == role)
        own = self.schools.get(school_code or "", {}).get(role) or SchoolStep()
        level = own.level or base.level or self.level
        return SigningStep(
            role=base.role,
            signer=own.signer or base.signer,
            level=level,
            timestamp_url=(own.timestamp_url or base.timestamp_url or self.timestamp_url) if level != "B-B" else "",
        )

    def signer_names(self) -> set[str]:
        """Every signer a step or a school override names (each must be defined under ``signers``)."""
        return {s.signer for s in self.steps} | {
            o.signer for overrides in self.schools.values() for o in overrides.values() if o.signer}


class HttpConfig(_Strict):
    bind: str = Field(default="127.0.0.1:8080", pattern=r"^[^:]+:\d{1,5}$")


class LoggingConfig(_Strict):
    format: Literal["json", "console"] = "json"
    level: Literal["debug", "info", "warning", "error"] = "info"


class WorkersConfig(_Strict):
    processes: int = Field(default=0, ge=0, description="CPU worker processes; 0 = one per core")
    concurrency: int = Field(default=0, ge=0, description="Records in flight per stage; 0 = 2 per process")


class DeliveryConfig(_Strict):
    max_attempts: int = Field(default=8, ge=1, description="Attempts before a delivery is dead-lettered")
    backoff_initial: float = Field(default=0.5, gt=0, description="Seconds before the first retry")
    backoff_max: float = Field(default=300.0, gt=0, description="Longest wait between retries")
    breaker_threshold: int = Field(default=5, ge=1, description="Consecutive failures that open the circuit")
    breaker_probe_seconds: float = Field(default=30.0, gt=0, description="While open: one probe this often")


class RouteFilters(_Strict):
    """Which records a route takes; an omitted list takes every value, each given list must match."""
    levels: list[Literal["02", "03", "04"]] | None = Field(
        default=None, min_length=1, description="School levels (macaphoc): 02 primary, 03 lower, 04 upper secondary")
    schools: list[Annotated[str, Field(pattern=r"^[0-9A-Za-z]{1,20}$")]] | None = Field(
        default=None, min_length=1, description="School codes (matruong)")
    events: list[Literal["NEW", "UPDATE", "CANCEL"]] | None = Field(
        default=None, min_length=1, description="Envelope events (sukien)")

    def matches(self, level: str | None, school: str | None, event: str | None) -> bool:
        return ((self.levels is None or level in self.levels)
                and (self.schools is None or school in self.schools)
                and (self.events is None or event in self.events))


class RouteSection(PluginSection):
    """One destination a signed record may go to, with its own outbox, retries and dead letters."""
    type: str = Field(description="Registered destination adapter name, see `hocba-hub plugins`")
    filters: RouteFilters = Field(default_factory=RouteFilters,
                                  description="Which records this route takes (none: every record)")

    def matches(self, level: str | None, school: str | None, event: str | None) -> bool:
        return self.filters.matches(level, school, event)


class AdminToken(_Strict):
    name: str = Field(description="Who holds the token; recorded in the audit log")
    token: SecretStr = Field(min_length=16, description="Bearer token, from the environment: ${ADMIN_TOKEN}")
    role: Literal["operator", "viewer"] = Field(
        default="viewer", description="operator: personal data and actions; viewer: ids and states only")


class AdminConfig(_Strict):
    tokens: list[AdminToken] = Field(default_factory=list, description="Admin API bearer tokens")


class IdentitySection(PluginSection):
    """The identity check before rendering: which provider, and what it checks.

    Every transcript's student is verified against the provider (the population database); a
    mismatch or a missing personal id blocks the record (``blocked_identity``) with the reason
    per field, and an outage leaves records waiting. A verified person is remembered for
    ``cache_days``, so an unchanged student is not asked about again on every version.
    """
    type: str = Field(description="Registered identity provider name, see `hocba-hub plugins`")
    check_signers: bool = Field(
        default=False, description="Also verify the homeroom teacher and principal named on the record "
                                   "(name and personal id; they have no birth date on it)")
    batch_size: int = Field(default=50, ge=1, le=5000, description="Records checked in one call to the provider")
    batch_window: float = Field(default=0.5, ge=0, description="Seconds to wait for a fuller batch when fewer "
                                                              "than batch_size records are waiting")
    cache_days: float = Field(default=30, ge=0, description="How long a verified person is remembered "
                                                            "(0: ask every time); mismatches are never remembered")
    retry_seconds: float = Field(default=10.0, gt=0, description="Wait after the provider could not answer")
    breaker_threshold: int = Field(default=3, ge=1, description="Consecutive unanswered batches that open the circuit")
    breaker_probe_seconds: float = Field(default=30.0, gt=0, description="While open: one probe this often")


_CODE_PATTERNS = {"departments": (r"^[0-9]{2,3}$", "2-3 digits"), "schools": (r"^[0-9]{8,12}$", "8-12 digits")}


class CodesConfig(_Strict):
    """Old codes → new codes, applied to every record as it is normalised (the provinces merged
    on 1 July 2025: a department's and its schools' codes may change, vendors may still send the
    old ones). The record keeps the new code; its history names the original."""
    departments: dict[str, str] = Field(
        default_factory=dict, description="Department (Sở GD&ĐT) code → its new code, e.g. '26': '22' "
                                          "(quote codes: YAML reads 01 as the number 1)")
    schools: dict[str, str] = Field(
        default_factory=dict, description="School code → its new code; a school under a remapped "
                                          "department needs its own entry (its code starts with the department's)")


def codes_errors(node: Any) -> list[str]:
    """What is wrong with a ``codes:`` section, one ``codes.<table>.<old>: reason`` line each: a
    code that is not a quoted string of digits, a code mapped to itself, a cycle, or a chain (a
    new code that is itself mapped again: which one applies would depend on the order)."""
    if node is None:
        return []
    if not isinstance(node, dict):
        return ["codes: must be a mapping with departments: and schools:"]
    errors = []
    for table, mapping in node.items():
        if table not in _CODE_PATTERNS:
            continue  # the model names unknown keys
        if not isinstance(mapping, dict):
            errors.append(f"codes.{table}: must be a mapping of old code → new code")
            continue
        pattern, shape = _CODE_PATTERNS[table]
        for old, new in mapping.items():
            where = f"codes.{table}.{old}"
            bad = [c for c in (old, new) if not isinstance(c, str) or not re.match(pattern, c)]
            if bad:
                hint = (" (write codes in quotes: YAML reads unquoted digits as a number and drops leading zeros)"
                        if any(isinstance(c, int) for c in bad) else "")
                errors.append(f"{where}: {bad[0]!r} is not a {table[:-1]} code of {shape}{hint}")
                continue
            if old == new:
                errors.append(f"{where}: mapped to itself")
                continue
            seen, code = [old], new
            while code in mapping and code not in seen:
                seen.append(code)
                code = mapping[code]
            if code == old:
                errors.append(f"{where}: cycle {' → '.join([*seen, old])}")
            elif len(seen) > 1 and code not in seen:
                errors.append(f"{where}: {old} → {new}, but {new} is itself mapped (to {mapping[new]}); "
                              f"map {old} straight to its final code")
    return errors


class RetentionConfig(_Strict):
    delivered_payload_days: float = Field(
        default=180, gt=0, description="Drop payloads/PDFs of delivered records after this many days")
    check_interval_hours: float = Field(default=24, gt=0)


class VerifyConfig(_Strict):
    """The public verification page (``/verify``): where it is reached from outside, and its limits."""
    public_base_url: str = Field(
        default="", pattern=r"^(|https?://\S+)$",
        description="The page's public address, e.g. https://hocba.sogd.example.vn/verify: each PDF's QR "
                    "code carries <this>/<code> (empty: the code is printed without a QR code)")
    max_upload_bytes: int = Field(default=5 * 1024 * 1024, ge=1024, le=50 * 1024 * 1024,
                                  description="Largest PDF or XML the page accepts for checking (never stored)")
    rate_per_minute: float = Field(default=60, gt=0, description="Checks per minute per client IP, sustained")
    burst: int = Field(default=20, ge=1, description="Checks a client IP may make at once before the rate applies")
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="Addresses of reverse proxies whose X-Forwarded-For names the client (empty: the peer "
                    "address is the client)")


class DepartmentConfig(_Strict):
    """The Department of Education (Sở GD&ĐT) the hub runs for: it signs each class package
    (``hub.documents.package``) with its own certificate before a destination takes it."""
    code: str = Field(pattern=r"^[0-9]{2,3}$", description="The Department's code (MASOGD), e.g. 01; every "
                                                            "packaged transcript's school must belong to it")
    name: str = Field(min_length=1, max_length=200, description="The Department's name, as its certificate names it")
    signer: str = Field(description="Name of an entry under `signers` holding the Department's key, found by "
                                    "its code (a key file, a token or a remote signing service)")


class HubConfig(_Strict):
    """The whole configuration file."""
    data_dir: Path = Field(default=Path("hocba-data"), description="Store, PDFs and keys live here")
    store: str = Field(
        default="",
        description="Store location: a SQLite file path (empty = <data_dir>/hub.sqlite3, one hub process), "
                    "or postgresql://user@host:port/database for several hub workers sharing one "
                    "PostgreSQL database (put the password in ${ENV} or PGPASSWORD, not in the file)")

    @field_validator("store")
    @classmethod
    def _store_location(cls, value: str) -> str:
        if "://" not in value:
            return value  # a file path
        scheme = value.split("://", 1)[0]
        if scheme not in ("postgresql", "postgres"):
            raise ValueError(f"unsupported store URL scheme {scheme!r}: use a file path or postgresql://…")
        from urllib.parse import urlsplit

        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 - raises on a port that is not a number
        except ValueError as exc:
            raise ValueError(f"not a valid PostgreSQL URL: {exc}") from None
        if not parts.path.strip("/"):
            raise ValueError("a PostgreSQL store URL must name the database: postgresql://user@host:5432/hocba")
        return value
    http: HttpConfig = HttpConfig()
    logging: LoggingConfig = LoggingConfig()
    workers: WorkersConfig = WorkersConfig()
    delivery: DeliveryConfig = DeliveryConfig()
    clock_skew_seconds: float = Field(
        default=300.0, ge=0, le=86400,
        description="How far ahead of the hub's clock a vendor's update time may be and still be trusted "
                    "for ordering versions; a record dated further ahead is held (quarantined) with the reason")
    admin: AdminConfig = AdminConfig()
    retention: RetentionConfig = RetentionConfig()
    verify: VerifyConfig = VerifyConfig()
    adapters: list[AdapterSection] = Field(min_length=1)
    routes: list[RouteSection] = Field(
        default_factory=list, description="Where signed records go: each route a destination adapter with its "
                                          "own outbox, filtered by level, school and event")
    destination: PluginSection | None = Field(
        default=None, description="The old spelling of one route that takes every record (use `routes`)")
    signers: list[PluginSection] = Field(min_length=1)
    signing: SigningConfig
    codes: CodesConfig = Field(
        default_factory=CodesConfig, description="Old department and school codes → new ones (province "
                                                 "mergers), applied as every record is normalised")
    identity: IdentitySection | None = Field(
        default=None, description="Check the people a record names against an identity provider before "
                                  "rendering and signing (none: no check)")

    department: DepartmentConfig | None = Field(
        default=None, description="The Department that signs class packages (needed by a destination that "
                                  "takes packages)")
    trust_anchors: dict[str, list[Path]] = Field(
        default_factory=dict,
        description="Named sets of trusted root certificates (PEM files), e.g. `neac` (the national root, "
                    "public CAs) and `vgca` (the government CA, public-duty certificates); "
                    "`signing.trust_anchors` and `hocba-hub verify --anchors` use them by name")
    documents: list[str] = Field(
        default_factory=lambda: ["xml", "pdf"], min_length=1,
        description="What the hub makes and signs per transcript: `pdf` and at most one XML document "
                    "format (`xml`, the built-in học bạ layout, or a registered one)")

    @field_validator("documents")
    @classmethod
    def _known_documents(cls, value: list[str]) -> list[str]:
        from hub.plugins import document_formats

        formats = document_formats()
        unknown = [d for d in value if d != "pdf" and d not in formats]
        if unknown:
            raise ValueError(f"unknown document format(s) {', '.join(map(repr, unknown))}; installed: "
                             f"pdf, {', '.join(sorted(formats)) or 'no XML format'}")
        if len(set(value)) != len(value) or sum(1 for d in value if d != "pdf") > 1:
            raise ValueError("each document once, and at most one XML format")
        return value

    @property
    def xml_format(self) -> str | None:
        """The XML document format configured, if any."""
        return next((d for d in self.documents if d != "pdf"), None)

    @property
    def makes_pdf(self) -> bool:
        return "pdf" in self.documents

    @model_validator(mode="before")
    @classmethod
    def _one_route_from_destination(cls, data: Any) -> Any:
        # ``destination:`` is the spelling of configs written before routes: it stays valid and
        # means one route, of the same name, that takes every record.
        # Problems are left to the field and model checks, so every error comes out in one round.
        if isinstance(data, dict) and isinstance(data.get("destination"), dict) and not data.get("routes"):
            data = {**data, "routes": [dict(data["destination"])]}
        return data

    @model_validator(mode="after")
    def _references(self) -> "HubConfig":
        names = [a.name for a in self.adapters]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"adapters: names must be unique, repeated: {', '.join(dupes)}")
        if self.destination is not None and [(r.name, r.type) for r in self.routes] != [
                (self.destination.name, self.destination.type)]:
            raise ValueError("destination: give either `routes` or the older `destination`, not both")
        if not self.routes:
            raise ValueError("routes: at least one route (a destination adapter) is needed")
        routes = [r.name for r in self.routes]
        dupes = sorted({n for n in routes if routes.count(n) > 1})
        if dupes:
            raise ValueError(f"routes: names must be unique, repeated: {', '.join(dupes)}")
        missing = [n for n in self.signing.trust_anchors if n not in self.trust_anchors]
        if missing:
            raise ValueError(f"signing.trust_anchors: {', '.join(map(repr, missing))} not defined under "
                             f"trust_anchors")
        for name, files in self.trust_anchors.items():
            absent = [str(f) for f in files if not f.exists()] if files else ["(no file listed)"]
            if absent:
                raise ValueError(f"trust_anchors.{name}: {', '.join(absent)} not found (a Department puts the "
                                 f"root certificate it downloaded there; see the README)")
        signers = {s.name for s in self.signers}
        unknown = sorted(self.signing.signer_names() - signers)
        if unknown:
            raise ValueError(f"signing: signer(s) {', '.join(map(repr, unknown))} not defined under signers")
        if self.department is not None and self.department.signer not in signers:
            raise ValueError(f"department.signer: {self.department.signer!r} is not defined under signers")
        if self.identity is not None:
            # Health, logs and metrics key plugin instances by name: the provider needs its own.
            taken = {*names, *routes, *signers}
            if self.identity.name in taken:
                raise ValueError(f"identity.name: {self.identity.name!r} is already the name of another "
                                 f"plugin instance")
        return self

    def trust_paths(self, names: list[str] | None = None) -> list[Path]:
        """The root certificate files signatures must chain to: ``signing.trust`` and the named
        ``trust_anchors`` sets (``names``; default ``signing.trust_anchors``)."""
        paths = list(self.signing.trust) if names is None else []
        for name in self.signing.trust_anchors if names is None else names:
            if name not in self.trust_anchors:
                raise ValueError(f"trust anchor set {name!r} is not defined under trust_anchors "
                                 f"(defined: {', '.join(sorted(self.trust_anchors)) or 'none'})")
            paths += self.trust_anchors[name]
        return paths

    @property
    def route_names(self) -> list[str]:
        return [r.name for r in self.routes]

    def route(self, name: str) -> RouteSection:
        return next(r for r in self.routes if r.name == name)

    @property
    def store_path(self) -> str:
        return self.store or str(self.data_dir / "hub.sqlite3")

    # Each plugin's validated Settings, filled by ``load_config``.
    _adapter_settings: dict[str, PluginSettings] = {}
    _signer_settings: dict[str, PluginSettings] = {}
    _route_settings: dict[str, PluginSettings] = {}
    _identity_settings: PluginSettings | None = None

    def bind_settings(self, *, adapters: dict[str, PluginSettings], signers: dict[str, PluginSettings],
                      routes: dict[str, PluginSettings], identity: PluginSettings | None) -> None:
        """Keep each plugin section's settings as its plugin's ``Settings`` validated them."""
        self._adapter_settings, self._signer_settings = adapters, signers
        self._route_settings, self._identity_settings = routes, identity

    def adapter_settings(self, name: str) -> PluginSettings:
        return self._adapter_settings[name]

    def signer_settings(self, name: str) -> PluginSettings:
        return self._signer_settings[name]

    def route_settings(self, name: str) -> PluginSettings:
        return self._route_settings[name]

    def destination_settings(self) -> PluginSettings:
        """The first route's settings (the only one of a config written with ``destination:``)."""
        return self._route_settings[self.routes[0].name]

    def identity_settings(self) -> PluginSettings:
        assert self._identity_settings is not None
        return self._identity_settings

    def override_settings(self, name: str, patch: dict[str, Any]) -> None:
        """Re-validate one plugin instance's settings (an adapter, the destination, a signer or the
        identity provider) with ``patch`` applied: the demo and the kit point instances at simulators."""
        if self.identity is not None and name == self.identity.name:
            cls = identity_provider_types()[self.identity.type].cls
            self._identity_settings = cls.Settings.model_validate({**self.identity.settings, **patch})
            return
        for route in self.routes:
            if route.name == name:
                cls = adapter_types()[route.type].cls
                self._route_settings[name] = cls.Settings.model_validate({**route.settings, **patch})
                return
        for section in self.adapters:
            if section.name == name:
                self._adapter_settings[name] = adapter_types()[section.type].cls.Settings.model_validate(
                    {**section.settings, **patch})
                return
        section = next(s for s in self.signers if s.name == name)
        self._signer_settings[name] = signer_types()[section.type].cls.Settings.model_validate(
            {**section.settings, **patch})


def _path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _errors(exc: ValidationError, prefix: str = "") -> list[str]:
    lines = []
    for err in exc.errors(include_url=False):
        path = _path(err["loc"])
        full = f"{prefix}.{path}" if prefix and path else (prefix or path or "(root)")
        lines.append(f"{full}: {err['msg'].removeprefix('Value error, ')}")
    return lines


def expand_env(node: Any, path: str = "", errors: list[str] | None = None) -> Any:
    """Replace ``${VAR}`` / ``${VAR:-default}`` in every string; a missing VAR is an error."""
    errors = [] if errors is None else errors
    if isinstance(node, dict):
        return {k: expand_env(v, f"{path}.{k}" if path else str(k), errors) for k, v in node.items()}
    if isinstance(node, list):
        return [expand_env(v, f"{path}[{i}]", errors) for i, v in enumerate(node)]
    if isinstance(node, str):
        def sub(m: re.Match[str]) -> str:
            value = os.environ.get(m.group(1), m.group(2))
            if value is None:
                errors.append(f"{path}: environment variable {m.group(1)} is not set")
                return ""
            return value
        return _ENV_REF.sub(sub, node)
    return node


def parse_config(data: Any) -> HubConfig:
    """Validate a config tree (already read from YAML); raise ``ConfigError`` with every error."""
    if not isinstance(data, dict):
        raise ConfigError(["(root): the config must be a mapping"])
    errors: list[str] = []
    data = expand_env(data, errors=errors)
    codes = codes_errors(data.get("codes"))
    errors += codes
    try:
        # A broken codes table is reported once, by path, above: the model need not see it.
        config = HubConfig.model_validate({**data, "codes": {}} if codes else data)
    except ValidationError as exc:
        raise ConfigError(errors + _errors(exc)) from None

    adapters, signers = adapter_types(), signer_types()

    def settings_of(section: PluginSection, registry: dict, where: str, *need: str):
        # ``need``: capabilities of which the plugin must have at least one; the first names it.
        info = registry.get(section.type)
        if info is None:
            known = ", ".join(sorted(registry)) or "none installed"
            errors.append(f"{where}.type: unknown {section.type!r} (installed: {known})")
            return None
        if need and not any(info.cls.can(n) for n in need):
            errors.append(f"{where}.type: {section.type!r} cannot {need[0]}")
            return None
        try:
            return info.cls.Settings.model_validate(section.settings)
        except ValidationError as exc:
            errors.extend(_errors(exc, f"{where}.settings"))
            return None

    # In the file's order, so the errors come out in it too.
    adapter_settings = {s.name: v for i, s in enumerate(config.adapters)
                        if (v := settings_of(s, adapters, f"adapters[{i}]", "normalize")) is not None}
    # Errors name the spelling the file used: ``destination`` (the old one) or ``routes[i]``.
    # A destination takes one transcript at a time (``deliver``) or a class at a time
    # (``deliver_package``, the Ministry's store): either makes a route.
    old = config.destination is not None
    route_settings = {s.name: v for i, s in enumerate(config.routes)
                      if (v := settings_of(s, adapters, "destination" if old else f"routes[{i}]", "deliver",
                                           "deliver_package")) is not None}
    signer_settings = {s.name: v for i, s in enumerate(config.signers)
                       if (v := settings_of(s, signers, f"signers[{i}]")) is not None}
    identity = (None if config.identity is None
                else settings_of(config.identity, identity_provider_types(), "identity"))
    config.bind_settings(adapters=adapter_settings, signers=signer_settings, routes=route_settings,
                         identity=identity)
    if errors:
        raise ConfigError(errors)
    return config


class _UniqueKeys(yaml.SafeLoader):
    """YAML that refuses a key given twice in one mapping: plain YAML keeps the last silently,
    so a codes table naming one school twice would lose a line without a word."""


def _mapping_without_repeats(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            first = seen.setdefault(key, key_node.start_mark.line)
        except TypeError:  # an unhashable key: the constructor below says what is wrong
            continue
        if first != key_node.start_mark.line:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} given twice (first on line {first + 1})", key_node.start_mark)
    return loader.construct_mapping(node, deep=True)


_UniqueKeys.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_repeats)


def load_config(path: str | Path) -> HubConfig:
    """Read and validate a YAML config file (relative paths in it are relative to the working
    directory, as for every other path an operator types)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: {exc.strerror}"]) from None
    try:
        data = yaml.load(text, Loader=_UniqueKeys)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path}: not valid YAML: {exc}"]) from None
    return parse_config(data)


def load_config_or_report(path: str | Path) -> HubConfig | None:
    """``load_config``, or None once every problem is printed to stderr: what a command does
    before it exits 1 on an invalid config."""
    try:
        return load_config(path)
    except ConfigError as exc:
        for line in exc.errors:
            print(line, file=sys.stderr)
        return None


def config_json_schema() -> dict[str, Any]:
    """JSON Schema for editors: the hub's shape, each plugin section typed by its ``Settings``."""
    schema = HubConfig.model_json_schema()
    defs = schema.setdefault("$defs", {})

    def typed(registry: dict) -> list[dict[str, Any]]:
        rules = []
        for name, info in sorted(registry.items()):
            key = f"{info.kind}_{name}_settings"
            sub = info.cls.Settings.model_json_schema(ref_template=f"#/$defs/{key}_{{model}}")
            for inner, body in sub.pop("$defs", {}).items():
                defs[f"{key}_{inner}"] = body
            defs[key] = sub
            rules.append({
                "if": {"properties": {"type": {"const": name}}},
                "then": {"properties": {"settings": {"$ref": f"#/$defs/{key}"}}},
            })
        return rules

    defs["AdapterSection"]["allOf"] = typed(adapter_types())
    defs["PluginSection"]["allOf"] = typed(adapter_types()) + typed(signer_types())
    defs["RouteSection"]["allOf"] = typed(adapter_types())
    defs["IdentitySection"]["allOf"] = typed(identity_provider_types())
    return schema
