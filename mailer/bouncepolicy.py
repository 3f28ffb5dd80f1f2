"""What to do about a bounce: a pure decision over the reason, its class and the history.

The table, in the operator's words:

| the bounce says | action |
| --- | --- |
| the recipient does not exist (hard: userunknown, hostunknown, hasmoved, permanent notaccept) | suppress the address globally, at once |
| a complaint (ARF feedback) | suppress the address; counts toward the domain's complaint rate |
| the sender's problem (blocked, badreputation, requireptr, policyviolation, authfailure, spamdetected, toomanyconn, speeding, securityerror) | never suppress the recipient; alert, and let throttling react |
| any other soft reason (mailbox full, expired, …) | retry on the delivery schedule; the Nth soft bounce within M days suppresses ("soft-bounce escalation") |
| an auto-reply or a positive DSN (vacation, delivered) | record it, nothing else |
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum

from mailer.reasons import SENDER_PROBLEMS, BounceClass, Reason


class Action(StrEnum):
    SUPPRESS = "suppress"  # hard bounce
    COMPLAINT = "complaint"  # ARF feedback: suppress
    ESCALATE = "soft-bounce-escalation"  # soft bounces piled up: suppress
    SENDER_ALERT = "sender-alert"  # the sender's problem: suppress nobody
    RETRY = "retry"  # soft: try again later
    RECORD = "record"  # not a bounce: keep it, do nothing


# The suppression reason each suppressing action writes (the vocabulary of DESIGN.md).
SUPPRESSION_REASONS = {
    Action.SUPPRESS: "hard-bounce",
    Action.COMPLAINT: "complaint",
    Action.ESCALATE: "soft-bounce-escalation",
}


@dataclass(frozen=True)
class BouncePolicy:
    soft_limit: int = 3  # the third soft bounce …
    soft_window: timedelta = timedelta(days=7)  # … within a week suppresses the address


def decide(reason: Reason, bounce_class: BounceClass, *, earlier_soft: int, policy: BouncePolicy) -> Action:
    """The action for one bounce; `earlier_soft` counts this address's soft bounces in the window."""
    if reason is Reason.FEEDBACK:
        return Action.COMPLAINT
    if bounce_class is BounceClass.NONE:
        return Action.RECORD
    if reason in SENDER_PROBLEMS:
        return Action.SENDER_ALERT
    if bounce_class is BounceClass.HARD:
        return Action.SUPPRESS
    if earlier_soft + 1 >= policy.soft_limit:
        return Action.ESCALATE
    return Action.RETRY


def suppresses(action: Action) -> bool:
    return action in SUPPRESSION_REASONS


# A 4xx usually means "later" and nothing more. These reasons say something about the
# mailbox itself, so each such deferral counts as a soft bounce toward escalation.
COUNTED_DEFERRALS = frozenset({Reason.MAILBOXFULL, Reason.SUSPEND, Reason.EXCEEDLIMIT})
# Greylisting (a first-contact 4xx by design) is neither a bounce nor a warning sign.
_GREYLISTING = re.compile(r"gr[ae]y-?list", re.IGNORECASE)


def deferral_matters(reason: Reason, text: str) -> bool:
    """Whether a 4xx with this reason goes to the policy rather than being a plain retry."""
    if _GREYLISTING.search(text):
        return False
    return reason in COUNTED_DEFERRALS or reason in SENDER_PROBLEMS
