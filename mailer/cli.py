"""The `mailer` command: init, serve, validate, preview, leads, scores, accounts, api-key, status, demo.

A user's mistake ends as one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
import select
import signal
import sys
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from mailer import apishell, leadsshell, queueshell, scoresshell
from mailer.argtypes import LARGEST, positive
from mailer.clock import AcceleratedClock, Clock, SystemClock
from mailer.config import CONFIG_NAME, STARTER_CONFIG, Config, load_config
from mailer.consent import REASONS
from mailer.errors import ConfigError, MailerError, UserError
from mailer.csvimport import lookup_email
from mailer.store import BounceRecord
from mailer.wording import counted

EXIT_USER_ERROR = 2
# What a shell reports for a command ended by SIGPIPE (128 + 13), as for `yes | head`.
EXIT_BROKEN_PIPE = 128 + 13


def main(argv: Sequence[str] | None = None) -> int:
    try:
        try:
            return _main(argv)
        finally:
            if sys.stdout is not None:  # None when started with fd 1 closed (`mailer serve >&-`)
                sys.stdout.flush()  # a reader gone away shows here, inside the guard, not at exit
    except BrokenPipeError:
        if not _stdout_closed():
            raise  # some other pipe: a bug to see, not a quiet exit
        # `mailer report | head`: the reader has all it wanted. As the signal module's "Note on
        # SIGPIPE" shows, stdout goes to devnull so the interpreter's last flush is quiet too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


def _stdout_closed() -> bool:
    """Whether stdout is a pipe whose reader has gone (poll(2) reports an error or hang-up on it)."""
    try:
        fd = sys.stdout.fileno()
    except (OSError, ValueError):  # not a file at all, so not the pipe that broke
        return False
    if not hasattr(select, "poll"):
        return True
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))


def _main(argv: Sequence[str] | None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return EXIT_USER_ERROR
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("aiosqlite").setLevel(logging.WARNING)
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd's per-command log
    try:
        result: int = args.run(args)
        return result
    except UserError as error:
        print(f"mailer: error: {error.render()}", file=sys.stderr)
        return EXIT_USER_ERROR
    except MailerError as error:
        print(f"mailer: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _global_options(parser: argparse.ArgumentParser, *, config: Any, verbose: Any) -> None:
    parser.add_argument("--config", "-c", type=Path, default=config, help=f"the config file (default ./{CONFIG_NAME})")
    parser.add_argument("--verbose", "-v", action="store_true", default=verbose, help="log debug detail")


class _CommandParser(argparse.ArgumentParser):
    """A command's or action's parser: it takes the global options too, so `mailer status
    --config FILE` works as `mailer --config FILE status` does. Given in both places, the later
    one counts; given in neither, the top-level defaults stay (SUPPRESS sets nothing)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _global_options(self, config=argparse.SUPPRESS, verbose=argparse.SUPPRESS)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mailer", description="Nurture scenarios, sent well.")
    _global_options(parser, config=None, verbose=False)
    # Actions' parsers (`leads import`, …) are made by their command's, so of this class too.
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_CommandParser)

    init = commands.add_parser("init", help="write a starter mailer.toml, a secret key and example content")
    init.add_argument("directory", nargs="?", type=Path, default=Path("."))
    init.add_argument(
        "--force", action="store_true",
        help="rewrite an existing mailer.toml with the starter config; keeps mailer.key (links already sent "
        "are signed with it) and the example folders that exist",
    )
    init.set_defaults(run=_init)

    serve = commands.add_parser("serve", help="run the send daemon until SIGTERM or Ctrl-C")
    serve.set_defaults(run=_serve)

    validate = commands.add_parser("validate", help="check scenarios and render every step against sample leads")
    validate.add_argument("path", nargs="?", type=Path, default=None, help="a scenario file or directory")
    validate.add_argument("--leads", type=Path, default=None, help="render against the leads of this CSV")
    validate.set_defaults(run=_validate)

    preview = commands.add_parser("preview", help="write one step's message for a lead as .eml and .html")
    preview.add_argument("scenario")
    preview.add_argument("step")
    preview.add_argument("--lead", required=True, help="the lead's email address")
    preview.add_argument("--out", type=Path, default=Path("preview"), help="directory to write into")
    preview.set_defaults(run=_preview)

    leads = commands.add_parser("leads", help="manage leads")
    lead_commands = leads.add_subparsers(dest="leads_command", metavar="ACTION", required=True)
    import_ = lead_commands.add_parser("import", help="import or update leads from a CSV file")
    import_.add_argument("file", type=Path)
    import_.add_argument(
        "--list", dest="list_name", default=None,
        help="add the leads to this list as confirmed members: importing them says they consented "
        "(recorded as 'imported' evidence naming the file); suppressions stay",
    )
    import_.add_argument("--source", default=None, help="where these leads came from (流入元)")
    import_.add_argument("--check-deliverability", action="store_true", help="also check each domain in DNS")
    import_.add_argument("--strict", action="store_true", help="import nothing if any row is rejected")
    import_.set_defaults(run=_leads_import)
    leadsshell.add_lead_commands(lead_commands)  # show, accept, stage, list

    bounces = commands.add_parser("bounces", help="bounce evidence: ingest, list, show, undo")
    bounce_commands = bounces.add_subparsers(dest="bounces_command", metavar="ACTION", required=True)
    ingest_ = bounce_commands.add_parser("ingest", help="read bounce messages from an .eml, mbox or maildir")
    ingest_.add_argument("path", type=Path)
    ingest_.set_defaults(run=_bounces_ingest)
    list_ = bounce_commands.add_parser("list", help="the latest bounces and what was done")
    list_.add_argument("--email", default=None)
    list_.add_argument("--limit", type=positive, default=50)
    list_.set_defaults(run=_bounces_list)
    show = bounce_commands.add_parser("show", help="one bounce with its evidence")
    show.add_argument("id", type=positive)
    show.set_defaults(run=_bounces_show)
    undo = bounce_commands.add_parser("undo", help="reverse a bounce's suppression (a false positive)")
    undo.add_argument("target", help="a bounce id, or an address to lift every bounce suppression of")
    undo.set_defaults(run=_bounces_undo)

    suppress = commands.add_parser("suppress", help="the suppression list: add, remove, list, import, export")
    suppress_commands = suppress.add_subparsers(dest="suppress_command", metavar="ACTION", required=True)

    def scope_and_reason(action: argparse.ArgumentParser, *, reason: bool = True) -> None:
        action.add_argument("--list", dest="list_name", default="", help="only for this list (default: every list)")
        if reason:
            action.add_argument("--reason", choices=REASONS, default="manual", help="why (default manual)")

    s_add = suppress_commands.add_parser("add", help="never mail these addresses (again)")
    s_add.add_argument("emails", nargs="+", metavar="EMAIL")
    scope_and_reason(s_add)
    s_add.add_argument("--note", default="", help="a note kept with the suppression")
    s_add.set_defaults(run=_suppress_add)
    s_remove = suppress_commands.add_parser("remove", help="lift an address's suppression (for one list, or global)")
    s_remove.add_argument("email", metavar="EMAIL")
    scope_and_reason(s_remove, reason=False)
    s_remove.set_defaults(run=_suppress_remove)
    s_list = suppress_commands.add_parser("list", help="the latest suppressions")
    s_list.add_argument("--reason", choices=REASONS, default=None)
    s_list.add_argument("--list", dest="list_name", default=None, help="only this list ('' for global ones)")
    s_list.add_argument("--email", default=None, metavar="EMAIL", help="only this address's suppressions")
    s_list.add_argument("--limit", type=positive, default=50, help="show at most N (default 50)")
    s_list.set_defaults(run=_suppress_list)
    s_import = suppress_commands.add_parser(
        "import", help="suppress the addresses of a CSV (column email; list, reason, detail, created_at kept per row)"
    )
    s_import.add_argument("file", type=Path)
    s_import.add_argument("--list", dest="list_name", default=None,
                          help="only for this list (default: every list); not with a file that has a list column")
    s_import.add_argument("--reason", choices=REASONS, default=None,
                          help="why (default manual); not with a file that has a reason column")
    s_import.set_defaults(run=_suppress_import)
    s_export = suppress_commands.add_parser("export", help="every suppression as CSV (safe to open in a spreadsheet)")
    s_export.add_argument("--out", type=Path, default=None, help="write to this file (default: stdout)")
    s_export.set_defaults(run=_suppress_export)

    report = commands.add_parser("report", help="per scenario and step: sent, delivered, bounces, opens, clicks, unsubscribes")
    report.add_argument("scenario", nargs="?", default=None, metavar="SCENARIO")
    report_format = report.add_mutually_exclusive_group()
    report_format.add_argument("--json", action="store_true", help="print JSON")
    report_format.add_argument("--csv", action="store_true", help="print CSV (formula-safe)")
    report.set_defaults(run=_report)

    status = commands.add_parser("status", help="count leads, enrollments and messages by state")
    status.set_defaults(run=_status)

    warmup = commands.add_parser("warmup", help="sending IPs' warm-up budgets and throttles")
    warmup_commands = warmup.add_subparsers(dest="warmup_command", metavar="ACTION", required=True)
    w_status = warmup_commands.add_parser("status", help="each IP and provider: day, caps, use, state, last decision")
    w_status.add_argument("--json", action="store_true", help="as JSON")
    w_status.set_defaults(run=_warmup_status)

    demo = commands.add_parser("demo", help="run a week of nurture against an embedded SMTP server")
    demo.add_argument("--workspace", type=Path, default=None, help="where to write (default: a new temp dir)")
    demo.add_argument("--days", type=float, default=10.0, help="at most this many days of nurture (it stops once all is sent)")
    demo.add_argument("--seconds", type=float, default=20.0, help="how many real seconds those days take")
    demo.set_defaults(run=_demo)

    check = commands.add_parser("check-domain", help="check a sending domain's SPF, DKIM, DMARC, MX and reverse DNS")
    check.add_argument("domain", help="the From domain, e.g. acme.example")
    check.add_argument("--ip", default=None, help="the IP address mail leaves from (for SPF and reverse DNS)")
    check.add_argument("--selector", default=None, help="the DKIM selector (default: [dkim] selector when a key is configured)")
    check.add_argument("--dkim-key", type=Path, default=None, help="the DKIM private key (PEM) to compare with DNS")
    check.add_argument("--ed25519-selector", default=None, help="the second (Ed25519) signature's selector (default: from [dkim])")
    check.add_argument("--ed25519-key", type=Path, default=None, help="its private key (PEM) to compare with DNS")
    check.add_argument("--return-path-domain", default=None, help="the envelope sender's domain (default: DOMAIN)")
    check.add_argument("--nameserver", default=None, metavar="HOST[:PORT]", help="ask this DNS server, not the system's")
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    check.set_defaults(run=_check_domain)

    scoresshell.add_commands(commands)  # scores rebuild, accounts
    apishell.add_commands(commands)  # api-key, webhooks log
    queueshell.add_commands(commands)  # queue, queue list, queue retry
    return parser


