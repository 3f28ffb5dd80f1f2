"""Build processes: messages rendered and signed on the other cores, beside the send loop.

A Python process runs on one core, and building a message (templates, MIME, an RSA-2048
DKIM signature) costs about as much CPU as sending and recording it. With
`[delivery] build_processes` > 0 the daemon starts that many children (`python -m
mailer.buildprocesses`), each with its own `MessageBuilder` made from the daemon's `Config`;
the send loop keeps everything that decides what is sent and when (claims, budgets,
breakers, SMTP, the store), so no decision is split between processes.

The pipe: each frame is a 4-byte big-endian length and a pickle. Pickle is safe here: both
ends are this program, started by the daemon, over the child's own stdin and stdout. Frames
to a child: the config and the daemon's keys (first), the scenarios (at start and after every reload, so a job
always meets the scenarios its parent had when it was sent), jobs in small batches; from a
child: one frame of results per batch, in the batch's order.

A child exits when its stdin closes: at shutdown, and when the daemon dies (even by kill -9),
so no child outlives its daemon. A child that dies mid-batch fails nothing: its jobs end as
`BuildUnavailable` (retried) and the child is started again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import signal
import struct
import sys
import time
from collections.abc import Sequence
from typing import Any, BinaryIO

from mailer.builders import BuildFailed, BuildJob, BuildKeys, Built, BuildUnavailable, MessageBuilder, TemplateBroken
from mailer.config import Config
from mailer.scenario import Scenario

log = logging.getLogger("mailer.buildprocesses")

HEADER = struct.Struct(">I")
BATCH = 8  # jobs a frame at most: small enough that a worker waits ~10 ms, big enough to amortize the pipe
START_TIMEOUT = 60.0  # seconds a child may take to import and read its config
# A batch takes milliseconds; a template stops itself within seconds (mailer.sandbox). A child
# past this is stuck: it is killed, so no worker (nor the daemon's drain) waits forever.
BATCH_DEADLINE = 60.0
WATCH_SECONDS = 5.0  # how often the batches' ages are checked
DEATHS_PER_MESSAGE = 2  # a message whose build killed its process this often fails: it kills every one
RESTART_PAUSE = 1.0  # seconds before a dead child is started again (a crash loop must not spin)

Result = tuple[str, Any]  # ("built", Built) | ("failed", text) | ("unavailable", text) | ("error", text)


def frame(payload: object) -> bytes:
    body = pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(body)) + body


# -- the child -------------------------------------------------------------------------------


def _read(stream: BinaryIO) -> Any:
    header = stream.read(HEADER.size)
    if len(header) < HEADER.size:
        return None  # the daemon closed the pipe (or died): time to go
    (size,) = HEADER.unpack(header)
    body = stream.read(size)
    if len(body) < size:
        return None  # the daemon died while writing: no traceback into its log
    return pickle.loads(body)


def build_one(builder: MessageBuilder, job: BuildJob) -> Result:
    try:
        return ("built", builder.build(job))
    except BuildFailed as error:
        return ("failed", str(error))
    except TemplateBroken as error:
        return ("template", str(error))
    except BuildUnavailable as error:
        return ("unavailable", str(error))
    except Exception as error:  # a bug: the parent logs it and retries the message
        log.exception("building %s failed", job.message_id)
        return ("error", f"{type(error).__name__}: {error}")


def serve(stdin: BinaryIO, stdout: BinaryIO) -> None:
    """The child's loop: config, then scenarios and batches, until stdin closes."""
    first = _read(stdin)
    if first is None:
        return
    config, keys = first
    builder = MessageBuilder(config, keys)
    stdout.write(frame("ready"))
    stdout.flush()
    while (message := _read(stdin)) is not None:
        kind, payload = message
        if kind == "scenarios":
            builder.load(payload)
            continue
        stdout.write(frame([build_one(builder, job) for job in payload]))
        stdout.flush()


def main() -> None:
    # Ctrl-C in a terminal reaches the whole process group: the daemon decides when to stop,
    # and closing the pipe is how it tells its children.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(asctime)s build process: %(message)s")
    with contextlib.suppress(BrokenPipeError):  # the daemon is gone: so is its use for us
        # The frames get fd 1 to themselves; whatever a library prints goes to stderr, the
        # daemon's log, instead of corrupting a frame.
        frames = os.fdopen(os.dup(1), "wb")
        os.dup2(2, 1)
        serve(sys.stdin.buffer, frames)


