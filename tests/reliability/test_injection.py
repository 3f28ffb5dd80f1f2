"""Header and SMTP injection through lead data, and dot-stuffing of hostile bodies.

Lead values carry CR, LF, NUL, Unicode line breaks, percent-encoded and RFC 2047-encoded
newlines, and SMTP commands after a lone dot; templates hold lines that are ".", "..", ". ".
A value that would start a header of its own is refused for that message (failed, never
sent); everything sent arrives byte for byte as the composer produced it, once SMTP
transparency (RFC 5321 4.5.2) is undone, with no header and no SMTP command it did not write.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from email.header import decode_header, make_header
from email.message import EmailMessage
from pathlib import Path

import pytest

from conftest import make_config, write_workspace
from mailer.compose import Composer
from mailer.errors import HeaderInjectionError
from mailer.leads import Lead
from mailer.links import Links
from mailer.mime import make_message_id, wire_address
from mailer.render import Renderer
from mailer.scenario import load_scenarios
from mailer.testing import FaultServer
from mailer.tokens import Signer
from mailer.transport import Envelope, SMTPTransport

from .harness import daemon_run

SCENARIO = """
name: hostile
sender: default
entry:
  list: signups
steps:
  - id: only
    wait: 0m
    subject: "News for {{ lead.first_name }}"
    template: hostile.html
    text_template: hostile.txt
