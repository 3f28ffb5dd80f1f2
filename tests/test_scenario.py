"""Tests for mailer.scenario: loading and checking scenario files."""

from __future__ import annotations

import copy
import re
import textwrap
from datetime import time, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailer.conditions import AllOf, AnyOf, AttributeTest, EngagementTest, Not
from mailer.durations import HINT as DURATION_HINT
from mailer.errors import ScenarioError
from mailer.scenario import Entry, EntryTrigger, Reentry, Scenario, Step, load_scenario, load_scenarios
from mailer.scoremodel import StageChange
from mailer.sendwindow import SendWindow
from mailer.stages import parse_stage_rules
from mailer.yamlfile import parse_yaml

DOCS = Path(__file__).parent.parent / "docs" / "scenarios.md"

MINIMAL = """\
name: Welcome
sender: default
entry:
  list: trial
steps:
  - id: welcome
    subject: Hello
    template: welcome.html
"""


def write(directory: Path, text: str, name: str = "s.yaml") -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text))
    return path


def refused(path: Path, **options: Any) -> ScenarioError:
    with pytest.raises(ScenarioError) as caught:
        load_scenario(path, **options)
    return caught.value


def test_full_scenario_parses_into_dataclasses(tmp_path: Path) -> None:
    """Every key of a complete scenario ends up in the matching dataclass field."""
    path = write(tmp_path, """\
        name: Trial nurture
        description: For trials.
        sender: marketing
        entry:
          list: trial
          where: {attribute: country, equals: JP}
        timezone: Asia/Tokyo
        send_window: {days: weekdays, hours: "09:00-18:00"}
        exit_when: {any: [{attribute: stage, in: [SQL, customer]}, {clicked: demo}]}
        reentry: {after: 30d}
        steps:
          - id: welcome
            subject: "Hi {{ lead.first_name }}"
            template: welcome.html
            text_template: welcome.txt
          - id: demo
            wait: 2d12h
            subject: Demo?
            template: demo.html
            send_window: {days: [tue, thu], hours: "10:00-12:00"}
            condition: {not: {opened: welcome}}
        """)
    assert load_scenario(path, identities={"marketing"}) == Scenario(
        name="Trial nurture",
        file=str(path),
        sender="marketing",
        entry=Entry(list_name="trial", where=AttributeTest("country", "equals", "JP")),
        steps=(
            Step(id="welcome", wait=timedelta(0), subject="Hi {{ lead.first_name }}", template="welcome.html",
                 text_template="welcome.txt", send_window=None, condition=None, line=12),
            Step(id="demo", wait=timedelta(days=2, hours=12), subject="Demo?", template="demo.html",
                 text_template=None, send_window=SendWindow(frozenset({1, 3}), time(10), time(12)),
                 condition=Not(EngagementTest("opened", "welcome")), line=16),
        ),
        exit_when=AnyOf((AttributeTest("stage", "in", ("SQL", "customer")), EngagementTest("clicked", "demo"))),
        reentry=Reentry(allowed=True, after=timedelta(days=30)),
        timezone="Asia/Tokyo",
        send_window=SendWindow(frozenset(range(5)), time(9), time(18)),
        description="For trials.",
    )


def test_minimal_scenario_gets_defaults(tmp_path: Path) -> None:
    """Optional keys default to UTC, no window, no goal, no re-entry and no wait."""
    scenario = load_scenario(write(tmp_path, MINIMAL))
    assert (scenario.timezone, scenario.send_window, scenario.exit_when) == ("UTC", None, None)
    assert scenario.reentry == Reentry(allowed=False, after=timedelta(0))
    assert scenario.entry == Entry(list_name="trial", where=None)
    assert scenario.steps[0].wait == timedelta(0) and scenario.description == ""


@pytest.mark.parametrize(
    ("reentry", "expected"),
    [("false", Reentry(False)), ("true", Reentry(True, timedelta(days=30))), ("{after: 1w}", Reentry(True, timedelta(weeks=1)))],
)
def test_reentry_forms(tmp_path: Path, reentry: str, expected: Reentry) -> None:
    """reentry reads false, true and {after: DURATION}."""
    assert load_scenario(write(tmp_path, MINIMAL + f"reentry: {reentry}\n")).reentry == expected


