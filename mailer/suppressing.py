"""`mailer suppress add | remove | list | import | export`: the operator's suppression list.

Suppressions are by address, global (list "") or for one list, with a reason from
mailer.consent.REASONS. Adding never overwrites: an address already suppressed keeps its
first reason and evidence (a hard bounce stays a hard bounce). Removing lifts exactly one
(address, list) pair and logs an `unsuppressed` event. A list named on the command line must
be one somebody knows (see `known_lists`): a typo there would suppress nobody, and the
daemon would go on mailing the person.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

from email_validator import EmailNotValidError

from mailer.config import Config
from mailer.csvimport import lookup_email, normalize_email
from mailer.errors import UserError
from mailer.scenario import load_scenarios
from mailer.store import Suppression, open_store
from mailer.suppressions_csv import created_order, read_suppressions_csv, write_suppressions_csv
from mailer.wording import counted
from mailer.yamlfile import closest

EXIT_REJECTED_ROWS = 2
DEFAULT_REASON = "manual"


def scope_name(list_name: str) -> str:
    return list_name or "every list"


async def known_lists(config: Config) -> set[str]:
    """The lists a suppression can be for: declared in mailer.toml ([lists.NAME]), holding
    leads in the store, or entered from by a scenario (a dynamic list included)."""
    known = set(config.lists)
    scenarios, _ = load_scenarios(config.scenarios, identities=config.identities, templates_dir=config.templates)
    known |= {scenario.entry.list_name for scenario in scenarios if scenario.entry.list_name}
    if config.store.exists():  # only reading: a refused command must not create the store
        async with open_store(config) as store:
            known |= set(await store.list_names())
    return known


async def require_known_list(config: Config, list_name: str) -> None:
    """Refuse a `--list` nobody knows (the global scope "" is always fine)."""
    if not list_name:
        return
    known = await known_lists(config)
    if list_name in known:
        return
    if known:
        close = closest(list_name, known)
        guess = f"did you mean {close!r}? " if close else ""
        hint = f"{guess}known lists: {', '.join(sorted(known))}"
    else:
        hint = "no list is known yet ([lists.NAME] in mailer.toml, `mailer leads import FILE --list NAME`, a scenario's entry list)"
    raise UserError(
        f"no list named {list_name!r}", field="--list", hint=f"{hint}; leave out --list to suppress for every list"
    )


async def add(config: Config, *, emails: Sequence[str], list_name: str, reason: str, note: str) -> int:
    """Suppress the given addresses; a malformed one or an unknown list stops the command before anything is written."""
    addresses = []
    for email in emails:
        try:
            addresses.append(normalize_email(email))
        except EmailNotValidError as error:
            raise UserError(f"{email!r} is not an email address: {error}", field="EMAIL") from None
    await require_known_list(config, list_name)
    suppressions = [Suppression(a, reason, list_name, note) for a in dict.fromkeys(addresses)]
    async with open_store(config) as store:
        added = await store.add_suppressions(suppressions, now=_now())
    kept = len(suppressions) - added
    already = f"; {kept} already suppressed (their first reason is kept)" if kept else ""
    print(f"suppressed {counted(added, 'address', 'addresses')} for {scope_name(list_name)} ({reason}){already}")
    return 0


async def remove(config: Config, *, email: str, list_name: str) -> int:
    """Lift one suppression; an address that has none there is a user error."""
    address = lookup_email(email)  # as `suppress add` stored it
    async with open_store(config) as store:
        lifted = await store.unsuppress(address, list_name=list_name, now=_now())
        others = await store.suppressions_of(address) if lifted is None else []
    if lifted is None:
        raise UserError(
            f"{email} is not suppressed for {scope_name(list_name)}", field="EMAIL",
            hint=_where_else([entry[0] for entry in others], asked=list_name),
        )
    print(f"lifted the {lifted.reason} suppression of {lifted.email} for {scope_name(list_name)}")
    if lifted.reason in ("hard-bounce", "complaint"):
        print("note: mailing an address that bounced or complained hurts the sender's reputation")
    return 0


def _where_else(lists: Sequence[str], *, asked: str) -> str:
    """Which suppression `suppress remove` can lift instead of the one asked for."""
    if not lists:
        return "it is not suppressed for any list, nor for every list"
    ways = []
    if "" in lists and asked:
        ways.append("drop --list to lift the one for every list")
    named = sorted(name for name in lists if name)
    if named:
        ways.append(f"pass --list {named[0]}" if len(named) == 1 else f"pass --list with one of {', '.join(named)}")
    return f"it is suppressed for: {', '.join(scope_name(name) for name in sorted(lists))}; " + ", or ".join(ways)


async def show(
    config: Config, *, reason: str | None, list_name: str | None, email: str | None = None, limit: int
) -> int:
    """The newest suppressions matching the filters; says so on stderr when more match than are shown."""
    address = lookup_email(email) if email is not None else None
    async with open_store(config) as store:
        found = await store.list_suppressions(reason=reason, list_name=list_name, email=address, limit=limit)
        total = len(found)
        if total >= limit:
            total = await store.count_suppressions(reason=reason, list_name=list_name, email=address)
    for s in found:
        when = f"{s.created_at:%Y-%m-%d %H:%M}" if s.created_at else "-"
        detail = f"  {s.detail}" if s.detail else ""
        print(f"{when}  {s.email}  {scope_name(s.list_name)}  {s.reason}{detail}")
    if not found and address is not None:
        filtered = reason is not None or list_name is not None
        print(f"no suppression of {address} matches --reason and --list" if filtered
              else f"{address} is not suppressed for any list, nor for every list", file=sys.stderr)
    elif not found:
        print("no suppressions", file=sys.stderr)
    elif total > len(found):
        print(f"showing {len(found):,} of {total:,}; --limit N or `mailer suppress export`", file=sys.stderr)
    return 0


async def import_file(config: Config, *, path: Path, list_name: str | None, reason: str | None) -> int:
    """Suppress every valid row of a CSV; exit code 2 when rows were rejected (the rest are written).

    A file with its own `list` or `reason` column (an export of ours) gives each row its own;
    `--list` or `--reason` with such a column is refused rather than silently ignored.
    """
    plan = read_suppressions_csv(
        path, list_name=list_name or "", reason=reason or DEFAULT_REASON, detail=f"imported from {path.name}"
    )
    for column, option in (("list", list_name), ("reason", reason)):
        if option is not None and column in plan.columns:
            raise UserError(
                f"--{column} {option!r}: the file gives each row its own {column} (its column {column!r})",
                file=str(path),
                hint=f"leave out --{column} to keep each row's, or remove the column to give every row {option!r}",
            )
    if list_name:
        await require_known_list(config, list_name)
    for rejection in plan.rejected:
        print(f"{path}:{rejection.line}: {rejection.email or '(no address)'}: {rejection.reason}", file=sys.stderr)
    if plan.undated:
        lines = ", ".join(str(line) for line in plan.undated[:5]) + (", …" if len(plan.undated) > 5 else "")
        print(f"{path}: note: {counted(len(plan.undated), 'row')} (line {lines}) dated now: its created_at is not "
              "an ISO 8601 time with a zone, as `mailer suppress export` writes it", file=sys.stderr)
    if "list" in plan.columns:
        await _refuse_unknown_lists(config, path, plan.suppressions)
    async with open_store(config) as store:
        added = await store.add_suppressions_by_scope(plan.suppressions, now=_now())
    new = sum(added.values())
    print(
        f"{path}: {counted(plan.rows, 'row')}: {import_summary(added)}, "
        f"{len(plan.suppressions) - new} already suppressed, {len(plan.rejected)} rejected"
    )
    return EXIT_REJECTED_ROWS if plan.rejected else 0


def import_summary(added: dict[tuple[str, str], int]) -> str:
    """What an import suppressed, by scope and reason: "2 addresses suppressed for news (unsubscribe)"
    or "6 addresses suppressed: 4 for every list, 2 for newsletter (4 hard-bounce, 2 manual)"."""
    scopes: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    for (list_name, reason), count in added.items():
        if count:
            scopes[scope_name(list_name)] += count
            reasons[reason] += count
    total = counted(sum(scopes.values()), "address", "addresses") + " suppressed"
    if not scopes:
        return total
    by_reason = next(iter(reasons)) if len(reasons) == 1 else _by_count(reasons, "{count} {key}")
    if len(scopes) == 1:
        return f"{total} for {next(iter(scopes))} ({by_reason})"
    return f"{total}: {_by_count(scopes, '{count} for {key}')} ({by_reason})"


def _by_count(counts: Counter[str], form: str) -> str:
    """Each key with its count, largest first: "4 for every list, 2 for newsletter"."""
    return ", ".join(form.format(count=count, key=key) for key, count in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


async def _refuse_unknown_lists(config: Config, path: Path, suppressions: Sequence[Suppression]) -> None:
    """Refuse a file naming lists nobody here knows, before anything is written: a suppression
    for a list that does not exist here stops nothing (the daemon matches list names exactly),
    and another system's "List" column (a CRM's) is not ours to read as scopes."""
    named = Counter(s.list_name for s in suppressions if s.list_name)
    known = await known_lists(config)
    unknown = sorted(name for name in named if name not in known)
    if not unknown:
        return
    said = ", ".join(
        f"{name!r} ({counted(named[name], 'row')}" + (f"; did you mean {close!r}?" if (close := closest(name, known)) else "") + ")"
        for name in unknown[:5]
    ) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
    raise UserError(
        f"the column 'list' names lists nobody here knows: {said}; nothing was imported",
        file=str(path),
        hint="declare them as [lists.NAME] in mailer.toml (or import their leads first), empty those cells to "
             "suppress for every list, or remove the column and pass --list",
    )


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
