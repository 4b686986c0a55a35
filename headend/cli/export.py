"""`headend export METERS --start --end`: an ad-hoc export (D11), streamed;
`headend exports add|list|remove|runs`: routine exports the service runs.

METERS is ``1``, ``1,2,10-20``, ``group:N`` (a read group) or ``all``. The
output is CSV, JSON or Green Button / ESPI XML, in the requester's zone, to
stdout or to a file written whole or not at all (a temp file beside it,
renamed when complete). Progress goes to stderr when it is a terminal.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from headend.adcs.exports import parse_what, routine_schedule
from headend.api import Config
from headend.cli.common import (
    OK,
    Progress,
    Sub,
    Usage,
    add_command,
    atomic_text,
    emit,
    now_ms,
    open_headend,
    parse_time,
    table,
    when,
    zone,
)
from headend.mdms import export
from headend.redact import redact
from headend.store import exports as store_exports
from headend.store.exports import Exports, ExportSchedule, Selection


def add(sub: Sub, common: argparse.ArgumentParser) -> None:
    p = add_command(
        sub,
        common,
        "export",
        "intervals, registers, events of meters for a period: CSV, JSON or ESPI (D11)",
    )
    p.add_argument("meters", help="1 | 1,2,10-20 | group:N | all")
    p.add_argument("--start", required=True, help="ISO date/time in --tz (or UTC s)")
    p.add_argument("--end", required=True, help="exclusive end")
    p.add_argument("--tz", help="IANA time zone of the output (default: report_tz)")
    p.add_argument("--format", choices=export.FORMATS, default="csv")
    p.add_argument(
        "--what",
        default=",".join(export.WHAT),
        help="comma-separated: intervals, registers, events (default: all three)",
    )
    p.add_argument(
        "--output",
        "-o",
        type=Path,
        help="write to this file, whole or not at all (default: stdout)",
    )
    p.set_defaults(run=run)

    r = add_command(sub, common, "exports", "routine exports: add, list, remove, runs (D11)")
    rs = r.add_subparsers(dest="action", required=True, metavar="ACTION")
    a = rs.add_parser("add", help="add or replace a routine export", parents=[common])
    a.add_argument("name")
    a.add_argument("--meters", required=True, help="1,2,10-20 | group:N | all")
    a.add_argument("--format", choices=export.FORMATS, default="csv")
    a.add_argument(
        "--what",
        default=",".join(export.WHAT),
        help="intervals, registers, events; add validation for a D14 report alongside",
    )
    a.add_argument("--tz", help="IANA zone of the output and of --at (default: report_tz)")
    a.add_argument("--at", default="02:00", help="local time of day to run (HH:MM)")
    a.add_argument("--every", type=int, default=1, help="run every N days (default 1)")
    a.add_argument("--days", type=int, default=1, help="export the N local days before (1)")
    a.add_argument("--to", required=True, help="a directory, or an http(s):// URL (POST)")
    rs.add_parser("list", help="the routine exports", parents=[common])
    rm = rs.add_parser("remove", help="remove a routine export and its runs", parents=[common])
    rm.add_argument("name")
    q = rs.add_parser(
        "run", help="queue an ad-hoc run (the service runs it after routine work)",
        parents=[common],
    )  # fmt: skip
    q.add_argument("name")
    q.add_argument("--start", required=True, help="ISO date/time in the export's zone")
    q.add_argument("--end", required=True, help="exclusive end")
    ru = rs.add_parser("runs", help="runs: state, attempts, size, target", parents=[common])
    ru.add_argument("name", nargs="?")
    r.set_defaults(run=run_routine)


def run(args: argparse.Namespace, cfg: Config) -> int:
    tz = zone(args.tz or cfg.report_tz)
    start, end = parse_time(args.start, tz), parse_time(args.end, tz)
    fmt = "json" if args.json else args.format
    sel = Selection(args.meters)
    with open_headend(cfg) as he:
        db = he.ctx.store.db
        store_exports.for_streaming(db)
        unknown = store_exports.missing_ids(db, sel)
        if unknown:
            raise Usage(f"meter {unknown[0]} is not registered")
        progress = Progress("export")
        total = store_exports.count(db, sel) if progress.tty else None
        req = export.Request(
            store_exports.meter_ids(db, sel), start, end, tz, fmt, parse_what(args.what), total
        )

        def shown(done: int, of: int | None) -> None:
            progress(done, of) if of else progress.note(f"{done} meter(s)")

        if args.output is None:
            counts = export.write(he.ctx.store, req, sys.stdout, shown)
        else:
            with atomic_text(args.output) as f:
                counts = export.write(he.ctx.store, req, f, shown)
        progress.done()
    if args.output is not None:
        print(
            f"wrote {args.output}: {counts.meters} meter(s), {counts.intervals} intervals, "
            f"{counts.registers} registers, {counts.events} events",
            file=sys.stderr,
        )
    return OK


def run_routine(args: argparse.Namespace, cfg: Config) -> int:
    with open_headend(cfg) as he:
        ex = Exports(he.ctx.store.db)
        if args.action == "add":
            s = schedule_of(args, cfg)
            ex.put(s, now_ms())
            emit(args, {"added": s.name}, lambda: f"routine export {s.name!r} saved")
        elif args.action == "list":
            # a URL's password never reaches a terminal or a log
            rows = [replace(s, destination=redact(s.destination)) for s in ex.schedules()]
            emit(
                args,
                [vars(s) for s in rows],
                lambda: table(
                    ("name", "meters", "what", "format", "tz", "at", "every", "days", "to"),
                    [
                        (
                            s.name,
                            s.meters,
                            s.what,
                            s.fmt,
                            s.tz,
                            s.at,
                            s.every_days,
                            s.days,
                            s.destination,
                        )
                        for s in rows
                    ],  # fmt: skip
                ),
            )
        elif args.action == "run":
            sched = {s.name: s for s in ex.schedules()}.get(args.name)
            if sched is None:
                raise Usage(f"no routine export named {args.name!r}")
            tz = zone(sched.tz)
            start, end = parse_time(args.start, tz), parse_time(args.end, tz)
            if end <= start:
                raise Usage("--end must be after --start")
            period = ex.queue(args.name, start, end, now_ms())
            emit(
                args,
                {"queued": args.name, "period": period},
                lambda: f"ad-hoc run of {args.name!r} queued (period {period})",
            )
        elif args.action == "remove":
            if not ex.remove(args.name):
                raise Usage(f"no routine export named {args.name!r}")
            emit(args, {"removed": args.name}, lambda: f"routine export {args.name!r} removed")
        else:
            runs = ex.runs(args.name)
            emit(
                args,
                [vars(r) for r in runs],
                lambda: table(
                    (
                        "name",
                        "period",
                        "state",
                        "attempts",
                        "started",
                        "done",
                        "bytes",
                        "rows",
                        "target / error",
                    ),
                    [
                        (
                            r.name,
                            r.period,
                            r.state,
                            r.attempts,
                            when(r.started_ms),
                            when(r.done_ms),
                            r.size if r.size is not None else "-",
                            r.rows if r.rows is not None else "-",
                            r.error or r.target or "-",
                        )
                        for r in runs
                    ],
                ),  # fmt: skip
            )
    return OK


def schedule_of(args: argparse.Namespace, cfg: Config) -> ExportSchedule:
    """The schedule the arguments describe; InvalidData, ConfigError for what cannot run."""
    return routine_schedule(
        args.name, args.meters, args.what, args.format, args.tz or cfg.report_tz, args.at,
        args.every, args.days, args.to,
    )  # fmt: skip
