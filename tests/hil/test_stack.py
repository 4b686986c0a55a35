"""`python -m hil stack` (`make run`): the operator's quick start, run as the operator would.

The stack runs as a real command; the commands it prints are run exactly as
printed (from the repository root): the boards register at the head-end
(`headend serve`, its own process) and answer an on-demand read; then it is
stopped by a signal and nothing it started is left.
"""

from __future__ import annotations

import re
import shlex
import signal
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from headend.config import load
from hil.wait import wait_until_sync
from protocol.auth import meter_key, mqtt_password, mqtt_user_password
from tests.hil.procs import ROOT, HilRun

pytestmark = [pytest.mark.mpy, pytest.mark.usefixtures("rig_parts")]


def _printed(run: HilRun) -> list[list[str]]:
    """The commands the stack printed to try (argv, comments dropped)."""
    run.wait_for("the commands to try", lambda: "Ctrl-C stops everything" in run.output, 120)
    lines = run.out_path.read_text().split("Try, from the repository root:")[1].splitlines()
    return [shlex.split(ln, comments=True) for ln in lines if ln.startswith("  ")]


def _find(cmds: list[list[str]], *words: str) -> list[str]:
    """The one printed command that starts with ``words`` (after the program)."""
    (hit,) = [c for c in cmds if c[1 : 1 + len(words)] == list(words)]
    return hit


