# ESP32 board HAL (MicroPython v1.28, ESP32 GENERIC 4 MiB). Cannot run on the
# host: compiled with mpy-cross and written to the v1.28 docs of machine.RTC,
# machine.Counter (PCNT), machine.Pin.irq, esp32.Partition, machine.UART
# (the optical port; a serial line if configured),
# network.WLAN. Wiring, partitions and limits: firmware/README.md.
#
# The board's config (id, broker, pins) is the JSON file /board.json on the
# board's filesystem, with the same keys as the virtual board's (hal/UNIX.md)
# plus "wifi" and "pins". The secrets (the meter key, the MQTT password, the
# broker's CA, the Wi-Fi credentials) are read from NVS, namespace "ami", which
# flash encryption + NVS encryption keep off the readable flash (firmware/
# README.md "Secrets"); board.json's copies are a development fallback only.
import json
import os
import sys
import time

import esp32
import machine
import network

try:
    from micropython import const
except ImportError:

    def const(x):
        return x


import micropython

from link import loop as asyncio
from meter import timeutil as tu

NAME = "esp32"
DEFAULT_DIR = ""
_EPOCH = tu.epoch_shift(time.gmtime(0)[0])  # the one conversion: 2000 or 1970 epoch
_PARTITION_LABEL = "meter"  # a data partition of >= 256 KiB (README: partitions)
_MAX_CH = const(4)
_NVS_NAMESPACE = "ami"  # key, mqtt_pw, ca, wifi_ssid, wifi_key (README "Secrets")

# Pulse inputs for the pin-IRQ fallback: counts live in a preallocated array;
# the ISR only increments and sets a flag (no allocation: "Writing interrupt
# handlers"); the pulses task drains them.
micropython.alloc_emergency_exception_buf(100)
_counts = bytearray(4 * _MAX_CH)  # 4 x u32 little-endian, written by the ISRs
_flag = None


def _make_isr(ch):
    # one closure per channel, built at init (not in the ISR)
    def isr(pin):
        i = ch * 4
        v = _counts[i] | (_counts[i + 1] << 8)
        v += 1
        _counts[i] = v & 0xFF
        _counts[i + 1] = (v >> 8) & 0xFF
        if v > 0xFFFF:  # carry into the upper half (small ints only)
            _counts[i] = 0
            _counts[i + 1] = 0
            w = (_counts[i + 2] | (_counts[i + 3] << 8)) + 1
            _counts[i + 2] = w & 0xFF
            _counts[i + 3] = (w >> 8) & 0xFF
        if _flag is not None:
            _flag.set()

    return isr


_IDENT = (
    "interval_s",
    "utc_offset_min",
    "push_mask",
    "meter_multiplier",
    "read_offset_s",
    "channels",  # [kind, unit, multiplier, scaler] each, one pulse input each (provision)
)


def _nvs(ns, name, size):
    """The bytes of NVS blob `name` (at most `size`), or None if it is not there."""
    if ns is None:
        return None
    buf = bytearray(size)
    try:
        n = ns.get_blob(name, buf)
    except OSError:  # ESP_ERR_NVS_NOT_FOUND (or too long: not ours)
        return None
    return bytes(buf[:n])


