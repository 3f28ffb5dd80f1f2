"""The lifecycle: which stage a lead is in, what moves it, and who may move it where.

    lead ──► MQL ──► SAL ──► SQL ──► customer          (any stage but customer ──► recycled)
      └────► PQL ──┘  SGL ──┘                          (recycled ──► MQL/PQL on new engagement)

Automatic moves follow the rules of scoring.yaml's `stages:` (`next_stage`): a lead or
recycled lead becomes MQL when the MQL rule holds (PQL when the PQL rule does); MQL, PQL, lead
and SAL go back to nurture (recycled) after `recycle_after` without engagement; a SAL becomes
SQL once its BANT fields are complete. Sales make the other moves (`request_stage`), checked
against one table, `MANUAL_MOVES`, the way h11 keeps its protocol states in one table.
Accounts become MQA when their leads' scores add up to the MQA line (`account_change`).

Every move carries a reason a salesperson can read: "score 55 ≥ 50 and grade B ≥ B".
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from mailer import durations
from mailer.conditions import AttributeTest, Condition, Engagement, parse_condition, refuse_engagement
from mailer.dmarc import organizational_domain
from mailer.errors import ScenarioError, UserError
from mailer.leads import Lead
from mailer.scoremodel import STAGES, AccountChange, GradeResult, ScoreResult, StageChange, Trigger, canonical_stage
from mailer.yamlfile import Section, check_keys, describe, did_you_mean, key_line, line_of, subfield

if TYPE_CHECKING:
    from mailer.scenario import Scenario


class StageError(UserError):
    """A stage move the lifecycle forbids, or a stage that does not exist."""


@dataclass(frozen=True)
class StageRules:
    """When leads move on their own, from the `stages:` mapping of scoring.yaml."""

    mql: Condition | None  # None: nobody becomes MQL by rule
    pql: Condition | None
    sql_need_required: bool = True  # BANT: Need must be among the fields present
    sql_at_least: int = 2  # BANT fields present, Need included
    recycle_after: timedelta | None = timedelta(days=90)  # None: never recycled
    mqa_score: int | None = None  # the account score that makes an MQA; None: no MQA


DEFAULT_STAGE_RULES = StageRules(mql=AttributeTest("score", "gte", 50), pql=None)
BANT = ("budget", "authority", "need", "timeframe")  # lead attributes; present when not blank
# Who may move a lead by hand (sales, the API), from each stage; SQL also needs BANT.
MANUAL_MOVES: Mapping[str, tuple[str, ...]] = {
    "lead": ("SGL", "recycled"),
    "MQL": ("SAL", "recycled"),
    "PQL": ("SAL", "recycled"),
    "SAL": ("SQL", "recycled"),
    "SGL": ("SAL", "SQL", "recycled"),
    "SQL": ("customer", "recycled"),
    "customer": (),
    "recycled": ("SGL",),
}
_RECYCLABLE = frozenset({"lead", "MQL", "PQL", "SAL"})
_DEFAULT_REASONS = {"SAL": "accepted by sales", "customer": "deal won", "recycled": "returned to nurture",
                    "SGL": "sales-generated lead"}
# Consumer mailbox providers: their users share a domain but no company. The largest
# worldwide, and Japan's carrier and portal addresses.
FREE_MAIL = frozenset({
    "gmail.com", "googlemail.com", "yahoo.com", "yahoo.co.jp", "yahoo.co.uk", "yahoo.fr", "yahoo.de", "ymail.com",
    "outlook.com", "outlook.jp", "hotmail.com", "hotmail.co.uk", "hotmail.co.jp", "hotmail.fr", "live.com",
    "live.jp", "msn.com", "icloud.com", "me.com", "mac.com", "aol.com", "proton.me", "protonmail.com", "gmx.com",
    "gmx.de", "gmx.net", "web.de", "mail.com", "yandex.ru", "yandex.com", "mail.ru", "qq.com", "163.com",
    "126.com", "naver.com", "daum.net", "zoho.com", "fastmail.com", "tutanota.com", "hey.com", "libero.it",
    "orange.fr", "free.fr", "t-online.de", "docomo.ne.jp", "ezweb.ne.jp", "au.com", "softbank.ne.jp",
    "i.softbank.jp", "nifty.com", "biglobe.ne.jp", "ocn.ne.jp", "so-net.ne.jp",
})


def next_stage(
    lead: Lead, rules: StageRules, *, score: ScoreResult, grade: GradeResult, stage_since: datetime | None, now: datetime
) -> StageChange | None:
    """The automatic move for `lead` scored `score` and graded `grade`, or None to stay.

    A stage this version does not know counts as `lead`. Recycling counts from the later of
    the last engagement and the start of the current stage, so a lead sales accepted
    yesterday is not recycled for engagement that ended long before.
    """
    current = canonical_stage(lead.stage) or "lead"
    if (lead.score, lead.product_score, lead.grade) != (score.score, score.product_score, grade.grade):
        lead = replace(lead, score=score.score, product_score=score.product_score, grade=grade.grade)
    engaged = score.last_engaged_at
    if current in ("lead", "recycled"):
        again = current == "lead" or (engaged is not None and (stage_since is None or engaged > stage_since))
        for target, rule in (("MQL", rules.mql), ("PQL", rules.pql)):
            if again and rule is not None and rule.evaluate(lead, Engagement()):
                reason = rule.explain(lead, Engagement())
                return _move(lead, target, reason + (", engaged again" if current == "recycled" else ""))
    if current == "SAL":
        complete, facts = bant(lead, rules)
        if complete:
            return _move(lead, "SQL", facts)
    if current in _RECYCLABLE and rules.recycle_after is not None:
        since = max((moment for moment in (engaged, stage_since) if moment is not None), default=None)
        if since is not None and now - since >= rules.recycle_after:
            after = rules.recycle_after
            limit = f"{after.days}d" if after % timedelta(days=1) == timedelta(0) else durations.format_duration(after)
            return _move(lead, "recycled", f"no engagement for {_spell(now - since)} (recycle after {limit})")
    return None


def _spell(quiet: timedelta) -> str:
    if quiet >= timedelta(days=1):
        return f"{quiet.days} day" + ("" if quiet.days == 1 else "s")
    return durations.format_duration(timedelta(minutes=int(quiet.total_seconds() // 60)))


def request_stage(lead: Lead, target: str, rules: StageRules, *, by: str, reason: str = "") -> StageChange:
    """The move sales (or the API) asked for, or StageError saying why it is not allowed."""
    wanted = canonical_stage(target)
    if wanted is None:
        raise StageError(f"unknown stage {target!r}", field="stage", hint=did_you_mean(target, STAGES))
    current = canonical_stage(lead.stage) or "lead"
    allowed = MANUAL_MOVES[current]
    if wanted == current:
        raise StageError(f"{lead.email} is already {current}", field="stage", hint=_allowed(current, allowed))
    if wanted not in allowed:
        raise StageError(f"{lead.email} cannot move from {current} to {wanted}", field="stage",
                         hint=_allowed(current, allowed))
    why = reason.strip() or _DEFAULT_REASONS.get(wanted, "")
    if wanted == "SGL" and current == "recycled" and not reason.strip():
        why = "taken up again from nurture"  # who did it is said apart, as "(by sales)"
    if wanted == "SQL":
        complete, facts = bant(lead, rules)
        if not complete:
            raise StageError(f"{lead.email} cannot become SQL: BANT is not complete", field="stage",
                             hint=f"{facts}; set them as the lead's attributes first")
        why = "; ".join(part for part in (reason.strip(), facts) if part)
    return StageChange(from_stage=lead.stage, to_stage=wanted, reason=why, by=by)


def _allowed(current: str, allowed: tuple[str, ...]) -> str:
    if not allowed:
        return f"a {current} cannot be moved by hand"
    return f"from {current} a lead may move to {', '.join(allowed)}"


def _move(lead: Lead, target: str, reason: str) -> StageChange:
    return StageChange(from_stage=lead.stage, to_stage=target, reason=reason, by="rules")


def bant(lead: Lead, rules: StageRules) -> tuple[bool, str]:
    """Whether the lead's BANT fields qualify it for SQL, and which are set or missing."""
    present = [name for name in BANT if _is_set(lead.attributes.get(name))]
    need_missing = rules.sql_need_required and "need" not in present
    more = max(0, rules.sql_at_least - len(present) - (1 if need_missing else 0))
    if not need_missing and more == 0:
        return True, "BANT: " + (", ".join(present) or "nothing required")
    missing = ["need"] if need_missing else []
    if more:
        others = [name for name in BANT if name not in present and not (need_missing and name == "need")]
        missing.append(f"{more} more of {', '.join(others)}")
    has = ", ".join(present) if present else "none"
    return False, f"BANT is missing {' and '.join(missing)} (has {has})"