def _sh(argv: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def _until_ok(argv: list[str], want: str, timeout: float) -> str:
    """Run ``argv`` until it exits 0 with ``want`` (a regex) in its output; that output."""

    def ok() -> str | None:
        out = _sh(argv)
        return out.stdout if out.returncode == 0 and re.search(want, out.stdout) else None

    return wait_until_sync(ok, timeout, f"{shlex.join(argv)} printing {want!r}", every=0.5)


def test_stack_registers_boards_answers_the_printed_commands_and_stops_on_sigterm(
    tmp_path: Path,
) -> None:
    run = HilRun(tmp_path, "stack", "--boards", "2", "--speed", "60")
    try:
        cmds = _printed(run)
        assert [c[0] for c in cmds] == [".venv/bin/headend"] * 5 + ["tail", ".venv/bin/mpremote"]
        listed = _until_ok(_find(cmds, "meters", "list"), r"2 meter\(s\)", 60)
        assert "1001" in listed and "1002" in listed
        # a read answers once an interval has closed: within 15 simulated minutes (15 s)
        read = _until_ok(_find(cmds, "read", "1001"), r"\n[1-9][0-9]* interval\(s\)", 90)
        assert "registers at" in read
        for cmd in cmds:
            if cmd[0] != "tail" and "--follow" not in cmd:  # (those follow until stopped)
                done = _sh(cmd)
                assert done.returncode == 0, (cmd, done.stdout, done.stderr)
        # log --follow prints the log, keeps following, and ends cleanly on Ctrl-C
        follow = subprocess.Popen(
            _find(cmds, "log"), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        try:
            assert follow.stdout is not None
            lines: list[str] = []  # read on a thread: a pipe's readline cannot time out
            reader = threading.Thread(target=lambda: lines.extend(follow.stdout or ()))
            reader.start()
            # which timed job logs first depends on the time of day the stack starts (a
            # daily check, a first rebalance run): any log line, then the recent log's
            # read and schedule lines, before it is stopped (a signal sent earlier can
            # cut the lines still on their way)
            wait_until_sync(
                lambda: "read_done" in (text := "".join(lines)) and "schedule_set" in text,
                30,
                "log --follow printing the read and the schedule",
            )
            assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ ", lines[0]), lines[0]
            follow.send_signal(signal.SIGINT)
            follow.wait(timeout=20)
            reader.join(timeout=20)  # at the end of its output: then its pipes are closed
            _, err = follow.communicate(timeout=20)
            assert follow.returncode == 0 and "Traceback" not in err, err
        finally:
            if follow.poll() is None:
                follow.kill()
                follow.communicate()
        (tail,) = [c for c in cmds if c[0] == "tail"]
        assert (
            "headend: serving: broker mqtts://stack-headend@127.0.0.1:"
            in Path(tail[-1]).read_text()
        )
        # the head-end is its own process, on the boards' clock, with a random site key
        config = Path(_find(cmds, "log")[-1])
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


def test_stack_dir_is_kept_on_ctrl_c_and_runs_again_at_its_own_speed(tmp_path: Path) -> None:
    state = tmp_path / "state"
    for k in (1, 2):  # the second run continues the first: same key, same meters
        (tmp_path / str(k)).mkdir()
        run = HilRun(tmp_path / str(k), "stack", "--boards", "1", "--dir", str(state))
        try:
            _until_ok(_find(_printed(run), "meters", "list"), r"1 meter\(s\)", 60)
            if k == 1:
                key = (state / "master.key").read_text()
            run.signal(signal.SIGINT)
            rc, _ = run.wait_exit()
            assert rc == 130 and "stack: stopped by SIGINT" in run.output
            assert not run.left_running(), run.left_running()
            assert "Traceback" not in run.output
        finally:
            run.kill_all()
        assert (state / "headend.sqlite").exists() and (state / "board-1001" / "rtc.json").exists()
        assert stat.S_IMODE((state / "board-1001" / "board.json").stat().st_mode) == 0o600
        assert (state / "master.key").read_text() == key
    # the boards' RTCs keep counting at the directory's speed: another one is refused
    again = _sh([sys.executable, "-m", "hil", "stack", "--dir", str(state), "--speed", "60"])
    assert again.returncode == 2 and "runs at 1x" in again.stderr, again.stderr
    assert (state / "master.key").read_text() == key


# files that hold secrets on purpose (0600): everything else a run writes is grepped
_SECRET_FILES = {"master.key", "headend.toml", "board.json", "passwd", "acl.json"}


@pytest.mark.req("T02")
def test_t02_no_secret_in_any_log_or_output_of_a_stack_run(tmp_path: Path) -> None:
    state = tmp_path / "state"
    run = HilRun(tmp_path, "stack", "--boards", "2", "--speed", "60", "--dir", str(state))
    outputs: list[str] = []
    try:
        cmds = _printed(run)
        outputs.append(_until_ok(_find(cmds, "meters", "list"), r"2 meter\(s\)", 60))
        outputs.append(_until_ok(_find(cmds, "read", "1001"), r"\n[1-9][0-9]* interval\(s\)", 90))
        for argv in (_find(cmds, "log"), [*_find(cmds, "meters", "list"), "-v"]):
            done = _sh([a for a in argv if a != "--follow"])
            outputs += [done.stdout, done.stderr]
        helps = [_sh([cmds[0][0], *c, "--help"]) for c in (["serve"], ["broker", "config"])]
        outputs += [h.stdout + h.stderr for h in helps]
        run.signal(signal.SIGTERM)
        run.wait_exit()
    finally:
        run.kill_all()
    master = bytes.fromhex((state / "master.key").read_text().strip())
    secrets = {
        "master key": master.hex(),
        "head-end MQTT password": mqtt_user_password(master, "stack-headend"),
    }
    for mid in (1001, 1002):
        key = meter_key(master, mid)
        secrets[f"meter {mid} key"] = key.hex()
        secrets[f"meter {mid} MQTT password"] = mqtt_password(key)
    logs = {"stack output": run.output, **{f"cli {i}": o for i, o in enumerate(outputs)}}
    for path in sorted(state.rglob("*")):
        if path.is_file() and path.name not in _SECRET_FILES and path.suffix != ".bin":
            logs[str(path.relative_to(state))] = path.read_text(errors="replace")
    # the positive control: the logs are the real ones, with real traffic in them
    assert "as stack-headend" in logs["broker/mosquitto.log"]
    assert "registered" in logs["headend.log"]
    for what, secret in secrets.items():
        for name, text in logs.items():
            assert secret.lower() not in text.lower(), f"{what} in {name}"
