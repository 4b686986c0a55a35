"""`headend keys init|show|rotate`: the site master key and the meters' key versions.

No command prints key material: ``show`` gives versions, the rotation state
and a fingerprint; ``init`` writes the key to an owner-only file and prints
only its path.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from headend import masterkey
from headend.adcs import rotation
from headend.api import Config, Headend
from headend.cli.common import OK, Sub, Usage, add_command, dash, emit, now_ms, open_headend, when


def add(sub: Sub, common: argparse.ArgumentParser) -> None:
    p = add_command(sub, common, "keys", "the site master key and the meters' keys")
    ksub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    ki = ksub.add_parser(
        "init",
        help="create the site master key file (random, mode 0600; never overwrites)",
        parents=[common],
    )
    ki.add_argument(
        "path", nargs="?", type=Path, help="where (default: the config's master_key_file)"
    )
    ks = ksub.add_parser(
        "show", help="a meter's key version, rotation state, fingerprint", parents=[common]
    )
    ks.add_argument("meter", type=int)
    kr = ksub.add_parser(
        "rotate",
        help="move a meter to its next key version (the service sends key_set until it answers)",
        parents=[common],
    )
    kr.add_argument("meter", type=int)
    p.set_defaults(run=run)


def run(args: argparse.Namespace, cfg: Config) -> int:
    if args.action == "init":
        return _init(args, cfg)
    with open_headend(cfg) as he:
        if args.action == "rotate":
            version = rotation.request(he.ctx, args.meter, now_ms())
            emit(
                args,
                {"meter": args.meter, "pending_version": version, "state": "queued"},
                lambda: (
                    f"meter {args.meter}: rotation to key version {version} queued; "
                    "the service sends key_set until the meter answers "
                    f"(see `headend keys show {args.meter}`)"
                ),
            )
            return OK
        return _show(args, he)


def _init(args: argparse.Namespace, cfg: Config) -> int:
    path = args.path or (Path(cfg.master_key_file) if cfg.master_key_file else None)
    if path is None:
        raise Usage("where? give a PATH, or set master_key_file in the config")
    masterkey.create(path)
    emit(
        args,
        {"master_key_file": str(path), "mode": "0600"},
        lambda: (
            f"master key written to {path} (0600); set master_key_file = "
            f'"{path}" in the [headend] table of the config'
        ),
    )
    return OK


def _show(args: argparse.Namespace, he: Headend) -> int:
    mid = args.meter
    he.meter(mid)  # UnknownMeter: a usage error
    st = he.ctx.auth.get(mid)
    version = st.key_version if st is not None else 0
    d = {
        "meter": mid,
        "key_version": version,
        "fingerprint": masterkey.fingerprint(he.ctx.downlinks.key(mid, version)),
        "since": when(st.key_since_ms) if st is not None else None,
        "rotation": st.state.value if st is not None else "current",
        "pending_version": st.pending_version if st is not None else None,
        "requested": when(st.requested_ms) if st is not None else None,
        "key_set_sent": st.attempts if st is not None else 0,
        "last_sent": when(st.sent_ms) if st is not None else None,
        "last_uplink_counter": st.up_counter if st is not None else None,
    }
    emit(args, d, lambda: "\n".join(f"{k:20} {dash(v)}" for k, v in d.items()))
    return OK
