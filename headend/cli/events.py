"""`headend events list|deliveries|ack|routes`: events, deliveries, routing (D09)."""

from __future__ import annotations

import argparse

from headend.api import Config, Headend
from headend.cli.common import (
    OK,
    Sub,
    Usage,
    add_command,
    dash,
    emit,
    non_negative,
    now_ms,
    open_headend,
    parse_time,
    secs,
    table,
    when,
    zone,
)
from headend.mdms import routing
from headend.mdms.ingest import iso
from protocol.codes import event_name


def add(sub: Sub, common: argparse.ArgumentParser) -> None:
    p = add_command(sub, common, "events", "meter events, deliveries, acks and routes (D09)")
    esub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    el = esub.add_parser("list", help="stored events, newest first", parents=[common])
    el.add_argument("--meter", type=int)
    el.add_argument("--since", help="ISO date/time or UTC s")
    el.add_argument("--limit", type=non_negative, default=50)
    ed = esub.add_parser(
        "deliveries", help="messages to recipients and their acks", parents=[common]
    )
    ed.add_argument("--limit", type=non_negative, default=50)
    ea = esub.add_parser("ack", help="acknowledge a delivery for its recipient", parents=[common])
    ea.add_argument("delivery", type=int)
    er = esub.add_parser("routes", help="the routing table: list, add, remove", parents=[common])
    rsub = er.add_subparsers(dest="route_action", required=True, metavar="ROUTE_ACTION")
    rsub.add_parser("list", help="every route", parents=[common])
    for name, text in (("add", "route an event code to a recipient"), ("remove", "delete a route")):
        r = rsub.add_parser(name, help=text, parents=[common])
        r.add_argument("code", type=int, help="event code 1-255, 0 = every event")
        r.add_argument("recipient", help="recipient name: gets <notify_topic>/<name>")
    p.set_defaults(run=run)


def run(args: argparse.Namespace, cfg: Config) -> int:
    with open_headend(cfg) as he:
        if args.action == "ack":
            if not routing.acknowledge(he.ctx, args.delivery, None, now_ms()):
                raise Usage(f"delivery {args.delivery}: unknown or acknowledged already")
            emit(
                args,
                {"delivery": args.delivery, "acked": True},
                lambda: f"delivery {args.delivery} acknowledged",
            )
            return OK
        if args.action == "routes":
            return _routes(args, he)
        if args.action == "deliveries":
            return _deliveries(args, he)
        since = parse_time(args.since, zone(cfg.report_tz)) if args.since else 0
        evs = he.ctx.events.recent(args.meter, since, args.limit)
    data = [
        {
            "event_id": e,
            "meter": m,
            "time": iso(t),
            "code": c,
            "name": event_name(c),
            "data": d,
            "received_at": iso(r),
        }
        for e, m, t, c, d, r in evs
    ]
    emit(
        args,
        data,
        lambda: table(
            ["id", "meter", "time", "code", "name", "data", "received"],
            [
                [x["event_id"], x["meter"], x["time"], x["code"], x["name"], x["data"]]
                + [x["received_at"]]
                for x in data
            ],
        ),
    )
    return OK


def _deliveries(args: argparse.Namespace, he: Headend) -> int:
    data = [
        {
            "delivery": d.delivery_id,
            "recipient": d.recipient,
            "kind": d.kind,
            "state": d.state.value,
            "event_id": d.event_id,
            "job": d.job_id,
            "attempts": d.attempts,
            "created": when(d.created_ms),
            "sent": when(d.sent_ms),
            "acked": when(d.acked_ms),
            "routing_ms": None if d.sent_ms is None else d.sent_ms - d.created_ms,
        }
        for d in he.ctx.events.deliveries(limit=args.limit)
    ]
    emit(
        args,
        data,
        lambda: table(
            ["id", "recipient", "kind", "state", "sends", "created", "acked", "routing"],
            [
                [d["delivery"], d["recipient"], d["kind"], d["state"], d["attempts"]]
                + [d["created"], dash(d["acked"]), secs(d["routing_ms"])]
                for d in data
            ],
        ),
    )
    return OK


def _routes(args: argparse.Namespace, he: Headend) -> int:
    events = he.ctx.events
    if args.route_action == "add":
        added = events.add_route(args.code, args.recipient, now_ms())
        emit(
            args,
            {"code": args.code, "recipient": args.recipient, "added": added},
            lambda: (
                f"event {args.code or 'all'} -> {args.recipient}: "
                + ("added" if added else "was there already")
            ),
        )
        return OK
    if args.route_action == "remove":
        if not events.remove_route(args.code, args.recipient):
            raise Usage(f"no route of event {args.code} to {args.recipient}")
        emit(
            args,
            {"code": args.code, "recipient": args.recipient, "removed": True},
            lambda: f"event {args.code or 'all'} -> {args.recipient}: removed",
        )
        return OK
    data = [
        {
            "code": r.code,
            "name": "all" if r.code == 0 else event_name(r.code),
            "recipient": r.recipient,
            "topic": he.ctx.notify_topic(r.recipient),
        }
        for r in events.routes()
    ]
    emit(
        args,
        data,
        lambda: table(
            ["code", "event", "recipient", "topic"],
            [[d["code"], d["name"], d["recipient"], d["topic"]] for d in data],
        ),
    )
    return OK