def load(args: argparse.Namespace, *, required: bool = False) -> Config:
    """The config named by --config, ./mailer.toml, or (unless required) the defaults."""
    path: Path | None = args.config
    if path is None:
        candidate = Path.cwd() / CONFIG_NAME
        if candidate.exists():
            path = candidate
    if path is not None:
        return load_config(path)
    if required:
        raise ConfigError(f"no {CONFIG_NAME} here", file=str(Path.cwd() / CONFIG_NAME), hint="run `mailer init` first, or pass --config")
    base = Path.cwd()
    return Config(store=base / "mailer.db", scenarios=base / "scenarios", templates=base / "templates", secret_key_file=base / "mailer.key")


def make_clock(config: Config) -> Clock:
    if config.clock.speed == 1.0 and not config.clock.start:
        return SystemClock()
    start = datetime.fromisoformat(config.clock.start) if config.clock.start else None
    return AcceleratedClock(config.clock.speed, start)


# -- commands ------------------------------------------------------------------------------


def _init(args: argparse.Namespace) -> int:
    from mailer.examples_data import copy_examples

    directory: Path = args.directory
    directory.mkdir(parents=True, exist_ok=True)
    config_path = directory / CONFIG_NAME
    key_path = directory / "mailer.key"
    if config_path.exists() and not args.force:
        raise ConfigError("already exists", file=str(config_path), hint="pass --force to overwrite it")
    config_path.write_text(STARTER_CONFIG, encoding="utf-8")
    if key_path.exists():
        # Never replaced: links and bounce addresses already sent are signed with it.
        print(f"kept the existing key {key_path}")
    else:
        # Created with mode 0600 from the start, never world-readable for a moment.
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as key_file:
            key_file.write(secrets.token_urlsafe(48) + "\n")
        print(f"wrote {key_path} (mode 0600)")
    copied = copy_examples(directory)
    print(f"wrote {config_path}")
    for item in copied:
        print(f"wrote {item}")
    print(f"next: edit {config_path} ([relay] and [identities.default]), then `mailer leads import FILE.csv --list trial-signups`")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from mailer.daemon import Daemon
    from mailer.servelock import serve_lock
    from mailer.store import open_store

    config = load(args, required=True)
    if config.relay.username and not os.environ.get(config.relay.password_env):
        raise ConfigError(
            f"relay.username is set but ${config.relay.password_env} is empty",
            file=str(config.path),
            field="relay.password_env",
            hint=f"export {config.relay.password_env}=... before `mailer serve`",
        )
    log = logging.getLogger("mailer")

    async def run() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def on_signal() -> None:
            if stop.is_set():
                # The second signal: stop now, like a crash. Messages in flight are
                # recovered and sent again at the next start (the README's guarantee).
                log.warning("second signal: stopping at once; messages in flight will be retried")
                os._exit(1)
            log.info("stopping: finishing the SMTP transactions under way (signal again to stop at once)")
            stop.set()

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, on_signal)
        async with open_store(config) as store:
            daemon = Daemon(config=config, store=store, clock=make_clock(config))
            errors = daemon.load_scenarios()
            if not daemon.scenarios and errors:
                raise errors[0]
            route = (
                "straight to recipients' MX hosts" if config.delivery.mode == "direct"
                else f"through {config.relay.host}:{config.relay.port}"
            )
            log.info("serving %s from %s %s", counted(len(daemon.scenarios), "scenario"), config.scenarios, route)
            report = await daemon.serve(stop)
        # attempts and holds of this run, not what is left: a message deferred twice counts twice
        log.info("stopped; this run: %s (`mailer queue` shows what still waits)", report.summary())
        return 0

    with serve_lock(config.store):
        return asyncio.run(run())


