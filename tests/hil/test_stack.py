"""`python -m hil stack` (`make run`): the operator's quick start, run as the operator would.

The stack runs as a real command; the commands it prints are run exactly as
printed (from the repository root): the boards register at the head-end
(`headend serve`, its own process) and answer an on-demand read; then it is
stopped by a signal and nothing it started is left.
"""

from __future__ import annotations

import shlex
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from headend.config import load
from tests.hil.procs import ROOT, HilRun

pytestmark = [pytest.mark.mpy, pytest.mark.usefixtures("rig_parts")]


def _printed(run: HilRun) -> dict[str, list[str]]:
    """The commands the stack printed, by their first words (``meters list``, ``read``...)."""
    run.wait_for("the commands to try", lambda: "Ctrl-C stops everything" in run.output, 120)
    out: dict[str, list[str]] = {}
    for line in run.out_path.read_text().splitlines():
        if line.startswith("  .venv/bin/"):
            argv = shlex.split(line)
            words = [w for w in argv[1:3] if not w.startswith("-")]
            key = "mpremote" if argv[0].endswith("mpremote") else " ".join(words)
            out[key] = argv
    return out


def _sh(argv: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def _until_ok(argv: list[str], want: str, timeout: float) -> str:
    """Run ``argv`` until it exits 0 with ``want`` in its output; that output."""
    end = time.monotonic() + timeout
    last = None
    while time.monotonic() < end:
        last = _sh(argv)
        if last.returncode == 0 and want in last.stdout:
            return last.stdout
        time.sleep(0.5)
    raise AssertionError(f"{argv}: no {want!r} in {timeout} s; last: {last}")


def test_stack_registers_boards_answers_the_printed_commands_and_stops_on_sigterm(
    tmp_path: Path,
) -> None:
    run = HilRun(tmp_path, "stack", "--boards", "2", "--speed", "60")
    try:
        cmds = _printed(run)
        assert set(cmds) >= {"meters list", "read 1001", "schedule set", "export 1001", "log"}
        assert "mpremote" in cmds
        listed = _until_ok(cmds["meters list"], "2 meter(s)", 60)
        assert "1001" in listed and "1002" in listed
        # a read answers once an interval has closed: within 15 simulated minutes (15 s)
        read = _until_ok(cmds["read 1001"], "meter 1001  source", 90)
        assert "active_import Wh" in read
        for key in ("schedule set", "export 1001", "log", "mpremote"):
            done = _sh(cmds[key])
            assert done.returncode == 0, (key, done.stdout, done.stderr)
        # the head-end is its own process, on the boards' clock, with a random site key
        config = Path(cmds["log"][-1])
        cfg = load(config)
        assert cfg.master_key != "00" * 32 and cfg.speed == 60 and cfg.clock_anchor > 0
        for secret in (config, config.parent / "master.key"):
            assert stat.S_IMODE(secret.stat().st_mode) == 0o600
        assert cfg.master_key == (config.parent / "master.key").read_text().strip()
        assert any("headend serve" in p.cmdline for p in run.look())
        run.signal(signal.SIGTERM)
        rc, _ = run.wait_exit()
        assert rc == 143 and "stack: stopped by SIGTERM" in run.output
        assert not run.left_running(), run.left_running()
        assert list(run.tmpdir.iterdir()) == [] and not config.parent.exists()
        assert "Traceback" not in run.output
    finally:
        run.kill_all()


def test_stack_dir_is_kept_on_ctrl_c_and_its_clock_speed_is_its_own(tmp_path: Path) -> None:
    state = tmp_path / "state"
    run = HilRun(tmp_path, "stack", "--boards", "1", "--dir", str(state))
    try:
        cmds = _printed(run)
        _until_ok(cmds["meters list"], "1 meter(s)", 60)
        run.signal(signal.SIGINT)
        rc, _ = run.wait_exit()
        assert rc == 130 and "stack: stopped by SIGINT" in run.output
        assert not run.left_running(), run.left_running()
        assert "Traceback" not in run.output
    finally:
        run.kill_all()
    key = (state / "master.key").read_text()
    assert (state / "headend.sqlite").exists() and (state / "board-1001" / "rtc.json").exists()
    # the boards' RTCs keep counting at the directory's speed: another one is refused
    again = _sh([sys.executable, "-m", "hil", "stack", "--dir", str(state), "--speed", "60"])
    assert again.returncode == 2 and "runs at 1x" in again.stderr, again.stderr
    assert (state / "master.key").read_text() == key
