"""Tests for mailer.buildprocesses, `[delivery] build_processes` and the daemon building in them.

Real child processes (`python -m mailer.buildprocesses`) throughout: their output is compared
with `LocalBuilders` in this process, and they are stopped, killed and fed nonsense with real
signals and real pipes. Children are found in /proc by their command line and parent.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import signal
import sqlite3
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from pathlib import Path

import dkim
import pytest

from conftest import ONE_STEP, SERVE_CONFIG, THREE_STEPS, make_config, make_leads, write_workspace
from mailer.builders import BuildFailed, BuildJob, BuildKeys, Built, BuildUnavailable, LocalBuilders
from mailer.buildprocesses import BATCH, BuildProcesses
from mailer.clock import FakeClock
from mailer.config import Config, DeliveryConfig, load_config
from mailer.daemon import Daemon
from mailer.dkim import generate_rsa_key, load_private_key, public_key_record
from mailer.errors import UserError
from mailer.leads import Lead
from mailer.render import RECHECK_SECONDS
from mailer.scenario import Scenario, load_scenarios
from mailer.sqlitestore import SQLiteStore
from mailer.testing import CaptureServer

NOW = datetime(2026, 1, 5, 9, 30, tzinfo=timezone.utc)
SELECTOR = "s1"
BOUNDARY = re.compile(rb'boundary="([^"]+)"')


# -- helpers -------------------------------------------------------------------------------


def build_children(parent: int) -> set[int]:
    """Pids of the live (not zombie) `mailer.buildprocesses` processes whose parent is `parent`."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            cmdline = (entry / "cmdline").read_bytes()  # empty for a zombie
        except OSError:
            continue
        ppid = re.search(r"^PPid:\s+(\d+)$", status, re.M)
        if ppid is not None and int(ppid.group(1)) == parent and b"mailer.buildprocesses" in cmdline:
            found.add(int(entry.name))
    return found


def running(pid: int) -> bool:
    """Whether `pid` exists and has not exited (a zombie has exited: only its parent's wait is missing)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return re.search(r"^State:\s+Z", status, re.M) is None


async def eventually(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        await asyncio.sleep(0.02)


def boundary_free(wire: bytes) -> bytes:
    """`wire` with its MIME boundary as BOUNDARY: every MessageLayout draws a random one
    (mailer.mime), so two processes never write the same."""
    found = BOUNDARY.search(wire)
    assert found is not None, wire[:300]
    return wire.replace(found.group(1), b"BOUNDARY")


def workspace(root: Path, *, dkim_key: Path | None = None) -> tuple[Config, dict[str, Scenario]]:
    write_workspace(root, THREE_STEPS)
    sections: dict[str, dict[str, object]] = {}
    if dkim_key is not None:
        sections["dkim"] = {"selector": SELECTOR, "private_key_file": str(dkim_key)}
    config = make_config(root, 25, **sections)
    scenarios, errors = load_scenarios(config.scenarios, identities=config.identities, templates_dir=config.templates)
    assert errors == []
    return config, {scenario.name: scenario for scenario in scenarios}


def jobs(count: int, *, first: int = 1) -> list[BuildJob]:
    """Jobs over the three steps and opt-in confirmations, as the daemon's workers make them."""
    made = []
    for index, lead in enumerate(make_leads(count)):
        number = first + index
        stored = dataclasses.replace(lead, id=number)
        kind = index % 4
        if kind == 3:
            made.append(BuildJob(number, f"<m{number}@acme.example>", "@optin", "signups", stored, NOW, True))
        else:
            made.append(BuildJob(number, f"<m{number}@acme.example>", "three-steps", ("one", "two", "three")[kind], stored, NOW))
    return made


def resubjected(scenarios: dict[str, Scenario], subject: str) -> dict[str, Scenario]:
    """The scenarios with every step's subject replaced, as after an edit and a reload."""
    return {
        name: dataclasses.replace(scenario, steps=tuple(dataclasses.replace(step, subject=subject) for step in scenario.steps))
        for name, scenario in scenarios.items()
    }