def test_step_index_finds_steps_by_id(tmp_path: Path) -> None:
    """step_index gives a step's position and KeyError for an unknown id."""
    scenario = load_scenario(write(tmp_path, MINIMAL + "  - id: second\n    subject: Again\n    template: a.html\n"))
    assert scenario.step_index("second") == 1
    with pytest.raises(KeyError):
        scenario.step_index("third")


def test_numeric_ids_and_waits_read_as_text(tmp_path: Path) -> None:
    """`id: 1` names step "1", and `wait: 0` is no wait."""
    text = MINIMAL.replace("id: welcome", "id: 1\n    wait: 0") + "  - id: two\n    subject: x\n    template: a.html\n    condition: {opened: 1}\n"
    scenario = load_scenario(write(tmp_path, text))
    assert scenario.steps[0].id == "1" and scenario.steps[1].condition == EngagementTest("opened", "1")


# One test per kind of mistake: each names file:line, the field and a hint.

CASES = [
    # (file text, line, field, problem or None to skip, hint or None to only require one)
    (MINIMAL.replace("sender:", "sendr:"), 2, "sendr", "unknown key 'sendr'", "did you mean 'sender'?"),
    (MINIMAL.replace("    template:", "    templte:"), 8, "steps[0].templte", "unknown key 'templte'", "did you mean 'template'?"),
    (MINIMAL.replace("name: Welcome\n", ""), 1, "name", "missing required key 'name'", "add `name: ...`, the name reports show"),
    (MINIMAL.replace("    subject: Hello\n", ""), 6, "steps[0].subject", "missing required key 'subject'", None),
    (MINIMAL.replace("    template: welcome.html\n", ""), 6, "steps[0].template", "missing required key 'template'", None),
    (MINIMAL.replace("  - id: welcome\n", "  - wait: 1d\n"), 6, "steps[0].id", "missing required key 'id'", "give each step a short id such as `welcome`"),
    (MINIMAL.replace("name: Welcome", "name: [a, b]"), 1, "name", "must be text, not a list", None),
    (MINIMAL.replace("entry:\n  list: trial", "entry: trial"), 3, "entry", "must be a mapping with list or where, not text", None),
    (MINIMAL.replace("entry:\n  list: trial\n", ""), 1, "entry", "missing required key 'entry'", None),
    (MINIMAL.replace("entry:\n  list: trial\n", "entry:\n"), 3, "entry", "has no value", None),
    (MINIMAL.split("steps:")[0] + "steps: 1\n", 5, "steps", "must be a list, not a number", None),
    (MINIMAL.replace("  list: trial", "  lists: trial"), 4, "entry.lists", "unknown key 'lists'", "did you mean 'list'?"),
    (MINIMAL.split("steps:")[0] + "steps: []\n", 5, "steps", "needs at least one step", None),
    (MINIMAL + "  - just text\n", 9, "steps[1]", "must be a mapping, not text", None),
    (MINIMAL.replace("    subject: Hello", "    wait: 2 days\n    subject: Hello"), 7, "steps[0].wait", "'2 days' is not a duration", DURATION_HINT),
    (MINIMAL.replace("    subject: Hello", "    wait: 90\n    subject: Hello"), 7, "steps[0].wait", "'90' is not a duration", DURATION_HINT),
    (MINIMAL.replace("    subject: Hello", "    wait: [1d]\n    subject: Hello"), 7, "steps[0].wait", "must be a duration, not a list", DURATION_HINT),
    (MINIMAL + "timezone: Europe/Berln\n", 9, "timezone", "unknown time zone 'Europe/Berln'", "did you mean 'Europe/Berlin'?"),
    (MINIMAL + "timezone: utc\n", 9, "timezone", "unknown time zone 'utc'", "did you mean 'UTC'?"),
    (MINIMAL + "timezone: Nowhere\n", 9, "timezone", "unknown time zone 'Nowhere'", "use an IANA name such as Europe/Berlin or Asia/Tokyo"),
    (MINIMAL + "  - id: welcome\n    subject: x\n    template: a.html\n", 9, "steps[1].id", "duplicate step id 'welcome'", "it is already used on line 6; step ids must be unique"),
    (MINIMAL.replace("id: welcome", "id: 'two words'"), 6, "steps[0].id", "'two words' is not a valid step id", "use letters, digits, - and _ (at most 64)"),
    (MINIMAL.replace("id: welcome", "id: any"), 6, "steps[0].id", "'any' is not a valid step id", "`any` is reserved for `opened: any`"),
    (MINIMAL + "  - id: next\n    subject: x\n    template: a.html\n    condition:\n      any:\n        - sent: welcome\n        - opened: welcom\n",
     15, "steps[1].condition", "refers to step 'welcom', which does not exist", "did you mean 'welcome'?"),
    (MINIMAL.replace("    template: welcome.html", "    template: welcome.html\n    condition: {opened: welcome}"),
     9, "steps[0].condition", "refers to step 'welcome', which is this step", "a step's condition may only depend on earlier steps"),
    (MINIMAL.replace("    template: welcome.html", "    template: welcome.html\n    condition: {clicked: later}") + "  - id: later\n    subject: x\n    template: a.html\n",
     9, "steps[0].condition", "refers to step 'later', which comes after this step", "a step's condition may only depend on earlier steps"),
    (MINIMAL + "exit_when:\n  clicked: demo\n", 10, "exit_when", "refers to step 'demo', which does not exist", None),
    (MINIMAL + "exit_when: stage is SQL\n", 9, "exit_when", "'stage is SQL': expected an operator after 'stage', found 'is'", "operators: >= > <= < = == !="),
    (MINIMAL + "exit_when: stage >= SQLL\n", 9, "exit_when", "'stage >= SQLL': >= on stage needs a stage, not 'SQLL'", "did you mean 'SQL'?"),
    (MINIMAL.replace("  list: trial", "  where: {not: {opened: any}}"), 4, "entry.where", "an entry rule cannot test what a lead opened, clicked or was sent", None),
    (MINIMAL.replace("  list: trial", "  where: {attribute: n, equal: 1}"), 4, "entry.where.equal", "unknown operator 'equal'", "did you mean 'equals'?"),
    (MINIMAL.replace("subject: Hello", "subject: 'Hi {{ lead.first_name'"), 7, "steps[0].subject", "invalid template syntax: unexpected end of template, expected 'end of print statement'.", "check the {{ }} and {% %} pairs"),
    (MINIMAL.replace("subject: Hello", "subject: 'Hi {% if x %}'"), 7, "steps[0].subject", None, "check the {{ }} and {% %} pairs"),
    (MINIMAL.replace("subject: Hello", "subject: |\n      Hello\n      there"), 7, "steps[0].subject", "must be one line", None),
    (MINIMAL.replace("subject: Hello", "subject: 42"), 7, "steps[0].subject", "must be text, not a number", None),
    (MINIMAL.replace("subject: Hello", "subject: ' '"), 7, "steps[0].subject", "is empty", None),
    (MINIMAL.replace("template: welcome.html", "template: ../secrets.txt"), 8, "steps[0].template", "'../secrets.txt' is not a file name under templates/", None),
    (MINIMAL + "reentry: sometimes\n", 9, "reentry", "must be true, false or {after: DURATION}, not text", "e.g. reentry: {after: 30d}"),
    (MINIMAL + "reentry:\n  after: soon\n", 10, "reentry.after", "'soon' is not a duration", DURATION_HINT),
    (MINIMAL + "reentry: {aftr: 2d}\n", 9, "reentry.aftr", "unknown key 'aftr'", "did you mean 'after'?"),
    (MINIMAL + "send_window:\n  hours: 9-5\n", 10, "send_window.hours", "'9-5' is not a range of hours", None),
    (MINIMAL.replace("    template: welcome.html", "    template: welcome.html\n    send_window: {days: [funday]}"), 9, "steps[0].send_window.days", "'funday' is not a day", None),
    (MINIMAL + "name: Again\n", 9, None, "duplicate key 'name'", "it is already set on line 1"),
]


