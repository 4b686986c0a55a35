"""Drive a REAL board through scenarios over a serial line (pyserial).

`python -m hil run --port /dev/ttyUSB1 [--wiring hil/wiring/esp32-devkitc.toml] SCENARIO`

The line carries protocol frames HDLC-framed (SPEC "Serial framing"); any
pyserial URL works, so ``--port socket://127.0.0.1:PORT`` drives a virtual
board's optical port (hil.board) exactly as a USB-UART adapter drives the
ESP32's. A rig self-check runs first and stops with a clear error if:

  1. the wiring file is invalid (every problem is listed);
  2. the port does not open;
  3. the board does not answer a signed status request (a read_request for
     its clock and registers) within ``--timeout`` seconds.

Scenarios: ``selfcheck`` (only the check), ``ondemand`` (N reads through the
head-end's serial transport, p80_s/p99_s in real seconds) and ``powercut``
(resets through the console's RTS/DTR line per the wiring; every interval
read before a reset must be read back after it). The head-end runs in-process
on real time (the board's RTC is real), with a private mosquitto for its MQTT
side. Ends with one JSON line; exit status 0 only if ok.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import serial

from headend.api import DEV_MASTER_KEY, JobState, Uplink, meter_key
from hil.board import master_key
from hil.rig import Rig, RigError
from hil.supervise import ChildDied, Stopped, run, stopped
from protocol.errors import ProtocolError
from protocol.frame import decode, encode
from protocol.hdlc import Deframer, stuff

WIRING_DIR = Path(__file__).resolve().parent / "wiring"
DEFAULT_WIRING = WIRING_DIR / "esp32-devkitc.toml"
BAUDS = (9600, 19200, 38400, 57600, 115200, 230400, 460800, 921600)
ESP32_FLASH_PINS = range(6, 12)  # SPI flash: never usable
ESP32_INPUT_ONLY = range(34, 40)
WHAT_REGISTERS = 2
SCENARIOS = ("selfcheck", "ondemand", "powercut")


class WiringError(ValueError):
    """The wiring file is not usable (the message lists every problem)."""


class SelfCheckError(RuntimeError):
    """The rig self-check failed (the message says what to look at)."""


@dataclass(frozen=True)
class Wiring:
    """A board's wiring on the rig (hil/wiring/*.toml)."""

    name: str
    mcu: str
    pulses: dict[str, int]
    uart: int
    tx: int
    rx: int
    baud: int
    port: str | None = None
    console: str | None = None
    reset: str = "none"
    meter_id: int | None = None