@asynccontextmanager
async def build_processes(
    config: Config, scenarios: dict[str, Scenario], processes: int, keys: BuildKeys | None = None
) -> AsyncIterator[BuildProcesses]:
    builders = BuildProcesses(config, processes, keys)
    builders.load(scenarios)
    await builders.start()
    try:
        yield builders
    finally:
        await asyncio.wait_for(builders.close(), 15)
    assert build_children(os.getpid()) == set(), "close() ended every child"


@pytest.fixture(scope="module")
def dkim_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("keys") / "dkim.pem"
    generate_rsa_key(path)
    return path


# -- building in children ------------------------------------------------------------------


@pytest.mark.parametrize("processes", [1, 2])
async def test_children_build_what_this_process_builds(tmp_path: Path, processes: int) -> None:
    """Sixty jobs built at once by 1 or 2 children are, boundary aside, the bytes LocalBuilders makes, each child taking a share."""
    config, scenarios = workspace(tmp_path)
    local = LocalBuilders(config)
    local.load(scenarios)
    work = jobs(60)
    async with build_processes(config, scenarios, processes) as builders:
        assert len(build_children(os.getpid())) == processes
        results = await asyncio.wait_for(asyncio.gather(*(builders.build(job) for job in work)), 20)
    for job, built in zip(work, results, strict=True):
        expected = await local.build(job)
        assert boundary_free(built.wire) == boundary_free(expected.wire), job
        assert (built.subject, built.smtputf8) == (expected.subject, expected.smtputf8)
    # each child's layouts draw their own boundary: as many boundaries per step as children that built it
    step_one = {BOUNDARY.search(built.wire).group(1) for job, built in zip(work, results) if job.step_id == "one"}  # type: ignore[union-attr]
    assert len(step_one) == processes
    assert [built.subject for built in results[:3]] == ["One for 太郎0", "Two for Alice1", "Three for Zoë2"]
    assert results[3].subject == "Please confirm your subscription to signups"


async def test_signed_in_children_every_message_verifies(tmp_path: Path, dkim_key: Path) -> None:
    """With [dkim], every message two children build carries a signature dkimpy verifies."""
    config, scenarios = workspace(tmp_path, dkim_key=dkim_key)
    record = public_key_record(load_private_key(dkim_key)).encode()

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes | None:
        return record if name == f"{SELECTOR}._domainkey.acme.example.".encode() else None

    async with build_processes(config, scenarios, 2) as builders:
        results = await asyncio.wait_for(asyncio.gather(*(builders.build(job) for job in jobs(24))), 20)
    assert all(built.wire.startswith(b"DKIM-Signature: v=1; a=rsa-sha256;") for built in results)
    assert [dkim.verify(built.wire, dnsfunc=dnsfunc) for built in results] == [True] * 24
    assert not dkim.verify(results[0].wire.replace(b"</html>", b"</html>!"), dnsfunc=dnsfunc)


async def test_a_reload_is_used_by_the_next_build_in_every_child(tmp_path: Path) -> None:
    """`load` with a changed subject, then builds at once: every child uses the new subject, none the old."""
    config, scenarios = workspace(tmp_path)
    async with build_processes(config, scenarios, 2) as builders:
        before = await asyncio.gather(*(builders.build(job) for job in jobs(16)))
        builders.load(resubjected(scenarios, "Reloaded for {{ lead.first_name }}"))
        after = await asyncio.gather(*(builders.build(job) for job in jobs(32)))
    assert before[0].subject == "One for 太郎0"
    subjects = [built.subject for job, built in zip(jobs(32), after) if not job.confirmation]
    assert subjects and all(subject.startswith("Reloaded for ") for subject in subjects)
    assert len({BOUNDARY.search(built.wire).group(1) for built in after}) > 2, "both children built"  # type: ignore[union-attr]