@pytest.mark.parametrize(("text", "line", "field", "problem", "hint"), CASES)
def test_each_mistake_names_file_line_field_and_hint(
    tmp_path: Path, text: str, line: int, field: str | None, problem: str | None, hint: str | None
) -> None:
    """A mistake is reported at the file as given, the offending line and dotted field, with a hint."""
    error = refused(write(tmp_path, text))
    assert (error.file, error.line, error.field) == (str(tmp_path / "s.yaml"), line, field)
    if problem is not None:
        assert error.problem == problem
    assert error.hint
    if hint is not None:
        assert error.hint == hint


def test_unknown_sender_identity(tmp_path: Path) -> None:
    """A sender that mailer.toml does not define is refused with the closest identity."""
    error = refused(write(tmp_path, MINIMAL), identities={"defaults", "sales"})
    assert str(error) == f"{tmp_path / 's.yaml'}:2: sender: no sending identity named 'default' — did you mean 'defaults'?"


def test_missing_template_names_the_directory(tmp_path: Path) -> None:
    """A template that is not in templates_dir is refused, naming the directory and a close file."""
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "welcom.html").write_text("<p>hi</p>")
    error = refused(write(tmp_path, MINIMAL), templates_dir=templates)
    assert (error.line, error.field, error.problem) == (8, "steps[0].template", "template 'welcome.html' does not exist")
    assert error.hint == f"no such file in {templates}; did you mean 'welcom.html'?"


