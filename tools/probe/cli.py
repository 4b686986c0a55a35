"""The probe's command line. Exit codes: 0 ok, 1 failed (no answer, refused,
noise, a file that does not verify), 2 usage (bad arguments, a key file or
download file that cannot be used), 130 interrupted (Ctrl-C)."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from headend.errors import ConfigError
from headend.secretfile import read_private, write_private
from protocol import download as dl
from protocol import iec62056 as iec
from protocol.auth import KEY_LEN, MAX_OPERATOR
from protocol.errors import ProtocolError
from tools.probe import TOOL
from tools.probe import __doc__ as DOC
from tools.probe.errors import KeyFileError, PortError, ProbeError
from tools.probe.port import Port
from tools.probe.session import download, readout

OK, FAILED, USAGE, INTERRUPTED = 0, 1, 2, 130


class Usage(ProbeError):
    """Bad input from the operator (exit 2)."""


def _baud(text: str) -> int:
    try:
        b = int(text)
    except ValueError:
        b = -1
    if b not in iec.BAUDS:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(map(str, iec.BAUDS))}")
    return b


def _address(text: str) -> str:
    if not text.isdigit() or len(text) > 32:
        raise argparse.ArgumentTypeError(f"expected the meter id in decimal, got {text!r}")
    return text


def build_parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="python -m tools.probe",
        description=(DOC or "").split("\n\n")[0],
        epilog="Exit codes: 0 ok, 1 failed (no answer, refused, noise, bad MAC), 2 usage.",
    )
    sub = root.add_subparsers(dest="command", required=True, metavar="COMMAND")
    port_help = "serial device (/dev/ttyUSB0) or pyserial URL (socket://127.0.0.1:PORT)"
    r = sub.add_parser("readout", help="IEC 62056-21 mode C readout (no key needed)")
    r.add_argument("--port", required=True, help=port_help)
    r.add_argument("--address", type=_address, help="the meter id to sign on to (default: any)")
    r.add_argument("--baud", type=_baud, default=19200, help="highest baud to ask for")
    r.add_argument("--json", action="store_true", help="machine-readable output")
    d = sub.add_parser("download", help="authenticated full download (binary mode E)")
    d.add_argument("--port", required=True, help=port_help)
    d.add_argument("--key-file", type=Path, required=True, help="probe key file (0600)")
    d.add_argument("-o", "--output", type=Path, required=True, help="download file to write")
    d.add_argument("--baud", type=_baud, default=19200, help="highest baud to ask for")
    d.add_argument("--json", action="store_true", help="machine-readable summary")
    s = sub.add_parser("show", help="what a download file holds, and whether it verifies")
    s.add_argument("file", type=Path)
    s.add_argument("--key-file", type=Path, help="probe key file: check the MACs too")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    return root


# -- files -------------------------------------------------------------------------------


def load_key_file(path: Path) -> dict[str, Any]:
    """The probe key file's fields, ``probe_key`` as bytes. KeyFileError (never the key)."""
    try:
        doc = json.loads(read_private(path, "probe key file"))
        key = bytes.fromhex(doc["probe_key"])
        fields = {k: doc[k] for k in ("meter", "operator", "key_version")}
    except ConfigError as e:
        raise KeyFileError(str(e)) from None
    except (ValueError, KeyError, TypeError):
        raise KeyFileError(
            f"{path}: not a probe key file (expected JSON with meter, operator, key_version, "
            "probe_key; issue one with `headend keys probe-key`)"
        ) from None
    if len(key) != KEY_LEN or not all(type(v) is int and v >= 0 for v in fields.values()):
        raise KeyFileError(f"{path}: not a probe key file (bad key length or ids)")
    if fields["operator"] > MAX_OPERATOR:
        raise KeyFileError(f"{path}: operator {fields['operator']} is not a u16")
    return {**fields, "probe_key": key}


