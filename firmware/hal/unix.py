# Virtual board HAL for the MicroPython unix port (and CPython, for tools).
#
# Everything a supervisor sets lives in <flash_dir>/board.json (UNIX.md):
# meter id and key, broker, simulated clock, energy profile, flash file,
# UART and control TCP ports. The simulated RTC survives power cuts (the
# process being killed) the way a battery-backed RTC does: its anchor is in
# <flash_dir>/rtc.json and it keeps counting from real time while "off".
# Integers only: times are int ms, energy int Wh with the remainder carried.
import json
import os
import time

try:
    import asyncio
except ImportError:
    import uasyncio as asyncio

try:
    from micropython import const
except ImportError:

    def const(x):
        return x


from hal import norflash
from meter import timeutil as tu

_PROFILE_STEP = const(900)  # the CSV's interval
_PPM = const(1000000)
NAME = "unix"
DEFAULT_DIR = "var/board"


def _exists(p):
    try:
        os.stat(p)
        return True
    except OSError:
        return False


def real_ms():
    """Wall clock in whole ms (time.time() is a float on this port: not used)."""
    return time.time_ns() // 1000000


class Board:
    """The virtual board: config, RTC, energy source, flash, ports."""

    NAME = NAME

    def __init__(self, flash_dir):
        self.dir = flash_dir
        with open(flash_dir + "/board.json") as f:
            cfg = json.load(f)
        self.cfg = cfg
        self.meter_id = cfg["meter_id"]
        self.key = bytes.fromhex(cfg["key"])
        br = cfg.get("broker")
        self.broker = (br["host"], br["port"]) if br else None
        self.keepalive_s = (br or {}).get("keepalive_s", 30)
        self.uart_port = cfg.get("uart_port", 0)
        self.control_port = cfg.get("control_port", 0)
        self.uplink = cfg.get("uplink", "mqtt" if br else "uart")
        self.tick_ms = cfg.get("tick_ms", 100)
        self.link_forced_down = False
        fl = cfg.get("flash", {})
        self.flash = norflash.NORFlash(
            fl.get("block_size", 4096),
            fl.get("blocks", 64),
            path=flash_dir + "/" + fl.get("file", "flash.bin"),
            ram=False,
        )
        self._rtc_init(cfg.get("clock", {}))
        self._energy_init(cfg.get("energy", {}))

    def ident(self):
        """Keyword arguments for meter.Ident (defaults of a fresh install)."""
        c = self.cfg
        out = {}
        for k in ("interval_s", "utc_offset_min", "push_mask", "meter_multiplier", "read_offset_s"):
            if k in c:
                out[k] = c[k]
        return out

    # -- RTC (simulated, battery-backed) ------------------------------------------

    def _rtc_init(self, clk):
        self.speed = clk.get("speed", 1)
        p = self.dir + "/rtc.json"
        if _exists(p):
            with open(p) as f:
                r = json.load(f)
            self._anchor_sim = r["sim_ms"]
            self._anchor_real = r["real_ms"]
            self._true_sim = r.get("true_sim_ms", self._anchor_sim)
            self._true_real = r.get("true_real_ms", self._anchor_real)
            self.speed = r.get("speed", self.speed)
            self.drift_ppm = r.get("drift_ppm", 0)
        else:
            self._anchor_sim = clk.get("sim_start", 1772323200) * 1000
            self._anchor_real = clk.get("real_start_ms", 0) or real_ms()
            self.drift_ppm = clk.get("drift_ppm", 0)
            self._true_sim = self._anchor_sim
            self._true_real = self._anchor_real
            self._rtc_save()

    def _rtc_save(self):
        p = self.dir + "/rtc.json"
        with open(p + ".tmp", "w") as f:
            json.dump(
                {
                    "sim_ms": self._anchor_sim,
                    "real_ms": self._anchor_real,
                    "speed": self.speed,
                    "drift_ppm": self.drift_ppm,
                    "true_sim_ms": self._true_sim,
                    "true_real_ms": self._true_real,
                },
                f,
            )
        os.rename(p + ".tmp", p)

    def now_ms(self):
        """Simulated UTC ms: anchor + elapsed real ms x speed x (1 + drift)."""
        el = (real_ms() - self._anchor_real) * self.speed
        return self._anchor_sim + el + el * self.drift_ppm // _PPM

    def now(self):
        return self.now_ms() // 1000

    def true_ms(self):
        """Simulated reality (no drift, no steps): what the energy source follows."""
        return self._true_sim + (real_ms() - self._true_real) * self.speed

    def _reanchor(self, sim_ms):
        self._anchor_sim = sim_ms
        self._anchor_real = real_ms()
        self._rtc_save()

    def set_clock(self, utc_s):
        """The firmware steps the RTC (time sync, time_set)."""
        self._reanchor(utc_s * 1000)

    def step(self, seconds):
        """Inject a clock fault: jump by `seconds` (control port)."""
        self._reanchor(self.now_ms() + seconds * 1000)

    def set_drift(self, ppm):
        self._reanchor(self.now_ms())
        self.drift_ppm = ppm
        self._rtc_save()

    def set_speed(self, speed):
        self._true_sim = self.true_ms()
        self._true_real = real_ms()
        self._reanchor(self.now_ms())
        self.speed = speed
        self._rtc_save()

    # -- energy: the load profile, integer Wh in proportion to elapsed time -------

    def _energy_init(self, en):
        self.scale_pct = en.get("scale_pct", 100)
        self.channels = en.get("channels", 4)
        self._prof = None
        self._rows = 0
        self._t0 = 0
        self._frac = [0] * self.channels  # remainder in Wh x 900 x 100
        self._last = None
        self._row_buf = bytearray(2 * self.channels)
        csv = en.get("csv")
        if csv is None:
            csv = _default_csv()
        if en.get("flat_wh") is not None:  # a flat load: Wh per 15 minutes per channel
            self._flat = en["flat_wh"]
            return
        self._flat = None
        if csv and _exists(csv):
            self._load_profile(csv)

    def _load_profile(self, csv):
        # the CSV (45 days x 96 rows) is too big for the heap as ints: convert it
        # once to 2-byte rows in the flash directory and read one row at a time
        binp = self.dir + "/profile.bin"
        n = self.channels
        if not _exists(binp):
            out = bytearray(2 * n)
            with open(csv) as f, open(binp + ".tmp", "wb") as b:
                f.readline()
                first = True
                for line in f:
                    parts = line.strip().split(",")
                    if len(parts) < 1 + n:
                        continue
                    if first:
                        t0 = _iso_utc(parts[0])
                        b.write(t0.to_bytes(4, "big"))
                        first = False
                    for i in range(n):
                        v = int(parts[1 + i])
                        out[2 * i] = (v >> 8) & 0xFF
                        out[2 * i + 1] = v & 0xFF
                    b.write(out)
            os.rename(binp + ".tmp", binp)
        self._prof = open(binp, "rb")
        self._t0 = int.from_bytes(self._prof.read(4), "big")
        self._rows = (os.stat(binp)[6] - 4) // (2 * n)

    def _row(self, t):
        """Wh per 15 minutes of each channel for sim time t (the profile repeats)."""
        if self._flat is not None:
            return self._flat
        if not self._rows:
            return None
        k = ((t - self._t0) // _PROFILE_STEP) % self._rows
        f = self._prof
        f.seek(4 + k * len(self._row_buf))
        f.readinto(self._row_buf)
        b = self._row_buf
        return [(b[2 * i] << 8) | b[2 * i + 1] for i in range(self.channels)]

    def drain(self):
        """Energy since the last drain, ints per channel (pulse-counter semantics)."""
        now = self.true_ms() // 1000
        last = self._last
        self._last = now
        if last is None or now <= last:
            return None
        out = [0] * self.channels
        t = last
        while t < now:  # walk profile rows: energy in proportion to time in each
            end = t - (t - self._t0) % _PROFILE_STEP + _PROFILE_STEP
            if end > now:
                end = now
            row = self._row(t)
            if row is not None:
                dt = end - t
                for i in range(self.channels):
                    self._frac[i] += row[i] * self.scale_pct * dt
                    whole = self._frac[i] // (_PROFILE_STEP * 100)
                    self._frac[i] -= whole * _PROFILE_STEP * 100
                    out[i] += whole
            t = end
        return out

    async def pulse_wait(self):
        # no pulse interrupts here: the profile is drained on time
        await asyncio.sleep_ms(1000)

    # -- ports ----------------------------------------------------------------------

    async def serial_ports(self, handler):
        """The optical/serial port: a TCP server, one HDLC stream per connection."""
        if self.uart_port:
            await asyncio.start_server(handler, "127.0.0.1", self.uart_port)

    # -- misc ---------------------------------------------------------------------

    def rand(self):
        return int.from_bytes(os.urandom(4), "big")

    def tamper_input(self):
        return False


def _default_csv():
    # ../shared/data/household_45d_15min.csv relative to the repo (firmware/..)
    here = __file__.rsplit("/", 1)[0] if "/" in __file__ else "."
    return here + "/../../../shared/data/household_45d_15min.csv"


def _iso_utc(s):
    # "2024-04-01T00:00:00Z" -> UTC s (integers only)
    return tu.utc(
        int(s[0:4]), int(s[5:7]), int(s[8:10]), int(s[11:13]), int(s[14:16]), int(s[17:19])
    )
