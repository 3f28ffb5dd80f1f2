"""The bulk-sender readiness verdict over a domain's findings, and its terminal rendering.

Pure: `mailer.domaincheck` makes the findings from DNS; here they are judged against the
Gmail / Yahoo / Outlook bulk-sender rules (`BULK_SENDER_RULES`, policy as data) and printed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal

from mailer.wording import counted

Status = Literal["pass", "warn", "fail"]


@dataclass(frozen=True)
class Finding:
    """The outcome of one check: what was found and, when it is not a pass, what to publish."""

    check: str
    status: Status
    detail: str
    fix: str = ""  # zone-file lines to publish, or a sentence saying what to do
    hard: bool = False  # the daemon refuses to send from the domain (see mailer.domaincheck)

    def __post_init__(self) -> None:
        if self.hard and self.status != "fail":
            raise ValueError("only a failed check can be a hard failure")


@dataclass(frozen=True)
class Rule:
    check: str
    requirement: str


# The bulk-sender requirements of Gmail (Email sender guidelines, February 2024), Yahoo
# (Sender Best Practices, February 2024) and Outlook.com (high-volume senders, May 2025):
# SPF and DKIM, DMARC of p=none or stricter aligned with one of them, valid forward and
# reverse DNS for the sending IP, TLS, and one-click unsubscribe (RFC 8058, whose section 4
# requires List-Unsubscribe and List-Unsubscribe-Post to be covered by a DKIM signature).
# The MX rule is ours: a bounce domain that cannot receive mail loses every bounce, and
# receivers may refuse a sender domain that accepts no mail (RFC 7505 4.2).
BULK_SENDER_RULES: tuple[Rule, ...] = (
    Rule("spf", "SPF passes for the sending IP"),
    Rule("dkim", "a valid DKIM key record for the selector"),
    Rule("dmarc", "a DMARC record, p=none or stricter"),
    Rule("alignment", "the From domain aligned with DKIM or SPF"),
    Rule("mx", "the From and bounce domains receive mail"),
    Rule("fcrdns", "forward-confirmed reverse DNS for the sending IP"),
    Rule("tls", "TLS to the relay"),
    Rule("unsubscribe", "one-click unsubscribe headers signed by DKIM"),
)


@dataclass(frozen=True)
class Verdict:
    ready: bool
    unmet: tuple[str, ...]  # the checks that failed or were never made
    hard_failures: tuple[Finding, ...]


def verdict(findings: Sequence[Finding]) -> Verdict:
    """Ready when every bulk-sender rule has a finding and no finding failed; a warning passes."""
    made = {finding.check for finding in findings}
    failed = [finding.check for finding in findings if finding.status == "fail"]
    unmet = [rule.check for rule in BULK_SENDER_RULES if rule.check not in made or rule.check in failed]
    unmet += [check for check in failed if check not in unmet]
    return Verdict(
        ready=not unmet,
        unmet=tuple(unmet),
        hard_failures=tuple(finding for finding in findings if finding.hard),
    )


@dataclass(frozen=True)
class DomainReport:
    domain: str
    findings: tuple[Finding, ...]
    ready: bool
    hard_failures: tuple[Finding, ...]
    unmet: tuple[str, ...] = ()

    def to_json(self) -> str:
        return json.dumps(
            {
                "domain": self.domain,
                "ready": self.ready,
                "unmet": list(self.unmet),
                "hard_failures": [finding.check for finding in self.hard_failures],
                "findings": [asdict(finding) for finding in self.findings],
            },
            indent=2,
            ensure_ascii=False,
        )


_MARKS = {"pass": "✓", "warn": "!", "fail": "✗"}


def format_report(report: DomainReport) -> str:
    """One line per check marked ✓, ! or ✗, the fix indented under it, then the verdict."""
    width = max((len(finding.check) for finding in report.findings), default=0)
    lines = []
    for finding in report.findings:
        hard = " (hard: the daemon will not send)" if finding.hard else ""
        lines.append(f"{_MARKS[finding.status]} {finding.check:<{width}}  {finding.detail}{hard}")
        lines.extend(" " * (width + 4) + line for line in finding.fix.splitlines())
    if report.ready:
        lines.append(f"{report.domain}: ready for bulk sending (Gmail, Yahoo, Outlook)")
    else:
        lines.append(f"{report.domain}: not ready for bulk sending: {', '.join(report.unmet)}")
    if report.hard_failures:
        lines.append(f"{counted(len(report.hard_failures), 'hard failure')}: the daemon refuses to send from {report.domain}")
    return "\n".join(lines)
