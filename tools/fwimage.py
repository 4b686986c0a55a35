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
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from mpremote.romfs import make_romfs

ROOT = Path(__file__).resolve().parents[1]
FIRMWARE = ROOT / "firmware"
HALS = ("unix", "esp32")
# host-side: the power-cut model, the meter on the host (tests, bench), the wear arithmetic
HOST_ONLY = ("norflash", "hostkit", "wear")


class ImageError(ValueError):
    """The image cannot be built or written (one-line message)."""


def tool_path(name: str) -> str:
    """A tool of the venv (next to this Python), else on PATH; ImageError if neither."""
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    if found is None:
        raise ImageError(f"{name} not found: run `make setup`")
    return found


def firmware_sources(board: str = "unix", firmware: Path = FIRMWARE) -> list[Path]:
    """The firmware files a board runs (one HAL, no host-only module), relative to `firmware`."""
    if board not in HALS:
        raise ImageError(f"unknown board {board!r} (one of {', '.join(HALS)})")
    sources = [firmware / "main.py"]
    for pkg in ("meter", "link", "hal"):
        sources += sorted((firmware / pkg).glob("*.py"))
    out: list[Path] = []
    for src in sources:
        rel = src.relative_to(firmware)
        if rel.parent.name == "hal" and rel.stem not in ("__init__", board):
            continue  # one HAL per image
        if rel.stem not in HOST_ONLY:
            out.append(rel)
    return out


def compile_commands(
    dest: Path, board: str = "unix", firmware: Path = FIRMWARE
) -> list[tuple[Path, list[str]]]:
    """(source relative to `firmware`, the mpy-cross argv writing its .mpy into `dest`)."""
    mpy_cross = tool_path("mpy-cross")
    out: list[tuple[Path, list[str]]] = []
    for rel in firmware_sources(board, firmware):
        parts = rel.with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        mpy = dest / rel.with_suffix(".mpy")
        out.append((rel, [mpy_cross, "-s", name, "-o", str(mpy), str(firmware / rel)]))
    return out


def compile_tree(dest: Path, board: str = "unix", firmware: Path = FIRMWARE) -> list[Path]:
    """Compile the firmware (in `firmware`) for `board` into `dest` as .mpy files; returns them."""
    out: list[Path] = []
    for rel, cmd in compile_commands(dest, board, firmware):
        mpy = dest / rel.with_suffix(".mpy")
        mpy.parent.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode:
            why = (done.stderr or done.stdout).strip().splitlines() or ["no output"]
            raise ImageError(f"mpy-cross {rel}: {why[-1]}")
        out.append(mpy)
    return out


def build_image(board: str = "unix") -> bytes:
    """The ROMFS image of the firmware for `board`."""
    with tempfile.TemporaryDirectory(prefix="ami-fw-") as tmp:
        compile_tree(Path(tmp), board)
        with contextlib.redirect_stdout(io.StringIO()):  # make_romfs lists every file
            return bytes(make_romfs(tmp, mpy_cross=False))


def write_image(path: Path, img: bytes) -> None:
    """Write `img` to `path` whole or not at all (a temp file beside it, renamed)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "xb") as f:
            f.write(img)
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise ImageError(f"cannot write {path}: {e.strerror or e}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.fwimage", description=__doc__)
    parser.add_argument("--board", choices=HALS, default="esp32", help="which HAL goes in")
    parser.add_argument("-o", "--output", default="fw.romfs", help="image file to write")
    args = parser.parse_args(argv)
    try:
        img = build_image(args.board)
        write_image(Path(args.output), img)
    except ImageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{args.output}: {len(img)} bytes ({args.board})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
