"""`headend groups [--assign]`: read-group loads over the nightly window (H01)."""

from __future__ import annotations

import argparse
from typing import Any

from headend.adcs import scheduling
from headend.adcs.groups import imbalance
from headend.api import Config
from headend.cli.common import OK, Sub, add_command, emit, now_ms, open_headend, table


def add(sub: Sub, common: argparse.ArgumentParser) -> None:
    p = add_command(sub, common, "groups", "read-group loads over the nightly window (H01)")
    p.add_argument(
        "--assign",
        action="store_true",
        help="place unscheduled meters now (the service sends their schedules)",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace, cfg: Config) -> int:
    with open_headend(cfg) as he:
        ctx = he.ctx
        placed = scheduling.assign(ctx, now_ms()) if args.assign else {}
        loads = ctx.registry.group_loads()
        waiting = len(ctx.registry.unscheduled())
    w = ctx.window
    groups: list[dict[str, Any]] = [
        {"group": g, "window": w.label(g), "meters": loads.get(g, 0)} for g in range(w.count)
    ]
    data = {
        "capacity": w.capacity,
        "unscheduled": waiting,
        "assigned_now": len(placed),
        "imbalance": imbalance(w, loads),
        "groups": groups,
    }
    emit(
        args,
        data,
        lambda: (
            table(
                ["group", "window", "meters", "fill"],
                [
                    [g["group"], g["window"], g["meters"], f"{100 * g['meters'] / w.capacity:.2f}%"]
                    for g in groups
                ],
            )
            + f"\nunscheduled: {waiting}; imbalance (largest - smallest group): "
            + str(data["imbalance"])
            + (f"; placed now: {len(placed)}" if args.assign else "")
        ),
    )
    return OK
