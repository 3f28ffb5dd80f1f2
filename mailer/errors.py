"""The errors mailer raises.

    MailerError
    ├── UserError                 a mistake in the user's input: one line, exit code 2
    │   ├── ConfigError           mailer.toml
    │   ├── ScenarioError         scenarios/*.yaml
    │   ├── ScoringError          scenarios/scoring.yaml (scoring, grading and stage rules)
    │   ├── TemplateError         templates/* (syntax, undefined variables, inlining)
    │   └── LeadImportError       a CSV file that cannot be imported at all
    ├── HeaderInjectionError      a personalized header value carries CR, LF or NUL
    └── StateError                a message state change that the lifecycle table forbids

A `UserError` carries where the problem is (file, line, field), what it is and what to do,
and renders as ``file:line: field: problem — hint``, the one line the CLI prints. A file under
the current directory is named relative to it (``scenarios/welcome.yaml:23``), as the user
would type it; one elsewhere keeps its absolute path.
"""

from __future__ import annotations

from pathlib import Path


class MailerError(Exception):
    """Base of every error mailer raises on purpose."""


class UserError(MailerError):
    """A mistake in the user's input, reported as one line and exit code 2."""

    def __init__(
        self,
        problem: str,
        *,
        file: str | None = None,
        line: int | None = None,
        field: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.problem = problem
        self.file = file
        self.line = line
        self.field = field
        self.hint = hint
        super().__init__(self.render())

    def render(self) -> str:
        where = ""
        if self.file is not None:
            shown = _as_typed(self.file)
            where = shown if self.line is None else f"{shown}:{self.line}"
            where += ": "
        field = f"{self.field}: " if self.field else ""
        hint = f" — {self.hint}" if self.hint else ""
        return f"{where}{field}{self.problem}{hint}"

    def __str__(self) -> str:
        # rendered when shown: a path is named relative to the folder the user is in then
        return self.render()


def _as_typed(file: str) -> str:
    """`file` relative to the current directory when it lies below it, else as given."""
    path = Path(file)
    if not path.is_absolute():
        return file
    try:
        here = Path.cwd()
        below = path.relative_to(here)
    except (ValueError, OSError):  # elsewhere, or the current directory is gone
        return file
    # From / (a service's usual folder) every path is "below": it keeps its leading slash; and
    # relative_to is textual, so a path climbing out with .. is not below at all.
    if here == Path(here.anchor) or ".." in below.parts or not below.parts:
        return file
    return str(below)


class ConfigError(UserError):
    """mailer.toml is unreadable, has an unknown key or a value of the wrong type."""


class ScenarioError(UserError):
    """A scenario file is malformed or refers to something that does not exist."""


class ScoringError(UserError):
    """scenarios/scoring.yaml is malformed: a scoring, grading or stage rule cannot be read."""


class TemplateError(UserError):
    """A template does not compile, uses an undefined variable or cannot be inlined."""


class LeadImportError(UserError):
    """A CSV file cannot be imported at all (unreadable, no email column)."""


class HeaderInjectionError(MailerError):
    """A personalized header value carries CR, LF or NUL and would inject a header."""

    def __init__(self, header: str, value: str) -> None:
        self.header = header
        self.value = value
        super().__init__(f"{header}: value {value!r} contains CR, LF or NUL")


class StateError(MailerError):
    """A message state change that the lifecycle table does not allow."""
