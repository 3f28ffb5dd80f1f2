"""`mailer api-key add | list | revoke` and `mailer webhooks log | retry`: the operator's side of the API.

A key is shown once, when it is made; the store keeps only its SHA-256 (mailer.apikeys), so a
lost key is revoked and replaced, never recovered. The webhook log shows each delivery in the
outbox with every attempt made, so "did the CRM get it?" has an answer.
"""

from __future__ import annotations

import argparse
import asyncio
import re
from datetime import datetime, timezone
from typing import Any

from mailer.argtypes import positive
from mailer.daemons import any_alive
from mailer.errors import UserError
from mailer.scoremodel import WebhookDelivery
from mailer.store import open_store
from mailer.wording import counted

# A name an operator types and reads in logs: "crm", "zapier-prod", "app.backend".
KEY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

Attempt = tuple[datetime, int | None, str, int]  # at, HTTP status, error, duration in ms


def add_commands(commands: Any) -> None:
    """Register `mailer api-key` and `mailer webhooks`."""
    keys = commands.add_parser("api-key", help="API keys for the HTTP API: add, list, revoke")
    key_commands = keys.add_subparsers(dest="api_key_command", metavar="ACTION", required=True)
    add = key_commands.add_parser("add", help="make a key (shown once) for a system that calls the API")
    add.add_argument("name", metavar="NAME", help="who uses it, e.g. crm")
    add.set_defaults(run=_key_add)
    list_ = key_commands.add_parser("list", help="every key's name, when it was made and last used")
    list_.set_defaults(run=_key_list)
    revoke = key_commands.add_parser("revoke", help="stop a key working, at once")
    revoke.add_argument("name", metavar="NAME")
    revoke.set_defaults(run=_key_revoke)

    webhooks = commands.add_parser("webhooks", help="outgoing webhooks: the delivery log, and retry")
    webhook_commands = webhooks.add_subparsers(dest="webhooks_command", metavar="ACTION", required=True)
    log = webhook_commands.add_parser("log", help="the latest deliveries, newest first, with every attempt")
    log.add_argument("--webhook", default=None, metavar="NAME", help="only this [webhooks.NAME]")
    log.add_argument("--limit", type=positive, default=50)
    log.set_defaults(run=_webhooks_log)
    retry = webhook_commands.add_parser(
        "retry", help="send given-up deliveries again, from a new series of tries (after the receiver is mended)",
    )
    retry.add_argument("ids", nargs="*", type=positive, metavar="ID", help="these deliveries (#ID in the log); default every given-up one")
    retry.add_argument("--webhook", default=None, metavar="NAME", help="only this [webhooks.NAME]")
    retry.set_defaults(run=_webhooks_retry)


def _when(at: datetime | None) -> str:
    return f"{at.astimezone(timezone.utc):%Y-%m-%d %H:%M:%S}" if at else "-"


def _key_add(args: argparse.Namespace) -> int:
    from mailer.apikeys import new_api_key
    from mailer.cli import load, now_utc

    name = args.name.strip()
    if not KEY_NAME.fullmatch(name):
        raise UserError(f"not a key name: {args.name!r}", field="NAME", hint="letters, digits, '.', '_' and '-', up to 64, e.g. crm")
    config = load(args, required=True)
    key, key_hash = new_api_key()

    async def run() -> None:
        async with open_store(config) as store:
            await store.add_api_key(name, key_hash, now=now_utc())

    asyncio.run(run())
    host, _, port = config.api.listen.rpartition(":")
    base = f"http://{host if host not in ('0.0.0.0', '::', '') else '127.0.0.1'}:{port}"
    print(f"API key {name!r} made. It is shown only this once: keep it in your secret store now.")
    print()
    print(f"  {key}")
    print()
    print("Send it with every request, as a bearer token:")
    print(f"  Authorization: Bearer {key}")
    print(f'  e.g. curl -H "Authorization: Bearer {key}" "{base}/api/leads?stage=MQL"')
    if not config.api.enabled:
        print("note: the API is off ([api] enabled = false in mailer.toml)")
    return 0


