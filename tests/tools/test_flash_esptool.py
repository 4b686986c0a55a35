"""tools.flash erase-flash / write-micropython: esptool (the pinned PyPI package) run for
an image the user supplies; --dry-run prints the exact esptool command line and touches no
port; a missing or non-ESP32 image is refused before esptool runs."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import pytest

from tests.support.cli import refused, run_module

NO_PORT = "/dev/ami-no-such-port"


def _image(tmp_path: Path, first: bytes = b"\xe9") -> Path:
    img = tmp_path / "ESP32_GENERIC-v1.28.0.bin"
    img.write_bytes(first + bytes(4095))
    return img


def test_erase_flash_dry_run_prints_the_esptool_command_line() -> None:
    done = run_module("tools.flash", "erase-flash", "--port", NO_PORT, "--dry-run")
    assert done.returncode == 0, done.stderr
    argv = shlex.split(done.stdout.strip())
    assert argv == [sys.executable, "-m", "esptool", "--chip", "esp32", "--port", NO_PORT,
                    "erase-flash"]  # fmt: skip


@pytest.mark.parametrize(("chip", "offset"), [("esp32", "0x1000"), ("esp32s3", "0x0")])
def test_write_micropython_dry_run_prints_write_flash_at_the_chips_offset(
    tmp_path: Path, chip: str, offset: str
) -> None:
    img = _image(tmp_path)
    done = run_module(
        "tools.flash", "write-micropython", str(img), "--port", NO_PORT, "--chip", chip,
        "--dry-run",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    argv = shlex.split(done.stdout.strip())
    assert argv[:3] == [sys.executable, "-m", "esptool"]
    assert argv[3:] == ["--chip", chip, "--port", NO_PORT, "--baud", "460800", "write-flash",
                        "-z", offset, str(img)]  # fmt: skip


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (lambda p: p / "missing.bin", "No such file or directory"),
        (lambda p: _image(p, b"\x00"), "not an ESP32 firmware image (first byte 0x00"),
        (lambda p: _image(p, b"PK"), "first byte 0x50"),
        (lambda p: p, "a directory, not an image file"),
    ],
)
def test_write_micropython_refuses_a_missing_or_invalid_image_before_esptool_runs(
    tmp_path: Path, make: object, says: str
) -> None:
    img = make(tmp_path)  # type: ignore[operator]
    for extra in ((), ("--dry-run",)):
        done = run_module("tools.flash", "write-micropython", str(img), "--port", NO_PORT, *extra)
        line = refused(done)
        assert done.returncode == 2 and says in line, line
        assert "esptool" not in done.stdout  # nothing was run, not even printed


def test_write_micropython_runs_esptool_and_reports_its_failure_on_a_missing_port(
    tmp_path: Path,
) -> None:
    done = run_module("tools.flash", "write-micropython", str(_image(tmp_path)), "--port", NO_PORT)
    assert done.returncode == 2
    assert "esptool v5.6.0" in done.stdout + done.stderr  # the real esptool ran
    assert "Could not open" in done.stdout + done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("error: esptool failed (exit 2)")
    assert "Traceback" not in done.stdout + done.stderr


def test_an_unknown_chip_is_a_usage_error() -> None:
    line = refused(run_module("tools.flash", "erase-flash", "--port", NO_PORT, "--chip", "z80"))
    assert line.startswith("error: argument --chip: invalid choice: 'z80'"), line
