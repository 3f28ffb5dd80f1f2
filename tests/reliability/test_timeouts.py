"""Per-phase SMTP timeouts: RFC 5321 4.5.3.2's minimums by default, configurable, each phase on its own."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

from mailer.config import Config, TimeoutsConfig, parse_config
from mailer.reply import SMTPReply, Verdict
from mailer.testing import FaultServer, delay_reply
from mailer.transport import Envelope, SMTPTransport

MESSAGE = b"From: a@acme.example\r\nTo: b@example.com\r\nSubject: hi\r\nMessage-ID: <t@acme.example>\r\n\r\nHello\r\n"
ENVELOPE = Envelope("bounces@acme.example", "b@example.com")

# RFC 5321 4.5.3.2, in seconds: 4.5.3.2.1 initial 220 message 5 minutes, 4.5.3.2.2 MAIL
# 5 minutes, 4.5.3.2.3 RCPT 5 minutes, 4.5.3.2.4 DATA initiation 2 minutes, 4.5.3.2.5 data
# block 3 minutes, 4.5.3.2.6 DATA termination 10 minutes. Our `data` timeout covers the
# last three, so it must be at least the largest of them.
RFC_MINIMUMS = {"connect": 300.0, "mail": 300.0, "rcpt": 300.0, "data": 600.0}

# (phase the server stalls, the config key that bounds it, the phase the reply names)
PHASES = [("CONNECT", "connect", "CONNECT"), ("MAIL", "mail", "MAIL"), ("RCPT", "rcpt", "RCPT"),
          ("DATA", "data", "DATA"), ("DOT", "data", "DATA")]
# A different timeout for each key, far enough apart that the time a stall took tells which
# one ended it.
TIMEOUTS = {"connect": 0.4, "mail": 0.8, "rcpt": 1.2, "data": 1.6}
SLACK = 0.35
STALL = 3.0


def test_the_default_timeouts_are_at_least_rfc_5321s_minimums(tmp_path: Path, figures: Callable[[str], None]) -> None:
    """With no [timeouts] section, every phase waits at least as long as RFC 5321 4.5.3.2 asks."""
    defaults = parse_config({}, path=tmp_path / "mailer.toml").timeouts
    assert defaults == Config().timeouts == TimeoutsConfig()
    for key, minimum in RFC_MINIMUMS.items():
        assert getattr(defaults, key) >= minimum, key
    configured = parse_config({"timeouts": {"connect": 30, "mail": 20, "rcpt": 10, "data": 60}}, path=tmp_path / "mailer.toml")
    assert configured.timeouts == TimeoutsConfig(connect=30, mail=20, rcpt=10, data=60)
    figures("T1 default-timeouts: " + " ".join(f"{k}={getattr(defaults, k):.0f}s(min {v:.0f})" for k, v in RFC_MINIMUMS.items()))


async def test_each_phase_times_out_after_its_own_configured_timeout(tmp_path: Path, figures: Callable[[str], None]) -> None:
    """A stall at each phase ends after that phase's timeout, never another's; after the dot the outcome is unknown."""
    async with FaultServer() as server:
        config = parse_config(
            {"relay": {"host": "127.0.0.1", "port": server.port}, "timeouts": TIMEOUTS}, path=tmp_path / "mailer.toml"
        )
        transport = SMTPTransport(config.relay, config.timeouts)

        async def stalled(phase: str, recipient: str) -> tuple[SMTPReply, float]:
            began = time.monotonic()
            reply = await transport.connection().send(Envelope(f"bounces+{phase.lower()}@acme.example", recipient), MESSAGE)
            return reply, time.monotonic() - began

        # One session per phase, all at once; the greeting stall hits whichever session
        # connects first, so it gets a server of its own.
        async with FaultServer() as greeting:
            greeting.inject(delay_reply("CONNECT", STALL))
            slow_greeting = SMTPTransport(
                parse_config({"relay": {"host": "127.0.0.1", "port": greeting.port}, "timeouts": TIMEOUTS}, path=tmp_path / "g.toml").relay,
                config.timeouts,
            )
            began = time.monotonic()
            connect_reply = await slow_greeting.connection().send(ENVELOPE, MESSAGE)
            results = {"CONNECT": (connect_reply, time.monotonic() - began)}
        for phase, _, _ in PHASES[1:]:
            server.inject(delay_reply(phase, STALL, sender=f"bounces+{phase.lower()}@acme.example"))
        replies = await asyncio.gather(*(stalled(p, f"{p.lower()}@example.com") for p, _, _ in PHASES[1:]))
        results.update(zip([p for p, _, _ in PHASES[1:]], replies))

    line = []
    for phase, key, named in PHASES:
        reply, waited = results[phase]
        assert reply.code is None and reply.command == named and reply.verdict is Verdict.TEMPORARY, (phase, str(reply))
        assert TIMEOUTS[key] <= waited < TIMEOUTS[key] + SLACK, f"{phase}: gave up after {waited:.2f} s, {key} is {TIMEOUTS[key]} s"
        line.append(f"{phase}={waited:.2f}s({key}={TIMEOUTS[key]})")
    dot_reply, _ = results["DOT"]
    assert dot_reply.text.startswith("outcome unknown"), "no reply to the final dot: the message may have arrived"
    assert [m.rcpt_tos for m in server.messages] == [("dot@example.com",)], "and it did: the server kept it"
    figures("T2 per-phase-timeouts: gave up after " + " ".join(line))
