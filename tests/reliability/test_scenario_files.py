"""Malformed and hostile scenario files: each refused with file:line, the others keep running, memory bounded.

Broken YAML, wrong types, unknown keys, references that would make a cycle, missing or
escaping templates, unsafe YAML tags, alias bombs, deep nesting, huge files and bytes that
are no text. The loading runs in a child process so that its peak memory (ru_maxrss) is
its own.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from conftest import write_workspace
from mailer.testing import CaptureServer

from .harness import ONE_STEP, daemon_run

GOOD = ONE_STEP.replace("name: announce", "name: good")
STEPS = GOOD.split("steps:")[0] + "steps:\n"
# Nine levels of nine aliases each: 9**9 (387 million) strings once expanded.
LOL = 'a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n' + "".join(
    f"{name}: &{name} [{', '.join(['*' + previous] * 9)}]\n" for previous, name in zip("abcdefgh", "bcdefghi")
)
STEP = '  - id: s{n}\n    subject: "Hi"\n    template: one.html\n'

# file name -> (content, words the refusal must contain)
HOSTILE: dict[str, tuple[str | bytes, str]] = {
    "broken.yaml": ("name: x\nsteps: [\n  - id: a\n", "invalid YAML"),
    "tabs.yaml": (GOOD.replace("  list: signups", "\tlist: signups"), "tabs"),
    "name_is_a_list.yaml": (GOOD.replace("name: good", "name: [a, b]"), "must be text"),
    "steps_is_text.yaml": (STEPS.replace("steps:\n", 'steps: "hello"\n'), "must be a list"),
    "wait_is_a_list.yaml": (GOOD.replace("wait: 0m", "wait: [1]"), "must be a duration"),
    "unknown_top_key.yaml": (GOOD.replace("name: good", "nmae: good"), "unknown key 'nmae'"),
    "unknown_step_key.yaml": (GOOD.replace("subject:", "subjet:"), "unknown key 'subjet'"),
    "step_refers_to_itself.yaml": (GOOD.replace("wait: 0m", "wait: 0m\n    condition: {opened: only}"), "which is this step"),
    "step_refers_ahead.yaml": (
        GOOD.replace("wait: 0m", "wait: 0m\n    condition: {opened: two}") + STEP.replace("s{n}", "two"), "comes after this step"
    ),
    "alias_cycle.yaml": (GOOD + "description: &loop [*loop]\n", "anchors and aliases"),
    "billion_laughs.yaml": (LOL, "anchors and aliases"),
    "merge_key.yaml": (GOOD + "reentry: {<<: {after: 30d}}\n", "merge keys"),
    "missing_template.yaml": (GOOD.replace("one.html", "nope.html"), "does not exist"),
    "template_outside.yaml": (GOOD.replace("one.html", "../mailer.key"), "not a file name under templates/"),
    "template_absolute.yaml": (GOOD.replace("one.html", "/etc/passwd"), "not a file name under templates/"),
    "python_object.yaml": (GOOD.replace('"News for {{ lead.first_name }}"', '!!python/object/apply:os.system ["touch PWNED"]'), "!!python/object/apply"),
    "python_name.yaml": (GOOD.replace('"News for {{ lead.first_name }}"', "!!python/name:os.system"), "!!python/name"),
    "custom_tag.yaml": (GOOD.replace("template: one.html", "template: !include /etc/passwd"), "!include"),
    "binary_tag.yaml": (GOOD + "description: !!binary aGVsbG8=\n", "!!binary"),
    "deep_nesting.yaml": ("name: " + "[" * 200_000 + "]" * 200_000 + "\n", "nested too deeply"),
    "huge.yaml": (GOOD + "# " + "x" * (2 * 1024 * 1024) + "\n", "larger than 1 MiB"),
    "near_the_limit.yaml": ("".join([STEPS] + [STEP.format(n=n) for n in range(17_000)]) + "    subjet: typo\n", "unknown key 'subjet'"),
    "huge_number.yaml": (GOOD.replace("wait: 0m", "wait: " + "9" * 5000), "not a valid int"),
    "not_utf8.yaml": (GOOD.encode().replace(b"News", b"N\xe9ws"), "not UTF-8"),
    "nul_byte.yaml": (GOOD.replace("News", "N\x00ews"), "U+0000"),
    "empty.yaml": ("", "empty"),
    "two_documents.yaml": (GOOD + "---\n" + GOOD, "more than one YAML document"),
    "duplicate_key.yaml": (GOOD + "name: again\n", "duplicate key 'name'"),
    "top_level_list.yaml": ("- a\n- b\n", "must hold a mapping"),
    "subject_syntax.yaml": (GOOD.replace("{{ lead.first_name }}", "{{ lead.first_name "), "invalid template syntax"),
    "unknown_zone.yaml": (GOOD + "timezone: Mars/Olympus\n", "unknown time zone"),
    "bad_duration.yaml": (GOOD.replace("wait: 0m", "wait: -5d"), "not a duration"),
}
# Loading in a child, file by file: the refusal, the time and the peak memory of each (the
# kernel's high-water mark, reset before each file through /proc/self/clear_refs).
LOADER = """
import json, sys, time
from pathlib import Path
from mailer.scenario import load_scenario
from mailer.errors import ScenarioError

