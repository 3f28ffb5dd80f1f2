"""Tests for mailer.lifecycle: the message state transition table."""

from __future__ import annotations

from collections import deque

import pytest

from mailer.errors import StateError
from mailer.lifecycle import (
    CLAIMABLE,
    TERMINAL,
    TRANSITIONS,
    MessageState,
    check_transition,
    sources_of,
)

S = MessageState
ALL_PAIRS = [(a, b) for a in MessageState for b in MessageState]


def reachable(start: MessageState) -> set[MessageState]:
    seen = {start}
    todo = deque([start])
    while todo:
        for following in TRANSITIONS[todo.popleft()]:
            if following not in seen:
                seen.add(following)
                todo.append(following)
    return seen


def test_table_covers_every_state() -> None:
    """Every state has a row in the table, so check_transition never meets an unknown state."""
    assert set(TRANSITIONS) == set(MessageState)


def test_terminal_states_have_no_exits() -> None:
    """Sent, failed, expired and suppressed are final: nothing moves a message out of them."""
    assert TERMINAL == {S.BOUNCED, S.FAILED, S.EXPIRED, S.SUPPRESSED}
    for state in TERMINAL:
        assert TRANSITIONS[state] == frozenset()
        for target in MessageState:
            with pytest.raises(StateError):
                check_transition(state, target)


@pytest.mark.parametrize(("current", "target"), [p for p in ALL_PAIRS if p[1] in TRANSITIONS[p[0]]])
def test_allowed_transitions_pass(current: MessageState, target: MessageState) -> None:
    """Every move the table lists is accepted by check_transition."""
    check_transition(current, target)


@pytest.mark.parametrize(("current", "target"), [p for p in ALL_PAIRS if p[1] not in TRANSITIONS[p[0]]])
def test_forbidden_transitions_raise_state_error(current: MessageState, target: MessageState) -> None:
    """Every move the table does not list raises StateError naming both states."""
    with pytest.raises(StateError, match=f"from {current} to {target}"):
        check_transition(current, target)


def test_every_state_is_reachable_from_queued() -> None:
    """A newly queued message can end up in any state, so no state is dead code."""
    assert reachable(S.QUEUED) == set(MessageState)


def test_every_state_can_reach_an_end() -> None:
    """No state is a trap: from each one some path leads to a terminal state."""
    for state in MessageState:
        assert reachable(state) & TERMINAL, state


def test_no_state_moves_to_itself() -> None:
    """A state change is always a change: no self-loops, so a repeated record is caught."""
    for state in MessageState:
        assert state not in TRANSITIONS[state]


def test_progress_only_through_sending() -> None:
    """A message is sent, deferred, failed or released only from `sending`, i.e. after an attempt."""
    for outcome in (S.SENT, S.FAILED, S.DEFERRED, S.QUEUED):
        assert sources_of(outcome) == {S.SENDING}


def test_suppression_is_possible_from_every_live_state() -> None:
    """A lead who unsubscribes stops every message not yet final, whatever its state."""
    assert sources_of(S.SUPPRESSED) == set(MessageState) - TERMINAL - {S.SENT}


def test_sources_of_inverts_the_table() -> None:
    """sources_of(t) is exactly the set of states whose row lists t."""
    for target in MessageState:
        assert sources_of(target) == {s for s in MessageState if target in TRANSITIONS[s]}


def test_claimable_states_can_start_an_attempt() -> None:
    """Only live states that may move to `sending` are claimable."""
    assert CLAIMABLE == {S.QUEUED, S.DEFERRED}
    for state in CLAIMABLE:
        check_transition(state, S.SENDING)


def test_states_are_their_stored_strings() -> None:
    """State values are the lower-case words stored in the database."""
    assert [str(s) for s in MessageState] == [
        "queued", "sending", "sent", "deferred", "failed", "expired", "suppressed", "bounced",
    ]
