"""Non-default schedules (D07, A9): missed reads found, recovered, schedules verified.

Every minute (``check``): for each acknowledged non-default schedule, the
reads that were due between its ack and 1.5 read intervals ago are checked
against the store: the intervals of the period before each due time must all
be there. The half interval past the next occurrence leaves the meter its own
catch-up (after a failed read it sends everything since the last good one at
the next occurrence, A9), so a missing read is found between 1.5 read
intervals and 1.5 intervals plus the minute of the check after it was due:
within 2 intervals. It is logged and recovered by reads queued through
`ondemand.request_read` (requester ``d07``, source recovery) every
``offschedule_retry_s``, at most ``offschedule_attempts`` times; it closes as
recovered when the data is in (by a recovery read or the meter's next read)
or failed after the last one.
A schedule the meter has not acknowledged when a read by it falls due after
its last send is re-sent then and logged (the meter cannot be reading by it).
A schedule the meter refused (nacked) is left as it is: the nack was logged
with its reason.
"""

from __future__ import annotations

from datetime import UTC, datetime

from headend.adcs import ondemand, scheduling
from headend.context import Ctx
from headend.outbox import Outbox
from headend.store import Meter, Source
from headend.store.activity import Kind
from headend.store.jobs import ROUTINE
from headend.store.lifecycles import GapEvent, GapState, ScheduleState
from headend.store.offschedules import Gap
from headend.store.records import ReadSpec, Schedule, ScheduleSpec
from protocol.codes import ReadMode, What

REQUESTER = "d07"
CHECK_EVERY_MS = 60_000
#: due times looked back at per check (beyond the grace)
LOOK_BACK = 4
_UNANSWERED = (ScheduleState.SENT, ScheduleState.FLAGGED)


def next_due(spec: ScheduleSpec, after: int, utc_offset_s: int) -> int | None:
    """First occurrence strictly after ``after`` (the meter's rule: t >= start, t < end,
    (t + utc offset - offset) divisible by the period), or None (ended)."""
    t = max(after + 1, spec.start)
    r = (t + utc_offset_s - spec.offset_s) % spec.period_s
    if r:
        t += spec.period_s - r
    if spec.end and t >= spec.end:
        return None
    return t


def due_times(spec: ScheduleSpec, utc_offset_s: int, after: int, upto: int) -> list[int]:
    """Occurrences in (after, upto]."""
    out: list[int] = []
    t = next_due(spec, after, utc_offset_s)
    while t is not None and t <= upto:
        out.append(t)
        t = next_due(spec, t, utc_offset_s)
    return out


def _clock(t: int) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _have(ctx: Ctx, meter: Meter, start: int, end: int) -> tuple[int, int]:
    """(intervals present, intervals expected) of [start, end)."""
    got = len(ctx.readings.intervals(meter.meter_id, 0, start, end))
    return got, (end - start) // meter.interval_s


