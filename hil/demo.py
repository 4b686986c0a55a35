"""`make demo`: the whole system on real parts, for a few simulated days.

A private mosquitto, the head-end service (`headend.service.Service`, in
this process) on a fresh SQLite file, virtual boards running the real
firmware on the MicroPython binary (`hil.rig`), and a fleet of simulated
meters (the same firmware core on CPython, `python -m hil fleet` in a second
process) with offline days, intermittent and slow links and skewed clocks,
all on one simulated clock. The head-end registers every meter, places it in
a read group in the evening, collects each night, answers on-demand reads
queued through its job path (as `headend read` does), and finds and recovers
missing days by itself (its daily check and recovery reads); the summary
gives its own D08 statistics next to the demo's count, which must agree. The
demo prints progress, a human summary, and one JSON line (keys in
hil/FLEET.md "Demo").
Nothing keeps running; the temporary files go unless --keep. A child that
dies (mosquitto, a board, the fleet process) ends the demo at once with its
last words (exit 1); Ctrl-C or SIGTERM end it cleanly (exit 130/143).
"""

from __future__ import annotations

import argparse
import sys

from hil.broker import find_mosquitto
from hil.fleet import add_run_options
from hil.fleet_headend import FleetRun, RunOptions
from hil.fleet_profile import ProfileError, parse_mix
from hil.fleet_time import parse_utc


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m hil demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--boards", type=int, default=5, help="virtual boards (MicroPython)")
    p.add_argument("--meters", type=int, default=500, help="fleet meters (CPython)")
    add_run_options(p, progress_s=10.0)
    p.add_argument("--ondemand", type=int, default=100, help="on-demand reads to make")
    p.add_argument("--keep", action="store_true", help="keep the database, logs and flash dirs")
    return p


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    try:
        parse_mix(args.profile_mix)
        if min(args.boards, args.meters, args.ondemand) < 0 or args.days < 1:
            raise ProfileError("--boards, --meters, --ondemand must be >= 0, --days >= 1")
        if args.boards + args.meters < 1:
            raise ProfileError("no meters: give --boards or --meters")
        run = FleetRun(
            RunOptions(
                meters=args.meters,
                days=args.days,
                speed=args.speed,
                start=parse_utc(args.start),
                seed=args.seed,
                profile_mix=args.profile_mix,
                boards=args.boards,
                ondemand=args.ondemand,
                keep=args.keep,
                csv=args.csv,
                progress_s=args.progress_s,
                insecure=args.insecure,
                feed=True,
            )
        )
    except (ProfileError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if find_mosquitto() is None:
        print("error: mosquitto not found (make setup installs it)", file=sys.stderr)
        return 1
    return run.main("demo")
