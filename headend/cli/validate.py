"""`headend validate METERS --start --end`: usage validation per meter and billing
period (D14): sum, missing, contiguous, zero, high/low. A table, ``--json`` or
``--csv`` (as `headend report`); the results are stored (``validation_result``)
for other systems to read.
"""

from __future__ import annotations

import argparse
import sys

from headend.api import Config
from headend.cli.common import (
    OK,
    Progress,
    Sub,
    Usage,
    add_command,
    now_ms,
    open_headend,
    parse_time,
    zone,
)
from headend.cli.report import render
from headend.mdms import validate as checks
from headend.reports import Table
from headend.store.exports import Selection


def add(sub: Sub, common: argparse.ArgumentParser) -> None:
    p = add_command(sub, common, "validate", "usage validation per meter and billing period (D14)")
    p.add_argument("meters", help="1 | 1,2,10-20 | group:N | all")
    p.add_argument("--start", required=True, help="period start, ISO in --tz (or UTC s)")
    p.add_argument("--end", required=True, help="exclusive end")
    p.add_argument("--tz", help="IANA zone of the period and its days (default: report_tz)")
    d = checks.Rules()
    p.add_argument("--stuck", type=int, default=d.stuck, help="longest run of equal values")
    p.add_argument("--history-days", type=int, default=d.history_days)
    p.add_argument("--high", default=str(d.high), help="high: a day above X x history max")
    p.add_argument("--low", default=str(d.low), help="low: a day below X x history min")
    p.add_argument("--tolerance", type=int, default=d.tolerance, help="sum check, raw counts")
    p.add_argument("--failed", action="store_true", help="only the checks that failed")
    p.add_argument("--csv", action="store_true", help="CSV: a header line, then the rows")
    p.set_defaults(run=run)


def rules_of(args: argparse.Namespace) -> checks.Rules:
    return checks.parse_rules(args.stuck, args.history_days, args.high, args.low, args.tolerance)


def run(args: argparse.Namespace, cfg: Config) -> int:
    if args.json and args.csv:
        raise Usage("--json and --csv: choose one")
    tz = zone(args.tz or cfg.report_tz)
    start, end = parse_time(args.start, tz), parse_time(args.end, tz)
    found = rules_of(args)
    with open_headend(cfg) as he:
        progress = Progress("validate")
        rows = checks.validate_stored(
            he.ctx.store, Selection(args.meters), start, end, tz, found, now_ms(), progress.note
        )
        progress.done()
    t = table_of(rows, args.failed, f"validation {args.start} .. {args.end} ({tz.key})")
    fmt = "json" if args.json else "csv" if args.csv else "text"
    sys.stdout.write(render(t, fmt) + "\n")
    return OK


def table_of(rows: list[checks.Row], failed_only: bool, title: str) -> Table:
    """The results as a report `Table` with pass/fail/skip totals."""
    totals = checks.totals_of(rows)
    shown = [r for r in rows if r[2] == checks.FAIL] if failed_only else rows
    return Table(title, ("meter", "check", "status", "detail"), list(shown), totals)
