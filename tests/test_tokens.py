"""Signed tokens: genuine ones verify, anything else is refused."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mailer.tokens import Signer

KEY = b"k" * 40
OTHER = b"o" * 40


@given(st.binary(max_size=64), st.sampled_from(["verp", "open", "click"]))
def test_a_signed_payload_verifies_for_its_purpose(payload: bytes, purpose: str) -> None:
    """sign then verify returns the payload, for the same purpose only."""
    signer = Signer([KEY])
    token = signer.sign(purpose, payload)
    assert signer.verify(purpose, token) == payload
    assert signer.verify(purpose + "x", token) is None


@given(st.integers(min_value=0, max_value=2**63))
def test_tokens_survive_case_changes_and_are_local_part_safe(number: int) -> None:
    """A VERP token still verifies after a bounce generator upper-cases it; it is alphanumeric."""
    signer = Signer([KEY])
    token = signer.sign_int("verp", number)
    assert token.isalnum() and token.islower() or token.isdigit()
    assert signer.verify_int("verp", token.upper()) == number


@given(st.integers(min_value=1, max_value=2**40), st.integers(min_value=0, max_value=200), st.integers(min_value=0, max_value=255))
def test_any_single_byte_change_is_refused(number: int, position: int, flip: int) -> None:
    """Tampering with any character of a token makes it worthless."""
    signer = Signer([KEY])
    token = signer.sign_int("click", number)
    index = position % len(token)
    alphabet = "abcdefghijklmnopqrstuvwxyz234567"
    replacement = alphabet[(alphabet.index(token[index]) + 1 + flip % 31) % 32]
    tampered = token[:index] + replacement + token[index + 1 :]
    assert signer.verify_int("click", tampered) != number or tampered == token


def test_a_token_signed_with_another_key_is_refused() -> None:
    """A token from a foreign secret never verifies."""
    assert Signer([KEY]).verify("open", Signer([OTHER]).sign("open", b"1")) is None


def test_rotated_keys_keep_old_tokens_working() -> None:
    """After rotation (new key first), tokens signed with the old key still verify; new ones use the new key."""
    old_token = Signer([KEY]).sign("open", b"42")
    rotated = Signer([OTHER, KEY])
    assert rotated.verify("open", old_token) == b"42"
    assert Signer([OTHER]).verify("open", rotated.sign("open", b"7")) == b"7"


@given(st.text(max_size=80))
def test_garbage_is_refused_without_error(token: str) -> None:
    """Truncated, empty or non-base32 input is simply not a token."""
    signer = Signer([KEY])
    genuine = signer.sign("open", b"x")
    if token != genuine:
        assert signer.verify("open", token) in (None, b"x")


def test_truncated_token_is_refused() -> None:
    """Cutting the tail off a token breaks its tag."""
    signer = Signer([KEY])
    token = signer.sign("open", b"payload")
    assert all(signer.verify("open", token[:cut]) is None for cut in range(len(token)))
