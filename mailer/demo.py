"""`mailer demo`: a week of nurture in seconds, on nothing but the install.

It makes a workspace with the example scenario, templates and sample leads, starts an
embedded receiving SMTP server on loopback, writes a mailer.toml pointing at it, imports the
leads and runs the real daemon on an accelerated clock, printing each message as it goes out
and where the receiving server saved it. Simulated recipients (`mailer.demo_recipients`),
people and machines, open, click and unsubscribe through the daemon's tracking endpoints,
and the demo ends with the report, human and machine apart.

Then the pipeline that behaviour built (scenarios/scoring.yaml): the leads whose opens and
clicks made them MQL with the reasons from their history, how they left the nurture for
mql-follow-up, the account whose leads together made it an MQA, and the signed webhooks a
CRM on loopback (`CrmReceiver`) received and verified. The demo's API listens on a free port,
so it never collides with a daemon already running here.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import socket
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from mailer.clock import AcceleratedClock
from mailer.config import load_config
from mailer.daemon import Daemon
from mailer.demo_recipients import PERSONAS, CrmReceiver, Recipients, WebhookCall
from mailer.report import build_report, format_table
from mailer.errors import UserError
from mailer.examples_data import copy_examples
from mailer.importing import read_with_progress
from mailer.leads import Lead
from mailer.planner import lead_zone
from mailer.scoremodel import HistoryEntry
from mailer.stages import account_of
from mailer.store import ClaimedMessage, Outcome, Store, open_store
from mailer.testing import CaptureServer
from mailer.wording import counted

DEMO_LIST = "trial-signups"

DEMO_MARK = "# Written by `mailer demo`"
DEMO_CONFIG = """\
# Written by `mailer demo`: the embedded SMTP server on loopback and an accelerated clock.
store = "mailer.db"
scenarios = "scenarios"
templates = "templates"
secret_key_file = "mailer.key"

[relay]
host = "127.0.0.1"
port = {port}

[identities.default]
from = "Northwind Analytics <hello@northwind.example>"
reply_to = "Northwind Team <team@northwind.example>"
return_path = "bounces@northwind.example"

[clock]
speed = {speed}

[scheduler]
poll_interval = "30m"
entry_interval = "1h"

[tracking]
listen = "127.0.0.1:{http_port}"
base_url = "http://127.0.0.1:{http_port}"

[api]
listen = "127.0.0.1:0"            # any free port: never the 8081 of a daemon running here

[scoring]
refresh_interval = "1d"           # clock time: at the demo's speed 1h would re-score all ten times a second

