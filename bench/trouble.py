"""Trouble-report benchmark (D06): the daily run over a large population, timed.

    python -m bench trouble --meters 100000 --days 30 --backend sqlite|postgres

Builds ``--meters`` meters (15-minute, one channel) with ``--days`` day rows
each, written straight into the tables (the bench times the daily run, not
ingest: `bench ingest` does that), then opens gaps: ``--offline-pct`` % of
the meters silent for the last 1-6 days, ``--intermittent-pct`` % missing 4-6
scattered days, a few partial days. Then times the set-based query alone and
`trouble.run` twice: the first opens the reports, the second runs a day later
with no new day rows (the meters with an open report are skipped; those now 3
days short get theirs).
Then the weekly rebalancing (H03): the meters spread over the 24 default read
groups, a week of first-read arrivals (group 0's meters late on most days),
`rebalance.run` timed.
Prints one JSON line; progress on stderr. Figures only: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time

from bench.cli import refuse
from headend.adcs import rebalance, trouble
from headend.config import Config
from headend.context import Ctx
from headend.errors import HeadendError
from headend.store import SqlStore
from headend.store.base import DAY_S

_DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test"
T0 = 1_711_929_600  # 2024-04-01 00:00 UTC
SLOTS = 96


def _open(args: argparse.Namespace, tmp: str) -> tuple[SqlStore, str | None]:
    if args.backend == "sqlite":
        from headend.store.sqlite import SqliteStore

        return SqliteStore(os.path.join(tmp, "bench.db"), synchronous="NORMAL"), None
    from headend.store.postgres import PostgresStore

    schema = f"bench_{os.getpid()}_{int(time.time())}"
    return PostgresStore(args.dsn, schema=schema), schema


def _gaps(args: argparse.Namespace, rnd: random.Random) -> dict[int, dict[int, int]]:
    """meter -> days ago -> slots present (absent: no row)."""
    out: dict[int, dict[int, int]] = {}
    n = args.meters
    for mid in rnd.sample(range(1, n + 1), n * args.offline_pct // 100):
        out[mid] = dict.fromkeys(range(1, rnd.randint(1, 6) + 1), 0)
    for mid in rnd.sample(range(1, n + 1), n * args.intermittent_pct // 100):
        days = rnd.sample(range(4, args.days + 1), rnd.randint(4, 6))
        out.setdefault(mid, {}).update({d: rnd.choice((0, SLOTS // 2)) for d in days})
    return out


def _build(store: SqlStore, args: argparse.Namespace, today: int) -> int:
    rnd = random.Random(7)
    gaps = _gaps(args, rnd)
    db = store.db
    vals, flags, full = bytes(SLOTS), bytes(SLOTS), b"\x01" * SLOTS
    half = b"\x01" * (SLOTS // 2) + bytes(SLOTS // 2)
    with db.transaction():
        db.executemany(
            "INSERT INTO meter (meter_id, fw_version, interval_s, capacity_days, utc_offset_min, "
            "meter_multiplier, n_channels, registered_at, day_phase_s) "
            "VALUES (?, 'bench', 900, 45, 0, 1, 1, ?, 0)",
            [(m, T0) for m in range(1, args.meters + 1)],
        )
    rows = 0
    for lo in range(1, args.meters + 1, 5000):
        batch = []
        for mid in range(lo, min(lo + 5000, args.meters + 1)):
            g = gaps.get(mid, {})
            for ago in range(1, args.days + 1):
                present = g.get(ago, SLOTS)
                if present:
                    srcs = full if present == SLOTS else half
                    batch.append((mid, today - ago * DAY_S, present, vals, flags, srcs))
        with db.transaction():
            db.executemany(
                "INSERT INTO interval_day (meter_id, day, interval_s, n_channels, n_present, "
                "vals, flags, srcs, updated_at) VALUES (?, ?, 900, 1, ?, ?, ?, ?, 0)",
                batch,
            )
        rows += len(batch)
        print(f"\r{rows} day rows", end="", file=sys.stderr)
    print(file=sys.stderr)
    return rows


def _arrivals(ctx: Ctx, args: argparse.Namespace, today: int) -> None:
    """Every meter in one of the window's groups since the start, a week of arrivals:
    group 0's meters an hour after their group on 5 days of 7, the others on time."""
    db, w = ctx.db, ctx.window
    day0 = today // DAY_S
    with db.transaction():
        db.executemany(
            "INSERT INTO group_member (meter_id, grp, read_offset_s, since_ms) VALUES (?, ?, ?, 0)",
            [(m, m % w.count, w.bounds(m % w.count)[0]) for m in range(1, args.meters + 1)],
        )
    for lo in range(1, args.meters + 1, 10_000):
        rows = []
        for m in range(lo, min(lo + 10_000, args.meters + 1)):
            start = w.bounds(m % w.count)[0]
            for d in range(day0 - 7, day0):
                late = m % w.count == 0 and d % 7 < 5
                rows.append((m, d, d * DAY_S + start + (3600 if late else 60)))
        with db.transaction():
            db.executemany("INSERT INTO read_arrival (meter_id, day, at_s) VALUES (?, ?, ?)", rows)


