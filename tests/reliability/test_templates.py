"""Malicious templates: sandbox escapes are blocked, runaway templates are stopped by time and size limits.

Each template is rendered through the real Renderer in a child process (render_child.py),
under a watchdog (a 2 s alarm and an address-space cap) that only says whether the renderer
stopped the template itself.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


REPOSITORY = Path(__file__).resolve().parents[2]
CHILD = Path(__file__).with_name("render_child.py")

# Known ways out of Jinja's sandbox, and attempts to read the process, its config or files.
ESCAPES = {
    "mro.html": "{{ ''.__class__.__mro__ }}",
    "subclasses.html": "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "cycler_globals.html": "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    "joiner_globals.html": "{{ joiner.__init__.__globals__ }}",
    "namespace_globals.html": "{{ namespace.__init__.__globals__ }}",
    "lipsum_globals.html": "{{ lipsum.__globals__['os'].environ }}",
    "range_globals.html": "{{ range.__globals__ }}",
    "template_reference.html": "{{ self._TemplateReference__context }}",
    "self_init.html": "{{ self.__init__.__globals__ }}",
    "format_attribute.html": '{{ "{0.__class__}".format(lead) }}',
    "format_map.html": '{{ "{x.__class__.__base__}".format_map({"x": lead}) }}',
    "attr_filter.html": "{{ lead|attr('__class__') }}",
    "attr_filter_chain.html": "{{ (lead|attr('__class__')|attr('__mro__')) }}",
    "method_self.html": "{{ lead.items.__self__ }}",
    "getitem_dunder.html": "{{ lead['__class__'] }}",
    "config.html": "{{ config }}",
    "config_items.html": "{{ config.items() }}",
    "request_environ.html": "{{ request.environ }}",
    "os_environ.html": "{{ os.environ }}",
    "environ.html": "{{ environ['HOME'] }}",
    "import.html": "{% import 'os' as os %}{{ os }}",
    "include_key.html": "{% include '../mailer.key' %}",
    "include_passwd.html": "{% include '/etc/passwd' %}",
    "extends_outside.html": "{% extends '../../etc/passwd' %}",
}
# Templates that would run for ever or fill memory without limits of the renderer's own.
RUNAWAYS = {
    "range_huge.html": "{% for i in range(10**9) %}x{% endfor %}",
    "nested_loops.html": "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "prebuilt_range.html": "{% set r = range(100000) %}{% for a in r %}{% for b in r %}{% endfor %}{% endfor %}",
    "macro_fan_out.html": "{% macro m(n) %}{% for i in range(60) %}{{ m(n + 1) if n < 6 }}{% endfor %}{% endmacro %}{{ m(0) }}",
    "recursive_loop.html": "{% for x in range(60) recursive %}{% if loop.depth < 7 %}{{ loop(range(60)) }}{% endif %}{% endfor %}",
    "repeat_string.html": "{{ 'x' * 10**9 }}",
    "repeat_list.html": "{{ ([1] * 10**9)|length }}",
    "center.html": "{{ 'x'.center(10**9) }}",
    "center_filter.html": "{{ 'x'|center(10**9) }}",
    "join_product.html": "{{ range(100000)|join('x' * 100000) }}",
    "replace_product.html": "{% set s = 'x' * 50000 %}{{ s|replace('x', s) }}",
    "doubling_concat.html": "{% set ns = namespace(s='xxxxxxxxxx') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}",
    "percent_width.html": "{{ '%999999999d' % 1 }}",
    "format_width.html": "{{ '{:>999999999}'.format(1) }}",
    "output_flood.html": "{% for i in range(100000) %}{{ 'x' * 50000 }}{% endfor %}",
    "huge_power.html": "{{ 10 ** (10 ** 7) > 1 }}",
}
SHIPPED = ["welcome.html", "case_study.html", "webinar.html", "demo_offer.html"]
RUNAWAY_REASON = (
    "mailer.render's TemplateEnvironment is Jinja's plain SandboxedEnvironment: no deadline, no loop "
    "budget and no size caps, so nested loops run until the watchdog and 'x' * 10**9 fills memory. "
    "mailer/sandbox.py's LimitedSandbox stops all of them (next test); render.py adopts it with "
    "`class TemplateEnvironment(LimitedSandbox)`"
)


def _render(tmp_path: Path, mode: str, payloads: dict[str, str]) -> dict[str, dict[str, Any]]:
    templates = tmp_path / mode
    shutil.copytree(REPOSITORY / "templates", templates)
    (tmp_path / "mailer.key").write_text("secret\n")
    (tmp_path / f"{mode}.json").write_text(json.dumps(payloads))
    child = subprocess.run(
        [sys.executable, str(CHILD), mode, str(templates), str(tmp_path / f"{mode}.json")],
        capture_output=True, text=True, timeout=120, cwd=REPOSITORY,
    )
    results = {r["name"]: r for r in map(json.loads, child.stdout.splitlines())}
    assert set(results) == set(payloads), child.stderr[-3000:]
    return results


def _summary(results: dict[str, dict[str, Any]]) -> str:
    counts: dict[str, int] = {}
    for result in results.values():
        counts[result["outcome"]] = counts.get(result["outcome"], 0) + 1
    slowest = max(results.values(), key=lambda r: r["seconds"])
    return " ".join(f"{k}={v}" for k, v in sorted(counts.items())) + f" slowest={slowest['name']}:{slowest['seconds']:.2f}s"


def test_known_sandbox_escapes_are_blocked(tmp_path: Path, figures: Callable[[str], None]) -> None:
    """Every known Jinja sandbox escape and every attempt to read config, environment or files is refused."""
    results = _render(tmp_path, "current", ESCAPES)
    rendered = {name: r["detail"] for name, r in results.items() if r["outcome"] != "blocked"}
    assert rendered == {}
    figures(f"M1 template-escapes: templates={len(ESCAPES)} escaped=0 {_summary(results)}")



def test_runaway_templates_are_stopped_by_the_renderer(tmp_path: Path, figures: Callable[[str], None]) -> None:
    """Runaway loops and huge outputs are stopped by the renderer's own time and size limits."""
    results = _render(tmp_path, "current", RUNAWAYS)
    unstopped = sorted(name for name, r in results.items() if r["outcome"] in ("watchdog", "memory", "rendered"))
    figures(f"M2 runaway-templates (current renderer): templates={len(RUNAWAYS)} unstopped={len(unstopped)} {_summary(results)}")
    assert unstopped == [], f"not stopped by the renderer: {unstopped}"


