"""Meters and day rows put straight into a store, for the tests of what is computed
from them (D06 trouble reports, D07 gaps, H03 arrivals)."""

from __future__ import annotations

from collections.abc import Iterable

from headend.context import Ctx
from headend.store import BlockIngest, Channel, ChannelKind, IntervalBlock, Meter, Source, Unit
from headend.store.base import DAY_S

CHANNELS = (Channel(ChannelKind.ACTIVE_IMPORT, Unit.WH),)


def add_meters(
    ctx: Ctx,
    ids: Iterable[int],
    registered_at: int,
    utc_offset_min: int = 0,
    interval_s: int = 900,
) -> None:
    for mid in ids:
        ctx.registry.register(
            Meter(mid, "1.0", interval_s, utc_offset_min, 1, CHANNELS, registered_at)
        )


def put_intervals(
    ctx: Ctx,
    meter_id: int,
    start: int,
    n: int,
    received_at: int,
    interval_s: int = 900,
    source: Source = Source.SCHEDULED,
) -> None:
    """``n`` valid intervals from ``start``, received at ``received_at`` (UTC s)."""
    block = IntervalBlock(start, interval_s, (0,) * n, (tuple(range(1, n + 1)),))
    ctx.readings.ingest(blocks=[BlockIngest(meter_id, block, source, received_at)])


def put_day(
    ctx: Ctx,
    meter_id: int,
    day_start: int,
    received_at: int | None = None,
    slots: int | None = None,
    interval_s: int = 900,
) -> None:
    """A day row from ``day_start``: complete, or only its first ``slots`` intervals."""
    n = DAY_S // interval_s if slots is None else slots
    at = day_start + DAY_S + 3600 if received_at is None else received_at
    put_intervals(ctx, meter_id, day_start, n, at, interval_s)
