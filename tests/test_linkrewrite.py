"""Tracked links in composed messages: clicks, pixel, honeypot, unsubscribe link and headers."""

from __future__ import annotations

import email
import email.policy
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from email.message import EmailMessage
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st
from lxml import html as lxml_html

from mailer.compose import Composer
from mailer.config import BouncesConfig, Config, IdentityConfig, TrackingConfig
from mailer.errors import TemplateError
from mailer.leads import Lead
from mailer.links import ClickToken, Links
from mailer.render import Renderer
from mailer.scenario import Entry, Reentry, Scenario, Step
from mailer.tokens import Signer

BASE = "https://t.acme.example"
LINKS = Links(Signer([b"k" * 40]), BASE)
SENT = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)
ROW = 4242
LEAD = Lead(email="ann@example.com", first_name="Ann", company="Acme", attributes={"code": "a b&c", "ref": 17})
PAGE = "<html><head><style>a {{ color: red; }}</style></head><body><p>Hi {{{{ lead.first_name }}}}</p>{body}</body></html>"


@dataclass
class Sent:
    message: EmailMessage
    html: str
    text: str

    def anchors(self) -> list[lxml_html.HtmlElement]:
        return list(lxml_html.document_fromstring(self.html).iter("a"))

    def clicks(self) -> list[ClickToken]:
        """Every click link of the HTML part, read back; fails on one that does not verify."""
        return [read_click(a.get("href")) for a in self.anchors() if a.get("href", "").startswith(f"{BASE}/c/") and "?u=" in a.get("href")]


def read_click(link: str) -> ClickToken:
    parts = urlsplit(link)
    token = parts.path.rsplit("/", 1)[1]
    click = LINKS.read_click(token, parse_qs(parts.query)["u"][0])
    assert click is not None, link
    return click


