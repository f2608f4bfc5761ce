"""Every state a record can be in, the stage that works on it, and what an operator may replay.

One place for the record's life: the pipeline claims work by stage, metrics count waiting
records by stage, the admin API and the status page list states, the CLI replays from a
stage — all of them ask this module.

A record moves ``received → normalized → rendered → signed:<role>… → delivered``, one signing
state per configured role, or ends ``quarantined``, ``failed``, ``dead_letter``,
``superseded`` or ``unchanged``.
"""

from __future__ import annotations

RECEIVED = "received"
NORMALIZED = "normalized"
RENDERED = "rendered"
SIGNED_PREFIX = "signed:"
DELIVERED = "delivered"
QUARANTINED = "quarantined"   # the record itself is wrong: needs a fixed payload or adapter
FAILED = "failed"             # the record is fine but a stage (render, sign) could not finish it
DEAD_LETTER = "dead_letter"   # delivery gave up: permanent refusal or too many attempts
SUPERSEDED = "superseded"     # a newer version of the same record_id arrived before delivery
UNCHANGED = "unchanged"       # the transcript's content equals what the destination already holds
FINAL_STATES = frozenset({DELIVERED, QUARANTINED, FAILED, DEAD_LETTER, SUPERSEDED, UNCHANGED})
# What an operator may replay; a delivered version is never sent twice.
REPLAYABLE = frozenset({QUARANTINED, FAILED, DEAD_LETTER})

# The stages, in order: each claims the records waiting in its states.
STAGES = ("normalize", "render", "sign", "deliver")
# Where a replay may restart a record (signing restarts from the rendered document).
REPLAY_STAGES = ("normalize", "render", "deliver")


def signed(role: str) -> str:
    """The state after ``role`` has signed."""
    return SIGNED_PREFIX + role


def stage_of(state: str, roles: tuple[str, ...]) -> str | None:
    """The stage a record in ``state`` waits for, or None for a final state."""
    if state == RECEIVED:
        return "normalize"
    if state == NORMALIZED:
        return "render"
    if state == RENDERED:
        return "sign"
    if state.startswith(SIGNED_PREFIX):
        return "deliver" if state == signed(roles[-1]) else "sign"
    return None


def states_of(stage: str, roles: tuple[str, ...]) -> list[str]:
    """The states whose records ``stage`` claims."""
    if stage == "normalize":
        return [RECEIVED]
    if stage == "render":
        return [NORMALIZED]
    if stage == "sign":
        return [RENDERED] + [signed(role) for role in roles[:-1]]
    if stage == "deliver":
        return [signed(roles[-1])]
    raise ValueError(f"unknown stage {stage!r}; expected one of {', '.join(STAGES)}")


def all_states(roles: tuple[str, ...]) -> list[str]:
    """Every state a record can be in, in pipeline order, then the final ones."""
    return [RECEIVED, NORMALIZED, RENDERED, *(signed(r) for r in roles), DELIVERED,
            QUARANTINED, FAILED, DEAD_LETTER, SUPERSEDED, UNCHANGED]