async def test_failures_and_missing_scenarios_come_back_as_the_builders_own_errors(tmp_path: Path) -> None:
    """A header-injecting lead is BuildFailed and an unknown scenario BuildUnavailable, from the child, the other jobs unharmed."""
    config, scenarios = workspace(tmp_path)
    good = jobs(2)
    broken = dataclasses.replace(good[0], lead=Lead(email="eve@example.com", first_name="Eve\r\nBcc: x@example.net", id=99))
    gone = dataclasses.replace(good[1], scenario="gone-away")
    async with build_processes(config, scenarios, 1) as builders:
        results = await asyncio.gather(*(builders.build(job) for job in (good[0], broken, gone, good[1])), return_exceptions=True)
    assert isinstance(results[0], Built) and isinstance(results[3], Built)
    assert isinstance(results[1], BuildFailed) and "CR, LF or NUL" in str(results[1])
    assert isinstance(results[2], BuildUnavailable) and "gone-away" in str(results[2])


# -- children that die, hang or talk nonsense ----------------------------------------------


async def test_a_child_killed_mid_batch_fails_its_jobs_as_unavailable_and_is_started_again(tmp_path: Path) -> None:
    """SIGKILL while jobs wait in a (stopped) child: they raise BuildUnavailable, builds go on in the
    daemon meanwhile, the child is restarted with the latest scenarios, and close() ends it."""
    config, scenarios = workspace(tmp_path)
    async with build_processes(config, scenarios, 1) as builders:
        [first] = build_children(os.getpid())
        os.kill(first, signal.SIGSTOP)  # the jobs reach its pipe and stay unanswered
        in_flight = [asyncio.ensure_future(builders.build(job)) for job in jobs(2 * BATCH)]
        await asyncio.sleep(0.2)
        assert not any(task.done() for task in in_flight)
        os.kill(first, signal.SIGKILL)
        outcomes = await asyncio.wait_for(asyncio.gather(*in_flight, return_exceptions=True), 5)
        assert all(isinstance(outcome, BuildUnavailable) for outcome in outcomes), outcomes
        # while it restarts, messages are built in the daemon's own process, at once
        assert isinstance(await asyncio.wait_for(builders.build(jobs(1)[0]), 5), Built)
        builders.load(resubjected(scenarios, "After the crash"))  # only the restarted child can see this
        await eventually(lambda: len(build_children(os.getpid())) == 1, 10, "a new child")
        [second] = build_children(os.getpid())
        assert second != first and not Path(f"/proc/{first}").exists(), "the killed child was reaped"
        built = await _build_when_up(builders, jobs(1)[0])
        assert built.subject == "After the crash"
    assert not running(second)


async def _build_when_up(builders: BuildProcesses, job: BuildJob, timeout: float = 10) -> Built:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await asyncio.wait_for(builders.build(job), 5)
        except BuildUnavailable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


def _header(wire: bytes, name: bytes) -> bytes:
    found = re.search(rb"^" + name + rb": (.*(?:\r\n[ \t].*)*)", wire, re.M | re.I)
    assert found is not None, wire[:400]
    return found.group(1)


async def test_a_restarted_child_signs_with_the_keys_read_at_start_not_the_rotated_files(tmp_path: Path, dkim_key: Path) -> None:
    """The secret and DKIM key files replaced on disk, then the child killed: its replacement still signs links
    and DKIM with the keys the daemon read at start (those its tracker verifies), not the new files."""
    key = tmp_path / "dkim-live.pem"
    key.write_bytes(dkim_key.read_bytes())
    config, scenarios = workspace(tmp_path, dkim_key=key)
    keys = BuildKeys.load(config)
    record = public_key_record(load_private_key(key)).encode()

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes | None:
        return record if name == f"{SELECTOR}._domainkey.acme.example.".encode() else None

    job = jobs(1)[0]
    async with build_processes(config, scenarios, 1, keys) as builders:
        [first] = build_children(os.getpid())
        key.unlink()
        generate_rsa_key(key)  # rotated on disk
        config.secret_key_file.write_text("a-new-secret-that-is-long-enough-0123456789\n", encoding="utf-8")
        child = builders._children[0]
        killed = child.reader
        os.kill(first, signal.SIGKILL)
        await eventually(lambda: child.reader not in (None, killed) and not child.reader.done(), 10, "a new child, ready")
        built = await asyncio.wait_for(builders.build(job), 5)
        assert builders._local is None, "the new child built it, not the daemon's fallback"
    local = LocalBuilders(config, keys)
    local.load(scenarios)
    expected = await local.build(job)
    reread = LocalBuilders(config)  # what reading the files again would sign with
    reread.load(scenarios)
    rotated = await reread.build(job)
    assert _header(built.wire, b"List-Unsubscribe") == _header(expected.wire, b"List-Unsubscribe")
    assert _header(rotated.wire, b"List-Unsubscribe") != _header(expected.wire, b"List-Unsubscribe")
    assert dkim.verify(built.wire, dnsfunc=dnsfunc) and not dkim.verify(rotated.wire, dnsfunc=dnsfunc)