[webhooks.demo]                   # the demo's CRM on loopback: stage changes and MQAs, signed
url = "{crm_url}"
secret = "{crm_secret}"
events = ["stage_changed", "account_stage_changed"]
"""


async def run_demo(*, workspace: Path | None, days: float, seconds: float) -> int:
    workspace = workspace or Path(tempfile.mkdtemp(prefix="mailer-demo-"))
    _refuse_a_real_workspace(workspace)
    workspace.mkdir(parents=True, exist_ok=True)
    copy_examples(workspace)
    key = workspace / "mailer.key"
    if not key.exists():
        key.write_text(secrets.token_urlsafe(48) + "\n")
        os.chmod(key, 0o600)
    inbox = workspace / "inbox"
    speed = days * 86400 / seconds
    print(f"workspace: {workspace}")
    async with CaptureServer(save_to=inbox) as server, CrmReceiver(secrets.token_urlsafe(24)) as crm:
        http_port = _free_port()
        (workspace / "mailer.toml").write_text(
            DEMO_CONFIG.format(port=server.port, speed=speed, http_port=http_port, crm_url=crm.url, crm_secret=crm.secret),
            encoding="utf-8",
        )
        config = load_config(workspace / "mailer.toml")
        print(f"receiving SMTP server: 127.0.0.1:{server.port}, saving to {inbox}")
        print(f"tracking server: {config.tracking.public_base} (pixel, clicks, unsubscribe)")
        print(f"CRM webhook receiver: {crm.url} (stage changes, signed)")
        print(f"clock: {days:g} days in {seconds:g} seconds ({speed:,.0f}x)\n")

        plan = read_with_progress(workspace / "leads.csv", source="demo", check_deliverability=False)
        for rejection in plan.rejected:
            print(f"  leads.csv:{rejection.line}: rejected {rejection.email!r}: {rejection.reason}")
        async with open_store(config) as store:
            counts = await store.upsert_leads(plan.leads, list_name=DEMO_LIST, now=datetime.now().astimezone())
            print(f"imported {counted(counts.created, 'lead')} into list {DEMO_LIST!r} ({counted(len(plan.rejected), 'row')} rejected)\n")

            clock = AcceleratedClock(speed)
            start = clock.now()
            recipients = Recipients(clock=clock)
            print("simulated recipients: " + ", ".join(f"{email.split('@')[0]} ({persona})" for email, persona in PERSONAS.items() if "xn--" not in email) + "\n")

            def show(message: ClaimedMessage, outcome: Outcome, subject: str) -> None:
                lead = message.lead
                day = (outcome.at - start) / timedelta(days=1)
                local = outcome.at.astimezone(lead_zone(lead, daemon.scenarios[message.scenario]))
                received = server.by_message_id.get(message.message_id)
                where = f"\n      saved {received.path}" if received and received.path else ""
                reply = f" ({outcome.reply})" if outcome.reply else ""
                name = lead.display_name or lead.email
                print(
                    f"day {day:4.1f}  {local:%a %H:%M} {local.tzname():>5}  {outcome.state.value:<8} "
                    f"{message.step_id:<11} → {name} <{lead.email}>\n      “{subject}”{reply}{where}"
                )
                if received is not None:
                    recipients.received(lead.email, message.step_id, received.parsed())

            daemon = Daemon(config=config, store=store, clock=clock, on_outcome=show)
            stop = asyncio.Event()
            async with recipients:
                watcher = asyncio.create_task(_stop_when_done(store, clock, start + timedelta(days=days), stop, recipients))
                report = await daemon.serve(stop)
                await watcher
            enrollments = await store.enrollment_counts()
            steps = await store.step_counts()
            figures = await store.step_figures(None)
            pipeline = await _pipeline(store, start)
    print(
        f"\n{report.outcomes.get('sent', 0)} messages sent, {len(server.messages)} received; "
        f"enrollments: {', '.join(f'{k} {v}' for k, v in sorted(enrollments.items()))}"
    )
    for scenario in daemon.scenarios.values():
        for step in scenario.steps:
            step_counts = steps.get((scenario.name, step.id), {})
            detail = ", ".join(f"{kind} {n}" for kind, n in sorted(step_counts.items())) or "none yet"
            print(f"  {scenario.name} / {step.id:<11} {detail}")
    print("\nwhat the simulated recipients did: " + ", ".join(f"{what} {n}" for what, n in sorted(recipients.did.items())))
    order = {scenario.name: [step.id for step in scenario.steps] for scenario in daemon.scenarios.values()}
    print("what the engine counted (machine opens and clicks never score, branch or unsubscribe):")
    print(format_table(build_report(figures, step_order=order, scenario=None)))
    mqa_line = daemon.scoring_rules().stages.mqa_score  # the rules the demo ran with
    _show_pipeline(pipeline, crm.url, crm.calls, mqa_line)
    where = f"--config {workspace / 'mailer.toml'}"
    print(f"\nopen the messages in {inbox} (any mail client reads .eml), or run")
    print(f"  mailer {where} report")
    print(f"  mailer {where} status")
    if pipeline.mqls:
        print(f"  mailer {where} leads show {pipeline.mqls[0].lead.email}")
    print(f"  mailer {where} accounts")
    print(f"  mailer {where} webhooks log")
    return 0


def _free_port() -> int:
    """A loopback port for the tracking server: links must name it before the server starts."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _refuse_a_real_workspace(workspace: Path) -> None:
    """The demo rewrites mailer.toml and sends from the store: never in someone's real workspace."""
    config = workspace / "mailer.toml"
    ours = config.exists() and config.read_text(encoding="utf-8").startswith(DEMO_MARK)
    if (config.exists() or (workspace / "mailer.db").exists()) and not ours:
        raise UserError(
            "is a mailer workspace, not a demo one",
            file=str(workspace),
            field="--workspace",
            hint="give the demo an empty or new folder, or leave --workspace out",
        )


async def _stop_when_done(store: Store, clock: AcceleratedClock, deadline: datetime, stop: asyncio.Event, recipients: Recipients) -> None:
    """Stop the daemon at the deadline, or once every enrollment, message, recipient, score and webhook is done."""
    quiet = 0
    while clock.now() < deadline:
        await asyncio.sleep(0.2)
        quiet = quiet + 1 if await _all_done(store, recipients) else 0
        # Done three looks in a row: a recipient's last click reaches the store within the
        # tracking flush (0.2 s) and is scored within a quarter second, and may enter the lead
        # into mql-follow-up, which is not done at all.
        if quiet == 3:
            break
    await recipients.settle()
    stop.set()


async def _all_done(store: Store, recipients: Recipients) -> bool:
    enrollments = await store.enrollment_counts()
    messages = await store.message_counts()
    pending = sum(messages.get(state, 0) for state in ("queued", "sending", "deferred"))
    if not enrollments or enrollments.get("active") or pending or not recipients.idle():
        return False
    if await store.scoring_backlog():
        return False
    return not any(delivery.state == "pending" for delivery in await store.deliveries(limit=1000))


