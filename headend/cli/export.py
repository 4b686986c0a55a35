"""`headend export ID --start --end`: a meter's intervals in engineering units, CSV or JSON."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from headend.api import Config
from headend.cli.common import (
    OK,
    Progress,
    Sub,
    add_command,
    open_headend,
    parse_time,
    write_atomic,
    zone,
)
from headend.mdms import export


def add(sub: Sub, common: argparse.ArgumentParser) -> None:
    p = add_command(
        sub, common, "export", "a meter's intervals for a period, in engineering units, CSV or JSON"
    )
    p.add_argument("meter", type=int)
    p.add_argument("--start", required=True, help="ISO date/time in --tz (or UTC s)")
    p.add_argument("--end", required=True, help="exclusive end")
    p.add_argument("--tz", help="IANA time zone of the output (default: report_tz)")
    p.add_argument("--format", choices=export.FORMATS, default="csv")
    p.add_argument(
        "--output",
        "-o",
        type=Path,
        help="write to this file, whole or not at all (default: stdout)",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace, cfg: Config) -> int:
    tz = zone(args.tz or cfg.report_tz)
    start, end = parse_time(args.start, tz), parse_time(args.end, tz)
    fmt = "json" if args.json else args.format
    with open_headend(cfg) as he:
        meter = he.meter(args.meter)
        progress = Progress(f"export meter {args.meter}")
        rows = export.rows(he.ctx.store, args.meter, start, end, progress)
        text = export.render(meter, rows, fmt, tz)
        progress.done()
    if args.output is None:
        sys.stdout.write(text)
        return OK
    write_atomic(args.output, text)
    print(f"wrote {args.output}", file=sys.stderr)
    return OK
