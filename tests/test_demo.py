"""`mailer demo`, the README's first command, end to end."""

from __future__ import annotations

import email
import email.policy
import re
from pathlib import Path

import pytest

from mailer.demo import run_demo

READERS = ("alice.nguyen@example.com", "maria.garcia@example.es", "taro.yamada@example.jp")
SKIMMERS = ("yui.tanaka", "shun.kobayashi", "emma.wood")


def report_totals(out: str) -> dict[str, dict[str, int]]:
    """Each scenario's line of the report table: its (total), or its only step."""
    lines = out.split("what the engine counted")[1].splitlines()[1:]
    header = lines[0].split()
    rows: dict[str, dict[str, int]] = {}
    for line in lines[1:]:
        if not line.strip():
            break
        cells = dict(zip(header, line.split()))
        if cells["step"] == "(total)" or cells["scenario"] not in rows:
            rows[cells["scenario"]] = {k: int(v) for k, v in cells.items() if v.isdigit()}
    return rows


async def test_demo_sends_the_example_nurture_and_saves_every_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The demo runs the example scenarios to the end; every sent message is saved and parses, and what people did is what the engine counted."""
    assert await run_demo(workspace=tmp_path / "demo", days=10, seconds=5) == 0
    out = capsys.readouterr().out
    saved = sorted((tmp_path / "demo" / "inbox").glob("*.eml"))
    # The leaver unsubscribes through the one-click endpoint, and the three MQLs reach the
    # nurture's goal: four leave trial-nurture; the MQLs complete mql-follow-up.
    assert f"{len(saved)} messages sent, {len(saved)} received; enrollments: completed 9, exited 4" in out
    assert len(saved) >= 3 * 10, "every lead gets at least the first three steps"
    subjects = set()
    for path in saved:
        message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        subjects.add(str(message["Subject"]))
        assert str(path) in out
    assert "【Northwind】山田様、トライアルへようこそ" in subjects
    assert "【Northwind】山田精機株式会社向けのご提案について" in subjects
    assert "trial-nurture / demo-offer  sent" in out and "skipped" in out
    assert "mql-follow-up / sales-intro sent 3" in out
    # What the simulated people did is what the engine counted as human; the machines apart.
    did = dict(item.rsplit(" ", 1) for item in out.split("what the simulated recipients did: ")[1].split("\n")[0].split(", "))
    totals = report_totals(out)
    assert set(totals) == {"trial-nurture", "mql-follow-up"}
    human = {what: sum(row[what] for row in totals.values()) for what in ("opens", "clicks", "unsub")}
    assert human == {"opens": int(did["human open"]), "clicks": int(did["human click"]), "unsub": int(did["one-click unsubscribe"])}
    machine = totals["trial-nurture"]
    assert machine["m.opens"] == int(did["proxy pixel fetch"]) and machine["m.clicks"] >= 1


async def test_demo_ends_with_the_mqls_and_their_reasons_the_mqa_and_the_verified_webhooks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The readers with a good title become MQL for the reasons in their history and move to mql-follow-up; three skimmers of one company, none an MQL, make it an MQA; the CRM gets every change signed."""
    assert await run_demo(workspace=tmp_path / "demo", days=10, seconds=5) == 0
    out = capsys.readouterr().out
    mqls = out.split("who became MQL, and why")[1].split("accounts that became MQA")[0]
    for reader in READERS:
        block = mqls.split(f"<{reader}>")[1].split("\n  day")[0]
        assert re.search(r"score (5\d) ≥ 50 and grade [AB] ≥ B", block), block
        assert "read the case study +15" in block and "signed up for the webinar +15" in block
        assert "got mql-follow-up / sales-intro" in block and "left trial-nurture (goal reached)" in block
    assert mqls.count("now MQL") == 3
    # the gateway's scanner clicked every link of the CTO's mail: nothing scored
    assert "ken.sato@example.co.jp 0 (grade A)" in mqls

    [account] = out.split("accounts that became MQA")[1].split("\n\n")[0].splitlines()[1:]
    scores = [int(n) for n in re.findall(r"(?:yui\.tanaka|shun\.kobayashi|emma\.wood) (\d+) \(lead\)", account)]
    assert account.strip().startswith("hikari-retail.example") and len(scores) == 3
    assert all(score < 50 for score in scores) and sum(scores) >= 85

    calls = out.split("the CRM's webhook receiver")[1]
    assert re.search(r"got 4 calls, 4 with a signature that verified", calls)
    for reader in READERS:
        assert re.search(rf"stage_changed +{re.escape(reader)} +lead → MQL +verified", calls)
    assert re.search(r"account_stage_changed +hikari-retail\.example +- → MQA +verified", calls)
    assert '"type": "stage_changed"' in calls and "NOT VERIFIED" not in calls


async def test_the_demo_refuses_a_real_workspace(tmp_path: Path) -> None:
    """`mailer demo --workspace` never rewrites the config or sends from the store of a real workspace."""
    from mailer.errors import UserError

    (tmp_path / "mailer.toml").write_text('[relay]\nhost = "relay.example"\n')
    with pytest.raises(UserError, match="not a demo one"):
        await run_demo(workspace=tmp_path, days=1, seconds=1)
    assert (tmp_path / "mailer.toml").read_text() == '[relay]\nhost = "relay.example"\n'