def _validate(args: argparse.Namespace) -> int:
    from mailer.validate import validate

    config = load(args)
    problems, summary = validate(config, path=args.path, leads_csv=args.leads)
    for problem in problems:
        print(f"mailer: error: {problem.render()}", file=sys.stderr)
    print(summary)
    return EXIT_USER_ERROR if problems else 0


def _preview(args: argparse.Namespace) -> int:
    from mailer.validate import preview

    config = load(args, required=True)  # never a stray mailer.db in the wrong folder
    written = asyncio.run(preview(config, scenario_name=args.scenario, step_id=args.step, email=args.lead, out=args.out))
    for path in written:
        print(f"wrote {path}")
    return 0


def _leads_import(args: argparse.Namespace) -> int:
    from mailer.importing import import_leads

    config = load(args, required=True)  # never a stray mailer.db in the wrong folder
    return asyncio.run(
        import_leads(
            config,
            path=args.file,
            list_name=args.list_name,
            source=args.source,
            check_deliverability=args.check_deliverability,
            strict=args.strict,
        )
    )


def _status(args: argparse.Namespace) -> int:
    from mailer.store import open_store

    config = load(args, required=True)  # never a stray mailer.db in the wrong folder

    async def run() -> None:
        async with open_store(config) as store:
            print(f"leads: {await store.lead_count()}")
            print("enrollments: " + _counts(await store.enrollment_counts()))
            messages = await store.message_counts()
            print("messages: " + _counts(messages) + ("; `mailer queue` shows why they wait" if messages.get("deferred") else ""))
            since = now_utc() - timedelta(days=7)
            bounces = await store.bounce_summary(since)
            sent = await store.sent_since(since)
            complaints = bounces.get("complaint", 0)
            rate = f"{complaints / sent:.2%}" if sent else "n/a"
            print(f"last 7 days: {sent} sent; bounces: {_counts(bounces)}; complaint rate {rate}")
            if bounces.get("sender-alert"):
                # Gmail and Yahoo's bulk-sender rules expect complaints under 0.3%; alerts
                # mean receivers are refusing us, not our recipients.
                refusals = counted(bounces["sender-alert"], "refusal")
                print(f"deliverability alerts: {refusals} of the sender; see `mailer bounces list`")

    asyncio.run(run())
    return 0