def test_missing_text_template_is_refused(tmp_path: Path) -> None:
    """A text_template that is not in templates_dir is refused too."""
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "welcome.html").write_text("<p>hi</p>")
    path = write(tmp_path, MINIMAL + "    text_template: welcome.txt\n")
    error = refused(path, templates_dir=templates)
    assert (error.line, error.field, error.hint) == (9, "steps[0].text_template", f"no such file in {templates}")


def test_file_in_errors_is_the_path_as_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A relative path stays relative in the error."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "scenarios").mkdir()
    write(tmp_path / "scenarios", MINIMAL.replace("sender:", "sendr:"), "w.yaml")
    assert refused(Path("scenarios/w.yaml")).render().startswith("scenarios/w.yaml:2: sendr:")


# Loading a directory


def test_load_scenarios_reports_bad_files_and_keeps_the_rest(tmp_path: Path) -> None:
    """Good files load in name order, bad ones become errors, scoring.yaml and other files are skipped."""
    write(tmp_path, MINIMAL.replace("Welcome", "B"), "b.yml")
    write(tmp_path, MINIMAL.replace("Welcome", "A"), "a.yaml")
    write(tmp_path, "name: [\n", "broken.yaml")
    write(tmp_path, "rules: []\n", "scoring.yaml")
    write(tmp_path, "not yaml", "notes.txt")
    write(tmp_path, MINIMAL.replace("Welcome", "A"), "c.yaml")
    scenarios, errors = load_scenarios(tmp_path)
    assert [scenario.name for scenario in scenarios] == ["A", "B"]
    assert [(error.file, error.line) for error in errors] == [(str(tmp_path / "broken.yaml"), 2), (str(tmp_path / "c.yaml"), 1)]
    assert errors[1].problem == "scenario name 'A' is already used"


def test_load_scenarios_passes_options_on(tmp_path: Path) -> None:
    """identities and templates_dir are checked for every file."""
    write(tmp_path, MINIMAL)
    scenarios, errors = load_scenarios(tmp_path, identities=set())
    assert scenarios == [] and errors[0].hint == "mailer.toml defines no identities"


def test_load_scenarios_reports_a_missing_directory(tmp_path: Path) -> None:
    """A missing scenarios directory is one error, not an empty success."""
    assert load_scenarios(tmp_path / "nope")[1][0].problem == "no such directory"


