"""`headend parties add|grant|revoke|curtail|list|log`: third parties of the portal
(T01-T06). ``add`` prints the party's key once; ``list`` shows today's on-demand use
against the quota; ``log PARTY`` its portal requests (T04)."""

from __future__ import annotations

import argparse
import dataclasses

from headend.api import Config
from headend.cli.common import OK, Sub, add_command, dash, emit, now_ms, open_headend, table, when
from headend.store.parties import Parties


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of 1 or more, got {text!r}")
    return int(text)


def add(sub: Sub, common: argparse.ArgumentParser) -> None:
    p = add_command(sub, common, "parties", "third parties of the portal, their meters, limits")
    s = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    a = s.add_parser("add", help="a new party; its key is printed once", parents=[common])
    a.add_argument("name")
    a.add_argument("--meters", required=True, help="its meters: ids and ranges, 1,2,10-20")
    a.add_argument("--rate-per-min", type=_positive, default=10, help="on-demand reads/min")
    a.add_argument("--daily-quota", type=_positive, default=100, help="on-demand reads/day")
    g = s.add_parser("grant", help="replace the party's meter set", parents=[common])
    g.add_argument("name")
    g.add_argument("--meters", required=True, help="ids and ranges, 1,2,10-20")
    r = s.add_parser("revoke", help="refuse the party from its next request", parents=[common])
    r.add_argument("name")
    c = s.add_parser("curtail", help="lower (or raise) its limits at once", parents=[common])
    c.add_argument("name")
    c.add_argument("--rate-per-min", type=_positive, help="on-demand reads/min")
    c.add_argument("--daily-quota", type=_positive, help="on-demand reads/day")
    s.add_parser("list", help="parties, limits, today's use", parents=[common])
    lg = s.add_parser("log", help="the party's portal requests (T04)", parents=[common])
    lg.add_argument("name")
    p.set_defaults(run=run)


def run(args: argparse.Namespace, cfg: Config) -> int:
    with open_headend(cfg) as he:
        parties = Parties(he.ctx.db)
        now = now_ms()
        if args.action == "add":
            key = parties.add(args.name, args.meters, args.rate_per_min, args.daily_quota, now)
            emit(args, {"name": args.name, "key": key}, lambda: key)
        elif args.action == "grant":
            parties.grant(args.name, args.meters)
            emit(args, {"name": args.name, "meters": args.meters}, lambda: "granted")
        elif args.action == "revoke":
            parties.revoke(args.name, now)
            emit(args, {"name": args.name, "revoked": True}, lambda: f"revoked {args.name}")
        elif args.action == "curtail":
            parties.curtail(args.name, args.rate_per_min, args.daily_quota)
            emit(args, {"name": args.name}, lambda: f"curtailed {args.name}")
        elif args.action == "log":
            parties.get(args.name)
            rows = parties.log_rows(args.name)
            emit(
                args,
                [dataclasses.asdict(r) for r in rows],
                lambda: table(
                    ["at", "method", "target", "status", "bytes", "ms", "request id", "sent"],
                    [
                        (
                            when(r.at_ms),
                            r.method,
                            r.target,
                            r.status,
                            r.bytes,
                            r.duration_ms,
                            r.request_id,
                            dash(r.sent_rows),
                        )
                        for r in rows
                    ],
                ),
            )
        else:
            listed = [(p, parties.use(p.name, now)) for p in parties.rows()]
            emit(
                args,
                [
                    {
                        "name": p.name,
                        "meters": p.meters_text,
                        "rate_per_min": p.rate_per_min,
                        "daily_quota": p.daily_quota,
                        "used_today": u[1],
                        "revoked": p.revoked_ms is not None,
                    }
                    for p, u in listed
                ],
                lambda: table(
                    ["name", "meters", "rate/min", "today/quota", "revoked"],
                    [
                        (
                            p.name,
                            p.meters_text,
                            p.rate_per_min,
                            f"{u[1]}/{p.daily_quota}",
                            when(p.revoked_ms) if p.revoked_ms else "-",
                        )
                        for p, u in listed
                    ],
                ),
            )
    return OK
