"""The firmware as a ROMFS image for a board (`python -m tools.fwimage`).

Every firmware file is compiled with mpy-cross and packed into a ROMFS image
(`mpremote romfs deploy fw.romfs` writes it to a board; MicroPython runs the
bytecode in place from flash). Each .mpy names its source as the dotted
module name (`-s meter.ring`): a traceback still says which module, and the
name is a qstr the import interns anyway, where the default (the build
path) would add a qstr of its own per module to the meter's heap.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from mpremote.romfs import make_romfs

ROOT = Path(__file__).resolve().parents[1]
FIRMWARE = ROOT / "firmware"
HALS = ("unix", "esp32")


def _bin(name: str) -> str:
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else (shutil.which(name) or name)


def compile_tree(dest: Path, board: str = "unix") -> list[Path]:
    """Compile the firmware for `board` into `dest` as .mpy files; returns them."""
    if board not in HALS:
        raise ValueError(f"unknown board {board!r} (one of {', '.join(HALS)})")
    sources = [FIRMWARE / "main.py"]
    for pkg in ("meter", "link", "hal"):
        sources += sorted((FIRMWARE / pkg).glob("*.py"))
    out: list[Path] = []
    for src in sources:
        rel = src.relative_to(FIRMWARE)
        if rel.parent.name == "hal" and rel.stem not in ("__init__", board):
            continue  # one HAL per image
        if rel.stem in ("norflash", "wear"):
            continue  # host-side: the power-cut model, the wear arithmetic
        mpy = dest / rel.with_suffix(".mpy")
        mpy.parent.mkdir(parents=True, exist_ok=True)
        parts = rel.with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        cmd = [_bin("mpy-cross"), "-s", name, "-o", str(mpy), str(src)]
        subprocess.run(cmd, check=True)
        out.append(mpy)
    return out


def build_image(board: str = "unix") -> bytes:
    """The ROMFS image of the firmware for `board`."""
    with tempfile.TemporaryDirectory(prefix="ami-fw-") as tmp:
        compile_tree(Path(tmp), board)
        with contextlib.redirect_stdout(io.StringIO()):  # make_romfs lists every file
            return bytes(make_romfs(tmp, mpy_cross=False))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.fwimage", description=__doc__)
    parser.add_argument("--board", choices=HALS, default="esp32", help="which HAL goes in")
    parser.add_argument("-o", "--output", default="fw.romfs", help="image file to write")
    args = parser.parse_args(argv)
    img = build_image(args.board)
    Path(args.output).write_bytes(img)
    print(f"{args.output}: {len(img)} bytes ({args.board})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
