"""Destination circuit breakers: a receiver that answers nothing gets one attempt at a time.

A black-holed destination (packets dropped, a server that accepts the connection and never
replies) costs a whole timeout per attempt, up to minutes (RFC 5321 4.5.3.2). If every
worker is allowed to try it, the healthy destinations wait behind it. Postfix handles this
per destination with a concurrency that starts low and a "dead destination" state after a
cohort of failures (postconf(5): initial_destination_concurrency,
default_destination_concurrency_failed_cohort_limit); we keep the same idea, smaller:

    unproven ──(any reply)──► proven ──(silence)──► open ──(cooldown passes)──► probing
        │                                             ▲                           │
        └─(silence)───────────────────────────────────┴──────────(silence)────────┘
                                                                  (any reply) → proven

- unproven: a destination not heard from yet; one attempt at a time. Others ask again when
  that probe ends, or are held once it has been silent for `patience` (it looks stuck).
- proven: it answered (any reply, even a refusal, shows it is there); no limit here (the
  provider's own concurrency applies, mailer.outbound).
- open: the last attempt met silence (timeout, hang-up, refused connection); everything for
  it is held for the cooldown, doubling with each silent probe up to `maximum`.
- probing: after the cooldown one attempt goes; its reply closes the breaker, its silence
  opens it again for longer.

Pure state and decisions; the asyncio waiting is in `Outbound.admit`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

BASE_COOLDOWN = timedelta(minutes=1)
MAX_COOLDOWN = timedelta(minutes=30)
# How long a first attempt may go unanswered before the others stop waiting for it and are
# held (a healthy receiver answers a first transaction well within it on a LAN or loopback;
# over the internet the held ones come back after BEHIND_PROBE).
PATIENCE_SECONDS = 0.1
# How long a message held behind a probe that looks stuck waits before it asks again.
BEHIND_PROBE = timedelta(seconds=5)


@dataclass
class _State:
    proven: bool = False
    probing: bool = False
    silences: int = 0  # silent attempts in a row
    open_until: datetime | None = None


@dataclass(frozen=True)
class Admission:
    """`go`: send now (as the probe when `probe`); otherwise wait for the probe or hold until `until`."""

    go: bool
    probe: bool = False
    wait: bool = False  # a probe is under way and not yet overdue: wait for its end, then ask again
    until: datetime | None = None
    reason: str = ""


class DestinationBreakers:
    """One breaker per destination key (the receiving provider's budget key)."""

    def __init__(self, *, base: timedelta = BASE_COOLDOWN, maximum: timedelta = MAX_COOLDOWN) -> None:
        self.base = base
        self.maximum = maximum
        self._states: dict[str, _State] = {}

    def admit(self, key: str, now: datetime, *, probe_overdue: bool) -> Admission:
        """Whether an attempt to `key` may start now; `probe_overdue`: the probe under way
        has been silent for longer than PATIENCE_SECONDS (real time)."""
        state = self._states.get(key)
        if state is None:
            self._states[key] = _State(probing=True)
            return Admission(go=True, probe=True)
        if state.proven and not state.probing and state.open_until is None:
            return Admission(go=True)
        if state.open_until is not None and now < state.open_until:
            return Admission(go=False, until=state.open_until, reason=self._why(key, state))
        if state.probing:
            if probe_overdue:
                return Admission(go=False, until=now + BEHIND_PROBE, reason=f"{key}: waiting for a first reply")
            return Admission(go=False, wait=True)
        state.probing = True  # the cooldown passed: one attempt finds out
        return Admission(go=True, probe=True)

    def record(self, key: str, *, silent: bool, now: datetime, probe: bool) -> str | None:
        """How an attempt to `key` ended; returns a decision worth logging, if any."""
        state = self._states.setdefault(key, _State())
        if probe:
            state.probing = False
        if not silent:
            was_open = state.silences > 0
            state.proven, state.silences, state.open_until = True, 0, None
            return f"{key} answers again: sending resumes" if was_open else None
        if state.proven and state.open_until is None and not probe:
            # one silent attempt among many answered ones: count it, open on the second in a row
            state.silences += 1
            if state.silences < 2:
                return None
        else:
            state.silences += 1
        cooldown = min(self.base * 2 ** max(0, state.silences - 1), self.maximum)
        state.proven, state.open_until = False, now + cooldown
        return f"{key} did not answer ({state.silences} silent attempts in a row): held for {_minutes(cooldown)}"

    def abandon(self, key: str) -> None:
        """The probe ended without reaching the receiver: nothing learnt, the next may probe."""
        state = self._states.get(key)
        if state is not None:
            state.probing = False
            if not state.proven and state.silences == 0 and state.open_until is None:
                del self._states[key]  # back to unknown: the next attempt probes

    def _why(self, key: str, state: _State) -> str:
        return f"{key} is not answering ({state.silences} silent attempts in a row); next try after the cooldown"


def _minutes(delta: timedelta) -> str:
    minutes = delta.total_seconds() / 60
    return f"{minutes:.0f} min" if minutes >= 1 else f"{delta.total_seconds():.0f} s"
