"""Once per key and interval: the memory behind the daemon's one-line reports."""

from datetime import datetime, timedelta, timezone

from mailer.oncelog import MAX_KEYS, OnceEvery

T0 = datetime(2026, 1, 5, 8, 0, tzinfo=timezone.utc)


def test_a_key_is_said_again_only_after_the_interval() -> None:
    """The first time and after `every` count; in between, the same key does not; other keys are apart."""
    once = OnceEvery(timedelta(minutes=15))
    assert once.first("relay down", T0)
    assert not once.first("relay down", T0 + timedelta(minutes=14))
    assert once.first("other", T0 + timedelta(minutes=1))
    assert once.first("relay down", T0 + timedelta(minutes=15))


def test_the_memory_is_bounded() -> None:
    """Past MAX_KEYS keys the memory starts again: a key may be said early, never kept forever."""
    once = OnceEvery(timedelta(hours=1))
    for number in range(MAX_KEYS):
        assert once.first(str(number), T0)
    assert once.first("one more", T0)
    assert once.first("0", T0)  # forgotten with the rest
