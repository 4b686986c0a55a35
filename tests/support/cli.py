"""Run a command-line entry point as a user would, and check how it refuses bad input.

The project's rule for a typo: one line on stderr, a non-zero exit, no
traceback, nothing half-written.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def run_module(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    """`python -m ARGS...` from the repository root, in a fresh interpreter."""
    return run_python("-m", *args, timeout=timeout)


def run_python(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    """`python ARGS...` from the repository root, in a fresh interpreter."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def bench_json(name: str, *args: str, timeout: float, progress: tuple[str, ...]) -> dict[str, Any]:
    """`python -m bench NAME ARGS` that succeeds with one of ``progress`` on stderr; the
    JSON of its last stdout line."""
    done = run_module("bench", name, *args, timeout=timeout)
    assert done.returncode == 0, done.stderr[-2000:]
    assert any(p in done.stderr for p in progress), done.stderr[-2000:]
    out: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return out


def refused(proc: subprocess.CompletedProcess[str]) -> str:
    """The one stderr line of a refused command (asserts the rule); returns it."""
    lines = proc.stderr.splitlines()
    detail = f"exit {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
    assert proc.returncode != 0, detail
    assert "Traceback" not in proc.stderr + proc.stdout, detail
    assert len(lines) == 1, detail
    return lines[0]


def unwritable_dir(tmp_path: Path) -> Path:
    """A directory this process cannot create anything in: a read-only folder
    under tmp_path (pytest's cleanup copes with its mode); as root, whom mode
    bits do not stop, the sysfs root, where Linux refuses even root."""
    if os.geteuid() == 0:
        sysfs = Path("/sys")
        assert (sysfs / "kernel").is_dir(), "root without sysfs: no unwritable directory"
        return sysfs
    ro = tmp_path / "read-only"
    ro.mkdir()
    ro.chmod(0o555)
    return ro