def _answer_pipe(builders: BuildProcesses, pid: int) -> str:
    """The child's end of the pipe it answers on (its frames leave fd 1 for stray prints)."""
    process = builders._children[0].process
    assert process is not None and process.stdout is not None
    transport = process._transport.get_pipe_transport(1)  # type: ignore[attr-defined]
    ours = os.readlink(f"/proc/self/fd/{transport.get_extra_info('pipe').fileno()}")
    for fd in os.listdir(f"/proc/{pid}/fd"):
        if os.readlink(f"/proc/{pid}/fd/{fd}") == ours:
            return f"/proc/{pid}/fd/{fd}"
    raise AssertionError(f"child {pid} holds no end of {ours}")


async def test_a_child_writing_nonsense_is_replaced_and_its_jobs_retried(tmp_path: Path) -> None:
    """A frame that is no pickle on a child's stdout: its jobs end as BuildUnavailable (no hang), it is killed and started again."""
    config, scenarios = workspace(tmp_path)
    async with build_processes(config, scenarios, 1) as builders:
        [first] = build_children(os.getpid())
        os.kill(first, signal.SIGSTOP)
        in_flight = [asyncio.ensure_future(builders.build(job)) for job in jobs(BATCH)]
        await asyncio.sleep(0.2)
        with open(_answer_pipe(builders, first), "wb") as child_stdout:  # the same pipe the child answers on
            child_stdout.write(b"\x00\x00\x00\x05hello")
        outcomes = await asyncio.wait_for(asyncio.gather(*in_flight, return_exceptions=True), 5)
        assert all(isinstance(outcome, BuildUnavailable) for outcome in outcomes), outcomes
        await eventually(lambda: not running(first), 5, "the confused child ended")
        assert isinstance(await _build_when_up(builders, jobs(1)[0]), Built)


async def test_a_job_that_cannot_be_sent_fails_alone(tmp_path: Path) -> None:
    """A job that does not pickle fails with an error of its own; the jobs of other batches are built."""
    config, scenarios = workspace(tmp_path)
    work = jobs(3 * BATCH)
    lead = dataclasses.replace(work[0].lead, attributes={"callback": lambda: None})
    work[0] = dataclasses.replace(work[0], lead=lead)
    async with build_processes(config, scenarios, 1) as builders:
        outcomes = await asyncio.wait_for(asyncio.gather(*(builders.build(job) for job in work), return_exceptions=True), 10)
    assert isinstance(outcomes[0], Exception) and not isinstance(outcomes[0], Built)
    assert all(isinstance(outcome, Built) for outcome in outcomes[BATCH:]), outcomes[BATCH:]