def _key_list(args: argparse.Namespace) -> int:
    from mailer.cli import load

    config = load(args, required=True)

    async def run() -> list[tuple[str, datetime, datetime | None, datetime | None]]:
        async with open_store(config) as store:
            return await store.api_keys()

    keys = asyncio.run(run())
    if not keys:
        print("no API keys; make one with `mailer api-key add NAME`")
        return 0
    width = max(len(name) for name, *_ in keys + [("name", None, None, None)])
    print(f"{'name':<{width}}  {'made':<19}  {'last used':<19}  state")
    for name, made, revoked, used in keys:
        state = f"revoked {_when(revoked)}" if revoked else "live"
        print(f"{name:<{width}}  {_when(made):<19}  {_when(used) if used else 'never':<19}  {state}")
    return 0


def _key_revoke(args: argparse.Namespace) -> int:
    from mailer.cli import load, now_utc

    config = load(args, required=True)

    async def run() -> bool:
        async with open_store(config) as store:
            return await store.revoke_api_key(args.name, now=now_utc())

    if not asyncio.run(run()):
        raise UserError(f"no live API key named {args.name!r}", field="NAME", hint="see `mailer api-key list`")
    print(f"revoked {args.name!r}: requests with it now get 401")
    return 0


def _webhooks_retry(args: argparse.Namespace) -> int:
    from mailer.cli import load, now_utc

    config = load(args, required=True)
    if args.webhook is not None and args.webhook not in config.webhooks:
        known = ", ".join(sorted(config.webhooks)) or "none configured"
        raise UserError(f"no webhook named {args.webhook!r}", field="--webhook", hint=f"[webhooks.NAME] in mailer.toml: {known}")

    async def run() -> tuple[int, bool]:
        async with open_store(config) as store:
            count = await store.requeue_deliveries(now=now_utc(), webhook=args.webhook, ids=args.ids)
            return count, any_alive(await store.daemons())

    count, serving = asyncio.run(run())
    if not count:
        print("no given-up delivery to send again" + (" among those ids" if args.ids else "") + "; `mailer webhooks log` lists them")
        return 0
    who = "the running `mailer serve` sends" if serving else "no `mailer serve` is running: the next one sends"
    print(f"{counted(count, 'delivery', 'deliveries')} pending again, due now; {who} them with a new series of tries")
    return 0


def delivery_lines(delivery: WebhookDelivery, attempts: list[Attempt]) -> list[str]:
    """One delivery and its attempts, oldest attempt first."""
    # every try in the log: a retried delivery's count starts again at `webhooks retry`
    tries = counted(max(len(attempts), delivery.attempts), "attempt")
    if delivery.state == "pending" and delivery.next_attempt_at is not None:
        state = f"pending, next try {_when(delivery.next_attempt_at)}"
    elif delivery.state == "failed":
        state = "failed (gave up)"
    else:
        state = delivery.state
    lines = [
        f"#{delivery.id} {_when(delivery.created_at)}  {delivery.webhook}  {delivery.event_type}  "
        f"{delivery.event_id}  {state}, {tries}"
    ]
    for at, status, error, duration_ms in attempts:
        outcome = f"HTTP {status}" if status is not None else "no response"
        lines.append(f"    {_when(at)}  {outcome}  {duration_ms} ms" + (f"  {error}" if error else ""))
    return lines


def _webhooks_log(args: argparse.Namespace) -> int:
    from mailer.cli import load

    config = load(args, required=True)

    async def run() -> list[tuple[WebhookDelivery, list[Attempt]]]:
        async with open_store(config) as store:
            found = await store.deliveries(webhook=args.webhook, limit=args.limit)
            return [(delivery, await store.delivery_attempts(delivery.id)) for delivery in found]

    log = asyncio.run(run())
    if not log and args.webhook is not None and args.webhook not in config.webhooks:
        known = ", ".join(sorted(config.webhooks)) or "none configured"
        raise UserError(f"no webhook named {args.webhook!r}", field="--webhook", hint=f"[webhooks.NAME] in mailer.toml: {known}")
    if not log:
        print("no webhook deliveries yet" + ("" if config.webhooks else " (no [webhooks.NAME] in mailer.toml)"))
    for delivery, attempts in log:
        print("\n".join(delivery_lines(delivery, attempts)))
    return 0
