"""Trouble reports (D06, A7): meters missing the 3 most recent days, or 5 days in a window.

Runs once a day (``trouble_at``, after the collection window), claimed by one
worker. First closes the open reports of meters whose data flows again (a
complete day arrived after the report opened), then opens one report per
meter that needs one and has none open. Missing days come from the day rows
(no row, or fewer slots than the day has) through one set-based query
(`Troubles.candidates`); the rule itself is `judge`, pure.

Days counted: whole local days from the meter's registration on, and, after a
report closed, only days from the closing day on (a meter is not reported
again for the gaps it was reported for).
"""

from __future__ import annotations

from datetime import date

from headend.context import Ctx
from headend.errors import IllegalTransition
from headend.store.activity import Kind
from headend.store.base import DAY_S

RECENT = "missing the 3 most recent days"
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()


def judge(complete: int, valid: int) -> tuple[str, list[int]] | None:
    """(reason, missing day bits) if the days call for a report, else None.

    Bit b is the day b + 1 days before today (bit 0 = yesterday); ``valid`` are
    the days that count, ``complete`` the days that arrived complete.
    """
    missing = valid & ~complete
    bits = [b for b in range(valid.bit_length()) if missing >> b & 1]
    if missing & 0b111 == 0b111:
        return RECENT, bits
    if len(bits) >= 5:
        return f"missing {len(bits)} days (full or partial) in the window", bits
    return None


def valid_days(today: int, registered_at: int, closed_ms: int | None, window: int) -> int:
    """Bit mask of the days that count: whole days since registration, and since the
    last closed report's closing day."""
    mask = 0
    for b in range(window):
        start = today - (b + 1) * DAY_S
        if start < registered_at:
            break
        if closed_ms is not None and start + DAY_S <= closed_ms // 1000:
            break
        mask |= 1 << b
    return mask


def iso_day(day_start: int, utc_offset_min: int) -> str:
    """The local date of a day row starting at ``day_start`` (UTC s)."""
    n = (day_start + utc_offset_min * 60 + 3599) // DAY_S
    return date.fromordinal(n + _EPOCH_ORDINAL).isoformat()


def run(ctx: Ctx, period: int, now_ms: int) -> str:
    """The daily pass: close, then open. Returns a one-line summary."""
    window = ctx.config.trouble_window_days
    closed = 0
    for tid, mid, day in ctx.troubles.closable():
        meter = ctx.registry.get(mid)
        why = f"complete day {iso_day(day, meter.utc_offset_min)} received"
        try:
            ctx.troubles.close(tid, now_ms, why)
        except IllegalTransition:
            continue  # closed meanwhile
        closed += 1
        ctx.activity.log(now_ms, Kind.TROUBLE_CLOSED, f"trouble report {tid}: {why}", mid)
    masks = ctx.troubles.candidates(now_ms // 1000, window)
    last = ctx.troubles.last_closed(m.meter_id for m in masks)
    opened = 0
    for m in masks:
        valid = valid_days(m.today, m.registered_at, last.get(m.meter_id), window)
        verdict = judge(m.complete, valid)
        if verdict is None:
            continue
        reason, bits = verdict
        days = [iso_day(m.today - (b + 1) * DAY_S, m.utc_offset_min) for b in reversed(bits)]
        opened_id = ctx.troubles.open(m.meter_id, now_ms, reason, days)
        if opened_id is None:
            continue  # one is open already: never a second
        opened += 1
        ctx.activity.log(
            now_ms,
            Kind.TROUBLE_OPENED,
            f"trouble report {opened_id}: {reason} ({len(days)} of the last {window} days: "
            f"{', '.join(days)})",
            m.meter_id,
            str(opened_id),
        )
    return (
        f"{opened} trouble report(s) opened, {closed} closed; "
        f"{len(masks)} meter(s) had 3+ incomplete days"
    )