def check(ctx: Ctx, now_ms: int) -> Outbox:
    """Detect missed reads, follow the open gaps, verify unacknowledged schedules."""
    out = Outbox()
    now_s = now_ms // 1000
    for sched in ctx.schedules.non_default():
        if sched.state is ScheduleState.ACKED and sched.acked_ms is not None:
            if sched.spec.what & What.INTERVALS:  # a registers-only slot leaves no gap
                _detect(ctx, sched, sched.acked_ms, now_ms)
        elif sched.state in _UNANSWERED and sched.sent_ms is not None:
            meter = ctx.registry.get(sched.spec.meter_id)
            due = next_due(sched.spec, sched.sent_ms // 1000, meter.utc_offset_min * 60)
            if due is not None and due <= now_s:
                _verify(ctx, sched, due, now_ms, out)
    for gap in ctx.gaps.find(GapState.OPEN):
        _follow(ctx, gap, now_ms)
    return out


def _detect(ctx: Ctx, sched: Schedule, acked_ms: int, now_ms: int) -> None:
    spec = sched.spec
    p = spec.period_s
    now_s = now_ms // 1000
    meter = ctx.registry.get(spec.meter_id)
    grace = p + p // 2
    after = max(acked_ms // 1000, now_s - grace - LOOK_BACK * p)
    for due in due_times(spec, meter.utc_offset_min * 60, after, now_s - grace):
        if ctx.gaps.known(spec.meter_id, spec.slot, due):
            continue
        have, want = _have(ctx, meter, due - p, due)
        if have >= want:
            continue
        with ctx.db.transaction():
            gap = Gap(spec.meter_id, spec.slot, due, due - p, GapState.OPEN, now_ms, 0, 0, (), None)
            if not ctx.gaps.detect(gap):
                continue  # another worker found it
            job = _recover(ctx, gap, now_ms)
            ctx.activity.log(
                now_ms,
                Kind.OFFSCHEDULE_MISSING,
                f"slot {spec.slot} read due {_clock(due)} (every {p} s) missing: {have} of "
                f"{want} intervals of [{_clock(due - p)}, {_clock(due)}) found {now_s - due} s "
                f"after it was due; schedule acknowledged by the meter; recovery read job "
                f"{job} (attempt 1 of {ctx.config.offschedule_attempts})",
                spec.meter_id,
                str(job),
            )


def _recover(ctx: Ctx, gap: Gap, now_ms: int) -> int:
    spec = ReadSpec(gap.meter_id, ReadMode.PERIOD, gap.start_s, gap.due_s, source=Source.RECOVERY)
    job = ondemand.request_read(ctx, spec, REQUESTER, now_ms, priority=ROUTINE)
    ctx.gaps.retry(gap, job, now_ms + ctx.config.offschedule_retry_s * 1000)
    return job


def _follow(ctx: Ctx, gap: Gap, now_ms: int) -> None:
    meter = ctx.registry.get(gap.meter_id)
    have, want = _have(ctx, meter, gap.start_s, gap.due_s)
    what = f"slot {gap.slot} read due {_clock(gap.due_s)}"
    limit = ctx.config.offschedule_attempts
    with ctx.db.transaction():
        if have >= want:
            ctx.gaps.close(gap, GapEvent.RECOVER, now_ms)
            ctx.activity.log(
                now_ms,
                Kind.OFFSCHEDULE_RECOVERED,
                f"{what}: all {want} intervals in after {gap.attempts} recovery read(s) "
                f"(jobs {', '.join(map(str, gap.jobs))})",
                gap.meter_id,
            )
        elif now_ms < gap.next_ms:
            return
        elif gap.attempts < limit:
            job = _recover(ctx, gap, now_ms)
            ctx.activity.log(
                now_ms,
                Kind.OFFSCHEDULE_MISSING,
                f"{what}: still {have} of {want} intervals; recovery read job {job} "
                f"(attempt {gap.attempts + 1} of {limit})",
                gap.meter_id,
                str(job),
            )
        else:
            ctx.gaps.close(gap, GapEvent.FAIL, now_ms)
            ctx.activity.log(
                now_ms,
                Kind.OFFSCHEDULE_FAILED,
                f"{what}: still {have} of {want} intervals after {gap.attempts} recovery "
                f"read(s) (jobs {', '.join(map(str, gap.jobs))}): unsuccessful",
                gap.meter_id,
            )


def _verify(ctx: Ctx, sched: Schedule, due: int, now_ms: int, out: Outbox) -> None:
    ctx.activity.log(
        now_ms,
        Kind.SCHEDULE_VERIFY,
        f"slot {sched.spec.slot} (every {sched.spec.period_s} s): its read due {_clock(due)} "
        f"passed and the meter has not acknowledged the schedule (state {sched.state}, "
        f"{sched.attempts} send(s)): not set in the meter, re-sent",
        sched.spec.meter_id,
    )
    out.extend(scheduling.resend(ctx, sched, now_ms))
