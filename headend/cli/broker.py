"""`headend broker config DIR`: mosquitto.conf, password file and ACL file for a site;
`headend broker password NAME -o FILE`: one named login's MQTT password, for its owner.

The logins derive from the site master key (the config's ``master_key_file``
or ``master_key``), as
the meters and the head-end derive them (SPEC "MQTT"), so no password is typed,
printed or passed on a command line. Run it again after adding meters,
then restart mosquitto (its ACL plugin reads acl.json at start).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from headend import masterkey
from headend.api import Config, brokerconf, pki
from headend.cli.common import OK, Sub, Usage, add_command, emit, open_headend
from headend.errors import ConfigError
from headend.secretfile import write_private
from headend.store.parties import Parties


def add(sub: Sub, common: argparse.ArgumentParser) -> None:
    p = add_command(sub, common, "broker", "the MQTT broker's configuration (mosquitto)")
    bsub = p.add_subparsers(dest="broker_command", required=True, metavar="SUBCOMMAND")
    c = bsub.add_parser(
        "config",
        parents=[common],
        help="write DIR/mosquitto.conf, DIR/passwd, DIR/acl.json (0600) for the site",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    c.add_argument("dir", type=Path, metavar="DIR", help="where the files go")
    c.add_argument("--meters", default="", metavar="IDS", help="meter ids admitted: 1001-1003,2000")
    c.add_argument(
        "--gateway",
        action="append",
        default=[],
        metavar="NAME:IDS",
        help="one login carrying these meters' topics (e.g. gw1:100001-101000); repeatable. "
        "Its meters need no login of their own (meters log in each as itself by default)",
    )
    c.add_argument(
        "--worker",
        action="append",
        metavar="NAME",
        help="a head-end worker's login; repeatable (default: the broker URL's user, "
        "else the config's worker)",
    )
    c.add_argument(
        "--recipient", action="append", default=[], metavar="NAME", help="a notification recipient"
    )
    c.add_argument(
        "--realtime-reader",
        action="append",
        default=[],
        metavar="NAME[:IDS]",
        help="a real-time subscriber's login (H04): it may read the real-time topic of every "
        "meter, or of these meters only (e.g. acme:1001-1003); repeatable",
    )
    c.add_argument(
        "--realtime-parties",
        action="store_true",
        help="a real-time reader for each third party of the portal (`headend parties`, from "
        "the database), of its granted meters only (T01); a revoked party or one with no "
        "meters gets none. Run again after a grant or a revocation",
    )
    c.add_argument("--pki", type=Path, metavar="DIR", help="the `headend pki init` dir (TLS)")
    c.add_argument("--port", type=int, default=8883, help="TLS listener port (default 8883)")
    c.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    c.add_argument(
        "--plain-port", type=int, metavar="PORT", help="also a plain listener (same logins)"
    )
    c.add_argument("--run-as", metavar="USER", help="mosquitto's user (default: you)")
    c.add_argument("--log", type=Path, metavar="FILE", help="mosquitto's log file")
    c.add_argument("--persistence", type=Path, metavar="DIR", help="keep sessions here")
    c.add_argument("--dev", action="store_true", help="allow the all-zero development master key")
    c.set_defaults(run=run)
    pw = bsub.add_parser(
        "password",
        parents=[common],
        help="a named login's MQTT password (a recipient, a real-time reader, a gateway, a "
        "worker), to a 0600 file for its owner; never printed",
        description="Write the MQTT password of login NAME, as `headend broker config` derives "
        "it from the site master key, to FILE (mode 0600, replaced). Meters get theirs at "
        "provisioning.",
    )
    pw.add_argument("name", metavar="NAME", help="the login (not a meter id)")
    pw.add_argument("-o", "--output", type=Path, required=True, metavar="FILE", help="file (0600)")
    pw.add_argument("--dev", action="store_true", help="allow the all-zero development master key")
    pw.set_defaults(run=password)


def _master(args: argparse.Namespace, cfg: Config) -> bytes:
    master = masterkey.load(cfg)  # a key file open to others stops here
    if masterkey.is_dev(master) and not args.dev:
        raise Usage(
            "refusing the development master key (all zeros): make one with `headend keys "
            "init PATH` and set `master_key_file` in the config, or pass --dev for a lab"
        )
    return master


def password(args: argparse.Namespace, cfg: Config) -> int:
    name, out = brokerconf.check_name(args.name, "login"), args.output
    master = _master(args, cfg)
    if not out.parent.is_dir():
        raise Usage(f"cannot write {out}: no folder {out.parent}")
    write_private(out, brokerconf.password_of(master, name) + "\n")
    emit(
        args,
        {"login": name, "file": str(out), "mode": "0600"},
        lambda: f"the MQTT password of login {name} written to {out} (0600)",
    )
    return OK


def party_readers(cfg: Config) -> list[brokerconf.Reader]:
    """A reader of its granted meters for each third party that may use the portal (T01):
    never one of every meter (an empty set grants nothing)."""
    with open_headend(cfg) as he:
        parties = Parties(he.ctx.db).rows()
    out = []
    for p in parties:
        if p.revoked_ms is not None or not p.meters:
            continue
        try:
            name = brokerconf.check_name(p.name, "party")
        except ConfigError as e:
            raise Usage(f"{e}: rename it, or give its readers with --realtime-reader") from None
        out.append(brokerconf.Reader(name, tuple(sorted(p.meters))))
    return out


def run(args: argparse.Namespace, cfg: Config) -> int:
    master = _master(args, cfg)
    if args.pki is None:
        raise Usage(
            "--pki DIR is needed (make it with `headend pki init DIR`): TLS is not optional"
        )
    files = pki.Pki(args.pki.resolve())
    if not (files.ca.exists() and files.server_cert.exists() and files.server_key.exists()):
        raise Usage(f"--pki {args.pki}: no CA and server certificate there (headend pki init)")
    for port in (args.port, args.plain_port):
        if port is not None and not 0 < port < 65536:
            raise Usage(f"port {port}: expected 1..65535")
    workers = tuple(args.worker or (cfg.mqtt_user or cfg.worker,))
    site = brokerconf.Site(
        meters=brokerconf.parse_meters(args.meters),
        workers=workers,
        recipients=tuple(args.recipient),
        gateways=tuple(brokerconf.parse_gateway(g) for g in args.gateway),
        readers=(
            *(brokerconf.parse_reader(r) for r in args.realtime_reader),
            *(party_readers(cfg) if args.realtime_parties else ()),
        ),
        notify_topic=cfg.notify_topic,
        realtime_topic=cfg.realtime_topic,
    )
    listeners = [
        brokerconf.Listener(args.port, args.host, files.ca, files.server_cert, files.server_key)
    ]
    if args.plain_port is not None:
        listeners.append(brokerconf.Listener(args.plain_port, args.host))
    out = brokerconf.write(
        args.dir,
        site,
        master,
        listeners,
        args.run_as,
        args.log.resolve() if args.log else None,
        args.persistence.resolve() if args.persistence else None,
    )
    # meters each real-time reader may read ("all": a reader of every meter)
    readers = {r.name: len(r.meters) or "all" for r in site.readers}
    summary = {
        "conf": str(out.conf),
        "meters": len(site.meters),
        "workers": list(site.workers),
        "recipients": list(site.recipients),
        "gateways": {g.name: len(g.meters) for g in site.gateways},
        "realtime_readers": readers,
        "listeners": [f"{li.host}:{li.port} {'TLS' if li.ca else 'plain'}" for li in listeners],
    }
    if args.json:
        print(json.dumps(summary))
        return OK
    print(f"wrote {out.conf}, {out.passwd}, {out.acl} (0600)")
    print(
        f"logins: {len(site.meters)} meter(s), worker(s) {', '.join(site.workers)}"
        + (f", recipient(s) {', '.join(site.recipients)}" if site.recipients else "")
        + (
            ", gateway(s) " + ", ".join(f"{g.name} ({len(g.meters)} meters)" for g in site.gateways)
            if site.gateways
            else ""
        )
        + (
            ", real-time reader(s) " + ", ".join(f"{n} ({k} meters)" for n, k in readers.items())
            if site.readers
            else ""
        )
    )
    print("listening on " + ", ".join(summary["listeners"]))  # type: ignore[arg-type]
    print(f"start it: mosquitto -c {out.conf}")
    return OK
