"""The reason vocabulary and Sisimai's hard/soft rule, checked against reasons.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mailer.reasons import SENDER_PROBLEMS, BounceClass, Reason, bounce_class

REASONS_JSON = Path(__file__).resolve().parents[2] / "shared" / "corpora" / "bounces" / "reasons.json"


def _table() -> dict[str, object]:
    if not REASONS_JSON.exists():
        pytest.skip("bounce corpus not present")
    data: dict[str, object] = json.loads(REASONS_JSON.read_text())
    return data


def test_vocabulary_is_sisimais() -> None:
    """Every reason in reasons.json is a Reason, and there are no others."""
    names = {entry["reason"] for entry in _table()["reasons"]}  # type: ignore[attr-defined]
    assert names == {reason.value for reason in Reason}


def test_default_class_of_every_reason_matches_reasons_json() -> None:
    """With a 5xx code and a neutral text, each reason gets the class reasons.json gives it."""
    for entry in _table()["reasons"]:  # type: ignore[attr-defined]
        reason = Reason(entry["reason"])
        got = bounce_class(reason, status="5.0.0", reply_code=550, text="rejected")
        want = str(entry["bounce_class"])
        # notaccept's entry is "hard_if_5xx_else_soft": hard with this 5xx
        assert got.value == ("hard" if want.startswith("hard_if_5xx") else want), reason


@pytest.mark.parametrize("reason", [Reason.USERUNKNOWN, Reason.HOSTUNKNOWN, Reason.HASMOVED])
def test_address_reasons_stay_hard_with_a_4xx(reason: Reason) -> None:
    """An unknown user, host or moved mailbox is hard even when the server used a 4xx code."""
    assert bounce_class(reason, status="4.1.1", reply_code=450, text="") is BounceClass.HARD


def test_notaccept_is_soft_only_when_temporary() -> None:
    """A null-MX style refusal is hard, unless its code or its text says it is temporary."""
    assert bounce_class(Reason.NOTACCEPT, status="5.1.10", reply_code=556, text="null mx") is BounceClass.HARD
    assert bounce_class(Reason.NOTACCEPT, status="4.3.2", reply_code=None, text="") is BounceClass.SOFT
    assert bounce_class(Reason.NOTACCEPT, status=None, reply_code=None, text="temporary failure") is BounceClass.SOFT
    assert bounce_class(Reason.NOTACCEPT, status=None, reply_code=None, text="") is BounceClass.HARD


def test_non_bounces_have_no_class() -> None:
    """Delivered, feedback and vacation are not bounces at all."""
    for reason in (Reason.DELIVERED, Reason.FEEDBACK, Reason.VACATION):
        assert bounce_class(reason, status="5.0.0", reply_code=550, text="") is BounceClass.NONE


def test_sender_problems_are_never_hard() -> None:
    """A bounce that is the sender's fault can never condemn the recipient's address."""
    for reason in SENDER_PROBLEMS:
        assert bounce_class(reason, status="5.7.1", reply_code=550, text="") is BounceClass.SOFT
    assert Reason.USERUNKNOWN not in SENDER_PROBLEMS
