"""Run a scenario against broker + head-end + virtual boards (hil/README.md).

`python -m hil scenario NAME [--json] [--days D] [--speed S] [--boards N] ...`

Prints progress (to stderr with --json, else stdout) and ends with ONE JSON
line of outcomes on stdout: the figures each check used and ``ok`` (all
checks passed). Exit status 0 only if ok. A child that dies (mosquitto, a
board not being cut on purpose) ends the run at once with its last words
(exit 1); SIGINT/SIGTERM end it cleanly (exit 130/143).

  powercut   45 days, >= 200 random power cuts: nothing closed is lost or corrupt (M02, M05)
  drift      drift, a 60 s and a 300 s RTC jump: step, out-of-sync event, time_set (M06-M09, H10)
  outage     link down 3 days: everything backfilled, the head-end complete (M15, D01)
  schedules  an hourly schedule for a day next to the default read (M11, M14, M15, H07)
  ondemand   100 on-demand reads over a slow link: p80_s, p99_s vs 30/60 s (H05, N02)
  security   every attack of issue 11 refused, 0 intervals lost, 0 forged values stored (M20, T02)
  recovery   meters offline 1/3/6 days, intermittent, one silent: the head-end finds and
             recovers missing data by itself (D02-D05, D08, H09, N05; --meters, --offline-pct)
  nats-failover  a 3-node NATS cluster, 2 workers, the stream's leader node stopped under
             load: nothing lost, nothing doubled (H08; --meters, --days)
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from hil import supervise
from hil.board import BoardError
from hil.rig import RigError
from hil.scenarios.common import Options
from hil.supervise import ChildDied, Stopped, stopped

NAMES = (
    "powercut",
    "drift",
    "outage",
    "schedules",
    "ondemand",
    "security",
    "recovery",
    "nats-failover",
)


def scenario(name: str) -> Callable[[Options], Awaitable[dict[str, Any]]]:
    """The coroutine function that runs scenario ``name``."""
    if name not in NAMES:
        raise KeyError(f"unknown scenario {name!r}; choose one of {', '.join(NAMES)}")
    mod = importlib.import_module(f"hil.scenarios.{name.replace('-', '_')}")
    fn: Callable[[Options], Awaitable[dict[str, Any]]] = mod.run
    return fn


async def run(name: str, opts: Options) -> dict[str, Any]:
    """Run one scenario; its outcome dict (always with "scenario" and "ok")."""
    return await scenario(name)(opts)


def _args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m hil scenario",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("name", choices=NAMES)
    p.add_argument("--json", action="store_true", help="progress to stderr, only JSON on stdout")
    p.add_argument("--days", type=float, help="simulated days (powercut, drift: days after day 0)")
    p.add_argument("--speed", type=int, help="simulated seconds per real second")
    p.add_argument("--boards", type=int, help="virtual boards")
    p.add_argument("--cuts", type=int, help="powercut: power cuts")
    p.add_argument("--reads", type=int, help="ondemand: reads")
    p.add_argument("--latency", type=float, dest="latency_s", help="ondemand: link delay each way")
    p.add_argument("--outage-days", type=float, help="outage: days the link is down")
    p.add_argument("--meters", type=int, help="recovery: fleet meters")
    p.add_argument("--offline-pct", type=float, help="recovery: percent of meters offline")
    p.add_argument(
        "--meters-per-conn",
        type=_at_least(1),
        help="recovery: fleet meters carried over each MQTT connection (gateway logins; 1)",
    )
    p.add_argument(
        "--idle-speed",
        type=_at_least(0),
        help="recovery: speed of each collection day's daytime (3 h after the daily check "
        "to 23:30), when the meters only record (default 1200, 10,000,000 / meters for more "
        "than 8,333; 0: the run's speed)",
    )
    p.add_argument(
        "--days-offline",
        type=_days,
        help="recovery: outage lengths in days, comma-separated (default 1,3,6); 0: uplinks "
        "lost over the night's read window only (a mute link: the reads fail), healed before the "
        "daily check: what only recovery reads bring back (a mass recovery, N05)",
    )
    p.add_argument("--seed", type=int, default=1, help="random seed (cut instants ...)")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (SQLite, flash, logs)")
    p.add_argument(
        "--insecure", action="store_true", help="plain, anonymous MQTT (default: TLS, logins, ACLs)"
    )
    return p.parse_args(argv)


def _at_least(low: int) -> Callable[[str], int]:
    """An argparse type: a whole number >= ``low``."""

    def whole(text: str) -> int:
        n = int(text) if text.strip().isdigit() else -1
        if n < low:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {low}, got {text!r}")
        return n

    return whole


def _days(text: str) -> tuple[int, ...]:
    try:
        days = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected days like 1,3,6, got {text!r}") from None
    if not days or min(days) < 0:
        raise argparse.ArgumentTypeError(f"expected whole days >= 0, got {text!r}")
    return days


def main(argv: list[str]) -> int:
    a = _args(argv)
    out = sys.stderr if a.json else sys.stdout
    opts = Options(
        days=a.days,
        speed=a.speed,
        boards=a.boards,
        cuts=a.cuts,
        reads=a.reads,
        latency_s=a.latency_s,
        outage_days=a.outage_days,
        meters=a.meters,
        offline_pct=a.offline_pct,
        days_offline=a.days_offline,
        meters_per_conn=a.meters_per_conn,
        idle_speed=a.idle_speed,
        seed=a.seed,
        keep=a.keep,
        insecure=a.insecure,
        say=lambda s: print(s, file=out, flush=True),
    )
    try:
        result = supervise.run(lambda: run(a.name, opts))
    except (RigError, BoardError, ChildDied) as e:
        print(f"error: {e}", file=sys.stderr)
        result = {"scenario": a.name, "ok": False, "error": str(e)}
    except Stopped as e:
        return stopped(f"scenario {a.name}", e)
    print(json.dumps(result), flush=True)
    return 0 if result.get("ok") else 1
