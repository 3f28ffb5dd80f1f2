"""`mailer demo`, the README's first command, end to end."""

from __future__ import annotations

import email
import email.policy
from pathlib import Path

import pytest

from mailer.demo import run_demo


async def test_demo_sends_the_example_nurture_and_saves_every_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The demo runs the example scenario to the end; every sent message is saved and parses."""
    assert await run_demo(workspace=tmp_path / "demo", days=10, seconds=5) == 0
    out = capsys.readouterr().out
    saved = sorted((tmp_path / "demo" / "inbox").glob("*.eml"))
    assert f"{len(saved)} messages sent, {len(saved)} received; enrollments: completed 7" in out
    assert len(saved) >= 4 * 5, "every lead gets at least the first three steps"
    subjects = set()
    for path in saved:
        message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        subjects.add(str(message["Subject"]))
        assert str(path) in out
    assert "【Northwind】山田様、トライアルへようこそ" in subjects
    assert "trial-nurture / demo-offer  sent" in out and "skipped" in out
