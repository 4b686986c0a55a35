"""Ingest benchmark: realistic meter-days into the store, figures as one JSON line.

    python -m bench ingest --meter-days 20000 --backend sqlite|postgres

Meter-days are the 45-day reference household profile (4 channels, 15 min),
scaled per meter and rotated in time, with midnight registers and a few
flagged intervals. They are ingested day by day for all meters, in batches of
``--batch`` blocks per `MeterStore.ingest` call (one transaction each), like a
head-end worker draining a night's scheduled reads. Generating the decoded
reads is not timed; building the validated items from them and the ingest call are.
``p50_ms``/``p99_ms`` are per-batch latencies; the rates use their sum.
Progress goes to stderr. Figures only: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.cli import refuse
from headend.errors import HeadendError
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
from hil.loadprofile import DEFAULT_CSV, ProfileError, load_days
from hil.stats import percentile

_DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test"
_CHANNELS = (
    Channel(ChannelKind.ACTIVE_IMPORT, Unit.WH),
    Channel(ChannelKind.ACTIVE_EXPORT, Unit.WH),
    Channel(ChannelKind.REACTIVE_IMPORT, Unit.VARH),
    Channel(ChannelKind.REACTIVE_EXPORT, Unit.VARH),
)


def load_profile(path: Path) -> tuple[int, int, list[list[list[int]]]]:
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


def _open(args: argparse.Namespace, tmp: str) -> tuple[SqlStore, str | None]:
    if args.backend == "sqlite":
        from headend.store.sqlite import SqliteStore

        path = args.db or os.path.join(tmp, "bench.db")
        return SqliteStore(path, synchronous=args.synchronous), None
    from headend.store.postgres import PostgresStore

    schema = f"bench_{os.getpid()}_{int(time.time())}"
    return PostgresStore(args.dsn, schema=schema), schema


def main(argv: list[str]) -> int:
    """Run the ingest benchmark; prints one JSON line with the figures to stdout."""
    ap = argparse.ArgumentParser(prog="python -m bench ingest", description=__doc__)
    ap.add_argument("--meter-days", type=int, default=20_000)
    ap.add_argument("--backend", choices=("sqlite", "postgres"), default="sqlite")
    ap.add_argument("--meters", type=int, default=0, help="default: meter-days / 20")
    ap.add_argument("--batch", type=int, default=500, help="blocks per ingest call")
    ap.add_argument("--csv", default=None, help=f"profile CSV (default {DEFAULT_CSV})")
    ap.add_argument("--db", default=None, help="SQLite file (default: a temporary one)")
    ap.add_argument("--synchronous", default="FULL", help="SQLite synchronous (FULL, NORMAL)")
    ap.add_argument("--dsn", default=os.environ.get("AMI_TEST_PG_DSN", _DEFAULT_DSN))
    ap.add_argument("--utc-offset-min", type=int, default=-300)
    ap.add_argument("--no-midnights", action="store_true", help="ingest interval blocks only")
    ap.add_argument("--keep", action="store_true", help="keep the PostgreSQL bench schema")
    args = ap.parse_args(argv)
    if args.meter_days < 1 or args.batch < 1 or args.meters < 0:
        ap.error("--meter-days and --batch must be >= 1, --meters >= 0")
    try:
        return _run(args)
    except (ProfileError, HeadendError) as e:  # a bad CSV, a store that will not open
        return refuse(e)


def _run(args: argparse.Namespace) -> int:
    csv_path = Path(args.csv) if args.csv else DEFAULT_CSV
    first, step, profile = load_profile(csv_path)
    meters = args.meters or max(1, args.meter_days // 20)
    ndays = -(-args.meter_days // meters)

    # validated before the store opens: a bad option leaves no database behind
    fleet = [
        Meter(m, "bench-1", step, args.utc_offset_min, 1, _CHANNELS, first)
        for m in range(1, meters + 1)
    ]
    with tempfile.TemporaryDirectory(prefix="ami-bench-") as tmp:
        store, schema = _open(args, tmp)
        try:
            for meter in fleet:
                store.register_meter(meter)
            lat_ms: list[float] = []
            busy = 0.0
            done = 0
            t0 = last = time.perf_counter()
            gen = meter_days(meters, ndays, first, step, profile, args.utc_offset_min)
            while done < args.meter_days:
                n = min(args.batch, args.meter_days - done)
                raw = [next(gen) for _ in range(n)]
                t = time.perf_counter()
                blocks, mids = to_items(raw, not args.no_midnights)
                store.ingest(blocks, mids)
                dt = time.perf_counter() - t
                busy += dt
                lat_ms.append(dt * 1000)
                done += n
                if time.perf_counter() - last > 2.0:
                    last = time.perf_counter()
                    print(
                        f"bench ingest [{args.backend}]: {done}/{args.meter_days} meter-days, "
                        f"{done / busy:.0f}/s",
                        file=sys.stderr,
                        flush=True,
                    )
            wall = time.perf_counter() - t0
            stats = store.stats()
            size = store.db.size_bytes()
        finally:
            if schema is not None and not args.keep:
                _drop_schema(args.dsn, schema)
            store.close()

    lat_ms.sort()
    intervals = stats.intervals
    out = {
        "backend": args.backend,
        "meter_days": done,
        "meter_days_per_s": round(done / busy, 1),
        "intervals_per_s": round(intervals * len(_CHANNELS) / busy, 1),
        "p50_ms": round(percentile(lat_ms, 50) or 0.0, 2),
        "p99_ms": round(percentile(lat_ms, 99) or 0.0, 2),
        "db_bytes_per_meter_day": round(size / done, 1),
        "batch": args.batch,
        "meters": meters,
        "wall_s": round(wall, 2),
        "stored_meter_days": stats.meter_days,
    }
    if args.backend == "sqlite":
        out["synchronous"] = args.synchronous.upper()
    print(json.dumps(out))
    return 0


def _drop_schema(dsn: str, schema: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
