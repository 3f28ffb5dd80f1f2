"""`mailer validate` and `mailer preview`: catch a marketer's mistakes before anything is sent.

Validation loads every scenario, compiles every step (CSS inlining included) and renders it
against sample leads with strict undefined variables, so `{{ lead.frist_name }}` is an error
with its template file and line, not a blank in ten thousand inboxes.
"""

from __future__ import annotations

import asyncio
import re
import secrets
from datetime import datetime, timezone
from pathlib import Path

from email_validator import EmailNotValidError

from mailer.compose import Composer, context_for
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
from mailer.store import open_store
from mailer.tokens import Signer
from mailer.yamlfile import closest

SAMPLE_SIZE = 20


def validate(config: Config, *, path: Path | None, leads_csv: Path | None) -> tuple[list[UserError], str]:
    """Every problem found, and a one-line summary."""
    scenarios, problems = _load(config, path)
    scoring_problems, scoring_note = check_scoring(config, path)
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


def check_scoring(config: Config, path: Path | None) -> tuple[list[UserError], str | None]:
    """The scoring rules beside the scenarios (or the scoring.yaml named), and a note of what they hold."""
    from mailer.scoringengine import SCORING_FILE, scoring_file
    from mailer.scoringrules import load_scoring

    if path is not None and path.is_file():
        if path.name not in (SCORING_FILE, "scoring.yml"):
            return [], None
        target = path
    else:
        target = scoring_file(path or config.scenarios).path
    try:
        rules = load_scoring(target)
    except UserError as error:
        return [error], None
    if rules.file is None:
        return [], f"note: no {target.name}: no lead is scored or graded"
    return [], f"{target.name}: {len(rules.rules)} scoring rules, {len(rules.grading)} grading rules"


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
