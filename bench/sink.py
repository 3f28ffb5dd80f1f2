"""Postfix's `smtp-sink` and `smtp-source` (Debian package `postfix`), driven from Python.

The sink is the receiver of the delivery benchmark: it counts every message it accepts
(`-c` prints running counters as it goes, flushed at each final dot), so the count and the
instant of the first and last message come from the receiving side, not from our own
store. With `dump`, it also writes each transaction to its own file (`-d`), for checks on
the bytes; that costs it about half its speed, so the timed runs go without. As root the
sink must switch to another user (`-u nobody`), so a dump folder must be reachable by it.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

_COUNTERS = re.compile(rb"mesg=(\d+)")
BACKLOG = 1024


def binary(name: str) -> str | None:
    """The path of a Postfix test program, on PATH or in /usr/sbin (not on a user's PATH)."""
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin")


def _privileges() -> list[str]:
    # smtp-sink refuses to run as root without a user to switch to (its -u option).
    return ["-u", "nobody"] if os.geteuid() == 0 else []


class Sink:
    """A running `smtp-sink` on 127.0.0.1:`port`; `received` counts accepted messages."""

    def __init__(self, port: int, *, dump: Path | None = None) -> None:
        program = binary("smtp-sink")
        if program is None:
            raise FileNotFoundError("smtp-sink not found: apt-get install postfix")
        self.port = port
        self.dump = dump
        arguments = [program, "-c", *_privileges(), "-h", "sink.bench.example"]
        if dump is not None:
            dump.mkdir(parents=True, exist_ok=True)
            dump.chmod(0o777)  # written after the sink drops to `nobody`
            arguments += ["-d", f"{dump}/msg."]
        arguments += [f"127.0.0.1:{port}", str(BACKLOG)]
        self.received = 0
        self.first_at: float | None = None  # perf_counter() of the first message after mark()
        self._mark = 0
        self._changed = threading.Condition()
        # Its warnings go to a file: a pipe nobody reads could fill and stall the sink.
        self._errors = tempfile.TemporaryFile()
        self._process = subprocess.Popen(arguments, stdout=subprocess.PIPE, stderr=self._errors)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._wait_listening()

    def _wait_listening(self) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"smtp-sink exited: {self._error_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as probe:
                    probe.recv(512)  # the 220 greeting; the session counts, never a message
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"smtp-sink did not listen on 127.0.0.1:{self.port}")

    def _read(self) -> None:
        assert self._process.stdout is not None
        while chunk := self._process.stdout.read1(65536):  # type: ignore[attr-defined]
            found = _COUNTERS.findall(chunk)
            if not found:
                continue
            now = time.perf_counter()
            with self._changed:
                self.received = int(found[-1])
                if self.first_at is None and self.received > self._mark:
                    self.first_at = now
                self._changed.notify_all()

    def mark(self) -> int:
        """Start a run: `first_at` will be the first message after now; returns the count so far."""
        with self._changed:
            self._mark = self.received
            self.first_at = None
            return self.received

    def wait_for(self, count: int, timeout: float) -> float | None:
        """Block until `count` messages were accepted in all; when it happened, or None."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self.received < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._changed.wait(left)
            return time.perf_counter()

    def stop(self) -> None:
        """Stop the sink; raises RuntimeError when it had died on its own (the run is void)."""
        died = self._process.poll()
        self._process.terminate()
        try:
            self._process.wait(10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._reader.join(5)
        errors = self._error_text()
        self._errors.close()
        if died is not None:
            raise RuntimeError(f"smtp-sink died during the run (exit {died}): {errors}")

    def _error_text(self) -> str:
        self._errors.seek(0)
        return self._errors.read().decode(errors="replace").strip()

    def __enter__(self) -> Sink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass(frozen=True)
class SourceRun:
    messages: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.messages / self.seconds


def source(sink: Sink, *, message: Path, count: int, sessions: int, sender: str, recipient: str) -> SourceRun:
    """`smtp-source` sends `count` copies of `message` over `sessions` parallel sessions,
    each session reused for message after message (-d); timed until the sink counted them."""
    program = binary("smtp-source")
    if program is None:
        raise FileNotFoundError("smtp-source not found: apt-get install postfix")
    before = sink.received
    start = time.perf_counter()
    subprocess.run(
        [program, "-s", str(sessions), "-m", str(count), "-d", "-F", str(message),
         "-f", sender, "-t", recipient, "-M", "source.bench.example", f"127.0.0.1:{sink.port}"],
        check=True, stdout=subprocess.DEVNULL, timeout=600,
    )  # fmt: skip
    done = sink.wait_for(before + count, timeout=30)
    if done is None:
        raise RuntimeError(f"the sink counted {sink.received - before} of smtp-source's {count} messages")
    return SourceRun(count, done - start)


def dumped_messages(dump: Path) -> list[tuple[str, bytes]]:
    """(RCPT argument, message as sent, CRLF line ends) of every transaction the sink dumped.

    A dump is the sink's own header lines (X-Client-Addr … X-Rcpt-Args, then a three-line
    Received), the message with LF line ends and dots unstuffed, and one empty line.
    """
    found = []
    for path in sorted(dump.iterdir()):
        text = path.read_bytes()
        head, _, rest = text.partition(b"\nReceived: ")
        recipient = re.search(rb"^X-Rcpt-Args: <([^>]*)>", head, re.M)
        lines = rest.split(b"\n")
        start = 1
        while start < len(lines) and lines[start][:1] in (b"\t", b" "):
            start += 1
        body = lines[start:]
        if body and body[-1] == b"":
            body = body[:-1]  # the split's tail after the last LF
        if body and body[-1] == b"":
            body = body[:-1]  # the empty line the sink appends
        found.append(((recipient.group(1).decode() if recipient else ""), b"\r\n".join(body) + b"\r\n"))
    return found
