"""Destination circuit breakers: one probe for the unknown, holds after silence, a reply closes."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from mailer.breaker import BASE_COOLDOWN, BEHIND_PROBE, MAX_COOLDOWN, DestinationBreakers
from mailer.reply import SMTPReply

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=timezone.utc)


def test_an_unknown_destination_gets_one_probe_and_the_others_wait_for_it() -> None:
    """The first attempt probes; the next waits while the probe is young and is held once it is overdue."""
    breakers = DestinationBreakers()
    first = breakers.admit("other:void.example", T0, probe_overdue=False)
    assert first.go and first.probe
    waiting = breakers.admit("other:void.example", T0, probe_overdue=False)
    assert not waiting.go and waiting.wait
    held = breakers.admit("other:void.example", T0, probe_overdue=True)
    assert not held.go and held.until == T0 + BEHIND_PROBE


def test_a_reply_proves_the_destination_and_lifts_every_limit() -> None:
    """Any reply, even a refusal, closes the breaker: then every attempt goes at once."""
    breakers = DestinationBreakers()
    breakers.admit("gmail", T0, probe_overdue=False)
    assert breakers.record("gmail", silent=False, now=T0, probe=True) is None
    assert all(breakers.admit("gmail", T0, probe_overdue=False).go for _ in range(5))


def test_a_silent_probe_opens_the_breaker_with_doubling_cooldowns() -> None:
    """A timed-out probe holds the destination 1 min, then 2, 4 … up to the maximum; a reply closes it."""
    breakers = DestinationBreakers()
    now = T0
    breakers.admit("other:void.example", now, probe_overdue=False)
    expected = BASE_COOLDOWN
    for _ in range(8):
        decision = breakers.record("other:void.example", silent=True, now=now, probe=True)
        assert decision is not None and "did not answer" in decision
        held = breakers.admit("other:void.example", now + expected - timedelta(seconds=1), probe_overdue=False)
        assert not held.go and held.until == now + expected
        now += expected
        probe = breakers.admit("other:void.example", now, probe_overdue=False)
        assert probe.go and probe.probe
        expected = min(expected * 2, MAX_COOLDOWN)
    assert expected == MAX_COOLDOWN
    assert breakers.record("other:void.example", silent=False, now=now, probe=True) is not None  # "answers again"
    assert breakers.admit("other:void.example", now, probe_overdue=False).go


def test_a_proven_destination_opens_only_on_the_second_silence_in_a_row() -> None:
    """One timeout among answered attempts is noise; two in a row open the breaker."""
    breakers = DestinationBreakers()
    breakers.admit("yahoo", T0, probe_overdue=False)
    breakers.record("yahoo", silent=False, now=T0, probe=True)
    assert breakers.record("yahoo", silent=True, now=T0, probe=False) is None
    assert breakers.admit("yahoo", T0, probe_overdue=False).go
    breakers.record("yahoo", silent=False, now=T0, probe=False)  # answered: the count starts over
    assert breakers.record("yahoo", silent=True, now=T0, probe=False) is None
    assert breakers.record("yahoo", silent=True, now=T0, probe=False) is not None
    assert not breakers.admit("yahoo", T0, probe_overdue=False).go


def test_an_abandoned_probe_lets_the_next_attempt_probe() -> None:
    """A probe that never reached the receiver (held, unbuildable) teaches nothing: the next one probes."""
    breakers = DestinationBreakers()
    assert breakers.admit("apple", T0, probe_overdue=False).probe
    breakers.abandon("apple")
    again = breakers.admit("apple", T0, probe_overdue=False)
    assert again.go and again.probe


def test_only_timeouts_count_as_silence() -> None:
    """A timeout (at any phase, or after the dot) is silence; a hang-up or a refused connection is not."""
    assert SMTPReply(code=None, text="SMTPTimeoutError: Timed out waiting for server response", command="RCPT").timed_out
    assert SMTPReply(code=None, text="outcome unknown: SMTPReadTimeoutError: Timed out", command="DATA").timed_out
    assert SMTPReply(code=None, text="SMTPConnectTimeoutError: Timed out connecting", command="CONNECT").timed_out
    assert not SMTPReply(code=None, text="SMTPServerDisconnected: Server disconnected unexpectedly", command="MAIL").timed_out
    assert not SMTPReply(code=None, text="ConnectionRefusedError: [Errno 111] Connect call failed", command="CONNECT").timed_out
    assert not SMTPReply.parse(421, "4.7.0 Timeout reading data; try later", command="RCPT").timed_out
