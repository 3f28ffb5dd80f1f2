"""Renders hostile templates through the real Renderer in a child process, under a watchdog.

    python render_child.py MODE TEMPLATES_DIR PAYLOADS.json

MODE `current` uses mailer.render as it is; `limited` first rebases its TemplateEnvironment
on mailer.sandbox.LimitedSandbox, which is exactly what the one-line adoption in render.py
(`class TemplateEnvironment(LimitedSandbox)`) does. Each payload's outcome is one JSON line:
`blocked` (the renderer refused it: a security or undefined-name error), `limited` (a time,
iteration or size limit of the renderer stopped it), `rendered` (with a digest of the output),
or `watchdog` / `memory` when only this script's own guards (a 2 s alarm, an address-space
cap) stopped it: the renderer itself has no limit for it.
"""

from __future__ import annotations

import hashlib
import json
import resource
import signal
import sys
import time
from pathlib import Path
from types import FrameType

import jinja2

WATCHDOG_SECONDS = 2.0
# Room above what the process has mapped once everything is imported; 'x' * 10**9 needs more.
HEADROOM = 768 * 1024 * 1024


class Watchdog(BaseException):
    """The alarm: a BaseException, so no template machinery catches it."""


def _alarm(signum: int, frame: FrameType | None) -> None:
    raise Watchdog()


def main() -> None:
    mode, templates, payloads_file = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    import mailer.render
    from mailer.errors import TemplateError
    from mailer.sandbox import LimitedSandbox, TemplateLimitError

    if mode == "limited":
        mailer.render.TemplateEnvironment.__bases__ = (LimitedSandbox,)
        LimitedSandbox.max_seconds = 0.5  # well inside the watchdog, so that the two are told apart
    payloads: dict[str, str] = json.loads(payloads_file.read_text())
    lead = {"first_name": "Ann", "last_name": "Lee", "company": "Acme", "email": "ann@example.com", "language": "en"}
    context = {"lead": lead, "scenario": "s", "step": "x", "unsubscribe_url": "https://t.example/u/x"}
    with open("/proc/self/statm") as statm:
        mapped = int(statm.read().split()[0]) * resource.getpagesize()
    resource.setrlimit(resource.RLIMIT_AS, (mapped + HEADROOM, resource.RLIM_INFINITY))
    signal.signal(signal.SIGALRM, _alarm)
    for name, source in payloads.items():
        if source:
            (templates / name).write_text(source, encoding="utf-8")
        began = time.perf_counter()
        outcome, detail = "rendered", ""
        signal.setitimer(signal.ITIMER_REAL, WATCHDOG_SECONDS)
        try:
            renderer = mailer.render.Renderer(templates)
            step = renderer.step(subject="Hi {{ lead.first_name }}", template=name, text_template=None)
            parts = step.render(context)
            detail = hashlib.sha256(f"{parts.subject}\0{parts.html}\0{parts.text}".encode()).hexdigest()[:16]
        except Watchdog:
            outcome = "watchdog"
        except MemoryError:
            outcome = "memory"
        except TemplateLimitError as error:
            outcome, detail = "limited", str(error)
        except (jinja2.exceptions.SecurityError, jinja2.exceptions.UndefinedError, TemplateError) as error:
            outcome, detail = "blocked", f"{type(error).__name__}: {error}"[:200]
        except Exception as error:  # anything else a template raised: refused, but say what
            outcome, detail = "blocked", f"{type(error).__name__}: {error}"[:200]
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        seconds = time.perf_counter() - began
        print(json.dumps({"name": name, "outcome": outcome, "detail": detail, "seconds": round(seconds, 3)}), flush=True)


if __name__ == "__main__":
    main()
