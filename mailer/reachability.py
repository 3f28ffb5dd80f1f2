"""Whether a lead can be mailed, and why not: its suppressions, list memberships and consent.

`mailer leads show` answers "why didn't X get mail?" with these sections:

    mail     suppressed: every list — hard-bounce (2026-01-05, bounce #12: `mailer bounces show 12`)
    lists    signups: confirmed (imported 2026-01-02 from leads.csv) — no mail: suppressed
             webinar: pending (signed up 2026-01-03 by form) — no mail until the confirmation link is followed

Which suppression stops which list is mailer.consent's rule (`stops`), asked here with what the
store holds; this module only fetches and words it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from mailer.consent import PENDING, stops
from mailer.store import BounceRecord, ConsentRecord, Store, Suppression

_JOINED = ("subscribed", "pending", "imported")  # consent actions that put an address on a list
_DETAIL = 60  # characters of a suppression's note shown on its line; `mailer suppress list` has all of it


@dataclass(frozen=True)
class Reachability:
    """What stands between a lead and its mail, read at one instant."""

    suppressions: tuple[Suppression, ...] = ()
    memberships: tuple[tuple[str, str], ...] = ()  # (list, pending | confirmed), by list name
    consents: tuple[ConsentRecord, ...] = ()  # oldest first
    bounces: tuple[BounceRecord, ...] = ()  # the address's bounces, to point a suppression at its evidence

    def bounce_behind(self, suppression: Suppression) -> BounceRecord | None:
        """The bounce (or complaint report) that wrote `suppression`, when one did and is not undone.

        Bounces suppress globally and stamp the suppression with the bounce's time; a later bounce
        of the same reason leaves an existing suppression as it is, so the latest one up to the
        suppression's time is its cause.
        """
        if suppression.list_name:
            return None
        causes = [
            bounce for bounce in self.bounces
            if bounce.suppression == suppression.reason and bounce.undone_at is None and bounce.id is not None
            and (suppression.created_at is None or bounce.at <= suppression.created_at)
        ]
        return max(causes, key=lambda bounce: bounce.at, default=None)

    def stopped(self, list_name: str) -> bool:
        """Whether a scenario's message for `list_name` is stopped by a suppression (mailer.consent.stops)."""
        return stops(((s.list_name, s.reason) for s in self.suppressions), list_name)


async def reachability(store: Store, email: str) -> Reachability:
    """The suppressions, memberships, consent records and bounces of a stored address."""
    suppressions = await store.list_suppressions(email=email)
    memberships = []
    for name in await store.list_names():  # a handful of lists: one small query each
        status = await store.membership(email, name)
        if status is not None:
            memberships.append((name, status))
    bounces = await store.bounces(email=email, limit=200) if suppressions else []
    return Reachability(tuple(suppressions), tuple(memberships), tuple(await store.consents_of(email)), tuple(bounces))


def _day(at: datetime | None) -> str:
    return f"{at.astimezone(timezone.utc):%Y-%m-%d}" if at is not None else "date unknown"


def _scope(list_name: str) -> str:
    return list_name or "every list"


def suppression_line(reach: Reachability, suppression: Suppression) -> str:
    """'every list — hard-bounce (2026-01-05, bounce #12: `mailer bounces show 12`)'."""
    facts = [_day(suppression.created_at)]
    bounce = reach.bounce_behind(suppression)
    if bounce is not None:
        facts.append(f"bounce #{bounce.id}: `mailer bounces show {bounce.id}`")
    elif suppression.detail:
        detail = " ".join(suppression.detail.split())
        facts.append(detail if len(detail) <= _DETAIL else detail[: _DETAIL - 1] + "…")
    return f"{_scope(suppression.list_name)} — {suppression.reason} ({', '.join(facts)})"


def membership_line(reach: Reachability, list_name: str, status: str) -> str:
    """'signups: confirmed (imported 2026-01-02 from leads.csv)', with why no mail goes out, if none does."""
    records = [record for record in reach.consents if record.list_name == list_name]
    joined = next((record for record in records if record.action in _JOINED), None)
    facts = []
    if joined is not None:
        how = "imported" if joined.action == "imported" else f"signed up by {joined.method}"
        facts.append(f"{how} {_day(joined.at)}" + (f" from {joined.source}" if joined.source else ""))
    confirmed = [record for record in records if record.action == "confirmed"]
    if confirmed:
        facts.append(f"confirmed {_day(confirmed[-1].at)}")
    latest = max((record.at for record in records if record.action != "unsubscribed"), default=None)
    left = [record for record in reach.consents if record.action == "unsubscribed" and record.list_name in ("", list_name)
            and (latest is None or record.at >= latest)]  # an unsubscribe taken back by a confirmation is over
    if left:
        facts.append(f"unsubscribed {_day(left[-1].at)} by {left[-1].method}")
    line = f"{list_name}: {status}" + (f" ({', '.join(facts)})" if facts else "")
    if reach.stopped(list_name):
        return line + " — no mail: suppressed"
    if status == PENDING:
        return line + " — no mail until the confirmation link is followed"
    return line


def render_reachability(reach: Reachability) -> list[str]:
    """The `mail` and `lists` sections of `leads show`."""
    suppressed = [f"suppressed: {suppression_line(reach, s)}" for s in reach.suppressions]
    members = [membership_line(reach, name, status) for name, status in reach.memberships]
    return [*_section("mail", suppressed or ["not suppressed"]), *_section("lists", members or ["none"])]


def _section(label: str, items: list[str]) -> list[str]:
    """Items under a label in `leads show`'s nine-column margin."""
    return [f"{label if index == 0 else '':<9}{item}" for index, item in enumerate(items)]


def reachability_json(reach: Reachability) -> dict[str, Any]:
    """The same for `leads show --json`: every suppression, membership and consent record."""
    return {
        "suppressions": [
            {"list": s.list_name, "reason": s.reason, "detail": s.detail,
             "since": s.created_at.isoformat() if s.created_at else None,
             "bounce": bounce.id if (bounce := reach.bounce_behind(s)) is not None else None}
            for s in reach.suppressions
        ],
        "lists": [{"list": name, "status": status, "mailed": not reach.stopped(name) and status != PENDING}
                  for name, status in reach.memberships],
        "consents": [
            {"at": c.at.isoformat(), "list": c.list_name, "action": c.action, "method": c.method, "source": c.source,
             "ip": c.ip, "message": c.message}
            for c in reach.consents
        ],
    }
