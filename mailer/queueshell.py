"""`mailer queue [list | retry]`: the mail not sent yet, for the operator.

As Postfix gives `qshape` (the queue by domain), `mailq` (message by message) and
`postqueue -f` (try the deferred mail now), after a relay was down, a template broken or a
provider throttled us:

- `mailer queue`: messages queued, deferred or being sent, per recipient domain, with the
  earliest next try and the most common reason;
- `mailer queue list`: one line (or one JSON object) per message, with why it waits;
- `mailer queue retry`: deferred messages become due now; the daemon still applies its
  warm-up budgets, throttles and circuit breakers, so a retry cannot flood a receiver.

Why a message waits (`why`) is what happened to it last. Its newest outcome event tells:
with an SMTP reply, that reply (and the daemon's note, as "gave up after the maximum age");
without one (a warm-up hold, a breaker, a broken template, a scenario not loaded), the
daemon's detail, even when an older SMTP reply is still kept on the message: a message
refused with 451 yesterday and held for the warm-up budget since waits for the budget now.
With no outcome at all (a message never tried), the last reply kept on the row, if any.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from mailer.argtypes import positive
from mailer.daemons import any_alive
from mailer.durations import format_duration
from mailer.errors import UserError
from mailer.lifecycle import MessageState
from mailer.reply import SMTPReply
from mailer.store import LastOutcome, QueuedMessage, QueueGroup, open_store
from mailer.tables import aligned
from mailer.wording import counted

S = MessageState
WAITING = (S.QUEUED, S.DEFERRED, S.SENDING)  # not sent yet, and not given up on
LISTABLE = (S.QUEUED, S.SENDING, S.DEFERRED, S.FAILED, S.EXPIRED)
NEEDS_ATTENTION = (S.DEFERRED, S.FAILED, S.EXPIRED)  # `queue list`'s default
TOP_DOMAINS = 20  # a screenful; the rest are summed up in one line
RETRY_HELP = (
    "make deferred messages due now (all, or those matching --domain/--scenario), after fixing what deferred "
    "them; attempts and the give-up age are kept. The daemon's warm-up budgets, throttles and destination "
    "circuit breakers still apply, so a retry cannot flood a receiver. Messages being sent, failed or expired "
    "are never touched"
)


def add_commands(commands: Any) -> None:
    """Register `mailer queue`, `mailer queue list` and `mailer queue retry`."""
    queue = commands.add_parser(
        "queue", help="mail not sent yet: by domain, one by one (list), and retry now (retry)",
        description="Without an action: the messages waiting (queued, deferred, sending) per recipient domain.",
    )
    queue.set_defaults(run=_summary)
    actions = queue.add_subparsers(dest="queue_command", metavar="ACTION")
    list_ = actions.add_parser("list", help="one line per message, with why it waits or failed")
    list_.add_argument(
        "--state", action="append", metavar="STATE",
        help="queued, sending, deferred, failed or expired; repeat it or separate with commas "
        "(default: deferred, failed, expired)",
    )
    list_.add_argument("--domain", default=None, help="only recipients at this domain")
    list_.add_argument("--scenario", default=None, metavar="NAME", help="only this scenario's messages")
    list_.add_argument("--limit", type=positive, default=50, help="at most this many (default 50)")
    list_.add_argument("--json", action="store_true", help="one JSON object per line (times in ISO 8601, UTC)")
    list_.set_defaults(run=_list)
    retry = actions.add_parser(
        "retry", help="make deferred messages due now (warm-up budgets and circuit breakers still apply)",
        description=RETRY_HELP[0].upper() + RETRY_HELP[1:] + ".",
    )
    retry.add_argument("--domain", default=None, help="only recipients at this domain")
    retry.add_argument("--scenario", default=None, metavar="NAME", help="only this scenario's messages")
    retry.set_defaults(run=_retry)


# -- why, and plain words for times ---------------------------------------------------------


def _reason(last_reply: SMTPReply | None, outcome: LastOutcome | None) -> tuple[SMTPReply | None, str]:
    """(the SMTP reply, the daemon's note) saying why a message waits; either may be missing."""
    if outcome is None:
        return last_reply, ""
    if outcome.type == "recovered":
        return None, f"queued again: its daemon ({outcome.detail}) stopped while sending it, so it may arrive twice"
    if outcome.reply is not None or not outcome.detail:
        return outcome.reply or last_reply, outcome.detail
    return None, outcome.detail


def why(last_reply: SMTPReply | None, outcome: LastOutcome | None) -> str:
    """Why a message waits or failed, from its newest outcome (see the module's docstring)."""
    reply, note = _reason(last_reply, outcome)
    if reply is None:
        return note
    return f"{reply} ({note})" if note else str(reply)


def _reason_key(last_reply: SMTPReply | None, outcome: LastOutcome | None) -> str:
    """What `mailer queue` counts as one reason: a reply by its codes (its text often names the
    message or the recipient), anything else by its words."""
    reply, note = _reason(last_reply, outcome)
    if reply is None:
        return note
    codes = " ".join(str(part) for part in (reply.code, reply.enhanced) if part) or "no reply"
    return f"{codes} {note}".rstrip()


def span(duration: timedelta) -> str:
    """A duration as an operator glances at it: 45s, then whole minutes in two units: 10m, 3h12m, 2d3h."""
    seconds = max(0, round(duration.total_seconds()))
    if seconds < 60:
        return f"{seconds}s"
    days, minutes = divmod((seconds + 30) // 60, 24 * 60)
    hours, minutes = divmod(minutes, 60)
    if days:
        return f"{days}d{hours}h" if hours else f"{days}d"
    if hours:
        return f"{hours}h{minutes}m" if minutes else f"{hours}h"
    return f"{minutes}m"


def next_try(at: datetime | None, now: datetime) -> str:
    """When a message is tried next: "in 19m", "due" or "due 2h ago" (no daemon took it yet)."""
    if at is None:
        return "–"
    if at > now:
        return f"in {span(at - now)}"
    late = now - at
    return "due" if late < timedelta(minutes=1) else f"due {span(late)} ago"


# -- the summary ----------------------------------------------------------------------------


@dataclass
class DomainShape:
    """One recipient domain's waiting messages, summed from its groups."""

    domain: str
    counts: Counter[MessageState] = field(default_factory=Counter)
    next_attempt_at: datetime | None = None  # the earliest of the queued and deferred ones
    reasons: Counter[str] = field(default_factory=Counter)  # reason key → messages
    shown: dict[str, Counter[str]] = field(default_factory=dict)  # reason key → its words, counted

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def add(self, group: QueueGroup) -> None:
        self.counts[group.state] += group.count
        if group.state is not S.SENDING and group.next_attempt_at is not None:
            if self.next_attempt_at is None or group.next_attempt_at < self.next_attempt_at:
                self.next_attempt_at = group.next_attempt_at
        words = why(group.last_reply, group.last_outcome)
        if words:
            key = _reason_key(group.last_reply, group.last_outcome)
            self.reasons[key] += group.count
            self.shown.setdefault(key, Counter())[words] += group.count

    def reason(self) -> str:
        if not self.reasons:
            return "–"
        key, count = self.reasons.most_common(1)[0]
        words = self.shown[key].most_common(1)[0][0]
        return f"{words} ({count:,} of {self.total:,})"


def shape(groups: Iterable[QueueGroup]) -> list[DomainShape]:
    """The domains with waiting messages, the most first."""
    domains: dict[str, DomainShape] = {}
    for group in groups:
        domains.setdefault(group.domain, DomainShape(group.domain)).add(group)
    return sorted(domains.values(), key=lambda d: (-d.total, d.domain))


def render_shape(domains: Sequence[DomainShape], now: datetime, *, top: int = TOP_DOMAINS, finished: int = 0) -> str:
    """`mailer queue`'s text: a line of totals, then one line per domain (`top` of them)."""
    if not domains:
        line = "nothing is waiting: no message is queued, deferred or being sent"
        if finished:
            line += f" ({counted(finished, 'message')} failed or expired: `mailer queue list`)"
        return line
    totals: Counter[MessageState] = Counter()
    for domain in domains:
        totals.update(domain.counts)
    soonest = min((d.next_attempt_at for d in domains if d.next_attempt_at is not None), default=None)
    by_state = ", ".join(f"{totals[state]:,} {state}" for state in WAITING if totals[state])
    head = f"{counted(sum(totals.values()), 'message')} waiting for {counted(len(domains), 'domain')}: {by_state}"
    if soonest is not None:
        head += f"; next try {next_try(soonest, now)}"
    rows: list[tuple[str, ...]] = [("domain", "queued", "deferred", "sending", "next try", "most common reason")]
    for domain in domains[:top]:
        rows.append((
            domain.domain, *(f"{domain.counts[state]:,}" for state in WAITING),
            next_try(domain.next_attempt_at, now) if domain.next_attempt_at else "sending", domain.reason(),
        ))
    lines = [head, *aligned(rows, right={1, 2, 3})]
    rest = domains[top:]
    if rest:
        lines.append(f"… {counted(len(rest), 'more domain')} ({counted(sum(d.total for d in rest), 'message')})")
    if finished:
        lines.append(f"and {counted(finished, 'message')} failed or expired: `mailer queue list`")
    return "\n".join(lines)


# -- one line per message -------------------------------------------------------------------


def parse_states(values: Sequence[str] | None) -> tuple[MessageState, ...]:
    """The states `--state` names (repeated or comma-separated); a UserError for any other."""
    if not values:
        return NEEDS_ATTENTION
    allowed = ", ".join(LISTABLE)
    chosen: list[MessageState] = []
    for name in (part.strip().lower() for value in values for part in value.split(",")):
        if not name:
            continue
        if name not in {state.value for state in LISTABLE}:
            gone = name in {state.value for state in MessageState}  # sent, bounced, suppressed
            problem = f"{name} messages are not in the queue" if gone else f"no state {name!r}"
            raise UserError(problem, field="--state", hint=f"use {allowed}")
        if MessageState(name) not in chosen:
            chosen.append(MessageState(name))
    if not chosen:
        raise UserError("names no state", field="--state", hint=f"use {allowed}")
    return tuple(chosen)


def parse_domain(text: str | None) -> str | None:
    """A recipient domain as stored (lower case; an xn-- label read as the Unicode it spells)."""
    if text is None:
        return None
    domain = text.strip().lstrip("@").rstrip(".").lower()
    if not domain or "@" in domain or any(c.isspace() for c in domain):
        raise UserError(f"{text!r} is not a domain", field="--domain", hint="write e.g. example.com")
    if "xn--" in domain:
        try:
            domain = domain.encode("ascii").decode("idna")  # addresses are stored with Unicode domains
        except UnicodeError:
            pass
    return domain


def message_json(message: QueuedMessage, now: datetime) -> dict[str, Any]:
    """One message as `queue list --json` prints it (times in ISO 8601, UTC)."""
    outcome = message.last_outcome
    return {
        "id": message.id,
        "message_id": message.message_id,
        "email": message.email,
        "domain": message.email.rpartition("@")[2],
        "scenario": message.scenario,
        "step": message.step_id,
        "state": message.state.value,
        "attempts": message.attempts,
        "next_attempt_at": _iso(message.next_attempt_at) if message.state in (S.QUEUED, S.DEFERRED) else None,
        "created_at": _iso(message.created_at),
        "age_seconds": max(0, int((now - message.created_at).total_seconds())),
        "why": why(message.last_reply, outcome),
        "why_at": _iso(outcome.at) if outcome is not None else None,
    }


def _iso(at: datetime | None) -> str | None:
    return at.isoformat(timespec="seconds") if at is not None else None


def render_messages(messages: Sequence[QueuedMessage], now: datetime) -> list[str]:
    """`queue list`'s lines: a header and one aligned line per message."""
    rows: list[tuple[str, ...]] = [("id", "recipient", "scenario/step", "state", "tries", "next try", "age", "why")]
    for m in messages:
        if m.state in (S.QUEUED, S.DEFERRED):
            upcoming = next_try(m.next_attempt_at, now)
        else:
            upcoming = "–"  # being sent, or given up on
        rows.append((
            str(m.id), m.email, f"{m.scenario}/{m.step_id}", m.state.value, str(m.attempts), upcoming,
            span(now - m.created_at), why(m.last_reply, m.last_outcome) or "–",
        ))
    return aligned(rows, right={0, 4})


def _scope(domain: str | None, scenario: str | None) -> str:
    return (f" for {domain}" if domain else "") + (f" of scenario {scenario}" if scenario else "")


# -- the commands ---------------------------------------------------------------------------


def _summary(args: argparse.Namespace) -> int:
    from mailer.cli import load, make_clock

    config = load(args, required=True)
    now = make_clock(config).now()  # the daemon's clock: an accelerated demo's next tries

    async def run() -> tuple[list[QueueGroup], int]:
        async with open_store(config) as store:
            groups = await store.queue_groups()
            counts = await store.message_counts()
        return groups, counts.get(S.FAILED, 0) + counts.get(S.EXPIRED, 0)

    groups, finished = asyncio.run(run())
    print(render_shape(shape(groups), now, finished=finished))
    return 0


def _list(args: argparse.Namespace) -> int:
    from mailer.cli import load, make_clock

    states = parse_states(args.state)
    domain = parse_domain(args.domain)
    config = load(args, required=True)
    now = make_clock(config).now()

    async def run() -> tuple[list[QueuedMessage], int]:
        async with open_store(config) as store:
            return await store.queued_messages(states=states, domain=domain, scenario=args.scenario, limit=args.limit)

    messages, total = asyncio.run(run())
    if args.json:
        for message in messages:
            print(json.dumps(message_json(message, now), ensure_ascii=False))
        return 0
    names = [state.value for state in states]
    named = " or ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)
    if not messages:
        print(f"no {named} messages{_scope(domain, args.scenario)}")
        return 0
    print("\n".join(render_messages(messages, now)))
    if total > len(messages):
        print(f"… showing {len(messages):,} of {total:,}: narrow with --state, --domain or --scenario, or raise --limit")
    return 0


def _retry(args: argparse.Namespace) -> int:
    from mailer.cli import load, make_clock

    domain = parse_domain(args.domain)
    config = load(args, required=True)
    # The daemon's clock, never ahead of a running daemon's (an accelerated one started earlier).
    now = make_clock(config).now()

    async def run() -> tuple[int, bool]:
        async with open_store(config) as store:
            made_due = await store.retry_deferred(now=now, domain=domain, scenario=args.scenario)
            return made_due, any_alive(await store.daemons())

    made_due, serving = asyncio.run(run())
    scope = _scope(domain, args.scenario)
    if not made_due:
        print(f"no deferred messages{scope}: nothing to retry")
        return 0
    them = "it" if made_due == 1 else "them"
    line = f"{counted(made_due, 'deferred message')}{scope} {'is' if made_due == 1 else 'are'} due now; "
    if serving:
        # An idle daemon sleeps until its poll interval ends or something it knew of falls due
        # (mailer.daemon's _idle), so a retry written meanwhile waits for that poll at most.
        poll = format_duration(config.scheduler.poll_interval)
        clock = " of clock time" if config.clock.speed != 1.0 else ""
        line += (
            f"the running `mailer serve` picks {them} up within its poll interval (scheduler.poll_interval, {poll}{clock}) "
            f"and sends {them} as its warm-up budgets and circuit breakers allow"
        )
    else:
        line += f"no `mailer serve` is running: {'it goes' if made_due == 1 else 'they go'} out when one starts"
    print(line)
    return 0