def _bounces_ingest(args: argparse.Namespace) -> int:
    from mailer.ingest import ingest

    config = load(args, required=True)
    report = asyncio.run(ingest(config, args.path))
    actions = ", ".join(f"{action} {n}" for action, n in sorted(report.actions.items())) or "none"
    print(
        f"{counted(report.messages, 'message')}: {report.not_bounces} not bounces, {report.unmatched} not matched "
        f"to a message, {report.already_seen} already seen; actions: {actions}"
    )
    return 0


def _bounce_line(record: BounceRecord) -> str:
    undone = " (undone)" if record.undone_at else ""
    code = " ".join(str(x) for x in (record.reply_code, record.status) if x)
    kind = "" if record.kind in ("bounce", record.reason) else f"{record.kind} "  # "delayed networkerror/none"
    return (
        f"#{record.id} {record.at:%Y-%m-%d %H:%M} {record.email} {kind}{record.reason}/{record.bounce_class} "
        f"{code} → {record.action}{undone} [{record.source}, rule {record.rule or '-'}]"
    )


def _bounces_list(args: argparse.Namespace) -> int:
    from mailer.store import open_store

    config = load(args, required=True)

    email = lookup_email(args.email) if args.email else None

    async def run() -> list[BounceRecord]:
        async with open_store(config) as store:
            return await store.bounces(email=email, limit=args.limit)

    records = asyncio.run(run())
    if not records:
        print(f"no bounces for {email}" if email else "no bounces yet")
    for record in records:
        print(_bounce_line(record))
    return 0


