"""H08 with D02-D04: several workers share the check and the recovery reads (each once);
H09, N05, D13: one throttle where jobs are claimed (concurrency, rate, routine first)."""

from __future__ import annotations

from collections import Counter

from headend.adcs import ondemand
from headend.config import Config
from headend.context import Ctx
from headend.reports import run
from headend.store import Channel, ChannelKind, Meter, SqlStore, Unit
from headend.store.jobs import AD_HOC, ROUTINE
from headend.store.records import JobState, ReadSpec
from hil.fleet_profile import MeterPlan, Outage
from tests.headend.conftest import open_at
from tests.headend.test_d02_d08_recovery import T0, D, lose
from tests.support.direct import DAY, Direct, never, worker


def test_h08_d02_d03_two_workers_one_database_each_check_and_each_read_once(
    backend: str, store_at: list[SqlStore]
) -> None:
    a = worker(open_at(backend, store_at), worker="w1")
    b = worker(open_at(backend, store_at), worker="w2")
    plans = [
        MeterPlan(1001),
        MeterPlan(1002, "offline", outages=(Outage(D + DAY, D + 2 * DAY),)),
        MeterPlan(1006, "offline", outages=never(D + DAY)),
        MeterPlan(1007),
    ]
    x = Direct([a, b], plans, T0 + 12 * 3600, step_s=900)
    x.run_until(D + 2 * DAY + 5 * 3600)
    lose(a, {1007: (0, 1)})
    x.run_until(D + 4 * DAY + 12 * 3600)
    ctx = a.ctx
    checks = ctx.missing.checks()
    assert [(c.day - T0) // DAY for c in checks] == [-1, 0, 1, 2, 3, 4]
    assert {c.worker for c in checks} == {"w1", "w2"}  # shared, each day once
    done = [x.detail.split(":")[0] for x in ctx.activity.lines(kinds=["daily_check"])]
    assert len(done) == len(set(done)) == 6
    # each attempt of each gap is one job, claimed by one worker; both workers worked
    jobs = [j for j in ctx.jobs.newest(limit=1000) if j.requester == "recovery"]
    attempts = Counter((j.spec.meter_id, j.spec.start, j.spec.end) for j in jobs)
    rows = ctx.missing.rows()
    assert sum(attempts.values()) == sum(r.attempts for r in rows)  # one day per read here
    assert max(attempts.values()) == 3
    assert {j.worker for j in jobs} == {"w1", "w2"}
    assert all(j.state in (JobState.DONE, JobState.FAILED) for j in jobs)
    t = run(ctx, "recovery", x.now * 1000)
    assert t.rows == [
        (1002, 1, 0, 1, 0, 0, 0, 1, 3, "fully"),
        (1006, 4, 0, 0, 0, 4, 0, 1, 12, "unsuccessful"),
        (1007, 2, 2, 0, 0, 0, 0, 1, 0, "fully"),
    ]
    lines = [(x.meter_id, x.kind) for x in ctx.activity.lines(kinds=["missing_found"])]
    assert Counter(lines) == Counter(
        {(1002, "missing_found"): 1, (1006, "missing_found"): 4, (1007, "missing_found"): 1}
    )


def _ctx(store: SqlStore, **cfg: int) -> Ctx:
    ch = (Channel(ChannelKind.ACTIVE_IMPORT, Unit.WH),)
    for mid in range(1, 47):
        store.register_meter(Meter(mid, "1", 900, 0, 1, ch, T0, transport="mqtt"))
    return Ctx.build(Config(**cfg), store)  # type: ignore[arg-type]


def test_h09_n05_d13_throttle_limits_reads_in_flight_and_per_second_routine_first(
    sqlite_url: str, store_at: list[SqlStore]
) -> None:
    ctx = _ctx(open_at(sqlite_url, store_at), read_max_in_flight=10, read_rate_per_s=4)
    routine = [
        ondemand.request_read(ctx, ReadSpec(m), "recovery", T0, priority=ROUTINE)
        for m in range(1, 41)
    ]
    ad_hoc = [ondemand.request_read(ctx, ReadSpec(m), "cli", T0) for m in range(41, 47)]
    assert {ctx.jobs.get(j).priority for j in ad_hoc} == {AD_HOC}

    def start(at_s: float) -> list[int]:
        out = ondemand.start_jobs(ctx, int(at_s * 1000))
        assert len(ctx.jobs.newest([JobState.SENT])) <= 10  # never more in flight
        return sorted(d.meter_id for d in out.downlinks)

    t = T0 + 3600
    # 4 a second: 3 routine, and one place kept for the ad hoc work waiting
    assert start(t) == [1, 2, 3, 41]
    assert start(t + 0.5) == []  # the second's 4 are out
    assert start(t + 1) == [4, 5, 6, 42]
    assert start(t + 2) == [7, 43]  # 10 in flight: the limit
    assert start(t + 3) == []
    for j in ctx.jobs.newest([JobState.SENT])[:5]:
        ctx.jobs.fail(j.job_id, (t + 3) * 1000, "test")
    assert start(t + 4) == [8, 9, 10, 44]
    assert start(t + 5) == [11]
    # the ad hoc jobs all ran before the routine queue emptied: not starved
    assert {ctx.jobs.get(j).state for j in ad_hoc[:4]} == {JobState.SENT, JobState.FAILED}
    assert ctx.jobs.get(routine[-1]).state is JobState.QUEUED