async def test_close_ends_queued_jobs_as_unavailable_and_answers_those_sent(tmp_path: Path) -> None:
    """close() with jobs sent and jobs still queued: the sent ones are answered, the queued end as BuildUnavailable, nothing hangs."""
    config, scenarios = workspace(tmp_path)
    builders = BuildProcesses(config, 2)
    builders.load(scenarios)
    await builders.start()
    children = build_children(os.getpid())
    sent = [asyncio.ensure_future(builders.build(job)) for job in jobs(16)]
    await asyncio.sleep(0)  # the builds run up to their await …
    await asyncio.sleep(0)  # … and the flush writes them to the children
    queued = [asyncio.ensure_future(builders.build(job)) for job in jobs(16, first=100)]
    await asyncio.sleep(0)  # queued for the next flush, which runs once close() has begun
    began = time.monotonic()
    await builders.close()  # awaited here, not in a task of its own: that would start after the flush
    assert time.monotonic() - began < 5
    sent_outcomes = await asyncio.wait_for(asyncio.gather(*sent, return_exceptions=True), 1)
    queued_outcomes = await asyncio.wait_for(asyncio.gather(*queued, return_exceptions=True), 1)
    assert all(isinstance(outcome, Built) for outcome in sent_outcomes), sent_outcomes
    assert all(isinstance(outcome, BuildUnavailable) for outcome in queued_outcomes), queued_outcomes
    with pytest.raises(BuildUnavailable):
        await builders.build(jobs(1)[0])
    assert len(children) == 2 and not any(running(pid) for pid in children)


async def test_close_while_a_child_restarts_leaves_no_process(tmp_path: Path) -> None:
    """close() just after a crashed child's replacement was spawned ends it too: no process is left."""
    config, scenarios = workspace(tmp_path)
    builders = BuildProcesses(config, 1)
    builders.load(scenarios)
    await builders.start()
    [first] = build_children(os.getpid())
    os.kill(first, signal.SIGKILL)
    await eventually(lambda: build_children(os.getpid()) - {first} != set(), 10, "a replacement spawned")
    [second] = build_children(os.getpid()) - {first}
    await asyncio.wait_for(builders.close(), 15)
    await asyncio.sleep(0.5)  # a restart that went on regardless would be answering by now
    await eventually(lambda: not running(second), 5, "the replacement ended")
    assert build_children(os.getpid()) == set()


# -- [delivery] build_processes ------------------------------------------------------------


@pytest.mark.parametrize(
    ("written", "expected"),
    [('build_processes = "auto"', None), ("", None), ("build_processes = 0", 0), ("build_processes = 3", 3)],
)
def test_build_processes_accepts_auto_unwritten_and_counts(tmp_path: Path, written: str, expected: int | None) -> None:
    """"auto", nothing, 0 and 3 are accepted: None stands for "auto"."""
    path = tmp_path / "mailer.toml"
    path.write_text(f"[delivery]\nconcurrency = 4\n{written}\n", encoding="utf-8")
    assert load_config(path).delivery.build_processes == expected


@pytest.mark.parametrize("value", ["-1", '"many"', "true", "100", "2.5"])
def test_build_processes_refuses_anything_else_on_its_line(tmp_path: Path, value: str) -> None:
    """-1, "many", true, 100 and 2.5 are a UserError naming delivery.build_processes, its line and the choices."""
    path = tmp_path / "mailer.toml"
    path.write_text(f"[delivery]\nconcurrency = 4\nbuild_processes = {value}\n", encoding="utf-8")
    with pytest.raises(UserError) as caught:
        load_config(path)
    assert (caught.value.field, caught.value.line) == ("delivery.build_processes", 3)
    assert "auto" in str(caught.value) and str(path) in str(caught.value)


@pytest.mark.parametrize(("cpus", "auto", "written"), [(1, 0, 3), (2, 1, 3), (8, 4, 3), (None, 0, 3)])
def test_builders_for_a_number_of_cpus(cpus: int | None, auto: int, written: int) -> None:
    """"auto" is one process per CPU beyond the first, at most 4 (none when the count is unknown); a written number wins."""
    assert DeliveryConfig().builders(cpus) == auto
    assert DeliveryConfig(build_processes=written).builders(cpus) == written
    assert DeliveryConfig(build_processes=0).builders(cpus) == 0


# -- the daemon ----------------------------------------------------------------------------

