"""Export benchmark (D11): rows per second and peak memory of a streamed export.

    python -m bench export --meters 1000 --days 30 --format csv|json|espi

Builds a SQLite store (not timed) of ``--meters`` meters with two 15-minute
channels and ``--days`` days of data each (one encoded day row, written for
every meter-day), then runs the export of all of it twice, each in a fresh
process so that its peak RSS is its own: once for a tenth of the meters and
once for all of them. Peak memory must not grow with the number of meters (the
export streams a meter-day at a time); rows per second is of the full run. An
interval row is one interval of one meter (all its channels). Output goes to
a temp file (its size is reported). Progress on stderr, one JSON line last.

Peak RSS is the export process's VmHWM. The export's connection is set up as
the CLI and the export thread set theirs (`store.exports.for_streaming`: a
2 MB SQLite page cache); ``--page-cache-mb 64`` gives it the store's usual
cache, which fills with the pages read (the RSS then grows with the data read,
up to 64 MB).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from zoneinfo import ZoneInfo

from bench.cli import refuse
from headend.errors import HeadendError
from headend.mdms import export
from headend.store import Channel, ChannelKind, IntervalBlock, Unit, open_store
from headend.store.base import DAY_S
from headend.store.days import DayRow
from headend.store.db import chunks
from headend.store.exports import STREAM_CACHE_KB, Selection, for_streaming, meter_ids

FIRST_DAY = 1_772_323_200  # 2026-03-01T00:00Z
TZ = "America/Los_Angeles"


def build(path: Path, meters: int, days: int) -> None:
    """Meters 1..N (UTC standard midnight, 2 channels) and a full day row per meter-day."""
    store = open_store(f"sqlite:///{path}")
    db = store.db
    row = DayRow.empty(0, 900, 2)
    vals = tuple(100 + i % 96 * 3 for i in range(96))
    block = IntervalBlock(0, 900, (0,) * 96, (vals, tuple(v // 2 for v in vals)))
    row.merge_block(block, 0, 0, 96, 1)
    v, f, s = row.encode()
    try:
        with db.transaction():
            for chunk in chunks(range(1, meters + 1), 5_000):
                db.executemany(
                    "INSERT INTO meter (meter_id, fw_version, interval_s, capacity_days, "
                    "utc_offset_min, meter_multiplier, n_channels, registered_at, day_phase_s) "
                    "VALUES (?, '1', 900, 45, 0, 1, 2, ?, 0)",
                    [(m, FIRST_DAY - DAY_S) for m in chunk],
                )
                db.executemany(
                    "INSERT INTO meter_channel (meter_id, idx, kind, unit, multiplier, scaler) "
                    "VALUES (?, ?, ?, ?, 1, 0)",
                    [
                        (m, c, int(ch.kind), int(ch.unit))
                        for m in chunk
                        for c, ch in enumerate(CHANNELS)
                    ],
                )
        for chunk in chunks(range(1, meters + 1), 500):
            with db.transaction():
                db.executemany(
                    "INSERT INTO interval_day (meter_id, day, interval_s, n_channels, "
                    "n_present, vals, flags, srcs, updated_at) "
                    "VALUES (?, ?, 900, 2, 96, ?, ?, ?, 0)",
                    [(m, FIRST_DAY + d * DAY_S, v, f, s) for m in chunk for d in range(days)],
                )
    finally:
        store.close()


CHANNELS = (
    Channel(ChannelKind.ACTIVE_IMPORT, Unit.WH),
    Channel(ChannelKind.REACTIVE_IMPORT, Unit.VARH),
)


def child(
    db: Path, meters: int, days: int, fmt: str, cache_mb: int | None
) -> dict[str, float | int]:
    """One export in this process; its figures (the caller runs it in a fresh process)."""
    store = open_store(f"sqlite:///{db}", migrate=False)
    for_streaming(store.db, *([] if cache_mb is None else [cache_mb * 1024]))
    try:
        req = export.Request(
            meter_ids(store.db, Selection(f"1-{meters}")),
            FIRST_DAY,
            FIRST_DAY + days * DAY_S,
            ZoneInfo(TZ),
            fmt,
        )
        with tempfile.TemporaryFile("w+", encoding="utf-8") as out:
            t = time.monotonic()
            counts = export.write(store, req, out)
            secs = time.monotonic() - t
            size = out.tell()
    finally:
        store.close()
    return {
        "meters": counts.meters,
        "rows": counts.rows,
        "seconds": round(secs, 2),
        "rows_per_s": round(counts.rows / secs) if secs else 0,
        "bytes": size,
        "peak_rss_mb": peak_rss_mb(),
    }


def peak_rss_mb() -> float:
    """This process's peak RSS: VmHWM (Linux), which exec resets. Not ru_maxrss: Linux
    carries that across exec from the forked parent (the bench's own ~40 MB)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def run_child(
    db: Path, meters: int, days: int, fmt: str, cache_mb: int | None
) -> dict[str, float | int]:
    argv = [sys.executable, "-m", "bench.export", "--child", str(db), "--meters", str(meters),
            "--days", str(days), "--format", fmt]  # fmt: skip
    if cache_mb is not None:
        argv += ["--page-cache-mb", str(cache_mb)]
    p = subprocess.run(argv, capture_output=True, text=True, check=False)
    if p.returncode != 0:
        raise HeadendError(f"export child failed: {p.stderr.strip().splitlines()[-1:]}")
    got: dict[str, float | int] = json.loads(p.stdout.strip().splitlines()[-1])
    return got


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench export", description=__doc__)
    p.add_argument("--meters", type=int, default=1000)
    p.add_argument("--days", type=int, default=30)
    p.add_argument("--format", choices=export.FORMATS, default="csv")
    p.add_argument(
        "--page-cache-mb", type=int, help=f"SQLite page cache (default {STREAM_CACHE_KB // 1024})"
    )
    p.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.meters < 10 or not 1 <= a.days <= 45 or (a.page_cache_mb or 1) < 1:
        return refuse("--meters >= 10, --days 1..45, --page-cache-mb >= 1")
    if a.child is not None:
        print(json.dumps(child(a.child, a.meters, a.days, a.format, a.page_cache_mb)))
        return 0
    with tempfile.TemporaryDirectory(prefix="ami-bench-export-") as tmp:
        db = Path(tmp) / "export.db"
        t = time.monotonic()
        try:
            build(db, a.meters, a.days)
            print(f"built {a.meters} meters x {a.days} days in {time.monotonic() - t:.0f} s",
                  file=sys.stderr)  # fmt: skip
            small = run_child(db, a.meters // 10, a.days, a.format, a.page_cache_mb)
            print(f"{a.meters // 10} meters: {small}", file=sys.stderr)
            full = run_child(db, a.meters, a.days, a.format, a.page_cache_mb)
            print(f"{a.meters} meters: {full}", file=sys.stderr)
        except HeadendError as e:
            return refuse(e)
    out = {
        "format": a.format,
        "page_cache_mb": a.page_cache_mb or STREAM_CACHE_KB // 1024,
        "meters": a.meters,
        "days": a.days,
        "rows": full["rows"],
        "rows_per_s": full["rows_per_s"],
        "seconds": full["seconds"],
        "bytes": full["bytes"],
        "peak_rss_mb": full["peak_rss_mb"],
        "peak_rss_mb_tenth_of_meters": small["peak_rss_mb"],
        "rss_growth_mb": round(float(full["peak_rss_mb"]) - float(small["peak_rss_mb"]), 1),
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
