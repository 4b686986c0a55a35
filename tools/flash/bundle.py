"""`build`: the firmware as a deployable bundle, and the files to freeze it into an image.

A bundle directory holds

* ``fs/``: what goes on the board's file system: every firmware module as
  ``.mpy`` (compiled by `tools.fwimage.compile_tree`), the app as ``app.mpy``
  and a three-line ``main.py`` that runs it (a board runs ``main.py`` at
  boot, never an ``.mpy``);
* ``manifest.json``: the board (HAL), the firmware version, the mpy-cross
  version and the sha256 and size of every file of ``fs/``;
* ``manifest.py`` + ``src/`` and ``partitions.csv``: MicroPython's freeze
  manifest over a copy of the sources, and the ESP-IDF partition table with
  the meter's data partition (firmware/README.md "Build your own image").
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tools.flash.errors import FlashError
from tools.fwimage import FIRMWARE, HALS, ImageError, compile_tree, firmware_sources, tool_path

FORMAT = 1
MANIFEST = "manifest.json"
FS = "fs"
APP = "app"  # firmware/main.py's module name on the board: main.py is the boot stub
BOOT_STUB = (
    "# Runs the meter firmware (app.mpy, from firmware/main.py): a board runs\n"
    "# main.py at boot, never an .mpy. Built by `python -m tools.flash build`.\n"
    "import sys\n"
    "from app import main\n"
    "main(sys.argv)\n"
)
# MicroPython ESP32 GENERIC 4 MiB, with 256 KiB cut off vfs for the meter's store
# (firmware/README.md "Flash layout"; hal/esp32.py finds it by its label)
PARTITIONS = """\
# ESP-IDF partition table: MicroPython ESP32 GENERIC (4 MiB) + the meter's store
# Name,   Type, SubType, Offset,   Size,     Flags
nvs,      data, nvs,     0x9000,   0x6000,
phy_init, data, phy,     0xf000,   0x1000,
factory,  app,  factory, 0x10000,  0x1F0000,
vfs,      data, fat,     0x200000, 0x1C0000,
meter,    data, 0x81,    0x3C0000, 0x40000,
"""
_VERSION = re.compile(r'^_FW_VERSION\s*=\s*const\("([^"]+)"\)', re.M)


@dataclass(frozen=True)
class Bundle:
    """A built bundle: where it is and what its manifest says (files: board path -> sha256)."""

    path: Path
    board: str
    fw_version: str
    mpy_cross: str
    files: dict[str, str]

    def local(self, name: str) -> Path:
        return self.path / FS / name


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def firmware_version(firmware: Path = FIRMWARE) -> str:
    """``_FW_VERSION`` of meter/meter.py (what the meter reports at registration)."""
    src = firmware / "meter" / "meter.py"
    try:
        found = _VERSION.search(src.read_text())
    except OSError as e:
        raise FlashError(f"{src}: {e.strerror or e}") from None
    if found is None:
        raise FlashError(f'{src}: no _FW_VERSION = const("...")')
    return found.group(1)


def mpy_cross_version() -> str:
    try:
        exe = tool_path("mpy-cross")
    except ImageError as e:
        raise FlashError(str(e)) from None
    done = subprocess.run([exe, "--version"], capture_output=True, text=True, check=False)
    return done.stdout.strip() or done.stderr.strip()


def _freeze_manifest(board: str, sources: list[Path]) -> str:
    """manifest.py: MicroPython's freeze manifest over src/ (paths relative to this file)."""
    lines = [
        "# Freezes the meter firmware into a MicroPython ESP32 image (firmware/README.md",
        '# "Build your own image"): make BOARD=ESP32_GENERIC FROZEN_MANIFEST=$PWD/manifest.py',
        'include("$(PORT_DIR)/boards/manifest.py")',
        'module("main.py", base_path="src")',
    ]
    for pkg in ("meter", "link", "hal"):
        files = [s.name for s in sources if s.parts[0] == pkg]
        lines.append(f'package("{pkg}", files={files!r}, base_path="src")')
    return "\n".join(lines) + "\n"


def build(out: Path, board: str = "esp32", firmware: Path = FIRMWARE) -> Bundle:
    """Compile the firmware for `board` into the bundle directory `out` (FlashError).

    Built beside `out` and renamed into place: a failed build leaves `out` as it
    was. An existing `out` must be a bundle (it is replaced) or empty.
    """
    if board not in HALS:
        raise FlashError(f"unknown board {board!r} (one of {', '.join(HALS)})")
    if out.exists() and not (out / MANIFEST).exists() and any(out.iterdir()):
        raise FlashError(f"{out}: exists and is not a bundle (no {MANIFEST}); pick another -o")
    version, mpyc = firmware_version(firmware), mpy_cross_version()
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        fs = tmp / FS
        fs.mkdir(parents=True)
        try:
            compile_tree(fs, board, firmware)
        except ImageError as e:
            raise FlashError(f"refusing to build: {e}") from None
        (fs / "main.mpy").rename(fs / f"{APP}.mpy")
        (fs / "main.py").write_text(BOOT_STUB)
        files = {
            p.relative_to(fs).as_posix(): sha256(p.read_bytes())
            for p in sorted(fs.rglob("*"))
            if p.is_file()
        }
        manifest = {
            "format": FORMAT,
            "board": board,
            "fw_version": version,
            "mpy_cross": mpyc,
            "files": {n: {"sha256": h, "size": (fs / n).stat().st_size} for n, h in files.items()},
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        sources = firmware_sources(board, firmware)
        for rel in sources:
            (tmp / "src" / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(firmware / rel, tmp / "src" / rel)
        (tmp / "manifest.py").write_text(_freeze_manifest(board, sources[1:]))
        (tmp / "partitions.csv").write_text(PARTITIONS)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except OSError as e:
        raise FlashError(f"cannot write the bundle {out}: {e.strerror or e}") from None
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(tmp)
    return Bundle(out, board, version, mpyc, files)


def load(path: Path) -> Bundle:
    """The bundle in `path`, every file checked against its manifest (FlashError)."""
    try:
        m = json.loads((path / MANIFEST).read_text())
        if m.get("format") != FORMAT or m.get("board") not in HALS:
            raise ValueError("unknown format or board")
        files = {str(n): str(f["sha256"]) for n, f in m["files"].items()}
        bundle = Bundle(path, m["board"], str(m["fw_version"]), str(m["mpy_cross"]), files)
    except OSError as e:
        raise FlashError(f"--bundle {path}: {e.strerror or e} (build one first)") from None
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise FlashError(f"--bundle {path}: {MANIFEST} is not a bundle manifest ({e})") from None
    for name, digest in files.items():
        try:
            ok = sha256(bundle.local(name).read_bytes()) == digest
        except OSError:
            ok = False
        if not ok:
            raise FlashError(f"--bundle {path}: {FS}/{name} is missing or differs from {MANIFEST}")
    return bundle
