"""Two `headend serve` worker processes on PostgreSQL share a broker under load; one is
killed with SIGKILL mid-run (H08, N01, H02, H06, D02).

A fleet of simulated meters sends several days of reads each (repeated until
acknowledged, as meters do), while the store holds work for the workers: an
on-demand read per meter (half of the meters ignore the first request: a
retry), a schedule push per meter, and the daily check coming due. Afterwards
the store must hold every interval sent exactly once, every job done once,
every schedule acknowledged, and the day's check done by one worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

import pytest

from headend.adcs import recovery, scheduling
from headend.clock import Clock
from headend.config import Config
from headend.context import Ctx
from headend.store import SqlStore
from headend.store.lifecycles import JobState, ScheduleState
from headend.store.records import ReadSpec, ScheduleSpec
from hil.wait import WaitTimeout, wait_until, wait_until_sync
from tests.headend.conftest import open_at
from tests.support.broker import Broker
from tests.support.cli import ROOT
from tests.support.db import PgSchema
from tests.support.fakemeter import DAY, FakeMeter, MqttLink

T0 = 1_711_929_600  # 2024-04-01 00:00 UTC
SPEED = 60.0  # one simulated minute a second
METERS = 16
DAYS = 4  # reads per meter: the days before T0


def _toml(path: Path, **kw: object) -> Path:
    lines = ["[headend]"] + [f"{k} = {json.dumps(v)}" for k, v in kw.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def _worker(cfg: Path, name: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as err:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "headend",
                "serve",
                "--config",
                str(cfg),
                "--worker",
                name,
                "--dev",
            ],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )


def _subscribed(log: Path) -> Callable[[], bool]:
    return lambda: "subscribed as" in log.read_text()


@pytest.mark.req("H08", "N01", "H02", "H06", "D02")
@pytest.mark.timeout(90)
def test_h08_kill_one_of_two_pg_workers_under_load_nothing_lost_doubled_or_run_twice(
    mqtt_broker: Broker, pg_schema: PgSchema, store_at: list[SqlStore], tmp_path: Path
) -> None:
    dsn, schema = pg_schema
    url = f"{dsn}?options={quote(f'-c search_path={schema}')}"
    store = open_at(url, store_at)  # migrated before the workers start
    start = T0 + 6 * 3600 - 30  # the daily check (06:00) is due 0.5 s into the run
    anchor = time.time() + 1.0
    cfg = _toml(
        tmp_path / "headend.toml",
        broker=mqtt_broker.url,
        insecure=True,
        database=url,
        share_group=f"k{int(anchor * 1000) % 10**9}",
        session_expiry_s=1,  # a dead worker's share goes back to the group at once
        speed=SPEED,
        clock_start=start,
        clock_anchor=anchor,
        poll_s=0.05,
        lease_s=60,  # one second of wall time
        ondemand_timeout_s=240,  # four seconds: an answer under load is slow
        # a request the killed worker committed but never published counts as an attempt
        ondemand_retries=2,
        schedule_ack_timeout_s=60,
        read_rate_per_s=1000,
        daily_check_at="06:00",
    )
    logs = [tmp_path / f"w{i}.log" for i in (1, 2)]
    procs = [_worker(cfg, f"w{i}", logs[i - 1]) for i in (1, 2)]
    try:
        for log in logs:
            wait_until_sync(_subscribed(log), 20, f"{log.name} ready")
        clock = Clock(SPEED, float(start), anchor)
        asyncio.run(_load(mqtt_broker, clock, store, procs[1]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(10)
            if p.poll() is None:
                p.kill()
                p.wait(10)
    assert procs[1].returncode == -9  # it was killed, not stopped
    assert "registered via mqtt" in logs[1].read_text()  # after its share of the load
    ctx = Ctx.build(Config(), store)
    ids = range(1, METERS + 1)
    # 0 lost, 0 doubled: every interval of every day sent, once (4 channels, 96 each)
    for mid in ids:
        for d in range(1, DAYS + 1):
            day = T0 - d * DAY
            assert len(store.intervals(mid, 0, day, day + DAY)) == 96, (mid, d)
    assert store.stats(T0 - DAYS * DAY, T0).intervals == METERS * DAYS * 96
    # every job finished once: done, with one request (two where the first was ignored)
    jobs = ctx.jobs.newest(limit=1000)
    assert len(jobs) == METERS and {j.state for j in jobs} == {JobState.DONE}
    # (a request or answer lost with the killed worker, or with a batch rolled back on a
    # deadlock between the workers, costs a retry: more attempts, still one completion)
    for j in jobs:
        assert j.attempts >= (2 if j.spec.meter_id % 2 else 1), j
    done = ctx.activity.lines(kinds=["read_done"], limit=10_000)
    assert sorted(int(x.ref or 0) for x in done) == sorted(j.job_id for j in jobs)
    # every schedule push acknowledged; a re-send only where its first send was lost
    scheds = ctx.schedules.find(states=[ScheduleState.ACKED])
    assert sorted(s.spec.meter_id for s in scheds if s.spec.slot == 1) == list(ids)
    # the day's check: one run, one line, by one of the workers
    day, _ = recovery.check_due(ctx.config, (start + 60) * 1000)
    runs = [r for r in ctx.timed.runs(recovery.CHECK) if r[0] == day]
    assert len(runs) == 1 and runs[0][3] is not None and runs[0][1] in ("w1", "w2")
    assert len(ctx.activity.lines(kinds=["daily_check"])) == 1
    assert "Traceback" not in logs[0].read_text()


async def _load(
    broker: Broker, clock: Clock, store: SqlStore, victim: subprocess.Popen[bytes]
) -> None:
    ids = range(1, METERS + 1)
    meters = [
        FakeMeter(i, MqttLink(broker.host, broker.port, i), clock, ignore_reads=i % 2) for i in ids
    ]
    ctx = Ctx.build(Config(), store)
    try:
        for m in meters:
            await m.start()
        await asyncio.gather(*(m.register() for m in meters))
        now_ms = clock.now_ms()
        for i in ids:  # work for the workers, in the store
            ctx.jobs.enqueue(ReadSpec(i), "test", now_ms)
            scheduling.set_schedule(ctx, ScheduleSpec(i, 1, period_s=3600), "test", now_ms)
        acked = 0

        async def reads(m: FakeMeter) -> None:
            nonlocal acked
            for d in range(DAYS, 0, -1):
                await m.daily_read(T0 - d * DAY)
                acked += 1

        load = asyncio.gather(*(reads(m) for m in meters))
        await wait_until(lambda: acked >= METERS * DAYS // 3, 20, "a third of the reads acked")
        victim.kill()  # SIGKILL mid-run: no clean shutdown, no goodbye to the broker
        await asyncio.wait_for(load, 40)

        def finished() -> bool:
            jobs = ctx.jobs.newest(limit=1000)
            scheds = ctx.schedules.find(states=[ScheduleState.ACKED])
            return (
                len(jobs) == METERS
                and all(j.state is JobState.DONE for j in jobs)
                and len([s for s in scheds if s.spec.slot == 1]) == METERS
                and ctx.timed.finished(
                    recovery.CHECK, recovery.check_due(ctx.config, clock.now_ms())[0]
                )
            )

        try:
            await wait_until(finished, 30, "every job, schedule push and the check finished")
        except WaitTimeout as e:
            jobs = [(j.job_id, j.state.value, j.worker, j.attempts) for j in ctx.jobs.newest()]
            raise AssertionError(
                f"{e}: {jobs} "
                f"{[(s.spec.meter_id, s.state.value) for s in ctx.schedules.find()]} "
                f"{ctx.timed.runs(recovery.CHECK)}"
            ) from None
    finally:
        for m in meters:
            await m.stop()