def test_the_limited_sandbox_stops_every_runaway_and_renders_shipped_templates_unchanged(
    tmp_path: Path, figures: Callable[[str], None]
) -> None:
    """With LimitedSandbox adopted, every escape stays blocked, every runaway is stopped in time, shipped templates render identically."""
    legit = {name: "" for name in SHIPPED}  # "" keeps the shipped file
    before = _render(tmp_path / "a", "current", legit)
    after = _render(tmp_path / "b", "limited", {**legit, **ESCAPES, **RUNAWAYS})
    for name in SHIPPED:
        assert before[name]["outcome"] == after[name]["outcome"] == "rendered", (before[name], after[name])
        assert before[name]["detail"] == after[name]["detail"], f"{name} renders differently under the limits"
    assert {n: r["outcome"] for n, r in after.items() if n in ESCAPES and r["outcome"] != "blocked"} == {}
    stopped = {n: r for n, r in after.items() if n in RUNAWAYS}
    assert {n: r["outcome"] for n, r in stopped.items() if r["outcome"] not in ("limited", "blocked")} == {}
    assert max(r["seconds"] for r in stopped.values()) < 1.5
    figures(
        f"M3 runaway-templates (LimitedSandbox): templates={len(RUNAWAYS)} stopped={len(stopped)} "
        f"escapes_blocked={len(ESCAPES)} shipped_unchanged={len(SHIPPED)} {_summary(stopped)}"
    )
