"""D07 non-default schedules on the real Core and store (both backends): a meter on an
hourly schedule (signed frames, its answers chosen by the test) misses a read; the
head-end finds it within 2 read intervals, queues recovery reads 10 minutes apart, 3
times, and re-sends a schedule the meter never acknowledged."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from headend.adcs import scheduling
from headend.config import Config
from headend.context import Ctx
from headend.core import Core
from headend.outbox import Outbox
from headend.store import Source, SqlStore
from headend.store.lifecycles import GapState, ScheduleState
from headend.store.records import ScheduleSpec
from protocol.codes import ReadMode
from tests.headend.conftest import open_at
from tests.support.service import T0
from tests.support.signed import SimMeter, deliver, frames_to

MID = 501
NOON = T0 + 12 * 3600  # 2024-04-01 12:00 UTC
H = 3600


def _clock(t: int) -> str:
    h, m = divmod((t - T0) // 60, 60)
    return f"2024-04-01 {h:02d}:{m:02d}:00"


def _setup(url: str, opened: list[SqlStore], offset_s: int, ack: bool) -> tuple[Core, SimMeter]:
    ctx = Ctx.build(Config(), open_at(url, opened))
    core = Core(ctx)
    m = SimMeter(MID)
    deliver(core, MID, m.frame("register", m.register_body()), T0 * 1000)
    spec = ScheduleSpec(MID, 1, period_s=H, offset_s=offset_s)
    scheduling.set_schedule(ctx, spec, "party:p1", NOON * 1000)
    (frame,) = frames_to(core.tick(NOON * 1000), MID)
    sset = m.take(frame)
    assert sset is not None and sset["type"] == "schedule_set"
    if ack:
        body = {"acked_seq": sset["seq"], "status": 0}
        deliver(core, MID, m.frame("schedule_ack", body, NOON + 5), (NOON + 5) * 1000)
    return core, m


def _read(m: SimMeter, start: int, end: int, kind: int = 0, seq: int = 0) -> bytes:
    n = (end - start) // 900
    block = {"start": start, "interval_s": 900, "flags": [0] * n, "channels": [[1] * n] * 2}
    body: dict[str, Any] = {"request_seq": seq, "kind": kind, "part": 1, "parts": 1}
    body["sections"] = [{"tag": "intervals", "body": block}]
    return m.frame("read_response", body, end)


def _run(
    core: Core, start: int, end: int, meter: Callable[[int, Outbox], None] = lambda t, o: None
) -> None:
    """Tick every minute of [start, end); ``meter`` sees each tick's frames."""
    for t in range(start, end, 60):
        meter(t, core.tick(t * 1000))