"""
HTML = "<p>Hello {{ lead.first_name }} of {{ lead.company }}</p>\n<p>{{ lead.note }}</p>\n.\n..\n. \n<p>end</p>\n"
TEXT = "Hello {{ lead.first_name }}\n.\n..\n...\n. \n.\r\n{{ lead.company }}\n{{ lead.note }}\nend\n"

# Values that only reach the bodies: any bytes at all must arrive as they were composed.
BODY_VALUES = [
    "Acme\r\n.\r\nMAIL FROM:<evil@evil.example>\r\nRCPT TO:<victim@evil.example>\r\nDATA\r\n",
    ".\r\n",
    "..",
    "\r\n.\r\n",
    "\n.\n",
    "line\rbare CR",
    ". \r\n.\r\nQUIT\r\n",
    "NUL\x00inside",
    "Bcc: victim@evil.example",
    "%0d%0aBcc: victim@evil.example",
    "=?utf-8?q?=0D=0ABcc:_victim@evil.example?=",
    "\u2028Bcc: victim@evil.example\u0085Cc: other@evil.example",
    "<script>alert(1)</script>",
]
# Values that reach headers (first_name is in Subject and To) and must not start a header.
HEADER_ATTACKS = [
    "Eve\r\nBcc: victim@evil.example",
    "Eve\nBcc: victim@evil.example",
    "Eve\rBcc: victim@evil.example",
    "Eve\x00Bcc: victim@evil.example",
    "Eve\r\n\r\n<html>body</html>",
]
# Look like newlines once decoded by a careless reader, but are text: sent, shown literally.
HEADER_LOOKALIKES = [
    "Eve%0d%0aBcc: victim@evil.example",
    "Eve%0D%0ABcc:%20victim@evil.example",
    "=?utf-8?q?Eve=0D=0ABcc:_victim@evil.example?=",
    "=?utf-8?b?RXZlDQpCY2M6IHZpY3RpbUBldmlsLmV4YW1wbGU=?=",
    "Eve\u2028Bcc: victim@evil.example",
    "Eve\u0085Bcc: victim@evil.example",
    "Eve\\r\\nBcc: victim@evil.example",
    "Eve, <victim@evil.example>",
    '"Eve" <victim@evil.example>',
]
ADDRESS_ATTACKS = [
    "lead@example.com>\r\nRCPT TO:<victim@evil.example",
    "lead@example.com\r\nDATA",
    "lead@example.com\x00victim@evil.example",
]
OWN_HEADERS = {
    "to", "subject", "date", "message-id", "from", "list-unsubscribe", "list-unsubscribe-post",
    "mime-version", "content-type",
}


def _workspace(root: Path) -> None:
    write_workspace(root, SCENARIO)
    (root / "templates" / "hostile.html").write_text(HTML, encoding="utf-8")
    (root / "templates" / "hostile.txt").write_text(TEXT, encoding="utf-8", newline="")


def _leads() -> list[Lead]:
    leads = [
        Lead(email=f"body{n}@example.com", first_name="Ann", company=value, attributes={"note": value})
        for n, value in enumerate(BODY_VALUES)
    ]
    leads += [Lead(email=f"header{n}@example.com", first_name=value, company="Acme", attributes={"note": ""}) for n, value in enumerate(HEADER_ATTACKS)]
    leads += [
        Lead(email=f"lookalike{n}@example.com", first_name=value, company="Acme", attributes={"note": ""})
        for n, value in enumerate(HEADER_LOOKALIKES)
    ]
    return leads


async def test_the_bytes_received_equal_the_bytes_composed(tmp_path: Path, figures: Callable[[str], None]) -> None:
    """Every composable hostile message arrives byte for byte as composed; header attacks never compose."""
    _workspace(tmp_path)
    async with FaultServer() as server:
        config = make_config(tmp_path, server.port)
        [scenario], errors = load_scenarios(config.scenarios, identities=set(config.identities), templates_dir=config.templates)
        assert errors == []
        links = Links(Signer(config.secret_keys()), config.tracking.public_base)
        composer = Composer(Renderer(config.templates), config.identities, links=links, config=config)
        connection = SMTPTransport(config.relay, config.timeouts).connection()
        composed: dict[str, bytes] = {}
        refused = 0
        now = datetime(2026, 1, 5, 9, 0, tzinfo=timezone.utc)
        for row, lead in enumerate(_leads(), start=1):
            message_id = make_message_id("acme.example")
            try:
                message = composer.compose(scenario, scenario.steps[0], lead, message_id=message_id, now=now, message_row=row)
            except HeaderInjectionError:
                refused += 1
                assert lead.first_name in HEADER_ATTACKS
                continue
            composed[message_id] = message.wire
            reply = await connection.send(Envelope("bounces@acme.example", wire_address(lead.email), message.smtputf8), message.wire)
            assert reply.code == 250, str(reply)
        await connection.close()
    assert refused == len(HEADER_ATTACKS)
    differ = [mid for mid, wire in composed.items() if server.by_message_id[mid].data != wire]
    assert differ == [], f"{len(differ)} messages arrived changed"
    assert len(server.messages) == len(composed) and server.transactions == len(composed)
    commands = [line.command for line in server.transcript]
    assert commands.count("MAIL") == commands.count("RCPT") == commands.count("DOT") == len(composed)
    injected = sum(len(_foreign_headers(m.parsed())) for m in server.messages)
    assert injected == 0
    dotted = sum(m.data.count(b"\r\n.") for m in server.messages)
    figures(
        f"I1 bytes-as-composed: messages={len(composed)} identical={len(composed) - len(differ)} "
        f"header_attacks_refused={refused}/{len(HEADER_ATTACKS)} injected_headers={injected} "
        f"extra_smtp_commands=0 lines_starting_with_dot={dotted}"
    )


async def test_through_the_daemon_nothing_is_injected_and_each_lead_gets_its_own_message(
    tmp_path: Path, figures: Callable[[str], None]
) -> None:
    """Through the daemon: header and address attacks fail their message, lookalikes are shown as text, nothing else changes."""
    _workspace(tmp_path)
    leads = _leads() + [Lead(email=address, first_name="Mal", company="Acme", attributes={"note": ""}) for address in ADDRESS_ATTACKS]
    async with FaultServer() as server:
        async with daemon_run(tmp_path, server, leads=leads) as run:
            await run.drive()
            failed = {str(row[0]) for row in run.rows(
                "SELECT l.email FROM messages m JOIN leads l ON l.id = m.lead_id WHERE m.state = 'failed'"
            )}
            suppressed = run.suppressed()
    expected_failed = {lead.email for lead in leads if lead.first_name in HEADER_ATTACKS or lead.email in ADDRESS_ATTACKS}
    assert failed == expected_failed
    assert suppressed == {}, "a refused value is our data problem, not the recipient's"
    rcpts = [line.argument for line in server.transcript if line.command == "RCPT"]
    assert sorted(rcpts) == sorted(f"TO:<{lead.email}>" for lead in leads if lead.email not in expected_failed)
    by_recipient = {m.rcpt_tos[0]: m.parsed() for m in server.messages}
    by_data = {m.rcpt_tos[0]: m.data for m in server.messages}
    injected = 0
    for lead in leads:
        if lead.email in expected_failed:
            continue
        message = by_recipient[lead.email]
        injected += len(_foreign_headers(message))
        assert str(message["Subject"]) == f"News for {lead.first_name}"
        assert message["To"].addresses[0].addr_spec == lead.email
        # RFC 2047 6.2: white space between adjacent encoded-words is not shown. (CPython's
        # address parser keeps it, so the raw field is decoded by the RFC's rules here.)
        shown = str(make_header(decode_header(_raw_field(by_data[lead.email], "To"))))
        assert shown in (f"{lead.display_name} <{lead.email}>", f"{_quoted(lead.display_name)} <{lead.email}>"), shown
    assert injected == 0
    figures(
        f"I2 daemon-injection: leads={len(leads)} sent={len(server.messages)} failed={len(failed)} "
        f"(header={len(HEADER_ATTACKS)} address={len(ADDRESS_ATTACKS)}) suppressed=0 injected_headers={injected} "
        f"lookalikes_shown_literally={len(HEADER_LOOKALIKES)}"
    )


def _raw_field(data: bytes, name: str) -> str:
    """A header field's value as it went over the wire, unfolded (RFC 5322 2.2.3)."""
    lines = data.split(b"\r\n\r\n", 1)[0].decode("utf-8").split("\r\n")
    for index, line in enumerate(lines):
        if line.lower().startswith(name.lower() + ":"):
            value = line.partition(":")[2].lstrip()
            for more in lines[index + 1 :]:
                if more[:1] not in (" ", "\t"):
                    break
                value += more
            return value
    raise AssertionError(f"no {name} field")


def _quoted(name: str) -> str:
    """`name` as an RFC 5322 quoted-string."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _foreign_headers(message: EmailMessage) -> list[str]:
    """Header fields the layout never writes, or written more than once."""
    names = [name.lower() for name in message.keys()]
    return [name for name in names if name not in OWN_HEADERS or names.count(name) > 1]


@pytest.mark.parametrize("value", ADDRESS_ATTACKS)
def test_an_address_carrying_smtp_commands_is_refused_before_any_session(value: str) -> None:
    """An address with CR, LF or NUL never becomes an envelope address."""
    with pytest.raises(HeaderInjectionError):
        wire_address(value)
