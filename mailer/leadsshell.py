"""`mailer leads show | accept | stage | list`: the lifecycle, for sales.

`leads show` answers "why is this lead an MQL?": the profile, the score with what each rule
added, the grade with the rules that held, the stage and since when, the account, and every
change of score, grade and stage with its reason; and "why didn't it get mail?": its
suppressions, lists and consent (mailer.reachability). Scoring, grading and the stage rules are
pure (mailer.scoring, mailer.grading, mailer.stages); this module only fetches, asks them and
prints.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from email_validator import EmailNotValidError

from mailer.argtypes import positive
from mailer.config import Config
from mailer.csvimport import normalize_email
from mailer.errors import UserError
from mailer.leads import Lead
from mailer.reachability import Reachability, reachability, reachability_json, render_reachability
from mailer.scoremodel import STAGES, GradeResult, HistoryEntry, ScoreResult, StageChange, canonical_stage
from mailer.store import Store, open_store
from mailer.tables import aligned, display_width, pad

if TYPE_CHECKING:
    from mailer.scoringrules import ScoringConfig


def add_lead_commands(lead_commands: Any) -> None:
    """Register show, accept, stage and list under `mailer leads`."""
    show = lead_commands.add_parser("show", help="one lead: score, grade, stage and account, and why (the history)")
    show.add_argument("email", metavar="EMAIL")
    show.add_argument("--json", action="store_true", help="as JSON")
    show.set_defaults(run=_show)
    accept = lead_commands.add_parser("accept", help="sales accepts an MQL or PQL: it becomes SAL")
    accept.add_argument("email", metavar="EMAIL")
    accept.add_argument("--reason", default="", help="kept in the lead's history")
    accept.set_defaults(run=_accept)
    stage = lead_commands.add_parser("stage", help="move a lead to a stage by hand (SQL, customer, recycled, SGL …)")
    stage.add_argument("email", metavar="EMAIL")
    stage.add_argument("stage", metavar="STAGE", help="one of " + ", ".join(STAGES))
    stage.add_argument("--reason", default="", help="kept in the lead's history")
    stage.set_defaults(run=_stage)
    list_ = lead_commands.add_parser("list", help="leads, all or at one stage, with score and grade")
    list_.add_argument("--stage", default=None, metavar="STAGE", help="only this stage (" + ", ".join(STAGES) + ")")
    list_.add_argument("--limit", type=positive, default=100)
    list_.add_argument("--json", action="store_true", help="as JSON")
    list_.set_defaults(run=_list)


# -- reading -------------------------------------------------------------------------------


def load_scoring_config(config: Config) -> ScoringConfig:
    """scenarios/scoring.yaml (no file: no rules, the default stage rules); a broken one is a UserError.

    Read directly, not through the daemon's ScoringFile: a command stops at a broken file
    rather than carrying on with the last good rules.
    """
    from mailer.scoringengine import scoring_file
    from mailer.scoringrules import load_scoring

    return load_scoring(scoring_file(config.scenarios).path)


async def find_lead(store: Store, email: str) -> Lead:
    """The stored lead with this address, or a UserError saying how to find one."""
    try:
        address = normalize_email(email)
    except EmailNotValidError as error:
        raise UserError(f"{email!r} is not an email address: {error}", field="EMAIL") from None
    lead = await store.get_lead(address)
    if lead is None or lead.id is None:
        raise UserError(f"no lead {address}", field="EMAIL", hint="see `mailer leads list`, or add it with `mailer leads import`")
    return lead


@dataclass(frozen=True)
class LeadReport:
    """Everything `leads show` prints about one lead, read at one instant."""

    lead: Lead  # with its stored score, grade and stage: what the stage rules acted on
    now: datetime
    stage_since: datetime | None
    score: ScoreResult  # recomputed with the current rules at `now`: its contributions say why
    grade: GradeResult  # likewise, with the rules that held
    account: str | None
    account_score: int = 0
    account_stage: str = ""
    mqa_score: int | None = None
    history: tuple[HistoryEntry, ...] = ()
    reach: Reachability = Reachability()  # suppressions, lists and consent: why mail goes out or not
    rules_error: str = ""  # scoring.yaml's mistake: the stored values are shown without the why

    @property
    def stage_reason(self) -> HistoryEntry | None:
        """The history entry that moved the lead into its current stage, if it is kept."""
        moves = [e for e in self.history if e.type == "stage_changed" and e.data.get("to") == self.lead.stage]
        return moves[-1] if moves else None


async def lead_report(store: Store, email: str, rules: ScoringConfig | UserError, now: datetime) -> LeadReport:
    """The lead at `now`; with `rules` a UserError (a broken scoring.yaml), what is stored, without the why."""
    from mailer.grading import grade
    from mailer.scoring import score
    from mailer.stages import account_of

    lead = await find_lead(store, email)
    assert lead.id is not None
    # The store reads one lead's scoring input the way a rebuild reads every lead's.
    inputs = await store.scoring_inputs(after_lead_id=lead.id - 1, limit=1)
    item = inputs[0] if inputs and inputs[0].lead.id == lead.id else None
    account = (item.account if item is not None else None) or account_of(lead)  # stored once scored
    rolled = await store.account_rollup([account]) if account else {}
    account_score, account_stage = rolled.get(account or "", (0, ""))
    if isinstance(rules, UserError):
        scored, graded = ScoreResult(lead.score, lead.product_score), GradeResult(lead.grade, 0.0)
    else:
        scored = score(item.events if item is not None else (), rules.rules, now)
        graded = grade(lead, rules.grading, rules.bands)
    return LeadReport(
        lead=lead,
        now=now,
        stage_since=item.stage_since if item is not None else None,
        score=scored,
        grade=graded,
        account=account,
        account_score=account_score,
        account_stage=account_stage,
        mqa_score=None if isinstance(rules, UserError) else rules.stages.mqa_score,
        history=tuple(await store.lead_history(lead.id)),
        reach=await reachability(store, lead.email),
        rules_error=rules.render() if isinstance(rules, UserError) else "",
    )


# -- printing ------------------------------------------------------------------------------


def when(at: datetime) -> str:
    return f"{at.astimezone(timezone.utc):%Y-%m-%d %H:%M} UTC"


def points(value: float) -> str:
    """+15, -30, +7.5: points as a marketer wrote them, decayed ones to two decimals at most."""
    text = f"{value:+.2f}".rstrip("0").rstrip(".")
    return "0" if text in ("+0", "-0") else text


def _ago(since: datetime, now: datetime) -> str:
    days = (now - since).days
    return "today" if days < 1 else "1 day ago" if days == 1 else f"{days} days ago"


def _history_line(entry: HistoryEntry) -> str:
    data = entry.data
    if entry.type == "score_changed":
        # the reason already names what each rule added; older rows may only have the numbers
        parts = [f"{rule} {points(float(pts))}" for rule, _events, pts in list(data.get("contributions", []))[:4]]
        detail = data.get("reason") or ", ".join(parts)
        return f"score {data.get('from')} → {data.get('to')}" + (f": {detail}" if detail else "")
    if entry.type == "grade_changed":
        matched = ", ".join(f"{rule} {points(float(pts))}" for rule, pts in data.get("matched", []))
        return f"grade {data.get('from') or '–'} → {data.get('to') or '–'}" + (f" ({matched})" if matched else "")
    if entry.type == "stage_changed":
        reason = f": {data['reason']}" if data.get("reason") else ""
        return f"stage {data.get('from')} → {data.get('to')} by {data.get('by', 'rules')}{reason}"
    return f"{entry.type} {json.dumps(dict(data), ensure_ascii=False, sort_keys=True)}"


def render_lead(report: LeadReport) -> str:
    lead = report.lead
    lines = [f"{lead.display_name} <{lead.email}>" if lead.display_name else lead.email]
    about = " at ".join(part for part in (lead.job_title, lead.company) if part)
    extras = [about] if about else []
    extras += [f"source {lead.source}"] if lead.source else []
    extras += [f"timezone {lead.timezone}"] if lead.timezone else []
    if extras:
        lines.append("  " + " · ".join(extras))
    if lead.attributes:
        lines.append("  " + ", ".join(f"{key} {value}" for key, value in sorted(lead.attributes.items())))

    since = f" since {when(report.stage_since)} ({_ago(report.stage_since, report.now)})" if report.stage_since else ""
    lines.append(f"stage    {lead.stage}{since}")
    moved = report.stage_reason
    if moved is not None:
        reason = moved.data.get("reason") or "no reason given"
        lines.append(f"         why: {reason} (by {moved.data.get('by', 'rules')})")

    lines.append(f"score    {lead.score}" + (f" (product {lead.product_score})" if lead.product_score else ""))
    names = [c.rule for c in report.score.contributions] + [rule for rule, _ in report.grade.matched]
    width = max([display_width(name) for name in names] + [4])
    for c in report.score.contributions:
        lines.append(f"         {points(c.points):>7}  {pad(c.rule, width)}  {c.events} event{'s' if c.events != 1 else ''}")
    if report.rules_error:
        lines.append("         (what each rule added cannot be shown while scoring.yaml has a mistake)")
    elif not report.score.contributions:
        lines.append("         no scored events")

    if report.rules_error:
        lines.append(f"grade    {lead.grade or '–'}")
    elif report.grade.grade or lead.grade:
        lines.append(f"grade    {lead.grade or '–'} ({points(report.grade.points).lstrip('+')} points)")
        for rule, pts in report.grade.matched:
            lines.append(f"         {points(pts):>7}  {rule}")
    else:
        lines.append("grade    – (no grading rules in scoring.yaml)")

    if report.rules_error:
        lines.append(f"note     {report.rules_error}")
    elif report.score.score != lead.score or report.grade.grade != lead.grade:
        lines.append(
            f"note     with the current rules at {when(report.now)} the score is {report.score.score} and the grade "
            f"{report.grade.grade or '–'}; the daemon stores that on its next pass (or run `mailer scores rebuild`)"
        )

    if report.account is None:
        lines.append("account  none (a personal address)")
    else:
        target = f" of {report.mqa_score} for MQA" if report.mqa_score is not None else ""
        state = "MQA" if report.account_stage == "MQA" else "not MQA"
        lines.append(f"account  {report.account}: score {report.account_score}{target}, {state}")
    lines += render_reachability(report.reach)

    lines.append("history  (oldest first)")
    for entry in report.history:
        lines.append(f"  {when(entry.at)}  {_history_line(entry)}")
    if not report.history:
        lines.append("  no changes yet")
    return "\n".join(lines)


def lead_json(report: LeadReport) -> str:
    lead = report.lead
    moved = report.stage_reason
    document = {
        "email": lead.email, "name": lead.display_name, "first_name": lead.first_name, "last_name": lead.last_name,
        "company": lead.company, "job_title": lead.job_title, "source": lead.source, "timezone": lead.timezone,
        "attributes": dict(lead.attributes),
        "stage": {
            "stage": lead.stage,
            "since": report.stage_since.isoformat() if report.stage_since else None,
            "reason": moved.data.get("reason") if moved else None,
            "by": moved.data.get("by") if moved else None,
        },
        "score": {
            "score": lead.score, "product_score": lead.product_score, "current": report.score.score,
            "contributions": [{"rule": c.rule, "events": c.events, "points": c.points} for c in report.score.contributions],
        },
        "grade": {
            "grade": lead.grade, "current": report.grade.grade, "points": report.grade.points,
            "matched": [{"rule": rule, "points": pts} for rule, pts in report.grade.matched],
        },
        "account": None if report.account is None else {
            "account": report.account, "score": report.account_score, "stage": report.account_stage,
            "mqa_score": report.mqa_score,
        },
        **reachability_json(report.reach),  # suppressions, lists, consents
        "history": [{"at": e.at.isoformat(), "type": e.type, **dict(e.data)} for e in report.history],
        "scoring_problem": report.rules_error or None,  # set: contributions and matched rules are not known
    }
    return json.dumps(document, ensure_ascii=False, indent=1)


def leads_table(leads: Sequence[Lead]) -> str:
    rows = [("email", "stage", "score", "grade", "name", "company")]
    rows += [(lead.email, lead.stage, str(lead.score), lead.grade or "–", lead.display_name, lead.company) for lead in leads]
    return "\n".join(aligned(rows, right={2}))  # by display width: 山田 太郎 takes four columns


# -- moving a lead by hand -----------------------------------------------------------------


async def move_stage(
    store: Store, *, config: Config, rules: ScoringConfig, email: str, target: str, by: str, reason: str, now: datetime
) -> StageChange:
    """Ask the stage rules whether `email` may go to `target` and, when it may, store the move.

    A forbidden move raises StageError (a UserError) before anything is written. The move
    fires the scenarios whose entry triggers on it and queues the webhooks that want it, in
    the same transaction as the move.
    """
    from mailer.scenario import load_scenarios
    from mailer.scoringengine import store_move
    from mailer.stages import request_stage

    stage = canonical_stage(target)
    if stage is None:
        raise UserError(f"no stage {target!r}", field="STAGE", hint="stages: " + ", ".join(STAGES))
    lead = await find_lead(store, email)
    assert lead.id is not None
    change = request_stage(lead, stage, rules.stages, by=by, reason=reason)
    # A broken scenario file is `validate`'s business; the daemon pauses it, so it triggers nothing.
    scenarios, _ = load_scenarios(config.scenarios, identities=config.identities, templates_dir=config.templates)
    await store_move(store, lead, change, scenarios=scenarios, webhooks=config.webhooks, now=now)
    return change


# -- commands ------------------------------------------------------------------------------


def _show(args: argparse.Namespace) -> int:
    from mailer.cli import load, make_clock

    config = load(args, required=True)
    rules: ScoringConfig | UserError
    try:
        rules = load_scoring_config(config)
    except UserError as error:  # sales still see the stored standing while the marketer fixes the file
        rules = error
    now = make_clock(config).now()  # the daemon's clock: decay as an accelerated demo sees it

    async def run() -> LeadReport:
        async with open_store(config) as store:
            return await lead_report(store, args.email, rules, now)

    report = asyncio.run(run())
    print(lead_json(report) if args.json else render_lead(report))
    return 0


def _move(args: argparse.Namespace, target: str) -> int:
    from mailer.cli import load, make_clock

    config = load(args, required=True)
    rules = load_scoring_config(config)
    now = make_clock(config).now()

    async def run() -> StageChange:
        async with open_store(config) as store:
            return await move_stage(store, config=config, rules=rules, email=args.email, target=target, by="sales", reason=args.reason, now=now)

    change = asyncio.run(run())
    reason = f" ({change.reason})" if change.reason else ""
    print(f"{args.email.strip().lower()}: {change.from_stage} → {change.to_stage}{reason}")
    return 0


def _accept(args: argparse.Namespace) -> int:
    return _move(args, "SAL")


def _stage(args: argparse.Namespace) -> int:
    return _move(args, args.stage)


def _list(args: argparse.Namespace) -> int:
    from mailer.cli import load

    stage = None
    if args.stage is not None:
        stage = canonical_stage(args.stage)
        if stage is None:
            raise UserError(f"no stage {args.stage!r}", field="--stage", hint="stages: " + ", ".join(STAGES))
    config = load(args, required=True)

    async def run() -> list[Lead]:
        async with open_store(config) as store:
            return await store.leads_by_stage(stage, limit=args.limit)

    leads = asyncio.run(run())
    if args.json:
        print(json.dumps([
            {"email": lead.email, "name": lead.display_name, "company": lead.company, "stage": lead.stage,
             "score": lead.score, "product_score": lead.product_score, "grade": lead.grade}
            for lead in leads
        ], ensure_ascii=False, indent=1))
    elif leads:
        print(leads_table(leads))
    else:
        print(f"no leads{f' at stage {stage}' if stage else ''}")
    return 0

