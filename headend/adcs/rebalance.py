"""Read-group rebalancing (H03, scenario 6): the periodic job around `balance.analyse`.

Every ``rebalance_every_days`` (one worker, `timed`), over the days since the
last run: the arrival of each meter's first scheduled read per local day
(`Arrivals`) against its group's window. Meters that joined their group
during those days are left out. Each move writes the meter's new group and
its slot-0 schedule at the new group's read offset as pending (source
``system:rebalance``): the service sends it like any schedule and records
the ack on the schedule row, which the `groups` report shows per move. A
meter whose schedule is still in flight (sent, no answer yet) is not moved
this time. The analysis and the moves are recorded (`Rebalances`).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import datetime

from headend.adcs.balance import Analysis, Rules, analyse
from headend.context import Ctx
from headend.errors import IllegalTransition
from headend.store.activity import Kind
from headend.store.arrivals import local_day
from headend.store.base import DAY_S
from headend.store.records import ScheduleSpec

SOURCE = "system:rebalance"


def rules(ctx: Ctx) -> Rules:
    c = ctx.config
    return Rules(c.rebalance_late_s, c.rebalance_over_pct, c.rebalance_move_pct)


def study(ctx: Ctx, now_ms: int) -> tuple[list[int], Analysis]:
    """The analysed days (local day numbers, yesterday back) and the analysis."""
    n = ctx.config.rebalance_every_days
    offset = datetime.fromtimestamp(now_ms / 1000, ctx.config.tz).utcoffset()
    off_min = int(offset.total_seconds() // 60) if offset is not None else 0
    today, _ = local_day(now_ms // 1000, off_min)
    days = list(range(today - n, today))
    first_ms = (days[0] * DAY_S - off_min * 60) * 1000
    members = {m: g for m, (g, _) in ctx.registry.members(first_ms).items()}
    arrivals = ctx.arrivals.time_of_day(days[0], days[-1])
    loads = ctx.registry.group_loads()
    return days, analyse(ctx.window, rules(ctx), members, loads, days, arrivals)


def run(ctx: Ctx, period: int, now_ms: int) -> str:
    """Analyse, move, record; returns a one-line summary."""
    days, analysis = study(ctx, now_ms)
    done: list[tuple[int, int, int, int, int, str]] = []
    skipped: list[int] = []
    for mv in analysis.moves:
        _, old = ctx.registry.group_of(mv.meter_id)
        new = ctx.window.read_offset(mv.to_grp, mv.meter_id)
        try:
            ctx.schedules.put(ScheduleSpec(mv.meter_id, 0, offset_s=new), SOURCE, now_ms)
        except IllegalTransition:
            skipped.append(mv.meter_id)  # its schedule is in flight: next run
            continue
        label = ctx.window.label(mv.to_grp)
        ctx.registry.set_group(mv.meter_id, mv.to_grp, new, label, now_ms)
        done.append((mv.meter_id, mv.from_grp, mv.to_grp, old or 0, new, mv.why))
        ctx.activity.log(
            now_ms,
            Kind.REBALANCE,
            f"moved from read group {ctx.window.label(mv.from_grp)} (#{mv.from_grp}) to "
            f"{label} (#{mv.to_grp}), daily read at +{new} s; {mv.why}; source {SOURCE}",
            mv.meter_id,
        )
    record = {
        "days": days,
        "groups": [
            {**asdict(g), "verdict": str(g.verdict), "window": ctx.window.label(g.group)}
            for g in analysis.groups
        ],
        "skipped": skipped,
    }
    run_id = ctx.rebalances.record(now_ms, days[0], len(days), json.dumps(record), done)
    over = sum(g.verdict == "over" for g in analysis.groups)
    under = sum(g.verdict == "under" for g in analysis.groups)
    summary = (
        f"rebalance run {run_id}: {len(days)} days, {over} over-committed and {under} "
        f"under-committed group(s), {len(done)} meter(s) moved"
        + (f", {len(skipped)} left (schedule in flight)" if skipped else "")
    )
    ctx.activity.log(now_ms, Kind.REBALANCE, summary, None, str(run_id))
    return summary
