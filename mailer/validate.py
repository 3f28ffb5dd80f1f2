"""`mailer validate` and `mailer preview`: catch a marketer's mistakes before anything is sent.

Validation loads every scenario, compiles every step (CSS inlining included) and renders it
against sample leads with strict undefined variables, so `{{ lead.frist_name }}` is an error
with its template file and line, not a blank in ten thousand inboxes.
"""

from __future__ import annotations

import asyncio
import re
import secrets
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from email_validator import EmailNotValidError

from mailer.compose import Composer, context_for
from mailer.conditions import CONDITION_FIELDS, Condition, tested_attributes
from mailer.config import Config
from mailer.csvimport import normalize_email, read_leads_csv
from mailer.wording import counted
from mailer.errors import HeaderInjectionError, ScenarioError, TemplateError, UserError
from mailer.examples_data import examples
from mailer.leads import Lead
from mailer.links import Links
from mailer.mime import make_message_id
from mailer.render import Renderer, render_error
from mailer.scenario import NOT_SCENARIOS, Scenario, Step, load_scenario, load_scenarios
from mailer.segments import LISTS_FILE, load_segments
from mailer.stages import BANT
from mailer.store import open_store
from mailer.tokens import Signer
from mailer.yamlfile import closest

if TYPE_CHECKING:
    from mailer.scoringrules import ScoringConfig

SAMPLE_SIZE = 20
# The lead fields every condition reads (mailer.conditions), and the attributes the lifecycle
# itself gives meaning to: BANT (mailer.stages.bant) and the account (mailer.stages.account_of).
KNOWN_NAMES = frozenset({*CONDITION_FIELDS, *BANT, "account"})
# Leads read to find the attributes a rule tests when the sample lacks them: reading 100,000
# took 0.6 s on a 2-core test machine; past that the note says how many leads were read.
MAX_SCANNED = 100_000


def validate(config: Config, *, path: Path | None, leads_csv: Path | None) -> tuple[list[UserError], str]:
    """Every problem found, and a one-line summary."""
    scenarios, problems = _load(config, path)
    scoring, scoring_problems, scoring_note = check_scoring(config, path)
    problems += scoring_problems
    leads = sample_leads(config, leads_csv)
    renderer = Renderer(config.templates)
    composer = Composer(renderer, config.identities, links=preview_links(config), config=config)
    steps = 0
    notes: list[str] = [scoring_note] if scoring_note else []
    for scenario in scenarios:
        for step in scenario.steps:
            steps += 1
            problem = _check_step(renderer, composer, scenario, step, leads)
            if problem is not None:
                problems.append(problem)
                continue
            compiled = renderer.step(subject=step.subject, template=step.template, text_template=step.text_template)
            if compiled.inline_each is not None:
                notes.append(f"note: {step.template}: CSS is inlined per message, which is slower: {compiled.inline_each}")
    notes += unknown_entry_lists(config, scenarios)
    where = path or config.scenarios
    rules = rule_conditions(scenarios, scoring, lists_file=(where if where.is_dir() else where.parent) / LISTS_FILE)
    notes += unknown_attributes(config, rules, leads)
    summary = "".join(note + "\n" for note in dict.fromkeys(notes)) + (
        f"{counted(len(scenarios), 'scenario')}, {counted(steps, 'step')} rendered against "
        f"{counted(len(leads), 'sample lead')}: " + (counted(len(problems), "problem") if problems else "all good")
    )
    return problems, summary


def unknown_entry_lists(config: Config, scenarios: list[Scenario]) -> list[str]:
    """A note for each entry list nobody is on or could join: most often a typo, after which
    nobody ever enters. A note, not a problem: the list may be imported after the files."""
    wanted = {s.entry.list_name: s for s in scenarios if s.entry.list_name and s.entry.segment is None}
    if not wanted:
        return []
    known = set(config.lists)  # [lists.NAME]: sign-ups through the opt-in form
    if config.store.exists():

        async def stored() -> list[str]:
            async with open_store(config) as store:
                return await store.list_names()

        known |= set(asyncio.run(stored()))
    notes = []
    for name, scenario in sorted(wanted.items()):
        if name in known:
            continue
        close = closest(name, known)
        guess = f"did you mean {close!r}? " if close else ""
        notes.append(f"note: {scenario.file}: entry list {name!r} has nobody on it yet (no lead imported to it, "
                     f"no [lists.{name}] in mailer.toml): {guess}`mailer leads import FILE --list {name}` fills it")
    return notes


@dataclass(frozen=True)
class RuleAt:
    """A condition of a scenario, list or scoring file, and where it is written."""

    file: str
    field: str  # "stages.MQL", "steps.welcome.condition"
    condition: Condition


