# Virtual board HAL for the MicroPython unix port (and CPython, for tools).
#
# Everything a supervisor sets lives in <flash_dir>/board.json (UNIX.md):
# meter id and key, broker, simulated clock, energy profile, flash file,
# serial, optical and control TCP ports. The simulated RTC survives power cuts (the
# process being killed) the way a battery-backed RTC does: its anchor is in
# <flash_dir>/rtc.json and it keeps counting from real time while "off".
# Integers only: times are int ms, energy int Wh with the remainder carried.
# Lean on purpose (it is measured with the firmware, `bench firmware-heap`):
# board.json is read into attributes (and once more for ident() at boot), the
# flash is a small file-backed NOR device that keeps neither an image nor its
# erase counters in RAM (hal/norflash.py, with power-cut injection, stays
# host-side).
import json
import os
import sys
import time

try:
    from micropython import const
except ImportError:

    def const(x):
        return x


from link import loop as asyncio
from meter import timeutil as tu

_PROFILE_STEP = const(900)  # the CSV's interval
_PPM = const(1000000)
_CHUNK = const(256)  # erases write 0xFF in chunks
DEFAULT_DIR = "var/board"
_IDENT = const(
    ("interval_s", "utc_offset_min", "push_mask", "meter_multiplier", "read_offset_s", "channels")
)


def _exists(p):
    try:
        os.stat(p)
        return True
    except OSError:
        return False


def real_ms():
    """Wall clock in whole ms (time.time() is a float on this port: not used)."""
    return time.time_ns() // 1000000