def main(argv: list[str]) -> int:
    """Run the benchmark; prints one JSON line with the figures to stdout."""
    ap = argparse.ArgumentParser(prog="python -m bench trouble", description=__doc__)
    ap.add_argument("--meters", type=int, default=100_000)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--offline-pct", type=int, default=10)
    ap.add_argument("--intermittent-pct", type=int, default=5)
    ap.add_argument("--backend", choices=("sqlite", "postgres"), default="sqlite")
    ap.add_argument("--dsn", default=os.environ.get("AMI_TEST_PG_DSN", _DEFAULT_DSN))
    args = ap.parse_args(argv)
    if args.meters < 1 or not 5 <= args.days <= 62:
        ap.error("--meters must be >= 1 and --days 5..62")
    if not (0 <= args.offline_pct <= 100 and 0 <= args.intermittent_pct <= 100):
        ap.error("--offline-pct and --intermittent-pct must be 0..100")
    try:
        return _run(args)
    except HeadendError as e:
        return refuse(e)


def _run(args: argparse.Namespace) -> int:
    today = T0 + (args.days + 1) * DAY_S
    now_ms = (today + 8 * 3600 + 1800) * 1000
    with tempfile.TemporaryDirectory() as tmp:
        store, schema = _open(args, tmp)
        try:
            t = time.perf_counter()
            rows = _build(store, args, today)
            build_s = time.perf_counter() - t
            ctx = Ctx.build(Config(trouble_window_days=args.days), store)
            t = time.perf_counter()
            masks = ctx.troubles.candidates(now_ms // 1000, args.days)
            query_s = time.perf_counter() - t
            t = time.perf_counter()
            with ctx.db.transaction():
                first = trouble.run(ctx, 0, now_ms)
            first_s = time.perf_counter() - t
            t = time.perf_counter()
            with ctx.db.transaction():
                second = trouble.run(ctx, 1, now_ms + DAY_S * 1000)
            second_s = time.perf_counter() - t
            opened = len(ctx.troubles.find())
            t = time.perf_counter()
            _arrivals(ctx, args, today)
            arrivals_s = time.perf_counter() - t
            t = time.perf_counter()
            with ctx.db.transaction():
                moved = rebalance.run(ctx, 0, now_ms)
            rebalance_s = time.perf_counter() - t
        finally:
            if schema is not None:
                store.db.execute(f"DROP SCHEMA {schema} CASCADE")
            store.close()
    out = {
        "backend": args.backend,
        "meters": args.meters,
        "day_rows": rows,
        "build_s": round(build_s, 1),
        "candidates": len(masks),
        "query_s": round(query_s, 2),
        "first_run_s": round(first_s, 2),
        "first_run": first,
        "second_run_s": round(second_s, 2),
        "second_run": second,
        "reports": opened,
        "arrivals_build_s": round(arrivals_s, 1),
        "rebalance_s": round(rebalance_s, 2),
        "rebalance": moved,
    }
    print(json.dumps(out))
    return 0
