"""H03 read-group rebalancing: the pure analysis on its own, then the weekly job on the
real Core and store, with scheduled reads delivered as signed frames at injected
arrival times, the new schedules sent and acknowledged by the meters."""

from __future__ import annotations

import json
from datetime import time
from typing import Any

from headend import reports
from headend.adcs.balance import Analysis, GroupFigures, Move, Rules, Verdict, analyse
from headend.adcs.groups import Window
from headend.adcs.rebalance import SOURCE
from headend.config import Config
from headend.context import Ctx
from headend.core import Core
from headend.store import SqlStore
from headend.store.base import DAY_S
from headend.store.lifecycles import ScheduleState
from tests.headend.conftest import open_at
from tests.support.service import T0
from tests.support.signed import SimMeter, deliver, frames_to

RULES = Rules(late_s=600, over_pct=10, move_pct=10)
WINDOW = Window(time(0, 0), time(2, 0), 20, 100)  # 6 groups of 20 minutes
DAYS = list(range(10, 17))


def _arrivals(on: int, late: int, days: list[int] = DAYS) -> dict[int, int]:
    return {d: (late if d in days else on) for d in DAYS}


def test_h03_analysis_finds_over_and_under_groups_and_moves_ten_percent() -> None:
    members = {m: 0 for m in range(1, 21)} | {m: 1 for m in range(21, 31)}
    members |= {m: 2 for m in range(31, 41)}
    arrivals: dict[int, dict[int, int]] = {}
    for m in range(1, 20):  # group 0 (00:00-00:20): 1-6 late every day, 20 silent
        arrivals[m] = _arrivals(600, 2400 if m <= 6 else 600)
    for m in range(21, 31):
        arrivals[m] = _arrivals(1800, 1800)
    for m in range(31, 41):  # meter 31 late on 2 of 7 days: not consistently
        arrivals[m] = _arrivals(3000, 4000 if m == 31 else 3000, [11, 12])
    loads = {0: 20, 1: 10, 2: 10}
    got = analyse(WINDOW, RULES, members, loads, DAYS, arrivals)
    assert got == Analysis(
        [
            GroupFigures(0, 20, 13, 6, 1, Verdict.OVER),
            GroupFigures(1, 10, 10, 0, 0, Verdict.UNDER),
            GroupFigures(2, 10, 10, 0, 0, Verdict.UNDER),
            GroupFigures(3, 0, 0, 0, 0, Verdict.UNDER),
            GroupFigures(4, 0, 0, 0, 0, Verdict.UNDER),
            GroupFigures(5, 0, 0, 0, 0, Verdict.UNDER),
        ],
        [
            Move(1, 0, 3, "group 00:00-00:20 over-committed; meter late"),
            Move(2, 0, 4, "group 00:00-00:20 over-committed; meter late"),
        ],
    )
    # within late_s of the group's end is on time; a full group is not a destination
    edge = {m: _arrivals(1200 + 599, 1200 + 599) for m in range(1, 21)}
    assert analyse(WINDOW, RULES, members, loads, DAYS, edge).groups[0].verdict is Verdict.UNDER
    full = {g: 100 for g in range(1, 6)} | {0: 20}
    assert analyse(WINDOW, RULES, members, full, DAYS, arrivals).moves == []


def _read(day_start: int) -> dict[str, Any]:
    n = 96
    block = {"start": day_start - DAY_S, "interval_s": 900, "flags": [0] * n}
    block["channels"] = [[1] * n] * 2
    body: dict[str, Any] = {"request_seq": 0, "kind": 0, "part": 1, "parts": 1}
    body["sections"] = [{"tag": "intervals", "body": block}]
    return body