def load_wiring(path: Path) -> Wiring:
    """Parse and check a wiring file. Raises WiringError listing every problem."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except OSError as e:
        raise WiringError(f"{path}: cannot read: {e}") from e
    except tomllib.TOMLDecodeError as e:
        raise WiringError(f"{path}: not valid TOML: {e}") from e
    problems: list[str] = []

    def sect(name: str) -> dict[str, Any]:
        v = data.get(name)
        if not isinstance(v, dict):
            problems.append(f"missing table [{name}]")
            return {}
        return v

    board, pulses, opt, rig = sect("board"), sect("pulses"), sect("optical"), data.get("rig", {})
    mcu = board.get("mcu", "esp32")
    pins: dict[str, int] = {}

    def pin(where: str, v: Any, output: bool = False) -> int:
        if type(v) is not int or not 0 <= v <= 39:
            problems.append(f"{where}: expected a GPIO number 0-39, got {v!r}")
            return -1
        if mcu == "esp32" and v in ESP32_FLASH_PINS:
            problems.append(f"{where}: GPIO{v} is wired to the SPI flash on an ESP32")
        if mcu == "esp32" and output and v in ESP32_INPUT_ONLY:
            problems.append(f"{where}: GPIO{v} is input-only on an ESP32 (cannot drive TX)")
        for other, p in pins.items():
            if p == v:
                problems.append(f"{where}: GPIO{v} is also {other}")
        pins[where] = v
        return int(v)

    chans = ("active_import", "active_export", "reactive_import", "reactive_export")
    pmap = {}
    for k in pulses:
        if k not in chans:
            problems.append(f"pulses.{k}: unknown channel (expected {', '.join(chans)})")
    for k in chans:
        if k in pulses:
            pmap[k] = pin(f"pulses.{k}", pulses[k])
    if pulses and not pmap:
        problems.append("pulses: no channel wired")
    tx = pin("optical.tx", opt.get("tx"), output=True) if opt else -1
    rx = pin("optical.rx", opt.get("rx")) if opt else -1
    uart = opt.get("uart", 2)
    if type(uart) is not int or not 0 <= uart <= 2:
        problems.append(f"optical.uart: expected 0, 1 or 2, got {uart!r}")
    baud = opt.get("baud", 19200)
    if baud not in BAUDS:
        problems.append(f"optical.baud: expected one of {BAUDS}, got {baud!r}")
    reset = rig.get("reset", "none")
    if reset not in ("rts", "dtr", "none"):
        problems.append(f"rig.reset: expected rts, dtr or none, got {reset!r}")
    mid = board.get("meter_id")
    if mid is not None and (type(mid) is not int or not 0 <= mid <= 0xFFFFFFFF):
        problems.append(f"board.meter_id: expected a u32, got {mid!r}")
    for k in ("port", "console"):
        if k in rig and not isinstance(rig[k], str):
            problems.append(f"rig.{k}: expected a device path or URL, got {rig[k]!r}")
    if problems:
        raise WiringError(f"{path}: " + "; ".join(problems))
    return Wiring(
        name=str(board.get("name", Path(path).stem)),
        mcu=str(mcu),
        pulses=pmap,
        uart=int(uart),
        tx=tx,
        rx=rx,
        baud=int(baud),
        port=rig.get("port"),
        console=rig.get("console"),
        reset=str(reset),
        meter_id=mid,
    )


# -- the serial line (blocking: the self-check runs before the head-end opens the port) -------


class Line:
    """Protocol frames over a pyserial URL, HDLC-framed."""

    def __init__(self, url: str, baud: int) -> None:
        try:
            self.port = serial.serial_for_url(url, baudrate=baud, timeout=0.05)
        except (serial.SerialException, ValueError, OSError) as e:
            raise SelfCheckError(
                f"cannot open {url}: {e} (is the adapter plugged in, the path right, "
                "the port free of other programs?)"
            ) from e
        self.url = url
        self.deframer = Deframer()
        self.pending: list[bytes] = []

    def send(self, frame: bytes) -> None:
        self.port.write(stuff(frame))
        self.port.flush()

    def recv(self, deadline: float) -> dict[str, Any] | None:
        """The next decodable frame before the monotonic ``deadline``, or None."""
        while time.monotonic() < deadline:
            if self.pending:
                raw = self.pending.pop(0)
                try:
                    return decode(raw)
                except ProtocolError:
                    continue
            chunk = self.port.read(4096)
            if chunk:
                self.pending += self.deframer.feed(chunk)
        return None

    def close(self) -> None:
        self.port.close()


@dataclass
class SelfCheck:
    """What the self-check found."""

    port: str
    wiring: str
    meter_id: int | None = None
    answer: str | None = None  # read_response / nack <reason>
    clock_offset_s: float | None = None
    registers: list[int] | None = None
    unprompted: list[str] = field(default_factory=list)
    register_frame: bytes | None = None
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "register_frame"}
        d["register_captured"] = self.register_frame is not None
        return d


_last_counter = 0


def _request(meter_id: int, key: bytes, mtype: str, body: dict[str, Any], seq: int) -> bytes:
    global _last_counter
    # the meter accepts only a counter above the last one it took: the UTC second (as the
    # head-end's floor), and never the same one twice from here
    counter = _last_counter = max(int(time.time()), _last_counter + 1)
    fields = {
        "type": mtype,
        "seq": seq,
        "meter_id": meter_id,
        "timestamp": int(time.time()),
        "auth": {"counter": counter, "mac": b""},
        "body": body,
    }
    return encode(fields, key=key)


def self_check(
    port: str,
    wiring: Wiring,
    meter_id: int | None,
    master_key: str = DEV_MASTER_KEY,
    timeout: float = 10.0,
    register: bool = False,
    say: Callable[[str], None] = print,
) -> SelfCheck:
    """Wiring valid, port opens, the board answers a signed status request.

    With ``register`` the board is also asked to register again (config_set key 5)
    and its ``register`` frame is captured for the head-end. Raises SelfCheckError.
    """
    res = SelfCheck(port=port, wiring=wiring.name, meter_id=meter_id)
    say(
        f"self-check: wiring {wiring.name} ok ({len(wiring.pulses)} pulse inputs, "
        f"optical UART{wiring.uart} tx {wiring.tx} rx {wiring.rx} @ {wiring.baud})"
    )
    line = Line(port, wiring.baud)
    say(f"self-check: {port} open")
    try:
        deadline = time.monotonic() + timeout
        if res.meter_id is None:
            say("self-check: no meter id given: listening for the board's own frames")
            f = line.recv(deadline)
            if f is None:
                raise SelfCheckError(
                    f"no frame from any board on {port} in {timeout:g} s and no --meter-id: "
                    "give the id (wiring [board] meter_id or --meter-id)"
                )
            res.meter_id = int(f["meter_id"])
            res.unprompted.append(f["type"])
        mid = res.meter_id
        assert mid is not None
        key = meter_key(bytes.fromhex(master_key), mid)
        seq = 0x4000 + int(time.time()) % 0x3FFF
        now = time.time()
        line.send(
            _request(mid, key, "read_request", {"mode": 2, "start": 0, "end": 0, "what": 2}, seq)
        )
        while res.answer is None:
            f = line.recv(deadline)
            if f is None:
                raise SelfCheckError(
                    f"meter {mid} did not answer a signed status request on {port} within "
                    f"{timeout:g} s: check TX/RX are crossed, the baud ({wiring.baud}), GND, "
                    "that the board runs the firmware, and that the meter id and master key "
                    "match its /board.json"
                )
            if f["meter_id"] != mid:
                continue
            body = f["body"]
            if f["type"] == "read_response" and body["request_seq"] == seq:
                res.answer = "read_response"
                for s in body["sections"]:
                    if s["tag"] == "clock":
                        res.clock_offset_s = round(s["body"]["time"] - now, 1)
                    elif s["tag"] == "registers":
                        res.registers = list(s["body"]["values"])
                ack = {"acked_seq": f["seq"], "upto": 0}
                line.send(_reply(mid, key, "read_ack", ack))
            elif f["type"] == "nack" and body["nacked_seq"] == seq:
                res.answer = f"nack {body['reason']}"
                if body["reason"] == 4:
                    res.warnings.append(
                        "the board's auth counter is ahead of this host's clock (replay nack)"
                    )
                elif body["reason"] == 3:
                    raise SelfCheckError(
                        f"meter {mid} refused the request's MAC: the master key (or the "
                        "meter id) does not match the board's key"
                    )
            else:
                res.unprompted.append(f["type"])
        say(
            f"self-check: meter {mid} answered ({res.answer}), clock offset "
            f"{res.clock_offset_s} s, registers {res.registers}"
        )
        if res.clock_offset_s is not None and abs(res.clock_offset_s) > 120:
            res.warnings.append(f"the board's clock is {res.clock_offset_s:+.0f} s off this host")
        if register:
            rseq = seq + 1
            line.send(_request(mid, key, "config_set", {"items": [{"key": 5, "value": 1}]}, rseq))
            deadline = time.monotonic() + timeout
            while res.register_frame is None:
                raw = _recv_raw(line, deadline)
                if raw is None:
                    raise SelfCheckError(
                        f"meter {mid} did not register again after config_set key 5 within "
                        f"{timeout:g} s: is its uplink 'uart' or 'both' (/board.json)?"
                    )
                f = decode(raw)
                if f["meter_id"] == mid and f["type"] == "register":
                    res.register_frame = raw
            say(f"self-check: meter {mid} registered again (frame captured for the head-end)")
    finally:
        line.close()
    # counters are UTC seconds and up: let the last one fall behind the clock, so
    # the next run (this process or another) starts above it, not as a replay
    while time.time() < _last_counter + 1:
        time.sleep(0.05)
    return res


def _recv_raw(line: Line, deadline: float) -> bytes | None:
    while time.monotonic() < deadline:
        while line.pending:
            raw = line.pending.pop(0)
            try:
                decode(raw)
            except ProtocolError:
                continue
            return raw
        chunk = line.port.read(4096)
        if chunk:
            line.pending += line.deframer.feed(chunk)
    return None


def _reply(meter_id: int, key: bytes, mtype: str, body: dict[str, Any]) -> bytes:
    # signed like every downlink (SPEC "Authentication"): the meter refuses an unsigned ack
    return _request(meter_id, key, mtype, body, int(time.time()) & 0xFFFF)


def reset_board(console: str, line: str = "rts", pulse_s: float = 0.2) -> None:
    """Hard-reset a board through its console's RTS (or DTR) line: EN low, then high."""
    port = hold_reset(console, line)
    try:
        time.sleep(pulse_s)
        setattr(port, line, False)
    finally:
        port.close()


