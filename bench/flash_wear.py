"""Flash wear of the meter's store on the NOR-flash model.

`python -m bench flash-wear` runs the real firmware store (firmware/meter/store.py)
on the host NOR model with the default configuration: 15-minute intervals on 4
channels from the reference load profile, a midnight register read, an event log
and config/state writes. After a warm-up that wraps every ring once, it counts the
erases of every block over the measured days and prints one JSON line: erases per
block per simulated day, the most-erased block, years until it reaches 100,000
erases (target >= 20), the steady-state estimate from the format alone, and the
store's flash footprint at the 5-minute worst case (<= 256 KiB).

By default (`--model app`) the writes are the real app's: the meter core
(firmware/meter/meter.py) runs for the simulated days, ticked every 5 minutes
with the load profile's energy, and a head-end (the firmware codec) acks the
daily read, registration and event pushes and answers the daily time sync;
`--events-per-day` tamper events are raised and pushed. Every flash write is
the core's own: intervals, midnight registers, events (incl. message_sent),
schedules and auth/ack state. `--model store` is the store-only synthetic
pattern (intervals + N events + N config puts a day).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

FIRMWARE = Path(__file__).resolve().parents[1] / "firmware"
if str(FIRMWARE) not in sys.path:
    sys.path.insert(0, str(FIRMWARE))

from hal.hostkit import Board, Head  # noqa: E402  (the core on a NOR model + a head-end)
from hal.norflash import NORFlash  # noqa: E402
from meter import store, timeutil, wear  # noqa: E402

from bench.cli import refuse  # noqa: E402
from hil.loadprofile import DEFAULT_CSV, ProfileError, load_days  # noqa: E402

LIMIT = 100_000
TARGET_YEARS = 20
T0 = 1_704_067_200  # 2024-01-01T00:00:00Z


def _profile(path: Path = DEFAULT_CSV) -> list[list[tuple[int, ...]]]:
    """Interval values per day from the profile CSV (ProfileError if it cannot be read)."""
    return [list(zip(*values, strict=True)) for _, values in load_days(path)]


def simulate_app(
    days: int = 365,
    warmup_days: int = 160,
    interval_s: int = 900,
    events_per_day: int = 4,
) -> dict[str, Any]:
    """Run the meter core (the app's write pattern) on the NOR model; wear figures."""
    b = Board(now=T0, interval_s=interval_s)
    b.boot()
    head = Head(keep=False)
    profile = _profile()
    step = 300
    per_day = 86400 // step
    ev_every = per_day // events_per_day if events_per_day else 0
    before: list[int] = []
    t_start = time.perf_counter()
    for day in range(warmup_days + days):
        if day == warmup_days:
            before = list(b.flash.erase_counts)
        values = profile[day % len(profile)]
        for i in range(per_day):
            v = values[(i * len(values)) // per_day]
            k = 900 // step  # the profile is per 15 minutes
            wh = tuple(x // k for x in v)
            b.run(step, step=step, wh=wh, head=head)
            if ev_every and i % ev_every == ev_every // 2:
                b.m.tamper(b.now)
    elapsed = time.perf_counter() - t_start
    delta = [a - c for a, c in zip(b.flash.erase_counts, before, strict=True)]
    st = b.reboot_store()
    return _figures(st, delta, days, warmup_days, interval_s, elapsed, "app", events_per_day, 0)


def _figures(
    s: Any,
    delta: list[int],
    days: int,
    warmup_days: int,
    interval_s: int,
    elapsed: float,
    model: str,
    events_per_day: int,
    config_puts_per_day: int,
) -> dict[str, Any]:
    worst = max(delta)
    ib, eb, cb = s.blocks
    measured_years = wear.wear_years(worst, days, LIMIT)
    est = wear.wear_estimate(
        interval_s=interval_s,
        events_per_day=events_per_day,
        config_puts_per_day=config_puts_per_day,
        limit=LIMIT,
    )
    rings = {"intervals": (0, ib), "events": (ib, ib + eb), "config": (ib + eb, ib + eb + cb)}
    footprint = wear.footprint(4096)
    years = measured_years if measured_years is not None else est["years_to_limit"]
    return {
        "model": model,
        "interval_s": interval_s,
        "channels": len(s.registers()),
        "events_per_day": events_per_day,
        "config_puts_per_day": config_puts_per_day,
        "warmup_days": warmup_days,
        "days": days,
        "blocks": {"intervals": ib, "events": eb, "config": cb, "block_size": 4096},
        "erases_per_block_per_day": [round(d / days, 5) for d in delta],
        "max_erases_per_block_per_day": {
            name: round(max(delta[a:b]) / days, 5) for name, (a, b) in rings.items()
        },
        "most_erased_block": delta.index(worst),
        "years_to_100k_erases": years,
        "years_to_100k_erases_estimate": est["years_to_limit"],
        "meets_20_years": years is not None and years >= TARGET_YEARS,
        "retained_intervals": sum(1 for _ in s.intervals()),
        "footprint_bytes_5min": footprint,
        "fits_256_kib": footprint <= 256 * 1024,
        "seconds": round(elapsed, 2),
    }


def simulate(
    days: int = 365,
    warmup_days: int = 160,
    interval_s: int = 900,
    events_per_day: int = 24,
    config_puts_per_day: int = 4,
) -> dict[str, Any]:
    """Run the store for warmup_days + days; return the wear figures."""
    flash = NORFlash(4096, 64)
    s = store.Store(flash).mount()
    s.put_config(1, b"meter 4711 interval %d utc+60 mask 0x00ff" % interval_s)
    for slot in range(4):
        s.put_config(10 + slot, b"schedule %d: daily 02:%02d" % (slot, 20 * slot))
    profile = _profile()
    per_day = 86400 // interval_s
    ev_every = max(1, per_day // events_per_day) if events_per_day else 0
    cf_every = max(1, per_day // config_puts_per_day) if config_puts_per_day else 0
    before: list[int] = []
    t_start = time.perf_counter()
    for day in range(warmup_days + days):
        if day == warmup_days:
            before = list(flash.erase_counts)
        day_t = T0 + day * 86400
        s.append_register_read(day_t, s.registers())
        values = profile[day % len(profile)]
        for i in range(per_day):
            t = day_t + i * interval_s
            v = values[(i * len(values)) // per_day]
            s.append_interval(t, interval_s, 0, v)
            if ev_every and i % ev_every == ev_every - 1:
                s.append_event(0x10 + i % 8, t + 37, b"%d" % i)
            if cf_every and i % cf_every == cf_every - 1:
                s.put_config(2, b"last-ack %d" % t)
    elapsed = time.perf_counter() - t_start
    delta = [a - b for a, b in zip(flash.erase_counts, before, strict=True)]
    return _figures(
        s,
        delta,
        days,
        warmup_days,
        interval_s,
        elapsed,
        "store",
        events_per_day,
        config_puts_per_day,
    )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench flash-wear", description=__doc__)
    parser.add_argument("--days", type=int, default=365, help="measured days (default 365)")
    parser.add_argument("--warmup-days", type=int, default=160, help="days before measuring")
    parser.add_argument("--interval", type=int, default=900, choices=timeutil.INTERVALS)
    parser.add_argument("--events-per-day", type=int, default=4, help="tamper events (app)")
    parser.add_argument("--config-puts-per-day", type=int, default=4, help="--model store only")
    parser.add_argument("--model", choices=("app", "store"), default="app")
    args = parser.parse_args(argv)
    ticks = 86400 // (300 if args.model == "app" else args.interval)  # at most one each
    if args.days <= 0 or args.warmup_days < 0:
        parser.error("--days must be > 0 and --warmup-days >= 0")
    if not (0 <= args.events_per_day <= ticks and 0 <= args.config_puts_per_day <= ticks):
        parser.error(f"--events-per-day and --config-puts-per-day must be 0..{ticks}")
    try:
        if args.model == "app":
            out = simulate_app(args.days, args.warmup_days, args.interval, args.events_per_day)
        else:
            out = simulate(
                args.days,
                args.warmup_days,
                args.interval,
                args.events_per_day,
                args.config_puts_per_day,
            )
    except ProfileError as e:
        return refuse(e)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