def test_the_documented_example_loads(tmp_path: Path) -> None:
    """The example in docs/scenarios.md loads, with its sender and every template it names."""
    example = re.search(r"## Example\n\n```yaml\n(.*?)```", DOCS.read_text(), re.DOTALL)
    assert example is not None
    path = write(tmp_path, example.group(1), "trial-nurture.yaml")
    names = re.findall(r"template: (\S+)", example.group(1))
    for name in names:
        (tmp_path / "templates" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "templates" / name).write_text("hi")
    scenario = load_scenario(path, identities={"marketing"}, templates_dir=tmp_path / "templates")
    assert [step.id for step in scenario.steps] == ["welcome", "tips", "case-study", "book-demo", "last-call"]
    assert scenario.entry.list_name == "trial-signups" and scenario.reentry == Reentry(True, timedelta(days=90))
    assert isinstance(scenario.steps[3].condition, AllOf)


KEYS = ["name", "sender", "entry", "list", "where", "timezone", "send_window", "days", "hours", "exit_when",
        "reentry", "after", "steps", "id", "wait", "subject", "template", "text_template", "condition",
        "attribute", "equals", "in", "opened", "not", "all", "trigger", "form", "bogus"]
yaml_values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 100)
    | st.sampled_from(["welcome", "2d", "09:00-18:00", "weekdays", "Asia/Tokyo", "a.html", "{{ x", "any", "",
                       "became_MQL", "form_submitted", "score >= 5 and grade >= B", "stage >"]),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.sampled_from(KEYS), children, max_size=4),
    max_leaves=15,
)


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(document=st.dictionaries(st.sampled_from(KEYS), yaml_values, max_size=6))
def test_any_document_loads_or_raises_scenario_error(tmp_path: Path, document: dict[str, object]) -> None:
    """Whatever mix of scenario keys and values a file holds, loading it ends in a Scenario or a ScenarioError."""
    path = tmp_path / "fuzz.yaml"
    path.write_text(yaml.safe_dump(document))
    try:
        load_scenario(path, identities={"default"}, templates_dir=tmp_path)
    except ScenarioError as error:
        assert error.file == str(path)


VALID: dict[str, Any] = {
    "name": "Fuzz", "sender": "default", "entry": {"list": "trial", "where": {"attribute": "country", "equals": "JP"}},
    "timezone": "Asia/Tokyo", "send_window": {"days": "weekdays", "hours": "09:00-18:00"},
    "exit_when": {"clicked": "a"}, "reentry": {"after": "30d"},
    "steps": [
        {"id": "a", "subject": "Hi", "template": "a.html"},
        {"id": "b", "wait": "1d", "subject": "B", "template": "a.html", "condition": {"opened": "a"},
         "send_window": {"days": ["mon"]}},
    ],
}
PLACES = [("name",), ("sender",), ("entry",), ("entry", "where"), ("timezone",), ("send_window",),
          ("send_window", "days"), ("exit_when",), ("reentry",), ("reentry", "after"), ("steps",),
          ("steps", 0), ("steps", 0, "id"), ("steps", 1, "wait"), ("steps", 1, "condition"),
          ("steps", 1, "condition", "opened"), ("steps", 1, "send_window"), ("steps", 0, "subject")]


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(place=st.sampled_from(PLACES), value=yaml_values)
def test_a_valid_scenario_with_one_value_replaced_loads_or_raises_scenario_error(
    tmp_path: Path, place: tuple[str | int, ...], value: object
) -> None:
    """Replacing any one value of a valid scenario never makes the loader raise anything but ScenarioError."""
    document = copy.deepcopy(VALID)
    container: Any = document
    for key in place[:-1]:
        container = container[key]
    container[place[-1]] = value
    path = tmp_path / "fuzz.yaml"
    path.write_text(yaml.safe_dump(document))
    (tmp_path / "a.html").write_text("hi")
    try:
        load_scenario(path, identities={"default"}, templates_dir=tmp_path)
    except ScenarioError as error:
        assert error.file == str(path) and error.line is not None


