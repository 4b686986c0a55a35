"""`python -m bench fleet-memory`: RAM and CPU of N fleet meters over D simulated days.

The fleet simulator's meters (`hil.fleet_meter.FleetMeter`: the real firmware
core and store on a sparse NOR flash) without a link: built, booted, then
stepped hour by hour through D days (the core ticked at every interval
boundary, as the fleet does). Prints one JSON line: the process's resident
set after boot and at the end, its peak, KiB per meter, flash blocks held per
meter, and the CPU seconds per meter-day of stepping (hil/FLEET.md "Scale").
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time

from bench.cli import refuse

START = 1_711_990_800  # 2024-04-01T17:00:00Z, as the scale run
HOUR = 3600


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench fleet-memory", description=__doc__)
    p.add_argument("--meters", type=int, default=10_000)
    p.add_argument("--days", type=int, default=2)
    args = p.parse_args(argv)
    if args.meters < 1 or args.days < 1:
        return refuse("--meters and --days must be >= 1")
    from headend.api import DEV_MASTER_KEY, Clock
    from hil.fleet_meter import FleetMeter, Stats, key_for
    from hil.fleet_profile import DAY, DEFAULT_MIX, LoadProfile, parse_mix, plan_fleet
    from hil.loadprofile import DEFAULT_CSV

    base = rss_mb()
    day1 = START - START % DAY + DAY
    end = day1 + (args.days + 1) * DAY
    plans = plan_fleet(args.meters, 100_001, parse_mix(DEFAULT_MIX), 1, START, day1, args.days, end)
    tb = Clock(1.0, float(START), time.time())
    stats, keys, load = Stats(), key_for(bytes.fromhex(DEV_MASTER_KEY)), LoadProfile(DEFAULT_CSV)
    t0 = time.process_time()
    meters = [
        FleetMeter(p, tb, load, ("127.0.0.1", 1), keys(p.meter_id), stats, START) for p in plans
    ]
    for m in meters:
        m.boot(START * 1000)
    boot_s, boot_mb = time.process_time() - t0, rss_mb()
    t0 = time.process_time()
    for t in range(START + HOUR, day1 + args.days * DAY + 1, HOUR):
        for m in meters:
            m.step(t * 1000)
    step_s, end_mb = time.process_time() - t0, rss_mb()
    n = args.meters
    out = {
        "meters": n,
        "days": args.days,
        "boot_cpu_s": round(boot_s, 1),
        "step_cpu_s": round(step_s, 1),
        "step_cpu_ms_per_meter_day": round(step_s * 1000 / n / args.days, 2),
        "rss_mb_booted": round(boot_mb),
        "rss_mb_end": round(end_mb),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
        "kib_per_meter": round((end_mb - base) * 1024 / n, 1),
        "flash_blocks_per_meter": round(sum(m.flash.allocated() for m in meters) / n, 2),
        "core_errors": stats.errors,
    }
    print(json.dumps(out), flush=True)
    return 0 if stats.errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
