"""The warm-up budget's IO shell: built from the store, written back to it, shown to the operator.

The budget itself (`mailer.warmupbudget`) is pure; these are the few awaits around it, shared by
the daemon and `mailer warmup status`.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

from mailer.store import Store
from mailer.warmup import WarmupPlan
from mailer.warmupbudget import ProviderStatus, WarmupBudget


async def load_budget(store: Store, plan: WarmupPlan, now: datetime) -> WarmupBudget:
    """Today's (and yesterday's) stored use and every throttle: a restart continues the day."""
    since = now.astimezone(timezone.utc).date() - timedelta(days=1)
    usage = await store.warmup_usage(since=since)
    return WarmupBudget(plan, usage=usage, throttles=await store.warmup_throttles())


async def save_budget(store: Store, budget: WarmupBudget) -> None:
    """Write what changed since the last save; on failure keep it for the next save."""
    changes = budget.take_changes()
    if not changes:
        return
    try:
        await store.record_warmup(changes)
    except BaseException:
        budget.restore(changes)
        raise


def _cap(used: int, cap: int | None) -> str:
    return f"{used}/{cap}" if cap is not None else f"{used}/∞"


def render_status(rows: list[ProviderStatus], now: datetime) -> str:
    """Each IP, then a table of its providers: caps and use, rate, state and the last decision."""
    lines = [f"warm-up at {now.astimezone(timezone.utc):%Y-%m-%d %H:%M} UTC (days and hours in UTC)"]
    width = max([len(row.provider) for row in rows] + [len("provider")])
    current = None
    for row in rows:
        if row.ip != current:
            current = row.ip
            day = f"warming, day {row.warm_day}" if row.ip_day_cap is not None else "warm (no warm-up caps)"
            lines.append(
                f"ip {row.ip}: {day}; today {_cap(row.ip_day_used, row.ip_day_cap)}, "
                f"this hour {_cap(row.ip_hour_used, row.ip_hour_cap)}"
            )
            lines.append(f"  {'provider':<{width}}  {'today':>13}  {'this hour':>9}  rate   state")
        if row.state == "paused" and row.paused_until is not None:
            state = f"paused until {row.paused_until:%Y-%m-%d %H:%M} UTC"
        else:
            state = row.state
        line = (
            f"  {row.provider:<{width}}  {_cap(row.day_used, row.day_cap):>13}  "
            f"{_cap(row.hour_used, row.hour_cap):>9}  ×{row.multiplier:.2f}  {state}"
        )
        lines.append(line + (f" — {row.reason}" if row.reason else ""))
    return "\n".join(lines)


def status_json(rows: list[ProviderStatus]) -> str:
    def one(row: ProviderStatus) -> dict[str, Any]:
        return {
            "ip": row.ip, "provider": row.provider, "warmup_day": row.warm_day,
            "ip_today": {"cap": row.ip_day_cap, "used": row.ip_day_used},
            "ip_this_hour": {"cap": row.ip_hour_cap, "used": row.ip_hour_used},
            "today": {"cap": row.day_cap, "used": row.day_used},
            "this_hour": {"cap": row.hour_cap, "used": row.hour_used},
            "multiplier": row.multiplier, "state": row.state,
            "paused_until": row.paused_until.isoformat() if row.paused_until else None,
            "reason": row.reason,
        }

    return json.dumps([one(row) for row in rows], ensure_ascii=False, indent=1)
