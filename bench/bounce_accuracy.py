"""Measure bounce parsing against a labelled corpus: accuracy by recipient, and throughput.

    python bench/bounce_accuracy.py [--corpus DIR] [--quick]

DIR holds emails and a ``manifest.json`` in the layout of Sisimai's set-of-emails export
(``/work/shared/corpora/README.md`` section 1). Expected rows and our recipients are compared
by index, in Sisimai's order. The last line printed is one JSON object; the exit status is 1
when class agreement is under 0.97 or reason agreement under 0.90.
"""

from __future__ import annotations

import argparse
import email
import json
import sys
import time
from collections import Counter, defaultdict
from email.policy import compat32
from pathlib import Path
from typing import Any

from mailer.dsn import BounceReport, parse_bounce

DEFAULT_CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpora" / "bounces" / "public"
CLASS_TARGET = 0.97  # the brief's accuracy floor for hard/soft/none
REASON_TARGET = 0.90


def _is_pseudo(status: str) -> bool:
    # Sisimai invents X.0.9xx codes when a bounce carried none (README "status" caveat)
    parts = status.split(".")
    return len(parts) == 3 and parts[1] == "0" and len(parts[2]) == 3 and parts[2].startswith("9")


def _status_agrees(expected: str, ours: str | None) -> bool:
    if not expected:
        return ours is None or ours == ""
    if _is_pseudo(expected):
        return ours is None or ours[0] == expected[0]
    return ours == expected


def _time(raws: list[bytes], passes: int, parse: Any) -> float:
    best = float("inf")
    for _ in range(passes):
        start = time.perf_counter()
        for raw in raws:
            parse(raw)
        best = min(best, time.perf_counter() - start)
    return len(raws) / best if best > 0 else float("inf")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--quick", action="store_true", help="fewer timing passes (accuracy is still checked on every email)")
    args = parser.parse_args(argv)
    manifest = json.loads((args.corpus / "manifest.json").read_text())
    files = manifest["files"]
    raws = {f["file"]: (args.corpus / f["file"]).read_bytes() for f in files}

    rows = class_ok = reason_ok = status_ok = 0
    by_family: dict[str, Counter[str]] = defaultdict(Counter)
    confusion: Counter[tuple[str, str]] = Counter()
    misses: list[tuple[str, int, str, str, str, str]] = []
    for entry in files:
        report: BounceReport = parse_bounce(raws[entry["file"]])
        family = entry.get("decoder") or "not-bounce"
        expected = entry["expected"]
        if not expected:  # a negative: right only when we find no report at all
            rows += 1
            right = report.kind == "not-bounce" and not report.recipients
            class_ok += right
            reason_ok += right
            status_ok += right
            by_family[family].update(rows=1, klass=right, reason=right, status=right)
            if not right:
                misses.append((entry["file"], 0, "(not a bounce)", report.kind, "", ""))
            continue
        for index, want in enumerate(expected):
            got = report.recipients[index] if index < len(report.recipients) else None
            our_reason = got.reason.value if got else "(none)"
            our_class = got.bounce_class.value if got else "(none)"
            k = our_class == want["bounce_class"]
            r = our_reason == want["reason"]
            s = _status_agrees(want["status"], got.status if got else None) if got else False
            rows += 1
            class_ok += k
            reason_ok += r
            status_ok += s
            by_family[family].update(rows=1, klass=k, reason=r, status=s)
            confusion[(want["reason"], our_reason)] += 1
            if not (k and r):
                misses.append((entry["file"], index + 1, want["reason"], our_reason, got.rule if got else "", (got.diagnostic if got else "")[:110]))

    passes = 2 if args.quick else 7
    all_raws = list(raws.values())
    ours = _time(all_raws, passes, parse_bounce)
    baseline = _time(all_raws, passes, lambda raw: email.message_from_bytes(raw, policy=compat32))

    print(f"{'family':24} {'rows':>5} {'class':>6} {'reason':>6} {'status':>6}")
    for family, c in sorted(by_family.items(), key=lambda item: (item[1]["reason"] / item[1]["rows"], item[0])):
        n = c["rows"]
        print(f"{family:24} {n:5d} {c['klass'] / n:6.2f} {c['reason'] / n:6.2f} {c['status'] / n:6.2f}")
    print("\nworst mismatches (file, recipient, expected, ours, rule, diagnostic):")
    for miss in misses[:40]:
        print("  " + " | ".join(str(x) for x in miss))
    print("\nconfusion (expected -> ours, off-diagonal):")
    for (want_reason, our_reason), n in confusion.most_common():
        if want_reason != our_reason:
            print(f"  {want_reason:16} -> {our_reason:16} {n}")
    result = {
        "emails": len(files),
        "recipients": rows,
        "class_agreement": round(class_ok / rows, 4),
        "reason_agreement": round(reason_ok / rows, 4),
        "status_agreement": round(status_ok / rows, 4),
        "msgs_per_s": round(ours, 1),
        "baseline_msgs_per_s": round(baseline, 1),
        "ratio": round(ours / baseline, 3),
        "timing_passes": passes,
    }
    print(f"\nclass {result['class_agreement']:.2%}  reason {result['reason_agreement']:.2%}  status {result['status_agreement']:.2%}  "
          f"{ours:.0f} msgs/s ({result['ratio']:.2f}x of email.message_from_bytes alone)")
    print(json.dumps(result))
    return 0 if result["class_agreement"] >= CLASS_TARGET and result["reason_agreement"] >= REASON_TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