# -- the real board as a hil.anyboard.Board ----------------------------------------------------


class RealBoard:
    """A real board on the rig, driven as the scenarios drive a virtual one.

    Power is its reset line: `power_cut()` holds EN low through the console's RTS
    (or DTR) line, `power_up()` lets go and gives it ``boot_s`` to start. What it
    recorded is asked through the head-end (an on-demand read): the rig cannot
    read its flash.
    """

    def __init__(
        self,
        meter_id: int,
        rig: Rig,
        console: str | None = None,
        reset: str = "none",
        boot_s: float = 5.0,
    ) -> None:
        self._meter_id = meter_id
        self.rig = rig
        self.console = console
        self.reset = reset
        self.boot_s = boot_s
        self._held: serial.Serial | None = None

    @property
    def meter_id(self) -> int:
        return self._meter_id

    @property
    def powered(self) -> bool:
        return self._held is None

    async def power_cut(self) -> None:
        if self.console is None or self.reset not in ("rts", "dtr"):
            raise SelfCheckError(
                "a power cut needs a reset line: set [rig] console and reset in the wiring"
            )
        if self._held is None:
            self._held = hold_reset(self.console, self.reset)

    async def power_up(self) -> None:
        port, self._held = self._held, None
        if port is not None:
            setattr(port, self.reset, False)  # EN high: the board boots
            port.close()
            await asyncio.sleep(self.boot_s)

    async def last_closed(self) -> int | None:
        held = await held_intervals(self.rig, self.meter_id)
        return max(held) if held else None

    async def flash_at_rest(self) -> None:
        return None


