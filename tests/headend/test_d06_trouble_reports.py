"""D06 trouble reports on the real Core and store (both backends): day rows put in
the store with gaps injected, the daily run driven through ``Core.tick``."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from headend import reports
from headend.adcs.timed import due_period
from headend.adcs.trouble import RECENT, judge, valid_days
from headend.config import Config
from headend.context import Ctx
from headend.core import Core
from headend.errors import ConfigError
from headend.store import SqlStore
from headend.store.base import DAY_S
from headend.store.lifecycles import TroubleState
from tests.headend.conftest import open_at
from tests.support.days import add_meters, put_day
from tests.support.service import T0

TODAY = T0 + 40 * DAY_S  # 2024-05-11, local (UTC) midnight
RUN = TODAY + 8 * 3600 + 30 * 60  # trouble_at 08:30
FIVE = "missing 5 days (full or partial) in the window"


def _ctx(url: str, opened: list[SqlStore], worker: str = "w1") -> Ctx:
    return Ctx.build(Config(worker=worker), open_at(url, opened))


def _day(n: int) -> int:
    """Start of the day ``n`` days before today."""
    return TODAY - n * DAY_S


def _iso(n: int) -> str:
    return datetime.fromtimestamp(_day(n), UTC).date().isoformat()


def _ordinal(n: int) -> int:
    """The trouble job's period of the day ``n`` days before today (its date ordinal)."""
    return datetime.fromtimestamp(_day(n), UTC).date().toordinal()


def _fleet(ctx: Ctx) -> None:
    """Meters 1-7, 30 days back; the gaps are named per meter."""
    add_meters(ctx, range(1, 7), registered_at=T0)
    add_meters(ctx, [7], registered_at=_day(2) - 60)  # registered 2 days ago
    gaps: dict[int, set[int]] = {
        1: set(),  # complete: nothing
        2: {1, 2, 3},  # the 3 most recent days
        3: {4, 9, 14, 19, 24},  # 5 non-consecutive days
        4: {4, 9, 14, 19},  # 4: not enough
        6: {1, 2},  # 2 recent: not enough
        7: {1, 2},  # all its days (2) missing: not 3
    }
    for mid, missing in gaps.items():
        for n in range(1, 31):
            if n not in missing and _day(n) >= T0 and not (mid == 7 and n > 2):
                put_day(ctx, mid, _day(n))
    for n in range(1, 31):  # meter 5: the 3 most recent days partial (95 of 96 slots)
        put_day(ctx, 5, _day(n), slots=95 if n <= 3 else None)


def test_d06_opens_for_3_recent_and_5_intermittent_days_not_for_4(
    backend: str, store_at: list[SqlStore]
) -> None:
    ctx = _ctx(backend, store_at)
    _fleet(ctx)
    core = Core(ctx)
    core.tick(RUN * 1000)
    core.tick((RUN + 3600) * 1000)  # the same day: not again
    table = reports.run(ctx, "trouble", RUN * 1000)
    assert table.columns == ("meter", "opened", "reason", "days")
    opened = "2024-05-11T08:30:00+00:00"
    assert table.rows == [
        (2, opened, RECENT, f"{_iso(3)} {_iso(2)} {_iso(1)}"),
        (3, opened, FIVE, " ".join(_iso(n) for n in (24, 19, 14, 9, 4))),
        (5, opened, RECENT, f"{_iso(3)} {_iso(2)} {_iso(1)}"),
    ]
    assert table.totals["open"] == 3
    lines = ctx.activity.lines(kinds=["trouble_opened"])
    assert [(a.meter_id, a.detail) for a in lines] == [
        (2, f"trouble report 1: {RECENT} (3 of the last 30 days: {_iso(3)}, {_iso(2)}, {_iso(1)})"),
        (
            3,
            f"trouble report 2: {FIVE} (5 of the last 30 days: "
            + ", ".join(_iso(n) for n in (24, 19, 14, 9, 4))
            + ")",
        ),
        (5, f"trouble report 3: {RECENT} (3 of the last 30 days: {_iso(3)}, {_iso(2)}, {_iso(1)})"),
    ]
    assert [r[:2] for r in ctx.timed.runs("trouble")] == [(_ordinal(0), "w1")]


def test_d06_no_second_report_while_open_then_closes_when_data_flows(
    backend: str, store_at: list[SqlStore]
) -> None:
    ctx = _ctx(backend, store_at)
    add_meters(ctx, [2], registered_at=T0)
    for n in range(4, 31):
        put_day(ctx, 2, _day(n))
    core = Core(ctx)
    core.tick(RUN * 1000)  # day 0: opened (days 3, 2, 1 missing)
    core.tick((RUN + DAY_S) * 1000)  # day +1: 4 recent days missing, still open: no second
    assert [(t.trouble_id, t.state, t.days) for t in ctx.troubles.find(2)] == [
        (1, TroubleState.OPEN, (_iso(3), _iso(2), _iso(1)))
    ]
    # the meter talks again: today's day arrives complete at 03:00 on day +2
    put_day(ctx, 2, TODAY + DAY_S, received_at=TODAY + 2 * DAY_S + 3 * 3600)
    core.tick((RUN + 2 * DAY_S) * 1000)
    day1 = datetime.fromtimestamp(TODAY + DAY_S, UTC).date().isoformat()
    (t,) = ctx.troubles.find(2)
    assert (t.state, t.closed_ms, t.closed_why) == (
        TroubleState.CLOSED,
        (RUN + 2 * DAY_S) * 1000,
        f"complete day {day1} received",
    )
    # the days it was reported for do not open a new one
    core.tick((RUN + 3 * DAY_S) * 1000)
    assert [x.trouble_id for x in ctx.troubles.find(2)] == [1]
    assert reports.run(ctx, "trouble", (RUN + 3 * DAY_S) * 1000).rows == []
    log = ctx.activity.lines(2, kinds=["trouble_opened", "trouble_closed"])
    assert [(a.kind, a.at_ms) for a in log] == [
        ("trouble_opened", RUN * 1000),
        ("trouble_closed", (RUN + 2 * DAY_S) * 1000),
    ]
    assert log[1].detail == f"trouble report 1: complete day {day1} received"
    # silent again for 3 days after the closing day: a new report (the second, not a twin)
    core.tick((RUN + 6 * DAY_S) * 1000)
    assert [(x.trouble_id, x.state, x.reason) for x in ctx.troubles.find(2)] == [
        (1, TroubleState.CLOSED, RECENT),
        (2, TroubleState.OPEN, RECENT),
    ]


