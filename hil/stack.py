"""`python -m hil stack` (`make run`): the whole system running, for an operator to try.

A private mosquitto, the head-end as its own process (`headend serve
--config DIR/headend.toml`, the real CLI) and N virtual boards (the real
firmware on the MicroPython binary), all on one clock: real time, or
``--speed S`` times faster with the head-end and the boards agreeing (the
head-end's ``clock_start``/``clock_anchor`` are the boards' ``sim_start``/
``real_start_ms``). It prints the commands to try next, runnable as printed
from the repository root, and runs until Ctrl-C or SIGTERM.

State (the site master key, the head-end's config and database, the boards'
flash and RTC, the logs) lives in a temporary directory removed at exit, or
in ``--dir DIR``, kept: running again with the same DIR continues where it
stopped (same key, same meters; the boards' RTCs kept counting, at the speed
the directory was made with). The site master key is random, made once per
directory, in ``DIR/master.key`` (0600), and handed to the head-end in
``DIR/headend.toml`` (0600) and to the boards in-process: never on a
command line.

A child that dies (mosquitto, headend serve, a board) ends the stack at once
with its last words (exit 1); Ctrl-C or SIGTERM end it cleanly (130/143).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import shlex
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from headend.api import Clock, write_private
from hil.board import BoardError, BoardSpec, VirtualBoard
from hil.broker import Broker, BrokerError, find_mosquitto
from hil.fleet_time import iso
from hil.rig import headend_timeouts
from hil.supervise import Child, ChildDied, Guard, Stopped, Supervised, run, stopped

ROOT = Path(__file__).resolve().parents[1]
FIRST_ID = 1001
HEADEND_READY_S = 30.0
WORKER = "stack-headend"
INTERVAL_S = 900  # the boards' recording interval (a fresh install's default)


class StackError(RuntimeError):
    """The stack cannot start as asked (the message says why and what to do)."""


@dataclass(frozen=True)
class Options:
    boards: int = 3
    speed: int | None = None  # None: 1, or what DIR was made with
    dir: Path | None = None  # None: a temp dir, removed at exit
    insecure: bool = False  # plain, anonymous MQTT (else TLS, logins, ACLs)


# -- the state directory ---------------------------------------------------------------------


def site_key(state: Path) -> str:
    """The directory's site master key (hex), made once, random, in a 0600 file."""
    path = state / "master.key"
    if not path.exists():
        write_private(path, secrets.token_hex(32) + "\n")
    key = path.read_text().strip()
    try:
        ok = len(bytes.fromhex(key)) == 32
    except ValueError:
        ok = False
    if not ok:
        raise StackError(f"{path}: expected 64 hex digits (delete it to make a new key)")
    if path.stat().st_mode & 0o077:
        path.chmod(0o600)  # a key readable by others: not any more
    return key


def stack_clock(state: Path, speed: int | None) -> Clock:
    """The directory's clock: made now (simulated = real at this second), or as kept."""
    path = state / "clock.json"
    if path.exists():
        try:
            c = json.loads(path.read_text())
            clock = Clock(float(c["speed"]), float(c["start"]), float(c["anchor"]))
        except (ValueError, KeyError, TypeError) as e:
            raise StackError(f"{path}: unreadable ({e}); delete it to start the clock again") from e
        if speed is not None and speed != clock.speed:
            raise StackError(
                f"{state} runs at {clock.speed:g}x (its boards' RTCs do): give --speed "
                f"{clock.speed:g}, or another --dir"
            )
        return clock
    now = float(int(time.time()))  # whole seconds: the head-end's clock_start is an int
    clock = Clock(float(speed or 1), now, now)
    path.write_text(json.dumps({"start": now, "anchor": now, "speed": clock.speed}) + "\n")
    return clock


def headend_toml(broker: Broker, state: Path, key: str, clock: Clock) -> str:
    """The head-end's config file (it holds the master key: written 0600).

    Its MQTT login is WORKER's, the password derived from the master key as the
    broker's password file has it; TLS with the stack's CA pinned.
    """
    cfg: dict[str, Any] = {
        "broker": broker.url_for(WORKER),
        **({"insecure": True} if broker.insecure else {"mqtt_ca_file": str(broker.ca)}),
        "database": f"sqlite:///{state / 'headend.sqlite'}",
        "master_key": key,
        "worker": WORKER,
        "share_group": "stack",
        "speed": clock.speed,
        "clock_start": int(clock.start),
        "clock_anchor": clock.anchor,
        "poll_s": 0.2,
        **headend_timeouts(clock.speed),
    }
    lines = ["# written by `python -m hil stack` at every start", "[headend]"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in cfg.items()]
    return "\n".join(lines) + "\n"


