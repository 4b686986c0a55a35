"""The benches' store seed: realistic meter-days, registered and ingested in batches.

Meter-days are the 45-day reference household profile (4 channels, 15 min),
scaled per meter and rotated in time, with midnight registers and a few
flagged intervals, for all meters day by day (`bench ingest`, `bench
pg-storage` and `bench loadgen` use the same data).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from headend.store import (
    BlockIngest,
    Channel,
    ChannelKind,
    IntervalBlock,
    Meter,
    MidnightRegister,
    Source,
    SqlStore,
    Unit,
)
from headend.store.base import DAY_S
from hil.loadprofile import load_days

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test"
CHANNELS = (
    Channel(ChannelKind.ACTIVE_IMPORT, Unit.WH),
    Channel(ChannelKind.ACTIVE_EXPORT, Unit.WH),
    Channel(ChannelKind.REACTIVE_IMPORT, Unit.VARH),
    Channel(ChannelKind.REACTIVE_EXPORT, Unit.VARH),
)
_PROGRESS_S = 2.0


Profile = tuple[int, int, list[list[list[int]]]]


def load_profile(path: Path) -> Profile:
    """(first interval start, interval_s, days[day][channel][slot]) of a profile CSV."""
    days = load_days(path)  # ProfileError: missing or malformed
    return days[0][0], DAY_S // len(days[0][1][0]), [values for _, values in days]


Raw = tuple[int, dict[str, Any], int, tuple[int, ...], int]


def meter_days(
    meters: int, ndays: int, first: int, step: int, profile: list[list[list[int]]], utc_off: int
) -> Iterator[Raw]:
    """Every meter's day 0, then day 1, ...: (meter, canonical block, midnight, registers, at).

    Canonical blocks are what the protocol decoder hands the head-end; building
    the validated store items from them is part of the timed ingest.
    """
    totals = [[0] * 4 for _ in range(meters)]
    per_day = DAY_S // step
    for d in range(ndays):
        day_start = first + d * DAY_S - utc_off * 60
        for m in range(meters):
            k = 50 + (m * 37) % 151  # 50 %..200 % of the household
            prof = profile[(d + m * 7) % len(profile)]
            chans = [[v * k // 100 for v in ch] for ch in prof]
            if (m + d) % 50 == 0:  # a short outage: 3 intervals power-failed
                flags = [0] * per_day
                flags[40:43] = [1, 1, 1]
            else:
                flags = [0] * per_day
            at = day_start + DAY_S + 3600 + m % 25_200
            block = {"start": day_start, "interval_s": step, "flags": flags, "channels": chans}
            tot = totals[m]
            for c in range(4):
                tot[c] += sum(chans[c])
            yield m + 1, block, day_start + DAY_S, tuple(tot), at


def to_items(raw: list[Raw], midnights: bool) -> tuple[list[BlockIngest], list[MidnightRegister]]:
    """Validated store items from decoded reads (what the head-end does per read)."""
    blocks = [
        BlockIngest(m, IntervalBlock.from_canonical(b), Source.SCHEDULED, at)
        for m, b, _, _, at in raw
    ]
    mids = (
        [MidnightRegister(m, day, regs, Source.SCHEDULED, at) for m, _, day, regs, at in raw]
        if midnights
        else []
    )
    return blocks, mids


def fleet(meters: int, first: int, step: int, utc_off: int) -> list[Meter]:
    """Meters 1..meters of the seed; built (validated) before any store opens."""
    return [Meter(m, "bench-1", step, utc_off, 1, CHANNELS, first) for m in range(1, meters + 1)]


@dataclass(frozen=True)
class Seeded:
    """What a seed took: meter-days stored, per-batch ingest seconds, wall seconds."""

    meter_days: int
    batch_s: list[float]
    wall_s: float


def seed(
    store: SqlStore,
    meters: list[Meter],
    total: int,
    profile: Profile,
    utc_off: int,
    *,
    batch: int,
    midnights: bool,
    label: str,
) -> Seeded:
    """Register ``meters`` and ingest ``total`` meter-days, ``batch`` blocks per call.

    ``meters`` are `fleet` (same profile and ``utc_off``); every meter's day 0
    first, then day 1, ... as a head-end worker drains a night's reads.

    Only building the items and the ingest call count in ``batch_s``
    (generating the decoded reads does not); progress goes to stderr as
    ``<label>: done/total meter-days, rate/s``.
    """
    for meter in meters:
        store.register_meter(meter)
    first, step, days = profile
    ndays = -(-total // len(meters))
    gen = meter_days(len(meters), ndays, first, step, days, utc_off)
    batch_s: list[float] = []
    busy = 0.0
    done = 0
    t0 = last = time.perf_counter()
    while done < total:
        n = min(batch, total - done)
        raw = [next(gen) for _ in range(n)]
        t = time.perf_counter()
        store.ingest(*to_items(raw, midnights))
        dt = time.perf_counter() - t
        busy += dt
        batch_s.append(dt)
        done += n
        if time.perf_counter() - last > _PROGRESS_S:
            last = time.perf_counter()
            rate = done / busy if busy else 0.0
            print(f"{label}: {done}/{total} meter-days, {rate:.0f}/s", file=sys.stderr, flush=True)
    return Seeded(done, batch_s, time.perf_counter() - t0)


def drop_schema(dsn: str, schema: str) -> None:
    """Drop a bench's throwaway PostgreSQL schema."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
