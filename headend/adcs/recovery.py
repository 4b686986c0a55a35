"""Missing data: the daily check (D02) and automated recovery (D03, D04), in `Core.tick`.

Daily check. At ``daily_check_at`` (local, report_tz, no later than 08:00) one
worker claims the day's check as the timed run ``daily_check`` of that
collection day (`TimedRuns.claim`, under a lease: a worker that dies mid-check
is taken over once its lease expires) and verifies every registered meter's
window of days: its
previous day and the older days it still holds (``recovery_days``), with one
set-based scan for the whole population. Each missing or incomplete meter-day
not known yet becomes a ``missing_day`` row; one activity line per meter names
its days at once. The rows, the check's totals (``daily_check``) and the run's
end commit together, only while the worker still holds the run. The same worker
then keeps interval data by month: partitions ahead, and retention (T06).

Recovery. Due days become recovery reads through the on-demand job machinery
(`ondemand.request_read`, period mode, source recovery, requester ``recovery``,
priority routine), so the one throttle where jobs are claimed (`Jobs.claim`)
paces them with ad hoc reads. The previous day is read on its own; older days
are read by naming them, consecutive ones merged into one range read. Each day
gets ``recovery_attempts`` reads, ``recovery_retry_s`` apart. When a read ends
its days are settled against the store: complete -> recovered (the pathway:
attempt, transport, job); some but not all -> partial (read again while
attempts are left); nothing -> missing again, or unsuccessful after the last
attempt. A day that becomes complete by itself (the meter's own scheduled
catch-up read) is recovered too, with that pathway. Every step is a
conditional UPDATE of the `MISSING` lifecycle, so with several workers each day
is requested and settled once.

A day given up while its meter could not be reached (unsuccessful) is re-opened once,
by a later daily check that still finds it missing, if the meter has been heard from
since (any frame): a second round of ``recovery_attempts`` reads. The meter's own
catch-up after an outage usually brings such days first; this is for when it does not
(its read failed again, or it no longer sends them by itself).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from headend.adcs import ondemand
from headend.config import Config, parse_hhmm
from headend.context import Ctx
from headend.errors import IllegalTransition
from headend.store import partitions
from headend.store.activity import Kind
from headend.store.base import DAY_S, Source
from headend.store.jobs import ROUTINE
from headend.store.lifecycles import MissingEvent, MissingState
from headend.store.missing import PREV_DAY, Closed, Found, MissingDay
from headend.store.records import ReadSpec
from headend.store.timed import Claim, LeaseLost
from protocol.codes import ReadMode

log = logging.getLogger(__name__)

REQUESTER = "recovery"
#: pathway of a day that came back without a recovery read
BY_ITSELF = "scheduled read (arrived by itself)"
#: pathways of days a recovery read brought back start with this
BY_READ = "recovery read"
SWEEP_MS = 60_000  # how often days not being read are looked at for data that came by itself


def day_label(day: int) -> str:
    """The date of a meter's day (``day``: its start, UTC s): the UTC date of its middle."""
    return datetime.fromtimestamp(day + DAY_S // 2, UTC).strftime("%Y-%m-%d")


def check_due(cfg: Config, now_ms: int) -> tuple[int, int]:
    """(collection day, check instant) for the local date of ``now_ms``: the day before
    it (UTC s of its local midnight) is checked at ``daily_check_at`` (UTC ms)."""
    tz = cfg.tz
    local = datetime.fromtimestamp(now_ms / 1000, tz)
    at = parse_hhmm("daily_check_at", cfg.daily_check_at)
    when = datetime.combine(local.date(), at, tz)
    collection = datetime.combine(local.date() - timedelta(days=1), datetime.min.time(), tz)
    return int(collection.timestamp()), int(when.timestamp() * 1000)


def collection_day(cfg: Config, text: str) -> int:
    """``YYYY-MM-DD`` (local, report_tz) -> UTC s of its midnight. Raises ValueError."""
    d = datetime.strptime(text, "%Y-%m-%d").date()
    return int(datetime.combine(d, datetime.min.time(), cfg.tz).timestamp())


def gaps(days: Sequence[MissingDay]) -> list[list[MissingDay]]:
    """Reads to make for one meter's due days (ascending): the previous day alone, older
    days in runs of consecutive days (an intermittent day is a run of one). A re-opened
    day found as a previous day is an older day by now."""
    out: list[list[MissingDay]] = []
    for d in days:
        last = out[-1] if out else None
        if last is not None and _older(d) and _older(last[-1]) and d.day == last[-1].day + DAY_S:
            last.append(d)
        else:
            out.append([d])
    return out


def _older(d: MissingDay) -> bool:
    return d.kind != PREV_DAY or d.reopened_ms is not None


@dataclass(frozen=True)
class Settle:
    """What to do with a day whose read ended: the event, and whether it is final."""

    event: MissingEvent
    failed: bool
    final: bool


def settle(c: Closed, max_attempts: int) -> Settle:
    """A recovering day whose job ended: complete -> recovered; some data (more than when
    found) -> partial; none -> missing again (retry), or unsuccessful after the last."""
    failed = c.job_state == "failed"
    last = c.row.attempts >= max_attempts
    if c.held >= c.row.expected:
        return Settle(MissingEvent.COMPLETE, failed, True)
    if not failed or c.held > c.row.present:
        return Settle(MissingEvent.SOME, failed, last)
    return Settle(MissingEvent.GIVE_UP if last else MissingEvent.NONE, failed, last)


# -- the daily check -------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckResult:
    """A daily check this worker ran."""

    day: int
    meters: int
    found: list[Found]
    new: list[Found]


CHECK = "daily_check"  # the timed run's job name


def daily_check(ctx: Ctx, day: int, now_ms: int) -> CheckResult | None:
    """Run the check of collection ``day`` unless another worker has or holds it (None
    then; `Recovery.tick` asks again until it is done)."""
    cfg = ctx.config
    lease_ms = cfg.lease_s * 1000
    if ctx.timed.claim(CHECK, day, cfg.worker, now_ms, lease_ms) is not Claim.WON:
        return None
    meters, found = ctx.missing.scan(now_ms // 1000, cfg.recovery_days)
    try:
        with ctx.db.transaction():
            new = _record_check(ctx, day, now_ms, meters, found)
    except LeaseLost:
        log.warning("daily check of %s: taken over by another worker", day_label(day))
        return None
    log.info("daily check of %s: %d meter-days missing", day_label(day), len(found))
    _keep_by_month(ctx, now_ms)
    return CheckResult(day, meters, found, new)


def _record_check(ctx: Ctx, day: int, now_ms: int, meters: int, found: list[Found]) -> list[Found]:
    cfg = ctx.config
    new = ctx.missing.add(found, now_ms)
    by_meter: dict[int, list[Found]] = {}
    for f in new:
        by_meter.setdefault(f.meter_id, []).append(f)
    ctx.activity.log_many(
        (now_ms, Kind.MISSING_FOUND, _found_text(fs), mid, None) for mid, fs in by_meter.items()
    )
    again: dict[int, list[MissingDay]] = {}
    for d in ctx.missing.reopen(found, now_ms):
        again.setdefault(d.meter_id, []).append(d)
    ctx.activity.log_many(
        (now_ms, Kind.MISSING_FOUND, _reopened_text(ds, cfg.recovery_attempts), mid, None)
        for mid, ds in again.items()
    )
    missing_meters = len({f.meter_id for f in found})
    ctx.missing.record_check(day, cfg.worker, now_ms, meters, missing_meters, len(found))
    ctx.activity.log(
        now_ms,
        Kind.DAILY_CHECK,
        f"daily check of {day_label(day)} by {cfg.worker}: {meters} meters verified, "
        f"{missing_meters} missing or incomplete data ({len(found)} meter-days, "
        f"{len(new)} newly found, {sum(map(len, again.values()))} re-opened)",
    )
    ctx.timed.done(CHECK, day, cfg.worker, now_ms, f"{len(found)} meter-days missing")
    return new


def _keep_by_month(ctx: Ctx, now_ms: int) -> None:
    """Interval data by month: the next months' partitions, and retention (T06)."""
    cfg = ctx.config
    partitions.ensure(ctx.db, now_ms // 1000)
    gone = partitions.apply_retention(
        ctx.db, now_ms // 1000, cfg.retention_days, cfg.log_retention_days
    )
    if gone is not None and (gone.partitions or gone.rows or gone.log_rows):
        log.info(
            "retention: interval data before %s dropped (%s; %d day rows), %d log lines",
            day_label(gone.cutoff_s),
            ", ".join(gone.partitions) or "no partition",
            gone.rows,
            gone.log_rows,
        )


def _found_text(fs: Sequence[Found]) -> str:
    days = ", ".join(
        f"{day_label(f.day)} ({f.present}/{f.expected}"
        + (", previous day)" if f.kind == PREV_DAY else ")")
        for f in fs
    )
    return f"missing or incomplete: {days}; recovery reads follow"


def _reopened_text(ds: Sequence[MissingDay], attempts: int) -> str:
    days = ", ".join(day_label(d.day) for d in ds)
    return (
        f"heard from again after these days were given up: {days} re-opened, "
        f"{attempts} more recovery reads follow"
    )


# -- recovery --------------------------------------------------------------------------------


def queue_due(ctx: Ctx, now_ms: int) -> list[int]:
    """Queue a recovery read for every gap that is due; returns the job ids."""
    cfg = ctx.config
    by_meter: dict[int, list[MissingDay]] = {}
    for d in ctx.missing.due(now_ms, cfg.recovery_attempts):
        by_meter.setdefault(d.meter_id, []).append(d)
    jobs: list[int] = []
    for mid, days in by_meter.items():
        for gap in gaps(days):
            keys = [d.day for d in gap]
            spec = ReadSpec(mid, ReadMode.PERIOD, keys[0], keys[-1] + DAY_S, source=Source.RECOVERY)
            try:
                with ctx.db.transaction():
                    ctx.missing.request(mid, keys, now_ms, cfg.recovery_attempts)
                    job = ondemand.request_read(ctx, spec, REQUESTER, now_ms, priority=ROUTINE)
                    ctx.missing.set_job(mid, keys, job)
            except IllegalTransition:
                continue  # another worker took these days
            jobs.append(job)
    return jobs


def advance(ctx: Ctx, now_ms: int, sweep: bool = True) -> int:
    """Settle the days whose read ended, and (``sweep``) the days that came by themselves.
    Returns the days settled."""
    cfg = ctx.config
    n = 0
    by_job: dict[int, list[Closed]] = {}
    for c in ctx.missing.closed():
        by_job.setdefault(c.row.job_id or 0, []).append(c)
    for job_id, closed in by_job.items():
        with ctx.db.transaction():
            n += _settle_job(ctx, job_id, closed, now_ms, cfg.recovery_attempts)
    if sweep:
        # only days found while the meter still holds them: the history grows forever
        rows = ctx.missing.arrived(now_ms - cfg.recovery_days * DAY_S * 1000)
        with ctx.db.transaction():
            for d, by_read in rows:
                way = BY_ITSELF if not by_read else f"{BY_READ}, answered after its job closed"
                try:
                    ctx.missing.fire(
                        d.meter_id,
                        d.day,
                        MissingEvent.COMPLETE,
                        ", resolved_ms = ?, pathway = ?",
                        (now_ms, way),
                    )
                except IllegalTransition:
                    continue  # settled by another worker
                n += 1
                text = f"recovered {day_label(d.day)}: {way}"
                ctx.activity.log(now_ms, Kind.RECOVERY_DONE, text, d.meter_id)
    return n


def _settle_job(ctx: Ctx, job_id: int, closed: list[Closed], now_ms: int, max_attempts: int) -> int:
    mid = closed[0].row.meter_id
    attempt = closed[0].row.attempts
    meter = ctx.registry.get(mid)
    again = " after its meter was heard again" if closed[0].row.reopened_ms is not None else ""
    via = f"via {meter.transport or 'mqtt'}, job {job_id}"
    pathway = f"{BY_READ}, attempt {attempt}{again}, {via}"
    retry_ms = now_ms + ctx.config.recovery_retry_s * 1000
    done: list[str] = []
    itself: list[str] = []
    other: list[str] = []
    failed = False
    n = 0
    for c in closed:
        s = settle(c, max_attempts)
        failed = failed or s.failed
        sets = ", failures = failures + ?, next_ms = ?"
        params: list[object] = [int(s.failed), retry_ms]
        if s.event is MissingEvent.COMPLETE:
            way = pathway if c.recovered_slots else BY_ITSELF
            sets += ", resolved_ms = ?, pathway = ?"
            params += [now_ms, way]
        elif s.final:
            sets += ", resolved_ms = ?"
            params.append(now_ms)
        try:
            ctx.missing.fire(mid, c.row.day, s.event, sets, params)
        except IllegalTransition:
            continue  # settled by another worker
        n += 1
        label = day_label(c.row.day)
        if s.event is MissingEvent.COMPLETE:
            (done if c.recovered_slots else itself).append(label)
        else:
            state = {
                MissingEvent.SOME: MissingState.PARTIAL,
                MissingEvent.NONE: MissingState.MISSING,
                MissingEvent.GIVE_UP: MissingState.UNSUCCESSFUL,
            }[s.event]
            final = " (final)" if s.final else ""
            other.append(f"{label} {state.value} {c.held}/{c.row.expected}{final}")
    if done:
        ctx.activity.log(
            now_ms, Kind.RECOVERY_DONE, f"recovered {', '.join(done)}: {pathway}", mid, str(job_id)
        )
    if itself:
        ctx.activity.log(
            now_ms,
            Kind.RECOVERY_DONE,
            f"recovered {', '.join(itself)}: {BY_ITSELF} (job {job_id} brought none of it)",
            mid,
            str(job_id),
        )
    if other:
        why = "read failed" if failed else "read incomplete"
        left = max_attempts - attempt
        nxt = f"; next attempt in {ctx.config.recovery_retry_s} s" if left > 0 else ""
        ctx.activity.log(
            now_ms,
            Kind.RECOVERY_FAILED,
            f"{why} (attempt {attempt} of {max_attempts}, job {job_id}): {', '.join(other)}{nxt}",
            mid,
            str(job_id),
        )
    return n


class Recovery:
    """The timed work of one worker (its next check and sweep); `tick` runs it."""

    def __init__(self) -> None:
        self.checked: int | None = None  # the last collection day this worker saw checked
        self.next_sweep_ms = 0

    def tick(self, ctx: Ctx, now_ms: int) -> None:
        """The daily check when due, recovery reads due, days settled."""
        day, at_ms = check_due(ctx.config, now_ms)
        if now_ms >= at_ms and self.checked != day:
            daily_check(ctx, day, now_ms)
            if ctx.timed.finished(CHECK, day):  # else held by another worker: asked again next tick
                self.checked = day
        sweep = now_ms >= self.next_sweep_ms
        if sweep:
            self.next_sweep_ms = now_ms + SWEEP_MS
        advance(ctx, now_ms, sweep)
        queue_due(ctx, now_ms)