class Board:
    NAME = NAME

    def __init__(self, flash_dir=DEFAULT_DIR):
        global _flag
        with open((flash_dir or "") + "/board.json") as f:
            cfg = json.load(f)  # read once into attributes (not kept: heap)
        self._ident = {k: cfg[k] for k in _IDENT if k in cfg}
        self.meter_id = cfg["meter_id"]
        try:
            ns = esp32.NVS(_NVS_NAMESPACE)
        except OSError:  # no NVS partition: board.json only
            ns = None
        key = _nvs(ns, "key", 32)
        self.key = key if key else bytes.fromhex(cfg["key"])
        br = cfg.get("broker") or {}
        self.broker = (br["host"], br["port"]) if br else None
        self.keepalive_s = br.get("keepalive_s", 60)
        pw = _nvs(ns, "mqtt_pw", 64)
        self.mqtt_password = pw.decode() if pw else br.get("password")
        # the login is the meter id (SPEC "MQTT"); none without a password
        self.mqtt_user = br.get("user", str(self.meter_id)) if self.mqtt_password else None
        t = br.get("tls") or {}
        ca = _nvs(ns, "ca", 2048)  # DER (or PEM) of the CA the broker's certificate is under
        name = t.get("server_name", br.get("host"))
        self.tls = (None, ca, name) if ca else (t["ca"], None, name) if t.get("ca") else None
        self.uplink = cfg.get("uplink", "mqtt" if br else "uart")
        self.tick_ms = cfg.get("tick_ms", 1000)
        self.control_port = 0  # no control port on a real board
        self.link_forced_down = False
        pins = cfg.get("pins", {})
        self.rtc = machine.RTC()
        # flash: a raw data partition is the block device (readblocks/writeblocks/ioctl)
        found = esp32.Partition.find(esp32.Partition.TYPE_DATA, label=_PARTITION_LABEL)
        if not found:
            raise OSError("no data partition labelled %r" % _PARTITION_LABEL)
        self.flash = found[0]
        # pulse inputs: machine.Counter (PCNT units) if the firmware has it, else pin IRQs
        self.pulse_pins = pins.get("pulses", [25, 26, 27, 14])
        if len(self.pulse_pins) > _MAX_CH:  # the ISRs count into _MAX_CH slots
            raise ValueError("pins.pulses", self.pulse_pins)
        self._counters = []
        self._last = [0] * len(self.pulse_pins)
        _flag = asyncio.ThreadSafeFlag()
        self._flag = _flag
        if hasattr(machine, "Counter"):
            for i, p in enumerate(self.pulse_pins):
                pin = machine.Pin(p, machine.Pin.IN)
                self._counters.append(
                    machine.Counter(i, pin, edge=machine.Counter.RISING, filter_ns=10000)
                )
        else:
            for i, p in enumerate(self.pulse_pins):
                pin = machine.Pin(p, machine.Pin.IN, machine.Pin.PULL_UP)
                pin.irq(trigger=machine.Pin.IRQ_FALLING, handler=_make_isr(i))
        # the optical port (IEC 62056-21 head): 300 baud 7E1 until a probe
        # asks for more (set_baud); a serial HDLC line only if "uart" is set
        o = pins.get("optical", {"id": 2, "tx": 17, "rx": 16})
        self.optical = machine.UART(
            o["id"], baudrate=300, bits=7, parity=0, stop=1, tx=o["tx"], rx=o["rx"]
        )
        u = pins.get("uart")
        self.uart = None
        if u:
            self.uart = machine.UART(u["id"], baudrate=u["baud"], tx=u["tx"], rx=u["rx"])
        self._wlan = None
        w = cfg.get("wifi") or {}
        ssid = _nvs(ns, "wifi_ssid", 32)
        ssid = ssid.decode() if ssid else w.get("ssid")
        if ssid:
            wkey = _nvs(ns, "wifi_key", 64)
            self._wlan = network.WLAN(network.WLAN.IF_STA)
            self._wlan.active(True)
            self._wlan.connect(ssid, wkey.decode() if wkey else w.get("key"))

    def ident(self):
        """Keyword arguments for meter.Ident (defaults of a fresh install)."""
        return self._ident

    # -- RTC ------------------------------------------------------------------

    def now(self):
        """UTC s since 1970, an int (time.time() is an int on this port)."""
        return int(time.time()) + _EPOCH  # an int on the ESP32; a float on some ports

    def now_ms(self):
        # whole seconds from the RTC; the sub-second part from ticks is not
        # worth the complexity for a 20 s threshold (error < 1 s)
        return self.now() * 1000

    def set_clock(self, utc_s):
        y, mo, d, h, mi, s = tu.civil(utc_s)
        wd = (utc_s // 86400 + 3) % 7  # Monday = 0 (1970-01-01 was a Thursday)
        self.rtc.datetime((y, mo, d, wd, h, mi, s, 0))

    # -- energy -----------------------------------------------------------------

    def drain(self):
        out = [0] * len(self.pulse_pins)
        if self._counters:
            for i, c in enumerate(self._counters):
                v = c.value()
                out[i] = v - self._last[i]
                self._last[i] = v
        else:
            state = machine.disable_irq()
            for i in range(len(out)):
                j = i * 4
                v = (_counts[j] | (_counts[j + 1] << 8)) | (
                    (_counts[j + 2] | (_counts[j + 3] << 8)) << 16
                )
                out[i] = v
                for k in range(4):
                    _counts[j + k] = 0
            machine.enable_irq(state)
        return out

    async def pulse_wait(self):
        if self._counters:
            await asyncio.sleep_ms(1000)  # PCNT counts in hardware: drain each second
        else:
            await self._flag.wait()

    # -- ports --------------------------------------------------------------------

    async def serial_ports(self, handler, optical=None):
        """The serial line (pins "uart"), if any: one HDLC stream over its UART;
        the optical port: its UART, served again whenever a dialogue ends."""
        if self.uart is not None:
            s = asyncio.StreamReader(self.uart)
            asyncio.create_task(handler(s, asyncio.StreamWriter(self.uart, {})))
        if optical:
            asyncio.create_task(self._serve(optical))

    async def _serve(self, optical):
        u = self.optical
        while True:
            try:
                await optical(asyncio.StreamReader(u), asyncio.StreamWriter(u, {}))
            except Exception as e:  # e.g. closing a UART: the port stays served
                sys.print_exception(e)
            self.set_baud(u, 300, 7)

    def set_baud(self, stream, speed, bits):
        """The optical UART's baud rate and framing: 7 bits even parity (IEC
        62056-21 sign-on and readout) or 8N1 (binary mode)."""
        self.optical.init(baudrate=speed, bits=bits, parity=0 if bits == 7 else None, stop=1)

    def rand(self):
        return int.from_bytes(os.urandom(4), "big")