def send(
    tmp_path: Path,
    html: str,
    *,
    text: str | None = None,
    lead: Lead = LEAD,
    config: Config | None = None,
    links: Links | None = LINKS,
    list_name: str | None = "news",
) -> Sent:
    """Compose one message of a one-step scenario from `html` (and `text`) templates."""
    folder = tmp_path / "templates"
    folder.mkdir(exist_ok=True)
    (folder / "step.html").write_text(html, encoding="utf-8")
    if text is not None:
        (folder / "step.txt").write_text(text, encoding="utf-8")
    step = Step(
        id="one", wait=timedelta(0), subject="Hello", template="step.html", text_template="step.txt" if text is not None else None,
        send_window=None, condition=None, line=1,
    )
    scenario = Scenario(
        name="s", file="s.yaml", sender="default", entry=Entry(list_name=list_name, where=None), steps=(step,),
        exit_when=None, reentry=Reentry(), timezone="UTC", send_window=None,
    )
    composer = Composer(Renderer(folder), {"default": IdentityConfig(from_="Acme <news@acme.example>")}, links=links, config=config)
    wire = composer.compose(scenario, step, lead, message_id="<1@acme.example>", now=SENT, message_row=ROW).wire
    message = email.message_from_bytes(wire, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    html_part, text_part = message.get_body(("html",)), message.get_body(("plain",))
    assert html_part is not None and text_part is not None
    return Sent(message, str(html_part.get_content()), str(text_part.get_content()))


def test_every_http_link_is_tracked_and_reads_back_to_its_url_and_tag(tmp_path: Path) -> None:
    """Each http(s) link becomes a click link whose token gives back its URL, tag and number in document order."""
    sent = send(tmp_path, PAGE.format(body=(
        '<a href="https://acme.example/pricing" data-tag="pricing">Prices</a>'
        '<a href="http://acme.example/blog">Blog</a>'
        '<A HREF=https://acme.example/upper>Upper</A>'
    )))
    clicks = sent.clicks()
    assert [(c.url, c.tag, c.link) for c in clicks] == [
        ("https://acme.example/pricing", "pricing", 1),
        ("http://acme.example/blog", "", 2),
        ("https://acme.example/upper", "", 3),
    ]
    assert all(c.message == ROW and c.sent_at == SENT for c in clicks)
    assert "data-tag" not in sent.html


def test_links_that_must_not_be_tracked_are_left_as_written(tmp_path: Path) -> None:
    """mailto, tel, #anchors, relative links, the unsubscribe link and data-track="off" links keep their href; data-track is removed."""
    sent = send(tmp_path, PAGE.format(body=(
        '<a href="mailto:sales@acme.example">Mail</a><a href="tel:+81312345678">Call</a><a href="#top">Top</a>'
        '<a href="/relative">Rel</a><a href="{{ unsubscribe_url }}">Leave</a>'
        '<a href="https://acme.example/private" data-track="off">Private</a>'
        '<a href="mailto:{{ lead.email }}">Me</a>'
    )))
    hrefs = [a.get("href") for a in sent.anchors() if a.text]
    unsubscribe = LINKS.unsubscribe_url(ROW, "news")
    assert hrefs == [
        "mailto:sales@acme.example", "tel:+81312345678", "#top", "/relative", unsubscribe,
        "https://acme.example/private", "mailto:ann@example.com",
    ]
    assert sent.clicks() == []
    assert "data-track" not in sent.html


def test_a_personalized_href_is_tracked_with_the_personalized_url(tmp_path: Path) -> None:
    """`https://x/?id={{ lead.id }}` is signed as the URL this lead would have followed."""
    sent = send(tmp_path, PAGE.format(body='<a href="https://acme.example/?id={{ lead.ref }}&amp;c={{ lead.code | urlencode }}">Go</a>'))
    [click] = sent.clicks()
    assert click.url == "https://acme.example/?id=17&c=a%20b%26c"


def test_entities_in_a_url_are_signed_unescaped_and_written_escaped(tmp_path: Path) -> None:
    """`&amp;` in an href is the URL's `&`: the token signs `a=1&b=2`, and the new href is valid HTML."""
    sent = send(tmp_path, PAGE.format(body='<a href="https://acme.example/?a=1&amp;b=2">Go</a>'))
    [click] = sent.clicks()
    assert click.url == "https://acme.example/?a=1&b=2"
    raw = re.search(r'<a href="([^"]*)"[^>]*>Go</a>', sent.html)
    assert raw is not None and "&" not in raw.group(1).replace("&amp;", "")


def test_links_in_a_loop_are_numbered_apart(tmp_path: Path) -> None:
    """A link written once in a loop is a new link, with its own number, on every pass."""
    sent = send(tmp_path, PAGE.format(body='{% for n in [1, 2, 3] %}<a href="https://acme.example/{{ n }}">{{ n }}</a>{% endfor %}'))
    assert [(c.link, c.url) for c in sent.clicks()] == [(n, f"https://acme.example/{n}") for n in (1, 2, 3)]


def test_the_open_pixel_is_once_just_before_the_end_of_the_body(tmp_path: Path) -> None:
    """One 1x1 image with the open link, the last thing in <body>; its token names the message and send time."""
    sent = send(tmp_path, PAGE.format(body="<p>bye</p>"))
    images = list(lxml_html.document_fromstring(sent.html).iter("img"))
    assert len(images) == 1
    pixel = images[0]
    assert (pixel.get("width"), pixel.get("height"), pixel.get("alt")) == ("1", "1", "")
    assert pixel.getparent().tag == "body" and pixel.getnext() is None
    opened = LINKS.read_open(pixel.get("src").rsplit("/", 1)[1])
    assert opened is not None and (opened.message, opened.sent_at) == (ROW, SENT)
    assert re.search(r'<img src="[^"]+/o/[^"]+"[^>]*></body>', sent.html)


def test_the_honeypot_is_first_in_the_body_and_hidden_from_people(tmp_path: Path) -> None:
    """An empty link at the start of <body>: not displayed, not read aloud, not reachable by keyboard; its token is a honeypot token."""
    sent = send(tmp_path, PAGE.format(body='<a href="https://acme.example/">Home</a>'))
    body = lxml_html.document_fromstring(sent.html).find("body")
    trap = body[0]
    assert trap.tag == "a" and trap.text is None and len(trap) == 0
    assert "display:none" in trap.get("style") and trap.get("aria-hidden") == "true" and trap.get("tabindex") == "-1"
    token = LINKS.read_click(trap.get("href").rsplit("/", 1)[1], None)
    assert token is not None and token.honeypot and token.message == ROW
    assert trap.get("href") not in sent.text


def test_list_unsubscribe_headers_with_a_bounce_domain(tmp_path: Path) -> None:
    """List-Unsubscribe holds the HTTPS link and unsubscribe+<same token>@bounce domain; List-Unsubscribe-Post is RFC 8058's one-click."""
    config = Config(bounces=BouncesConfig(domain="bounce.acme.example"), tracking=TrackingConfig(unsubscribe_mailto="u@acme.example"))
    sent = send(tmp_path, PAGE.format(body=""), config=config)
    url = LINKS.unsubscribe_url(ROW, "news")
    token = url.rsplit("/", 1)[1]
    assert str(sent.message["List-Unsubscribe"]) == f"<{url}>, <mailto:unsubscribe+{token}@bounce.acme.example?subject=unsubscribe>"
    assert str(sent.message["List-Unsubscribe-Post"]) == "List-Unsubscribe=One-Click"
    read = LINKS.read_unsubscribe(token)
    assert read is not None and (read.message, read.list_name) == (ROW, "news")


def test_list_unsubscribe_falls_back_to_the_configured_mailto_then_to_the_link_alone(tmp_path: Path) -> None:
    """Without a bounce domain the mailto is [tracking] unsubscribe_mailto; without either, only the link."""
    url = LINKS.unsubscribe_url(ROW, "")
    configured = send(tmp_path, PAGE.format(body=""), config=Config(tracking=TrackingConfig(unsubscribe_mailto="u@acme.example")), list_name=None)
    assert str(configured.message["List-Unsubscribe"]) == f"<{url}>, <mailto:u@acme.example?subject=unsubscribe>"
    bare = send(tmp_path, PAGE.format(body=""), list_name=None)
    assert str(bare.message["List-Unsubscribe"]) == f"<{url}>"
    assert len(bare.message.get_all("List-Unsubscribe-Post") or []) == 1


def test_one_click_is_only_offered_over_https(tmp_path: Path) -> None:
    """RFC 8058 3.1 needs an HTTPS URI: a plain-http base gets List-Unsubscribe but no List-Unsubscribe-Post."""
    sent = send(tmp_path, PAGE.format(body=""), links=Links(Signer([b"k" * 40]), "http://127.0.0.1:8080"))
    assert str(sent.message["List-Unsubscribe"]).startswith("<http://127.0.0.1:8080/u/")
    assert sent.message["List-Unsubscribe-Post"] is None


def test_a_template_without_an_unsubscribe_link_gets_the_default_footer(tmp_path: Path) -> None:
    """No `{{ unsubscribe_url }}` in the template: a visible bilingual unsubscribe link in both parts."""
    sent = send(tmp_path, PAGE.format(body=""))
    url = LINKS.unsubscribe_url(ROW, "news")
    [footer] = [a for a in sent.anchors() if a.get("href") == url]
    assert footer.text == "Unsubscribe / 配信停止"
    assert sent.text.rstrip().endswith(f"Unsubscribe / 配信停止: {url}")


def test_a_template_with_its_own_unsubscribe_link_gets_no_footer(tmp_path: Path) -> None:
    """`{{ unsubscribe_url }}` in HTML and text: exactly the author's links, no default footer."""
    sent = send(
        tmp_path,
        PAGE.format(body='<a href="{{ unsubscribe_url }}">stop</a>'),
        text="Hi {{ lead.first_name }}\nStop: {{ unsubscribe_url }}\n",
    )
    url = LINKS.unsubscribe_url(ROW, "news")
    assert [a.text for a in sent.anchors() if a.get("href") == url] == ["stop"]
    assert sent.text.count(url) == 1 and "配信停止" not in sent.text


def test_text_part_urls_are_tracked_and_share_the_html_link_numbers(tmp_path: Path) -> None:
    """Hand-written text: its URLs become click links; one also in the HTML keeps that link's number and tag."""
    sent = send(
        tmp_path,
        PAGE.format(body='<a href="https://acme.example/a" data-tag="pricing">A</a><a href="https://acme.example/b?x=1&amp;y=2">B</a>'),
        text="B: https://acme.example/b?x=1&y=2.\nC (https://acme.example/c)\nD: https://acme.example/a\n",
    )
    links = [link.rstrip(".)") for link in re.findall(r"https://t\.acme\.example/c/\S+", sent.text)]
    assert [(c.url, c.link, c.tag) for c in map(read_click, links)] == [
        ("https://acme.example/b?x=1&y=2", 2, ""),
        ("https://acme.example/c", 3, ""),
        ("https://acme.example/a", 1, "pricing"),
    ]
    assert "acme.example/b?x=1&y=2." not in sent.text and re.search(r"https://t\S+\.\r?\n", sent.text)


def test_a_derived_text_part_has_tracked_links_and_no_honeypot(tmp_path: Path) -> None:
    """Without a .txt template, the text part's links are tracked too, and the hidden trap never appears in it."""
    sent = send(tmp_path, PAGE.format(body='<a href="https://acme.example/a">Read</a>'))
    [in_text] = re.findall(r"https://t\.acme\.example/c/[^\s)]+", sent.text)
    assert read_click(in_text).url == "https://acme.example/a"
    assert read_click(in_text).link == 1


@pytest.mark.parametrize(
    "tracking",
    [TrackingConfig(enabled=False), TrackingConfig(clicks=False, opens=False)],
    ids=["disabled", "opens-and-clicks-off"],
)
def test_tracking_off_means_no_rewriting_and_no_pixel(tmp_path: Path, tracking: TrackingConfig) -> None:
    """With tracking off, links, text and body are as written: no click links, pixel or honeypot; unsubscribe stays."""
    sent = send(tmp_path, PAGE.format(body='<a href="https://acme.example/a" data-tag="x">A</a>'), config=Config(tracking=tracking))
    assert [a.get("href") for a in sent.anchors()][0] == "https://acme.example/a"
    assert f"{BASE}/c/" not in sent.html and f"{BASE}/o/" not in sent.html and "<img" not in sent.html
    assert "https://acme.example/a" in sent.text and f"{BASE}/c/" not in sent.text
    assert "data-tag" not in sent.html
    assert sent.message["List-Unsubscribe"] is not None


def test_opens_alone_can_be_turned_off(tmp_path: Path) -> None:
    """opens = false drops the pixel and keeps click tracking."""
    sent = send(tmp_path, PAGE.format(body='<a href="https://acme.example/a">A</a>'), config=Config(tracking=TrackingConfig(opens=False)))
    assert "<img" not in sent.html and len(sent.clicks()) == 1


HOSTILE = st.lists(st.sampled_from([*"\"'<>&=/?# ab`", "&amp;", "&#34;", "\u3042", "javascript:", "https://", "onclick="]), max_size=12).map("".join)


@given(value=HOSTILE)
def test_a_hostile_lead_value_cannot_leave_the_href(tmp_path_factory: pytest.TempPathFactory, value: str) -> None:
    """Whatever a lead's field holds, the link keeps exactly its href and class, and signs the URL with that value in it."""
    lead = Lead(email="eve@example.com", first_name="Eve", attributes={"code": value})
    sent = send(tmp_path_factory.mktemp("t"), PAGE.format(
        body='<a class="c" href="https://acme.example/?v={{ lead.code }}">Go</a><a class="c" href="{{ lead.code }}">Raw</a>'
    ), lead=lead)
    anchors = [a for a in sent.anchors() if a.get("class") == "c"]
    assert [sorted(a.keys()) for a in anchors] == [["class", "href", "style"]] * 2
    assert [a.text for a in anchors] == ["Go", "Raw"]
    [first, *rest] = [a.get("href") for a in anchors]
    assert read_click(first).url == f"https://acme.example/?v={value}".strip()
    if rest[0].startswith(f"{BASE}/c/"):
        assert read_click(rest[0]).url == value.strip()
    else:
        assert rest[0] == value


def test_a_template_inlined_per_message_is_tracked_the_same_way(tmp_path: Path) -> None:
    """A template that falls back to per-message CSS inlining still gets tracked links, the pixel, the honeypot and the footer."""
    html = (
        '<html><head><style>.a { color: red; }</style></head><body>'
        '<p {% if lead.first_name %}class="a"{% endif %}>x</p>'
        '<a href="https://acme.example/?id={{ lead.ref }}" data-tag="t">Go</a><a href="mailto:x@acme.example">Mail</a></body></html>'
    )
    folder = tmp_path / "templates"
    sent = send(tmp_path, html)
    assert Renderer(folder).step(subject="s", template="step.html", text_template=None).inline_each is not None
    [click] = sent.clicks()
    assert (click.url, click.tag, click.link) == ("https://acme.example/?id=17", "t", 1)
    assert 'style="color:red"' in sent.html and "data-tag" not in sent.html
    assert sent.html.count(f"{BASE}/o/") == 1 and "Unsubscribe / 配信停止" in sent.html
    assert lxml_html.document_fromstring(sent.html).find("body")[0].get("aria-hidden") == "true"
    assert f"{BASE}/c/" in sent.text


def test_a_tag_longer_than_a_token_carries_is_a_template_error(tmp_path: Path) -> None:
    """data-tag over 40 bytes is refused when the template is compiled, naming the template."""
    (tmp_path / "step.html").write_text('<a href="https://acme.example/" data-tag="' + "料" * 14 + '">x</a>', encoding="utf-8")
    with pytest.raises(TemplateError, match="longer than 40 bytes") as caught:
        Renderer(tmp_path).step(subject="s", template="step.html", text_template=None)
    assert caught.value.file == "step.html"


def test_a_computed_tag_is_a_template_error(tmp_path: Path) -> None:
    """A data-tag made by Jinja is refused: tags are names the author writes out."""
    (tmp_path / "step.html").write_text('<a href="https://acme.example/" data-tag="{{ lead.tier }}">x</a>', encoding="utf-8")
    with pytest.raises(TemplateError, match="computed"):
        Renderer(tmp_path).step(subject="s", template="step.html", text_template=None)


def test_a_unicode_tag_reaches_the_token(tmp_path: Path) -> None:
    """A tag in Japanese (or with quotes) is carried exactly, through the compiled template."""
    sent = send(tmp_path, PAGE.format(body='<a href="https://acme.example/" data-tag="料金&quot;\'😀">x</a>'))
    assert [c.tag for c in sent.clicks()] == ["料金\"'😀"]


def test_without_links_a_message_is_untracked_and_has_no_unsubscribe_header(tmp_path: Path) -> None:
    """A Composer without Links (a rendering test) changes nothing and adds no List-Unsubscribe."""
    sent = send(tmp_path, PAGE.format(body='<a href="https://acme.example/a" data-tag="x">A</a>'), links=None)
    assert [a.get("href") for a in sent.anchors()] == ["https://acme.example/a"]
    assert sent.message["List-Unsubscribe"] is None and "<img" not in sent.html


def test_every_link_of_every_shipped_step_is_tracked(tmp_path: Path) -> None:
    """In each shipped step's message, every http(s) URL of both parts is one of our links, and each click link verifies."""
    from mailer.examples_data import examples
    from mailer.scenario import load_scenarios

    found = examples()
    scenarios = load_scenarios(found.scenarios, templates_dir=found.templates)[0]
    composer = Composer(Renderer(found.templates), {"default": IdentityConfig(from_="Acme <news@acme.example>")}, links=LINKS)
    for scenario, step in ((scenario, step) for scenario in scenarios for step in scenario.steps):
        for lead in (LEAD, Lead(email="taro@example.jp", first_name="太郎", last_name="山田", attributes={"language": "ja"})):
            wire = composer.compose(scenario, step, lead, message_id="<1@acme.example>", now=SENT, message_row=ROW).wire
            message = email.message_from_bytes(wire, policy=email.policy.default)
            assert isinstance(message, EmailMessage)
            parts = [str(part.get_content()) for part in message.walk() if part.get_content_maintype() == "text"]
            for part in parts:
                urls = re.findall(r"""https?://[^\s"'<>)\]]+""", part)
                assert urls and all(url.startswith(BASE) for url in urls), (step.id, urls)
            sent = Sent(message, parts[1], parts[0])
            assert len(sent.clicks()) >= 2 and all(c.url.startswith("https://") for c in sent.clicks())
            assert sent.html.count(LINKS.unsubscribe_url(ROW, scenario.entry.list_name or "")) == 1, "the layout's own link, no default footer"


def test_a_url_in_japanese_text_ends_at_the_japanese_punctuation(tmp_path: Path) -> None:
    """「…https://x/a。」: the 。 and full-width brackets stay in the sentence, outside the tracked URL."""
    sent = send(tmp_path, PAGE.format(body=""), text="詳しくはこちら：https://acme.example/東京。資料（https://acme.example/pdf）をどうぞ\n")
    links = re.findall(r"https://t\.acme\.example/c/[^\s。）]+", sent.text)
    assert [read_click(link).url for link in links] == ["https://acme.example/東京", "https://acme.example/pdf"]
    assert "。資料（" in sent.text and "）をどうぞ" in sent.text