PLAN_SCENARIO = THREE_STEPS.replace("template: one.html", "template: plan.html")  # its window opens at 09:00
PLAN_TEMPLATE = '{% extends "layout.html" %}{% block content %}<p>{{ lead.first_name }}: {{ lead.plan | upper }}</p>{% endblock %}\n'
MONDAY_8AM = datetime(2026, 1, 5, 8, 0, tzinfo=timezone.utc)
STARTED = "1 build process render and sign messages"


@pytest.mark.parametrize("processes", [0, 1])
async def test_the_daemon_sends_the_same_built_in_process_or_in_a_child(
    tmp_path: Path, smtp_server: CaptureServer, processes: int, caplog: pytest.LogCaptureFixture
) -> None:
    """build_processes 0 and 1: ten leads sent with their plan; the one whose template fails is kept (deferred, the
    error logged) and sent once the template is fixed; the child gone after stop."""
    caplog.set_level("INFO", logger="mailer")
    write_workspace(tmp_path, PLAN_SCENARIO)
    (tmp_path / "templates" / "plan.html").write_text(PLAN_TEMPLATE, encoding="utf-8")
    config = make_config(tmp_path, smtp_server.port, delivery={"concurrency": 4, "build_processes": processes})
    leads = [dataclasses.replace(lead, attributes={"plan": f"plan{n}"}) for n, lead in enumerate(make_leads(10))]
    leads.append(Lead(email="noplan@example.com", first_name="Nora"))
    async with SQLiteStore(config.store) as store:
        await store.upsert_leads(leads, list_name="signups", now=MONDAY_8AM)
        clock = FakeClock(MONDAY_8AM)
        daemon = Daemon(config=config, store=store, clock=clock)
        stop = asyncio.Event()
        task = asyncio.create_task(daemon.serve(stop))
        try:
            # the first step is due at 09:00: by then the build processes are up (they start beside the loop)
            await eventually(lambda: "leads entered" in caplog.text and (not processes or STARTED in caplog.text), 20, "started")
            assert isinstance(daemon.builders, BuildProcesses if processes else LocalBuilders)
            children = build_children(os.getpid())
            assert len(children) == processes
            await clock.advance(hours=1)
            await eventually(lambda: len(smtp_server.messages) >= 10, 20, "ten messages")
            deadline = time.monotonic() + 10
            while (counts := await store.message_counts()) != {"sent": 10, "deferred": 1}:
                assert time.monotonic() < deadline, counts
                await asyncio.sleep(0.05)
            kept = await store.get_lead("noplan@example.com")
            assert kept is not None and kept.id is not None
            [event] = [e for e in await store.lead_events(kept.id) if e.type == "deferred"]
            assert "no attribute 'plan'" in event.data["detail"] and "plan.html" in caplog.text
            # the author fixes the template; the scenarios are read again and the retry comes
            (tmp_path / "templates" / "plan.html").write_text(PLAN_TEMPLATE.replace("lead.plan", "lead.plan | default('free')"), encoding="utf-8")
            await asyncio.sleep(RECHECK_SECONDS + 0.1)  # a compiled step looks at its files once a second
            await clock.advance(hours=2)
            await eventually(lambda: len(smtp_server.messages) >= 11, 20, "the kept message")
        finally:
            stop.set()
            await asyncio.wait_for(task, 20)
        assert await store.message_counts() == {"sent": 11}
    received = {m.rcpt_tos[0]: m.parsed() for m in smtp_server.messages}
    assert len(smtp_server.messages) == len(received) == 11
    for n, lead in enumerate(leads[:10]):
        html = received[lead.email].get_body(("html",)).get_content()  # type: ignore[union-attr]
        assert f"PLAN{n}" in html and str(received[lead.email]["Subject"]) == f"One for {lead.first_name}"
    assert "FREE" in received["noplan@example.com"].get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert not any(running(pid) for pid in children)


SERVED_BY_CHILDREN = SERVE_CONFIG.replace("concurrency = 4", "concurrency = 4\nbuild_processes = 2")


