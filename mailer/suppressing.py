"""`mailer suppress add | remove | list | import | export`: the operator's suppression list.

Suppressions are by address, global (list "") or for one list, with a reason from
mailer.consent.REASONS. Adding never overwrites: an address already suppressed keeps its
first reason and evidence (a hard bounce stays a hard bounce). Removing lifts exactly one
(address, list) pair and logs an `unsuppressed` event.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

from email_validator import EmailNotValidError

from mailer.config import Config
from mailer.csvimport import normalize_email
from mailer.errors import UserError
from mailer.store import Suppression, open_store
from mailer.suppressions_csv import created_order, read_suppressions_csv, write_suppressions_csv
from mailer.wording import counted

EXIT_REJECTED_ROWS = 2


def scope_name(list_name: str) -> str:
    return list_name or "every list"


async def add(config: Config, *, emails: Sequence[str], list_name: str, reason: str, note: str) -> int:
    """Suppress the given addresses; a malformed one stops the command before anything is written."""
    addresses = []
    for email in emails:
        try:
            addresses.append(normalize_email(email))
        except EmailNotValidError as error:
            raise UserError(f"{email!r} is not an email address: {error}", field="EMAIL") from None
    suppressions = [Suppression(a, reason, list_name, note) for a in dict.fromkeys(addresses)]
    async with open_store(config) as store:
        added = await store.add_suppressions(suppressions, now=_now())
    kept = len(suppressions) - added
    already = f"; {kept} already suppressed (their first reason is kept)" if kept else ""
    print(f"suppressed {counted(added, 'address', 'addresses')} for {scope_name(list_name)} ({reason}){already}")
    return 0


async def remove(config: Config, *, email: str, list_name: str) -> int:
    """Lift one suppression; an address that has none there is a user error."""
    async with open_store(config) as store:
        lifted = await store.unsuppress(email, list_name=list_name, now=_now())
        others = await store.suppressions_of(email.strip().lower()) if lifted is None else []
    if lifted is None:
        where = ", ".join(scope_name(entry[0]) for entry in others)
        hint = f"it is suppressed for: {where}; pass --list" if others else "see `mailer suppress list`"
        raise UserError(f"{email} is not suppressed for {scope_name(list_name)}", field="EMAIL", hint=hint)
    print(f"lifted the {lifted.reason} suppression of {lifted.email} for {scope_name(list_name)}")
    if lifted.reason in ("hard-bounce", "complaint"):
        print("note: mailing an address that bounced or complained hurts the sender's reputation")
    return 0


async def show(config: Config, *, reason: str | None, list_name: str | None, limit: int) -> int:
    async with open_store(config) as store:
        found = await store.list_suppressions(reason=reason, list_name=list_name, limit=limit)
    for s in found:
        when = f"{s.created_at:%Y-%m-%d %H:%M}" if s.created_at else "-"
        detail = f"  {s.detail}" if s.detail else ""
        print(f"{when}  {s.email}  {scope_name(s.list_name)}  {s.reason}{detail}")
    if not found:
        print("no suppressions", file=sys.stderr)
    return 0


async def import_file(config: Config, *, path: Path, list_name: str, reason: str) -> int:
    """Suppress every valid address of a CSV; exit code 2 when rows were rejected (the rest are written)."""
    plan = read_suppressions_csv(path)
    for rejection in plan.rejected:
        print(f"{path}:{rejection.line}: {rejection.email or '(no address)'}: {rejection.reason}", file=sys.stderr)
    detail = f"imported from {path.name}"
    async with open_store(config) as store:
        added = await store.add_suppressions(
            [Suppression(a, reason, list_name, detail) for a in plan.addresses], now=_now()
        )
    print(
        f"{path}: {counted(plan.rows, 'row')}: {counted(added, 'address', 'addresses')} suppressed for {scope_name(list_name)} ({reason}), "
        f"{len(plan.addresses) - added} already suppressed, {len(plan.rejected)} rejected"
    )
    return EXIT_REJECTED_ROWS if plan.rejected else 0


async def export(config: Config, *, out: Path | None) -> int:
    """Every suppression as CSV, to a file or stdout; safe to open in a spreadsheet."""
    async with open_store(config) as store:
        found = created_order(await store.list_suppressions())
    if out is None:
        write_suppressions_csv(sys.stdout, found)
        return 0
    try:
        # with a BOM: Excel reads BOM-less CSV in the local code page (cp932 in Japan)
        with out.open("w", encoding="utf-8-sig", newline="") as stream:
            count = write_suppressions_csv(stream, found)
    except OSError as error:
        raise UserError(f"cannot write the file: {error.strerror or error}", file=str(out)) from None
    print(f"wrote {counted(count, 'suppression')} to {out}")
    return 0


def _now() -> datetime:
    return datetime.now(timezone.utc)
