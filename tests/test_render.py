"""The renderer: CSS inlined once per template version equals inlining every message."""

from __future__ import annotations

import os
import time
from pathlib import Path

from datetime import datetime, timezone
from typing import Any

import pytest
from lxml import html as lxml_html

from mailer.compose import context_for
from mailer.csvimport import read_leads_csv
from mailer.examples_data import examples
from mailer.leads import Lead
from mailer.linkrewrite import MessageLinks, track_anchors
from mailer.links import Links
from mailer.render import CompiledStep, Renderer, inline_css
from mailer.scenario import load_scenarios
from mailer.tokens import Signer

LINKS = Links(Signer([b"k" * 40]), "https://t.acme.example")
SENT = datetime(2026, 1, 5, 9, 0, tzinfo=timezone.utc)

Tree = list[tuple[str, tuple[tuple[str, str], ...], str, str]]


def document(markup: str) -> Tree:
    """A document as tags, attributes and text, white space folded: what a mail client shows."""
    root = lxml_html.document_fromstring(markup)
    return [
        (
            str(element.tag),
            tuple(sorted((k, " ".join(v.split())) for k, v in element.attrib.items())),
            " ".join((element.text or "").split()),
            " ".join((element.tail or "").split()),
        )
        for element in root.iter()
        if isinstance(element.tag, str)
    ]


def shipped_steps() -> list[tuple[str, str, str | None, str]]:
    found = examples()
    scenarios, errors = load_scenarios(found.scenarios, templates_dir=found.templates)
    assert not errors
    return [(s.name, step.template, step.text_template, step.subject) for s in scenarios for step in s.steps]


def sample_leads() -> list[Lead]:
    leads = list(read_leads_csv(examples().leads_csv).leads)
    leads.append(Lead(email="hostile@example.com", first_name="<b>Eve</b> & \"Co\"", company="</p><script>x()</script>"))
    return leads


def per_message(renderer: Renderer, compiled: CompiledStep, template: str, context: dict[str, Any], links: MessageLinks | None) -> str:
    """The naive way: render the author's template, track its links, premailer on this message."""
    html = inline_css(track_anchors(renderer.html_env.get_template(template).render(context), links))
    return links.decorate_html(html, footer=not compiled.html_unsubscribe) if links is not None else html


@pytest.mark.parametrize("tracked", [True, False], ids=["tracked", "untracked"])
@pytest.mark.parametrize("template", sorted({t for _, t, _, _ in shipped_steps()}))
def test_inline_once_equals_per_message_inlining_for_every_shipped_template(template: str, tracked: bool) -> None:
    """For each shipped template and sample lead, the cached inlined render, links tracked or not, is the same document as premailer on that message."""
    renderer = Renderer(examples().templates)
    compiled = renderer.step(subject="s", template=template, text_template=None)
    assert compiled.inline_each is None, "shipped templates take the fast path"
    scenarios, _ = load_scenarios(examples().scenarios, templates_dir=examples().templates)
    scenario, step = next((sc, st) for sc in scenarios for st in sc.steps if st.template == template)
    for row, lead in enumerate(sample_leads()):
        def links() -> MessageLinks | None:
            return MessageLinks(LINKS, message=row, sent_at=SENT, list_name="trial-signups") if tracked else None

        once_links = links()
        context = context_for(lead, scenario, step, unsubscribe_url=once_links.unsubscribe_url if once_links else "")
        once = compiled.render(context, once_links).html
        assert document(once) == document(per_message(renderer, compiled, template, context, links())), lead.email
        assert ("https://t.acme.example/c/" in once) is tracked
        assert "data-tag" not in once


