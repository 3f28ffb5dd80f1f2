"""Tests for mailer.throttle: which replies ask us to slow down, and how the throttle reacts."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from mailer.reply import SMTPReply
from mailer.throttle import Signal, Throttle, ThrottlePolicy, on_accepted, on_signal, recover, throttle_signal

T0 = datetime(2026, 1, 7, 10, 0, tzinfo=timezone.utc)
POLICY = ThrottlePolicy()


def reply(code: int | None, text: str, command: str = "RCPT") -> SMTPReply:
    return SMTPReply.parse(code, text, command=command, host="mx.example")


@pytest.mark.parametrize(
    ("code", "text", "command", "signal"),
    [
        (421, "4.7.28 Our system has detected an unusual rate of unsolicited mail originating from your IP address.", "RCPT", Signal.SLOW),
        (421, "4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected volume or user complaints", "MAIL", Signal.SLOW),
        (451, "4.7.650 The mail server [192.0.2.25] has been temporarily rate limited due to IP reputation.", "RCPT", Signal.SLOW),
        (421, "Too many concurrent SMTP connections; please try again later", "CONNECT", Signal.SLOW),
        (450, "4.7.1 Service unavailable, try again later", "RCPT", Signal.SLOW),
        (550, "5.7.1 Service unavailable; client host [192.0.2.1] blocked using Spamhaus", "RCPT", Signal.BLOCK),
        (554, "5.7.1 Your IP address has been blocklisted", "CONNECT", Signal.BLOCK),
        (450, "4.7.1 <a@b.example>: Recipient address rejected: Greylisted, try again in 5 minutes", "RCPT", None),
        (452, "4.2.2 The email account that you tried to reach is over quota", "RCPT", None),
        (550, "5.1.1 The email account that you tried to reach does not exist", "RCPT", None),
        (None, "TimeoutError: connect timed out", "CONNECT", None),
        (250, "2.0.0 OK", "DATA", None),
    ],
)
def test_rate_signals_are_told_apart_from_other_refusals(code: int | None, text: str, command: str, signal: Signal | None) -> None:
    """421s, 4.7.x deferrals and sender blocks are signals; greylisting, full or unknown mailboxes are not."""
    assert throttle_signal(reply(code, text, command)) is signal


def test_a_signal_halves_the_rate() -> None:
    """The first 421 halves the multiplier and says why, quoting the reply."""
    throttle, reason = on_signal(Throttle(), Signal.SLOW, now=T0, what="421 4.7.0 slow down", policy=POLICY)
    assert throttle.multiplier == 0.5 and throttle.state(T0) == "slowed"
    assert reason is not None and "×0.50" in reason and "421 4.7.0 slow down" in reason


def test_replies_to_messages_already_in_flight_are_one_episode() -> None:
    """Ten 421s within the settle time halve once: they answer messages sent before we slowed."""
    throttle = Throttle()
    reasons = []
    for second in range(10):
        throttle, reason = on_signal(throttle, Signal.SLOW, now=T0 + timedelta(seconds=second), what="421", policy=POLICY)
        reasons.append(reason)
    assert throttle.multiplier == 0.5 and throttle.strikes == 1
    assert reasons[0] is not None and reasons[1:] == [None] * 9


def test_repeated_signals_within_the_window_pause_the_provider() -> None:
    """The third strike within 30 minutes pauses for 30 minutes; each strike halves first."""
    throttle = Throttle()
    for minute in (0, 5, 10):
        throttle, reason = on_signal(throttle, Signal.SLOW, now=T0 + timedelta(minutes=minute), what="421", policy=POLICY)
    assert throttle.state(T0 + timedelta(minutes=10)) == "paused"
    assert throttle.paused_until == T0 + timedelta(minutes=40)
    assert throttle.multiplier == 0.125
    assert reason is not None and "paused 30m" in reason and "3 refusals within 30m" in reason


def test_strikes_far_apart_only_slow() -> None:
    """Signals more than the repeat window apart never add up to a pause."""
    throttle = Throttle()
    for hour in range(4):
        throttle, _ = on_signal(throttle, Signal.SLOW, now=T0 + timedelta(hours=hour), what="421", policy=POLICY)
    assert throttle.strikes == 1 and throttle.paused_until is None
    assert throttle.multiplier == POLICY.min_multiplier


def test_a_block_pauses_at_once_and_pauses_grow_to_the_cap() -> None:
    """A 5xx block pauses at once; a block soon after a pause doubles it, up to 4 hours."""
    throttle, now, lengths = Throttle(), T0, []
    for _ in range(6):
        throttle, _ = on_signal(throttle, Signal.BLOCK, now=now, what="554 blocked", policy=POLICY)
        assert throttle.paused_until is not None
        lengths.append(throttle.pause_length)
        now = throttle.paused_until + timedelta(minutes=1)
    assert lengths == [timedelta(minutes=m) for m in (30, 60, 120, 240, 240, 240)]


def test_a_pause_long_ago_starts_again_at_the_first_length() -> None:
    """After more than the longest pause in good standing, the next pause is short again."""
    throttle, _ = on_signal(Throttle(), Signal.BLOCK, now=T0, what="554", policy=POLICY)
    throttle, _ = on_signal(throttle, Signal.BLOCK, now=T0 + timedelta(hours=6), what="554", policy=POLICY)
    assert throttle.pause_length == POLICY.first_pause


def test_signals_during_a_pause_change_nothing() -> None:
    """Answers that arrive while paused belong to messages sent before the pause."""
    paused, _ = on_signal(Throttle(), Signal.BLOCK, now=T0, what="554", policy=POLICY)
    again, reason = on_signal(paused, Signal.BLOCK, now=T0 + timedelta(minutes=5), what="554", policy=POLICY)
    assert again == paused and reason is None


def test_clean_messages_raise_the_rate_step_by_step_back_to_the_schedule() -> None:
    """Each 50 accepted messages raise the multiplier by 0.25 until it is back at 1."""
    throttle, _ = on_signal(Throttle(), Signal.SLOW, now=T0, what="421", policy=POLICY)
    throttle, _ = on_signal(throttle, Signal.SLOW, now=T0 + timedelta(minutes=2), what="421", policy=POLICY)
    assert throttle.multiplier == 0.25
    seen, now = [], T0 + timedelta(minutes=3)
    for _ in range(3 * POLICY.clean_messages):
        throttle, reason = on_accepted(throttle, now=now, policy=POLICY)
        if reason is not None:
            seen.append(throttle.multiplier)
    assert seen == [0.5, 0.75, 1.0]
    assert throttle.state(now) == "ok" and "back to the schedule" in throttle.reason


def test_time_without_a_refusal_raises_one_step_per_clean_period() -> None:
    """Thirty quiet minutes raise one step; asking often within them raises nothing more."""
    throttle, _ = on_signal(Throttle(), Signal.SLOW, now=T0, what="421", policy=POLICY)
    for minute in range(1, 30):
        throttle, reason = recover(throttle, now=T0 + timedelta(minutes=minute), policy=POLICY)
        assert reason is None
    throttle, reason = recover(throttle, now=T0 + timedelta(minutes=30), policy=POLICY)
    assert throttle.multiplier == 0.75 and reason is not None and "30m without a refusal" in reason
    throttle, reason = recover(throttle, now=T0 + timedelta(minutes=31), policy=POLICY)
    assert throttle.multiplier == 0.75 and reason is None


def test_a_paused_provider_recovers_only_after_its_pause() -> None:
    """The clean period of a pause starts when the pause ends, not when it began."""
    throttle, _ = on_signal(Throttle(), Signal.BLOCK, now=T0, what="554", policy=POLICY)
    assert recover(throttle, now=T0 + timedelta(minutes=45), policy=POLICY)[1] is None
    raised, reason = recover(throttle, now=T0 + timedelta(minutes=60), policy=POLICY)
    assert reason is not None and raised.multiplier == 0.75
