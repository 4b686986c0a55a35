"""`headend keys init|show|rotate|probe-key`: the site master key, the meters' key
versions, and operators' optical probe keys.

No command prints key material: ``show`` gives versions, the rotation state
and a fingerprint; ``init`` and ``probe-key`` write the key to an owner-only
file and print only its path. A probe key (K_op, `protocol.auth.probe_key`) is
derived from the meter's current key and the operator id: the meter derives
the same, so its own key never leaves the head-end; each issue is recorded
(`headend upload` checks it) and logged, never the key.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from headend import masterkey
from headend.adcs import rotation
from headend.api import Config, Headend
from headend.cli.common import OK, Sub, Usage, add_command, dash, emit, now_ms, open_headend, when
from headend.secretfile import write_private
from headend.store.activity import Kind
from headend.store.probekeys import ProbeKeys
from protocol.auth import MAX_OPERATOR, probe_key


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
    kp = ksub.add_parser(
        "probe-key",
        help="an operator's optical probe key for one meter, to a 0600 file (M18, M20)",
        parents=[common],
    )
    kp.add_argument("meter", type=int)
    kp.add_argument("--operator", type=_operator, required=True, help="operator id (0..65535)")
    kp.add_argument("-o", "--output", type=Path, required=True, help="key file to write (0600)")
    p.set_defaults(run=run)


def _operator(text: str) -> int:
    try:
        op = int(text)
    except ValueError:
        op = -1
    if not 0 <= op <= MAX_OPERATOR:
        raise argparse.ArgumentTypeError(f"expected an operator id 0..{MAX_OPERATOR}, got {text!r}")
    return op


def run(args: argparse.Namespace, cfg: Config) -> int:
    if args.action == "init":
        return _init(args, cfg)
    with open_headend(cfg) as he:
        if args.action == "probe-key":
            return _probe_key(args, he)
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


def _probe_key(args: argparse.Namespace, he: Headend) -> int:
    mid, op, out = args.meter, args.operator, args.output
    he.meter(mid)  # UnknownMeter: a usage error
    if not out.parent.is_dir():
        raise Usage(f"cannot write {out}: no folder {out.parent}")
    version = he.ctx.auth.version(mid)
    k_op = probe_key(he.ctx.downlinks.key(mid, version), op)
    doc = {"meter": mid, "operator": op, "key_version": version, "probe_key": k_op.hex()}
    at = now_ms()
    with he.ctx.db.transaction():
        ProbeKeys(he.ctx.db).issue(mid, op, version, at)
        write_private(out, json.dumps(doc, indent=1) + "\n")
        he.ctx.activity.log(
            at,
            Kind.PROBE_KEY_ISSUED,
            f"probe key for operator {op}, key version {version} "
            f"(fingerprint {masterkey.fingerprint(k_op)}) written to {out.name}",
            mid,
        )
    emit(
        args,
        {"meter": mid, "operator": op, "key_version": version, "file": str(out), "mode": "0600"},
        lambda: (
            f"meter {mid}: probe key for operator {op} (key version {version}) written to "
            f"{out} (0600); it stops working when the meter's key is rotated"
        ),
    )
    return OK