def test_reentry_at_once_is_refused(tmp_path: Path) -> None:
    """`reentry: {after: 0}` would send a lead round the scenario on every pass: refused."""
    path = tmp_path / "s.yaml"
    path.write_text("name: s\nsender: default\nentry: {list: l}\nreentry: {after: 0m}\nsteps:\n  - {id: a, subject: s, template: a.html}\n")
    with pytest.raises(ScenarioError, match="at least 1h"):
        load_scenario(path)


def test_a_scenario_name_starting_with_at_is_refused(tmp_path: Path) -> None:
    """Names beginning with "@" belong to the engine's own messages (the opt-in confirmation)."""
    (tmp_path / "s.yaml").write_text("name: '@optin'\nsender: default\nentry: {list: x}\nsteps:\n  - id: a\n    subject: Hi\n    template: t.html\n", encoding="utf-8")
    scenarios, errors = load_scenarios(tmp_path, identities=None, templates_dir=None)
    assert not scenarios and len(errors) == 1
    assert errors[0].field == "name" and "@" in errors[0].problem


# Entry triggers and dynamic lists


def entry_of(tmp_path: Path, entry: str, **options: Any) -> Entry:
    return load_scenario(write(tmp_path, MINIMAL.replace("entry:\n  list: trial\n", f"entry: {entry}\n")), **options).entry


@pytest.mark.parametrize(
    ("entry", "trigger"),
    [
        ("{trigger: became_MQL}", EntryTrigger("stage_changed", stage="MQL")),
        ("{trigger: became_sql}", EntryTrigger("stage_changed", stage="SQL")),
        ("{trigger: BECAME_customer}", EntryTrigger("stage_changed", stage="customer")),
        ("{trigger: recycled}", EntryTrigger("stage_changed", stage="recycled")),
        ("{trigger: became_recycled}", EntryTrigger("stage_changed", stage="recycled")),
        ("{trigger: form_submitted}", EntryTrigger("form_submitted")),
        ("{trigger: form_submitted, form: demo-request}", EntryTrigger("form_submitted", form="demo-request")),
    ],
)
def test_entry_triggers(tmp_path: Path, entry: str, trigger: EntryTrigger) -> None:
    """Each trigger spelling compiles to its EntryTrigger, without a list of its own."""
    assert entry_of(tmp_path, entry) == Entry(list_name=None, where=None, trigger=trigger)


def test_a_trigger_may_have_a_where_filter(tmp_path: Path) -> None:
    """`where:` beside a trigger is kept as an extra filter, in either condition form."""
    entry = entry_of(tmp_path, "{trigger: became_MQL, where: 'country = JP'}")
    assert entry.where == AttributeTest("country", "equals", "JP") and entry.trigger is not None


def test_a_trigger_fires_on_its_change_only() -> None:
    """became_MQL fires on a move into MQL; a form trigger on a matching form name (globs, any case)."""
    became = EntryTrigger("stage_changed", stage="MQL")
    assert became.fires(stage_change=StageChange("lead", "MQL", "score 50 ≥ 50"))
    assert not became.fires(stage_change=StageChange("lead", "PQL", "x"))
    assert not became.fires(stage_change=StageChange("MQL", "MQL", "x"))
    assert not became.fires(form="demo")
    demo = EntryTrigger("form_submitted", form="demo-*")
    assert demo.fires(form="Demo-Request") and not demo.fires(form="newsletter") and not demo.fires()
    assert EntryTrigger("form_submitted").fires(form="") and str(demo) == "form_submitted (demo-*)"


def test_an_entry_list_named_in_segments_is_dynamic(tmp_path: Path) -> None:
    """load_scenario(segments=...) gives an entry list that names a dynamic list its rule."""
    rule = AttributeTest("score", "gte", 50)
    assert entry_of(tmp_path, "{list: hot}", segments={"hot": rule}) == Entry(list_name="hot", where=None, segment=rule)
    assert entry_of(tmp_path, "{list: trial}", segments={"hot": rule}).segment is None


