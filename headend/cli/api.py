"""`headend api`: serve the HTTP API (operator API, third-party portal) on its own,
HTTPS with the `headend pki` server certificate unless ``--api-insecure``."""

from __future__ import annotations

import argparse
import dataclasses

from headend.api import Config
from headend.cli.common import OK, Sub, add_command
from headend.http.server import server


def add(sub: Sub, common: argparse.ArgumentParser) -> None:
    p = add_command(sub, common, "api", "serve the HTTP API and the third-party portal")
    p.add_argument(
        "--listen",
        metavar="HOST:PORT",
        help="where to listen (default: the config's api_listen, else 127.0.0.1:8443)",
    )
    p.add_argument(
        "--pki", metavar="DIR", help="`headend pki init` directory (default: api_pki_dir)"
    )
    p.add_argument(
        "--api-insecure",
        action="store_true",
        help="plain HTTP, no TLS (warned in the log; a lab only)",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace, cfg: Config) -> int:
    changes: dict[str, object] = {}
    if args.pki:
        changes["api_pki_dir"] = args.pki
    if args.api_insecure:
        changes["api_insecure"] = True
    cfg = dataclasses.replace(cfg, **changes)  # type: ignore[arg-type]
    srv = server(cfg, args.listen or cfg.api_listen or "127.0.0.1:8443")
    srv.run()  # Ctrl-C / SIGTERM: uvicorn shuts down cleanly
    return OK
