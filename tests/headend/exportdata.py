"""Seed data of the export and validation tests: meters with 15-minute data whose raw
values are a known function of time, registers that match their sums, events."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from zoneinfo import ZoneInfo

from headend.store import (
    BlockIngest,
    Channel,
    ChannelKind,
    EventRecord,
    IntervalBlock,
    Meter,
    MidnightRegister,
    Source,
    SqlStore,
    Unit,
)
from headend.store.base import DAY_S

LA = ZoneInfo("America/Los_Angeles")
SPRING = 1_710_057_600  # 2024-03-10T08:00:00Z = local midnight in Los Angeles (PST)
FALL = 1_730_617_200  # 2024-11-03T07:00:00Z = local midnight in Los Angeles (PDT)
STEP = 900
CHANNELS = (
    Channel(ChannelKind.ACTIVE_IMPORT, Unit.WH, 2, -3),  # raw x 2 x 10^-3 x meter multiplier
    Channel(ChannelKind.REACTIVE_IMPORT, Unit.VARH),
)
PST_OFFSET_MIN = -480


def value(meter_id: int, t: int) -> int:
    """Raw active import of an interval: varies with time of day, never all zero."""
    return 100 + (t // STEP) % 96 * 3 + meter_id


def register(store: SqlStore, meter_id: int, first_day: int, multiplier: int = 5) -> Meter:
    m = Meter(meter_id, "1.0", STEP, PST_OFFSET_MIN, multiplier, CHANNELS, first_day - DAY_S)
    store.register_meter(m)
    return m


def seed(
    store: SqlStore,
    meter_id: int,
    start: int,
    end: int,
    *,
    raw: Callable[[int, int], int] = value,
    source: Source = Source.SCHEDULED,
    flags: Callable[[int], int] = lambda t: 0,
    skip: Sequence[tuple[int, int]] = (),
) -> None:
    """Intervals [start, end) of both channels (reactive = active // 2), without the
    spans in ``skip``; a block per UTC day."""
    blocks = []
    for lo in range(start, end, DAY_S):
        ts = [
            t for t in range(lo, min(lo + DAY_S, end), STEP) if not any(a <= t < b for a, b in skip)
        ]
        # a block is contiguous: cut at the skipped spans
        run: list[int] = []
        for t in [*ts, None]:
            if t is not None and (not run or t == run[-1] + STEP):
                run.append(t)
                continue
            if run:
                act = [raw(meter_id, u) for u in run]
                blocks.append(
                    BlockIngest(
                        meter_id,
                        IntervalBlock(
                            run[0], STEP, [flags(u) for u in run], (act, [a // 2 for a in act])
                        ),
                        source,
                        run[-1] + STEP,
                    )
                )
            run = [] if t is None else [t]
    store.ingest(blocks)


def midnights(
    store: SqlStore, meter_id: int, days: Sequence[int], raw: Callable[[int, int], int] = value
) -> None:
    """Registers at each of ``days`` (UTC s of local standard midnight) equal to the sum of
    the seeded intervals since ``days[0]`` plus a base."""
    base = 1_000_000
    regs = []
    act = react = 0
    prev = days[0]
    for d in days:
        vals = [raw(meter_id, t) for t in range(prev, d, STEP)]
        act += sum(vals)
        react += sum(v // 2 for v in vals)
        prev = d
        regs.append(MidnightRegister(meter_id, d, (base + act, base + react), Source.SCHEDULED, d))
    store.ingest(midnights=regs)


def event(store: SqlStore, meter_id: int, t: int, code: int = 1) -> None:
    store.ingest(events=[EventRecord(meter_id, code, t, 7, Source.SCHEDULED, t + 60)])
