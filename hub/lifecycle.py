"""Every state a record can be in, the stage that works on it, and what an operator may replay.

One place for the record's life: the pipeline claims work by stage, metrics count waiting
records by stage, the admin API and the status page list states, the CLI replays from a
stage — all of them ask this module.

A record moves ``received → normalized → rendered → signed:<role>… → delivered``, one signing
state per configured role, or ends ``quarantined``, ``failed``, ``dead_letter``,
``superseded`` or ``unchanged``. With an identity provider configured, ``normalized →
identity_cleared → rendered``: the people a record names are checked before anything is
rendered or signed, and a record whose people do not match waits in ``blocked_identity``.
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
IDENTITY_CLEARED = "identity_cleared"   # the identity provider confirmed the people it names
# A person the record names is not who the population database says (or has no personal id).
# Not final: the record waits for the school — a changed version from the vendor supersedes it
# and is checked again — or for an operator's replay. No stage claims it by itself.
BLOCKED_IDENTITY = "blocked_identity"
FINAL_STATES = frozenset({DELIVERED, QUARANTINED, FAILED, DEAD_LETTER, SUPERSEDED, UNCHANGED})
# Waiting on people outside the hub: not final, yet no stage will move them on by itself.
BLOCKED_STATES = frozenset({BLOCKED_IDENTITY})
# What a newer version of the same record leaves as it is; an older version in any other state
# (still in the pipeline, or a problem: quarantined, failed, dead letter, blocked) is superseded,
# so a school's fix takes the old problem off every operator's list, its reason kept in history.
SETTLED = frozenset({DELIVERED, SUPERSEDED, UNCHANGED})
# What an operator may replay; a delivered version is never sent twice.
REPLAYABLE = frozenset({QUARANTINED, FAILED, DEAD_LETTER, BLOCKED_IDENTITY})

# The stages, in order: each claims the records waiting in its states ("identity" only when an
# identity provider is configured).
STAGES = ("normalize", "identity", "render", "sign", "deliver")
# Where a replay may restart a record (signing restarts from the rendered document).
REPLAY_STAGES = ("normalize", "render", "deliver")


def signed(role: str) -> str:
    """The state after ``role`` has signed."""
    return SIGNED_PREFIX + role


def stage_of(state: str, roles: tuple[str, ...], *, identity: bool = False) -> str | None:
    """The stage a record in ``state`` waits for, or None for a final or blocked state.
    ``identity``: whether an identity provider is configured."""
    if state == RECEIVED:
        return "normalize"
    if state == NORMALIZED:
        return "identity" if identity else "render"
    if state == IDENTITY_CLEARED:
        return "render"
    if state == RENDERED:
        return "sign"
    if state.startswith(SIGNED_PREFIX):
        return "deliver" if state == signed(roles[-1]) else "sign"
    return None


def next_signer(state: str, roles: tuple[str, ...]) -> str | None:
    """The role whose signature a record in ``state`` waits for, or None if it waits for none."""
    if state == RENDERED:
        return roles[0]
    if state.startswith(SIGNED_PREFIX):
        role = state.removeprefix(SIGNED_PREFIX)
        if role in roles[:-1]:
            return roles[roles.index(role) + 1]
    return None


def states_of(stage: str, roles: tuple[str, ...], *, identity: bool = False) -> list[str]:
    """The states whose records ``stage`` claims. Without an identity provider, rendering also
    takes records cleared while one was configured."""
    if stage == "normalize":
        return [RECEIVED]
    if stage == "identity":
        return [NORMALIZED] if identity else []
    if stage == "render":
        return [IDENTITY_CLEARED] if identity else [NORMALIZED, IDENTITY_CLEARED]
    if stage == "sign":
        return [RENDERED] + [signed(role) for role in roles[:-1]]
    if stage == "deliver":
        return [signed(roles[-1])]
    raise ValueError(f"unknown stage {stage!r}; expected one of {', '.join(STAGES)}")


def all_states(roles: tuple[str, ...]) -> list[str]:
    """Every state a record can be in, in pipeline order, then the final ones."""
    return [RECEIVED, NORMALIZED, IDENTITY_CLEARED, RENDERED, *(signed(r) for r in roles), DELIVERED,
            BLOCKED_IDENTITY, QUARANTINED, FAILED, DEAD_LETTER, SUPERSEDED, UNCHANGED]


CANCEL_REASON = (5, 500)
"""How long the reason for an operator's cancel or recall is, in characters (it reaches the destinations)."""


def cancel_reason(text: str, what: str = "the transcript is cancelled") -> str:
    """The reason for an operator's cancel or recall (``what``), as stored and sent: one line,
    blanks collapsed; ``ValueError`` if it is too short or too long to say why. The admin API,
    the CLI and the console all read it here."""
    reason = " ".join(text.split())
    low, high = CANCEL_REASON
    if not low <= len(reason) <= high:
        raise ValueError(f"say why {what}, in {low} to {high} characters")
    return reason
