"""`mailer demo`: a week of nurture in seconds, on nothing but the install.

It makes a workspace with the example scenario, templates and sample leads, starts an
embedded receiving SMTP server on loopback, writes a mailer.toml pointing at it, imports the
leads and runs the real daemon on an accelerated clock, printing each message as it goes out
and where the receiving server saved it. Simulated recipients (`mailer.demo_recipients`),
people and machines, open, click and unsubscribe through the daemon's tracking endpoints,
and the demo ends with the report, human and machine apart.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import tempfile
from datetime import datetime, timedelta
from pathlib import Path

from mailer.clock import AcceleratedClock
from mailer.config import load_config
from mailer.daemon import Daemon
from mailer.demo_recipients import PERSONAS, Recipients
from mailer.report import build_report, format_table
from mailer.errors import UserError
from mailer.examples_data import copy_examples
from mailer.importing import read_with_progress
from mailer.planner import lead_zone
from mailer.store import ClaimedMessage, Outcome, Store, open_store
from mailer.testing import CaptureServer

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
    async with CaptureServer(save_to=inbox) as server:
        http_port = _free_port()
        (workspace / "mailer.toml").write_text(DEMO_CONFIG.format(port=server.port, speed=speed, http_port=http_port), encoding="utf-8")
        config = load_config(workspace / "mailer.toml")
        print(f"receiving SMTP server: 127.0.0.1:{server.port}, saving to {inbox}")
        print(f"tracking server: {config.tracking.public_base} (pixel, clicks, unsubscribe)")
        print(f"clock: {days:g} days in {seconds:g} seconds ({speed:,.0f}x)\n")

        plan = read_with_progress(workspace / "leads.csv", source="demo", check_deliverability=False)
        for rejection in plan.rejected:
            print(f"  leads.csv:{rejection.line}: rejected {rejection.email!r}: {rejection.reason}")
        async with open_store(config) as store:
            counts = await store.upsert_leads(plan.leads, list_name=DEMO_LIST, now=datetime.now().astimezone())
            print(f"imported {counts.created} leads into list {DEMO_LIST!r} ({len(plan.rejected)} row rejected)\n")

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
    print(f"\nopen the messages in {inbox} (any mail client reads .eml), or run")
    print(f"  mailer --config {workspace / 'mailer.toml'} report")
    print(f"  mailer --config {workspace / 'mailer.toml'} status")
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
    """Stop the daemon at the deadline, or once every enrollment, message and recipient is done."""
    while clock.now() < deadline:
        await asyncio.sleep(0.2)
        enrollments = await store.enrollment_counts()
        messages = await store.message_counts()
        pending = sum(messages.get(state, 0) for state in ("queued", "sending", "deferred"))
        if enrollments and not enrollments.get("active") and not pending and recipients.idle():
            break
    await recipients.settle()
    stop.set()
