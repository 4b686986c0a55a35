"""D02-D05, D08: the daily check and automated recovery, with fleet meters and injected failures.

Eight fleet meters (the firmware core on CPython, `tests.support.direct`) collected by
the head-end's `Core` on a real SQLite store, nine and a half simulated days, one run
shared by the tests of this module (deterministic: the same run gives the same rows):

    1001        normal
    1002        offline 1 day   (link down 2026-03-03 00:00 .. 03-04 00:00)
    1003        offline 3 days  (03-03 .. 03-06)
    1004        offline 6 days  (03-03 .. 03-09)
    1005        intermittent    (down 03-03 00:00-07:00, 03-05 01:00-09:00)
    1006        never answers   (down from 03-03 00:00 on)
    1007, 1008  normal; the head-end's store loses days of theirs on 03-07 at 05:00 (the
                SQLite ``synchronous=NORMAL`` power-cut case): data the meters had
                delivered and will never send again by themselves

The check runs at 06:00 (window 00:01-04:00). A meter whose link was down keeps its
unacknowledged read and sends it when the link is back (M15): those days come back
"by themselves"; the days the store lost come back only through recovery reads.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from headend.adcs import recovery
from headend.adcs.recovery import BY_ITSELF, Settle, settle
from headend.config import Config
from headend.core import Core
from headend.errors import ConfigError
from headend.reports import run
from headend.store import open_store
from headend.store.lifecycles import MissingEvent, MissingState
from headend.store.missing import Closed, MissingDay
from hil.fleet_profile import MeterPlan, Outage
from tests.support.direct import DAY, Direct, never, worker

T0 = 1772323200  # 2026-03-01T00:00:00Z
D = T0 + DAY  # 2026-03-02: the first full day
END = D + 9 * DAY + 12 * 3600  # 2026-03-11 12:00
LOST = {1007: (0, 1, 2, 4), 1008: (1, 3)}  # days after D the store loses on 03-07 05:00


def plans() -> list[MeterPlan]:
    return [
        MeterPlan(1001),
        MeterPlan(1002, "offline", outages=(Outage(D + DAY, D + 2 * DAY),)),
        MeterPlan(1003, "offline", outages=(Outage(D + DAY, D + 4 * DAY),)),
        MeterPlan(1004, "offline", outages=(Outage(D + DAY, D + 7 * DAY),)),
        MeterPlan(
            1005,
            "intermittent",
            outages=(
                Outage(D + DAY, D + DAY + 7 * 3600),
                Outage(D + 3 * DAY + 3600, D + 3 * DAY + 9 * 3600),
            ),
        ),
        MeterPlan(1006, "offline", outages=never(D + DAY)),
        MeterPlan(1007),
        MeterPlan(1008),
    ]


def lose(core: Core, lost: dict[int, tuple[int, ...]]) -> None:
    """The store loses day rows (what a power cut under synchronous=NORMAL can do)."""
    db = core.ctx.db
    with db.transaction():
        for mid, days in lost.items():
            for k in days:
                db.execute(
                    "DELETE FROM interval_day WHERE meter_id = ? AND day = ?", (mid, D + k * DAY)
                )


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Core, Direct]]:
    path = Path(tmp_path_factory.mktemp("rec")) / "headend.db"
    store = open_store(f"sqlite:///{path}")
    core = worker(store)
    x = Direct([core], plans(), T0 + 12 * 3600)
    x.run_until(D + 5 * DAY + 5 * 3600)
    lose(core, LOST)
    x.run_until(END)
    yield core, x
    store.close()


def _report(
    core: Core, name: str, **opts: str
) -> tuple[dict[str, object], list[tuple[object, ...]]]:
    t = run(core.ctx, name, END * 1000, **opts)
    return dict(t.totals), t.rows


def _found(at: str) -> str:
    return f"2026-03-{at}:00+00:00"


def test_d02_daily_check_logs_each_missing_meter_day_at_once_one_line_per_meter(
    ran: tuple[Core, Direct],
) -> None:
    core, _ = ran
    at = (D + 5 * DAY + 6 * 3600) * 1000  # the check of 2026-03-06, at 03-07 06:00
    lines = [
        (a.meter_id, a.kind, a.detail)
        for a in core.ctx.activity.lines(kinds=["missing_found", "daily_check"], since_ms=at)
        if a.at_ms == at
    ]
    assert lines == [
        (
            1004,
            "missing_found",
            "missing or incomplete: 2026-03-06 (0/96, previous day); recovery reads follow",
        ),
        (
            1006,
            "missing_found",
            "missing or incomplete: 2026-03-06 (0/96, previous day); recovery reads follow",
        ),
        (
            1007,
            "missing_found",
            "missing or incomplete: 2026-03-02 (0/96), 2026-03-03 (0/96), 2026-03-04 (0/96), "
            "2026-03-06 (0/96, previous day); recovery reads follow",
        ),
        (
            1008,
            "missing_found",
            "missing or incomplete: 2026-03-03 (0/96), 2026-03-05 (0/96); recovery reads follow",
        ),
        (
            None,
            "daily_check",
            "daily check of 2026-03-06 by headend-1: 8 meters verified, 4 missing or "
            "incomplete data (16 meter-days, 8 newly found, 0 re-opened)",
        ),
    ]
    # one check per collection day, each at 06:00, none before the meters had a full day
    checks = core.ctx.missing.checks()
    assert [(c.day - T0) // DAY for c in checks] == list(range(-1, 10))
    assert [c.meters for c in checks] == [0, 0] + [8] * 9
    assert {c.worker for c in checks} == {"headend-1"}


def test_d03_d05_offline_1_3_6_days_three_attempts_then_recovered_by_the_meters_own_read(
    ran: tuple[Core, Direct],
) -> None:
    core, _ = ran
    _, rows = _report(core, "history")
    by = {(r[0], r[1]): r[2:] for r in rows}
    # 1 day: found at the check, 3 failed recovery reads 30 min apart, back when the link is
    itself = "scheduled read (arrived by itself)"
    assert by[1002, "2026-03-02"] == (
        "prev_day",
        _found("03T06:00"),
        "0/96",
        "recovered",
        3,
        3,
        _found("04T00:00"),
        itself,
    )
    # 3 and 6 days: each day found at its own check, all back when the link returned
    for mid, days, back in ((1003, 3, "06T00:00"), (1004, 6, "09T00:00")):
        got = [(k, v) for k, v in by.items() if k[0] == mid]
        assert [k[1] for k, _ in got] == [f"2026-03-{2 + i:02d}" for i in range(days)]
        assert [v[1] for _, v in got] == [_found(f"{3 + i:02d}T06:00") for i in range(days)]
        assert {v[3:] for _, v in got} == {("recovered", 3, 3, _found(back), itself)}
    # each attempt logged: 3 failures of 1002's previous day, then its recovery
    lines = [a.detail for a in core.ctx.activity.lines(1002, ["recovery_failed", "recovery_done"])]
    assert lines == [
        "read failed (attempt 1 of 3, job 1): 2026-03-02 missing 0/96; next attempt in 1800 s",
        "read failed (attempt 2 of 3, job 6): 2026-03-02 missing 0/96; next attempt in 1800 s",
        "read failed (attempt 3 of 3, job 11): 2026-03-02 unsuccessful 0/96 (final)",
        f"recovered 2026-03-02: {BY_ITSELF}",
    ]


def test_d03_d04_a_meter_that_never_answers_is_in_the_exception_and_missing_reports(
    ran: tuple[Core, Direct],
) -> None:
    core, _ = ran
    days = [f"2026-03-{d:02d}" for d in range(2, 11)]
    totals, rows = _report(core, "missing")
    assert totals == {"meters": 1, "meter_days": 9}
    assert rows == [(1006, 9, " ".join(days), " ".join(["unsuccessful"] * 9))]
    totals, rows = _report(core, "exceptions")
    assert totals == {"meters": 1, "meter_days": 9}
    assert [r[:7] for r in rows] == [(1006, d, "prev_day", "unsuccessful", 0, 96, 3) for d in days]
    assert [r[8] for r in rows] == [_found(f"{d + 1:02d}T06:00") for d in range(2, 11)]
    totals, rows = _report(core, "exceptions", day="2026-03-05")
    assert totals == {"meters": 1, "meter_days": 1} and rows[0][:2] == (1006, "2026-03-05")


def test_d03_d04_lost_days_are_read_by_naming_them_consecutive_merged_each_pathway_logged(
    ran: tuple[Core, Direct],
) -> None:
    core, _ = ran
    jobs = [j for j in core.ctx.jobs.newest(limit=1000) if j.spec.meter_id in LOST]
    spans = sorted(
        (j.spec.meter_id, (j.spec.start - D) // DAY, (j.spec.end - D) // DAY, j.priority)
        for j in jobs
    )
    # 1007: 03-02..03-04 in one range read, the previous day (03-06) alone; 1008: each day
    assert spans == [(1007, 0, 3, 0), (1007, 4, 5, 0), (1008, 1, 2, 0), (1008, 3, 4, 0)]
    assert {j.requester for j in jobs} == {"recovery"}
    _, rows = _report(core, "history")
    got = {(r[0], r[1]): (r[2], r[5], r[6], r[8], r[9]) for r in rows if r[0] in LOST}
    ids = {(j.spec.meter_id, (j.spec.start - D) // DAY): j.job_id for j in jobs}
    way = "recovery read, attempt 1, via mqtt, job {}"
    at = _found("07T06:05")
    assert got == {
        (1007, "2026-03-02"): ("older", "recovered", 1, at, way.format(ids[1007, 0])),
        (1007, "2026-03-03"): ("older", "recovered", 1, at, way.format(ids[1007, 0])),
        (1007, "2026-03-04"): ("older", "recovered", 1, at, way.format(ids[1007, 0])),
        (1007, "2026-03-06"): ("prev_day", "recovered", 1, at, way.format(ids[1007, 4])),
        (1008, "2026-03-03"): ("older", "recovered", 1, at, way.format(ids[1008, 1])),
        (1008, "2026-03-05"): ("older", "recovered", 1, at, way.format(ids[1008, 3])),
    }
    # the data is back, from the meters, as recovery data
    for mid, days in LOST.items():
        for k in days:
            (cov,) = core.ctx.readings.coverage(mid, D + k * DAY, D + (k + 1) * DAY)
            assert cov.complete


def test_d04_recovery_report_fully_partially_unsuccessful_and_intermittent_failures(
    ran: tuple[Core, Direct],
) -> None:
    core, _ = ran
    totals, rows = _report(core, "recovery")
    assert totals == {
        "meters_attempted": 7,
        "fully": 6,
        "partially": 0,
        "unsuccessful": 1,
        "in_progress": 0,
    }
    # meter, days missing, by read, by itself, partial, unsuccessful, in progress,
    # intermittent failures (separate runs of missing days), failed recovery reads
    assert rows == [
        (1002, 1, 0, 1, 0, 0, 0, 1, 3, "fully"),
        (1003, 3, 0, 3, 0, 0, 0, 1, 9, "fully"),
        (1004, 6, 0, 6, 0, 0, 0, 1, 18, "fully"),
        (1005, 2, 0, 2, 0, 0, 0, 2, 5, "fully"),
        (1006, 9, 0, 0, 0, 9, 0, 1, 27, "unsuccessful"),
        (1007, 4, 4, 0, 0, 0, 0, 2, 0, "fully"),
        (1008, 2, 2, 0, 0, 0, 0, 2, 0, "fully"),
    ]


def test_d08_statistics_per_collection_day_add_up_to_the_meters(
    ran: tuple[Core, Direct],
) -> None:
    core, _ = ran
    totals, rows = _report(core, "stats")
    # day, meters, on schedule, recovered by read, by the meter, unsuccessful, in progress
    assert rows == [
        ("2026-02-28", 0, 0, 0, 0, 0, 0),
        ("2026-03-01", 0, 0, 0, 0, 0, 0),
        ("2026-03-02", 8, 3, 0, 4, 1, 0),
        ("2026-03-03", 8, 5, 0, 2, 1, 0),
        ("2026-03-04", 8, 4, 0, 3, 1, 0),
        ("2026-03-05", 8, 6, 0, 1, 1, 0),
        ("2026-03-06", 8, 5, 1, 1, 1, 0),
        ("2026-03-07", 8, 6, 0, 1, 1, 0),
        ("2026-03-08", 8, 7, 0, 0, 1, 0),
        ("2026-03-09", 8, 7, 0, 0, 1, 0),
        ("2026-03-10", 8, 7, 0, 0, 1, 0),
    ]
    assert totals == {"days": 11}
    assert _report(core, "stats", day="2026-03-06")[1] == [("2026-03-06", 8, 5, 1, 1, 1, 0)]


def _closed(attempts: int, held: int, job: str, present: int = 0) -> Closed:
    row = MissingDay(
        1, D, 96, present, 0, "prev_day", MissingState.RECOVERING, attempts, 0, 7, 0, None, None
    )
    return Closed(row, job, held, held - present)


@pytest.mark.parametrize(
    ("closed", "want"),
    [
        (_closed(1, 96, "done"), Settle(MissingEvent.COMPLETE, False, True)),
        (_closed(1, 40, "done"), Settle(MissingEvent.SOME, False, False)),  # partial: read again
        (_closed(3, 40, "done"), Settle(MissingEvent.SOME, False, True)),  # partial, final
        (_closed(2, 50, "failed", 10), Settle(MissingEvent.SOME, True, False)),
        (_closed(1, 0, "failed"), Settle(MissingEvent.NONE, True, False)),  # missing again
        (_closed(3, 10, "failed", 10), Settle(MissingEvent.GIVE_UP, True, True)),
    ],
)
def test_d03_d04_a_read_that_ends_settles_its_days(closed: Closed, want: Settle) -> None:
    assert settle(closed, 3) == want


def test_d03_d04_gaps_previous_day_alone_consecutive_older_days_merged() -> None:
    def day(k: int, kind: str = "older", reopened: int | None = None) -> MissingDay:
        return MissingDay(
            1,
            D + k * DAY,
            96,
            0,
            0,
            kind,
            MissingState.MISSING,
            0,
            0,
            None,
            0,
            None,
            None,
            reopened,
        )

    got = recovery.gaps([day(0), day(1), day(3), day(5), day(6), day(7, "prev_day")])
    assert [[(d.day - D) // DAY for d in g] for g in got] == [[0, 1], [3], [5, 6], [7]]
    # days found as previous days and re-opened later (D04): older days by now, merged
    again = [day(k, "prev_day", 1) for k in range(3)] + [day(4, "prev_day")]
    assert [[(d.day - D) // DAY for d in g] for g in recovery.gaps(again)] == [[0, 1, 2], [4]]


def test_d02_daily_check_time_no_later_than_0800() -> None:
    assert Config(daily_check_at="08:00").daily_check_at == "08:00"
    with pytest.raises(ConfigError, match="daily_check_at: expected no later than 08:00"):
        Config(daily_check_at="08:01")
