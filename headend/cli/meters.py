"""`headend meters list|show ID|accept-layout ID`: registered meters."""

from __future__ import annotations

import argparse
from typing import Any

from headend.adcs import registry
from headend.api import Config, Headend
from headend.cli.common import OK, Sub, add_command, dash, emit, now_ms, open_headend, table, when
from headend.mdms.ingest import iso


def add(sub: Sub, common: argparse.ArgumentParser) -> None:
    p = add_command(sub, common, "meters", "list registered meters, or show one")
    msub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    msub.add_parser("list", help="all meters (group, link, registration)", parents=[common])
    ms = msub.add_parser("show", help="one meter: channels, links, schedules", parents=[common])
    ms.add_argument("meter", type=int)
    ma = msub.add_parser(
        "accept-layout",
        help="apply the channel layout a meter's held register asks for (the operator's call)",
        parents=[common],
    )
    ma.add_argument("meter", type=int)
    p.set_defaults(run=run)


def _meter(he: Headend, mid: int) -> dict[str, Any]:
    m = he.meter(mid)
    grp, offset = he.ctx.registry.group_of(mid)
    return {
        "meter": mid,
        "fw_version": m.fw_version,
        "interval_s": m.interval_s,
        "utc_offset_min": m.utc_offset_min,
        "meter_multiplier": m.meter_multiplier,
        "capacity_days": m.capacity_days,
        "registered_at": iso(m.registered_at),
        "read_group": m.read_group if grp is not None else "unscheduled",
        "read_offset_s": offset,
        "transport": m.transport,
        "channels": [
            {
                "kind": c.kind.name.lower(),
                "unit": c.unit.symbol,
                "multiplier": c.multiplier,
                "scaler": c.scaler,
            }
            for c in m.channels
        ],
    }


def run(args: argparse.Namespace, cfg: Config) -> int:
    with open_headend(cfg) as he:
        if args.action == "show":
            return _show(args, he)
        if args.action == "accept-layout":
            m = registry.accept_layout(he.ctx, args.meter, now_ms())
            emit(
                args,
                _meter(he, m.meter_id),
                lambda: (
                    f"meter {m.meter_id}: {len(m.channels)} channel layout accepted; "
                    "its next register is acknowledged"
                ),
            )
            return OK
        meters = [_meter(he, mid) for mid in he.meters()]
    emit(
        args,
        meters,
        lambda: (
            table(
                ["meter", "fw", "interval", "channels", "read group", "transport", "registered"],
                [
                    [
                        m["meter"],
                        m["fw_version"],
                        f"{m['interval_s']} s",
                        len(m["channels"]),
                        m["read_group"],
                        dash(m["transport"]),
                        m["registered_at"],
                    ]
                    for m in meters
                ],
            )
            + f"\n{len(meters)} meter(s)"
        ),
    )
    return OK


def _show(args: argparse.Namespace, he: Headend) -> int:
    d = _meter(he, args.meter)
    d["links"] = [
        {"transport": t, "first_seen": when(f), "last_seen": when(ls), "frames": n}
        for _, t, f, ls, n in he.ctx.registry.links(args.meter)
    ]
    d["schedules"] = [
        {"slot": s.spec.slot, "state": s.state.value, "source": s.source}
        for s in he.schedules(args.meter)
    ]
    held = he.ctx.layouts.get(args.meter)
    d["layout_held"] = (
        None if held is None else {"channels": held[0].get("channels"), "since": when(held[2])}
    )

    def human() -> str:
        head = {
            k: v for k, v in d.items() if k not in ("channels", "links", "schedules", "layout_held")
        }
        if d["layout_held"] is not None:
            head["layout_held"] = (
                f"{len(d['layout_held']['channels'] or [])} channel(s) since "
                f"{d['layout_held']['since']}: `headend meters accept-layout {args.meter}`"
            )
        if head["read_offset_s"] is None:
            head["read_offset_s"] = "- (not in a read group yet)"
        if head["transport"] is None:
            head["transport"] = "- (not heard since registration)"
        out = [f"{k:16} {dash(v)}" for k, v in head.items()]
        out += [
            "",
            table(
                ["channel", "kind", "unit", "multiplier", "scaler"],
                [
                    [i, c["kind"], c["unit"], c["multiplier"], c["scaler"]]
                    for i, c in enumerate(d["channels"])
                ],
            ),
        ]
        out += [
            "",
            table(
                ["transport", "first seen", "last seen", "frames"],
                [
                    [x["transport"], x["first_seen"], x["last_seen"], x["frames"]]
                    for x in d["links"]
                ],
            )
            if d["links"]
            else "links: none yet",
        ]
        out += [
            "",
            table(
                ["slot", "state", "source"],
                [[s["slot"], s["state"], s["source"]] for s in d["schedules"]],
            )
            if d["schedules"]
            else "schedules: none",
        ]
        return "\n".join(out)

    emit(args, d, human)
    return OK