def kb(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])

root = Path(sys.argv[1])
for path in sorted((root / "scenarios").iterdir()):
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # VmHWM back to the current resident size
    before = kb("VmRSS")
    began = time.perf_counter()
    result = {"file": path.name}
    try:
        result["loaded"] = load_scenario(path, identities={"default"}, templates_dir=root / "templates").name
    except ScenarioError as error:
        result.update(error_file=error.file, line=error.line, rendered=error.render())
    result.update(seconds=time.perf_counter() - began, peak_kb=kb("VmHWM") - before)
    print(json.dumps(result), flush=True)
"""
# A file just under the 1 MiB cap costs about a hundred megabytes while PyYAML holds its
# node graph; an alias bomb or deep nesting must cost next to nothing.
MEMORY_BOUND_MB = 160
SMALL_FILE_BOUND_MB = 8


def _write(root: Path, files: dict[str, tuple[str | bytes, str]]) -> None:
    write_workspace(root, GOOD)
    for name, (content, _) in files.items():
        path = root / "scenarios" / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")


def test_each_hostile_file_is_refused_on_its_line_and_the_good_one_loads(tmp_path: Path, figures: Callable[[str], None]) -> None:
    """Every hostile file is one error naming file:line and why; the good scenario loads; memory stays bounded."""
    _write(tmp_path, HOSTILE)
    child = subprocess.run(
        [sys.executable, "-c", LOADER, str(tmp_path)], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert child.returncode == 0, child.stderr
    results = {r["file"]: r for r in map(json.loads, child.stdout.splitlines())}
    assert results.pop("main.yaml").get("loaded") == "good"
    assert set(results) == set(HOSTILE), set(HOSTILE) ^ set(results)
    for name, (_, words) in HOSTILE.items():
        result = results[name]
        line, rendered = result.get("line"), result.get("rendered", f"loaded as {result.get('loaded')!r}")
        assert isinstance(line, int) and line >= 1, f"{name}: no line in {rendered!r}"
        assert rendered.startswith(f"scenarios/{name}:{line}: "), rendered  # the child runs in tmp_path: relative
        assert words in rendered, f"{name}: {rendered!r}"
        bound = MEMORY_BOUND_MB if len(HOSTILE[name][0]) > 100_000 else SMALL_FILE_BOUND_MB
        assert result["peak_kb"] / 1024 < bound, f"{name}: {result['peak_kb'] / 1024:.1f} MB"
    assert not (tmp_path / "PWNED").exists(), "a YAML tag ran code"
    heaviest = max(results.values(), key=lambda r: r["peak_kb"])
    slowest = max(results.values(), key=lambda r: r["seconds"])
    figures(
        f"S1 hostile-scenarios: files={len(HOSTILE)} refused_with_file_line={len(results)} good_loaded=1 code_run=0 "
        f"heaviest={heaviest['file']}:{heaviest['peak_kb'] / 1024:.0f}MB slowest={slowest['file']}:{slowest['seconds']:.2f}s "
        f"billion_laughs={results['billion_laughs.yaml']['seconds'] * 1000:.1f}ms/{results['billion_laughs.yaml']['peak_kb'] / 1024:.1f}MB "
        f"deep_nesting={results['deep_nesting.yaml']['seconds']:.2f}s/{results['deep_nesting.yaml']['peak_kb'] / 1024:.1f}MB "
        f"huge_2MiB={results['huge.yaml']['seconds'] * 1000:.1f}ms"
    )


async def test_the_daemon_keeps_sending_the_good_scenario_beside_hostile_files(
    tmp_path: Path, smtp_server: CaptureServer, figures: Callable[[str], None]
) -> None:
    """With every hostile file (but the slow near-limit one) beside it, the good scenario's messages all go out."""
    hostile = {name: item for name, item in HOSTILE.items() if name != "near_the_limit.yaml"}
    _write(tmp_path, hostile)  # daemon_run then writes the good one, `announce`, as main.yaml
    leads = 30
    async with daemon_run(tmp_path, smtp_server, leads=leads) as run:
        await run.drive()
        errors = {Path(str(e.file)).name for e in run.daemon.scenario_errors}
        scenarios = sorted(run.daemon.scenarios)
    assert scenarios == ["announce"]
    assert errors == set(hostile), set(hostile) ^ errors
    assert run.states() == {"sent": leads} and len(smtp_server.message_ids) == leads
    figures(f"S2 hostile-beside-good: hostile_files={len(hostile)} paused={len(errors)} good_scenario_sent={leads}/{leads}")
