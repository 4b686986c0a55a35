"""Every run ends everything it started: on SIGTERM, on Ctrl-C, when a child dies, when killed.

The demo and a scenario run as real commands (`python -m hil ...`) with their
own TMPDIR; while they run, every descendant process is recorded from /proc.
After the run ends, none of those processes may still run (checked by pid and
start time), the temp dir must be empty and no traceback printed.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.hil.procs import HilRun, Proc

pytestmark = [pytest.mark.mpy, pytest.mark.usefixtures("rig_parts")]

DEMO = ("demo", "--boards", "1", "--meters", "5", "--days", "1", "--speed", "3000")
DEMO_ARGS = (*DEMO, "--ondemand", "2", "--progress-s", "1000")
SCENARIO = ("scenario", "outage", "--outage-days", "1", "--speed", "6000")
STOP_WITHIN_S = 20.0  # a loaded 2-core machine; an idle one stops in 1-3 s


def _is_fleet(run: HilRun) -> bool:
    return any("hil fleet" in p.cmdline for p in run.look())


def _up(run: HilRun, fleet: bool = False) -> None:
    """Wait until the run's children are all there and running (boards booted)."""
    run.wait_for("the boards booted", lambda: "virtual board(s) on MicroPython" in run.output)
    assert run.named("mosquitto") and run.named("micropython")
    if fleet:
        run.wait_for("the fleet process", lambda: _is_fleet(run))


def _ended_cleanly(run: HilRun) -> None:
    assert not run.left_running(), run.left_running()
    assert list(run.tmpdir.iterdir()) == []
    assert "Traceback" not in run.output, run.output[-3000:]


@pytest.mark.parametrize(
    ("args", "sig"),
    [
        (DEMO_ARGS, signal.SIGTERM),
        (DEMO_ARGS, signal.SIGINT),
        (SCENARIO, signal.SIGTERM),
        (SCENARIO, signal.SIGINT),
    ],
    ids=["demo-sigterm", "demo-sigint", "scenario-sigterm", "scenario-sigint"],
)
def test_a_signal_ends_every_child_and_the_temp_dir(
    tmp_path: Path, args: tuple[str, ...], sig: int
) -> None:
    run = HilRun(tmp_path, *args)
    try:
        _up(run, fleet=args[0] == "demo")
        names = {p.name for p in run.seen.values()}
        assert {"mosquitto", "micropython"} <= names
        run.signal(sig)
        rc, took = run.wait_exit()
        assert rc == 128 + sig, run.output[-3000:]
        assert took < STOP_WITHIN_S
        assert f"stopped by {signal.Signals(sig).name}" in run.output
        _ended_cleanly(run)
    finally:
        run.kill_all()


def _fleet(run: HilRun) -> Proc:
    return next(p for p in run.look() if "hil fleet" in p.cmdline)


def _mosquitto(run: HilRun) -> Proc:
    return run.named("mosquitto")[0]


def _board(run: HilRun) -> Proc:
    return run.named("micropython")[0]


@pytest.mark.parametrize(
    ("args", "victim", "says"),
    [
        (DEMO_ARGS, _fleet, ["the fleet process (python -m hil fleet) died", "SIGKILL"]),
        # the broker's log's last lines come with it
        (SCENARIO, _mosquitto, ["mosquitto died", "SIGKILL", "Opening ipv4 listen socket"]),
        # a board not being cut on purpose; its console's last lines come with it
        (SCENARIO, _board, ["board 1001 (MicroPython) died", "SIGKILL (not a power cut)", "ready"]),
    ],
    ids=["demo-fleet", "scenario-mosquitto", "scenario-board"],
)
def test_the_run_stops_at_once_when_a_child_dies(
    tmp_path: Path, args: tuple[str, ...], victim: Callable[[HilRun], Proc], says: list[str]
) -> None:
    run = HilRun(tmp_path, *args)
    try:
        _up(run, fleet=args[0] == "demo")
        os.kill(victim(run).pid, signal.SIGKILL)
        rc, took = run.wait_exit()
        assert rc == 1 and took < STOP_WITHIN_S, run.output[-3000:]
        for text in says:
            assert text in run.output, run.output[-3000:]
        _ended_cleanly(run)
    finally:
        run.kill_all()


def test_children_die_with_a_parent_killed_by_sigkill(tmp_path: Path) -> None:
    run = HilRun(tmp_path, *DEMO_ARGS)
    try:
        _up(run, fleet=True)
        assert {"mosquitto", "micropython"} <= {p.name for p in run.seen.values()}
        run.proc.kill()  # no cleanup runs: the kernel's death signal is the safety net
        run.wait_exit()
        assert run.wait_gone(10) == []
    finally:
        run.kill_all()