def _venv_bin(name: str) -> str:
    """A venv tool as the operator types it from the repository root."""
    here = Path(sys.executable).parent
    if here.resolve() == (ROOT / ".venv" / "bin").resolve():
        return f".venv/bin/{name}"
    return str(here / name)


# -- the stack -------------------------------------------------------------------------------


@dataclass
class Stack(Supervised):
    """mosquitto + `headend serve` + N virtual boards (an async context manager)."""

    opts: Options
    state: Path = field(init=False)
    guard: Guard = field(init=False, default_factory=Guard)

    def __post_init__(self) -> None:
        self.broker: Broker | None = None
        self.headend: Child | None = None
        self.boards: list[VirtualBoard] = []
        self.clock: Clock | None = None
        self._temp = self.opts.dir is None

    @property
    def config_path(self) -> Path:
        return self.state / "headend.toml"

    async def _start(self) -> None:
        o = self.opts
        if o.dir is None:
            self.state = Path(tempfile.mkdtemp(prefix="ami-stack-"))
        else:
            try:
                o.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            except OSError as e:
                raise StackError(f"--dir {o.dir}: cannot create it: {e}") from e
            self.state = o.dir.resolve()
        key = site_key(self.state)
        self.clock = clock = stack_clock(self.state, o.speed)
        mosq = find_mosquitto()
        if mosq is None:
            raise StackError("mosquitto not found (make setup installs it)")
        # a fresh broker dir: its log must not say the head-end is there from a past run
        shutil.rmtree(self.state / "broker", ignore_errors=True)
        (self.state / "broker").mkdir()
        self.broker = Broker(
            mosq,
            self.state / "broker",
            insecure=o.insecure,
            master=bytes.fromhex(key),
            meters=tuple(range(FIRST_ID, FIRST_ID + o.boards)),
            workers=(WORKER,),
        )
        try:
            self.broker.start()
        except BrokerError as e:
            raise StackError(str(e)) from e
        self.guard.add(self.broker)
        write_private(self.config_path, headend_toml(self.broker, self.state, key, clock))
        headend = Path(sys.executable).parent / "headend"
        argv = [str(headend)] if headend.exists() else [sys.executable, "-m", "headend"]
        self.headend = await Child.spawn(
            "headend serve",
            [*argv, "serve", "--config", str(self.config_path)],
            log=self.state / "headend.log",
            cwd=ROOT,
        )
        self.guard.add(self.headend)
        await self._headend_connected()
        host, port, ca = self.broker.meter_link()
        for i in range(o.boards):
            mid = FIRST_ID + i
            spec = BoardSpec(
                meter_id=mid,
                flash_dir=self.state / f"board-{mid}",
                speed=int(clock.speed),
                sim_start=int(clock.start),
                real_start_ms=int(clock.anchor * 1000),
                broker=(host, port),
                broker_ca=ca,
                master_key=key,
                scale_pct=60 + 25 * i,
            )
            self.boards.append(VirtualBoard(spec))
        await asyncio.gather(*(b.start() for b in self.boards))
        for b in self.boards:
            self.guard.add(b)

    async def _headend_connected(self) -> None:
        """Wait until `headend serve` is on the broker (mosquitto logs its client id)."""
        assert self.broker is not None and self.headend is not None
        end = time.monotonic() + HEADEND_READY_S
        while f" as {WORKER} " not in self.broker.log():
            if self.headend.proc.returncode is not None:
                await self.headend.wait()
                raise ChildDied(self.headend.name, self.headend.failure() or "it exited")
            if time.monotonic() > end:
                raise StackError(
                    f"headend serve did not connect to {self.broker.url} in "
                    f"{HEADEND_READY_S:.0f} s; see {self.state / 'headend.log'}"
                )
            await asyncio.sleep(0.05)

    async def _stop(self) -> None:
        self.guard.dependents.clear()
        for b in self.boards:
            await b.close()
        if self.headend is not None:
            await self.headend.stop()
        if self.broker is not None:
            self.broker.stop()
        if self._temp and hasattr(self, "state"):
            shutil.rmtree(self.state, ignore_errors=True)

    # -- what to tell the operator ---------------------------------------------------------

    def commands(self) -> list[str]:
        """The commands to try, runnable as printed from the repository root."""
        assert self.clock is not None
        cfg = shlex.quote(str(self.config_path))
        he = _venv_bin("headend")
        today = iso(self.clock.now())[:10]
        tomorrow = iso(self.clock.now() + 86400)[:10]
        mid = self.boards[0].meter_id if self.boards else FIRST_ID
        out = [
            f"{he} meters list --config {cfg}",
            f"{he} read {mid} --config {cfg}   # {self._first_interval()}",
            f"{he} schedule set {mid} --slot 1 --every 1h --source operator --config {cfg}",
            f"{he} export {mid} --start {today} --end {tomorrow} --config {cfg}",
            f"{he} log --follow --config {cfg}   # Ctrl-C stops it",
            f"tail -f {shlex.quote(str(self.state / 'headend.log'))}   # the head-end's log",
        ]
        if self.boards:
            mp = _venv_bin("mpremote")
            out.append(f"{mp} connect {self.boards[0].repl_url} fs ls")
        return out

    def _first_interval(self) -> str:
        """When a read can answer: the meter nacks one until it holds an interval."""
        assert self.clock is not None
        c = self.clock
        due = (c.now() // INTERVAL_S + 1) * INTERVAL_S
        wait = c.real_at(due) - time.time()
        at = iso(due)[11:19]
        return f"a new meter answers once an interval has closed: next at {at}Z, in {wait:.0f} s"

    def banner(self) -> str:
        assert self.broker is not None and self.clock is not None
        c = self.clock
        when = "real time" if c.speed == 1 else f"{c.speed:g}x (simulated {iso(c.now())})"
        ids = ", ".join(str(b.meter_id) for b in self.boards) or "none"
        kept = "removed at exit" if self._temp else "kept"
        b = self.broker
        how = "plain MQTT, anonymous (--insecure)" if b.insecure else "TLS, logins, ACLs"
        lines = [
            f"stack: mosquitto on {b.url} ({how}; CA {b.ca})"
            if b.ca
            else f"stack: mosquitto on {b.url} ({how})",
            f"stack: headend serve --config {self.config_path} (log: {self.state / 'headend.log'})",
            f"stack: {len(self.boards)} virtual board(s) on MicroPython: {ids}; clock: {when}",
            f"stack: state in {self.state} ({kept}); site master key in "
            f"{self.state / 'master.key'} (0600)",
            "",
            "Try, from the repository root:",
            *(f"  {cmd}" for cmd in self.commands()),
            "",
            "Ctrl-C stops everything.",
        ]
        return "\n".join(lines)


async def serve(opts: Options) -> None:
    """Start the stack, print what to try, run until cancelled (a signal) or a death."""
    async with Stack(opts) as stack:
        print(stack.banner(), flush=True)
        await asyncio.Event().wait()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m hil stack",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--boards", type=int, default=3, help="virtual boards (default 3)")
    p.add_argument(
        "--speed",
        type=int,
        help="simulated seconds per real second (default 1: real time; a kept --dir: its own)",
    )
    p.add_argument("--dir", type=Path, help="keep the state here (default: a temp dir)")
    p.add_argument(
        "--insecure",
        action="store_true",
        help="plain, anonymous MQTT (default: TLS with the stack's own CA, logins, ACLs)",
    )
    return p


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    if not 0 <= args.boards <= 100 or (args.speed is not None and args.speed < 1):
        print("error: --boards must be 0..100 and --speed >= 1", file=sys.stderr)
        return 2
    opts = Options(boards=args.boards, speed=args.speed, dir=args.dir, insecure=args.insecure)
    try:
        run(lambda: serve(opts))
    except StackError as e:
        print(f"stack: error: {e}", file=sys.stderr)
        return 2
    except (ChildDied, BoardError) as e:
        print(f"stack: error: {e}", file=sys.stderr)
        return 1
    except Stopped as e:
        return stopped("stack", e)
    return 0
