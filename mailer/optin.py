"""The double opt-in confirmation email: one per pending subscription, sent like any message.

`POST /subscribe` to a list with `double_opt_in = true` stores the lead as a pending member
and queues a message row for the pseudo-scenario `@optin` whose step id is the list's name.
The daemon claims, sends, retries and bounces it like every other message; this module
builds it. It is transactional: no open pixel, no click tracking, no List-Unsubscribe (the
recipient has not subscribed yet; ignoring it is how to say no).

A workspace may override the wording with `templates/optin_confirm.html` and
`templates/optin_confirm.txt` (Jinja, sandboxed, seeing `lead`, `list_title` and
`confirm_url`); otherwise the built-in English and Japanese texts below are used, chosen by
the lead's `language` attribute.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2

from mailer.compose import Composed
from mailer.config import Config
from mailer.leads import Lead
from mailer.links import Links
from mailer.mime import Mailbox, MessageLayout
from mailer.render import RenderedParts, Renderer, TemplateEnvironment, render_error

HTML_TEMPLATE, TEXT_TEMPLATE = "optin_confirm.html", "optin_confirm.txt"

_SUBJECTS = {
    "en": "Please confirm your subscription to {{ list_title }}",
    "ja": "【確認】{{ list_title }} の配信登録を完了してください",
}
_TEXTS = {
    "en": (
        "Hello{% if lead.first_name %} {{ lead.first_name }}{% endif %},\n\n"
        "Someone, probably you, asked to receive {{ list_title }} at {{ lead.email }}.\n"
        "To confirm, open this link:\n\n{{ confirm_url }}\n\n"
        "If it was not you, ignore this email: nothing will be sent without your confirmation.\n"
    ),
    "ja": (
        "{% if lead.last_name %}{{ lead.last_name }} 様{% endif %}\n\n"
        "{{ lead.email }} で「{{ list_title }}」の配信登録のお申し込みがありました。\n"
        "以下のリンクを開いて登録を完了してください。\n\n{{ confirm_url }}\n\n"
        "お心当たりがない場合は、このメールを破棄してください。確認がない限り配信は行われません。\n"
    ),
}
_HTML = """<!DOCTYPE html><html><body style="font-family:sans-serif;line-height:1.5">
{%- for paragraph in body.split("\\n\\n") %}
{%- if paragraph.strip() == confirm_url %}
<p><a href="{{ confirm_url }}" style="display:inline-block;padding:10px 18px;background:#1a56db;color:#ffffff;text-decoration:none;border-radius:4px">{{ button }}</a></p>
{%- else %}
<p>{{ paragraph | replace("\\n", " ") }}</p>
{%- endif %}
{%- endfor %}
</body></html>"""
_BUTTONS = {"en": "Confirm my subscription", "ja": "登録を完了する"}


class OptInMailer:
    """Builds confirmation messages; the compiled templates are made once."""

    def __init__(self, *, config: Config, links: Links, renderer: Renderer) -> None:
        self.config = config
        self.links = links
        self.renderer = renderer
        env = TemplateEnvironment(autoescape=False, undefined=jinja2.StrictUndefined)
        html_env = TemplateEnvironment(autoescape=True, undefined=jinja2.StrictUndefined)
        self._subjects = {lang: env.from_string(text) for lang, text in _SUBJECTS.items()}
        self._texts = {lang: env.from_string(text) for lang, text in _TEXTS.items()}
        self._html = html_env.from_string(_HTML)
        self._layouts: dict[str, MessageLayout] = {}

    def compose(self, lead: Lead, list_name: str, *, message_id: str, now: datetime) -> Composed:
        """The confirmation email for `lead`'s pending subscription to `list_name`."""
        list_config = self.config.list_config(list_name)
        if lead.id is None:
            raise ValueError("a stored lead is needed to sign its confirmation link")
        confirm_url = self.links.confirm_url(lead.id, list_name, expires_at=now + list_config.confirm_within)
        context = {"lead": lead.template_context(), "list_title": list_config.title, "confirm_url": confirm_url}
        parts = self._render(context, language=str(lead.attributes.get("language", "en")))
        layout = self._layout(list_config.sender)
        to = Mailbox(lead.email, lead.display_name)
        wire = layout.assemble(to=to, subject=parts.subject, message_id=message_id, date=now, text=parts.text, html=parts.html)
        return Composed(wire=wire, parts=parts, smtputf8=layout.needs_smtputf8 or to.needs_smtputf8)

    def _render(self, context: dict[str, Any], *, language: str) -> RenderedParts:
        if (Path(self.renderer.templates_dir) / HTML_TEMPLATE).is_file():
            text_template = TEXT_TEMPLATE if (Path(self.renderer.templates_dir) / TEXT_TEMPLATE).is_file() else None
            subject = _SUBJECTS["ja" if language == "ja" else "en"]
            compiled = self.renderer.step(subject=subject, template=HTML_TEMPLATE, text_template=text_template)
            try:
                return compiled.render(context)
            except Exception as error:  # the workspace's own template: report its line
                raise render_error(error, template=HTML_TEMPLATE) from None
        lang = "ja" if language == "ja" else "en"
        text = self._texts[lang].render(context)
        html = self._html.render(body=text.strip(), button=_BUTTONS[lang], confirm_url=context["confirm_url"])
        return RenderedParts(subject=self._subjects[lang].render(context).strip(), html=html, text=text)

    def _layout(self, sender: str) -> MessageLayout:
        layout = self._layouts.get(sender)
        if layout is None:
            identity = self.config.identities[sender]
            reply_to = Mailbox(identity.reply_to_address, identity.reply_to_name) if identity.reply_to else None
            layout = MessageLayout(sender=Mailbox(identity.from_address, identity.from_name), reply_to=reply_to)
            self._layouts[sender] = layout
        return layout