def rule_conditions(scenarios: Sequence[Scenario], scoring: ScoringConfig | None, *, lists_file: Path) -> list[RuleAt]:
    """Every condition that decides who gets mail or moves on: stage and grading rules, scenario
    entry rules (with the dynamic lists they enter by), step conditions and exit goals."""
    rules: list[RuleAt] = []
    if scoring is not None and scoring.file is not None:
        for key, stage_rule in (("MQL", scoring.stages.mql), ("PQL", scoring.stages.pql)):
            if stage_rule is not None:
                rules.append(RuleAt(scoring.file, f"stages.{key}", stage_rule))
        rules += [RuleAt(scoring.file, f"grading[{index}].when", rule.when) for index, rule in enumerate(scoring.grading)]
    for scenario in scenarios:
        if scenario.entry.where is not None:
            rules.append(RuleAt(scenario.file, "entry.where", scenario.entry.where))
        if scenario.entry.segment is not None:
            rules.append(RuleAt(str(lists_file), f"lists.{scenario.entry.list_name}.where", scenario.entry.segment))
        rules += [RuleAt(scenario.file, f"steps.{step.id}.condition", step.condition) for step in scenario.steps
                  if step.condition is not None]
        if scenario.exit_when is not None:
            rules.append(RuleAt(scenario.file, "exit_when", scenario.exit_when))
    return rules


def unknown_attribute_notes(rules: Sequence[RuleAt], known: Collection[str], *, every_lead: bool = True) -> list[str]:
    """A note for each attribute a rule tests that is no lead field and that no lead has.

    Most often a typo (`scroe >= 50`), after which the test sees an empty value for every lead
    and nobody ever becomes MQL. A note, not a problem: the attribute may be a CSV column or an
    API attribute that arrives after the files. `known` is the attribute names leads have;
    `every_lead` False says only some leads were read.
    """
    candidates = KNOWN_NAMES | set(known)
    leads = "any lead" if every_lead else f"any of the first {MAX_SCANNED:,} leads"
    notes = []
    for rule in rules:
        for name in dict.fromkeys(tested_attributes(rule.condition)):
            if name in candidates:
                continue
            close = closest(name, candidates)
            guess = f": did you mean {close!r}?" if close else ""
            notes.append(f"note: {rule.file}: {rule.field} tests {name!r}, which is neither a lead field nor an attribute "
                         f"of {leads}{guess} (until a lead has it, the rule sees it empty)")
    return notes


def unknown_attributes(config: Config, rules: Sequence[RuleAt], sample: Sequence[Lead]) -> list[str]:
    """`unknown_attribute_notes` for the attributes of the sample and, for names it lacks, of the stored leads."""
    known = {name for lead in sample for name in lead.attributes}
    wanted = {name for rule in rules for name in tested_attributes(rule.condition)} - KNOWN_NAMES - known
    every_lead = True
    if wanted and config.store.exists():
        stored, every_lead = asyncio.run(stored_attribute_names(config, wanted))
        known |= stored
    return unknown_attribute_notes(rules, known, every_lead=every_lead)


async def stored_attribute_names(config: Config, wanted: Collection[str]) -> tuple[set[str], bool]:
    """Which of `wanted` the stored leads have as attributes (among the first MAX_SCANNED), and
    whether that answer covers every lead."""
    async with open_store(config) as store:
        seen = await store.attribute_names(wanted, first=MAX_SCANNED)
        return seen, seen >= set(wanted) or await store.lead_count() <= MAX_SCANNED


def _load(config: Config, path: Path | None) -> tuple[list[Scenario], list[UserError]]:
    where = path or config.scenarios
    if where.is_file() and where.name in NOT_SCENARIOS and where.name != LISTS_FILE:
        return [], []  # scoring.yaml: checked by its own reader
    if where.is_file():
        try:
            segments = load_segments(where.parent / LISTS_FILE)  # the dynamic lists beside it (or it)
            if where.name in NOT_SCENARIOS:
                return [], []
            return [load_scenario(where, identities=config.identities, templates_dir=config.templates, segments=segments)], []
        except ScenarioError as error:
            return [], [error]
    if not where.is_dir():
        raise ScenarioError("no such file or directory", file=str(where), hint="name a scenario file or the scenarios folder")
    scenarios, errors = load_scenarios(where, identities=config.identities, templates_dir=config.templates)
    return scenarios, list(errors)


