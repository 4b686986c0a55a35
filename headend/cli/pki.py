"""`headend pki init DIR`: the broker's CA and certificates (headend.pki)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from headend.api import Config, pki
from headend.cli.common import OK, Sub, add_command


def add(sub: Sub, common: argparse.ArgumentParser) -> None:
    p = add_command(sub, common, "pki", "the broker's TLS: a CA, a server certificate, clients'")
    psub = p.add_subparsers(dest="pki_command", required=True, metavar="SUBCOMMAND")
    init = psub.add_parser(
        "init",
        parents=[common],
        help="make a CA and a server certificate in DIR (an existing CA is kept)",
        description="Make DIR/ca.pem (+ ca.key), DIR/server.pem (+ server.key) and, with "
        "--client, DIR/client-NAME.pem (+ .key); private keys 0600. Clients pin ca.pem.",
    )
    init.add_argument("dir", type=Path, metavar="DIR", help="where the files go")
    init.add_argument(
        "--host",
        action="append",
        metavar="NAME",
        help="a name or IP address of the broker, in the server certificate; repeatable "
        f"(default: {', '.join(pki.DEFAULT_HOSTS)})",
    )
    init.add_argument(
        "--client", action="append", default=[], metavar="NAME", help="a client certificate"
    )
    init.add_argument("--force", action="store_true", help="make a new CA and everything anew")
    init.set_defaults(run=run)


def run(args: argparse.Namespace, cfg: Config) -> int:
    hosts = tuple(args.host) if args.host else pki.DEFAULT_HOSTS
    made, written = pki.init(args.dir, hosts, tuple(args.client), args.force)
    if args.json:
        print(json.dumps({"ca": str(made.ca), "written": [str(w) for w in written]}))
        return OK
    for path in written:
        print(f"wrote {path}")
    if not written:
        print(f"{made.dir}: all there already (--force makes everything anew)")
    print(f"clients pin {made.ca}; the broker uses {made.server_cert} and {made.server_key}")
    return OK
