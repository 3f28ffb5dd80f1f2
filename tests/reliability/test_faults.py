"""Every scripted SMTP fault against the real daemon: each message ends in the right state.

One test per fault, each through the fault server (mailer.testing.FaultServer) on loopback,
the daemon and a real SQLite file, on a fake clock driven until every message is terminal.
What must hold for each: no message recorded as sent that the server did not accept (lost);
only recipient faults fail and suppress; every other fault costs exactly one retry each time
it fires; a copy is repeated only when the server accepted it and the client never heard so
(the lost acknowledgement); a session broken by a fault is never used again.
"""

from __future__ import annotations

import json
import ssl
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import trustme

from mailer.testing import (
    REPLY_451,
    REPLY_452_MAILBOX_FULL,
    REPLY_452_TOO_MANY_RECIPIENTS,
    REPLY_550_NO_SUCH_USER,
    REPLY_554_POLICY,
    Fault,
    FaultServer,
    Fired,
    delay_reply,
    disconnect_after_354,
    drop_after_dot,
    fail_starttls,
    hang_up,
    malformed_reply,
    oversized_reply,
    reply_421_and_close,
    reply_with,
)

from .harness import daemon_run

RELAY_ERROR_500 = "500 Error: (FileNotFoundError) [Errno 2] No such file or directory: 'mail/tmp'"
ADDRESS_SYNTAX_504 = "504 5.5.2 <lead>: Recipient address rejected: need fully-qualified address"
MESSAGES = 60
SHARE = 0.2  # of transactions (or sessions) that meet the fault
# Timeouts short enough to play a timeout in a second, long enough that a busy 2-core
# machine never times out a healthy reply on loopback.
SHORT_TIMEOUTS = {"connect": 1.5, "mail": 1.5, "rcpt": 1.5, "data": 1.5}
PAST_TIMEOUT = 3.0
TIMEOUTS_PLAYED = 6


@dataclass(frozen=True)
class Case:
    label: str
    fault: Fault
    suppression: str | None = None  # the reason recipient faults suppress with
    escalates_after: int = 1  # fires on one address before it is suppressed
    repeats: bool = False  # the server accepts the message although the client hears no 250
    timeouts: dict[str, float] = field(default_factory=lambda: {"connect": 5, "mail": 5, "rcpt": 5, "data": 5})
    tls: bool = False


CASES = [
    Case("F1 421-close@RCPT", reply_421_and_close("RCPT", fraction=SHARE)),
    Case("F1b 421-close@MAIL", reply_421_and_close("MAIL", fraction=SHARE)),
    Case("F1c 421@greeting", reply_421_and_close("CONNECT", fraction=0.5)),
    Case("F2 451@RCPT", reply_with("RCPT", REPLY_451, fraction=SHARE)),
    Case("F2b 451@DOT", reply_with("DOT", REPLY_451, fraction=SHARE)),
    Case("F3 452-4.2.2-full@RCPT", reply_with("RCPT", REPLY_452_MAILBOX_FULL, fraction=0.5),
         suppression="soft-bounce-escalation", escalates_after=3),
    Case("F4 452-4.5.3-too-many@RCPT", reply_with("RCPT", REPLY_452_TOO_MANY_RECIPIENTS, fraction=SHARE)),
    Case("F5 550-5.1.1@RCPT", reply_with("RCPT", REPLY_550_NO_SUCH_USER, fraction=SHARE), suppression="hard-bounce"),
    Case("F6 554-5.7.1@DOT", reply_with("DOT", REPLY_554_POLICY, fraction=SHARE)),
    Case("F6b 554-5.7.1@RCPT", reply_with("RCPT", REPLY_554_POLICY, fraction=SHARE)),
    Case("F7 malformed@RCPT", malformed_reply("RCPT", fraction=SHARE)),
    Case("F7b malformed@DOT", malformed_reply("DOT", fraction=SHARE)),
    Case("F8 oversized@MAIL", oversized_reply("MAIL", fraction=SHARE)),
    Case("F8b oversized@EHLO", oversized_reply("EHLO", fraction=0.5)),
    Case("F9 lost-ack", drop_after_dot(fraction=SHARE), repeats=True),
    Case("F10 hang-up-after-354", disconnect_after_354(fraction=SHARE)),
    Case("F10b hang-up@RCPT", hang_up("RCPT", fraction=SHARE)),
    Case("F11 timeout@greeting", delay_reply("CONNECT", PAST_TIMEOUT, times=TIMEOUTS_PLAYED), timeouts=SHORT_TIMEOUTS),
    Case("F11b timeout@MAIL", delay_reply("MAIL", PAST_TIMEOUT, fraction=SHARE, times=TIMEOUTS_PLAYED), timeouts=SHORT_TIMEOUTS),
    Case("F11c timeout@RCPT", delay_reply("RCPT", PAST_TIMEOUT, fraction=SHARE, times=TIMEOUTS_PLAYED), timeouts=SHORT_TIMEOUTS),
    Case("F12 timeout-after-dot", delay_reply("DOT", PAST_TIMEOUT, fraction=SHARE, times=TIMEOUTS_PLAYED), repeats=True, timeouts=SHORT_TIMEOUTS),
    Case("F13 starttls-broken", fail_starttls(fraction=0.5), tls=True),
    # A relay whose own store failed answers 500 to the data (aiosmtpd's Mailbox handler on a
    # missing maildir does exactly this): a protocol problem, said of no recipient. Fired on
    # most transactions, so one address meets it again and again, and nobody is suppressed.
    Case("F14 500-relay-error@DOT", reply_with("DOT", RELAY_ERROR_500, fraction=0.6)),
    # The same reason at RCPT speaks of the address: soft bounces, escalated on the third.
    Case("F14b 504-5.5.2@RCPT", reply_with("RCPT", ADDRESS_SYNTAX_504, fraction=0.6),
         suppression="soft-bounce-escalation", escalates_after=3),
    Case("F13b starttls-454", reply_with("STARTTLS", "454 4.7.0 TLS not available due to temporary reason", fraction=0.5), tls=True),
]


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ssl.SSLContext, str]]:
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    yield context, str(path)


