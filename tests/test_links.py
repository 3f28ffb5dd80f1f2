"""Signed links: each kind reads back what it carries, and nothing else reads at all."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from urllib.parse import parse_qs, unquote, urlsplit

from hypothesis import given
from hypothesis import strategies as st

from mailer.links import Links
from mailer.tokens import Signer

SENT = datetime(2026, 11, 2, 9, 30, tzinfo=timezone.utc)
LINKS = Links(Signer([b"k" * 40]), "https://t.acme.example/")


def _click_parts(link: str) -> tuple[str, str]:
    parts = urlsplit(link)
    return parts.path.rsplit("/", 1)[1], parse_qs(parts.query, keep_blank_values=True)["u"][0]


@given(st.integers(min_value=1, max_value=2**40), st.text(st.characters(blacklist_categories=("Cs",)), max_size=300), st.integers(min_value=1, max_value=500), st.text(st.characters(blacklist_categories=("Cs",)), max_size=10))
def test_a_click_link_reads_back_its_message_url_and_tag(message: int, url: str, link: int, tag: str) -> None:
    """A click token gives back the message, send time, link number, tag and URL it was made with."""
    token, carried = _click_parts(LINKS.click_url(message, SENT, url=url, link=link, tag=tag))
    assert carried == url
    click = LINKS.read_click(token, carried)
    assert click is not None
    assert (click.message, click.sent_at, click.link, click.tag, click.url) == (message, SENT, link, tag, url)


def test_a_swapped_click_url_is_refused() -> None:
    """A click token does not verify with any URL but the one it was signed for."""
    token, url = _click_parts(LINKS.click_url(7, SENT, url="https://acme.example/pricing", link=1))
    assert LINKS.read_click(token, url) is not None
    assert LINKS.read_click(token, "https://evil.example/") is None
    assert LINKS.read_click(token, None) is None  # nor as a honeypot


def test_each_kind_of_token_is_refused_as_another_kind() -> None:
    """An open token is no click, unsubscribe or confirm token, and so on."""
    open_token = LINKS.open_url(5, SENT).rsplit("/", 1)[1]
    unsubscribe = LINKS.unsubscribe_url(5, "news").rsplit("/", 1)[1]
    assert LINKS.read_open(open_token) == LINKS.read_open(open_token.upper())
    assert LINKS.read_open(open_token) is not None
    assert LINKS.read_click(open_token, None) is None
    assert LINKS.read_unsubscribe(open_token) is None
    assert LINKS.read_open(unsubscribe) is None
    assert LINKS.read_confirm(unsubscribe, now=SENT) is None


def test_the_honeypot_reads_as_link_zero() -> None:
    """The hidden link is recognised as the honeypot of its message."""
    token = LINKS.honeypot_url(9, SENT).rsplit("/", 1)[1]
    click = LINKS.read_click(token, None)
    assert click is not None and click.honeypot and click.message == 9


def test_a_confirm_link_expires() -> None:
    """A confirmation link works until its expiry and not a second after."""
    expires = SENT + timedelta(days=7)
    token = LINKS.confirm_url(42, "news", expires_at=expires).rsplit("/", 1)[1]
    confirmed = LINKS.read_confirm(token, now=expires)
    assert confirmed is not None and (confirmed.lead_id, confirmed.list_name) == (42, "news")
    assert LINKS.read_confirm(token, now=expires + timedelta(seconds=1)) is None


def test_unsubscribe_link_names_its_list_and_a_foreign_key_reads_nothing() -> None:
    """The unsubscribe token carries its list; links signed under another secret read as nothing."""
    token = LINKS.unsubscribe_url(3, "ウェビナー").rsplit("/", 1)[1]
    read = LINKS.read_unsubscribe(token)
    assert read is not None and (read.message, read.list_name) == (3, "ウェビナー")
    foreign = Links(Signer([b"x" * 40]), "https://t.acme.example")
    assert foreign.read_unsubscribe(token) is None


def test_links_are_urls_under_the_base() -> None:
    """Every link starts with the configured base, with one slash, and its query is URL-encoded."""
    link = LINKS.click_url(1, SENT, url="https://a.example/?q=1&r=ü", link=2)
    assert link.startswith("https://t.acme.example/c/")
    assert unquote(link.split("?u=", 1)[1]) == "https://a.example/?q=1&r=ü"
    assert " " not in link and "&" not in link.split("?", 1)[1]
