"""Consent rules as data: which suppression stops which message, and what undoes one.

Pure: the store asks these questions with the suppressions it read, so the rules live in one
place and are tested without a database.

| suppression (list, reason) | a scenario's message for list X | an opt-in confirmation for list X |
| --- | --- | --- |
| global ('' list), any reason | stops it | stops it, unless the reason is `unconfirmed` |
| list X, any reason | stops it | never (the person is asking to come back) |
| another list | never | never |

Only a confirmed opt-in (a click on the signed link in the person's own mailbox) lifts a
suppression, and only an `unsubscribe` or `unconfirmed` one for that same list: a form anyone
can fill in must not undo an unsubscribe, and no opt-in undoes a bounce, a complaint, a manual
block or an unsubscribe from everything (`mailer suppress remove` does, by an operator).
"""

from __future__ import annotations

from collections.abc import Iterable

# The scenario name of opt-in confirmation messages; their step_id is the list's name.
# Scenario files must not use names starting with "@" (reserved for messages of the engine).
OPTIN_SCENARIO = "@optin"

# The suppression reasons (DESIGN.md's vocabulary).
UNSUBSCRIBE = "unsubscribe"
UNCONFIRMED = "unconfirmed"
REASONS: tuple[str, ...] = (
    UNSUBSCRIBE, "hard-bounce", "complaint", "soft-bounce-escalation", "manual", UNCONFIRMED,
)

# What one consent record says happened, and how it was asked for.
ACTIONS: tuple[str, ...] = ("subscribed", "pending", "confirmed", "unsubscribed", "imported")
METHODS: tuple[str, ...] = (
    "form", "confirm-link", "one-click", "unsubscribe-page", "mailto", "import", "cli", "api",
)

# Membership states of a lead in a list: pending members are never entered into scenarios.
PENDING, CONFIRMED = "pending", "confirmed"

# Suppressions a confirmed opt-in to the same list lifts.
LIFTED_BY_CONFIRMATION: frozenset[str] = frozenset({UNSUBSCRIBE, UNCONFIRMED})


def stops(
    suppressions: Iterable[tuple[str, str]], list_name: str | None, *, confirmation: bool = False
) -> bool:
    """Whether any (list, reason) suppression stops a message for `list_name`.

    `list_name` None: a scenario that enters from no list, stopped by global suppressions only.
    `confirmation`: the message is an opt-in confirmation (see the table above).
    """
    for suppressed_list, reason in suppressions:
        if suppressed_list == "":
            if not (confirmation and reason == UNCONFIRMED):
                return True
        elif suppressed_list == list_name and not confirmation:
            return True
    return False


def subscription_outcome(
    membership: str | None,
    suppressions: Iterable[tuple[str, str]],
    list_name: str,
    *,
    double_opt_in: bool,
) -> str:
    """What a form subscription to `list_name` does: "pending", "confirmed" or "already".

    `membership` is the lead's status in the list before (None: not a member). A double
    opt-in list, or an address that had unsubscribed from this list (or never confirmed it),
    gets a confirmation email first ("pending"): only the person, from their own mailbox, may
    take an unsubscribe back.
    """
    comes_back = any(
        suppressed_list == list_name and reason in LIFTED_BY_CONFIRMATION
        for suppressed_list, reason in suppressions
    )
    if comes_back:
        return "pending"
    if membership == CONFIRMED:
        return "already"
    return "pending" if double_opt_in else "confirmed"
