"""Tracked links in a message: click redirects, the open pixel, the honeypot, the unsubscribe footer.

Authors write plain links; the renderer makes them tracked:

- **Clicks.** Every `<a href>` whose value is, or renders to, an http(s) URL goes through the
  click redirect. The work is split so that a recipient costs one cheap call per link: once
  per template version, `wrap_links` wraps each such href value in a filter block,
  `href="{% filter mailer_click('pricing') %}https://…?id={{ lead.id }}{% endfilter %}"`;
  per message the filter receives the rendered value, reads its entities back
  (`&amp;` → `&`, so the URL signed is the one a browser would follow) and answers with the
  signed click link, escaped for the attribute. Links are numbered per message in the order
  they render. Not tracked: mailto:, tel:, `#anchors`, relative and other non-http(s) values,
  our own links (the unsubscribe link), and links marked `data-track="off"`. `data-tag="…"`
  names a link for scoring and rides in its token. Both attributes are author's notes and
  never reach the recipient.
- **Text part.** Every http(s) URL in it is replaced by its tracked form, a regular
  expression per message; a URL that is also a link of the HTML part reuses that link's
  number and tag.
- **Open pixel** before `</body>`, the **honeypot** (an empty, hidden link that no person can
  see or reach, so whatever follows it is a machine) just after `<body>`, and a default
  **unsubscribe footer** when the template shows no `{{ unsubscribe_url }}` of its own: added
  to each rendered message after CSS inlining, a few string searches.

Templates whose CSS is inlined per message (see `mailer.render`) get the same treatment on
the rendered HTML instead (`track_anchors`), with the same result.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from datetime import datetime

from markupsafe import Markup, escape

from mailer.errors import TemplateError
from mailer.links import MAX_TAG_BYTES, Links

CLICK_FILTER = "mailer_click"
UNSUBSCRIBE_VARIABLE = "unsubscribe_url"
FOOTER_TEXT = "Unsubscribe / 配信停止"

# The message being rendered, for the click filter. Kept out of the template context so that
# a template (sandboxed, written by whoever edits the templates folder) cannot reach the
# signer and make tokens of its own.
CURRENT: ContextVar[MessageLinks | None] = ContextVar("mailer_message_links", default=None)

# A start tag `<a …>`, attribute values quoted with either quote or not at all (HTML's
# "before attribute value" states); `<abbr>` and `<area>` are not links to rewrite.
_ANCHOR = re.compile(r"""<a(?=[\s/>])(?:[^>"']|"[^"]*"|'[^']*')*>""", re.IGNORECASE)
_ATTRIBUTE = re.compile(r"""([^\s"'<>/=]+)(?:\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'<>=`]+)))?""")
_SCHEME = re.compile(r"[a-z][a-z0-9+.-]*:")  # RFC 3986 3.1
# A URL in plain text ends at white space, at characters RFC 3986 2 never allows in one, or
# at Japanese punctuation, which follows a URL in a sentence with no space before it.
_TEXT_URL = re.compile(r"""https?://[^\s<>"'\[\]{}|\\^`\u3000-\u303f\uff01\uff08\uff09\uff0c\uff1a\uff1b\uff1f]+""", re.IGNORECASE)
_TRAILING = ".,;:!?*"  # sentence punctuation after a URL belongs to the sentence
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_BODY_OPEN = re.compile(r"""<body(?:[^>"']|"[^"]*"|'[^']*')*>""", re.IGNORECASE)
_BODY_CLOSE = re.compile(r"</body\s*>", re.IGNORECASE)


class MessageLinks:
    """The signed links of one message, made as the renderer asks for them."""

    def __init__(
        self, links: Links, *, message: int, sent_at: datetime, list_name: str = "", opens: bool = True, clicks: bool = True
    ) -> None:
        self.links = links
        self.message = message
        self.sent_at = sent_at
        self.opens = opens
        self.clicks = clicks
        self.unsubscribe_url = links.unsubscribe_url(message, list_name)
        base = links.base_url
        self._own = (f"{base}/c/", f"{base}/o/", f"{base}/u/", f"{base}/confirm/")
        self._count = 0
        self._first: dict[str, str] = {}  # URL → its first tracked link, for the text part

    def click(self, url: str, tag: str = "") -> str:
        """The tracked form of `url` as the message's next link."""
        self._count += 1
        tracked = self.links.click_url(self.message, self.sent_at, url=url, link=self._count, tag=tag)
        self._first.setdefault(url, tracked)
        return tracked

    def href(self, value: str, tag: str = "") -> str:
        """An href value as written in HTML (entities and all), tracked when it is http(s)."""
        if not self.clicks:
            return value
        url = html.unescape(value).strip()
        if (
            not url[:8].lower().startswith(("http://", "https://"))
            or url.startswith(self._own)
            or _CONTROL.search(url)
        ):
            return value
        return str(escape(self.click(url, tag)))

    def track_text(self, text: str, *, footer: bool) -> str:
        """The text part with its URLs tracked, and the unsubscribe footer when `footer`."""
        if self.clicks and "http" in text:
            text = _TEXT_URL.sub(self._text_url, text)
        if footer:
            text = f"{text.rstrip()}\n\n--\n{FOOTER_TEXT}: {self.unsubscribe_url}\n"
        return text

    def _text_url(self, match: re.Match[str]) -> str:
        url = match.group()
        trailing = ""
        while url and (url[-1] in _TRAILING or (url[-1] == ")" and url.count("(") < url.count(")"))):
            url, trailing = url[:-1], url[-1] + trailing
        if url.startswith(self._own) or url.endswith("://"):
            return match.group()
        tracked = self._first.get(url) or self.click(url)
        return tracked + trailing

    def decorate_html(self, document: str, *, footer: bool) -> str:
        """The rendered, inlined HTML with the honeypot, the footer and the open pixel added."""
        end = ""
        if footer:
            url = escape(self.unsubscribe_url)
            end += (
                '<p style="margin:16px 0;text-align:center;font-size:12px;line-height:1.5;color:#6b7385">'
                f'<a href="{url}" style="color:#6b7385">{FOOTER_TEXT}</a></p>'
            )
        if self.opens:
            src = escape(self.links.open_url(self.message, self.sent_at))
            end += f'<img src="{src}" width="1" height="1" alt="" style="display:block;width:1px;height:1px;border:0">'
        if end:
            at = document.rfind("</body>")
            if at < 0:
                closings = [match.start() for match in _BODY_CLOSE.finditer(document)]
                at = closings[-1] if closings else len(document)
            document = f"{document[:at]}{end}{document[at:]}"
        if self.clicks:
            trap = escape(self.links.honeypot_url(self.message, self.sent_at))
            # Empty, hidden from sight (Outlook needs mso-hide) and from screen readers and
            # the keyboard: no person can follow it.
            honeypot = (
                f'<a href="{trap}" aria-hidden="true" tabindex="-1" '
                'style="display:none;mso-hide:all;font-size:0;line-height:0;max-height:0;overflow:hidden"></a>'
            )
            body = _BODY_OPEN.search(document)
            at = body.end() if body is not None else 0
            document = f"{document[:at]}{honeypot}{document[at:]}"
        return document


def click_filter(value: str, tag: str = "") -> Markup:
    """The `mailer_click` filter: a rendered href value, tracked for the message being rendered."""
    if not isinstance(value, Markup):
        value = escape(value)  # used as `{{ x | mailer_click }}`: escape like any output
    links = CURRENT.get()
    if links is None or not links.clicks:
        return value
    return Markup(links.href(str(value), tag))


def track_anchors(document: str, links: MessageLinks | None) -> str:
    """Rendered HTML with its links tracked and the author's data-tag/data-track removed."""
    if links is None:
        return _edit_anchors(document, lambda value, tag: None)
    return _edit_anchors(document, links.href)


def wrap_links(protected: str, constructs: Sequence[tuple[str, str]], sentinel: re.Pattern[str], name: str) -> str:
    """A protected template (constructs replaced by sentinels, see `mailer.render`) with every
    href that is or may render to an http(s) URL wrapped in the click filter.

    Raises TemplateError for a tag longer than a click token carries, or one made by Jinja.
    """

    def wrap(value: str, tag: str) -> str | None:
        if tag:
            if sentinel.search(tag):
                raise TemplateError(f"data-tag {tag!r} is computed", file=name, hint='write the tag out, e.g. data-tag="pricing"')
            if len(tag.encode("utf-8")) > MAX_TAG_BYTES:
                raise TemplateError(
                    f"data-tag {tag!r} is longer than {MAX_TAG_BYTES} bytes", file=name, hint="use a short name, e.g. pricing"
                )
        stripped = value.strip()
        whole = sentinel.fullmatch(stripped)
        if whole is not None and _is_unsubscribe(constructs[int(whole.group(1))]):
            return None
        first = sentinel.search(stripped)
        prefix = html.unescape(stripped[: first.start()] if first else stripped).lstrip().lower()
        if first is None:
            if not prefix.startswith(("http://", "https://")):
                return None
        elif prefix.startswith("#") or (_SCHEME.match(prefix) and not prefix.startswith(("http:", "https:"))):
            return None
        return f"{{% filter {CLICK_FILTER}({_jinja_string(tag)}) %}}{value}{{% endfilter %}}"

    return _edit_anchors(protected, wrap)


def _is_unsubscribe(construct: tuple[str, str]) -> bool:
    kind, text = construct
    return kind == "variable" and text.strip("{}-+ \t\r\n") == UNSUBSCRIBE_VARIABLE


def _jinja_string(text: str) -> str:
    """`text` as a Jinja string literal, anything but plain ASCII as a \\u or \\U escape."""
    out = []
    for char in text:
        if (char.isascii() and char.isalnum()) or char in " _-.:/@+":
            out.append(char)
        elif ord(char) <= 0xFFFF:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(f"\\U{ord(char):08x}")
    return "'" + "".join(out) + "'"


def _edit_anchors(document: str, on_href: Callable[[str, str], str | None]) -> str:
    """`document` with each `<a>` tag's data-tag and data-track dropped and each href value
    replaced by `on_href(value as written, tag)`, unless that is None or the link says
    data-track="off"."""
    out: list[str] = []
    last = 0
    for anchor in _ANCHOR.finditer(document):
        tag_text = anchor.group()
        attributes = list(_ATTRIBUTE.finditer(tag_text, 2, len(tag_text) - 1))
        values = {m.group(1).lower(): _value(m) for m in reversed(attributes)}  # the first wins
        if "data-tag" not in values and "data-track" not in values and "href" not in values:
            continue
        tracked = values.get("data-track", "").strip().lower() != "off"
        link_tag = html.unescape(values.get("data-tag", "")).strip()
        edits: list[tuple[int, int, str]] = []
        for attribute in attributes:
            name = attribute.group(1).lower()
            if name in ("data-tag", "data-track"):
                start = attribute.start()
                while tag_text[start - 1].isspace():
                    start -= 1
                edits.append((start, attribute.end(), ""))
            elif name == "href" and tracked:
                group = next((g for g in (2, 3, 4) if attribute.group(g) is not None), None)
                if group is None:
                    continue
                new = on_href(attribute.group(group), link_tag)
                if new is not None:
                    edits.append((attribute.start(group), attribute.end(group), new if group != 4 else f'"{new}"'))
        if not edits:
            continue
        pieces = []
        position = 0
        for start, end, replacement in edits:
            pieces.append(tag_text[position:start])
            pieces.append(replacement)
            position = end
        pieces.append(tag_text[position:])
        out.append(document[last : anchor.start()])
        out.append("".join(pieces))
        last = anchor.end()
    if not out:
        return document
    out.append(document[last:])
    return "".join(out)


def _value(attribute: re.Match[str]) -> str:
    for group in (2, 3, 4):
        value = attribute.group(group)
        if value is not None:
            return value
    return ""
