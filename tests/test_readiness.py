"""The bulk-sender verdict over findings and its terminal and JSON renderings."""

from __future__ import annotations

import json

import pytest

from mailer.readiness import BULK_SENDER_RULES, DomainReport, Finding, format_report, verdict

ALL_PASS = [Finding(rule.check, "pass", f"{rule.check} ok") for rule in BULK_SENDER_RULES]


def with_finding(finding: Finding) -> list[Finding]:
    return [finding if existing.check == finding.check else existing for existing in ALL_PASS]


def test_every_rule_passing_is_ready() -> None:
    """Findings that all pass, one per rule, make the domain ready with nothing unmet."""
    assert verdict(ALL_PASS).ready and verdict(ALL_PASS).unmet == ()


def test_a_warning_does_not_block_readiness() -> None:
    """A warning (a 1024-bit key, TLS not known here) leaves the domain ready."""
    result = verdict(with_finding(Finding("dkim", "warn", "1024 bits")))
    assert result.ready and result.hard_failures == ()


def test_a_failed_or_missing_rule_is_unmet() -> None:
    """A failed check, or a rule with no finding at all, makes the domain not ready."""
    failed = verdict(with_finding(Finding("dmarc", "fail", "no record")))
    assert not failed.ready and failed.unmet == ("dmarc",)
    missing = verdict([finding for finding in ALL_PASS if finding.check != "fcrdns"])
    assert not missing.ready and missing.unmet == ("fcrdns",)


def test_a_failed_extra_check_is_unmet_too() -> None:
    """A failing check outside the rules (the bounce domain's MX) also blocks readiness."""
    result = verdict([*ALL_PASS, Finding("bounce-mx", "fail", "no MX")])
    assert result.unmet == ("bounce-mx",)


def test_hard_failures_are_the_hard_findings_only() -> None:
    """Only findings marked hard are hard failures; a soft SPF fail is unmet but not hard."""
    hard = Finding("dkim", "fail", "mismatch", hard=True)
    findings = [Finding("spf", "fail", "softfail"), hard, *ALL_PASS[2:]]
    result = verdict(findings)
    assert result.hard_failures == (hard,)
    assert set(result.unmet) == {"dkim", "spf"}


def test_only_a_failure_can_be_hard() -> None:
    """A passing or warning finding marked hard is refused when it is made."""
    with pytest.raises(ValueError):
        Finding("spf", "warn", "x", hard=True)


def test_format_report_marks_each_check_and_indents_its_fix() -> None:
    """The terminal report shows ✓/!/✗ per check, the fix lines indented, and the verdict."""
    findings = (
        Finding("spf", "pass", "192.0.2.10 passes"),
        Finding("dkim", "warn", "1024 bits"),
        Finding("dmarc", "fail", "no record", '_dmarc.acme.example. TXT "v=DMARC1; p=none"\nthen wait', hard=True),
    )
    result = verdict(findings)
    text = format_report(DomainReport("acme.example", findings, result.ready, result.hard_failures, result.unmet))
    lines = text.splitlines()
    assert lines[0] == "✓ spf    192.0.2.10 passes"
    assert lines[1] == "! dkim   1024 bits"
    assert lines[2].startswith("✗ dmarc  no record (hard")
    assert lines[3] == '         _dmarc.acme.example. TXT "v=DMARC1; p=none"'
    assert lines[4] == "         then wait"
    assert "not ready for bulk sending: dmarc, alignment" in lines[5]
    assert "1 hard failure" in lines[6]


def test_to_json_carries_every_finding_and_the_verdict() -> None:
    """The JSON report has the verdict, the unmet checks and each finding with its fix."""
    result = verdict(ALL_PASS)
    report = DomainReport("acme.example", tuple(ALL_PASS), result.ready, result.hard_failures, result.unmet)
    data = json.loads(report.to_json())
    assert data["ready"] is True and data["domain"] == "acme.example" and data["hard_failures"] == []
    assert data["findings"][0] == {"check": "spf", "status": "pass", "detail": "spf ok", "fix": "", "hard": False}
