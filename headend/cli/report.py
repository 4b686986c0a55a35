"""`headend report NAME [--day YYYY-MM-DD] [--json|--csv]`: a report, at once (D10).

Every report any family registers (`headend.reports.registry`) is offered, so a
family added later appears here without a change. A human table by default;
``--json``: title, totals and rows as records; ``--csv``: a header and the rows.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys

from headend.api import Config, Headend
from headend.cli.common import OK, Sub, Usage, add_command, dash, now_ms, open_headend, table
from headend.reports import Table, registry


def add(sub: Sub, common: argparse.ArgumentParser) -> None:
    reports = registry()
    names = "; ".join(f"{r.name}: {r.help}" for r in reports.values())
    p = add_command(sub, common, "report", "missing-data reports and statistics, at once (D10)")
    p.add_argument("name", choices=sorted(reports), metavar="NAME", help=names)
    p.add_argument("--day", metavar="YYYY-MM-DD", help="only that day (stats: collection day)")
    p.add_argument("--csv", action="store_true", help="CSV: a header line, then the rows")
    p.set_defaults(run=run)


def render(t: Table, fmt: str) -> str:
    """The table as ``text``, ``json`` or ``csv``."""
    if fmt == "json":
        return json.dumps(
            {"report": t.title, "totals": dict(t.totals), "rows": t.records()}, indent=1
        )
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(t.columns)
        w.writerows(["" if c is None else c for c in r] for r in t.rows)
        return buf.getvalue().rstrip("\n")
    totals = ", ".join(f"{k} {v}" for k, v in t.totals.items())
    head = f"{t.title}" + (f" ({totals})" if totals else "")
    body = table(t.columns, [[dash(c) for c in r] for r in t.rows])
    return "\n".join([head, *(line.rstrip() for line in body.splitlines())])


def run(args: argparse.Namespace, cfg: Config) -> int:
    if args.json and args.csv:
        raise Usage("--json and --csv: choose one")
    opts = {"day": args.day} if args.day is not None else {}
    with open_headend(cfg) as he:
        t = Headend.report(he, args.name, now_ms(), **opts)
    fmt = "json" if args.json else "csv" if args.csv else "text"
    sys.stdout.write(render(t, fmt) + "\n")
    return OK
