"""`python -m tools.flash` (`make flash PORT=…`): build, provision, deploy, flash MicroPython.

  build [-o DIR] [--board esp32|unix]       the firmware as .mpy + manifest.json (hashes,
                                           versions), manifest.py and partitions.csv
  provision --meter-id N --master-key-file F --broker mqtts://host:port -o DIR ...
                                           one meter's config; its key from the site key
  deploy --port PORT [--bundle DIR] --config DIR [--wait-headend headend.toml]
                                           copy, verify by sha256 on the board, reset, wait
  erase-flash --port PORT                  esptool erase-flash
  write-micropython IMAGE --port PORT      esptool write-flash of an image you supply

Every command takes --dry-run: it prints each step (the esptool and mpremote
command lines) and touches no port and writes no file. Secrets come from files
(or AMI_WIFI_KEY), never from the command line, and are never printed.
Exit status: 0 done; 2 refused or failed (one line says which step and why:
bad input, a file that does not compile, a board or head-end that does not
answer as it must); 130 Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from tools.flash import bundle as bundles
from tools.flash import config as configs
from tools.flash import deploy, espflash
from tools.flash.errors import FlashError
from tools.fwimage import FIRMWARE, HALS, ImageError, compile_commands

PROG = "python -m tools.flash"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


_RAW = argparse.RawDescriptionHelpFormatter


def _dry(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dry-run", action="store_true", help="print each step; touch no port, write no file"
    )


def parser() -> argparse.ArgumentParser:
    doc = __doc__ or ""
    p = _Parser(
        prog=PROG,
        description=doc.split("\n\n")[0],
        epilog="\n\n".join(doc.split("\n\n")[1:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_Parser)
    b = sub.add_parser(
        "build",
        help="compile the firmware into a deployable bundle",
        description=bundles.__doc__,
        formatter_class=_RAW,
    )
    b.add_argument(
        "-o",
        "--output",
        type=Path,
        default=Path("build/bundle"),
        metavar="DIR",
        help="the bundle directory (build/bundle)",
    )
    b.add_argument("--board", choices=HALS, default="esp32", help="which HAL goes in")
    b.add_argument(
        "--firmware",
        type=Path,
        default=FIRMWARE,
        metavar="DIR",
        help="the firmware sources (default: this repository's firmware/)",
    )
    _dry(b)

    v = sub.add_parser(
        "provision",
        help="write one meter's config (0600 files)",
        description=configs.__doc__,
        formatter_class=_RAW,
    )
    v.add_argument("--meter-id", type=int, required=True, metavar="N", help="the meter's id (u32)")
    v.add_argument(
        "--master-key-file",
        type=Path,
        required=True,
        metavar="F",
        help="owner-only file: the site master key, 64 hex digits",
    )
    v.add_argument("--broker", required=True, metavar="URL", help="mqtts://host:port")
    v.add_argument("--server-name", help="the name in the broker's certificate (default: host)")
    v.add_argument("--ca-file", type=Path, metavar="CA", help="the broker's CA (PEM), pinned")
    v.add_argument("--wifi-ssid", metavar="S", help="the Wi-Fi network (ESP32)")
    v.add_argument(
        "--wifi-key-file",
        type=Path,
        metavar="F2",
        help=f"owner-only file holding the Wi-Fi key (or the env var {configs.WIFI_KEY_ENV})",
    )
    v.add_argument(
        "--channels",
        metavar="U:M,...",
        help="unit:multiplier per channel, import/export active then reactive "
        "(e.g. Wh:1,Wh:1,varh:1,varh:1; default: the 4 channels in Wh/varh, multiplier 1); "
        "one pulse input per channel, in that order",
    )
    v.add_argument("--interval-s", type=int, default=900, help="recording interval (900)")
    v.add_argument(
        "--target",
        choices=configs.TARGETS,
        default="esp32",
        help="esp32: secrets to NVS; unix: the virtual board (secrets in board.json)",
    )
    v.add_argument(
        "-o", "--output", type=Path, required=True, metavar="DIR", help="the config directory"
    )
    _dry(v)

    d = sub.add_parser(
        "deploy",
        help="copy bundle + config to a board, verify, reset, wait",
        description=deploy.__doc__,
        formatter_class=_RAW,
    )
    d.add_argument("--port", required=True, help="serial device or socket://host:port")
    d.add_argument(
        "--bundle",
        type=Path,
        metavar="DIR",
        help="from `build`; none: only the config (firmware frozen into the image)",
    )
    d.add_argument("--config", type=Path, required=True, metavar="DIR", help="from `provision`")
    d.add_argument(
        "--wait-headend",
        type=Path,
        metavar="TOML",
        help="the head-end's config: wait for the meter's registration and first data",
    )
    d.add_argument(
        "--timeout",
        type=float,
        default=1200.0,
        help="seconds to wait for the head-end (1200: a new meter answers a read once its "
        "first interval has closed, up to 15 minutes after it boots)",
    )
    _dry(d)

    _dry(_esptool_parser(sub, "erase-flash", "erase the whole flash (esptool)"))
    w = _esptool_parser(sub, "write-micropython", "write a MicroPython image you supply (esptool)")
    w.add_argument("image", type=Path, metavar="IMAGE")
    w.add_argument("--baud", type=int, default=espflash.BAUD)
    _dry(w)
    return p


def _esptool_parser(sub: Any, name: str, help: str) -> argparse.ArgumentParser:
    """A subcommand that wraps esptool: its port and chip."""
    e: argparse.ArgumentParser = sub.add_parser(
        name, help=help, description=espflash.__doc__, formatter_class=_RAW
    )
    e.add_argument("--port", required=True, help="the board's serial device")
    e.add_argument("--chip", default="esp32", choices=sorted(espflash.OFFSETS))
    return e


def _build(a: argparse.Namespace) -> None:
    if a.dry_run:
        try:
            cmds = compile_commands(a.output / bundles.FS, a.board, a.firmware)
        except ImageError as e:
            raise FlashError(str(e)) from None
        for _, cmd in cmds:
            print(shlex.join(cmd))
        print(f"write {a.output}/{bundles.FS}/main.py (boot stub; main.mpy -> app.mpy)")
        for name in (bundles.MANIFEST, "manifest.py", "partitions.csv", "src/"):
            print(f"write {a.output / name}")
        return
    b = bundles.build(a.output, a.board, a.firmware)
    print(f"{a.output}: {len(b.files)} files for {b.board}, {b.fw_version} ({b.mpy_cross})")
    print(f"{a.output / 'manifest.py'}, {a.output / 'partitions.csv'}: to build your own image")


def _provision(a: argparse.Namespace) -> None:
    req = configs.Request(
        target=a.target,
        meter_id=a.meter_id,
        master_key_file=a.master_key_file,
        broker=a.broker,
        server_name=a.server_name,
        ca_file=a.ca_file,
        wifi_ssid=a.wifi_ssid,
        wifi_key_file=a.wifi_key_file,
        channels=a.channels,
        interval_s=a.interval_s,
    )
    if a.dry_run:
        cfg, secrets, ca = configs.build(req)  # every input checked, nothing written
        print(f"mkdir -m 700 {a.output}")
        names = ["board.json", configs.PROVISION]
        if a.target == "unix" and ca is not None:
            names.append(configs.CA_FILE)
        if a.target == "esp32":
            names.append(configs.SECRETS)
        for n in names:
            print(f"write {a.output}/{n} (0600)")
        if a.target == "esp32":
            print(f"  {configs.SECRETS}: the NVS blobs {', '.join(secrets)} (values not shown)")
        return
    for path in configs.write(req, a.output):
        print(f"wrote {path} (0600)")


def _deploy(a: argparse.Namespace) -> None:
    b = bundles.load(a.bundle) if a.bundle is not None else None
    c = configs.load(a.config)
    if a.dry_run:
        for line in deploy.steps(b, c, a.port, a.wait_headend):
            print(line)
        return
    rep = deploy.run(b, c, a.port, a.wait_headend, a.timeout)
    print(json.dumps(rep.summary()))


def _esptool(argv: list[str], dry_run: bool) -> None:
    print(shlex.join(argv), flush=True)
    if not dry_run:
        espflash.run(argv)


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    try:
        if a.cmd == "build":
            _build(a)
        elif a.cmd == "provision":
            _provision(a)
        elif a.cmd == "deploy":
            _deploy(a)
        elif a.cmd == "erase-flash":
            _esptool(espflash.erase_argv(a.port, a.chip), a.dry_run)
        else:
            _esptool(espflash.write_argv(a.image, a.port, a.chip, a.baud), a.dry_run)
    except FlashError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