def _load_download(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise Usage(f"cannot read {path}: {getattr(e, 'strerror', None) or e}") from None
    try:
        return dl.parse(text)
    except dl.BadDownload as e:
        raise Usage(f"{path}: {e}") from None


# -- commands ----------------------------------------------------------------------------


def _progress(done: int, total: int) -> None:
    if sys.stderr.isatty():
        bar = "#" * (30 * done // max(total, 1))
        sys.stderr.write(f"\rdownload [{bar:<30}] part {done}/{total}")
        if done == total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def _readout(args: argparse.Namespace) -> int:
    with Port(args.port) as port:
        ident, data = readout(port, args.address, args.baud)
    rows = [{"obis": d.obis, "name": d.name, "value": d.value, "unit": d.unit} for d in data.data]
    if args.json:
        print(
            json.dumps(
                {
                    "manufacturer": ident.manufacturer,
                    "ident": ident.ident,
                    "max_baud": ident.max_baud,
                    "mode_e": ident.mode_e,
                    "data": rows,
                },
                indent=1,
            )
        )
        return OK
    print(f"meter {ident.ident} ({ident.manufacturer}, up to {ident.max_baud} baud)")
    heads = ("OBIS", "name", "value", "unit")
    cells = [[r["obis"], r["name"], r["value"], r["unit"]] for r in rows]
    widths = [max([len(h), *(len(c[i]) for c in cells)]) for i, h in enumerate(heads)]
    print("  ".join(h.ljust(w) for h, w in zip(heads, widths, strict=True)).rstrip())
    print("  ".join("-" * w for w in widths))
    for c in cells:
        print("  ".join(v.ljust(w) for v, w in zip(c, widths, strict=True)).rstrip())
    return OK


def _download(args: argparse.Namespace) -> int:
    key = load_key_file(args.key_file)
    out: Path = args.output
    if not out.parent.is_dir():
        raise Usage(f"cannot write {out}: no folder {out.parent}")
    with Port(args.port) as port:
        got = download(
            port,
            meter=key["meter"],
            operator=key["operator"],
            k_op=key["probe_key"],
            baud=args.baud,
            progress=_progress,
        )
        sent, received = port.sent, port.received
    doc = dl.build(
        meter=got.meter,
        operator=key["operator"],
        key_version=key["key_version"],
        downloaded_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        tool=TOOL,
        frames=got.frames,
        k_op=key["probe_key"],
    )
    try:
        write_private(out, dl.dumps(doc))
    except OSError as e:
        raise Usage(f"cannot write {out}: {e.strerror or e}") from None
    counts = dl.summary(dl.verify(doc, key["probe_key"]))
    res = {
        "file": str(out),
        "meter": got.meter,
        "baud": got.baud,
        "attempts": got.attempts,
        "noise_frames": got.noise,
        "bytes_received": received,
        "bytes_sent": sent,
        **counts,
    }
    if args.json:
        print(json.dumps(res, indent=1))
    else:
        print(
            f"meter {got.meter}: {counts['frames']} parts at {got.baud} baud "
            f"({received} bytes), {counts['intervals']} intervals, {counts['midnight']} "
            f"midnight register sets, {counts['events']} events -> {out} (0600)"
            + (f"; {got.attempts} attempts, {got.noise} noisy frames" if got.attempts > 1 else "")
        )
    return OK


def _show(args: argparse.Namespace) -> int:
    doc = _load_download(args.file)
    mac = "not checked (give --key-file)"
    rc = OK
    try:
        if args.key_file is not None:
            key = load_key_file(args.key_file)
            if (key["meter"], key["operator"]) != (doc["meter"], doc["operator"]):
                raise Usage(
                    f"the key file is for meter {key['meter']} operator {key['operator']}, "
                    f"the download is meter {doc['meter']} operator {doc['operator']}"
                )
            content = dl.verify(doc, key["probe_key"])
            mac = f"ok (file and {len(content.frames)} frames)"
        else:
            content = dl.Content(doc, [f for _, f in dl.decode_frames(doc)])
    except dl.BadDownload as e:
        mac, rc = f"BAD: {e}", FAILED
        try:
            content = dl.Content(doc, [f for _, f in dl.decode_frames(doc)])
        except dl.BadDownload:
            content = dl.Content(doc, [])
    counts = dl.summary(content)
    info = {k: doc[k] for k in ("meter", "operator", "key_version", "downloaded_at", "tool")}
    res = {**info, **counts, "mac": mac}
    if args.json:
        print(json.dumps(res, indent=1))
    else:
        for k, v in res.items():
            print(f"{k:14} {v}")
    return rc


COMMANDS = {"readout": _readout, "download": _download, "show": _show}


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (Usage, KeyFileError, PortError) as e:
        print(f"error: {e}", file=sys.stderr)
        return USAGE
    except (ProbeError, ProtocolError) as e:
        print(f"error: {e}", file=sys.stderr)
        return FAILED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return INTERRUPTED