def test_d06_aging_buckets(sqlite_url: str, store_at: list[SqlStore]) -> None:
    ctx = _ctx(sqlite_url, store_at)
    add_meters(ctx, range(1, 10), registered_at=T0)
    now = RUN * 1000
    ages = {1: 0, 2: 2, 3: 3, 4: 7, 5: 8, 6: 14, 7: 15, 8: 30, 9: 31}
    for mid, age in ages.items():
        assert ctx.troubles.open(mid, now - age * 86_400_000 - 1000, RECENT, [_iso(1)])
    assert ctx.troubles.open(1, now, RECENT, []) is None  # never a second
    table = reports.run(ctx, "aging", now)
    assert table.columns == ("age_days", "reports", "meters")
    assert table.rows == [
        ("0-2", 2, "1 2"),
        ("3-7", 2, "3 4"),
        ("8-14", 2, "5 6"),
        ("15-30", 2, "7 8"),
        (">30", 1, "9"),
    ]
    assert table.totals["open"] == 9


def test_d06_judge_rule() -> None:
    full = (1 << 30) - 1
    assert judge(full & ~0b111, full) == (RECENT, [0, 1, 2])
    assert judge(full & ~0b110, full) is None  # 2 recent days
    five = sum(1 << b for b in (3, 8, 13, 18, 23))
    assert judge(full & ~five, full) == (FIVE, [3, 8, 13, 18, 23])
    assert judge(full & ~(five & ~(1 << 23)), full) is None  # 4
    assert judge(0, 0b11) is None  # only 2 days count (registered 2 days ago)
    # days count from registration, and from the day a report closed
    assert valid_days(TODAY, TODAY - 2 * DAY_S, None, 30) == 0b11
    assert valid_days(TODAY, T0, (TODAY - DAY_S + 60) * 1000, 30) == 0b1
    assert valid_days(TODAY, T0, None, 30) == full


def test_d06_h03_two_workers_run_each_daily_job_once(
    backend: str, store_at: list[SqlStore]
) -> None:
    a = _ctx(backend, store_at, "w1")
    b = _ctx(backend, store_at, "w2")
    _fleet(a)
    cores = [Core(a), Core(b)]
    with ThreadPoolExecutor(2) as pool:
        for t in (RUN, RUN + 60, RUN + 3600):
            list(pool.map(Core.tick, cores, [t * 1000] * 2))
    runs = a.timed.runs("trouble")
    assert [r[0] for r in runs] == [_ordinal(0)]
    assert all(r[1] in ("w1", "w2") and r[3] is not None for r in runs)
    assert [(t.meter_id, t.state) for t in a.troubles.find()] == [
        (2, TroubleState.OPEN),
        (3, TroubleState.OPEN),
        (5, TroubleState.OPEN),
    ]
    assert len(a.activity.lines(kinds=["trouble_opened"])) == 3
    assert len(a.timed.runs("rebalance")) == 1  # the week's run, once
    assert len(a.activity.lines(kinds=["rebalance"])) == 1


def test_d06_d07_h03_settings_are_checked_and_reports_registered() -> None:
    for bad, text in (
        ({"trouble_window_days": 4}, "trouble_window_days: expected 5..62, got 4"),
        ({"trouble_at": "8h"}, "trouble_at: expected HH:MM, got '8h'"),
        ({"offschedule_attempts": 0}, "offschedule_attempts: expected > 0, got 0"),
        ({"rebalance_move_pct": 0}, "rebalance_move_pct: expected 1..100, got 0"),
        ({"rebalance_late_s": -1}, "rebalance_late_s: expected >= 0, got -1"),
    ):
        with pytest.raises(ConfigError) as e:
            Config(**bad)
        assert str(e.value) == text
    assert {"trouble", "aging", "groups"} <= set(reports.registry())


def test_d06_h03_jobs_never_run_before_their_time_of_day(
    sqlite_url: str, store_at: list[SqlStore]
) -> None:
    utc = ZoneInfo("UTC")
    assert due_period(utc, "08:30", 1, (RUN - 1) * 1000) is None
    assert due_period(utc, "08:30", 1, RUN * 1000) == _ordinal(0)
    week = {due_period(utc, "09:00", 7, (TODAY + d * DAY_S + 9 * 3600) * 1000) for d in range(7)}
    assert week == {_ordinal(-d) // 7 for d in range(7)}  # one per 7-day period
    ctx = _ctx(sqlite_url, store_at)
    _fleet(ctx)
    core = Core(ctx)
    core.tick((TODAY + 2 * 3600) * 1000)  # 02:00: the night's collection goes on
    assert ctx.timed.runs("trouble") == [] and ctx.troubles.find() == []
    core.tick(RUN * 1000)
    assert [r[0] for r in ctx.timed.runs("trouble")] == [_ordinal(0)]