def _is_set(value: object) -> bool:
    return value is not None and not (isinstance(value, str) and not value.strip())


def account_of(lead: Lead) -> str | None:
    """The account a lead belongs to: its `account` attribute, else its company's domain.

    The domain is the organizational one (sales.acme.co.jp → acme.co.jp, RFC 7489 3.2), and
    none for free-mail addresses, whose users share nothing but the provider.
    """
    written = lead.attributes.get("account")
    if isinstance(written, str) and written.strip():
        return written.strip()
    domain = lead.email.rpartition("@")[2].strip().rstrip(".").lower()
    if not domain:
        return None
    organization = organizational_domain(domain)
    return None if domain in FREE_MAIL or organization in FREE_MAIL else organization


def account_change(account: str, score: int, previous_stage: str, rules: StageRules, now: datetime) -> AccountChange | None:
    """The account's move across the MQA line (either way), or None when its stage stays."""
    line = rules.mqa_score
    stage = "MQA" if line is not None and score >= line else ""
    previous = "MQA" if previous_stage == "MQA" else ""
    if stage == previous:
        return None
    if line is None:
        reason = "MQA is no longer configured"
    else:
        reason = f"account score {score} {'≥' if stage else '<'} {line}"
    return AccountChange(account=account, score=score, stage=stage, previous_stage=previous, reason=reason, at=now)


