"""Bounce messages in: match each to its message and lead, decide, store the evidence.

One pipeline for the inbound SMTP listener and `mailer bounces ingest`:

    raw email ─► dsn.parse_bounce ─► match (VERP token, else the original Message-ID)
              ─► bouncepolicy.decide ─► store.record_bounce (evidence, suppression, event)
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from mailer.bouncepolicy import SUPPRESSION_REASONS, Action, BouncePolicy, decide, is_failure
from mailer.config import BouncesConfig
from mailer.dsn import BouncedRecipient, BounceReport, parse_bounce
from mailer.reasons import SENDER_PROBLEMS, BounceClass, Reason
from mailer.store import BounceRecord, MessageRef, Store
from mailer.tokens import Signer
from mailer.verp import message_of

MAX_EVIDENCE = 256 * 1024  # bytes of a bounce message kept as evidence


def evidence_key(raw: bytes, recipient: str) -> str:
    """What makes a stored bounce the same one again: the returned message and the recipient.

    The SHA-256 of the raw message (line ends read as LF, so the copy in a maildir and the one
    the listener received over SMTP with CRLF agree) and the address of the report's recipient
    block. Re-reading a mailbox, or an MTA sending a report again after a lost 250, gives the
    same key; two reports differ at least in their own Message-Id and Date.
    """
    digest = hashlib.sha256(raw.replace(b"\r\n", b"\n")).hexdigest()
    return f"{digest}:{recipient.strip().lower()}"


def recipients_for(
    recipients: Sequence[BouncedRecipient], email: str
) -> tuple[tuple[BouncedRecipient, ...], tuple[BouncedRecipient, ...]]:
    """(the blocks about our message's recipient `email`, the blocks stored as rows of evidence only).

    A report for several recipients (RFC 3464 2.3: one group per recipient) may name
    addresses that are not ours (another sender's copy, a list's members): only the blocks
    whose Final- or Original-Recipient is our recipient apply. When none names it, a single
    block is taken as ours (MTAs rewrite the recipient: an alias, a forward); among several,
    none can be told apart, so all are stored as evidence only. Beside a block of ours the
    others are not stored apart: our bounce's evidence (the raw message) holds them.
    """
    ours = tuple(r for r in recipients if r.names(email))
    if ours:
        return ours, ()
    if len(recipients) == 1:
        return tuple(recipients), ()
    return (), tuple(recipients)


@dataclass
class IntakeReport:
    """What a batch of bounce messages did, for the CLI and the listener's log."""

    messages: int = 0
    not_bounces: int = 0
    unmatched: int = 0
    already_seen: int = 0  # recipient reports stored before (the same evidence): skipped
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
        """Parse one returned email and act on each bounced recipient in it; returns the new records."""
        report.messages += 1
        parsed = parse_bounce(raw)
        if parsed.kind == "not-bounce" or not parsed.recipients:
            report.not_bounces += 1
            return []
        message = await self._match(parsed, envelope_recipients)
        plan: list[tuple[BouncedRecipient, MessageRef | None]]
        if message is None:
            report.unmatched += 1
            plan = [(recipient, None) for recipient in parsed.recipients]
        else:
            ours, others = recipients_for(parsed.recipients, message.email)
            plan = [(recipient, message) for recipient in ours] + [(recipient, None) for recipient in others]
        records = []
        for recipient, target in plan:
            record = await self._act(parsed, recipient, target, raw, source, now)
            if record is None:
                report.already_seen += 1
            elif record.id is not None:
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
    ) -> BounceRecord | None:
        """Decide and store one recipient's report; None when it was stored before."""
        # A matched message names the lead for sure; a bounce's own recipient line may be
        # an alias or a forwarding address, so it is only used when nothing matched.
        email = message.email if message is not None else recipient.address.lower()
        key, evidence = evidence_key(raw, recipient.address), raw[:MAX_EVIDENCE]
        if await self.store.seen_bounce(key, email=email, evidence=evidence) is not None:
            return None
        failed = is_failure(recipient.action) and recipient.reason is not Reason.DELIVERED
        reason = recipient.reason
        # a delay warning or a relay notice is no bounce, whatever its diagnostic reads like
        bounce_class = recipient.bounce_class if failed else BounceClass.NONE
        earlier = 0
        if message is not None and bounce_class is BounceClass.SOFT and reason not in SENDER_PROBLEMS:
            earlier = await self.store.soft_bounces_since(email, now - self.policy.soft_window)
        action = decide(
            reason, bounce_class, earlier_soft=earlier, policy=self.policy,
            dsn_action=recipient.action, feedback_type=parsed.feedback_type,
        )
        if message is None:
            # Unmatched bounces are kept as evidence and do nothing else: a bounce that is not
            # ours (backscatter, a forgery) could name any address, and could be the sender
            # alert of someone else's mail.
            action = Action.RECORD
        record = BounceRecord(
            at=now,
            source=source,
            email=email,
            kind=_kind(parsed, recipient, failed),
            reason=reason.value,
            bounce_class=bounce_class.value,
            action=action.value,
            status=recipient.status,
            reply_code=recipient.reply_code,
            diagnostic=recipient.diagnostic[:2000],
            rule=recipient.rule,
            remote_host=recipient.remote_mta,
            message=message.id if message is not None else None,
            lead_id=message.lead_id if message is not None else None,
            evidence=evidence,
            suppression=SUPPRESSION_REASONS.get(action),
            evidence_key=key,
        )
        bounce_id = await self.store.record_bounce(record)
        return BounceRecord(**{**record.__dict__, "id": bounce_id})


def _kind(parsed: BounceReport, recipient: BouncedRecipient, failed: bool) -> str:
    """The stored kind: the report's, except for a recipient whose delivery did not fail.

    Only a "bounce" moves its message from sent to bounced (mailer.sqlitebounces).
    """
    if parsed.kind in ("feedback", "vacation") or failed:
        return parsed.kind
    return "delayed" if recipient.action.strip().lower() == "delayed" else "delivered"
