"""Where a process spends its time: py-spy's raw stacks, summed per function and per stage.

    py-spy record --pid PID --format raw --nolineno --output FILE

writes one line per distinct stack, `frame;frame;...;leaf COUNT`, root first, each frame
`function (package/file.py)`. Idle threads are not sampled, so the shares are of the time
some thread of the process was running. Note that py-spy's `--gil` mode misses native code
that holds the GIL (OpenSSL's RSA signing shows as not holding it, yet a second Python
thread does not run meanwhile), so the benchmark samples without it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path


def start(pid: int, output: Path, *, rate: int = 100, extra: Sequence[str] = ()) -> subprocess.Popen[bytes]:
    """py-spy recording `pid` until it exits; raises FileNotFoundError without py-spy."""
    program = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(program).exists():
        raise FileNotFoundError("py-spy not found: pip install py-spy")
    return subprocess.Popen(
        [program, "record", "--pid", str(pid), "--format", "raw", "--output", str(output),
         "--rate", str(rate), "--nolineno", *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip


def _stacks(raw: Path) -> Iterator[tuple[list[str], int]]:
    for line in raw.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            yield [frame.strip() for frame in stack.split(";") if frame.strip()], int(count)


def summary(raw: Path, *, top: int = 15) -> tuple[int, list[tuple[str, float]], list[tuple[str, float]]]:
    """(samples, [(function, self share)], [(function, total share)]), largest first."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for frames, count in _stacks(raw):
        samples += count
        own[frames[-1]] += count
        for frame in set(frames):
            total[frame] += count
    if not samples:
        return 0, [], []
    return (
        samples,
        [(name, n / samples) for name, n in own.most_common(top)],
        [(name, n / samples) for name, n in total.most_common(top)],
    )


def stages(raw: Path, *, thread: str, labels: Sequence[tuple[str, str]]) -> tuple[int, list[tuple[str, float]]]:
    """Shares of one thread's samples (stacks holding a frame starting with `thread`) by
    stage: each stack counts for the first (label, frame prefix) it contains, else "other"."""
    found: Counter[str] = Counter()
    samples = 0
    for frames, count in _stacks(raw):
        if not any(frame.startswith(thread) for frame in frames):
            continue
        samples += count
        label = next((label for label, prefix in labels if any(f.startswith(prefix) for f in frames)), "other")
        found[label] += count
    return samples, [(label, n / samples) for label, n in found.most_common()] if samples else []