def write(directory: Path, name: str, text: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_text(text, encoding="utf-8")


LAYOUT = '<html><head><style>p { color: red; } .x { font-weight: bold; }</style></head><body>{% block body %}{% endblock %}</body></html>'


def test_derived_text_part_is_personalized_plain_text(tmp_path: Path) -> None:
    """Without a .txt template the text part comes from the HTML: values, link targets, no tags or CSS."""
    write(tmp_path, "layout.html", LAYOUT)
    write(tmp_path, "step.html", '{% extends "layout.html" %}{% block body %}<p class="x">Hi {{ lead.first_name }} &amp; team</p>'
          '<ul>{% for item in items %}<li>{{ item }}</li>{% endfor %}</ul><a href="https://example.com/{{ lead.id }}">Read</a>{% endblock %}')
    compiled = Renderer(tmp_path).step(subject="Hello {{ lead.first_name }}", template="step.html", text_template=None)
    parts = compiled.render({"lead": {"first_name": "山田 <太郎>", "id": "42"}, "items": ["one", "two"]})
    assert "Hi 山田 <太郎> & team" in parts.text, "text is not HTML-escaped"
    assert "one" in parts.text and "two" in parts.text
    assert "https://example.com/42" in parts.text
    assert "<p" not in parts.text and "color" not in parts.text
    assert "山田 &lt;太郎&gt;" in parts.html
    assert 'style="' in parts.html
    assert parts.subject == "Hello 山田 <太郎>"


def test_a_loop_over_table_rows_keeps_its_rows_in_both_parts(tmp_path: Path) -> None:
    """Rows made by a loop inside <table> are styled in HTML and listed in the text part."""
    write(tmp_path, "step.html", "<html><head><style>td { padding: 4px; }</style></head><body><table>\n"
          "{% for row in rows %}\n<tr><td>{{ row }}</td></tr>\n{% endfor %}\n</table></body></html>")
    compiled = Renderer(tmp_path).step(subject="s", template="step.html", text_template=None)
    parts = compiled.render({"rows": ["alpha", "beta"]})
    assert parts.html.count('<td style="padding:4px">') == 2
    assert "alpha" in parts.text and "beta" in parts.text


def test_undefined_variable_raises_instead_of_rendering_blank(tmp_path: Path) -> None:
    """Strict undefined: a misspelt variable is an error, never an empty string."""
    write(tmp_path, "step.html", "<p>{{ lead.frist_name }}</p>")
    compiled = Renderer(tmp_path).step(subject="s", template="step.html", text_template=None)
    with pytest.raises(Exception, match="frist_name"):
        compiled.render({"lead": {"first_name": "A"}})


def test_sandbox_blocks_python_internals(tmp_path: Path) -> None:
    """A template cannot reach Python internals through attribute access."""
    write(tmp_path, "step.html", "<p>{{ lead.__class__.__mro__[1].__subclasses__() }}</p>")
    compiled = Renderer(tmp_path).step(subject="s", template="step.html", text_template=None)
    with pytest.raises(Exception):
        compiled.render({"lead": {"first_name": "A"}})


def test_a_variable_in_a_style_rule_is_inlined_into_each_element(tmp_path: Path) -> None:
    """`{{ brand }}` inside a CSS rule lands in the style of every element the rule matches."""
    write(tmp_path, "step.html", "<html><head><style>p { color: {{ brand }}; }</style></head><body><p>a</p><p>b</p></body></html>")
    compiled = Renderer(tmp_path).step(subject="s", template="step.html", text_template=None)
    assert compiled.render({"brand": "#123456"}).html.count('style="color:#123456"') == 2


def test_a_tag_that_inlining_would_drop_falls_back_to_inlining_each_message(tmp_path: Path) -> None:
    """An `{% if %}` inside <style> cannot be inlined once: that template is inlined per message, correctly."""
    write(tmp_path, "step.html", "<html><head><style>{% if dark %}p { color: white; }{% endif %}</style></head><body><p>x</p></body></html>")
    compiled = Renderer(tmp_path).step(subject="s", template="step.html", text_template=None)
    assert compiled.inline_each is not None
    assert 'style="color:white"' in compiled.render({"dark": True}).html
    assert "color" not in compiled.render({"dark": False}).html


@pytest.mark.parametrize(
    "body",
    [
        '<p {% if lead.vip %}class="a"{% endif %}>hello</p>',
        '<p class="{{ lead.tier }}">hello</p>',
        '{% macro button(t) %}<a class="a" href="#">{{ t }}</a>{% endmacro %}<p>{{ button("go") }}</p>',
    ],
    ids=["conditional-attribute", "class-from-a-variable", "macro"],
)
def test_templates_whose_selectors_vary_per_lead_equal_per_message_inlining(tmp_path: Path, body: str) -> None:
    """Conditional attributes, variable classes and macros: the output equals premailer on each message."""
    write(tmp_path, "step.html", f"<html><head><style>.a {{ color: red; }}</style></head><body>{body}</body></html>")
    renderer = Renderer(tmp_path)
    compiled = renderer.step(subject="s", template="step.html", text_template=None)
    for lead in ({"vip": True, "tier": "a"}, {"vip": False, "tier": "b"}):
        context = {"lead": lead}
        expected = inline_css(renderer.html_env.get_template("step.html").render(context))
        assert document(compiled.render(context).html) == document(expected)


def test_raw_blocks_stay_literal(tmp_path: Path) -> None:
    """`{% raw %}` content is sent as written, not evaluated, through flattening and inlining."""
    write(tmp_path, "layout.html", LAYOUT)
    write(tmp_path, "step.html", '{% extends "layout.html" %}{% block body %}<p>{% raw %}{{ not_a_variable }}{% endraw %} {{ lead.first_name }}</p>{% endblock %}')
    compiled = Renderer(tmp_path).step(subject="s", template="step.html", text_template=None)
    parts = compiled.render({"lead": {"first_name": "Ann"}})
    assert "{{ not_a_variable }} Ann" in parts.html


def test_an_edited_template_is_compiled_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A changed template file gives a new compiled version; an unchanged one is reused."""
    write(tmp_path, "step.html", "<p>one {{ lead.first_name }}</p>")
    renderer = Renderer(tmp_path)
    first = renderer.step(subject="s", template="step.html", text_template=None)
    assert renderer.step(subject="s", template="step.html", text_template=None) is first
    write(tmp_path, "step.html", "<p>two {{ lead.first_name }}</p>")
    os.utime(tmp_path / "step.html", (time.time() + 10, time.time() + 10))
    monkeypatch.setattr("mailer.render.RECHECK_SECONDS", 0.0)
    second = renderer.step(subject="s", template="step.html", text_template=None)
    assert second is not first
    assert "two Ann" in second.render({"lead": {"first_name": "Ann"}}).html


def test_a_csv_column_named_like_a_dict_method_is_the_value(tmp_path: Path) -> None:
    """`lead.items` means the lead's `items` attribute, not the dict method."""
    write(tmp_path, "step.html", "<p>{{ lead.items }}</p>")
    compiled = Renderer(tmp_path).step(subject="s", template="step.html", text_template=None)
    assert "3 chairs" in compiled.render({"lead": {"items": "3 chairs"}}).html
