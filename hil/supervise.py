"""Children and stops: every process a run starts ends with it, whatever ends the run.

The pieces, used by the rig, the demo, the fleet, the scenarios and the stack:

* `child_options()`: how a child is started. Its own session (a Ctrl-C in the
  terminal reaches only us; we stop the children in order) and, on Linux,
  ``PR_SET_PDEATHSIG``: the kernel kills it if we die, even by kill -9.
  `Child` is such a process with its last output lines kept.
* `Guard`: an async context that watches the children a run depends on
  (anything with ``name`` and ``failure()``). When one dies unexpectedly it
  cancels the guarded task at once, and the context exits with `ChildDied`
  carrying the child's last words; the owners' cleanup runs on the way out.
  `Supervised` is the base of an owner (`Rig`, `Stack`): start, guard, end.
* `run()`: `asyncio.run` with SIGINT and SIGTERM turned into a cancellation
  of the main task (so every ``async with`` cleans up) and then `Stopped`;
  `stopped()` prints the one line and gives the exit status (128 + signal).

Limits: the death signal follows the *thread* that started the child; every
child here is started from the event loop's thread (the main one).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Protocol, Self, TypeVar

T = TypeVar("T")
WATCH_EVERY_S = 0.2
TAIL_LINES = 40
PR_SET_PDEATHSIG = 1


class Dependent(Protocol):
    """A child a run cannot go on without."""

    @property
    def name(self) -> str: ...

    def failure(self) -> str | None:
        """None while it runs (or was stopped on purpose); else what happened to it."""
        ...


class ChildDied(RuntimeError):
    """A child the run depends on died unexpectedly (the message carries its last words)."""

    def __init__(self, name: str, what: str) -> None:
        super().__init__(f"{name} died: {what}")
        self.child = name


class Stopped(BaseException):
    """The run was stopped by a signal (SIGINT or SIGTERM); everything has been ended."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


# -- starting children ----------------------------------------------------------------------