# -- the daemon's side -----------------------------------------------------------------------


def _settle(future: asyncio.Future[Built], kind: str, value: Any) -> None:
    if kind == "built":
        future.set_result(value)
    elif kind == "failed":
        future.set_exception(BuildFailed(value))
    elif kind == "template":
        future.set_exception(TemplateBroken(value))
    elif kind == "unavailable":
        future.set_exception(BuildUnavailable(value))
    else:
        future.set_exception(RuntimeError(f"build process: {value}"))


class _Child:
    def __init__(self, number: int) -> None:
        self.number = number
        self.process: asyncio.subprocess.Process | None = None
        self.reader: asyncio.Task[None] | None = None
        self.batches: list[list[tuple[BuildJob, asyncio.Future[Built]]]] = []  # sent, unanswered, in order
        self.sent_at: list[float] = []  # monotonic time each of `batches` was written

    @property
    def waiting(self) -> int:
        return sum(len(batch) for batch in self.batches)

    def write(self, data: bytes) -> None:
        assert self.process is not None and self.process.stdin is not None
        self.process.stdin.write(data)


class BuildProcesses:
    """`processes` children building messages; `build` is awaited by the daemon's workers."""

    def __init__(self, config: Config, processes: int, keys: BuildKeys | None = None) -> None:
        self.config = config
        self.keys = keys or BuildKeys.load(config)  # the daemon's: a restarted child signs with them too
        self._children = [_Child(n) for n in range(processes)]
        self._scenarios: dict[str, Scenario] = {}
        self._queued: list[tuple[BuildJob, asyncio.Future[Built]]] = []
        self._flush_scheduled = False
        self._closing = False
        self._restarts: set[asyncio.Task[None]] = set()  # referenced, so close() can cancel them
        self._deaths: dict[int, int] = {}  # message row → build processes that died building it
        self._local: MessageBuilder | None = None  # builds when no child is running
        self._watchdog: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start every child; returns once each has its config (raises when one cannot start)."""
        results = await asyncio.gather(*(self._start(child) for child in self._children), return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            await self.close()  # the ones that did start, too
            raise failed[0]
        self._watchdog = asyncio.create_task(self._watch())

    async def _start(self, child: _Child) -> None:
        process = await asyncio.create_subprocess_exec(
            # -P: never a `mailer` folder from the working directory, the installed one
            sys.executable, "-P", "-m", "mailer.buildprocesses",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert process.stdin is not None and process.stdout is not None
        child.process = process
        child.write(frame((self.config, self.keys)))
        child.write(frame(("scenarios", self._scenarios)))
        try:
            ready = await asyncio.wait_for(self._receive(process.stdout), START_TIMEOUT)
        except (asyncio.IncompleteReadError, TimeoutError) as error:
            process.kill()
            raise RuntimeError(f"build process {child.number} did not start ({type(error).__name__})") from None
        if ready != "ready":
            process.kill()
            raise RuntimeError(f"build process {child.number} said {ready!r} instead of ready")
        child.reader = asyncio.create_task(self._read(child))

    @staticmethod
    async def _receive(stream: asyncio.StreamReader) -> Any:
        (size,) = HEADER.unpack(await stream.readexactly(HEADER.size))
        return pickle.loads(await stream.readexactly(size))

    def load(self, scenarios: dict[str, Scenario]) -> None:
        """Every child builds from `scenarios` from its next batch on (the pipe keeps the order)."""
        self._scenarios = scenarios
        if self._local is not None:
            self._local.load(scenarios)
        data = frame(("scenarios", scenarios))
        for child in self._children:
            if child.process is not None and child.process.returncode is None:
                child.write(data)

    async def build(self, job: BuildJob) -> Built:
        if self._closing:
            raise BuildUnavailable("the daemon is stopping")
        future: asyncio.Future[Built] = asyncio.get_running_loop().create_future()
        self._queued.append((job.portable(), future))
        if not self._flush_scheduled:
            # the jobs of one pass of the loop go out together
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        self._flush_scheduled = False
        queued, self._queued = self._queued, []
        live = [c for c in self._children if c.reader is not None and not c.reader.done()]
        if self._closing:
            # once close() has begun nothing more is sent: a pipe it closed would drop the jobs
            for _, future in queued:
                if not future.done():
                    future.set_exception(BuildUnavailable("the daemon is stopping"))
            return
        if not live:  # every child is restarting: sending goes on, slower, built here
            self._build_here(queued)
            return
        for start in range(0, len(queued), BATCH):
            batch = queued[start : start + BATCH]
            try:
                data = frame(("build", [job for job, _ in batch]))
            except Exception as error:  # a job that does not pickle is a bug: it must not strand the other batches
                for _, future in batch:
                    if not future.done():
                        future.set_exception(RuntimeError(f"cannot send the job to a build process: {error!r}"))
                continue
            child = min(live, key=lambda c: c.waiting)
            child.batches.append(batch)
            child.sent_at.append(time.monotonic())
            child.write(data)

    def _build_here(self, queued: list[tuple[BuildJob, asyncio.Future[Built]]]) -> None:
        if self._local is None:  # kept: its layouts are prepared once per step, not per batch
            self._local = MessageBuilder(self.config, self.keys)
            self._local.load(self._scenarios)
        for job, future in queued:
            if future.done():
                continue
            kind, value = build_one(self._local, job)
            _settle(future, kind, value)

    async def _watch(self) -> None:
        """Kill a child whose oldest batch is past BATCH_DEADLINE; its reader then sees EOF."""
        while not self._closing:
            await asyncio.sleep(WATCH_SECONDS)
            for child in self._children:
                if child.sent_at and time.monotonic() - child.sent_at[0] > BATCH_DEADLINE and child.process is not None:
                    log.error("build process %d has not answered for %.0f s; killing it", child.number, BATCH_DEADLINE)
                    with contextlib.suppress(ProcessLookupError):
                        child.process.kill()

    async def _read(self, child: _Child) -> None:
        assert child.process is not None and child.process.stdout is not None
        stdout = child.process.stdout
        try:
            while True:
                results: Sequence[Result] = await self._receive(stdout)
                # popped once answered: jobs left unanswered by a broken frame stay for _lost
                for (_, future), (kind, value) in zip(child.batches[0], results, strict=True):
                    if not future.done():
                        _settle(future, kind, value)
                child.batches.pop(0)
                child.sent_at.pop(0)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the child ended
        except Exception:  # not a frame, not a pickle, not an answer to its batch: replace the child
            log.exception("build process %d answered with something else than results", child.number)
        self._lost(child)

    def _lost(self, child: _Child) -> None:
        """The child's pipe closed: its unanswered jobs are retried; start it again."""
        for batch in child.batches:
            for job, future in batch:
                if future.done():
                    continue
                deaths = self._deaths[job.message_row] = self._deaths.get(job.message_row, 0) + 1
                if deaths >= DEATHS_PER_MESSAGE:  # this message kills its builder: it can never be built
                    future.set_exception(BuildFailed(f"its build process died {deaths} times building it"))
                else:
                    future.set_exception(BuildUnavailable("a build process ended before answering"))
        child.batches.clear()
        child.sent_at.clear()
        if not self._closing:
            code = child.process.returncode if child.process is not None else None
            log.error("build process %d ended (exit %s); starting it again", child.number, code)
            restart = asyncio.get_running_loop().create_task(self._restart(child))
            self._restarts.add(restart)
            restart.add_done_callback(self._restarts.discard)

    async def _restart(self, child: _Child) -> None:
        await asyncio.sleep(RESTART_PAUSE)
        if child.process is not None:
            with contextlib.suppress(ProcessLookupError):
                child.process.kill()
            await child.process.wait()
        while not self._closing:
            try:
                await self._start(child)
                return
            except Exception as error:  # keep trying: meanwhile messages are built in the daemon
                log.error("build process %d could not start: %s", child.number, error)
                await asyncio.sleep(RESTART_PAUSE)

    async def close(self) -> None:
        """Close the children's pipes and wait for them to exit."""
        self._closing = True
        if self._watchdog is not None:
            self._watchdog.cancel()
        # a restart under way would otherwise start a child after this returned, never told to stop
        restarts = list(self._restarts)
        for restart in restarts:
            restart.cancel()
        await asyncio.gather(*restarts, return_exceptions=True)
        for child in self._children:
            if child.process is not None and child.process.stdin is not None:
                child.process.stdin.close()  # all at once: they exit side by side
        for child in self._children:
            process = child.process
            if process is None:
                continue
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()
            if child.reader is not None:
                await child.reader


if __name__ == "__main__":
    main()
