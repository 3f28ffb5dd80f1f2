"""`mailer validate`'s note on rules that test an attribute no lead has: most often a typo."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

from conftest import THREE_STEPS, make_config, make_leads, write_workspace
from mailer.conditions import parse_condition
from mailer.conditions import tested_attributes as attributes_of  # not collected as a test
from mailer.leads import Lead
from mailer.sqlitestore import SQLiteStore
from mailer.validate import RuleAt, unknown_attribute_notes, validate

NOW = datetime(2026, 1, 5, tzinfo=timezone.utc)
SCORING = """\
scoring:
  - event: opened
    points: 3
grading:
  - name: decision maker
    when: {attribute: job_title, contains: director}
    points: 40
stages:
  MQL: "scroe >= 50 and grade >= B"
"""


def rule(text: object, field: str = "stages.MQL") -> RuleAt:
    return RuleAt("scoring.yaml", field, parse_condition(text, file="scoring.yaml", field=field))


def store_leads(root: Path, leads: list[Lead]) -> None:
    async def write() -> None:
        async with SQLiteStore(root / "mailer.db") as store:
            await store.upsert_leads(leads, list_name="signups", now=NOW)

    asyncio.run(write())  # validate runs its own event loop, as the command does


def attribute_notes(root: Path) -> list[str]:
    problems, summary = validate(make_config(root, 9), path=None, leads_csv=None)
    assert problems == [] and summary.endswith("all good")
    return [line for line in summary.splitlines() if "neither a lead field" in line]


def test_tested_attributes_walks_every_branch() -> None:
    """Every attribute of all/any/not and the short form is found, in the order written."""
    condition = parse_condition(
        {"any": ["score >= 50 and grade >= B", {"not": {"attribute": {"industry": "retail", "country": ["JP"]}}}]},
        file=None, field="when",
    )
    assert list(attributes_of(condition)) == ["score", "grade", "industry", "country"]


def test_a_typo_of_a_lead_field_is_noted_with_a_guess() -> None:
    """`scroe` is no field and no lead has it: the note names the file, the rule and 'score'."""
    [note] = unknown_attribute_notes([rule("scroe >= 50 and grade >= B")], known={"company_size"})
    assert note.startswith("note: scoring.yaml: stages.MQL tests 'scroe', which is neither a lead field nor an attribute")
    assert "did you mean 'score'?" in note


def test_a_typo_of_a_stored_attribute_is_guessed_from_the_leads() -> None:
    """`compnay_size` is guessed as the attribute leads have; a name like nothing gets no guess."""
    [typo, other] = unknown_attribute_notes(
        [rule("compnay_size >= 50", "grading[0].when"), rule("zzz = 1", "exit_when")], known={"company_size"}
    )
    assert "grading[0].when tests 'compnay_size'" in typo and "did you mean 'company_size'?" in typo
    assert "'zzz'" in other and "did you mean" not in other


def test_fields_lifecycle_attributes_and_known_attributes_are_not_noted() -> None:
    """Lead fields, computed values, BANT, the account and attributes leads have raise no note."""
    text = ("score >= 1 and product_score >= 1 and grade >= B and stage >= MQL and email = a and first_name = a "
            "and company = a and job_title = a and need = a and budget = a and account = a and industry = a")
    assert unknown_attribute_notes([rule(text)], known={"industry"}) == []


def test_a_partial_scan_says_how_many_leads_were_read() -> None:
    """When not every lead was read, the note does not claim that no lead has the attribute."""
    [note] = unknown_attribute_notes([rule("scroe >= 50")], known=(), every_lead=False)
    assert "any of the first 100,000 leads" in note


def test_validate_notes_a_typo_in_the_mql_rule(tmp_path: Path) -> None:
    """The tester's case: `MQL: "scroe >= 50"` validates as all good, with a note guessing 'score'."""
    write_workspace(tmp_path)
    (tmp_path / "scenarios" / "scoring.yaml").write_text(SCORING)
    store_leads(tmp_path, make_leads(2))
    [note] = attribute_notes(tmp_path)
    assert "scoring.yaml: stages.MQL tests 'scroe'" in note and "did you mean 'score'?" in note
    (tmp_path / "scenarios" / "scoring.yaml").write_text(SCORING.replace("scroe", "score"))
    assert attribute_notes(tmp_path) == []


def test_an_attribute_only_a_later_lead_has_is_found_in_the_store(tmp_path: Path) -> None:
    """A column only lead 30 has (beyond the 20 sampled for rendering) is known: no note; without it, a note."""
    scenario = THREE_STEPS.replace("    template: two.html", "    template: two.html\n    condition: \"budget_code = X1\"")
    write_workspace(tmp_path, scenario)
    leads = make_leads(30)
    store_leads(tmp_path, leads[:29])
    [note] = attribute_notes(tmp_path)
    assert "main.yaml: steps.two.condition tests 'budget_code'" in note
    store_leads(tmp_path, [replace(leads[29], attributes={"budget_code": "X1"})])
    assert attribute_notes(tmp_path) == []


def test_exit_goals_entry_rules_and_their_dynamic_lists_are_checked(tmp_path: Path) -> None:
    """A typo in exit_when, in entry.where and in the lists.yaml rule a scenario enters by is each noted."""
    scenario = THREE_STEPS.replace("entry:\n  list: signups", 'entry:\n  list: hot\n  where: "contry = JP"')
    write_workspace(tmp_path, scenario + 'exit_when: "scroe >= 20"\n')
    (tmp_path / "scenarios" / "lists.yaml").write_text('lists:\n  hot:\n    where: "grade >= B and compnay = Acme"\n')
    store_leads(tmp_path, [replace(lead, attributes={"country": "JP"}) for lead in make_leads(2)])
    notes = attribute_notes(tmp_path)
    assert len(notes) == 3, notes
    where, listed, goal = notes
    assert "main.yaml: entry.where tests 'contry'" in where and "did you mean 'country'?" in where
    assert "lists.yaml: lists.hot.where tests 'compnay'" in listed and "did you mean 'company'?" in listed
    assert "main.yaml: exit_when tests 'scroe'" in goal and "did you mean 'score'?" in goal


def test_the_store_says_which_attribute_names_its_first_leads_have(tmp_path: Path) -> None:
    """`attribute_names` answers among the wanted names only, and only from the first `first` leads by id."""
    store_leads(tmp_path, [Lead(email="a@example.com", attributes={"industry": "retail"}),
                           Lead(email="b@example.com", attributes={"plan": "pro", "industry": "saas"})])

    async def names(first: int) -> set[str]:
        async with SQLiteStore(tmp_path / "mailer.db") as store:
            return await store.attribute_names(["industry", "plan", "scroe"], first=first)

    assert asyncio.run(names(10)) == {"industry", "plan"}
    assert asyncio.run(names(1)) == {"industry"}