def test_d07_missing_read_found_within_2_intervals_3_recovery_reads_10_min_apart(
    backend: str, store_at: list[SqlStore]
) -> None:
    core, m = _setup(backend, store_at, 0, ack=True)
    ctx = core.ctx

    def meter(t: int, out: Outbox) -> None:
        if t == NOON + H:  # the 13:00 read comes; the 14:00 one never does
            deliver(core, MID, _read(m, NOON, NOON + H), (t + 30) * 1000)

    _run(core, NOON + 60, NOON + 4 * H + 5 * 60, meter)
    (gap,) = ctx.gaps.find()
    due = NOON + 2 * H
    assert (gap.due_s, gap.start_s, gap.state, gap.attempts) == (
        due,
        NOON + H,
        GapState.FAILED,
        3,
    )
    assert gap.detected_ms - due * 1000 <= 2 * H * 1000  # within 2 read intervals
    found = due + H + H // 2  # the meter's own catch-up at 15:00 had 30 minutes
    assert (gap.detected_ms, gap.closed_ms) == (found * 1000, (found + 1800) * 1000)
    jobs = sorted((j for j in ctx.jobs.newest() if j.requester == "d07"), key=lambda j: j.job_id)
    assert [j.job_id for j in jobs] == list(gap.jobs)
    assert [j.created_ms // 1000 - found for j in jobs] == [0, 600, 1200]  # 10 minutes apart
    assert {(j.spec.mode, j.spec.start, j.spec.end, j.spec.source) for j in jobs} == {
        (ReadMode.PERIOD, NOON + H, due, Source.RECOVERY)
    }
    j1, j2, j3 = gap.jobs
    log = ctx.activity.lines(
        MID, kinds=["offschedule_missing", "offschedule_recovered", "offschedule_failed"]
    )
    what = f"slot 1 read due {_clock(due)}"
    assert [(a.at_ms // 1000 - found, a.kind, a.detail) for a in log] == [
        (
            0,
            "offschedule_missing",
            f"{what} (every 3600 s) missing: 0 of 4 intervals of [{_clock(NOON + H)}, "
            f"{_clock(due)}) found 5400 s after it was due; schedule acknowledged by the "
            f"meter; recovery read job {j1} (attempt 1 of 3)",
        ),
        (
            600,
            "offschedule_missing",
            f"{what}: still 0 of 4 intervals; recovery read job {j2} (attempt 2 of 3)",
        ),
        (
            1200,
            "offschedule_missing",
            f"{what}: still 0 of 4 intervals; recovery read job {j3} (attempt 3 of 3)",
        ),
        (
            1800,
            "offschedule_failed",
            f"{what}: still 0 of 4 intervals after 3 recovery read(s) (jobs {j1}, {j2}, {j3}): "
            "unsuccessful",
        ),
    ]


def test_d07_second_recovery_read_answered_closes_the_gap(
    backend: str, store_at: list[SqlStore]
) -> None:
    core, m = _setup(backend, store_at, 0, ack=True)
    ctx = core.ctx
    asked: list[int] = []
    due = NOON + 2 * H
    found = due + H + H // 2

    def meter(t: int, out: Outbox) -> None:
        if t == NOON + H:
            deliver(core, MID, _read(m, NOON, NOON + H), (t + 30) * 1000)
        for raw in frames_to(out, MID):
            f = m.take(raw)
            if f is None or f["type"] != "read_request":
                continue
            asked.append(t)
            if t == found + 600:  # the first job (sent, retried: H06) goes unanswered
                b = f["body"]
                ans = _read(m, b["start"], b["end"], kind=2, seq=f["seq"])
                deliver(core, MID, ans, (t + 20) * 1000)

    _run(core, NOON + 60, NOON + 3 * H + 50 * 60, meter)
    (gap,) = ctx.gaps.find()
    assert (gap.state, gap.attempts, gap.closed_ms) == (
        GapState.RECOVERED,
        2,
        (found + 600 + 60) * 1000,
    )
    assert asked == [found, found + 240, found + 600]
    (line,) = ctx.activity.lines(MID, kinds=["offschedule_recovered"])
    j1, j2 = gap.jobs
    assert line.detail == (
        f"slot 1 read due {_clock(due)}: all 4 intervals in after 2 recovery read(s) "
        f"(jobs {j1}, {j2})"
    )
    assert [i.source for i in ctx.readings.intervals(MID, 0, NOON + H, due)] == [
        Source.RECOVERY
    ] * 4


def test_d07_schedule_not_acknowledged_is_verified_and_resent(
    backend: str, store_at: list[SqlStore]
) -> None:
    core, m = _setup(backend, store_at, 1800, ack=False)  # reads due at hh:30
    ctx = core.ctx
    sent: list[tuple[int, int]] = []

    def meter(t: int, out: Outbox) -> None:
        for raw in frames_to(out, MID):
            f = m.take(raw)
            if f is not None and f["type"] == "schedule_set":
                sent.append((t - NOON, f["seq"]))

    _run(core, NOON + 60, NOON + 31 * 60, meter)
    # 12:15 the ack timeout (H02) re-sends it; 12:30 its first read falls due: D07
    assert [t for t, _ in sent] == [900, 1800]
    (line,) = ctx.activity.lines(MID, kinds=["schedule_verify"])
    assert (line.at_ms, line.detail) == (
        (NOON + 1800) * 1000,
        f"slot 1 (every 3600 s): its read due {_clock(NOON + 1800)} passed and the meter has "
        "not acknowledged the schedule (state flagged, 2 send(s)): not set in the meter, "
        "re-sent",
    )
    (sched,) = [s for s in ctx.schedules.find(MID) if s.spec.slot == 1]
    assert (sched.state, sched.attempts) == (ScheduleState.FLAGGED, 3)
    # the meter takes the last one: acknowledged, nothing more to verify
    body = {"acked_seq": sent[-1][1], "status": 0}
    deliver(core, MID, m.frame("schedule_ack", body, NOON + 1900), (NOON + 1900) * 1000)
    _run(core, NOON + 1920, NOON + 2 * H + 1860)
    assert len(ctx.activity.lines(MID, kinds=["schedule_verify"])) == 1
    (sched,) = [s for s in ctx.schedules.find(MID) if s.spec.slot == 1]
    assert sched.state is ScheduleState.ACKED


def test_d07_the_meters_own_catch_up_at_the_next_read_opens_no_gap(
    sqlite_url: str, store_at: list[SqlStore]
) -> None:
    core, m = _setup(sqlite_url, store_at, 0, ack=True)

    def meter(t: int, out: Outbox) -> None:
        if t == NOON + H:
            deliver(core, MID, _read(m, NOON, NOON + H), (t + 30) * 1000)
        if t == NOON + 3 * H + 600:  # 14:00 failed; 15:00 sends since 13:00, 10 minutes late
            deliver(core, MID, _read(m, NOON + H, NOON + 3 * H), (t + 30) * 1000)

    _run(core, NOON + 60, NOON + 4 * H, meter)
    assert core.ctx.gaps.find() == []
    assert not [j for j in core.ctx.jobs.newest() if j.requester == "d07"]
