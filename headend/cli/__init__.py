"""`headend`: the operator's command line (and `python -m headend`).

    headend serve                         run the service (MQTT + serial + timers)
    headend db init|migrate|version       the store's schema
    headend meters list|show ID           registered meters
    headend read ID                       on-demand read: queue, wait, print (H05)
    headend schedule set|list|cancel      non-default schedules (H07)
    headend groups [--assign]             read-group loads (H01)
    headend events list|ack|routes ...    events, acknowledgements, routing (D09)
    headend log [--tail N] [--follow]     the activity log, newest last
    headend export METERS --start --end   intervals, registers, events: CSV/JSON/ESPI (D11)
    headend exports add|list|remove|runs  routine exports the service runs (D11)
    headend validate METERS --start --end usage validation per billing period (D14)
    headend pki init DIR                  the broker's CA and certificates (TLS)
    headend broker config DIR             mosquitto.conf, passwords, ACLs for the site
    headend broker password NAME -o FILE  a named login's MQTT password, for its owner
    headend keys init|show ID|rotate ID   the master key file, meters' key versions (M20)
    headend keys probe-key ID --operator OP -o FILE   an operator's optical probe key (M18)
    headend upload FILE                   a probe's download file, stored as manual (D12)
    headend report NAME [--day D] [--csv] missing-data reports, statistics (D03-D05, D08, D10)
    headend api [--listen HOST:PORT]      the HTTP API and third-party portal (HTTPS)
    headend apikeys add|list|revoke       operators' API keys (printed once)
    headend parties add|grant|revoke|curtail|list|log   portal parties (T01-T06)

One module per command group (`serve`, `db`, `meters`, `read`, `schedule`,
`groups`, `events`, `log`, `export`, `pki`, `broker`, `keys`, `upload`, `report`,
`validate`, `api`, `apikeys`, `parties`), each
with ``add(sub, common)`` (its arguments) and ``run(args, config) -> exit
code``; what they share is in `common`. Every command takes --config FILE,
--database URL, --broker URL (or AMI_* env), --json; exit codes in
`common`. Bad input is one line on stderr and a non-zero exit, never a
traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from headend.cli import (
    api,
    apikeys,
    broker,
    db,
    events,
    export,
    groups,
    keys,
    log,
    meters,
    parties,
    pki,
    read,
    report,
    schedule,
    serve,
    upload,
    validate,
)
from headend.cli.common import (
    EPILOG,
    FAILED,
    OK,
    USAGE,
    Failed,
    Usage,
    common_options,
    config_from,
)
from headend.errors import (
    ConfigError,
    HeadendError,
    IllegalTransition,
    InvalidData,
    UnknownMeter,
)
from headend.redact import redact

COMMANDS = (
    serve,
    db,
    meters,
    read,
    schedule,
    groups,
    events,
    log,
    export,
    pki,
    broker,
    keys,
    upload,
    report,
    validate,
    api,
    apikeys,
    parties,
)
INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    common = common_options()
    root = argparse.ArgumentParser(
        prog="headend",
        description="AMI head-end: collection service (ADCS) and meter-data store (MDMS).",
        epilog=EPILOG,
    )
    sub = root.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add(sub, common)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.overrides = {k: getattr(args, k, None) for k in getattr(args, "overrides_from", ())}
    if args.overrides.get("serial"):
        args.overrides["serial"] = ",".join(args.overrides["serial"])
    say = f"headend {args.command}:"
    try:
        cfg = config_from(args)
        code: int = args.run(args, cfg)
        return code
    except (Usage, ConfigError, InvalidData, UnknownMeter, IllegalTransition) as e:
        print(say, one_line(e), file=sys.stderr)
        return USAGE
    except (Failed, HeadendError) as e:
        print(say, one_line(e), file=sys.stderr)
        return FAILED
    except BrokenPipeError:  # `headend log | head`
        return OK
    except OSError as e:  # a path the user gave that cannot be used
        where = f": {e.filename}" if e.filename else ""
        print(say, f"{e.strerror or e}{where}", file=sys.stderr)
        return USAGE
    except KeyboardInterrupt:
        print(say, "interrupted", file=sys.stderr)
        return INTERRUPTED


def one_line(e: Exception) -> str:
    """An error as one line (drivers write several), secrets as ``***`` (`redact`)."""
    return redact(" ".join(str(e).split()))


if __name__ == "__main__":
    sys.exit(main())