def test_h03_weekly_job_moves_late_meters_sends_schedules_tracks_acks(
    backend: str, store_at: list[SqlStore]
) -> None:
    cfg = Config(window_start="00:00", window_end="02:00", group_capacity=100, trouble_at="23:59")
    ctx = Ctx.build(cfg, open_at(backend, store_at))
    core = Core(ctx)
    meters = {mid: SimMeter(mid) for mid in range(1, 41)}
    for mid, m in meters.items():
        deliver(core, mid, m.frame("register", m.register_body()), T0 * 1000)
        grp = 0 if mid <= 20 else 1 if mid <= 30 else 2
        ctx.registry.set_group(
            mid, grp, ctx.window.read_offset(grp, mid), ctx.window.label(grp), T0 * 1000
        )
    today = T0 + 14 * DAY_S
    for n in range(7, 0, -1):  # the week before: reads arrive at these times of day
        day = today - n * DAY_S
        for mid, m in meters.items():
            if mid == 20:
                continue  # never heard
            tod = 2400 if mid <= 6 else 600 if mid <= 20 else 1800 if mid <= 30 else 3000
            at = day + tod
            deliver(core, mid, m.frame("read_response", _read(day), at), at * 1000)
    now = (today + 9 * 3600) * 1000
    before = reports.run(ctx, "groups", now)  # no run yet: the analysis as it stands
    assert before.totals == {"run": None, "days": 7}
    assert [r[:7] for r in before.rows][:2] == [
        (0, "00:00-00:20", 20, 13, 6, 1, "over"),
        (1, "00:20-00:40", 10, 10, 0, 0, "under"),
    ]
    out = core.tick(now)  # rebalance_at 09:00: this week's run, then the pending schedules
    assert [(v.meter_id, v.from_grp, v.to_grp) for v in ctx.rebalances.moves(1)] == [
        (1, 0, 3),
        (2, 0, 4),
    ]
    assert ctx.registry.group_of(1) == (3, ctx.window.read_offset(3, 1))
    assert ctx.registry.group_of(2) == (4, ctx.window.read_offset(4, 2))
    scheds = {s.spec.meter_id: s for s in ctx.schedules.find() if s.spec.meter_id in (1, 2)}
    assert {m: (s.source, s.state, s.spec.offset_s) for m, s in scheds.items()} == {
        1: (SOURCE, ScheduleState.SENT, ctx.window.read_offset(3, 1)),
        2: (SOURCE, ScheduleState.SENT, ctx.window.read_offset(4, 2)),
    }
    run_id, at_ms, first_day, days, text = ctx.rebalances.last() or (0, 0, 0, 0, "")
    assert (run_id, at_ms, first_day, days) == (1, now, today // DAY_S - 7, 7)
    groups = json.loads(text)["groups"]
    assert [(g["group"], g["on_time"], g["late"], g["missing"], g["verdict"]) for g in groups] == [
        (0, 13, 6, 1, "over"),
        (1, 10, 0, 0, "under"),
        (2, 10, 0, 0, "under"),
        (3, 0, 0, 0, "under"),
        (4, 0, 0, 0, "under"),
        (5, 0, 0, 0, "under"),
    ]
    log = ctx.activity.lines(kinds=["rebalance"])
    assert [(a.meter_id, a.detail) for a in log] == [
        (
            1,
            f"moved from read group 00:00-00:20 (#0) to 01:00-01:20 (#3), daily read at "
            f"+{ctx.window.read_offset(3, 1)} s; group 00:00-00:20 over-committed; "
            f"meter late; source {SOURCE}",
        ),
        (
            2,
            f"moved from read group 00:00-00:20 (#0) to 01:20-01:40 (#4), daily read at "
            f"+{ctx.window.read_offset(4, 2)} s; group 00:00-00:20 over-committed; "
            f"meter late; source {SOURCE}",
        ),
        (
            None,
            "rebalance run 1: 7 days, 1 over-committed and 5 under-committed group(s), "
            "2 meter(s) moved",
        ),
    ]
    # meter 1 takes its new schedule and acknowledges it; meter 2 stays silent
    # (the same tick may send the daily check's recovery reads too: those are not ours)
    taken = [meters[1].take(f) for f in frames_to(out, 1)]
    (sset,) = [f for f in taken if f is not None and f["type"] == "schedule_set"]
    assert sset["body"]["slots"][0]["offset_s"] == ctx.window.read_offset(3, 1)
    ack = meters[1].frame("schedule_ack", {"acked_seq": sset["seq"], "status": 0}, now // 1000)
    deliver(core, 1, ack, now + 5000)
    table = reports.run(ctx, "groups", now + 6000)
    assert table.rows == [
        (0, "00:00-00:20", 20, 13, 6, 1, "over", 2, 0, "1->#3 acked, 2->#4 sent"),
        (1, "00:20-00:40", 10, 10, 0, 0, "under", 0, 0, ""),
        (2, "00:40-01:00", 10, 10, 0, 0, "under", 0, 0, ""),
        (3, "01:00-01:20", 0, 0, 0, 0, "under", 0, 1, ""),
        (4, "01:20-01:40", 0, 0, 0, 0, "under", 0, 1, ""),
        (5, "01:40-02:00", 0, 0, 0, 0, "under", 0, 0, ""),
    ]
    assert [(v.meter_id, v.schedule_state, v.acked_ms) for v in ctx.rebalances.moves(1)] == [
        (1, "acked", now + 5000),
        (2, "sent", None),
    ]
    core.tick(now + 3600_000)  # the same week: not again
    assert len(ctx.timed.runs("rebalance")) == 1
