"""Missing-data reports (D03, D04, D05, D08), built at once from ``missing_day``.

* ``missing``     meters still missing data, with their days (D04)
* ``exceptions``  meter-days still missing after the last recovery attempt (D03)
* ``recovery``    per meter: recovered fully / partially, unsuccessful, intermittent
                  failures (D04)
* ``history``     every meter-day ever missing, when found and how resolved (D05)
* ``stats``       per collection day: meters, on schedule, recovered, unsuccessful (D08)

Option ``day`` (``YYYY-MM-DD``): the meter-days dated that day (`recovery.day_label`);
for ``stats`` the collection day. Times are ISO 8601 in report_tz.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from headend.adcs.recovery import BY_ITSELF, BY_READ, day_label
from headend.context import Ctx
from headend.errors import InvalidData
from headend.reports import Cell, Report, Table
from headend.store.lifecycles import MissingState
from headend.store.missing import PREV_DAY, MissingDay

OPEN = (MissingState.MISSING, MissingState.RECOVERING, MissingState.PARTIAL)


def _day_option(day: str | None) -> str | None:
    if day is None:
        return None
    try:
        return datetime.strptime(day, "%Y-%m-%d").strftime("%Y-%m-%d")
    except (TypeError, ValueError):
        raise InvalidData(f"--day: expected YYYY-MM-DD, got {day!r}") from None


def _rows(ctx: Ctx, day: str | None, states: Sequence[MissingState] = ()) -> list[MissingDay]:
    want = _day_option(day)
    rows = ctx.missing.rows(states)
    return [r for r in rows if want is None or day_label(r.day) == want]


def _final(ctx: Ctx, r: MissingDay) -> bool:
    """Still missing after the last attempt: unsuccessful, or partial with none left."""
    return r.state is MissingState.UNSUCCESSFUL or (
        r.state is MissingState.PARTIAL and r.attempts >= ctx.config.recovery_attempts
    )


def _iso(ctx: Ctx, ms: int | None) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, ctx.config.tz).isoformat(timespec="seconds")


def missing(ctx: Ctx, now_ms: int, day: str | None = None) -> Table:
    """Meters still missing data (not recovered), with their days."""
    by_meter: dict[int, list[MissingDay]] = {}
    for r in _rows(ctx, day, (*OPEN, MissingState.UNSUCCESSFUL)):
        by_meter.setdefault(r.meter_id, []).append(r)
    rows: list[tuple[Cell, ...]] = [
        (mid, len(rs), " ".join(day_label(r.day) for r in rs), " ".join(r.state for r in rs))
        for mid, rs in by_meter.items()
    ]
    return Table(
        "Meters still missing data",
        ("meter", "days_missing", "days", "states"),
        rows,
        {"meters": len(rows), "meter_days": sum(len(rs) for rs in by_meter.values())},
    )


def exceptions(ctx: Ctx, now_ms: int, day: str | None = None) -> Table:
    """Meter-days still missing after the last recovery attempt (D03 exception report)."""
    rows: list[tuple[Cell, ...]] = [
        (
            r.meter_id,
            day_label(r.day),
            r.kind,
            r.state.value,
            r.present,
            r.expected,
            r.attempts,
            r.job_id,
            _iso(ctx, r.found_ms),
        )
        for r in _rows(ctx, day, (MissingState.PARTIAL, MissingState.UNSUCCESSFUL))
        if _final(ctx, r)
    ]
    return Table(
        f"Still missing after {ctx.config.recovery_attempts} recovery attempts",
        ("meter", "day", "kind", "state", "present", "expected", "attempts", "last_job", "found"),
        rows,
        {"meters": len({r[0] for r in rows}), "meter_days": len(rows)},
    )


def _runs(days: Sequence[int]) -> int:
    """Separate runs of consecutive days (each intermittent failure is one)."""
    s = sorted(days)
    return sum(1 for i, d in enumerate(s) if i == 0 or d != s[i - 1] + 86_400)


def recovery(ctx: Ctx, now_ms: int, day: str | None = None) -> Table:
    """Per meter that had missing days: fully / partially recovered, unsuccessful (D04)."""
    by_meter: dict[int, list[MissingDay]] = {}
    for r in _rows(ctx, day):
        by_meter.setdefault(r.meter_id, []).append(r)
    failed = ctx.missing.failed_reads()
    rows: list[tuple[Cell, ...]] = []
    outcome = {"fully": 0, "partially": 0, "unsuccessful": 0, "in_progress": 0}
    for mid, rs in by_meter.items():
        by_read = sum(1 for r in rs if (r.pathway or "").startswith(BY_READ))
        by_itself = sum(1 for r in rs if r.pathway == BY_ITSELF)
        partial = sum(1 for r in rs if r.state is MissingState.PARTIAL and _final(ctx, r))
        lost = sum(1 for r in rs if r.state is MissingState.UNSUCCESSFUL)
        pending = len(rs) - by_read - by_itself - partial - lost
        if pending:
            result = "in_progress"
        elif by_read + by_itself == len(rs):
            result = "fully"
        elif by_read + by_itself + partial:
            result = "partially"
        else:
            result = "unsuccessful"
        outcome[result] += 1
        rows.append(
            (
                mid,
                len(rs),
                by_read,
                by_itself,
                partial,
                lost,
                pending,
                _runs([r.day for r in rs]),
                failed.get(mid, 0),
                result,
            )
        )
    return Table(
        "Recovery of missing data per meter",
        (
            "meter",
            "days_missing",
            "recovered_by_read",
            "recovered_by_itself",
            "partial",
            "unsuccessful",
            "in_progress",
            "intermittent_failures",
            "failed_reads",
            "result",
        ),
        rows,
        {"meters_attempted": len(rows), **outcome},
    )


def history(ctx: Ctx, now_ms: int, day: str | None = None) -> Table:
    """Every meter-day ever missing or incomplete: when found, how resolved (D05)."""
    rows: list[tuple[Cell, ...]] = [
        (
            r.meter_id,
            day_label(r.day),
            r.kind,
            _iso(ctx, r.found_ms),
            f"{r.present}/{r.expected}",
            r.state.value,
            r.attempts,
            r.failures,
            _iso(ctx, r.resolved_ms),
            r.pathway,
        )
        for r in _rows(ctx, day)
    ]
    return Table(
        "Missing-data history",
        (
            "meter",
            "day",
            "kind",
            "found",
            "present_at_found",
            "state",
            "attempts",
            "failed_attempts",
            "resolved",
            "pathway",
        ),
        rows,
        {"meters": len({r[0] for r in rows}), "meter_days": len(rows)},
    )


def stats(ctx: Ctx, now_ms: int, day: str | None = None) -> Table:
    """Per collection day (each daily check): meters verified, collected on schedule, and
    of the previous days that check found missing: recovered by a recovery read,
    recovered by the meter's own read, unsuccessful, still in progress. The columns
    add up to the meters (days found missing later, older, are in ``history``)."""
    want = _day_option(day)
    by_day: dict[str, list[MissingDay]] = {}
    for r in ctx.missing.rows():
        if r.kind == PREV_DAY:
            by_day.setdefault(day_label(r.day), []).append(r)
    rows: list[tuple[Cell, ...]] = []
    for c in ctx.missing.checks():
        label = datetime.fromtimestamp(c.day, ctx.config.tz).strftime("%Y-%m-%d")
        if want is not None and label != want:
            continue
        rs = by_day.get(label, [])
        by_read = sum(1 for r in rs if (r.pathway or "").startswith(BY_READ))
        by_itself = sum(1 for r in rs if r.pathway == BY_ITSELF)
        lost = sum(1 for r in rs if _final(ctx, r))
        pending = len(rs) - by_read - by_itself - lost
        rows.append((label, c.meters, c.meters - len(rs), by_read, by_itself, lost, pending))
    return Table(
        "Collection statistics per day",
        (
            "day",
            "meters",
            "on_schedule",
            "recovered_by_read",
            "recovered_by_meter",
            "unsuccessful",
            "in_progress",
        ),
        rows,
        {"days": len(rows)},
    )


REPORTS = {
    r.name: r
    for r in (
        Report("missing", "meters still missing data, days per meter (D04)", missing, ("day",)),
        Report(
            "exceptions",
            "meter-days still missing after the last recovery attempt (D03)",
            exceptions,
            ("day",),
        ),
        Report(
            "recovery",
            "per meter: fully / partially recovered, unsuccessful, intermittent failures (D04)",
            recovery,
            ("day",),
        ),
        Report(
            "history",
            "every meter-day ever missing, and how it was resolved (D05)",
            history,
            ("day",),
        ),
        Report(
            "stats",
            "per collection day: meters, on schedule, recovered, unsuccessful (D08)",
            stats,
            ("day",),
        ),
    )
}
