"""The double opt-in confirmation email: built-in wording, its signed link, and overrides."""

from __future__ import annotations

import email
import email.policy
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

from mailer.config import parse_config
from mailer.leads import Lead
from mailer.links import Links
from mailer.optin import OptInMailer
from mailer.render import Renderer
from mailer.tokens import Signer

NOW = datetime(2026, 11, 2, 9, 0, tzinfo=timezone.utc)
LINKS = Links(Signer([b"k" * 40]), "https://t.acme.example")


def _mailer(tmp_path: Path) -> OptInMailer:
    config = parse_config({"lists": {"news": {"title": "Acme News", "double_opt_in": True, "confirm_within": "2d"}}}, path=tmp_path / "mailer.toml")
    (tmp_path / "templates").mkdir(exist_ok=True)
    return OptInMailer(config=config, links=LINKS, renderer=Renderer(tmp_path / "templates"))


def _parts(wire: bytes) -> tuple[str, str, str]:
    message = email.message_from_bytes(wire, policy=email.policy.default)
    text = message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    html = message.get_body(("html",)).get_content()  # type: ignore[union-attr]
    return str(message["Subject"]), text, html


def test_the_confirmation_carries_a_signed_expiring_link_for_the_lead_and_list(tmp_path: Path) -> None:
    """The email's link confirms this lead for this list, and expires after confirm_within."""
    lead = Lead(email="ann@example.com", first_name="Ann", id=17)
    composed = _mailer(tmp_path).compose(lead, "news", message_id="<c1@acme.example>", now=NOW)
    subject, text, html = _parts(composed.wire)
    assert subject == "Please confirm your subscription to Acme News"
    url = re.search(r"https://t\.acme\.example/confirm/\w+", text)
    assert url is not None and url.group(0) in html
    token = url.group(0).rsplit("/", 1)[1]
    confirm = LINKS.read_confirm(token, now=NOW + timedelta(days=1))
    assert confirm is not None and (confirm.lead_id, confirm.list_name) == (17, "news")
    assert LINKS.read_confirm(token, now=NOW + timedelta(days=2, seconds=1)) is None
    assert b"List-Unsubscribe" not in composed.wire and b"/o/" not in composed.wire


def test_a_japanese_lead_gets_the_japanese_wording(tmp_path: Path) -> None:
    """A lead whose language is ja reads the confirmation in Japanese."""
    lead = Lead(email="taro@example.jp", first_name="太郎", last_name="山田", attributes={"language": "ja"}, id=3)
    subject, text, _ = _parts(_mailer(tmp_path).compose(lead, "news", message_id="<c2@acme.example>", now=NOW).wire)
    assert subject.startswith("【確認】Acme News") and "山田 様" in text


def test_a_hostile_name_is_escaped_in_the_html(tmp_path: Path) -> None:
    """Lead data cannot inject markup into the confirmation's HTML."""
    lead = Lead(email="x@example.com", first_name='<script>alert(1)</script>', id=4)
    _, _, html = _parts(_mailer(tmp_path).compose(lead, "news", message_id="<c3@acme.example>", now=NOW).wire)
    assert "<script>" not in html and "&lt;script&gt;" in html


def test_a_workspace_template_overrides_the_wording(tmp_path: Path) -> None:
    """templates/optin_confirm.html, when present, is what the confirmation says."""
    mailer = _mailer(tmp_path)
    (tmp_path / "templates" / "optin_confirm.html").write_text(
        '<html><body><p>Bitte bestätigen: <a href="{{ confirm_url }}">{{ list_title }}</a></p></body></html>', encoding="utf-8"
    )
    _, text, html = _parts(mailer.compose(Lead(email="d@example.de", id=5), "news", message_id="<c4@acme.example>", now=NOW).wire)
    assert "Bitte bestätigen" in html and "/confirm/" in html and "Bitte" in text