def triggered_by(
    scenarios: Iterable[Scenario], *, stage_change: StageChange | None = None, form: str | None = None, lead: Lead
) -> list[str]:
    """The names of the trigger scenarios this change enters `lead` into (their `where` holds).

    `form` is the name of a form the lead just submitted ("" when it has none); `lead` is read
    in its new stage.
    """
    if stage_change is not None and lead.stage != stage_change.to_stage:
        lead = replace(lead, stage=stage_change.to_stage)
    names = []
    for scenario in scenarios:
        trigger, where = scenario.entry.trigger, scenario.entry.where
        if trigger is not None and trigger.fires(stage_change=stage_change, form=form):
            if where is None or where.evaluate(lead, Engagement()):
                names.append(scenario.name)
    return names


def triggers_for(
    scenarios: Iterable[Scenario], *, stage_change: StageChange | None = None, form: str | None = None, lead: Lead
) -> list[Trigger]:
    """`triggered_by` as the store's enrollments: each with its scenario's first wait and re-entry rule."""
    scenarios = list(scenarios)
    chosen = set(triggered_by(scenarios, stage_change=stage_change, form=form, lead=lead))
    return [
        Trigger(
            scenario.name, lead.id or 0, wait=scenario.steps[0].wait if scenario.steps else timedelta(0),
            reentry_after=scenario.reentry.after if scenario.reentry.allowed else None,
        )
        for scenario in scenarios
        if scenario.name in chosen
    ]


# Reading the `stages:` mapping of scoring.yaml.

