"""`headend apikeys add|list|revoke`: operators' keys for the HTTP API. A key is printed
once, at ``add``; the store keeps only its sha256."""

from __future__ import annotations

import argparse
import dataclasses

from headend.api import Config
from headend.cli.common import OK, Sub, add_command, dash, emit, now_ms, open_headend, table, when
from headend.store.apikeys import ApiKeys


def add(sub: Sub, common: argparse.ArgumentParser) -> None:
    p = add_command(sub, common, "apikeys", "operators' API keys of the HTTP API")
    s = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    a = s.add_parser("add", help="a new key, printed once (keep it)", parents=[common])
    a.add_argument("name", help="who or what uses the key")
    s.add_parser("list", help="keys (names, dates; never the keys)", parents=[common])
    r = s.add_parser("revoke", help="refuse the key from now on", parents=[common])
    r.add_argument("name")
    p.set_defaults(run=run)


def run(args: argparse.Namespace, cfg: Config) -> int:
    with open_headend(cfg) as he:
        keys = ApiKeys(he.ctx.db)
        if args.action == "add":
            key = keys.add(args.name, now_ms())
            emit(args, {"name": args.name, "key": key}, lambda: key)
        elif args.action == "revoke":
            keys.revoke(args.name, now_ms())
            emit(args, {"name": args.name, "revoked": True}, lambda: f"revoked {args.name}")
        else:
            rows = keys.rows()
            emit(
                args,
                [dataclasses.asdict(k) for k in rows],
                lambda: table(
                    ["name", "created", "revoked"],
                    [
                        (k.name, when(k.created_ms), dash(k.revoked_ms and when(k.revoked_ms)))
                        for k in rows
                    ],
                ),
            )
    return OK
