"""Who still has to sign: per school and class, transcripts waiting for each stage and the
people who have not signed yet. The admin API (``GET /api/signing``) and ``hocba-hub signing``
show it; the operators' console builds on it."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from hub import lifecycle as lc
from hub.contracts import DocumentFormat

if TYPE_CHECKING:
    from hub.engine.pipeline import Hub

__all__ = ["waiting_for", "waiting_signatures"]


async def waiting_for(hub: "Hub", school: str | None = None) -> list[dict[str, Any]]:
    """``waiting_signatures`` over ``hub``'s store: only records in the signing stage are read."""
    from hub.plugins import document_formats

    fmt_name = hub.config.xml_format
    fmt = document_formats()[fmt_name].cls() if fmt_name else None
    rows = []
    for state in lc.states_of("sign", hub.roles):
        rows += await hub.db(hub.store.rows, state=state)
    return waiting_signatures(rows, hub.roles, fmt, school)


def waiting_signatures(rows: Iterable[Any], roles: tuple[str, ...], fmt: DocumentFormat | None,
                       school: str | None = None) -> list[dict[str, Any]]:
    """For records waiting in the signing stage: one entry per school and class with the count
    waiting for each stage and, for the stage each waits for, who has not signed (with the
    number of transcripts each of them has left). ``rows`` are store rows (``hub.store.Row``)."""
    classes: dict[tuple[str, str], dict[str, Any]] = {}
    for row in rows:
        if lc.stage_of(row.state, roles) != "sign" or not row.normalized:
            continue
        if school and row.school_code != school:
            continue
        done = 0 if row.state == lc.RENDERED else roles.index(row.state.removeprefix(lc.SIGNED_PREFIX)) + 1
        role = roles[done]
        key = (row.school_code or "", str(row.normalized.get("class_name", "")))
        entry = classes.setdefault(key, {"school_code": key[0], "class_name": key[1], "transcripts": 0,
                                         "waiting": Counter(), "unsigned": Counter()})
        entry["transcripts"] += 1
        entry["waiting"][role] += 1
        if fmt is not None and row.xml:
            from hub.documents.xmldsig import signed_slots

            signed = signed_slots(row.xml, fmt)
            for slot in fmt.slots(row.xml):
                if slot.role == role and slot.name not in signed and (
                        slot.identity.personal_id or slot.role == "school_seal"):
                    entry["unsigned"][(slot.role, slot.identity.name, slot.subject)] += 1
        else:
            names = row.normalized.get("signatories", {})
            who = {"homeroom_teacher": names.get("homeroom_teacher_name"),
                   "principal": names.get("principal_name"),
                   "school_seal": row.normalized.get("school_name")}.get(role)
            entry["unsigned"][(role, who or "", "")] += 1
    out = []
    for key in sorted(classes):
        entry = classes[key]
        out.append({
            "school_code": entry["school_code"], "class_name": entry["class_name"],
            "transcripts": entry["transcripts"],
            "waiting": {r: entry["waiting"][r] for r in roles if entry["waiting"][r]},
            "unsigned": [{"role": r, "name": n, "subject": s or None, "transcripts": c}
                         for (r, n, s), c in sorted(entry["unsigned"].items())],
        })
    return out
