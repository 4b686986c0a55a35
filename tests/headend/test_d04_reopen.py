"""D04: a day given up while its meter was unreachable is read again once the meter is back.

Three fleet meters (the firmware core, `tests.support.direct`) and the head-end's `Core`:

    2001  normal
    2002  offline 2026-03-03 00:00 .. 03-05 00:00, then a mute link until 04:30 (its
          return night's reads are lost: it does not bring the days back by itself)
    2003  never answers again from 03-03 00:00

2002's days 03-02 and 03-03 are given up (3 reads each while it is offline); its return
night's catch-up is lost; the next daily check (03-05 06:00) finds them still missing
and, the meter having been heard since, re-opens them: 3 more reads, which bring them
back. The silent meter's days are never re-opened.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from headend.core import Core
from headend.reports import run
from headend.store import open_store
from headend.store.lifecycles import MissingState
from hil.fleet_profile import MeterPlan, Outage
from tests.support.direct import DAY, Direct, never, worker

T0 = 1772323200  # 2026-03-01T00:00:00Z
D = T0 + DAY  # 2026-03-02: the first full day
BACK = D + 3 * DAY  # 2026-03-05 00:00: 2002's link is back (mute until 04:30)
END = BACK + 12 * 3600


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Core]:
    path = Path(tmp_path_factory.mktemp("reopen")) / "headend.db"
    store = open_store(f"sqlite:///{path}")
    core = worker(store)
    plans = [
        MeterPlan(2001),
        MeterPlan(
            2002,
            "offline",
            outages=(Outage(D + DAY, BACK), Outage(BACK, BACK + 4 * 3600 + 1800, mute=True)),
        ),
        MeterPlan(2003, "offline", outages=never(D + DAY)),
    ]
    Direct([core], plans, T0 + 12 * 3600).run_until(END)
    yield core
    store.close()


def test_d04_days_given_up_are_reopened_when_the_meter_is_heard_again_and_read_back(
    ran: Core,
) -> None:
    core = ran
    rows = {(r.meter_id, (r.day - D) // DAY): r for r in core.ctx.missing.rows()}
    back = [rows[2002, k] for k in (0, 1)]
    assert [r.state for r in back] == [MissingState.RECOVERED] * 2
    assert [r.reopened_ms for r in back] == [(BACK + 6 * 3600) * 1000] * 2
    assert all(
        (r.pathway or "").startswith("recovery read, attempt 1 after its meter was heard again")
        for r in back
    )
    assert [r.failures for r in back] == [3, 3]  # the first round's three
    # both in one range read (older days by now), brought back by its first attempt
    assert back[0].job_id == back[1].job_id
    (job,) = [j for j in core.ctx.jobs.newest(limit=1000) if j.job_id == back[0].job_id]
    assert ((job.spec.start - D) // DAY, (job.spec.end - D) // DAY) == (0, 2)
    line = [
        a.detail
        for a in core.ctx.activity.lines(2002, ["missing_found"])
        if a.at_ms == (BACK + 6 * 3600) * 1000
    ]
    assert line == [
        "missing or incomplete: 2026-03-04 (0/96, previous day); recovery reads follow",
        "heard from again after these days were given up: 2026-03-02, 2026-03-03 re-opened, "
        "3 more recovery reads follow",
    ]
    # the silent meter is never heard: its days stay given up, never re-opened
    silent = [r for (m, _), r in rows.items() if m == 2003]
    assert {(r.state, r.reopened_ms) for r in silent} == {(MissingState.UNSUCCESSFUL, None)}


def test_d04_d08_a_reopened_day_counts_as_recovered_by_read(ran: Core) -> None:
    t = run(ran.ctx, "stats", END * 1000, day="2026-03-02")
    # day, meters, on schedule, recovered by read, by the meter, unsuccessful, in progress
    assert t.rows == [("2026-03-02", 3, 1, 1, 0, 1, 0)]
