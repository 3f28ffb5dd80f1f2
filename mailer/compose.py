"""One step for one lead, from templates to wire bytes: the per-recipient hot path.

Everything constant per step (compiled templates with CSS already inlined and links already
wrapped for tracking, the From and MIME skeleton) is prepared once and cached; per recipient
only the templates run, the message's own signed links are made, and the message is
assembled.

Every message carries its unsubscribe link three ways: `{{ unsubscribe_url }}` for the
template (or a default footer when the template has none), and the `List-Unsubscribe`
header (RFC 2369 3.2) with the HTTPS link and a mailto, plus `List-Unsubscribe-Post` for
one-click unsubscription (RFC 8058 3.1).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from mailer.config import Config, IdentityConfig
from mailer.leads import Lead
from mailer.linkrewrite import MessageLinks
from mailer.links import Links
from mailer.mime import Mailbox, MessageLayout, wire_address
from mailer.render import RenderedParts, Renderer, render_error
from mailer.scenario import Scenario, Step

# RFC 5321 4.5.3.1.1: "The maximum total length of a user name or other local-part is 64
# octets."
_MAX_LOCAL_PART = 64
# RFC 8058 3.1: the header "MUST contain the single key/value pair", and only together with
# an HTTPS URI in List-Unsubscribe.
ONE_CLICK = ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click")


@dataclass(frozen=True)
class Composed:
    wire: bytes
    parts: RenderedParts
    smtputf8: bool


class Composer:
    """Composes messages; with `links`, every message is tracked and has its unsubscribe links.

    `config` gives the tracking switches ([tracking] enabled, opens, clicks) and where a
    mailto unsubscription goes ([bounces] domain, else [tracking] unsubscribe_mailto).
    """

    def __init__(
        self,
        renderer: Renderer,
        identities: dict[str, IdentityConfig],
        *,
        links: Links | None = None,
        config: Config | None = None,
    ) -> None:
        self.renderer = renderer
        self.identities = identities
        self.links = links
        config = config or Config()
        tracking = config.tracking
        self.opens = tracking.enabled and tracking.opens
        self.clicks = tracking.enabled and tracking.clicks
        self._mailto_domain = wire_address(f"unsubscribe@{config.bounces.domain}").partition("@")[2] if config.bounces.domain else ""
        self._mailto = ""
        if not self._mailto_domain and tracking.unsubscribe_mailto:
            address = wire_address(tracking.unsubscribe_mailto, header="List-Unsubscribe")
            self._mailto = f"<mailto:{address}?subject=unsubscribe>" if address.isascii() else ""
        self._layouts: dict[tuple[str, str], MessageLayout] = {}

    def forget(self) -> None:
        """Drop cached layouts (after scenarios or identities were reloaded)."""
        self._layouts.clear()

    def compose(
        self, scenario: Scenario, step: Step, lead: Lead, *, message_id: str, now: datetime, message_row: int
    ) -> Composed:
        """Render and assemble message `message_row` (messages.id, which its links name), sent
        `now`; raises TemplateError or HeaderInjectionError for this lead."""
        compiled = self.renderer.step(subject=step.subject, template=step.template, text_template=step.text_template)
        links: MessageLinks | None = None
        headers: tuple[tuple[str, str], ...] = ()
        if self.links is not None:
            links = MessageLinks(
                self.links,
                message=message_row,
                sent_at=now,
                list_name=scenario.entry.list_name or "",
                opens=self.opens,
                clicks=self.clicks,
            )
            headers = (("List-Unsubscribe", self.list_unsubscribe(links.unsubscribe_url)),)
        context = context_for(lead, scenario, step, unsubscribe_url=links.unsubscribe_url if links else "")
        try:
            parts = compiled.render(context, links)
        except Exception as error:  # a template may raise anything; it must not stop the loop
            raise render_error(error, template=step.template) from None
        layout = self.layout(scenario, step)
        to = Mailbox(lead.email, lead.display_name)
        wire = layout.assemble(
            to=to,
            subject=parts.subject,
            message_id=message_id,
            date=now,
            text=parts.text,
            html=parts.html,
            headers=headers,
        )
        return Composed(wire=wire, parts=parts, smtputf8=layout.needs_smtputf8 or to.needs_smtputf8)

    def list_unsubscribe(self, unsubscribe_url: str) -> str:
        """The List-Unsubscribe value: the link, then a mailto carrying the same token.

        RFC 2369 3.2 lists the URIs in angle brackets, most preferred first. The mailto goes
        to unsubscribe+<token>@<bounce domain>, read by the daemon's inbound listener, else
        to the configured address; none when neither is set, or when the local part would
        pass 64 octets.
        """
        targets = f"<{unsubscribe_url}>"
        if self._mailto_domain:
            local_part = f"unsubscribe+{unsubscribe_url.rpartition('/')[2]}"
            if len(local_part) <= _MAX_LOCAL_PART:
                targets += f", <mailto:{local_part}@{self._mailto_domain}?subject=unsubscribe>"
        elif self._mailto:
            targets += f", {self._mailto}"
        return targets

    def layout(self, scenario: Scenario, step: Step) -> MessageLayout:
        key = (scenario.name, step.id)
        layout = self._layouts.get(key)
        if layout is None:
            identity = self.identities[scenario.sender]
            reply_to = Mailbox(identity.reply_to_address, identity.reply_to_name) if identity.reply_to else None
            one_click = self.links is not None and self.links.base_url.startswith("https://")
            layout = MessageLayout(
                sender=Mailbox(identity.from_address, identity.from_name),
                reply_to=reply_to,
                headers=(ONE_CLICK,) if one_click else (),
            )
            self._layouts[key] = layout
        return layout


def context_for(lead: Lead, scenario: Scenario, step: Step, *, unsubscribe_url: str = "") -> dict[str, Any]:
    """What a template sees: `lead`, `scenario`, `step` and `unsubscribe_url`."""
    return {"lead": lead.template_context(), "scenario": scenario.name, "step": step.id, "unsubscribe_url": unsubscribe_url}
