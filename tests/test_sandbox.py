"""LimitedSandbox: Jinja's sandbox with time, iteration and size limits."""

from __future__ import annotations

import time
from types import TracebackType

import jinja2
import pytest

from mailer.sandbox import LimitedSandbox, TemplateLimitError


def render(source: str, **context: object) -> str:
    return LimitedSandbox(undefined=jinja2.StrictUndefined).from_string(source).render(**context)


@pytest.mark.parametrize(
    "source",
    [
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        "{% set r = range(1000) %}{% for a in r %}{% for b in r %}{% endfor %}{% endfor %}",
        "{{ 'x' * 10**9 }}",
        "{{ 'x'.center(10**9) }}",
        "{{ 'x'|center(10**9) }}",
        "{{ range(100000)|join('x' * 100000) }}",
        "{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
        "{{ '%999999999d' % 1 }}",
        "{{ '%*d' % (10**9, 1) }}",
        "{{ '{:>999999999}'.format(1) }}",
        "{{ 10 ** (10 ** 7) }}",
        "{% for i in range(100000) %}{{ 'x' * 50000 }}{% endfor %}",
    ],
)
def test_a_runaway_template_stops_with_a_limit_error_at_once(source: str) -> None:
    """Loops, repetitions, widths, powers and output floods are refused within a fraction of a second."""
    began = time.monotonic()
    with pytest.raises(TemplateLimitError):
        render(source)
    assert time.monotonic() - began < 1.0


def test_the_deadline_stops_work_the_budgets_do_not_see() -> None:
    """A recursive loop that stays under the iteration budget still ends at the deadline."""

    class Quick(LimitedSandbox):
        max_seconds = 0.2

    source = "{% for x in range(60) recursive %}{% if loop.depth < 7 %}{{ loop(range(60)) }}{% endif %}{% endfor %}"
    began = time.monotonic()
    with pytest.raises(TemplateLimitError, match="0.2 s"):
        Quick().from_string(source).render()
    assert time.monotonic() - began < 0.6


def test_ordinary_templates_render_as_in_jinjas_own_sandbox() -> None:
    """Loops, filters, macros, formatting and big numbers as data render exactly as before."""
    source = (
        "{% macro row(item) %}<li>{{ item.name|title }}: {{ '{:,}'.format(item.revenue) }}</li>{% endmacro %}"
        "{% for item in items %}{{ row(item) }}{% else %}none{% endfor %}"
        "{{ items|map(attribute='name')|join(', ') }} {{ '%05.1f' % 3.14159 }} {{ 'ab' * 3 }} {{ 2 ** 64 }}"
        "{{ ('x' ~ 'y')|upper }} {{ loop_count|default(7) }} {{ '-' * 40 }}"
    )
    items = [{"name": "acme corp", "revenue": 12_500_000}, {"name": "初音", "revenue": 10**12}]
    expected = jinja2.sandbox.SandboxedEnvironment().from_string(source).render(items=items)
    assert render(source, items=items) == expected
    assert "12,500,000" in expected


def test_sandbox_escapes_stay_blocked() -> None:
    """What Jinja's sandbox refuses, LimitedSandbox refuses too, and lipsum is gone."""
    for source in ("{{ ''.__class__.__mro__ }}", "{{ cycler.__init__.__globals__ }}", '{{ "{0.__class__}".format(1) }}'):
        with pytest.raises(jinja2.exceptions.SecurityError):
            render(source)
    with pytest.raises(jinja2.exceptions.UndefinedError):
        render("{{ lipsum(n=10**6) }}")


def test_a_limit_error_names_the_template_line() -> None:
    """The error's traceback points at the template line, so the renderer reports file:line."""
    template = LimitedSandbox().from_string("ok\n\n{{ 'x' * 10**9 }}\n")
    with pytest.raises(TemplateLimitError) as caught:
        template.render()
    lines = [tb.tb_lineno for tb in _frames(caught.value.__traceback__) if tb.tb_frame.f_code.co_filename == "<template>"]
    assert lines == [3]


def test_each_render_has_its_own_budget() -> None:
    """Renders that each stay under the budget never add up to a refusal."""
    template = LimitedSandbox().from_string("{% for i in range(100000) %}{% endfor %}done")
    assert [template.render() for _ in range(5)] == ["done"] * 5


def _frames(traceback: TracebackType | None) -> list[TracebackType]:
    frames = []
    while traceback is not None:
        frames.append(traceback)
        traceback = traceback.tb_next
    return frames
