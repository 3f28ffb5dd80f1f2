"""The message lifecycle: one transition table, and nothing else decides state changes.

    queued ──► sending ──► sent ──► bounced   (a bounce message arrived later)
      │          │  ├────► deferred ──► sending (retry) …
      │          │  ├────► failed          (5xx, or a message that cannot be built)
      │          │  ├────► expired         (4xx past the retry policy's maximum age)
      │          │  └────► queued          (released unsent at shutdown or after a crash)
      └──────────┴───────► suppressed      (the address may not be mailed)

A message's state moves only on a recorded outcome (an SMTP reply, a decision not to send),
never because it was fetched: `sending` is a lease that a restart hands back to `queued`.
"""

from __future__ import annotations

from enum import StrEnum

from mailer.errors import StateError


class MessageState(StrEnum):
    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    DEFERRED = "deferred"
    FAILED = "failed"
    EXPIRED = "expired"
    SUPPRESSED = "suppressed"
    BOUNCED = "bounced"


S = MessageState

TRANSITIONS: dict[MessageState, frozenset[MessageState]] = {
    S.QUEUED: frozenset({S.SENDING, S.SUPPRESSED}),
    S.SENDING: frozenset({S.SENT, S.DEFERRED, S.FAILED, S.EXPIRED, S.SUPPRESSED, S.QUEUED}),
    S.DEFERRED: frozenset({S.SENDING, S.EXPIRED, S.SUPPRESSED}),
    S.SENT: frozenset({S.BOUNCED}),
    S.BOUNCED: frozenset(),
    S.FAILED: frozenset(),
    S.EXPIRED: frozenset(),
    S.SUPPRESSED: frozenset(),
}

TERMINAL: frozenset[MessageState] = frozenset(s for s, nexts in TRANSITIONS.items() if not nexts)
# Not the delivery's own moves but an operator's correction: `mailer bounces undo` gives a
# message that a mistaken bounce marked bounced back its sent state (the delivery happened;
# mailer.sqlitebounces.undo_bounce). Kept apart so that bounced stays terminal for delivery.
CORRECTIONS: frozenset[tuple[MessageState, MessageState]] = frozenset({(S.BOUNCED, S.SENT)})
# States from which a message may be claimed for an attempt.
CLAIMABLE: frozenset[MessageState] = frozenset({S.QUEUED, S.DEFERRED})


def check_transition(current: MessageState, target: MessageState) -> None:
    """Raise StateError unless the table allows current → target."""
    if target not in TRANSITIONS[current]:
        raise StateError(f"a message cannot go from {current} to {target}")


def sources_of(target: MessageState) -> frozenset[MessageState]:
    """Every state the table allows to move to `target` (used to guard UPDATEs)."""
    return frozenset(s for s, nexts in TRANSITIONS.items() if target in nexts)
