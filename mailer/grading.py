"""A lead's grade: how well its profile fits, from A (best) to F, and which rules said so.

Grading is the other half of lead qualification beside the behaviour score: a very active
student and a silent CTO at a target account are different leads. Each grading rule whose
condition holds for the lead's profile adds its points; the grade is the best band whose
least points the sum reaches (by default A 80, B 60, C 40, D 20), and F below the last.
"""

from __future__ import annotations

from collections.abc import Sequence

from mailer.conditions import Engagement
from mailer.leads import Lead
from mailer.scoremodel import GradeResult
from mailer.scoringrules import GradeRule

# Grading rules test the profile only (mailer.scoringrules refuses engagement tests), so
# they are evaluated as for a lead that has done nothing in any scenario.
_NO_ENGAGEMENT = Engagement()


def grade(lead: Lead, rules: Sequence[GradeRule], bands: Sequence[tuple[str, float]]) -> GradeResult:
    """The grade of `lead`: "" when there are no rules; `bands` are (grade, least points), best first."""
    if not rules:
        return GradeResult(grade="", points=0.0)
    matched = tuple((rule.name, rule.points) for rule in rules if rule.when.evaluate(lead, _NO_ENGAGEMENT))
    points = float(sum(points for _, points in matched))
    letter = next((band for band, least in bands if points >= least), "F")
    return GradeResult(grade=letter, points=points, matched=matched)
