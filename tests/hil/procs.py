"""A `python -m hil ...` run in a child process, and the processes it starts, from /proc.

`HilRun` starts the command with its own TMPDIR (so "its temp files are gone"
is "that directory is empty"), records every descendant it sees (pid, start
time, name, command line) while it runs, signals it, and tells which of them
still run (by pid AND start time: a reused pid is not the same process).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hil.wait import WaitTimeout, wait_until_sync

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Proc:
    pid: int
    start: int  # clock ticks after boot (/proc/PID/stat field 22)
    name: str
    cmdline: str


def _stat(pid: int) -> tuple[int, int, str, str] | None:
    """(ppid, start time, state, name) of a live process, else None."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    name = raw[raw.index("(") + 1 : raw.rindex(")")]
    f = raw[raw.rindex(")") + 2 :].split()
    return int(f[1]), int(f[19]), f[0], name


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def descendants(root: int) -> list[Proc]:
    """Every live process below ``root`` (children, their children, ...)."""
    kids: dict[int, list[int]] = {}
    info: dict[int, tuple[int, int, str, str]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _stat(int(entry))
            if st is not None:
                info[int(entry)] = st
                kids.setdefault(st[0], []).append(int(entry))
    out: list[Proc] = []
    todo = list(kids.get(root, []))
    while todo:
        pid = todo.pop()
        _, start, state, name = info[pid]
        if state != "Z":
            out.append(Proc(pid, start, name, _cmdline(pid)))
        todo += kids.get(pid, [])
    return out


def running(p: Proc) -> bool:
    """The very process ``p`` still runs (not a zombie, not a reused pid)."""
    st = _stat(p.pid)
    return st is not None and st[1] == p.start and st[2] != "Z"


class HilRun:
    """``python -m hil ARGS`` (or another ``module``'s) with TMPDIR=tmp/tmp, output in
    tmp/out and tmp/err."""

    def __init__(self, tmp: Path, *args: str, module: str = "hil") -> None:
        self.tmpdir = tmp / "tmp"
        self.tmpdir.mkdir()
        self.out_path, self.err_path = tmp / "out", tmp / "err"
        env = dict(os.environ, TMPDIR=str(self.tmpdir), PYTHONUNBUFFERED="1")
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", module, *args], cwd=ROOT, env=env, stdout=out, stderr=err
            )
        self.seen: dict[int, Proc] = {}

    @property
    def output(self) -> str:
        return self.out_path.read_text(errors="replace") + self.err_path.read_text(errors="replace")

    def look(self) -> list[Proc]:
        now = descendants(self.proc.pid)
        for p in now:
            self.seen[p.pid] = p
        return now

    def named(self, name: str) -> list[Proc]:
        return [p for p in self.look() if p.name == name]

    def wait_for(self, what: str, probe: Callable[[], bool], timeout: float = 90) -> None:
        """Poll ``probe`` (recording descendants) until true; fail if the run ends first."""

        def ready() -> bool:
            self.look()
            if probe():
                return True
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"the run ended ({self.proc.returncode}) before {what}:\n" + self.output[-3000:]
                )
            return False

        try:
            wait_until_sync(ready, timeout, what, every=0.1)
        except WaitTimeout as e:
            raise AssertionError(f"{e}:\n{self.output[-3000:]}") from None

    def wait_exit(self, timeout: float = 60) -> tuple[int, float]:
        """(exit status, seconds it took)."""
        t = time.monotonic()
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill_all()
            raise AssertionError(f"no exit within {timeout} s:\n{self.output[-3000:]}") from None
        return rc, time.monotonic() - t

    def signal(self, sig: int) -> None:
        self.look()
        self.proc.send_signal(sig)

    def left_running(self) -> list[Proc]:
        return [p for p in self.seen.values() if running(p)]

    def wait_gone(self, timeout: float) -> list[Proc]:
        """Wait until no recorded process runs; those still running after ``timeout``."""
        with contextlib.suppress(WaitTimeout):
            wait_until_sync(lambda: not self.left_running(), timeout, "every process gone")
        return self.left_running()

    def kill_all(self) -> None:
        """Last resort for a failed test: SIGKILL the run and every process it had."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for p in self.left_running():
            os.kill(p.pid, signal.SIGKILL)
