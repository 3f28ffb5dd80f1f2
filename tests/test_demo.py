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
    # The leaver unsubscribes through the one-click endpoint, which takes them out of the scenario.
    assert f"{len(saved)} messages sent, {len(saved)} received; enrollments: completed 6, exited 1" in out
    assert len(saved) >= 4 * 5, "every lead gets at least the first three steps"
    subjects = set()
    for path in saved:
        message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        subjects.add(str(message["Subject"]))
        assert str(path) in out
    assert "【Northwind】山田様、トライアルへようこそ" in subjects
    assert "trial-nurture / demo-offer  sent" in out and "skipped" in out
    # What the simulated people did is what the engine counted as human; the machines apart.
    did = dict(item.rsplit(" ", 1) for item in out.split("what the simulated recipients did: ")[1].split("\n")[0].split(", "))
    total = [line.split() for line in out.splitlines() if line.startswith("trial-nurture  (total)")][0]
    assert (total[6], total[8], total[11]) == (did["human open"], did["human click"], did["one-click unsubscribe"])
    assert int(total[13]) == int(did["proxy pixel fetch"]) and int(total[14]) >= 1  # machine opens, clicks


async def test_the_demo_refuses_a_real_workspace(tmp_path: Path) -> None:
    """`mailer demo --workspace` never rewrites the config or sends from the store of a real workspace."""
    from mailer.errors import UserError

    (tmp_path / "mailer.toml").write_text('[relay]\nhost = "relay.example"\n')
    with pytest.raises(UserError, match="not a demo one"):
        await run_demo(workspace=tmp_path, days=1, seconds=1)
    assert (tmp_path / "mailer.toml").read_text() == '[relay]\nhost = "relay.example"\n'
