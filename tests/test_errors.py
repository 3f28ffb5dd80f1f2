"""How a user's mistake is rendered: the one line the CLI prints."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailer.errors import ConfigError, ScenarioError, UserError


def test_a_file_under_the_current_folder_is_named_relative_to_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file below the working directory renders as a relative path, like the README's examples."""
    monkeypatch.chdir(tmp_path)
    error = ScenarioError("'2x' is not a duration", file=str(tmp_path / "scenarios" / "x.yaml"), line=23, field="steps[1].wait")
    assert error.render() == "scenarios/x.yaml:23: steps[1].wait: '2x' is not a duration"
    assert str(error) == error.render()


def test_a_file_outside_the_current_folder_keeps_its_absolute_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file elsewhere is named by its absolute path: a relative one with ../ is harder to read."""
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    elsewhere = tmp_path / "there" / "mailer.toml"
    error = ConfigError("unknown key", file=str(elsewhere), line=3, field="relay.prot", hint="did you mean relay.port?")
    assert error.render() == f"{elsewhere}:3: relay.prot: unknown key — did you mean relay.port?"


def test_a_relative_file_and_no_file_render_as_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A path already relative is kept, and an error without a file starts at its field."""
    monkeypatch.chdir(tmp_path)
    assert UserError("missing", file="mailer.toml", field="relay.host").render() == "mailer.toml: relay.host: missing"
    assert UserError("no bounce #3", field="id", hint="see `mailer bounces list`").render() == (
        "id: no bounce #3 — see `mailer bounces list`"
    )


def test_the_rendering_follows_a_file_named_later(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An error raised by a server that knows its field gets its file when the CLI names it."""
    monkeypatch.chdir(tmp_path)
    error = ConfigError("127.0.0.1:8080 is in use", field="tracking.listen")
    error.file = str(tmp_path / "mailer.toml")
    assert str(error) == "mailer.toml: tracking.listen: 127.0.0.1:8080 is in use"


def test_from_the_root_folder_or_through_dotdot_a_path_keeps_its_absolute_form(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A service run from / keeps /etc/... (not etc/...), and a path that climbs out with .. is not shown as below."""
    monkeypatch.chdir("/")
    assert ScenarioError("bad", file="/etc/mailer/scenarios/x.yaml", line=3).render() == "/etc/mailer/scenarios/x.yaml:3: bad"
    monkeypatch.chdir(tmp_path)
    climbing = f"{tmp_path}/a/../../etc/passwd"
    assert ScenarioError("bad", file=climbing).render() == f"{climbing}: bad"
