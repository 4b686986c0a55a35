"""`erase-flash` and `write-micropython`: esptool (PyPI, pinned) for an image the user has.

Nothing is downloaded: `write-micropython` takes a MicroPython image file the
user supplies (micropython.org/download, or their own build with the firmware
frozen in) and checks that it looks like one for the ESP32 family (the
application image magic byte 0xE9) before esptool touches the port.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

from tools.flash.errors import FlashError

# where MicroPython's combined image (bootloader + partition table + app) starts
OFFSETS = {"esp32": 0x1000, "esp32s2": 0x1000, "esp32s3": 0x0, "esp32c3": 0x0, "esp32c6": 0x0}
IMAGE_MAGIC = 0xE9
BAUD = 460800


def esptool_argv() -> list[str]:
    """esptool as the venv has it (FlashError if it is not installed)."""
    if importlib.util.find_spec("esptool") is None:
        raise FlashError("esptool not installed: run `make setup`")
    return [sys.executable, "-m", "esptool"]


def erase_argv(port: str, chip: str) -> list[str]:
    _chip(chip)
    return [*esptool_argv(), "--chip", chip, "--port", port, "erase-flash"]


def write_argv(image: Path, port: str, chip: str, baud: int = BAUD) -> list[str]:
    """esptool's argv writing `image` (checked first: exists, ESP32 image magic)."""
    offset = _chip(chip)
    check_image(image)
    return [
        *esptool_argv(),
        "--chip",
        chip,
        "--port",
        port,
        "--baud",
        str(baud),
        "write-flash",
        "-z",
        hex(offset),
        str(image),
    ]


def _chip(chip: str) -> int:
    if chip not in OFFSETS:
        raise FlashError(f"--chip {chip!r}: one of {', '.join(OFFSETS)}")
    return OFFSETS[chip]


def check_image(image: Path) -> None:
    """FlashError unless `image` is a readable file starting with the ESP image magic."""
    try:
        with open(image, "rb") as f:
            head = f.read(1)
    except IsADirectoryError:
        raise FlashError(f"{image}: a directory, not an image file") from None
    except OSError as e:
        raise FlashError(f"{image}: {e.strerror or e}") from None
    if head != bytes([IMAGE_MAGIC]):
        got = f"0x{head[0]:02X}" if head else "an empty file"
        raise FlashError(
            f"{image}: not an ESP32 firmware image (first byte {got}, expected "
            f"0x{IMAGE_MAGIC:02X}); give a MicroPython .bin for the chip"
        )


def run(argv: list[str]) -> None:
    """Run esptool (its own output passes through); FlashError if it fails."""
    done = subprocess.run(argv, check=False)
    if done.returncode:
        raise FlashError(f"esptool failed (exit {done.returncode}); see its output above")