def _bounces_show(args: argparse.Namespace) -> int:
    from mailer.store import open_store

    config = load(args, required=True)

    async def run() -> BounceRecord | None:
        async with open_store(config) as store:
            return await store.bounce(args.id)

    record = asyncio.run(run())
    if record is None:
        raise UserError(f"no bounce #{args.id}", field="id", hint="see `mailer bounces list`")
    print(_bounce_line(record))
    print(f"diagnostic: {record.diagnostic}")
    print(f"suppression: {record.suppression or 'none'}; message row: {record.message or 'not matched'}")
    print("evidence:")
    print(record.evidence.decode("utf-8", "replace"))
    return 0


def _bounces_undo(args: argparse.Namespace) -> int:
    from mailer.store import open_store

    config = load(args, required=True)

    async def run() -> tuple[list[tuple[BounceRecord, BounceRecord | None]], dict[str, list[tuple[str, str, str]]]]:
        """(each bounce as it was, as it is after the undo or None when it was undone already),
        and each address's suppressions afterwards."""
        async with open_store(config) as store:
            if args.target.isdigit():
                number = int(args.target)
                found = await store.bounce(number) if number <= LARGEST else None  # past SQLite's INTEGER: no row
                if found is None:
                    raise UserError(f"no bounce #{args.target}", field="target", hint="see `mailer bounces list`")
                targets = [found]
            else:
                email = lookup_email(args.target)
                found_all = await store.bounces(email=email, limit=10_000)
                if not found_all:
                    raise UserError(f"no bounces for {email}", field="target", hint="see `mailer bounces list`")
                suppressing = [b for b in found_all if b.suppression]
                targets = [b for b in suppressing if b.undone_at is None] or suppressing
                if not targets:
                    print(f"no bounce suppressed {email}: nothing to undo (a bounce id undoes one that did not)")
            done: list[tuple[BounceRecord, BounceRecord | None]] = []
            for bounce in targets:
                assert bounce.id is not None
                after = None if bounce.undone_at else await store.undo_bounce(bounce.id, now=now_utc())
                done.append((bounce, after))
            return done, {email: await store.suppressions_of(email) for email in {b.email for b, _ in done}}

    done, left = asyncio.run(run())
    for before, after in done:
        if after is None:
            assert before.undone_at is not None
            print(f"already undone on {before.undone_at:%Y-%m-%d %H:%M}: {_bounce_line(before)}")
        elif before.suppression:
            still = [reason for list_name, reason, _ in left[before.email] if not list_name]
            outcome = (f"{before.email} stays suppressed for every list ({still[0]}): another bounce or suppression "
                       f"says so too (`mailer suppress list --email {before.email}`)") if still else (
                       f"lifted its {before.suppression} suppression of {before.email}")
            print(f"undone: {_bounce_line(after)}; {outcome}")
        else:
            print(f"undone: {_bounce_line(after)}; it suppressed nobody")
    return 0


def _suppress_add(args: argparse.Namespace) -> int:
    from mailer import suppressing

    config = load(args, required=True)
    return asyncio.run(suppressing.add(config, emails=args.emails, list_name=args.list_name, reason=args.reason, note=args.note))


