"""Storage per meter-day on PostgreSQL, indexes included: one JSON line.

    python -m bench pg-storage --meters 1000 --days 30

Stores ``--meters`` x ``--days`` meter-days of the reference household profile
(4 channels, 15 min, midnight registers; the same data as `bench ingest`) in a
throwaway PostgreSQL schema with the head-end's schema (interval data
partitioned by month), then reads the sizes from the catalogue:
``pg_total_relation_size`` (heap, TOAST and indexes) of the month partitions,
of the midnight registers and of every table. ``bytes_per_meter_day`` is the
whole store over the meter-days; ``interval_bytes_per_meter_day`` the interval
data alone; ``gb_per_million_meter_years`` scales the whole store to 365 days
of one million meters. Progress goes to stderr. Figures only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from bench.cli import refuse
from bench.seed import CHANNELS, DEFAULT_DSN, drop_schema, fleet, load_profile, seed
from headend.errors import HeadendError
from headend.store.postgres import PostgresStore
from hil.loadprofile import DEFAULT_CSV, ProfileError

_SIZES = """
SELECT COALESCE(SUM(pg_total_relation_size(c.oid))
                FILTER (WHERE c.relname LIKE 'interval_day%'), 0),
       COALESCE(SUM(pg_total_relation_size(c.oid))
                FILTER (WHERE c.relname = 'midnight_register'), 0),
       COALESCE(SUM(pg_total_relation_size(c.oid)), 0),
       COUNT(*) FILTER (WHERE c.relname LIKE 'interval_day%')
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = current_schema() AND c.relkind = 'r'
"""


def main(argv: list[str]) -> int:
    """Run the benchmark; prints one JSON line with the figures to stdout."""
    ap = argparse.ArgumentParser(prog="python -m bench pg-storage", description=__doc__)
    ap.add_argument("--meters", type=int, default=1000)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--batch", type=int, default=2000, help="blocks per ingest call")
    ap.add_argument("--dsn", default=os.environ.get("AMI_TEST_PG_DSN", DEFAULT_DSN))
    ap.add_argument("--utc-offset-min", type=int, default=-300)
    ap.add_argument("--keep", action="store_true", help="keep the bench schema")
    args = ap.parse_args(argv)
    if args.meters < 1 or args.days < 1 or args.batch < 1:
        ap.error("--meters, --days and --batch must be >= 1")
    try:
        return _run(args)
    except (ProfileError, HeadendError) as e:  # a bad CSV, a store that will not open
        return refuse(e)


def _run(args: argparse.Namespace) -> int:
    profile = load_profile(DEFAULT_CSV)
    first, step, _ = profile
    members = fleet(args.meters, first, step, args.utc_offset_min)
    schema = f"bench_pgsize_{os.getpid()}_{int(time.time())}"
    store = PostgresStore(args.dsn, schema=schema)
    total = args.meters * args.days
    try:
        run = seed(
            store,
            members,
            total,
            profile,
            args.utc_offset_min,
            batch=args.batch,
            midnights=True,
            label="bench pg-storage",
        )
        store.db.execute("VACUUM ANALYZE")  # visibility maps and statistics, as in service
        with store.db.transaction(write=False):
            interval, midnight, whole, partitions = store.db.query(_SIZES)[0]
        stats = store.stats()
    finally:
        if not args.keep:
            drop_schema(args.dsn, schema)
        store.close()
    per_day = int(whole) / total
    print(
        json.dumps(
            {
                "backend": "postgres",
                "meters": args.meters,
                "days": args.days,
                "meter_days": total,
                "stored_meter_days": stats.meter_days,
                "bytes_total": int(whole),
                "interval_bytes": int(interval),
                "midnight_bytes": int(midnight),
                "bytes_per_meter_day": round(per_day, 1),
                "interval_bytes_per_meter_day": round(int(interval) / total, 1),
                "midnight_bytes_per_meter_day": round(int(midnight) / total, 1),
                "mb_per_meter_year": round(per_day * 365 / 1e6, 3),
                "gb_per_million_meter_years": round(per_day * 365 * 1e6 / 1e9, 1),
                "interval_tables": int(partitions),  # the month partitions and the default one
                "channels": len(CHANNELS),
                "interval_s": step,
                "ingest_s": round(run.wall_s, 2),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