class Flash:
    """The board's NOR flash in a file: programming only clears bits (a 0 -> 1
    bit is a firmware bug: ValueError), ioctl(6) erases to 0xFF and counts it
    in `<path>.erase`. Written through on every operation (a kill -9 is a cut).
    The block-device protocol with offsets, as the store uses it."""

    def __init__(self, path, block_size, blocks):
        self.path = path
        self.block_size = block_size
        self.n = blocks
        if _exists(path):
            if os.stat(path)[6] != block_size * blocks:
                raise ValueError("flash image %s: wrong size" % path)
            self.f = open(path, "r+b")
        else:
            self.f = open(path, "w+b")
            for b in range(blocks):
                self._fill(b)

    def _fill(self, block):
        ff = b"\xff" * _CHUNK
        self.f.seek(block * self.block_size)
        for _ in range(self.block_size // _CHUNK):
            self.f.write(ff)
        self.f.flush()

    def readblocks(self, block, buf, offset):
        self.f.seek(block * self.block_size + offset)
        self.f.readinto(buf)

    def writeblocks(self, block, buf, offset):
        n = len(buf)
        old = bytearray(n)
        addr = block * self.block_size + offset
        f = self.f
        f.seek(addr)
        f.readinto(old)
        for i in range(n):
            if buf[i] & ~old[i] & 0xFF:
                raise ValueError("program 0->1 at %d" % (addr + i))
        f.seek(addr)
        f.write(buf)
        f.flush()

    def ioctl(self, op, arg):
        if op == 4:
            return self.n
        if op == 5:
            return self.block_size
        if op == 6:
            self._fill(arg)
            p = self.path + ".erase"  # the counters: read, count, written back
            c = []
            if _exists(p):
                with open(p) as f:
                    c = list(map(int, f.read().split()))
            if len(c) != self.n:
                c = [0] * self.n
            c[arg] += 1
            with open(p, "w") as f:
                f.write(" ".join(map(str, c)))
        return 0


class Board:
    """The virtual board: config, RTC, energy source, flash, ports."""

    NAME = "unix"

    def __init__(self, path):
        self.dir = path
        with open(path + "/board.json") as f:
            cfg = json.load(f)
        self.meter_id = cfg["meter_id"]
        self.key = bytes.fromhex(cfg["key"])
        br = cfg.get("broker") or {}
        self.broker = (br["host"], br["port"]) if br else None
        self.keepalive_s = br.get("keepalive_s", 30)
        # the login (absent: anonymous) and TLS (absent or null: plain), only
        # for --insecure runs without; the password as provisioned (SPEC "MQTT")
        self.mqtt_user = br.get("user")
        self.mqtt_password = br.get("password")
        t = br.get("tls")
        self.tls = (t["ca"], None, t.get("server_name", br["host"])) if t else None
        self.uart_port = cfg.get("uart_port", 0)
        self.optical = cfg.get("optical_port", 0)
        self.control_port = cfg.get("control_port", 0)
        self.uplink = cfg.get("uplink", "mqtt" if self.broker else "uart")
        self.tick_ms = cfg.get("tick_ms", 100)
        self.heap_probe = cfg.get("heap_probe", False)
        self.link_forced_down = False
        # energy: a flat load (Wh per 15 minutes per channel), or the load
        # profile (CSV) repeating; one of them is required
        en = cfg.get("energy", {})
        n = en.get("channels", len(cfg.get("channels") or ()) or 4)  # one per meter channel
        self.scale_pct = en.get("scale_pct", 100)
        self._frac = [0] * n  # remainder in Wh x 900 x 100
        self._last = None
        self._prof = en.get("flat_wh")  # a flat row, or (profile.bin, t0, rows)
        csv = en.get("csv")
        if self._prof is None and csv and _exists(csv):
            binp = path + "/profile.bin"
            if not _exists(binp):
                # the CSV (45 days x 96 rows) is too big for the heap as ints: convert
                # it once to 2-byte rows in the flash directory, read one row at a time
                out = bytearray(2 * n)
                try:
                    with open(csv) as f, open(binp + ".tmp", "wb") as b:
                        f.readline()
                        first = True
                        for line in f:
                            parts = line.strip().split(",")
                            if len(parts) < 1 + n:
                                continue
                            if first:
                                s = parts[0]  # "2024-04-01T00:00:00Z"
                                t0 = tu.utc(
                                    int(s[0:4]),
                                    int(s[5:7]),
                                    int(s[8:10]),
                                    int(s[11:13]),
                                    int(s[14:16]),
                                    int(s[17:19]),
                                )
                                b.write(t0.to_bytes(4, "big"))
                                first = False
                            for i in range(n):
                                v = int(parts[1 + i])
                                out[2 * i] = (v >> 8) & 0xFF
                                out[2 * i + 1] = v & 0xFF
                            b.write(out)
                    if first:
                        raise ValueError  # no rows: nothing to keep
                    os.rename(binp + ".tmp", binp)
                except (OSError, ValueError, IndexError):  # a malformed row, or none
                    if _exists(binp + ".tmp"):
                        os.remove(binp + ".tmp")
            rows = (os.stat(binp)[6] - 4) // (2 * n) if _exists(binp) else 0
            if rows > 0:
                f = open(binp, "rb")
                self._prof = (f, int.from_bytes(f.read(4), "big"), rows)
        if self._prof is None:  # a meter counting zeros would pass for a working one
            print(
                "error: no energy source: no energy.flat_wh and energy.csv %s is missing, "
                "empty or malformed; start the board with hil board --energy-csv FILE or "
                "--flat-wh IMP,EXP,RIMP,REXP" % csv,
                file=sys.stderr,
            )
            raise SystemExit(2)  # before the flash and the RTC are touched
        fl = cfg.get("flash", {})
        self.flash = Flash(
            path + "/" + fl.get("file", "flash.bin"),
            fl.get("block_size", 4096),
            fl.get("blocks", 64),
        )
        # RTC (simulated, battery-backed): rtc.json's anchor, kept as read and
        # written; board.json's clock only starts a board that has none yet
        clk = cfg.get("clock", {})
        sim = clk.get("sim_start", 1772323200) * 1000
        real = clk.get("real_start_ms", 0) or real_ms()
        self.rtc = {
            "sim_ms": sim,
            "real_ms": real,
            "speed": clk.get("speed", 1),
            "drift_ppm": clk.get("drift_ppm", 0),
            "true_sim_ms": sim,
            "true_real_ms": real,
        }
        p = path + "/rtc.json"
        if _exists(p):
            with open(p) as f:
                self.rtc.update(json.load(f))
        else:
            self._rtc_save()

    def ident(self):
        """Keyword arguments for meter.Ident (defaults of a fresh install), from
        board.json again: asked once, at boot, so not kept."""
        with open(self.dir + "/board.json") as f:
            cfg = json.load(f)
        d = {}
        for k in _IDENT:
            if k in cfg:
                d[k] = cfg[k]
        return d

    # -- RTC: {sim_ms, real_ms, speed, drift_ppm, true_sim_ms, true_real_ms} ----------

    def _rtc_save(self):
        p = self.dir + "/rtc.json"
        with open(p + ".tmp", "w") as f:
            json.dump(self.rtc, f)
        os.rename(p + ".tmp", p)

    def now_ms(self):
        """Simulated UTC ms: anchor + elapsed real ms x speed x (1 + drift)."""
        r = self.rtc
        el = (real_ms() - r["real_ms"]) * r["speed"]
        return r["sim_ms"] + el + el * r["drift_ppm"] // _PPM

    def now(self):
        return self.now_ms() // 1000

    def true_ms(self):
        """Simulated reality (no drift, no steps): what the energy source follows."""
        r = self.rtc
        return r["true_sim_ms"] + (real_ms() - r["true_real_ms"]) * r["speed"]

    def set_clock(self, t):
        """The firmware steps the RTC to UTC second `t` (time sync, time_set)."""
        self.anchor(t * 1000)

    def anchor(self, sim_ms, drift=None, speed=None):
        """Re-anchor the RTC at sim_ms; the control port also changes drift
        (ppm) or speed there (`step`, `drift`, `speed`)."""
        r = self.rtc
        if speed is not None:
            r["true_sim_ms"] = self.true_ms()
            r["true_real_ms"] = real_ms()
            r["speed"] = speed
        if drift is not None:
            r["drift_ppm"] = drift
        r["sim_ms"] = sim_ms
        r["real_ms"] = real_ms()
        self._rtc_save()

    # -- energy: integer Wh in proportion to elapsed time ------------------------------

    def drain(self):
        """Energy since the last drain, ints per channel (pulse-counter semantics)."""
        now = self.true_ms() // 1000
        last = self._last
        self._last = now
        p = self._prof
        if last is None or now <= last or p is None:
            return None
        frac = self._frac
        n = len(frac)
        out = [0] * n
        prof = type(p) is tuple  # else a flat row
        t0 = p[1] if prof else 0
        t = last
        while t < now:  # walk profile rows: energy in proportion to time in each
            end = t - (t - t0) % _PROFILE_STEP + _PROFILE_STEP
            if end > now:
                end = now
            row = p
            if prof:  # the profile repeats: its row k, 2 bytes a channel
                p[0].seek(4 + ((t - t0) // _PROFILE_STEP) % p[2] * 2 * n)
                row = p[0].read(2 * n)
            dt = end - t
            for i in range(n):
                wh = (row[2 * i] << 8) | row[2 * i + 1] if prof else row[i]
                frac[i] += wh * self.scale_pct * dt
                whole = frac[i] // (_PROFILE_STEP * 100)
                frac[i] -= whole * _PROFILE_STEP * 100
                out[i] += whole
            t = end
        return out

    async def pulse_wait(self):
        # no pulse interrupts here: the profile is drained on time
        await asyncio.sleep_ms(1000)

    # -- ports ----------------------------------------------------------------------

    async def serial_ports(self, handler, optical=None):
        """The serial port (one HDLC stream per connection) and the optical port
        (IEC 62056-21, one probe per connection): TCP servers, if configured."""
        if self.uart_port:
            await asyncio.start_server(handler, "127.0.0.1", self.uart_port)
        if self.optical and optical:
            await asyncio.start_server(optical, "127.0.0.1", self.optical)

    def set_baud(self, stream, speed, bits):
        """A UART's baud rate (speed) and framing (bits 7: 7E1, 8: 8N1); nothing to do on TCP."""

    def rand(self):
        return int.from_bytes(os.urandom(4), "big")
