"""Daily-check benchmark (D02): how long the head-end takes to verify a whole population.

    python -m bench daily-check --meters 100000 --days 45 --missing-pct 10 [--backend ...]

A store with ``--meters`` meters (15-minute data) registered ``--days`` days ago and
a day row for each of their days (only ``n_present`` matters to the check: the
rows carry empty value blobs), of which ``--missing-pct`` % of the meters miss
their previous day and as many again hold one older day incomplete. Timed: the
set-based scan alone (`MissingDays.scan`), then the whole check as the service
runs it (`recovery.daily_check`: claim, scan, the missing_day rows, one activity
line per meter). Building the store is not timed. One JSON line of figures;
nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from bench.cli import refuse
from headend.adcs import recovery
from headend.config import Config
from headend.context import Ctx
from headend.errors import HeadendError
from headend.store import SqlStore, open_store
from headend.store.base import DAY_S
from headend.store.db import chunks

_DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test"
NOW = 1_775_030_400 + 6 * 3600  # 2026-04-01 06:00 UTC: the check's instant


def build(store: SqlStore, meters: int, days: int, pct: float) -> tuple[int, int]:
    """Meters and their day rows; returns (meter-days missing, meter-days incomplete)."""
    db = store.db
    today = NOW - NOW % DAY_S
    reg = today - days * DAY_S - 3600  # registered the evening before the first day
    every = max(1, round(100 / pct)) if pct > 0 else 0
    missing = incomplete = 0
    with db.transaction():
        for chunk in chunks(range(1, meters + 1), 10_000):
            db.executemany(
                "INSERT INTO meter (meter_id, fw_version, interval_s, capacity_days, "
                "utc_offset_min, meter_multiplier, n_channels, registered_at, day_phase_s) "
                "VALUES (?, '1', 900, 45, 0, 1, 1, ?, 0)",
                [(m, reg) for m in chunk],
            )
    for chunk in chunks(range(1, meters + 1), 2_000):
        rows = []
        for m in chunk:
            lose = every and m % every == 0
            part = every and m % every == 1
            for k in range(days):
                day = today - (k + 1) * DAY_S
                if lose and k == 0:
                    missing += 1
                    continue
                n = 96
                if part and k == days // 2:
                    n = 50
                    incomplete += 1
                rows.append((m, day, n))
        with db.transaction():
            db.executemany(
                "INSERT INTO interval_day (meter_id, day, interval_s, n_channels, n_present, "
                "vals, flags, srcs, updated_at) VALUES (?, ?, 900, 1, ?, ?, ?, ?, 0)",
                [(m, d, n, b"", b"", b"") for m, d, n in rows],
            )
    return missing, incomplete


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench daily-check", description=__doc__)
    p.add_argument("--meters", type=int, default=100_000)
    p.add_argument("--days", type=int, default=45, help="days of data per meter (<= 45)")
    p.add_argument("--missing-pct", type=float, default=10.0)
    p.add_argument("--backend", choices=("sqlite", "postgres"), default="sqlite")
    p.add_argument("--dsn", default=_DEFAULT_DSN, help="PostgreSQL DSN (--backend postgres)")
    a = p.parse_args(argv)
    if a.meters < 1 or not 1 <= a.days <= 45 or not 0 <= a.missing_pct <= 50:
        return refuse("--meters >= 1, --days 1..45, --missing-pct 0..50")
    with tempfile.TemporaryDirectory(prefix="ami-bench-") as tmp:
        url = f"sqlite:///{Path(tmp) / 'check.db'}" if a.backend == "sqlite" else a.dsn
        schema = f"bench_check_{int(time.time())}" if a.backend == "postgres" else None
        try:
            store = open_store(url, schema=schema)
        except HeadendError as e:
            return refuse(str(e))
        try:
            t = time.monotonic()
            missing, incomplete = build(store, a.meters, a.days, a.missing_pct)
            built_s = time.monotonic() - t
            print(f"built {a.meters} meters x {a.days} days in {built_s:.0f} s", file=sys.stderr)
            ctx = Ctx.build(Config(database=url), store)
            t = time.monotonic()
            meters, found = ctx.missing.scan(NOW, 45)
            scan_s = time.monotonic() - t
            t = time.monotonic()
            day, _ = recovery.check_due(ctx.config, NOW * 1000)
            result = recovery.daily_check(ctx, day, NOW * 1000)
            check_s = time.monotonic() - t
            if result is None:
                return refuse("the check was claimed already")
            out = {
                "backend": a.backend,
                "meters": a.meters,
                "days": a.days,
                "meter_days": a.meters * a.days,
                "missing_meter_days": missing,
                "incomplete_meter_days": incomplete,
                "meters_verified": meters,
                "found": len(found),
                "scan_s": round(scan_s, 2),
                "daily_check_s": round(check_s, 2),
                "missing_meters_logged": len({f.meter_id for f in result.new}),
            }
        finally:
            if schema is not None:
                store.db.execute(f'DROP SCHEMA "{schema}" CASCADE')
            store.close()
    print(json.dumps(out))
    return 0