# -- what behaviour built: MQLs, MQAs, webhooks ------------------------------------------------


@dataclass(frozen=True)
class BecameMql:
    lead: Lead
    day: float  # demo day of the move
    move: HistoryEntry  # the stage_changed entry: its reason
    score: HistoryEntry | None  # the score change that triggered it: its contributions
    journey: tuple[str, ...]  # what the scenarios did next: "left trial-nurture (goal reached)", …


@dataclass(frozen=True)
class Pipeline:
    mqls: tuple[BecameMql, ...]
    leads: tuple[Lead, ...]  # every lead as it ended
    mqas: tuple[tuple[str, int], ...]  # (account, rolled-up score)


async def _pipeline(store: Store, start: datetime) -> Pipeline:
    """Read back what scoring did: the MQL moves with their history, and the MQA accounts."""
    leads = await store.leads_by_stage(None, limit=1000)
    mqls = []
    for lead in leads:
        history = await store.lead_history(lead.id or 0)
        moves = [i for i, entry in enumerate(history) if entry.type == "stage_changed" and entry.data.get("to") == "MQL"]
        if not moves:
            continue
        move = history[moves[0]]
        scored = [entry for entry in history[: moves[0]] if entry.type == "score_changed"]
        journey = []
        for event in await store.lead_events(lead.id or 0):
            if event.type == "exited":
                journey.append(f"left {event.scenario} ({event.data.get('reason', '')})")
            elif event.type == "sent" and event.scenario != "trial-nurture":
                journey.append(f"got {event.scenario} / {event.step_id}")
        day = (move.at - start) / timedelta(days=1)
        mqls.append(BecameMql(lead, day, move, scored[-1] if scored else None, tuple(journey)))
    mqas = tuple((account, score) for account, score, _ in await store.accounts(stage="MQA"))
    return Pipeline(tuple(sorted(mqls, key=lambda m: m.day)), tuple(leads), mqas)


def _show_pipeline(pipeline: Pipeline, crm_url: str, calls: Sequence[WebhookCall], mqa_line: int | None) -> None:
    print("\nwho became MQL, and why (scenarios/scoring.yaml; the reasons are the leads' history):")
    for mql in pipeline.mqls:
        lead = mql.lead
        print(f"  day {mql.day:4.1f}  {lead.display_name or lead.email} <{lead.email}>, grade {lead.grade}, now {lead.stage} ({lead.score})")
        print(f"            {mql.move.data.get('reason', '')}")
        if mql.score is not None:
            top = sorted(mql.score.data.get("contributions", []), key=lambda c: -abs(c[2]))[:4]
            print("            from " + ", ".join(f"{rule} {points:+.3g} ({events}×)" for rule, events, points in top))
        if mql.journey:
            print("            then " + ", ".join(mql.journey))
    if not pipeline.mqls:
        print("  nobody yet")
    machines = [lead for lead in pipeline.leads if PERSONAS.get(lead.email) in ("gateway", "privacy proxy")]
    if machines:
        shown = ", ".join(f"{lead.email} {lead.score} (grade {lead.grade})" for lead in machines)
        print(f"  machines' opens and clicks score nothing: {shown}")

    line = f", MQA at {mqa_line}" if mqa_line is not None else ""
    print(f"\naccounts that became MQA (the account's leads' scores added up{line}):")
    for account, score in pipeline.mqas:
        members = [lead for lead in pipeline.leads if account_of(lead) == account]
        parts = " + ".join(f"{lead.email.split('@')[0]} {lead.score} ({lead.stage})" for lead in members)
        print(f"  {account}  {score} = {parts}")
    if not pipeline.mqas:
        print("  none yet")

    verified = sum(1 for call in calls if call.verified)
    print(f"\nthe CRM's webhook receiver ({crm_url}) got {len(calls)} calls, {verified} with a signature that verified:")
    for call in calls:
        event, data = call.event, call.event.get("data", {})
        who = data.get("account") or data.get("lead", {}).get("email", "")
        change = f"{data.get('from') or '-'} → {data.get('to') or '-'}"
        print(f"  {event.get('type', '?'):<22} {who:<40} {change:<14} {'verified' if call.verified else 'NOT VERIFIED'}")
    if calls:
        first = next((call for call in calls if call.event.get("type") == "stage_changed"), calls[0])
        print(f"one of them as it arrived (Mailer-Signature: {first.signature[:40]}…):")
        print("  " + json.dumps(first.event, ensure_ascii=False, indent=2).replace("\n", "\n  "))
