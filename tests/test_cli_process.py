"""The `mailer` command run as a real process: ports in use and closed pipes end quietly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


from conftest import write_workspace


def mailer(workspace: Path, *args: str, stdout: int | None = subprocess.PIPE) -> subprocess.CompletedProcess[str]:
    """Run `python -m mailer ARGS` in the workspace, as a user would from a shell."""
    return subprocess.run(
        [sys.executable, "-m", "mailer", *args],
        cwd=workspace, stdout=stdout, stderr=subprocess.PIPE, text=True, env=os.environ.copy(), timeout=120,
    )


def serve_workspace(root: Path, *, tracking: str, bounces: str = "") -> Path:
    """A workspace whose `mailer serve` sends nothing (no leads) and listens where told."""
    write_workspace(root)
    (root / "mailer.toml").write_text(
        '[relay]\nhost = "127.0.0.1"\nport = 1\ntls = "none"\n'
        '[identities.default]\nfrom = "Acme <news@acme.example>"\n'
        f'[tracking]\nlisten = "{tracking}"\n'
        '[api]\nlisten = "127.0.0.1:0"\n'
        + bounces,
        encoding="utf-8",
    )
    return root


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("mailer: error:")]


def test_a_tracking_port_in_use_is_one_line_naming_file_and_field(tmp_path: Path, held_port: int) -> None:
    """`mailer serve` whose tracking.listen port is taken exits 2 with one line naming mailer.toml and the field."""
    workspace = serve_workspace(tmp_path, tracking=f"127.0.0.1:{held_port}")
    result = mailer(workspace, "serve")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    [line] = error_lines(result.stderr)
    # run from the workspace, so the file is named relative to it
    assert line.startswith(f"mailer: error: mailer.toml: tracking.listen: 127.0.0.1:{held_port} is in use"), line
    assert "choose a free port" in line


def test_a_bounce_listener_port_in_use_is_one_line_naming_file_and_field(tmp_path: Path, held_port: int) -> None:
    """`mailer serve` whose bounces.listen port is taken exits 2 with one line naming mailer.toml and the field."""
    bounces = f'[bounces]\ndomain = "bounce.acme.example"\nlisten = "127.0.0.1:{held_port}"\n'
    workspace = serve_workspace(tmp_path, tracking="127.0.0.1:0", bounces=bounces)
    result = mailer(workspace, "serve")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    [line] = error_lines(result.stderr)
    assert line.startswith(f"mailer: error: mailer.toml: bounces.listen: 127.0.0.1:{held_port} is in use"), line


def test_an_address_not_of_this_host_says_so(tmp_path: Path) -> None:
    """A tracking.listen host this machine has no address for is one line saying what to use instead."""
    # 192.0.2.0/24 is TEST-NET-1 (RFC 5737): no host owns it, so binding it fails with EADDRNOTAVAIL.
    workspace = serve_workspace(tmp_path, tracking="192.0.2.1:0")
    result = mailer(workspace, "serve")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    [line] = error_lines(result.stderr)
    assert "tracking.listen: 192.0.2.1 is not an address of this machine" in line, line


def test_a_closed_stdout_ends_the_command_quietly(tmp_path: Path) -> None:
    """`mailer report --json | head` whose reader is gone ends without a BrokenPipeError traceback."""
    write_workspace(tmp_path)
    (tmp_path / "mailer.toml").write_text('[identities.default]\nfrom = "Acme <news@acme.example>"\n')
    reader, writer = os.pipe()
    os.close(reader)  # the reader has already gone, as `head` has after its lines
    try:
        result = mailer(tmp_path, "report", "--json", stdout=writer)
    finally:
        os.close(writer)
    assert result.returncode == 141  # 128 + SIGPIPE, what a shell reports for `yes | head`
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr, result.stderr
    assert "Exception ignored" not in result.stderr, result.stderr

