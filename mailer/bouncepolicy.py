"""What to do about a bounce: a pure decision over the reason, its class and the history.

The table, in the operator's words:

| the bounce says | action |
| --- | --- |
| the recipient does not exist (hard: userunknown, hostunknown, hasmoved, permanent notaccept) | suppress the address globally, at once |
| a complaint (ARF feedback: abuse, fraud, virus, or no type given) | suppress the address; counts toward the domain's complaint rate |
| an ARF auth-failure report (RFC 6591) | our authentication failed: alert, suppress nobody |
| an ARF not-spam, other or unknown report | record it, nothing else |
| a DSN that is no failure (RFC 3464 Action: delayed, delivered, relayed, expanded) | record it, nothing else: the message stays sent |
| the sender's problem (blocked, badreputation, requireptr, policyviolation, authfailure, spamdetected, toomanyconn, speeding, securityerror) | never suppress the recipient; alert, and let throttling react |
| any other soft reason (mailbox full, expired, …) | retry on the delivery schedule; the Nth soft bounce within M days suppresses ("soft-bounce escalation") |
| an auto-reply or a positive DSN (vacation, delivered) | record it, nothing else |
| a bounce that matches none of our messages (mailer.bouncing) | record it, nothing else |
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


# RFC 3464 2.3.3 action-values that are no failure: "delayed" (the reporting MTA is still
# trying: RFC 3464 calls it a warning), "delivered", and "relayed" / "expanded" (handed on to
# where no DSN comes back, or to the members of a list). Only "failed" is a bounce; a report
# with no Action field (text bounces, broken DSNs) is taken as one.
NOT_FAILURES = frozenset({"delayed", "delivered", "relayed", "expanded"})

# RFC 5965 3.1 / 7.3 Feedback-Type registry (abuse, fraud, virus, other, not-spam) and
# RFC 6591 3 (auth-failure). A report of unsolicited, fraudulent or infected mail is the
# recipient saying "stop"; a report with no type is taken as one too (the cautious reading
# for the recipient). "not-spam" says the opposite. "auth-failure" says our SPF/DKIM/DMARC
# failed at the receiver: the sender's problem, like mailer.reasons.SENDER_PROBLEMS.
# "other" and types not registered say nothing we can act on.
FEEDBACK_ACTIONS: dict[str | None, Action] = {
    None: Action.COMPLAINT,
    "abuse": Action.COMPLAINT,
    "fraud": Action.COMPLAINT,
    "virus": Action.COMPLAINT,
    "auth-failure": Action.SENDER_ALERT,
    "not-spam": Action.RECORD,
    "other": Action.RECORD,
}


def feedback_action(feedback_type: str | None) -> Action:
    """What an ARF report of this Feedback-Type does (case-insensitive, RFC 5965 3.1)."""
    key = (feedback_type or "").strip().lower() or None
    return FEEDBACK_ACTIONS.get(key, Action.RECORD)


def is_failure(dsn_action: str) -> bool:
    """Whether an RFC 3464 Action value reports a failed delivery ("" when the report had none)."""
    return dsn_action.strip().lower() not in NOT_FAILURES


def decide(
    reason: Reason,
    bounce_class: BounceClass,
    *,
    earlier_soft: int,
    policy: BouncePolicy,
    dsn_action: str = "failed",
    feedback_type: str | None = None,
) -> Action:
    """The action for one bounce; `earlier_soft` counts this address's soft bounces in the window.

    `dsn_action` is the recipient's RFC 3464 Action; `feedback_type` an ARF report's type.
    """
    if reason is Reason.FEEDBACK:
        return feedback_action(feedback_type)
    if not is_failure(dsn_action):
        return Action.RECORD
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
