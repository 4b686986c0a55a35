"""Schedules: evening placement into read groups (H01), acks (H02), non-default (H07).

Every schedule change is written as a *pending* row with its source (the
system or the party that asked), so the CLI in another process and the
service share one path: the service sends pending rows (`send_pending`),
records the meter's answer (`on_answer`), and flags and re-sends a schedule
whose ack is missing after ``schedule_ack_timeout_s`` (`check_acks`).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from headend.adcs.groups import place
from headend.config import Config, parse_hhmm
from headend.context import Ctx
from headend.errors import IllegalTransition, InvalidData
from headend.outbox import Outbox
from headend.store import Meter
from headend.store.activity import Kind
from headend.store.base import DAY_S
from headend.store.lifecycles import SCHEDULE, ScheduleEvent
from headend.store.records import Schedule, ScheduleSpec
from headend.timetext import parse_clock, parse_duration
from protocol.codes import SCHEDULE_TRANSIENT_NACKS, nack_name

ASSIGNMENT = "system:evening-assignment"


def check_spec(spec: ScheduleSpec, meter: Meter) -> None:
    """H07: a non-default schedule reads more than once a day, never more often
    than the meter records. Raises InvalidData."""
    if spec.slot == 0 or spec.cancel:
        return
    if spec.period_s < meter.interval_s:
        raise InvalidData(
            f"period {spec.period_s} s is shorter than meter {meter.meter_id}'s "
            f"{meter.interval_s} s interval: never read more often than it records"
        )
    if spec.period_s >= DAY_S:
        raise InvalidData(
            f"period {spec.period_s} s: a non-default schedule reads more than once a day "
            f"(period < 86400 s); the daily read is slot 0"
        )


def spec_of(
    meter_id: int, slot: int, every: str, at: str, start: int, end: int, what: int
) -> ScheduleSpec:
    """The slot ``headend schedule set`` and ``POST /api/v1/schedules`` describe: ``every``
    a duration (900, 15m, 1h), ``at`` HH:MM from local midnight or a duration into the
    period, start and end UTC s (0: now, ongoing). Raises InvalidData."""
    offset = parse_clock(at) if ":" in at else parse_duration(at)
    return ScheduleSpec(meter_id, slot, parse_duration(every), offset, start, end, what)


def describe(spec: ScheduleSpec) -> str:
    if spec.cancel:
        return f"slot {spec.slot}: cancel"
    until = f"until {spec.end}" if spec.end else "ongoing"
    start = f" from {spec.start}" if spec.start else ""
    return (
        f"slot {spec.slot}: every {spec.period_s} s at +{spec.offset_s} s{start}, {until}, "
        f"what {spec.what}"
    )


def set_schedule(ctx: Ctx, spec: ScheduleSpec, source: str, now_ms: int) -> None:
    """Set, update or cancel a schedule (sent by the service). Logged with its source.

    Raises:
        UnknownMeter, InvalidData: nothing is written.
    """
    meter = ctx.registry.get(spec.meter_id)
    check_spec(spec, meter)
    with ctx.db.transaction():
        ctx.schedules.put(spec, source, now_ms)
        ctx.activity.log(
            now_ms, Kind.SCHEDULE_SET, f"{describe(spec)}; source {source}", spec.meter_id
        )


def cancel_schedule(ctx: Ctx, meter_id: int, slot: int, source: str, now_ms: int) -> None:
    """Cancel a non-default slot (slot 0, the daily read, cannot be cancelled).

    Raises:
        UnknownMeter, InvalidData (also: the slot was never set): nothing is written.
    """
    spec = ScheduleSpec(meter_id, slot, cancel=True)
    with ctx.db.transaction():
        ctx.registry.get(meter_id)
        if not any(s.spec.slot == slot for s in ctx.schedules.find(meter_id)):
            raise InvalidData(f"meter {meter_id} has no schedule in slot {slot}: nothing to cancel")
        set_schedule(ctx, spec, source, now_ms)


def next_assignment(config: Config, after_ms: int) -> int:
    """UTC ms of the next evening assignment (``assign_at`` in ``report_tz``) after ``after_ms``."""
    tz = config.tz
    at = parse_hhmm("assign_at", config.assign_at)
    local = datetime.fromtimestamp(after_ms / 1000, tz)
    for days in range(0, 3):
        day = (local + timedelta(days=days)).date()
        t = datetime.combine(day, at, tz)
        ms = int(t.timestamp() * 1000)
        if ms > after_ms:
            return ms
    raise InvalidData(f"no assignment time after {after_ms}")  # unreachable: a day has one


def assign(ctx: Ctx, now_ms: int) -> dict[int, int]:
    """Place every unscheduled meter in the least-loaded read group and queue its
    default schedule (slot 0, daily, at the group's read offset). Returns meter -> group.

    Meters that find every group full stay unscheduled until the next evening.
    """
    with ctx.db.transaction():
        waiting = ctx.registry.unscheduled()
        placed = place(ctx.window, ctx.registry.group_loads(), waiting)
        for mid, grp in placed.items():
            offset = ctx.window.read_offset(grp, mid)
            ctx.registry.set_group(mid, grp, offset, ctx.window.label(grp), now_ms)
            ctx.schedules.put(ScheduleSpec(mid, 0, offset_s=offset), ASSIGNMENT, now_ms)
            ctx.activity.log(
                now_ms,
                Kind.GROUP_ASSIGNED,
                f"read group {ctx.window.label(grp)} (#{grp}), daily read at "
                f"{offset // 3600:02d}:{offset // 60 % 60:02d}:{offset % 60:02d} local standard "
                f"time; source {ASSIGNMENT}",
                mid,
            )
        for mid in sorted(set(waiting) - placed.keys()):
            ctx.activity.log(
                now_ms, Kind.GROUP_ASSIGNED, "every read group is full: stays unscheduled", mid
            )
    return placed


def _send(ctx: Ctx, sched: Schedule, now_ms: int, event: ScheduleEvent, out: Outbox) -> None:
    spec = sched.spec
    meter = ctx.registry.get(spec.meter_id)
    seq, frame = ctx.downlinks.frame(
        spec.meter_id, "schedule_set", {"slots": [spec.wire()]}, now_ms
    )
    try:
        ctx.schedules.sent(spec.meter_id, spec.slot, seq, now_ms, event)
    except IllegalTransition:
        return  # rewritten, answered or sent by another worker meanwhile
    n = sched.attempts + 1
    if event is ScheduleEvent.RESEND:
        waited = (now_ms - (sched.sent_ms or now_ms)) // 1000
        ctx.activity.log(
            now_ms,
            Kind.SCHEDULE_ACK_MISSING,
            f"{describe(spec)}: no ack {waited} s after the send (seqs "
            f"{', '.join(map(str, sched.seqs))}); flagged, re-sent as seq {seq} (attempt {n})",
            spec.meter_id,
        )
    else:
        ctx.activity.log(
            now_ms,
            Kind.SCHEDULE_SENT,
            f"{describe(spec)} sent as seq {seq} via {meter.transport or 'mqtt'}; "
            f"source {sched.source}",
            spec.meter_id,
        )
    out.send(spec.meter_id, frame, meter.transport)


def send_pending(ctx: Ctx, now_ms: int, limit: int = 1000) -> Outbox:
    """Send every pending schedule (one schedule_set per slot)."""
    out = Outbox()
    with ctx.db.transaction():  # one commit for them all (an evening assignment: thousands)
        # rows locked by a worker sending them are passed over (PostgreSQL): nothing twice
        pending = SCHEDULE.allowed(ScheduleEvent.SEND)
        for sched in ctx.schedules.find(states=pending, limit=limit, claim=True):
            _send(ctx, sched, now_ms, ScheduleEvent.SEND, out)
    return out


def check_acks(ctx: Ctx, now_ms: int) -> Outbox:
    """H02: a schedule without ack after the timeout is flagged, logged and re-sent."""
    out = Outbox()
    due = now_ms - ctx.config.schedule_ack_timeout_s * 1000
    with ctx.db.transaction():  # one commit for them all
        for sched in ctx.schedules.find(
            states=SCHEDULE.allowed(ScheduleEvent.RESEND), sent_by_ms=due, claim=True
        ):
            _send(ctx, sched, now_ms, ScheduleEvent.RESEND, out)
    return out


def resend(ctx: Ctx, sched: Schedule, now_ms: int) -> Outbox:
    """Re-send a schedule that is out without an answer now (flagged), not at the timeout."""
    out = Outbox()
    with ctx.db.transaction():
        _send(ctx, sched, now_ms, ScheduleEvent.RESEND, out)
    return out


def answer_event(status: int, cancel: bool) -> ScheduleEvent:
    """The lifecycle event of a meter's answer (status 0 = ack, else a nack reason)."""
    if not status:
        return ScheduleEvent.ACK_CANCEL if cancel else ScheduleEvent.ACK
    if status in SCHEDULE_TRANSIENT_NACKS:
        return ScheduleEvent.BUSY  # nothing wrong with the schedule: re-sent after the timeout
    return ScheduleEvent.NACK


def on_answer(ctx: Ctx, meter_id: int, seq: int, status: int, now_ms: int) -> None:
    """Record a schedule_ack (status 0) or a nack of a schedule_set, and log it."""
    sched = ctx.schedules.awaiting(meter_id, seq)
    if sched is not None:
        event = answer_event(status, sched.spec.cancel)
        ctx.schedules.answer(meter_id, sched.spec.slot, event, now_ms, status or None)
    if sched is None:
        ctx.activity.log(
            now_ms,
            Kind.REJECTED,
            f"schedule answer (status {status}) for seq {seq} matches no open schedule: ignored",
            meter_id,
        )
        return
    waited = (now_ms - (sched.sent_ms or now_ms)) / 1000
    if status:
        again = event is ScheduleEvent.BUSY
        ctx.activity.log(
            now_ms,
            Kind.SCHEDULE_NACK,
            f"{describe(sched.spec)} refused by the meter: {nack_name(status)} "
            f"(seq {seq}, {waited:.1f} s after the send); source {sched.source}"
            + ("; re-sent after the ack timeout" if again else ""),
            meter_id,
        )
    else:
        ctx.activity.log(
            now_ms,
            Kind.SCHEDULE_ACK,
            f"{describe(sched.spec)} acknowledged (seq {seq}, attempt {sched.attempts}, "
            f"{waited:.1f} s after the send); source {sched.source}",
            meter_id,
        )