def hold_reset(console: str, line: str = "rts") -> serial.Serial:
    """Open the console and pull EN low through ``line``; the port holds it there."""
    try:
        port = serial.serial_for_url(console, do_not_open=True)
        port.rts = port.dtr = False  # opening must not pulse EN or IO0 by itself
        port.open()
        setattr(port, line, True)
    except (serial.SerialException, ValueError, OSError) as e:
        raise SelfCheckError(f"cannot reset the board through {console} ({line}): {e}") from e
    return port


async def held_intervals(rig: Rig, mid: int) -> dict[int, int]:
    """Interval start -> value(s) of an on-demand read of the meter, through the head-end."""
    job = await rig.read(mid, timeout=600)
    if job.state is not JobState.DONE:
        raise SelfCheckError(f"on-demand read of meter {mid} failed: {job.trouble}")
    result = json.loads(job.result or "{}")
    return {iv["start"]: iv.get("values", iv.get("value")) for iv in result.get("intervals", [])}


# -- scenarios on a real board -------------------------------------------------------------------


async def _run_scenario(
    name: str, port: str, wiring: Wiring, check: SelfCheck, args: argparse.Namespace
) -> dict[str, Any]:
    from hil.scenarios import ondemand, powercut

    mid = check.meter_id
    assert mid is not None
    out: dict[str, Any] = {"scenario": name, "board": "real", "port": port, "meter_id": mid}
    # the head-end signs with counters from the current UTC second up: let the
    # self-check's last counter fall behind it, or its first request is a "replay"
    while time.time() < _last_counter + 1:
        await asyncio.sleep(0.05)
    async with Rig(
        boards=0,
        speed=1,
        sim_start=int(time.time()),
        sniff=False,
        keep=args.keep,
        say=args.say,
        headend={
            "serial": ({"url": port, "baud": wiring.baud},),
            "master_key": args.master_key,
            "poll_s": 0.2,
        },
    ) as rig:
        svc = rig.service
        assert svc is not None
        line = svc.serials[0]
        await asyncio.wait_for(line.connected.wait(), 15)
        if check.register_frame is not None:
            await svc.deliver(Uplink(mid, check.register_frame, line.name))
        await rig.eventually(
            lambda: _has(rig, mid), 30, f"meter {mid} registered at the head-end", every=0.2
        )
        board = RealBoard(mid, rig, args.console or wiring.console, wiring.reset)
        if name == "ondemand":
            out.update(await ondemand.measure(rig, [board], args.reads, args.say))
        elif name == "powercut":
            if wiring.reset == "none" or not board.console:
                raise SelfCheckError(
                    "powercut needs a reset line: set [rig] console and reset in the wiring"
                )
            now = int(rig.now())
            plan = [(now + (k + 1) * args.gap, 0, 0.0) for k in range(args.cuts)]
            closed = await powercut.cut_at(rig, [board], plan, args.say)
            await rig.until(rig.now() + args.gap)
            since = min((s for _, s in closed), default=now)
            out["cuts"] = args.cuts
            out.update(await powercut.verify(rig, [board], since, closed, timeout=600))
    return out