def check_scoring(config: Config, path: Path | None) -> tuple[ScoringConfig | None, list[UserError], str | None]:
    """The scoring rules beside the scenarios (or the scoring.yaml named), the problem with them or
    a note of what they hold; no rules when the path names another file or the rules are broken."""
    from mailer.scoringengine import SCORING_FILE, scoring_file
    from mailer.scoringrules import load_scoring

    if path is not None and path.is_file():
        if path.name not in (SCORING_FILE, "scoring.yml"):
            return None, [], None
        target = path
    else:
        target = scoring_file(path or config.scenarios).path
    try:
        rules = load_scoring(target)
    except UserError as error:
        return None, [error], None
    if rules.file is None:
        return rules, [], f"note: no {target.name}: no lead is scored or graded"
    return rules, [], f"{target.name}: {len(rules.rules)} scoring rules, {len(rules.grading)} grading rules"


def _check_step(renderer: Renderer, composer: Composer, scenario: Scenario, step: Step, leads: list[Lead]) -> UserError | None:
    try:
        renderer.step(subject=step.subject, template=step.template, text_template=step.text_template)
    except TemplateError as error:
        return error
    originals = [(renderer.html_env, step.template)]
    if step.text_template:
        originals.append((renderer.text_env, step.text_template))
    now = datetime.now(timezone.utc)
    for lead in leads:
        context = context_for(lead, scenario, step)
        # The originals, not the inlined copies, so errors name the author's file and line.
        for env, name in originals:
            try:
                env.get_template(name).render(context)
            except Exception as error:
                return render_error(error, template=name)
        try:
            composer.compose(scenario, step, lead, message_id=make_message_id("validate.invalid"), now=now, message_row=0)
        except TemplateError as error:
            # The templates rendered above, so what failed here is the subject.
            return TemplateError(error.problem, file=scenario.file, line=step.line, field=f"steps.{step.id}.subject", hint=error.hint)
        except HeaderInjectionError as error:
            return TemplateError(
                f"renders a {error.header} with a line break for {lead.email}",
                file=scenario.file,
                line=step.line,
                field=f"steps.{step.id}.subject",
                hint="keep the subject on one line",
            )
    return None


def preview_links(config: Config) -> Links:
    """Links shaped like the daemon's, under the configured base URL, for message row 0.

    They are signed with a throwaway key, so following a link in a preview is never counted
    as anyone's open, click or unsubscription.
    """
    return Links(Signer([secrets.token_bytes(32)]), config.tracking.public_base)


def sample_leads(config: Config, leads_csv: Path | None) -> list[Lead]:
    """Leads to render against: the given CSV, else the store's leads, else the examples."""
    if leads_csv is not None:
        return list(read_leads_csv(leads_csv).leads[:SAMPLE_SIZE])
    if config.store.exists():

        async def from_store() -> list[Lead]:
            async with open_store(config) as store:
                return await store.sample_leads(SAMPLE_SIZE)

        stored = asyncio.run(from_store())
        if stored:
            return stored
    return list(read_leads_csv(examples().leads_csv).leads)


async def preview(config: Config, *, scenario_name: str, step_id: str, email: str, out: Path) -> list[Path]:
    """Write the message `step_id` of `scenario_name` would send to `email`, as .eml and .html."""
    scenarios, errors = load_scenarios(config.scenarios, identities=config.identities, templates_dir=config.templates)
    by_name = {s.name: s for s in scenarios}
    if scenario_name not in by_name:
        broken = [e for e in errors if scenario_name in str(e)]
        if broken:
            raise broken[0]
        raise ScenarioError(f"no scenario named {scenario_name!r}", file=str(config.scenarios), hint="known: " + ", ".join(sorted(by_name)) if by_name else None)
    scenario = by_name[scenario_name]
    step = scenario.step(step_id)
    if step is None:
        raise ScenarioError(f"no step {step_id!r}", file=scenario.file, field="steps", hint="steps: " + ", ".join(s.id for s in scenario.steps))

    try:
        address = normalize_email(email)
    except EmailNotValidError as error:
        raise UserError(str(error), field="--lead", hint="give the address of an imported lead") from None
    lead = None
    if config.store.exists():
        async with open_store(config) as store:
            lead = await store.get_lead(address)
    if lead is None:
        raise UserError(f"no lead {email!r} in {config.store}", field="--lead", hint="import it with `mailer leads import`")
    composer = Composer(Renderer(config.templates), config.identities, links=preview_links(config), config=config)
    message_id = make_message_id(config.identities[scenario.sender].message_id_domain)
    composed = composer.compose(scenario, step, lead, message_id=message_id, now=datetime.now(timezone.utc), message_row=0)
    out.mkdir(parents=True, exist_ok=True)
    # Addresses may hold "/" and other characters a file name must not.
    stem = re.sub(r"[^\w.@+-]", "_", f"{scenario.name}-{step.id}-{lead.email}").replace("@", "_at_")
    eml = out / f"{stem}.eml"
    html = out / f"{stem}.html"
    eml.write_bytes(composed.wire)
    html.write_text(composed.parts.html, encoding="utf-8")
    return [eml, html]
