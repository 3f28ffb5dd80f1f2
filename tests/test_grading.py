"""Tests for mailer.grading: a lead's grade from profile-fit rules."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from mailer.conditions import AnyOf, AttributeTest
from mailer.grading import grade
from mailer.leads import Lead
from mailer.scoremodel import GRADES, GradeResult
from mailer.scoringrules import DEFAULT_BANDS, GradeRule

DECISION_MAKER = GradeRule(
    "decision maker",
    AnyOf((AttributeTest("job_title", "contains", "director"), AttributeTest("job_title", "in", ("CTO", "CEO")))),
    40,
)
MID_SIZE = GradeRule("mid-size or larger", AttributeTest("company_size", "gte", 50), 20)
TARGET = GradeRule("target industry", AttributeTest("industry", "in", ("manufacturing", "logistics")), 10)
STUDENT = GradeRule("student", AttributeTest("job_title", "contains", "student"), -50)
RULES = (DECISION_MAKER, MID_SIZE, TARGET, STUDENT)


def lead(job_title: str = "", **attributes: Any) -> Lead:
    return Lead(email="ada@example.com", job_title=job_title, attributes=MappingProxyType(attributes))


def test_matching_rules_add_up_and_are_listed_in_rule_order() -> None:
    """A director at a 320-person manufacturer gets 70 points (a B) and the three rules that matched."""
    result = grade(lead("Director of IT", company_size="320", industry="Manufacturing"), RULES, DEFAULT_BANDS)
    assert result == GradeResult(
        grade="B", points=70.0, matched=(("decision maker", 40), ("mid-size or larger", 20), ("target industry", 10)),
    )


def test_each_band_is_the_least_points_of_its_grade() -> None:
    """Exactly 80 is an A, 79 a B, 20 a D and 19 an F under the default bands."""
    def points(value: float) -> str:
        return grade(lead(), (GradeRule("everyone", AttributeTest("email", "exists", True), value),), DEFAULT_BANDS).grade

    assert [points(80), points(79), points(60), points(40), points(20), points(19), points(-5)] == ["A", "B", "B", "C", "D", "F", "F"]


def test_negative_rules_lower_the_grade() -> None:
    """A rule with negative points (a student) pulls an otherwise fitting lead down to F."""
    result = grade(lead("Director, MBA student", company_size=60), RULES, DEFAULT_BANDS)
    assert (result.grade, result.points) == ("F", 10.0)
    assert ("student", -50) in result.matched


def test_no_rules_means_no_grade() -> None:
    """Without grading rules every lead's grade is "" (ungraded), never F."""
    assert grade(lead("CTO"), (), DEFAULT_BANDS) == GradeResult(grade="", points=0.0)


def test_a_lead_no_rule_fits_is_f_with_nothing_matched() -> None:
    """A lead matching no rule scores 0 points, grade F, with an empty explanation."""
    assert grade(lead("Intern"), RULES, DEFAULT_BANDS) == GradeResult(grade="F", points=0.0, matched=())


def test_custom_bands_are_used() -> None:
    """Bands from the file replace the defaults: 40 points is an A when A starts at 40."""
    bands = (("A", 40.0), ("B", 30.0), ("C", 20.0), ("D", 10.0))
    assert grade(lead("CTO"), RULES, bands).grade == "A"


@given(st.integers(-200, 200))
def test_grade_is_monotone_in_points(points: int) -> None:
    """More grading points never give a worse grade."""
    def letter(value: int) -> str:
        return grade(lead(), (GradeRule("all", AttributeTest("email", "exists", True), value),), DEFAULT_BANDS).grade

    assert GRADES.index(letter(points + 1)) <= GRADES.index(letter(points))