@pytest.mark.parametrize("case", CASES, ids=[c.label.split()[0] for c in CASES])
async def test_each_fault_ends_every_message_in_the_right_state(
    case: Case, tmp_path: Path, tls: tuple[ssl.SSLContext, str], figures: Callable[[str], None]
) -> None:
    """The fault fires, and every message still ends sent (or, for recipient faults only, failed and suppressed)."""
    server_tls, ca_file = tls
    options: dict[str, Any] = {"starttls": server_tls} if case.tls else {}
    relay: dict[str, object] = {"host": "127.0.0.1", "tls": "none"}
    began = time.monotonic()
    async with FaultServer(seed=7, **options) as server:
        server.inject(case.fault)
        relay["port"] = server.port
        if case.tls:
            relay.update(tls="starttls", ca_file=ca_file)
        async with daemon_run(tmp_path, server, leads=MESSAGES, timeouts=case.timeouts, relay=relay) as run:
            clock = await run.drive(step=timedelta(hours=2))
        wall = time.monotonic() - began

    states = run.states()
    fired = server.fired
    assert fired, "the fault must have fired at least once"
    fires_per_address = Counter(address for f in fired for address in f.recipients)
    suppressed = run.suppressed()
    failed = run.message_ids("state = 'failed'")
    accepted = set(server.message_ids)
    assert run.lost() == 0, "a message recorded as sent was never accepted"
    assert not failed & accepted, "a failed message was delivered"
    assert server.reused_after_fault() == 0, "a session broken by a fault carried another message"

    if case.suppression is None:
        assert states == {"sent": MESSAGES}
        assert suppressed == {}, "only recipient faults may suppress"
        assert run.retries() == _costing_a_retry(server), "each fault costs exactly one more attempt"
    else:
        should_fail = {a for a, n in fires_per_address.items() if n >= case.escalates_after}
        assert set(suppressed) == should_fail and set(suppressed.values()) <= {case.suppression}
        assert states == {"sent": MESSAGES - len(should_fail), **({"failed": len(should_fail)} if should_fail else {})}
    repeated = sum(1 for f in fired if f.accepted)
    assert server.duplicates == (repeated if case.repeats else 0)
    if case.repeats:
        deferred = [json.loads(data) for (data,) in run.rows("SELECT data FROM events WHERE type = 'deferred'")]
        # attempts that got no 250; holds (the destination's breaker after repeated silence) carry no reply
        unknown = [data["text"] for data in deferred if "text" in data]
        assert len(unknown) == len(fired) and all(text.startswith("outcome unknown") for text in unknown)
        for message_id, copies in server.message_ids.items():
            assert copies - 1 == sum(1 for f in fired if f.accepted and _is(server, f, message_id))

    figures(
        f"{case.label}: messages={MESSAGES} faults={len(fired)} sent={states.get('sent', 0)} "
        f"failed={len(failed)} suppressed={len(suppressed)} retries={run.retries()} "
        f"resent_at_once={len(fired) - _costing_a_retry(server) if case.suppression is None else 0} lost={run.lost()} "
        f"duplicates={server.duplicates} max_dup_per_message={max(server.message_ids.values()) - 1} "
        f"reused_after_fault={server.reused_after_fault()} clock={clock.total_seconds() / 3600:.1f}h wall={wall:.1f}s"
    )


def _costing_a_retry(server: FaultServer) -> int:
    """Fired faults that must cost the message an attempt.

    A session that fails at MAIL (no reply, a broken one, or a 421) once it has carried a
    message is what a relay's idle timeout looks like: nothing was sent yet, so the
    transport resends at once over a fresh session (mailer.transport.ConnectionPool.send),
    within the same attempt.
    """
    def reused(fired: Fired) -> bool:
        return any(line.command == "MAIL" and line.transaction < fired.transaction for line in server.lines_of(fired.connection))

    return sum(1 for f in server.fired if not (f.fault.command == "MAIL" and reused(f)))


def _is(server: FaultServer, fired: object, message_id: str) -> bool:
    """Whether a fired fault's transaction carried the message `message_id`."""
    recipients = getattr(fired, "recipients", ())
    received = server.by_message_id.get(message_id)
    return received is not None and received.rcpt_tos == tuple(recipients)