@pytest.mark.parametrize(
    ("entry", "line", "field", "problem", "hint"),
    [
        ("{trigger: became_MQ}", 3, "entry.trigger", "unknown trigger 'became_MQ'", "did you mean 'became_MQL'?"),
        ("{trigger: became_lead}", 3, "entry.trigger", "unknown trigger 'became_lead'", None),
        ("{trigger: MQL}", 3, "entry.trigger", "unknown trigger 'MQL'", None),
        ("{trigger: [became_MQL]}", 3, "entry.trigger", "must be text, not a list", "e.g. trigger: became_MQL"),
        ("{trigger: }", 3, "entry.trigger", "has no value", "e.g. trigger: became_MQL"),
        ("{trigger: became_MQL, list: trial}", 3, "entry.list", "a trigger scenario takes no list", None),
        ("{trigger: became_MQL, form: demo}", 3, "entry.form", "form goes with trigger: form_submitted", None),
        ("{list: trial, form: demo}", 3, "entry.form", "form goes with trigger: form_submitted", None),
        ("{trigger: form_submitted, form: ''}", 3, "entry.form", "is empty", None),
        ("{trigger: became_MQL, where: {opened: any}}", 3, "entry.where", "an entry rule cannot test what a lead opened, clicked or was sent", None),
        ("{trigger: became_MQL, wehre: 'x = 1'}", 3, "entry.wehre", "unknown key 'wehre'", "did you mean 'where'?"),
    ],
)
def test_entry_trigger_mistakes(tmp_path: Path, entry: str, line: int, field: str, problem: str, hint: str | None) -> None:
    """A misspelt or misplaced trigger is refused at its line with a hint."""
    error = refused(write(tmp_path, MINIMAL.replace("entry:\n  list: trial\n", f"entry: {entry}\n")))
    assert (error.line, error.field, error.problem) == (line, field, problem)
    assert error.hint
    if hint is not None:
        assert error.hint == hint


def test_short_form_goal(tmp_path: Path) -> None:
    """`exit_when: "stage >= SQL"` is a goal reached by SQL and customer."""
    scenario = load_scenario(write(tmp_path, MINIMAL + 'exit_when: "stage >= SQL"\n'))
    assert scenario.exit_when == AttributeTest("stage", "gte", "SQL")


def documented(heading: str) -> list[str]:
    section = DOCS.read_text().split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```yaml\n(.*?)```", section, re.DOTALL)


def test_the_documented_trigger_scenario_loads(tmp_path: Path) -> None:
    """The entry-trigger example in docs/scenarios.md loads and triggers on MQL."""
    (example,) = [block for block in documented("Entry triggers") if block.startswith("name:")]
    scenario = load_scenario(write(tmp_path, example, "mql.yaml"), identities={"sales"})
    assert scenario.entry.trigger == EntryTrigger("stage_changed", stage="MQL")
    assert scenario.exit_when == AttributeTest("stage", "gte", "SAL")


def test_the_documented_lists_file_and_scenario_load(tmp_path: Path) -> None:
    """The dynamic-list examples in docs/scenarios.md load together: the scenario's list is dynamic."""
    lists, example = documented("Dynamic lists")
    write(tmp_path, lists, "lists.yaml")
    write(tmp_path, example, "hot.yaml")
    scenarios, errors = load_scenarios(tmp_path, identities={"marketing"})
    assert errors == [] and scenarios[0].entry.segment is not None


def test_the_documented_stages_mapping_reads(tmp_path: Path) -> None:
    """The stages: example in docs/scenarios.md reads into the rules it describes."""
    (block,) = documented("Lifecycle stages")
    read = parse_stage_rules(parse_yaml(block, file="scoring.yaml")["stages"], file="scoring.yaml")
    assert (read.sql_at_least, read.recycle_after, read.mqa_score) == (2, timedelta(days=90), 150)
    assert read.pql is not None and read.mql is not None
