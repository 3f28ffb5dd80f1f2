"""How fast one sending IP may go at one provider, adapting to what the provider answers. Pure.

A receiver that wants less from an IP says so: Gmail's ``421 4.7.28 … unusual rate of
unsolicited mail … temporarily rate limited`` (https://support.google.com/a/answer/3726730),
Yahoo's ``421 4.7.0 [TSS04] … temporarily deferred`` (https://senders.yahooinc.com/smtp-error-codes/),
Microsoft's ``451 4.7.650 … temporarily rate limited due to IP reputation``. RFC 3463 3.8 puts
such policy refusals under X.7; RFC 5321 3.8 lets a server answer 421 and close when it will
serve no more. Pushing on only deepens the hole, so for that (IP, provider):

| what happens | the throttle |
| --- | --- |
| a rate signal (421, 4.7.x, a sender-problem reason) | halve the rate multiplier (floor 1/16) |
| further signals within `settle` of the reaction | one episode: nothing more |
| the `pause_after`-th strike within `repeat_window`, or a 5xx block | pause: 30 min, doubling to 4 h |
| a clean period: `clean_messages` accepted or `clean_period` without a signal | raise by `raise_step` toward 1 |

Pauses last 30 minutes, doubling to 4 hours (the retry schedule's
ceiling). Every transition returns the reason it is logged with.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from mailer.classify import classify_reply
from mailer.reasons import SENDER_PROBLEMS, Reason
from mailer.reply import SMTPReply


class Signal(StrEnum):
    SLOW = "slow"  # a deferral that asks us to slow down
    BLOCK = "block"  # a permanent refusal of our IP: stop for a while


# Greylisting (a first-contact 4xx by design, often 4.7.1) asks for nothing but patience.
_GREYLISTING = re.compile(r"gr[ae]y-?list", re.IGNORECASE)


def throttle_signal(reply: SMTPReply, reason: Reason | None = None) -> Signal | None:
    """Whether a reply asks this IP to slow down (SLOW), stop for a while (BLOCK), or neither.

    `reason` is the bounce classifier's reading of the reply; it is computed when not given.
    No reply at all (a timeout, a refused TCP connection) is a network matter, not a signal.
    """
    if reply.code is None or 200 <= reply.code < 300 or _GREYLISTING.search(reply.text):
        return None
    if reason is None:
        reason = classify_reply(
            code=reply.code, enhanced=reply.enhanced, text=reply.text, command=reply.command, host=reply.host
        ).reason
    if reason in SENDER_PROBLEMS:
        return Signal.BLOCK if reply.code >= 500 else Signal.SLOW
    if reply.code == 421 or (reply.code < 500 and (reply.enhanced or "").startswith("4.7.")):
        return Signal.SLOW
    return None


@dataclass(frozen=True)
class ThrottlePolicy:
    settle: timedelta = timedelta(minutes=1)  # replies to messages already in flight: one episode
    repeat_window: timedelta = timedelta(minutes=30)
    pause_after: int = 3  # strikes within the window that turn slowing into a pause
    first_pause: timedelta = timedelta(minutes=30)
    max_pause: timedelta = timedelta(hours=4)
    clean_messages: int = 50
    clean_period: timedelta = timedelta(minutes=30)
    min_multiplier: float = 1 / 16
    raise_step: float = 0.25  # additive increase after a multiplicative decrease (AIMD)


@dataclass(frozen=True)
class Throttle:
    """The adaptive state of one (IP, provider); the defaults are a provider in good standing."""

    multiplier: float = 1.0  # the share of the schedule's hourly and per-minute rate allowed now
    paused_until: datetime | None = None
    pause_length: timedelta = timedelta(0)  # of the last pause, to double the next one
    strikes: int = 0  # signals within the repeat window
    last_strike: datetime | None = None
    clean_since: datetime | None = None  # start of the current clean period, while slowed
    clean_accepted: int = 0
    reason: str = ""  # the last decision, in words
    changed_at: datetime | None = None

    def state(self, now: datetime) -> str:
        """ok, slowed or paused."""
        if self.paused_until is not None and self.paused_until > now:
            return "paused"
        return "slowed" if self.multiplier < 1.0 else "ok"


def on_signal(
    throttle: Throttle, signal: Signal, *, now: datetime, what: str, policy: ThrottlePolicy
) -> tuple[Throttle, str | None]:
    """React to a rate signal; `what` is the reply, quoted in the reason. None: already reacting."""
    if throttle.paused_until is not None and throttle.paused_until > now:
        return throttle, None  # answers to messages sent before the pause began
    if throttle.last_strike is not None and now - throttle.last_strike < policy.settle:
        return throttle, None
    repeated = throttle.last_strike is not None and now - throttle.last_strike <= policy.repeat_window
    strikes = throttle.strikes + 1 if repeated else 1
    multiplier = max(policy.min_multiplier, throttle.multiplier / 2)
    if signal is Signal.BLOCK or strikes >= policy.pause_after:
        recent = throttle.paused_until is not None and now - throttle.paused_until <= policy.max_pause
        length = min(throttle.pause_length * 2, policy.max_pause) if recent else policy.first_pause
        until = now + length
        why = "a block" if signal is Signal.BLOCK else f"{strikes} refusals within {_words(policy.repeat_window)}"
        reason = f"paused {_words(length)} until {until:%Y-%m-%d %H:%M} UTC, then ×{multiplier:.2f}: {why}: {what}"
        return dataclasses.replace(
            throttle, multiplier=multiplier, paused_until=until, pause_length=length, strikes=strikes,
            last_strike=now, clean_since=until, clean_accepted=0, reason=reason, changed_at=now,
        ), reason
    reason = f"slowed to ×{multiplier:.2f} (refusal {strikes} within {_words(policy.repeat_window)}): {what}"
    return dataclasses.replace(
        throttle, multiplier=multiplier, strikes=strikes, last_strike=now, clean_since=now,
        clean_accepted=0, reason=reason, changed_at=now,
    ), reason


def on_accepted(throttle: Throttle, *, now: datetime, policy: ThrottlePolicy) -> tuple[Throttle, str | None]:
    """A message accepted: one more toward the clean period while slowed."""
    if throttle.multiplier >= 1.0 or throttle.state(now) == "paused":
        return throttle, None
    return recover(dataclasses.replace(throttle, clean_accepted=throttle.clean_accepted + 1), now=now, policy=policy)


def recover(throttle: Throttle, *, now: datetime, policy: ThrottlePolicy) -> tuple[Throttle, str | None]:
    """After a clean period, one step back toward the schedule (one step per period)."""
    if throttle.multiplier >= 1.0 or throttle.state(now) == "paused" or throttle.clean_since is None:
        return throttle, None
    by_count = throttle.clean_accepted >= policy.clean_messages
    by_time = now - throttle.clean_since >= policy.clean_period
    if not (by_count or by_time):
        return throttle, None
    multiplier = min(1.0, throttle.multiplier + policy.raise_step)
    clean = f"{throttle.clean_accepted} accepted" if by_count else f"{_words(now - throttle.clean_since)} without a refusal"
    if multiplier >= 1.0:
        reason = f"back to the schedule (×1.00) after {clean}"
        return dataclasses.replace(
            throttle, multiplier=1.0, strikes=0, clean_since=None, clean_accepted=0, reason=reason, changed_at=now
        ), reason
    reason = f"raised to ×{multiplier:.2f} after {clean}"
    return dataclasses.replace(
        throttle, multiplier=multiplier, strikes=0, clean_since=now, clean_accepted=0, reason=reason, changed_at=now
    ), reason


def _words(delta: timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    if minutes >= 60 and minutes % 60 == 0:
        return f"{minutes // 60}h"
    if minutes >= 60:
        return f"{minutes // 60}h{minutes % 60:02d}m"
    return f"{minutes}m"