def _prctl() -> Callable[[int, int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None
    fn = libc.prctl
    fn.argtypes = [ctypes.c_int, ctypes.c_ulong]
    fn.restype = ctypes.c_int
    return fn


_PRCTL = _prctl()  # resolved here, never in the forked child


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec function: SIGKILL this child when its parent dies (Linux)."""
    prctl = _PRCTL
    if prctl is None:
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before the prctl took effect
            os._exit(1)

    return preexec


def child_options() -> dict[str, Any]:
    """Keyword arguments for subprocess.Popen / asyncio.create_subprocess_exec."""
    opts: dict[str, Any] = {"start_new_session": True}
    pre = _die_with_parent()
    if pre is not None:
        opts["preexec_fn"] = pre
    return opts


def exit_text(rc: int | None) -> str:
    """``exited with 3`` / ``was killed by SIGKILL`` (a process's end, as a verb)."""
    if rc is None:
        return "is running"
    if rc < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-rc).name}"
    return f"exited with {rc}"


def tail(text: str, lines: int = 12) -> str:
    """The last non-empty lines of a child's output, indented under the message."""
    kept = [ln.rstrip() for ln in text.splitlines() if ln.strip()][-lines:]
    return "".join(f"\n  | {ln}" for ln in kept) if kept else " (no output)"


# -- watching them --------------------------------------------------------------------------


class Guard:
    """Cancel the task that entered it when a dependent fails; exit with `ChildDied`.

    Like ``asyncio.timeout``: only the cancellation it made becomes `ChildDied`;
    a cancellation from outside (a signal) goes on as a cancellation. An owner
    with children to end calls `release()`, ends them, then `outcome()`.
    """

    def __init__(self, every: float = WATCH_EVERY_S) -> None:
        self.every = every
        self.dependents: list[Dependent] = []
        self.died: ChildDied | None = None
        self._task: asyncio.Task[Any] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._cancelling = 0
        self._cancelled = False

    def add(self, dep: Dependent) -> None:
        self.dependents.append(dep)

    def discard(self, dep: Dependent) -> None:
        with contextlib.suppress(ValueError):
            self.dependents.remove(dep)

    def check(self) -> ChildDied | None:
        """The first dependent that failed, as an error (None: all well)."""
        for dep in list(self.dependents):
            what = dep.failure()
            if what:
                return ChildDied(dep.name, what)
        return None

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.every)
            died = self.check()
            if died is not None and self._task is not None:
                self.died, self._cancelled = died, True
                self._task.cancel()
                return

    async def __aenter__(self) -> Guard:
        self._task = asyncio.current_task()
        if self._task is None:
            raise RuntimeError("Guard needs a task")
        self._cancelling = self._task.cancelling()
        self._watcher = asyncio.create_task(self._watch(), name="hil-guard")
        return self

    async def release(self, exc: BaseException | None) -> None:
        """Stop watching (the owner now ends its children on purpose); take back the
        cancellation made for a death, wherever it landed; if the run ends with an
        error, look once more: it may be a death seen from the other side."""
        w, self._watcher = self._watcher, None
        if w is not None:
            w.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await w
        if self._cancelled and self._task is not None:
            self._cancelled = False
            if not isinstance(exc, asyncio.CancelledError):
                # not delivered yet: let it land here, not in the owner's cleanup
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.sleep(0)
            self._task.uncancel()
        elif exc is not None and self.died is None:
            self.died = self.check()

    def outcome(self, exc: BaseException | None) -> None:
        """Raise `ChildDied` if a death ended the run (not if a signal did too)."""
        if self.died is None or self._task is None:
            return
        if self._task.cancelling() > self._cancelling:
            return  # cancelled from outside as well (a signal): that wins
        cause = None if isinstance(exc, asyncio.CancelledError) else exc
        raise self.died from cause

    async def __aexit__(
        self,
        et: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.release(exc)
        self.outcome(exc)


class Supervised:
    """Base of an async context that starts children and ends every one of them:
    `_start()` on entry (a failure ends what started), `_stop()` on exit, whatever
    ends the body; a death among ``guard``'s dependents ends it with `ChildDied`."""

    guard: Guard

    async def _start(self) -> None:
        raise NotImplementedError

    async def _stop(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.guard.__aenter__()
        try:
            await self._start()
        except BaseException as e:
            await self._end(e)
            raise
        return self

    async def __aexit__(
        self,
        et: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._end(exc)

    async def _end(self, exc: BaseException | None) -> None:
        """Stop watching, end everything, then say if a death ended the run."""
        await self.guard.release(exc)
        await self._stop()
        self.guard.outcome(exc)


class TaskDependent:
    """An in-process part (an asyncio task) the run depends on, as a `Dependent`."""

    def __init__(self, name: str, task: asyncio.Task[Any]) -> None:
        self.name = name
        self.task = task

    def failure(self) -> str | None:
        t = self.task
        if not t.done():
            return None
        if t.cancelled():
            return "it was cancelled"
        e = t.exception()
        return f"{type(e).__name__}: {e}" if e is not None else "it returned"


class Child:
    """A child process the run depends on (a `Dependent`), started by `spawn()`.

    Its stderr (and stdout, unless piped for the caller) is read line by line:
    the last lines are kept for the death message, each is passed to ``echo``
    and appended to ``log``. `stop()` (or `expect_exit()`) makes its end
    expected.
    """

    def __init__(
        self,
        name: str,
        proc: asyncio.subprocess.Process,
        echo: Callable[[str], None] | None,
        log: Path | None,
        merged: bool = False,
    ) -> None:
        self.name = name
        self._merged = merged
        self.proc = proc
        self.echo = echo
        self.log = log
        self.last: deque[str] = deque(maxlen=TAIL_LINES)
        self._expected = False
        self._exited_at: float | None = None
        self._reader = asyncio.create_task(self._read(), name=f"{name} stderr")

    @classmethod
    async def spawn(
        cls,
        name: str,
        argv: Sequence[str],
        *,
        echo: Callable[[str], None] | None = None,
        log: Path | None = None,
        stdin: int | None = asyncio.subprocess.DEVNULL,
        stdout: int | None = None,
        cwd: Path | None = None,
    ) -> Child:
        """Start ``argv`` in its own session, killed if we die (`child_options`).

        ``stdout``: PIPE to read it yourself (``child.proc.stdout``); None: it is
        read with stderr.
        """
        merged = stdout is None
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=stdin,
            stdout=asyncio.subprocess.PIPE if merged else stdout,
            stderr=asyncio.subprocess.STDOUT if merged else asyncio.subprocess.PIPE,
            cwd=cwd,
            **child_options(),
        )
        return cls(name, proc, echo, log, merged)

    async def _read(self) -> None:
        err = self.proc.stdout if self._merged else self.proc.stderr
        assert err is not None
        out = open(self.log, "a") if self.log is not None else None  # noqa: SIM115
        try:
            while line := await err.readline():
                text = line.decode(errors="replace").rstrip()
                self.last.append(text)
                if out is not None:
                    out.write(text + "\n")
                    out.flush()
                if self.echo is not None:
                    self.echo(text)
        finally:
            if out is not None:
                out.close()

    def expect_exit(self) -> None:
        """From now on its end is no failure (it was asked to finish)."""
        self._expected = True

    def failure(self) -> str | None:
        rc = self.proc.returncode
        if rc is None or self._expected:
            return None
        now = time.monotonic()
        if self._exited_at is None:
            self._exited_at = now
        if not self._reader.done() and now - self._exited_at < 1.0:
            return None  # its last lines are still on their way
        return f"it {exit_text(rc)}; its last lines:{tail(chr(10).join(self.last))}"

    async def wait(self) -> int:
        """Wait for it to exit, and for its output to be read."""
        rc = await self.proc.wait()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(self._reader), 5)
        return rc

    async def stop(self, timeout: float = 5.0) -> int:
        """SIGTERM, then SIGKILL after ``timeout`` s; waits for it. Idempotent."""
        self.expect_exit()
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), timeout)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
        rc = await self.wait()
        if not self._reader.done():
            self._reader.cancel()
        return rc


# -- signals --------------------------------------------------------------------------------


def _raise_stopped(signum: int, frame: FrameType | None) -> None:
    raise Stopped(signum)


def run(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run ``main()`` on a fresh event loop; SIGINT/SIGTERM stop it cleanly.

    Raises:
        Stopped: a signal arrived; ``main`` was cancelled and has cleaned up.
    """
    got: list[int] = []

    async def wrapper() -> T:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()

        def on_signal(signum: int) -> None:
            if not got:  # a second signal while cleaning up changes nothing
                got.append(signum)
                task.cancel()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal, sig)
        try:
            return await main()
        except asyncio.CancelledError:
            if got:
                raise Stopped(got[0]) from None
            raise
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)  # (the loop would reset them at close)
                signal.signal(sig, _raise_stopped)

    # outside the loop (its start and end) a signal unwinds as Stopped too
    before = {sig: signal.signal(sig, _raise_stopped) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        result = asyncio.run(wrapper())
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
    if got:  # main returned anyway (it caught the cancellation): still a stop
        raise Stopped(got[0])
    return result


def stopped(what: str, e: Stopped) -> int:
    """Print the one line that says the run stopped; the exit status."""
    print(f"{what}: stopped by {e}; every process it started has ended", file=sys.stderr)
    return e.exit_status