async def _has(rig: Rig, mid: int) -> bool:
    return mid in await rig.registered()


def _args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m hil run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("scenario", choices=SCENARIOS)
    p.add_argument("--port", help="pyserial URL of the protocol line (default: wiring [rig] port)")
    p.add_argument("--wiring", type=Path, default=DEFAULT_WIRING, help="wiring TOML")
    p.add_argument("--meter-id", type=int, help="the board's meter id (default: wiring)")
    p.add_argument(
        "--master-key-file",
        type=Path,
        help="a file holding the site's hex master key (default: the all-zero dev key)",
    )
    p.add_argument("--timeout", type=float, default=10.0, help="self-check answer timeout (s)")
    p.add_argument("--reads", type=int, default=10, help="ondemand: reads")
    p.add_argument("--cuts", type=int, default=5, help="powercut: resets")
    p.add_argument("--gap", type=float, default=60.0, help="powercut: real s after each reset")
    p.add_argument("--console", help="powercut: console port whose RTS/DTR resets the board")
    p.add_argument("--json", action="store_true", help="progress to stderr, only JSON on stdout")
    p.add_argument("--keep", action="store_true", help="keep the head-end's temp dir")
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    args = _args(argv)
    stream = sys.stderr if args.json else sys.stdout
    args.say = lambda s: print(s, file=stream, flush=True)
    result: dict[str, Any]
    try:
        args.master_key = master_key(args.master_key_file).hex()
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        wiring = load_wiring(args.wiring)
        port = args.port or wiring.port
        if not port:
            raise SelfCheckError("no serial port: give --port or set [rig] port in the wiring")
        mid = args.meter_id if args.meter_id is not None else wiring.meter_id
        check = self_check(
            port,
            wiring,
            mid,
            args.master_key,
            args.timeout,
            register=args.scenario != "selfcheck",
            say=args.say,
        )
        for w in check.warnings:
            args.say(f"warning: {w}")
        if args.scenario == "selfcheck":
            result = {"scenario": "selfcheck", "ok": True, **check.as_dict()}
        else:
            result = run(lambda: _run_scenario(args.scenario, port, wiring, check, args))
    except Stopped as e:
        return stopped(f"run {args.scenario}", e)
    except (WiringError, SelfCheckError, RigError, ChildDied) as e:
        args.say(f"error: {e}")
        result = {"scenario": args.scenario, "ok": False, "error": str(e)}
    print(json.dumps(result), flush=True)
    return 0 if result.get("ok") else 1
