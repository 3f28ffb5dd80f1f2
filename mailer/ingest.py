"""`mailer bounces ingest PATH`: bounce messages from files into the same pipeline as the listener.

PATH may be one .eml file, an mbox file, a maildir (cur/ and new/), or a folder of files.

Reading has no side effects: a maildir's messages stay in new/ unflagged, an mbox unlocked
and unchanged. The mailbox is the user's (their MUA or a forwarding rule may own it), and
running the command again is harmless: the intake skips what it stored before
(mailer.bouncing.evidence_key), so a daily run over the same mailbox counts each bounce once.
"""

from __future__ import annotations

import mailbox
import sys
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

from tqdm import tqdm

from mailer.bouncing import BounceIntake, IntakeReport
from mailer.config import Config
from mailer.errors import UserError
from mailer.store import open_store
from mailer.tokens import Signer


def messages_in(path: Path) -> Iterator[tuple[str, bytes]]:
    """(name, raw bytes) of every message under `path`."""
    if not path.exists():
        raise UserError("no such file or folder", file=str(path), hint="name an .eml file, an mbox file or a maildir")
    if path.is_dir() and (path / "cur").is_dir() and (path / "new").is_dir():
        box = mailbox.Maildir(str(path), factory=None, create=False)
        for key in sorted(box.keys()):
            yield f"{path}/{key}", box.get_bytes(key)
    elif path.is_dir():
        for item in sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")):
            yield str(item), item.read_bytes()
    elif _starts_an_mbox(path):
        mbox = mailbox.mbox(str(path), create=False)
        for index, key in enumerate(mbox.keys()):
            yield f"{path}#{index + 1}", mbox.get_bytes(key)
    else:
        yield str(path), path.read_bytes()


def _starts_an_mbox(path: Path) -> bool:
    """Whether the file's first line is an mbox "From " line; blank lines before it (an mbox
    joined by hand) are allowed, as Python's mailbox.mbox skips them too."""
    with path.open("rb") as file:
        return file.read(64 * 1024).lstrip()[:5] == b"From "


async def ingest(config: Config, path: Path) -> IntakeReport:
    report = IntakeReport()
    items = list(messages_in(path))
    signer = Signer(config.secret_keys()) if config.bounces.domain else None
    async with open_store(config) as store:
        intake = BounceIntake(store=store, signer=signer, config=config.bounces)
        for _, raw in tqdm(items, desc=f"ingesting {path.name}", unit=" msgs", disable=not sys.stderr.isatty(), leave=False):
            await intake.take(raw, envelope_recipients=(), source="ingest", now=datetime.now(timezone.utc), report=report)
    return report