class Served:
    """`mailer serve` as its own process on a workspace of ONE_STEP, logging to serve.log."""

    def __init__(self, root: Path, port: int) -> None:
        self.root = root
        self.log = root / "serve.log"
        write_workspace(root, ONE_STEP)
        (root / "mailer.toml").write_text(SERVED_BY_CHILDREN.format(port=port), encoding="utf-8")
        self.process: asyncio.subprocess.Process | None = None

    async def enroll(self, count: int, first: int) -> None:
        leads = [dataclasses.replace(lead, email=f"lead{n}@example.com") for n, lead in enumerate(make_leads(count), start=first)]
        async with SQLiteStore(self.root / "mailer.db") as store:
            await store.upsert_leads(leads, list_name="signups", now=datetime.now(timezone.utc))

    async def start(self) -> asyncio.subprocess.Process:
        with open(self.log, "ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "mailer", "--config", str(self.root / "mailer.toml"), "serve",
                stdout=log, stderr=asyncio.subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )  # fmt: skip
        return self.process

    def states(self) -> dict[str, int]:
        with sqlite3.connect(self.root / "mailer.db", timeout=30) as db:
            return dict(db.execute("SELECT state, count(*) FROM messages GROUP BY state"))

    def message_ids(self, where: str = "1") -> set[str]:
        with sqlite3.connect(self.root / "mailer.db", timeout=30) as db:
            return {row[0] for row in db.execute(f"SELECT message_id FROM messages WHERE {where}")}

    async def until(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        try:
            await eventually(condition, timeout, what)
        except AssertionError as error:
            raise AssertionError(f"{error}; states {self.states()}\n{self.log.read_text()[-3000:]}") from None

    async def stop(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.process.wait(), 30)

    def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()


async def test_mailer_serve_builds_in_two_children_that_die_with_it(tmp_path: Path, smtp_server: CaptureServer) -> None:
    """`mailer serve` with build_processes = 2 sends every message once; after its kill -9 the
    children exit on their own, and a restart finishes with nothing lost."""
    served = Served(tmp_path, smtp_server.port)
    try:
        await served.enroll(120, first=0)
        process = await served.start()
        await served.until(lambda: served.states() == {"sent": 120}, 30, "120 sent")
        # they start beside the send loop, which builds in the daemon until they are ready
        await served.until(lambda: "2 build processes render and sign messages" in served.log.read_text(), 20, "started")
        children = build_children(process.pid)
        assert len(children) == 2
        assert await served.stop() == 0
        assert smtp_server.duplicates == 0 and set(smtp_server.message_ids) == served.message_ids()
        assert "Traceback" not in served.log.read_text()
        assert not any(running(pid) for pid in children), "children end with a daemon that stops"

        await served.enroll(400, first=1000)
        smtp_server.data_delay = 0.01  # a run long enough to kill in the middle of
        before = len(smtp_server.messages)
        process = await served.start()
        await served.until(lambda: len(smtp_server.messages) >= before + 60, 30, "60 more messages")
        await served.until(lambda: len(build_children(process.pid)) == 2, 5, "two children")
        orphans = build_children(process.pid)
        process.kill()  # SIGKILL: no handler runs, the children are told nothing
        await process.wait()
        in_flight = served.message_ids("state = 'sending'")
        assert served.states().get("queued", 0) + served.states().get("sending", 0) > 0, "killed mid-run"
        began = time.monotonic()
        await eventually(lambda: not any(running(pid) for pid in orphans), 5, "the orphaned children exited")
        orphans_exited_s = time.monotonic() - began

        smtp_server.data_delay = 0
        await served.start()
        await served.until(lambda: served.states() == {"sent": 520}, 30, "all 520 sent after the restart")
        assert await served.stop() == 0
    finally:
        served.kill()
    sent = served.message_ids("state = 'sent'")
    lost = sent - set(smtp_server.message_ids)
    assert len(sent) == 520 and lost == set()
    repeated = {message_id for message_id, copies in smtp_server.message_ids.items() if copies > 1}
    assert repeated <= in_flight, "only messages in flight at the kill may arrive twice"
    assert orphans_exited_s < 5
