"""The wheel carries every module and the example content, not just an editable checkout."""

from __future__ import annotations

import tomllib
from pathlib import Path

import mailer

ROOT = Path(mailer.__file__).resolve().parent.parent


def test_every_subpackage_is_listed_for_the_wheel() -> None:
    """pyproject.toml names each package explicitly: a new subpackage must be added there."""
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {
        ".".join(path.parent.relative_to(ROOT).parts)
        for path in (ROOT / "mailer").rglob("__init__.py")
    }
    assert found <= listed, f"add {sorted(found - listed)} to [tool.setuptools] packages"
