"""Reports of the trouble family (D06, H03): ``trouble``, ``aging``, ``groups``.

``trouble``: the outstanding trouble reports (meter, opened, reason, days).
``aging``: the outstanding reports by age (whole days since opening) in the
buckets 0-2, 3-7, 8-14, 15-30, >30, with the meters of each. ``groups``: per
read group the last rebalancing run's figures (meters, on time, late,
missing, verdict) and that run's moves with the state of each move's
schedule (acked when the meter confirmed it); before any run, the analysis
of the last days as it stands, without moves.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from headend.adcs import rebalance
from headend.context import Ctx
from headend.reports import Cell, Report, Table
from headend.store.lifecycles import TroubleState

#: (label, lowest age in days, highest age in days or None)
BUCKETS = (("0-2", 0, 2), ("3-7", 3, 7), ("8-14", 8, 14), ("15-30", 15, 30), (">30", 31, None))
DAY_MS = 86_400_000


def _at(ctx: Ctx, ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, ctx.config.tz).isoformat(timespec="seconds")


def trouble(ctx: Ctx, now_ms: int) -> Table:
    """Outstanding trouble reports, oldest first."""
    rows: list[tuple[Cell, ...]] = [
        (t.meter_id, _at(ctx, t.opened_ms), t.reason, " ".join(t.days))
        for t in ctx.troubles.find(state=TroubleState.OPEN)
    ]
    return Table(
        "Outstanding trouble reports (D06)",
        ("meter", "opened", "reason", "days"),
        rows,
        {"open": len(rows), "at": _at(ctx, now_ms)},
    )


def bucket(age_days: int) -> str:
    """The aging bucket of a report ``age_days`` whole days old."""
    for label, lo, hi in BUCKETS:
        if age_days >= lo and (hi is None or age_days <= hi):
            return label
    raise ValueError(f"age {age_days} days: negative")


def aging(ctx: Ctx, now_ms: int) -> Table:
    """Outstanding reports by age bucket, with counts and meters."""
    meters: dict[str, list[int]] = {label: [] for label, _, _ in BUCKETS}
    for t in ctx.troubles.find(state=TroubleState.OPEN):
        meters[bucket(max(0, now_ms - t.opened_ms) // DAY_MS)].append(t.meter_id)
    rows: list[tuple[Cell, ...]] = [
        (label, len(ids), " ".join(map(str, sorted(ids)))) for label, ids in meters.items()
    ]
    return Table(
        "Outstanding trouble reports by age in days (D06)",
        ("age_days", "reports", "meters"),
        rows,
        {"open": sum(len(v) for v in meters.values()), "at": _at(ctx, now_ms)},
    )


def groups(ctx: Ctx, now_ms: int) -> Table:
    """Per read group: figures and verdict of the last rebalancing run, and its moves."""
    last = ctx.rebalances.last()
    moves: dict[int, list[str]] = {}
    out_n: dict[int, int] = {}
    in_n: dict[int, int] = {}
    if last is None:
        days, analysis = rebalance.study(ctx, now_ms)
        figures: list[dict[str, Any]] = [
            {
                "group": g.group,
                "window": ctx.window.label(g.group),
                "meters": g.meters,
                "on_time": g.on_time,
                "late": g.late,
                "missing": g.missing,
                "verdict": str(g.verdict),
            }
            for g in analysis.groups
        ]
        totals: dict[str, int | str | None] = {"run": None, "days": len(days)}
    else:
        run_id, at_ms, _, n_days, text = last
        figures = json.loads(text)["groups"]
        for mv in ctx.rebalances.moves(run_id):
            state = mv.schedule_state or "rewritten since"
            moves.setdefault(mv.from_grp, []).append(f"{mv.meter_id}->#{mv.to_grp} {state}")
            out_n[mv.from_grp] = out_n.get(mv.from_grp, 0) + 1
            in_n[mv.to_grp] = in_n.get(mv.to_grp, 0) + 1
        totals = {"run": run_id, "run_at": _at(ctx, at_ms), "days": n_days}
    rows: list[tuple[Cell, ...]] = [
        (
            f["group"],
            f["window"],
            f["meters"],
            f["on_time"],
            f["late"],
            f["missing"],
            f["verdict"],
            out_n.get(f["group"], 0),
            in_n.get(f["group"], 0),
            ", ".join(moves.get(f["group"], [])),
        )
        for f in figures
    ]
    return Table(
        "Read groups: arrivals against their windows, and the last rebalancing (H03)",
        (
            "group",
            "window",
            "meters",
            "on_time",
            "late",
            "missing",
            "verdict",
            "moved_out",
            "moved_in",
            "moves",
        ),
        rows,
        totals,
    )


REPORTS = {
    "trouble": Report("trouble", "outstanding trouble reports (D06)", trouble),
    "aging": Report("aging", "outstanding trouble reports by age (D06)", aging),
    "groups": Report("groups", "read groups and the last rebalancing (H03)", groups),
}
