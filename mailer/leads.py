"""A lead: a person with an email address, profile attributes, a source and a stage."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

# The profile fields a lead has as columns; every other CSV column or API field is a free
# attribute kept as JSON.
LEAD_FIELDS = ("email", "first_name", "last_name", "company", "job_title", "timezone", "source")

_EMPTY: Mapping[str, Any] = MappingProxyType({})

# Han, Hiragana, Katakana and Hangul: the scripts whose names put the family name first.
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")


def _is_cjk(name: str) -> bool:
    return bool(name) and bool(_CJK.search(name))


@dataclass(frozen=True)
class Lead:
    """A lead as the engine sees it; `email` is normalized (see mailer.csvimport)."""

    email: str
    first_name: str = ""
    last_name: str = ""
    company: str = ""
    job_title: str = ""
    timezone: str | None = None  # IANA name; None means the scenario's default
    source: str | None = None
    attributes: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    stage: str = "lead"
    id: int | None = None
    # kept by mailer.scoringengine from the lead's events and profile (see mailer.scoremodel)
    score: int = 0
    product_score: int = 0
    grade: str = ""  # A … D, F; "" until graded

    @property
    def account_domain(self) -> str:
        """The company domain the lead belongs to (its address's domain)."""
        return self.email.rpartition("@")[2]

    @property
    def display_name(self) -> str:
        """The name to put in a To header: "First Last", or "" when unknown.

        Japanese, Chinese and Korean names are written family name first ("山田 太郎").
        """
        parts = (self.first_name, self.last_name)
        if _is_cjk(self.first_name) and _is_cjk(self.last_name):
            parts = (self.last_name, self.first_name)
        return " ".join(part for part in parts if part)

    def template_context(self) -> dict[str, Any]:
        """What `{{ lead.* }}` sees in a template: the fields plus the free attributes.

        Fields win over attributes of the same name, so a CSV column cannot shadow
        `lead.email`.
        """
        context: dict[str, Any] = dict(self.attributes)
        context.update(
            email=self.email,
            first_name=self.first_name,
            last_name=self.last_name,
            company=self.company,
            job_title=self.job_title,
            timezone=self.timezone,
            source=self.source,
            stage=self.stage,
            score=self.score,
            grade=self.grade,
            name=self.display_name,
        )
        return context
