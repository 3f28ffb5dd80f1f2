"""One step for one lead, from templates to wire bytes: the per-recipient hot path.

Everything constant per step (compiled templates with CSS already inlined, the From and
MIME skeleton) is prepared once and cached; per recipient only the templates run and the
message is assembled.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from mailer.config import IdentityConfig
from mailer.leads import Lead
from mailer.mime import Mailbox, MessageLayout
from mailer.render import RenderedParts, Renderer, render_error
from mailer.scenario import Scenario, Step


@dataclass(frozen=True)
class Composed:
    wire: bytes
    parts: RenderedParts
    smtputf8: bool


class Composer:
    def __init__(self, renderer: Renderer, identities: dict[str, IdentityConfig]) -> None:
        self.renderer = renderer
        self.identities = identities
        self._layouts: dict[tuple[str, str], MessageLayout] = {}

    def forget(self) -> None:
        """Drop cached layouts (after scenarios or identities were reloaded)."""
        self._layouts.clear()

    def compose(self, scenario: Scenario, step: Step, lead: Lead, *, message_id: str, now: datetime) -> Composed:
        """Render and assemble; raises TemplateError or HeaderInjectionError for this lead."""
        compiled = self.renderer.step(subject=step.subject, template=step.template, text_template=step.text_template)
        context = context_for(lead, scenario, step)
        try:
            parts = compiled.render(context)
        except Exception as error:  # a template may raise anything; it must not stop the loop
            raise render_error(error, template=step.template) from None
        layout = self.layout(scenario, step)
        to = Mailbox(lead.email, lead.display_name)
        wire = layout.assemble(
            to=to, subject=parts.subject, message_id=message_id, date=now, text=parts.text, html=parts.html
        )
        return Composed(wire=wire, parts=parts, smtputf8=layout.needs_smtputf8 or to.needs_smtputf8)

    def layout(self, scenario: Scenario, step: Step) -> MessageLayout:
        key = (scenario.name, step.id)
        layout = self._layouts.get(key)
        if layout is None:
            identity = self.identities[scenario.sender]
            reply_to = Mailbox(identity.reply_to_address, identity.reply_to_name) if identity.reply_to else None
            layout = MessageLayout(sender=Mailbox(identity.from_address, identity.from_name), reply_to=reply_to)
            self._layouts[key] = layout
        return layout


def context_for(lead: Lead, scenario: Scenario, step: Step) -> dict[str, Any]:
    """What a template sees: `lead`, `scenario` and `step`."""
    return {"lead": lead.template_context(), "scenario": scenario.name, "step": step.id}
