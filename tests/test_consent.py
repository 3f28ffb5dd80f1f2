"""Tests for mailer.consent: which suppression stops which message, what a subscription does."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mailer.consent import CONFIRMED, PENDING, REASONS, stops, subscription_outcome

LISTS = st.sampled_from(["", "a", "b"])
SUPPRESSIONS = st.frozensets(st.tuples(LISTS, st.sampled_from(REASONS)), max_size=4)


def test_a_global_suppression_stops_every_scenario() -> None:
    """A global suppression of any reason stops messages for any list and for list-less scenarios."""
    for reason in REASONS:
        assert stops({("", reason)}, "a") and stops({("", reason)}, None)


def test_a_list_suppression_stops_only_that_list() -> None:
    """An unsubscribe from list a stops list a's scenarios, not list b's nor a list-less one's."""
    suppressions = {("a", "unsubscribe")}
    assert stops(suppressions, "a")
    assert not stops(suppressions, "b")
    assert not stops(suppressions, None)


def test_a_confirmation_ignores_list_suppressions_and_global_unconfirmed() -> None:
    """An opt-in confirmation is stopped by a global bounce, complaint, manual or unsubscribe, never by a list one."""
    assert not stops({("a", "unsubscribe"), ("a", "hard-bounce")}, "a", confirmation=True)
    assert not stops({("", "unconfirmed")}, "a", confirmation=True)
    for reason in ("hard-bounce", "complaint", "manual", "soft-bounce-escalation", "unsubscribe"):
        assert stops({("", reason)}, "a", confirmation=True)


@given(SUPPRESSIONS, st.sampled_from(["a", "b"]))
def test_nothing_but_the_own_list_or_global_ever_stops(suppressions: frozenset[tuple[str, str]], target: str) -> None:
    """Whether a scenario message stops depends only on its own list's and the global suppressions."""
    relevant = {(scope, reason) for scope, reason in suppressions if scope in ("", target)}
    assert stops(suppressions, target) == bool(relevant)


def test_subscription_outcomes() -> None:
    """Single opt-in confirms at once; double opt-in is pending; a confirmed member is 'already'."""
    assert subscription_outcome(None, [], "a", double_opt_in=False) == "confirmed"
    assert subscription_outcome(None, [], "a", double_opt_in=True) == "pending"
    assert subscription_outcome(PENDING, [], "a", double_opt_in=True) == "pending"
    assert subscription_outcome(PENDING, [], "a", double_opt_in=False) == "confirmed"
    assert subscription_outcome(CONFIRMED, [], "a", double_opt_in=True) == "already"


def test_coming_back_after_an_unsubscribe_needs_a_confirmation_even_on_single_opt_in() -> None:
    """An address that unsubscribed from the list must confirm by email; another list's unsubscribe does not matter."""
    assert subscription_outcome(CONFIRMED, [("a", "unsubscribe")], "a", double_opt_in=False) == "pending"
    assert subscription_outcome(None, [("a", "unconfirmed")], "a", double_opt_in=False) == "pending"
    assert subscription_outcome(None, [("b", "unsubscribe")], "a", double_opt_in=False) == "confirmed"
    assert subscription_outcome(CONFIRMED, [("a", "hard-bounce")], "a", double_opt_in=False) == "already"
