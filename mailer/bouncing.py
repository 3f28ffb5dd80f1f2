"""Bounce messages in: match each to its message and lead, decide, store the evidence.

One pipeline for the inbound SMTP listener and `mailer bounces ingest`:

    raw email ─► dsn.parse_bounce ─► match (VERP token, else the original Message-ID)
              ─► bouncepolicy.decide ─► store.record_bounce (evidence, suppression, event)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from mailer.bouncepolicy import SUPPRESSION_REASONS, Action, BouncePolicy, decide
from mailer.config import BouncesConfig
from mailer.dsn import BouncedRecipient, BounceReport, parse_bounce
from mailer.reasons import SENDER_PROBLEMS, BounceClass, Reason
from mailer.store import BounceRecord, MessageRef, Store
from mailer.tokens import Signer
from mailer.verp import message_of

MAX_EVIDENCE = 256 * 1024  # bytes of a bounce message kept as evidence


@dataclass
class IntakeReport:
    """What a batch of bounce messages did, for the CLI and the listener's log."""

    messages: int = 0
    not_bounces: int = 0
    unmatched: int = 0
    actions: dict[str, int] = field(default_factory=dict)
    records: list[BounceRecord] = field(default_factory=list)


class BounceIntake:
    def __init__(self, *, store: Store, signer: Signer | None, config: BouncesConfig) -> None:
        self.store = store
        self.signer = signer
        self.config = config
        self.policy = BouncePolicy(config.soft_limit, config.soft_window)

    async def take(
        self, raw: bytes, *, envelope_recipients: Sequence[str], source: str, now: datetime, report: IntakeReport
    ) -> list[BounceRecord]:
        """Parse one returned email and act on each bounced recipient in it."""
        report.messages += 1
        parsed = parse_bounce(raw)
        if parsed.kind == "not-bounce" or not parsed.recipients:
            report.not_bounces += 1
            return []
        message = await self._match(parsed, envelope_recipients)
        if message is None:
            report.unmatched += 1
        records = []
        for recipient in parsed.recipients:
            record = await self._act(parsed, recipient, message, raw, source, now)
            if record.id is not None:
                records.append(record)
                report.actions[record.action] = report.actions.get(record.action, 0) + 1
        report.records.extend(records)
        return records

    async def _match(self, parsed: BounceReport, envelope_recipients: Sequence[str]) -> MessageRef | None:
        """The message a bounce returns: its VERP address first, its Message-ID second."""
        if self.signer is not None and self.config.domain:
            for address in (*envelope_recipients, parsed.original_return_path or ""):
                row = message_of(self.signer, address, local_part=self.config.local_part, domain=self.config.domain)
                if row is not None:
                    return await self.store.find_message(row_id=row)
        if parsed.original_message_id:
            return await self.store.find_message(message_id=parsed.original_message_id.strip())
        return None

    async def _act(
        self,
        parsed: BounceReport,
        recipient: BouncedRecipient,
        message: MessageRef | None,
        raw: bytes,
        source: str,
        now: datetime,
    ) -> BounceRecord:
        # A matched message names the lead for sure; a bounce's own recipient line may be
        # an alias or a forwarding address, so it is only used when nothing matched.
        email = message.email if message is not None else recipient.address.lower()
        reason, bounce_class = recipient.reason, recipient.bounce_class
        earlier = 0
        if bounce_class is BounceClass.SOFT and reason not in SENDER_PROBLEMS:
            earlier = await self.store.soft_bounces_since(email, now - self.policy.soft_window)
        action = decide(reason, bounce_class, earlier_soft=earlier, policy=self.policy)
        if message is None and action in (Action.SUPPRESS, Action.ESCALATE, Action.COMPLAINT):
            # Unmatched bounces are kept, but a guess never suppresses anyone: a bounce
            # that is not ours (backscatter) could name any address.
            action = Action.RECORD
        record = BounceRecord(
            at=now,
            source=source,
            email=email,
            kind="feedback" if parsed.kind == "feedback" else parsed.kind,
            reason=reason.value if parsed.kind != "feedback" else Reason.FEEDBACK.value,
            bounce_class=bounce_class.value,
            action=action.value,
            status=recipient.status,
            reply_code=recipient.reply_code,
            diagnostic=recipient.diagnostic[:2000],
            rule=recipient.rule,
            remote_host=recipient.remote_mta,
            message=message.id if message is not None else None,
            lead_id=message.lead_id if message is not None else None,
            evidence=raw[:MAX_EVIDENCE],
            suppression=SUPPRESSION_REASONS.get(action),
        )
        bounce_id = await self.store.record_bounce(record)
        return BounceRecord(**{**record.__dict__, "id": bounce_id})
