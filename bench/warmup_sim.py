"""Simulate a 30-day warm-up of one new IP on a fake clock: planned and actual volume per provider.

    python bench/warmup_sim.py [--days 30] [--demand 10000] [--seed 7] [--store mailer.db]

Every simulated minute the sender asks the real `WarmupBudget` for each provider with leads
waiting and sends what it allows (most engaged leads first while the IP warms). Simulated
providers accept, except that on some days they have a hidden hourly limit below our cap and
answer ``421 4.7.0`` past it (Microsoft days 6-10, Gmail days 15-17), and Yahoo blocks the IP
once (``554 5.7.1``) on day 12. A refused message waits for its next chance: nothing is lost.

The budget is saved to a real SQLite store every simulated hour, and the "daemon" restarts
every day at noon by building its budget again from the store. An independent count checks
every hour and day against the schedule's caps; the exit status is 1 if any was exceeded.
The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from collections import Counter, deque
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

from mailer.reply import SMTPReply
from mailer.sqlitestore import SQLiteStore
from mailer.warmup import SendingIP, WarmupPlan, prioritize
from mailer.warmupshell import load_budget, save_budget

START = datetime(2026, 3, 2, 0, 0, tzinfo=timezone.utc)
MIX = {"gmail": 0.35, "microsoft": 0.25, "yahoo": 0.1, "apple": 0.05, "other": 0.25}  # of each day's leads
ACCEPTED = SMTPReply.parse(250, "2.0.0 OK", command="DATA")
SLOW_DOWN = SMTPReply.parse(421, "4.7.0 Try again later, closing connection. (simulated)", command="RCPT")
BLOCKED = SMTPReply.parse(554, "5.7.1 Your IP address has been blocklisted (simulated)", command="CONNECT")


class Receiver:
    """A simulated provider: accepts, except past a hidden hourly limit (421) or during a block."""

    def __init__(self, name: str, *, tight_days: range = range(0), tightness: float = 1.0, block_day: int | None = None) -> None:
        self.name = name
        self.tight_days = tight_days
        self.tightness = tightness  # the hidden limit as a part of our hourly cap on tight days
        self.block_day = block_day
        self.hour: tuple[date, int] | None = None
        self.taken = 0

    def answer(self, now: datetime, day: int, hour_cap: int | None) -> SMTPReply:
        if self.hour != (now.date(), now.hour):
            self.hour, self.taken = (now.date(), now.hour), 0
        if day == self.block_day:
            self.block_day = None  # one block, at the day's first attempt; then it accepts again
            return BLOCKED
        if day in self.tight_days and hour_cap is not None and self.taken >= int(hour_cap * self.tightness):
            return SLOW_DOWN
        self.taken += 1
        return ACCEPTED


async def simulate(days: int, demand: int, seed: int, store_path: Path) -> dict[str, object]:
    rng = random.Random(seed)
    ip = SendingIP("main", address="192.0.2.10", warming=True, start=START.date())
    plan = WarmupPlan(ips=(ip,))
    receivers = {
        "gmail": Receiver("gmail", tight_days=range(15, 18), tightness=0.5),
        "microsoft": Receiver("microsoft", tight_days=range(6, 11), tightness=0.6),
        "yahoo": Receiver("yahoo", block_day=12),
        "apple": Receiver("apple"),
        "other": Receiver("other"),
    }
    waiting: dict[str, deque[float]] = {p: deque() for p in MIX}  # engagement scores of waiting leads
    planned: dict[int, Counter[str]] = {}
    actual: dict[int, Counter[str]] = {}
    deferred: Counter[str] = Counter()
    hour_use: Counter[tuple[str, date, int]] = Counter()
    day_use: Counter[tuple[str, date]] = Counter()
    ip_hour_use: Counter[tuple[date, int]] = Counter()
    over: list[str] = []
    decisions: list[str] = []
    engagement_sent: dict[str, list[float]] = {"warming": [], "all": []}
    async with SQLiteStore(store_path) as store:
        budget = await load_budget(store, plan, START)
        now = START
        wake: dict[str, datetime] = {p: now for p in MIX}
        while now < START + timedelta(days=days):
            day = (now.date() - START.date()).days + 1
            if now.hour == 0 and now.minute == 0:
                for provider, share in MIX.items():
                    waiting[provider].extend(rng.random() for _ in range(int(demand * share)))
                    if budget.warming("main", now):
                        waiting[provider] = deque(prioritize(list(waiting[provider]), lambda score: score))
                # planned: the schedule's cap for each provider and for the IP (what waits, if less)
                caps_today = {p: plan.caps(ip, p, now.date()) for p in MIX}
                planned[day] = Counter({p: min(len(waiting[p]), caps_today[p].day or len(waiting[p])) for p in MIX})
                everyone = sum(len(q) for q in waiting.values())
                planned[day]["ip"] = min(everyone, caps_today["other"].ip_day or everyone)
                actual[day] = Counter()
            if now.hour == 12 and now.minute == 0:  # the daemon restarts: its budget comes from the store
                decisions += [f"{now:%m-%d %H:%M} {decision}" for decision in budget.take_decisions()]
                await save_budget(store, budget)
                budget = await load_budget(store, plan, now)
                wake = {p: now for p in MIX}  # and it forgets when it meant to ask again
            for provider in MIX:
                if not waiting[provider] or now < wake[provider]:
                    continue
                caps = plan.caps(ip, provider, now.date())
                while waiting[provider]:
                    grant = budget.reserve("main", provider, now)
                    if grant is None:
                        wake[provider] = budget.next_opening("main", provider, now)[0]
                        break
                    hour_use[provider, now.date(), now.hour] += 1
                    day_use[provider, now.date()] += 1
                    ip_hour_use[now.date(), now.hour] += 1
                    if caps.hour is not None and hour_use[provider, now.date(), now.hour] > caps.hour:
                        over.append(f"{provider} {now:%Y-%m-%d %H}h")
                    if caps.day is not None and day_use[provider, now.date()] > caps.day:
                        over.append(f"{provider} {now:%Y-%m-%d}")
                    if caps.ip_hour is not None and ip_hour_use[now.date(), now.hour] > caps.ip_hour:
                        over.append(f"ip {now:%Y-%m-%d %H}h")
                    score = waiting[provider].popleft()
                    reply = receivers[provider].answer(now, day, caps.hour)
                    budget.record_reply(grant, reply, now)
                    if reply is ACCEPTED:
                        actual[day][provider] += 1
                        engagement_sent["warming" if day <= 3 else "all"].append(score)
                    else:
                        deferred[provider] += 1
                        waiting[provider].appendleft(score)  # it waits for its next chance
                        wake[provider] = now + timedelta(minutes=1)
                        break
            decisions += [f"{now:%m-%d %H:%M} {decision}" for decision in budget.take_decisions()]
            if now.minute == 59:
                await save_budget(store, budget)
            now += timedelta(minutes=1)
        await save_budget(store, budget)
    return {
        "planned": planned, "actual": actual, "deferred": deferred, "over": over, "decisions": decisions,
        "waiting": {p: len(q) for p, q in waiting.items()}, "engagement": engagement_sent,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--demand", type=int, default=10_000, help="new leads to mail each day")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--store", type=Path, default=None, help="SQLite file to keep the budget in (default: a temp file)")
    parser.add_argument("--decisions", action="store_true", help="print every throttle decision")
    parser.add_argument("--quick", action="store_true", help="a CI-sized run: the same 30 days, a fifth of the demand")
    args = parser.parse_args(argv)
    if args.quick:
        args.demand = min(args.demand, 2_000)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        store = args.store or Path(scratch) / "warmup.db"
        result = asyncio.run(simulate(args.days, args.demand, args.seed, store))
    elapsed = time.perf_counter() - started
    planned: dict[int, Counter[str]] = result["planned"]  # type: ignore[assignment]
    actual: dict[int, Counter[str]] = result["actual"]  # type: ignore[assignment]
    providers = list(MIX)
    print(f"{args.days}-day warm-up of one IP, {args.demand} new leads a day (UTC days)")
    print("planned (the schedule's cap, or what was waiting if less) / actual accepted, per provider and for the IP")
    print("day  " + "  ".join(f"{p:>15}" for p in [*providers, "ip total"]))
    for day in sorted(planned):
        cells = [f"{planned[day][p]:>7}/{actual[day][p]:<7}" for p in providers]
        total = f"{planned[day]['ip']:>7}/{sum(actual[day].values()):<7}"
        print(f"{day:>3}  " + "  ".join(cells) + f"  {total}")
    decisions: list[str] = result["decisions"]  # type: ignore[assignment]
    shown = decisions if args.decisions else [d for p in providers for d in [x for x in decisions if f"→ {p}:" in x][:3]]
    print(f"throttle decisions: {len(decisions)}" + ("" if args.decisions else " (the first 3 per provider; --decisions shows all)"))
    for line in shown:
        print(f"  {line}")
    over: list[str] = result["over"]  # type: ignore[assignment]
    for line in over[:10]:
        print(f"OVER CAP: {line}")
    engagement: dict[str, list[float]] = result["engagement"]  # type: ignore[assignment]
    mean = {k: round(sum(v) / len(v), 3) if v else None for k, v in engagement.items()}
    summary = {
        "days": args.days, "demand_per_day": args.demand,
        "planned": {p: sum(planned[d][p] for d in planned) for p in [*providers, "ip"]},
        "actual": {p: sum(actual[d][p] for d in actual) for p in providers},
        "deferred": dict(result["deferred"]),  # type: ignore[call-overload]
        "throttle_decisions": len(decisions), "over_cap_attempts": len(over),
        "waiting_at_end": result["waiting"],
        "engagement_of_sent": {"days_1_3": mean["warming"], "later": mean["all"]},
        "seconds": round(elapsed, 2),
    }
    print(json.dumps(summary))
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
