"""`headend schedule set|list|cancel`: non-default read schedules (H07)."""

from __future__ import annotations

import argparse

from headend.adcs import scheduling
from headend.adcs.scheduling import spec_of
from headend.api import Config
from headend.cli.common import (
    OK,
    Sub,
    add_command,
    dash,
    emit,
    now_ms,
    open_headend,
    parse_time,
    table,
    when,
    zone,
)
from protocol.codes import WHAT_ALL, nack_name


def add(sub: Sub, common: argparse.ArgumentParser) -> None:
    p = add_command(sub, common, "schedule", "non-default read schedules: set, list, cancel (H07)")
    ssub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    ss = ssub.add_parser("set", help="set or update a slot (1-3)", parents=[common])
    ss.add_argument("meter", type=int)
    ss.add_argument("--slot", type=int, required=True, choices=(1, 2, 3))
    ss.add_argument(
        "--every", required=True, help="period: 15m, 1h, 7200 (>= the meter's interval, < 1 day)"
    )
    ss.add_argument(
        "--at", default="0", help="offset in the period (HH:MM from local midnight, or 5m)"
    )
    ss.add_argument("--start", help="first day/time (ISO, --tz); default now")
    ss.add_argument("--end", help="last day/time (ISO); default ongoing")
    ss.add_argument(
        "--what", type=int, default=WHAT_ALL, help=f"what to send (bits, default {WHAT_ALL} = all)"
    )
    ss.add_argument("--source", required=True, help="the system or party asking (logged)")
    ss.add_argument("--tz", help="time zone of --start/--end")
    sl = ssub.add_parser("list", help="schedules and their ack state", parents=[common])
    sl.add_argument("meter", type=int, nargs="?")
    sc = ssub.add_parser("cancel", help="cancel a slot (1-3)", parents=[common])
    sc.add_argument("meter", type=int)
    sc.add_argument("--slot", type=int, required=True, choices=(1, 2, 3))
    sc.add_argument("--source", required=True, help="the system or party asking (logged)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace, cfg: Config) -> int:
    with open_headend(cfg) as he:
        if args.action == "set":
            tz = zone(args.tz or cfg.report_tz)
            start = parse_time(args.start, tz) if args.start else 0
            end = parse_time(args.end, tz) if args.end else 0
            spec = spec_of(args.meter, args.slot, args.every, args.at, start, end, args.what)
            he.set_schedule(spec, args.source, now_ms())
            emit(
                args,
                {"meter": args.meter, "slot": args.slot, "state": "pending"},
                lambda: f"{scheduling.describe(spec)}: pending (the service sends it)",
            )
            return OK
        if args.action == "cancel":
            scheduling.cancel_schedule(he.ctx, args.meter, args.slot, args.source, now_ms())
            emit(
                args,
                {"meter": args.meter, "slot": args.slot, "state": "pending"},
                lambda: f"slot {args.slot} of meter {args.meter}: cancel pending",
            )
            return OK
        rows = he.schedules(args.meter)
    data = [
        {
            "meter": s.spec.meter_id,
            "slot": s.spec.slot,
            "schedule": scheduling.describe(s.spec),
            "state": s.state.value,
            "source": s.source,
            "attempts": s.attempts,
            "sent": when(s.sent_ms),
            "acked": when(s.acked_ms),
            "flagged": when(s.flagged_ms),
            "reason": nack_name(s.reason) if s.reason else None,
        }
        for s in rows
    ]
    emit(
        args,
        data,
        lambda: table(
            ["meter", "slot", "schedule", "state", "source", "tries", "sent", "acked", "reason"],
            [
                [
                    d["meter"],
                    d["slot"],
                    d["schedule"],
                    d["state"],
                    d["source"],
                    d["attempts"],
                    d["sent"],
                    d["acked"],
                    dash(d["reason"]),
                ]
                for d in data
            ],
        ),
    )
    return OK
