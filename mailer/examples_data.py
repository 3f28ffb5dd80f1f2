"""Where the example scenario, templates and sample leads are, installed or in a checkout.

A wheel carries them inside the package (`mailer/examples/`, mapped in pyproject.toml); a
source checkout or an editable install reads them from the repository's own `scenarios/`,
`templates/` and `examples/`, so there is one copy of each file.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import mailer


@dataclass(frozen=True)
class Examples:
    scenarios: Path
    templates: Path
    leads_csv: Path


def examples() -> Examples:
    package = Path(mailer.__file__).resolve().parent
    packaged = package / "examples"
    if (packaged / "scenarios").is_dir():
        return Examples(packaged / "scenarios", packaged / "templates", packaged / "leads.csv")
    root = package.parent
    return Examples(root / "scenarios", root / "templates", root / "examples" / "leads.csv")


def copy_examples(directory: Path) -> list[Path]:
    """Copy the examples into a workspace where its folders do not exist yet."""
    found = examples()
    written = []
    for source, target in ((found.scenarios, directory / "scenarios"), (found.templates, directory / "templates")):
        if not target.exists():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "__init__.py"))
            written.append(target)
    leads = directory / "leads.csv"
    if not leads.exists():
        shutil.copyfile(found.leads_csv, leads)
        written.append(leads)
    return written
