"""The one way a raw payload becomes a central record: adapter → codes table → transform hook →
validation.

The pipeline's normalise stage, ``hocba-hub normalize``, the conformance kit and the
spreadsheet adapter's pre-check all call this, so what a tool says about a payload is exactly
what the hub will do with it (quarantine it with these reasons, or take it).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from pydantic import ValidationError

from hub.contracts import Adapter, RawRecord, source_id_problem
from hub.plugins import manager
from hub.records import (
    PrimaryTranscript,
    SecondaryTranscript,
    field_errors,
    parse_transcript,
)


@dataclass(frozen=True)
class Envelope:
    """What the hub adds to a vendor's content: which record, which version, what happened, when."""
    record_id: str
    version: int
    event: str            # NEW | UPDATE | CANCEL
    updated_at: str       # ISO local time, as the vendor states it

    def fields(self) -> dict[str, Any]:
        return {"record_id": self.record_id, "event": self.event, "version": self.version,
                "updated_at": self.updated_at}


@dataclass(frozen=True)
class Outcome:
    """A central record, or the reasons there is none (each ``path: message``)."""
    record: PrimaryTranscript | SecondaryTranscript | None
    errors: tuple[str, ...] = ()
    mapped: bool = True   # false: the adapter could not map the payload at all
    # For a record that failed validation: the codes the adapter did map (school, class,
    # student), so a quarantined record still says whose it is (``identifying``).
    known: dict[str, str] = field(default_factory=dict)
    # Codes the configured table replaced, each ``field old → new``: the record keeps the new
    # code, the record's history these lines (the pipeline writes them when it stores it).
    remapped: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.record is not None


_KNOWN = (("school_code", ("school_code",)), ("school_year", ("school_year",)),
          ("class_name", ("class_name",)), ("student_code", ("student", "student_code")))


def identifying(data: dict[str, Any]) -> dict[str, str]:
    """The codes a partially mapped record names, whatever else is wrong with it: school,
    school year, class and student code (never a name, birth date or personal id). A value
    that is not a short piece of visible text is left out rather than guessed at."""
    out = {}
    for key, path in _KNOWN:
        value: Any = data
        for part in path:
            value = value.get(part) if isinstance(value, dict) else None
        if isinstance(value, (str, int)) and not isinstance(value, bool):
            text = " ".join(unicodedata.normalize("NFC", str(value)).split())
            # A code with a control or invisible character is not one (and PostgreSQL cannot
            # file a record under a NUL).
            if 0 < len(text) <= 64 and not any(unicodedata.category(ch)[0] == "C" for ch in text):
                out[key] = text
    return out


class CodeTable(Protocol):
    """Old code → new code per kind (``hub.config.CodesConfig``, the config's ``codes:``)."""
    departments: Mapping[str, str]
    schools: Mapping[str, str]


_CODE_FIELDS = (("department_code", "departments"), ("school_code", "schools"))


def remap_codes(data: dict[str, Any], codes: CodeTable | None) -> tuple[dict[str, Any], tuple[str, ...]]:
    """``data`` with its department and school codes replaced as ``codes`` says, and what was
    replaced (``school_code 26001001 → 22101001``). Codes are compared as the vendor's text
    trimmed, with full-width digits read as digits; anything else is left to validation."""
    if codes is None:
        return data, ()
    out, notes = data, []
    for name, table in _CODE_FIELDS:
        value = data.get(name)
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            continue
        old = unicodedata.normalize("NFKC", str(value)).strip()
        new = getattr(codes, table).get(old)
        if new is not None:
            out = {**out, name: new}
            notes.append(f"{name} {old} → {new}")
    return out, tuple(notes)


def transform(data: dict[str, Any], adapter: str) -> dict[str, Any]:
    """Apply every ``hocba_hub_transform_record`` implementation, in registration order."""
    for result in manager().hook.hocba_hub_transform_record(record=data, adapter=adapter):
        data = result if result is not None else data
    return data


def central_record(data: dict[str, Any], adapter: str, envelope: Envelope,
                   codes: CodeTable | None = None) -> Outcome:
    """Central-format fields an adapter mapped (no envelope) → a validated record.

    The codes table comes first, so the province's transform hooks and the validation see the
    codes in force today, whatever the vendor's software still sends."""
    data, remapped = remap_codes(data, codes)
    try:
        return Outcome(parse_transcript({**transform(data, adapter), **envelope.fields()}), remapped=remapped)
    except ValidationError as exc:
        return Outcome(None, tuple(field_errors(exc)), remapped=remapped)
    except (ValueError, KeyError, TypeError) as exc:
        return Outcome(None, (str(exc),), mapped=False, remapped=remapped)


def normalize(adapter: Adapter, raw: RawRecord, envelope: Envelope, codes: CodeTable | None = None) -> Outcome:
    """A raw payload as ``adapter`` maps it → a validated central record, or the reasons;
    ``codes`` is the configuration's table of old → new codes (``HubConfig.codes``)."""
    outcome = _normalize(adapter, raw, envelope, codes)
    problem = source_id_problem(raw.source_id)
    if problem is None:
        return outcome
    # The vendor's id names the record everywhere (record_id): one with a control or invisible
    # character is refused whatever the content, and a replay refuses it again.
    return replace(outcome, record=None, errors=(f"source_id: {problem}", *outcome.errors),
                   known=outcome.known or (identifying(outcome.record.model_dump()) if outcome.record else {}))


def _normalize(adapter: Adapter, raw: RawRecord, envelope: Envelope, codes: CodeTable | None) -> Outcome:
    try:
        data = adapter.normalize(raw)
        if not isinstance(data, dict):
            raise TypeError(f"normalize() returned {type(data).__name__}, not a dict")
    except (ValueError, KeyError, TypeError) as exc:
        # What the hub quarantines with the message as the reason; it must say something.
        return Outcome(None, (str(exc) or type(exc).__name__,), mapped=False)
    outcome = central_record(data, adapter.name, envelope, codes)
    # A quarantined record is filed under the school's code in force, like a valid one.
    return outcome if outcome.ok else replace(outcome, known=identifying(remap_codes(data, codes)[0]))


def known_codes(adapter: Adapter, raw: RawRecord) -> dict[str, str]:
    """What ``identifying`` finds in a payload as ``adapter`` maps it, or nothing if the adapter
    cannot map it at all (for reports on records that never became central records)."""
    try:
        data = adapter.normalize(raw)
    except Exception:  # a report on a broken payload must not fail with it
        return {}
    return identifying(data) if isinstance(data, dict) else {}
