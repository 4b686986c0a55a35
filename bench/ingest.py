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
from pathlib import Path

from bench.cli import refuse
from bench.seed import CHANNELS, DEFAULT_DSN, drop_schema, fleet, load_profile, seed
from headend.errors import HeadendError
from headend.store import SqlStore
from hil.loadprofile import DEFAULT_CSV, ProfileError
from hil.stats import percentile


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
    ap.add_argument("--dsn", default=os.environ.get("AMI_TEST_PG_DSN", DEFAULT_DSN))
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
    profile = load_profile(csv_path)
    first, step, _ = profile
    meters = args.meters or max(1, args.meter_days // 20)

    # validated before the store opens: a bad option leaves no database behind
    members = fleet(meters, first, step, args.utc_offset_min)
    with tempfile.TemporaryDirectory(prefix="ami-bench-") as tmp:
        store, schema = _open(args, tmp)
        try:
            run = seed(
                store,
                members,
                args.meter_days,
                profile,
                args.utc_offset_min,
                batch=args.batch,
                midnights=not args.no_midnights,
                label=f"bench ingest [{args.backend}]",
            )
            stats = store.stats()
            size = store.db.size_bytes()
        finally:
            if schema is not None and not args.keep:
                drop_schema(args.dsn, schema)
            store.close()

    done = run.meter_days
    busy = sum(run.batch_s)
    lat_ms = sorted(s * 1000 for s in run.batch_s)
    intervals = stats.intervals
    out = {
        "backend": args.backend,
        "meter_days": done,
        "meter_days_per_s": round(done / busy, 1),
        "intervals_per_s": round(intervals * len(CHANNELS) / busy, 1),
        "p50_ms": round(percentile(lat_ms, 50) or 0.0, 2),
        "p99_ms": round(percentile(lat_ms, 99) or 0.0, 2),
        "db_bytes_per_meter_day": round(size / done, 1),
        "batch": args.batch,
        "meters": meters,
        "wall_s": round(run.wall_s, 2),
        "stored_meter_days": stats.meter_days,
    }
    if args.backend == "sqlite":
        out["synchronous"] = args.synchronous.upper()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
