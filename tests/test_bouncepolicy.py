"""The bounce policy table, decision by decision."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mailer.bouncepolicy import Action, BouncePolicy, decide, suppresses
from mailer.reasons import PROTOCOL_PROBLEMS, SENDER_PROBLEMS, BounceClass, Reason, about_the_session

POLICY = BouncePolicy(soft_limit=3)


def test_an_unknown_user_is_suppressed_at_once() -> None:
    """userunknown (hard) suppresses on the first bounce."""
    assert decide(Reason.USERUNKNOWN, BounceClass.HARD, earlier_soft=0, policy=POLICY) is Action.SUPPRESS


def test_a_full_mailbox_is_retried_then_escalated() -> None:
    """mailboxfull is retried twice; the third within the window suppresses."""
    actions = [decide(Reason.MAILBOXFULL, BounceClass.SOFT, earlier_soft=n, policy=POLICY) for n in range(3)]
    assert actions == [Action.RETRY, Action.RETRY, Action.ESCALATE]


@given(st.sampled_from(sorted(SENDER_PROBLEMS)), st.sampled_from([BounceClass.HARD, BounceClass.SOFT]), st.integers(0, 100))
def test_the_senders_problem_never_suppresses_the_recipient(reason: Reason, bounce_class: BounceClass, earlier: int) -> None:
    """blocked, badreputation and the like alert the operator and suppress nobody, however often."""
    action = decide(reason, bounce_class, earlier_soft=earlier, policy=POLICY)
    assert action is Action.SENDER_ALERT and not suppresses(action)


def test_a_complaint_suppresses() -> None:
    """An ARF feedback report suppresses the complainer."""
    assert decide(Reason.FEEDBACK, BounceClass.NONE, earlier_soft=0, policy=POLICY) is Action.COMPLAINT


def test_vacation_and_delivered_change_nothing() -> None:
    """Auto-replies and positive DSNs are recorded and nothing else."""
    for reason in (Reason.VACATION, Reason.DELIVERED):
        assert decide(reason, BounceClass.NONE, earlier_soft=10, policy=POLICY) is Action.RECORD


def test_a_syntax_error_is_about_the_session_only_after_the_recipient_was_taken() -> None:
    """A 500-504 at DATA or the dot is the conversation's fault; at RCPT (504 5.5.2 need fully-qualified address) it may be the address's."""
    [syntax] = PROTOCOL_PROBLEMS
    assert about_the_session(syntax, "DATA") and about_the_session(syntax, "DOT")
    assert not about_the_session(syntax, "RCPT") and not about_the_session(syntax, None)
    assert about_the_session(Reason.BLOCKED, "RCPT") and not about_the_session(Reason.USERUNKNOWN, "DOT")
    assert decide(syntax, BounceClass.SOFT, earlier_soft=2, policy=POLICY) is Action.ESCALATE  # the policy itself: a soft bounce
