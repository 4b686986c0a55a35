"""`headend log`: the activity log, newest last (registrations, acks, retries, bad frames...)."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from collections.abc import Sequence

from headend.api import Activity, Config, Kind
from headend.cli.common import (
    OK,
    Sub,
    add_command,
    dash,
    non_negative,
    open_headend,
    parse_since,
    screen_lines,
    when,
    zone,
)

KINDS = [k.value for k in Kind]
FOLLOW_POLL_S = 0.5


def add(sub: Sub, common: argparse.ArgumentParser) -> None:
    p = add_command(
        sub, common, "log", "the activity log, newest last (what the head-end did and why)"
    )
    p.add_argument("--meter", type=int)
    p.add_argument(
        "--kind",
        action="append",
        choices=KINDS,
        metavar="KIND",
        help=f"only this kind (repeatable): {', '.join(KINDS)}",
    )
    p.add_argument(
        "--tail",
        "--limit",
        dest="tail",
        type=non_negative,
        metavar="N",
        help="the newest N lines (default: a screenful; 20 when not on a terminal)",
    )
    p.add_argument(
        "--since",
        metavar="WHEN",
        help="only lines from then: ISO date/time (report_tz), UTC s, or back from now "
        "(10m, 2h, 1d); times are the head-end's clock",
    )
    p.add_argument(
        "--follow", "-f", action="store_true", help="keep printing new lines until Ctrl-C"
    )
    p.set_defaults(run=run)


def _show(args: argparse.Namespace, lines: Sequence[Activity]) -> None:
    for a in lines:
        if args.json:
            d = {"id": a.activity_id, "at": when(a.at_ms), "meter": a.meter_id}
            print(json.dumps({**d, "kind": a.kind, "detail": a.detail, "ref": a.ref}))
        else:
            print(f"{when(a.at_ms)}  {dash(a.meter_id):>10}  {a.kind:<22} {a.detail}")
    sys.stdout.flush()


def run(args: argparse.Namespace, cfg: Config) -> int:
    tail = screen_lines() if args.tail is None else args.tail
    since_ms = parse_since(args.since, zone(cfg.report_tz), time.time()) * 1000 if args.since else 0
    kinds = args.kind or ()
    with open_headend(cfg) as he:
        log = he.ctx.activity
        newest = log.lines(newest=True, limit=1)  # --follow starts after it
        lines = log.lines(args.meter, kinds, since_ms, tail, newest=True)
        if args.json and not args.follow:  # one document; --follow prints one line per entry
            data = [
                {"id": a.activity_id, "at": when(a.at_ms), "meter": a.meter_id, "kind": a.kind}
                | {"detail": a.detail, "ref": a.ref}
                for a in lines
            ]
            print(json.dumps(data, indent=1))
            return OK
        if not args.follow:
            _show(args, lines)
            return OK
        # Ctrl-C (or SIGTERM) is how --follow ends, whenever it comes; set here, not
        # inherited: a shell starts background jobs with SIGINT ignored. The handler only
        # flips a flag: a threading.Event set from a handler can deadlock on its own lock.
        stop: list[int] = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda signum, _frame: stop.append(signum))
        _show(args, lines)
        last = max(a.activity_id for a in (*newest, *lines[-1:])) if newest else 0
        while not stop:
            time.sleep(FOLLOW_POLL_S)
            if stop:
                break
            fresh = log.lines(args.meter, kinds, since_ms, 1000, after_id=last)
            if fresh:
                _show(args, fresh)
                last = fresh[-1].activity_id
        return OK