_KEYS = ("MQL", "PQL", "SQL", "recycle_after", "MQA")
MIN_RECYCLE_AFTER = timedelta(hours=1)  # shorter would recycle leads between two scoring passes


def parse_stage_rules(node: object, *, file: str | None, field: str = "stages") -> StageRules:
    """Compile the `stages:` mapping; a missing one means DEFAULT_STAGE_RULES."""
    if node is None:
        return DEFAULT_STAGE_RULES
    if not isinstance(node, Mapping):
        raise ScenarioError(f"must be a mapping, not {describe(node)}", file=file, line=line_of(node), field=field,
                            hint='e.g. stages: {MQL: "score >= 50 and grade >= B"}')
    check_keys(node, _KEYS, file=file, field=field)
    at = _Place(node, file, field)
    rules = DEFAULT_STAGE_RULES
    if "MQL" in node:
        rules = replace(rules, mql=at.rule("MQL"))
    if "PQL" in node:
        rules = replace(rules, pql=at.rule("PQL"))
    if "SQL" in node:
        rules = at.sql(rules)
    if "recycle_after" in node:
        rules = replace(rules, recycle_after=at.recycle_after())
    if "MQA" in node:
        rules = replace(rules, mqa_score=at.mqa())
    return rules


class _Place(Section):
    """The `stages:` mapping being read and where it is, to report errors."""

    def rule(self, key: str) -> Condition | None:
        value = self.mapping[key]
        if value is False:
            return None
        if value is None:
            raise self.error(key, "has no value", f'write a condition such as "score >= 50", or false for no {key}')
        rule = parse_condition(value, file=self.file, field=subfield(self.field, key), line=key_line(self.mapping, key))
        refuse_engagement(rule, f"the {key} rule", at=self, key=key,
                          hint="those belong to one scenario; test score, grade, product_score or attributes")
        return rule

    def sql(self, rules: StageRules) -> StageRules:
        value = self.mapping["SQL"]
        hint = "e.g. SQL: {need: required, at_least: 2} (Need plus one more of budget, authority, timeframe)"
        if not isinstance(value, Mapping):
            raise self.error("SQL", f"must be a mapping, not {describe(value)}", hint)
        check_keys(value, ("need", "at_least"), file=self.file, field=subfield(self.field, "SQL"))
        need = value.get("need", "required")
        if need not in ("required", "optional", True, False):
            raise self.inner("SQL").error("need", f"must be required or optional, not {_what(need)}", hint)
        at_least = value.get("at_least", rules.sql_at_least)
        if isinstance(at_least, bool) or not isinstance(at_least, int) or not 0 <= at_least <= len(BANT):
            raise self.inner("SQL").error("at_least", f"must be a whole number from 0 to 4, not {_what(at_least)}", hint)
        return replace(rules, sql_need_required=need in ("required", True), sql_at_least=at_least)

    def recycle_after(self) -> timedelta | None:
        if self.mapping["recycle_after"] is False:
            return None
        return self.duration("recycle_after", hint=durations.HINT + ", or false to never recycle",
                             at_least=MIN_RECYCLE_AFTER, at_least_hint="e.g. recycle_after: 90d")

    def mqa(self) -> int | None:
        value = self.mapping["MQA"]
        if value is False:
            return None
        hint = "e.g. MQA: {account_score: 150}, or false for no MQA"
        if not isinstance(value, Mapping):
            raise self.error("MQA", f"must be a mapping, not {describe(value)}", hint)
        check_keys(value, ("account_score",), file=self.file, field=subfield(self.field, "MQA"))
        if "account_score" not in value:
            raise self.error("MQA", "missing required key 'account_score'", hint)
        score = value["account_score"]
        if isinstance(score, bool) or not isinstance(score, int) or score <= 0:
            problem = f"must be a positive whole number, not {_what(score)}"
            raise self.inner("MQA").error("account_score", problem, hint)
        return score


def _what(value: object) -> str:
    return repr(value) if isinstance(value, (int, float, str)) and not isinstance(value, bool) else describe(value)