def _suppress_remove(args: argparse.Namespace) -> int:
    from mailer import suppressing

    return asyncio.run(suppressing.remove(load(args, required=True), email=args.email, list_name=args.list_name))


def _suppress_list(args: argparse.Namespace) -> int:
    from mailer import suppressing

    config = load(args, required=True)
    return asyncio.run(
        suppressing.show(config, reason=args.reason, list_name=args.list_name, email=args.email, limit=args.limit)
    )


def _suppress_import(args: argparse.Namespace) -> int:
    from mailer import suppressing

    config = load(args, required=True)
    return asyncio.run(suppressing.import_file(config, path=args.file, list_name=args.list_name, reason=args.reason))


def _suppress_export(args: argparse.Namespace) -> int:
    from mailer import suppressing

    return asyncio.run(suppressing.export(load(args, required=True), out=args.out))


def _report(args: argparse.Namespace) -> int:
    from mailer.report import build_report, format_csv, format_json, format_table
    from mailer.scenario import load_scenarios
    from mailer.store import StepFigures, open_store

    config = load(args, required=True)
    # Loaded only to order the steps (and show unsent ones); a broken file is `validate`'s business.
    scenarios, _ = load_scenarios(config.scenarios, identities=config.identities, templates_dir=config.templates)
    order = {scenario.name: [step.id for step in scenario.steps] for scenario in scenarios}

    async def run() -> list[StepFigures]:
        async with open_store(config) as store:
            return await store.step_figures(args.scenario)

    rows = build_report(asyncio.run(run()), step_order=order, scenario=args.scenario)
    if args.scenario is not None and not rows:
        known = ", ".join(order) or "none loaded"
        raise UserError(f"no scenario named {args.scenario!r}", field="SCENARIO", hint=f"scenarios: {known}")
    print(format_json(rows) if args.json else format_csv(rows) if args.csv else format_table(rows), end="" if args.csv else "\n")
    return 0


def _warmup_status(args: argparse.Namespace) -> int:
    from mailer.store import open_store
    from mailer.warmup import WarmupPlan
    from mailer.warmupshell import load_budget, render_status, status_json

    config = load(args, required=True)
    now = make_clock(config).now()  # the daemon's clock: an accelerated demo shows its own day

    async def run() -> str:
        async with open_store(config) as store:
            rows = (await load_budget(store, WarmupPlan.from_config(config), now)).status(now)
        return status_json(rows) if args.json else render_status(rows, now)

    print(asyncio.run(run()))
    return 0


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{state} {count}" for state, count in sorted(counts.items())) or "none"


def _demo(args: argparse.Namespace) -> int:
    from mailer.demo import run_demo

    logging.getLogger("mailer").setLevel(logging.WARNING)  # the demo prints its own story
    return asyncio.run(run_demo(workspace=args.workspace, days=args.days, seconds=args.seconds))


def _check_domain(args: argparse.Namespace) -> int:
    from mailer.domaincheck import check_domain, format_report, make_resolver, require_answers

    # Inside a workspace, mailer.toml supplies the facts DNS cannot show: relay TLS, the DKIM key.
    config = load(args)
    configured = config.path is not None
    key_file = config.dkim.private_key_file if configured else ""
    selector = args.selector or (config.dkim.selector if key_file else None)
    dkim_key = args.dkim_key or (Path(key_file) if key_file and selector == config.dkim.selector else None)
    second_file = config.dkim.ed25519_key_file if configured else ""
    second_selector = args.ed25519_selector or (config.dkim.selector_for("ed25519") if second_file else None)
    second_key = args.ed25519_key or (
        Path(second_file) if second_file and second_selector == config.dkim.selector_for("ed25519") else None
    )
    resolver = make_resolver(args.nameserver)
    asyncio.run(require_answers(resolver, args.nameserver, args.domain))
    report = asyncio.run(
        check_domain(
            args.domain,
            resolver=resolver,
            ip=args.ip,
            selector=selector,
            dkim_key=dkim_key,
            ed25519_selector=second_selector,
            ed25519_key=second_key,
            return_path_domain=args.return_path_domain,
            relay_tls=config.relay.tls != "none" if configured else None,
            helo=config.relay.helo if configured else "",
        )
    )
    print(report.to_json() if args.json else format_report(report))
    return 0 if report.ready else 1


def now_utc() -> datetime:
    return datetime.now(timezone.utc)
