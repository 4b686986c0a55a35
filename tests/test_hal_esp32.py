"""firmware/hal/esp32.py (the ESP32 board HAL) on the real MicroPython binary.

No hardware here: tests/esp32_host/ holds stand-ins for the ESP32 port's
`machine`, `esp32` and `network` modules, written to the MicroPython v1.28 API
as hal/esp32.py uses it (the partition is a real block device on the NOR model
of hal/norflash.py), and esp32_port.py, which imports the HAL with the two
built-ins the unix port lacks put back the ESP32's way (the emergency exception
buffer; `time` counting from 2000 on the RTC's clock). What is proved is the
HAL's own logic: pulse counting and draining (M01), the RTC (M04/M07), the
board config, and the meter core's store on the board's flash (M02).

Not covered: the radio, the UART streams (serial_ports), real PCNT/GPIO timing.
The ESP32's pin IRQs are soft (Pin.irq has no `hard` there): each edge
schedules the handler, and the scheduler queue holds 8, so edges while the VM
is stuck in a long C call (a flash erase) can be dropped; the stand-in runs
every handler at once and cannot show that.
"""

from __future__ import annotations

import calendar
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.support.mpy import ROOT, run_mpy

ESP32_HOST = ROOT / "tests" / "esp32_host"
KEY = bytes(range(32))
PINS = (25, 26, 27, 14)  # README "Wiring": the four S0 inputs
EPOCH_2000 = 946684800

pytestmark = pytest.mark.mpy


def write_cfg(tmp_path: Path, **extra: Any) -> Path:
    cfg: dict[str, Any] = {"meter_id": 4711, "key": KEY.hex(), **extra}
    (tmp_path / "board.json").write_text(json.dumps(cfg))
    return tmp_path


def run_board(code: str, tmp_path: Path, epoch: int | None = 2000, counter: bool = True) -> Any:
    """Run `code` on MicroPython with `hal` (hal/esp32.py imported as on a port
    whose time counts from `epoch`; None: the unix port's own clock), the
    stand-ins `machine`, `esp32`, `network`, and D (the board.json directory);
    counter=False takes machine.Counter away (a chip without PCNT), so the HAL
    falls back to pin IRQs. The code sets R; R comes back through JSON."""
    prelude = (
        "import json\n"
        "import esp32_port\n"
        "import machine, esp32, network\n"
        f"hal = esp32_port.load_hal(machine, {epoch!r})\n"
        + ("" if counter else "del machine.Counter\n")
        + f"D = {str(tmp_path)!r}\n"
        "R = None\n"
    )
    out = run_mpy(prelude + code + "\nprint('RESULT', json.dumps(R))\n", extra_path=(ESP32_HOST,))
    line = [x for x in out.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT ") :])


# --- M01: energy counting per channel -------------------------------------------------


@pytest.mark.req("M01")
def test_m01_pin_irq_fallback_counts_pulses_per_channel(tmp_path: Path) -> None:
    r = run_board(
        """
b = hal.Board(D)
R = {"counters": len(b._counters), "irqs": {}, "pins": {}}
for g in (25, 26, 27, 14):
    h, trig = machine.sim_irqs[g]
    R["irqs"][g] = trig
    R["pins"][g] = machine.sim_pins[g]
for g, n in zip((25, 26, 27, 14), (3, 0, 17, 1000)):
    machine.sim_pulses(g, n)
R["first"] = b.drain()
R["again"] = b.drain()
machine.sim_pulses(26, 5)
R["later"] = b.drain()
R["irq_on"] = machine.sim_irq_enabled()
""",
        write_cfg(tmp_path),
        counter=False,
    )
    assert r["counters"] == 0  # no machine.Counter: the pin-IRQ fallback
    falling, pull_up, mode_in = 2, 2, 1  # the stand-in's Pin.IRQ_FALLING, PULL_UP, IN
    assert r["irqs"] == {str(g): falling for g in PINS}  # README: falling edge
    assert r["pins"] == {str(g): [mode_in, pull_up] for g in PINS}  # internal pull-up
    assert r["first"] == [3, 0, 17, 1000]
    assert r["again"] == [0, 0, 0, 0]  # drain resets
    assert r["later"] == [0, 5, 0, 0]
    assert r["irq_on"] is True  # drain's critical section is closed again


@pytest.mark.req("M01")
@pytest.mark.parametrize(
    "counts",
    [
        (65535, 65536, 65537, 1),  # the 16-bit half: just under, at, just over the carry
        (131072, 0, 196613, 70000),  # several carries; 3 * 65536 + 5
    ],
)
def test_m01_pin_irq_fallback_carries_above_65535(tmp_path: Path, counts: tuple[int, ...]) -> None:
    r = run_board(
        f"""
b = hal.Board(D)
C = {list(counts)!r}
for g, n in zip((25, 26, 27, 14), C):
    machine.sim_pulses(g, n)
R = {{"raw": list(hal._counts), "first": b.drain()}}
for g, n in zip((25, 26, 27, 14), C):
    machine.sim_pulses(g, n)
R["second"] = b.drain()
R["zero"] = b.drain()
R["raw_after"] = list(hal._counts)
""",
        write_cfg(tmp_path),
        counter=False,
    )
    # the ISR keeps each channel as two little-endian 16-bit halves
    for ch, n in enumerate(counts):
        raw = r["raw"][4 * ch : 4 * ch + 4]
        assert raw == [n & 0xFF, (n >> 8) & 0xFF, (n >> 16) & 0xFF, (n >> 24) & 0xFF]
    assert r["first"] == list(counts)
    assert r["second"] == list(counts)  # the upper half was reset too
    assert r["zero"] == [0, 0, 0, 0]
    assert r["raw_after"] == [0] * 16


@pytest.mark.req("M01")
def test_m01_pulses_during_drains_critical_section_are_not_lost(tmp_path: Path) -> None:
    """Edges while drain() has IRQs masked are counted in the next drain."""
    r = run_board(
        """
b = hal.Board(D)
for g in (25, 26, 27, 14):
    machine.sim_pulses(g, 10)
def edges():  # one pulse per input while drain() holds IRQs off
    for g in (25, 26, 27, 14):
        machine.sim_pulses(g, 1)
machine.sim_during_irq_off[0] = edges
R = {"first": b.drain(), "second": b.drain(), "irq_on": machine.sim_irq_enabled()}
""",
        write_cfg(tmp_path),
        counter=False,
    )
    assert r["first"] == [10, 10, 10, 10]
    assert r["second"] == [1, 1, 1, 1]
    assert r["irq_on"] is True


@pytest.mark.req("M01")
def test_m01_pulse_wait_wakes_on_a_pulse_in_the_fallback(tmp_path: Path) -> None:
    r = run_board(
        """
from link import loop as asyncio
b = hal.Board(D)
async def wait_ms(ms):  # pulse_wait() within ms: "woke", else "timeout" (cancelled)
    t = asyncio.create_task(b.pulse_wait())
    for _ in range(ms):
        if t.coro is None:
            return "woke"
        await asyncio.sleep_ms(1)
    t.cancel()
    return "timeout"
async def main():
    out = []
    out.append(await wait_ms(50))
    machine.sim_pulses(27, 1)  # the ISR sets the flag
    out.append(await wait_ms(50))
    out.append(b.drain())
    return out
R = asyncio.run(main())
""",
        write_cfg(tmp_path),
        counter=False,
    )
    assert r == ["timeout", "woke", [0, 0, 1, 0]]


@pytest.mark.req("M01")
def test_m01_counter_path_drains_the_difference_since_last_drain(tmp_path: Path) -> None:
    r = run_board(
        """
b = hal.Board(D)
R = {"counters": len(b._counters), "irqs": len(machine.sim_irqs), "units": {}}
for i, c in enumerate(b._counters):
    R["units"][i] = [c._src.id, c._edge, c._dir, c.filter_ns]
for g, n in zip((25, 26, 27, 14), (5, 0, 31999, 32001)):
    machine.sim_pulses(g, n)
R["first"] = b.drain()
for g, n in zip((25, 26, 27, 14), (1, 2, 3, 64000)):
    machine.sim_pulses(g, n)
R["second"] = b.drain()
R["zero"] = b.drain()
R["values"] = [c.value() for c in b._counters]
""",
        write_cfg(tmp_path),
    )
    assert r["counters"] == 4 and r["irqs"] == 0  # PCNT units, no pin IRQs
    rising, up = 1, 1
    # Counter(i) on the channel's pin, rising edge, 10 us filter (README "Wiring")
    assert r["units"] == {str(i): [g, rising, up, 10000] for i, g in enumerate(PINS)}
    assert r["first"] == [5, 0, 31999, 32001]  # across the unit's 32000 overflow
    assert r["second"] == [1, 2, 3, 64000]  # only what came since the last drain
    assert r["zero"] == [0, 0, 0, 0]
    assert r["values"] == [6, 2, 32002, 96001]  # the counters themselves never reset


@pytest.mark.req("M01")
def test_m01_custom_pulse_pins_are_used(tmp_path: Path) -> None:
    pins = {"pulses": [32, 33, 4, 5]}
    code = """
b = hal.Board(D)
for g, n in zip((32, 33, 4, 5), (1, 2, 3, 4)):
    machine.sim_pulses(g, n)
for g in (25, 26, 27, 14):
    machine.sim_pulses(g, 100)  # not wired: not counted
R = b.drain()
"""
    assert run_board(code, write_cfg(tmp_path, pins=pins)) == [1, 2, 3, 4]
    assert run_board(code, write_cfg(tmp_path, pins=pins), counter=False) == [1, 2, 3, 4]


# --- M04/M07: the RTC ---------------------------------------------------------------------

INSTANTS = [
    datetime(2000, 1, 1, 0, 0, 0, tzinfo=UTC),  # the ESP32 epoch: time.time() == 0
    datetime(2024, 2, 28, 23, 59, 59, tzinfo=UTC),
    datetime(2024, 2, 29, 12, 34, 56, tzinfo=UTC),  # leap day (a Thursday)
    datetime(2024, 3, 1, 0, 0, 0, tzinfo=UTC),
    datetime(2026, 3, 2, 0, 0, 0, tzinfo=UTC),  # a Monday: weekday 0
    datetime(2026, 3, 8, 23, 59, 59, tzinfo=UTC),  # a Sunday: weekday 6
    datetime(2038, 1, 19, 3, 14, 8, tzinfo=UTC),  # 2**31 s since 1970
    datetime(2100, 2, 28, 23, 59, 59, tzinfo=UTC),  # 2100 is not a leap year
    datetime(2100, 3, 1, 0, 0, 0, tzinfo=UTC),
]


@pytest.mark.req("M04", "M07")
@pytest.mark.parametrize("epoch", [2000, 1970])
def test_m04_m07_set_clock_sets_rtc_civil_utc_and_weekday(tmp_path: Path, epoch: int) -> None:
    """set_clock(utc) -> RTC.datetime gets the civil UTC time and weekday
    (Monday = 0); now() reads the same instant back through the port's
    time.time() (seconds since 2000 on the ESP32, since 1970 on other ports)."""
    utcs = [int(d.timestamp()) for d in INSTANTS]
    r = run_board(
        f"""
b = hal.Board(D)
R = {{"epoch": hal._EPOCH, "gm0": hal.time.gmtime(0)[0], "rows": []}}
for u in {utcs!r}:
    b.set_clock(u)
    R["rows"].append([machine.sim_rtc_sets[-1], machine.RTC().datetime(), hal.time.time(),
                      b.now(), b.now_ms()])
""",
        write_cfg(tmp_path),
        epoch=epoch,
    )
    assert r["gm0"] == epoch
    assert r["epoch"] == (EPOCH_2000 if epoch == 2000 else 0)
    shift = calendar.timegm((epoch, 1, 1, 0, 0, 0))
    for d, (rtc_set, rtc_read, port_time, now, now_ms) in zip(INSTANTS, r["rows"], strict=True):
        u = int(d.timestamp())
        civil = [d.year, d.month, d.day, d.weekday(), d.hour, d.minute, d.second, 0]
        assert rtc_set == civil, d
        assert rtc_read == civil, d
        assert port_time == u - shift, d  # what the port's clock now counts
        assert now == u and now_ms == u * 1000, d
        assert isinstance(now, int) and isinstance(now_ms, int)  # the core needs ints


@pytest.mark.req("M04", "M07")
@pytest.mark.parametrize("epoch", [2000, 1970])
def test_m04_now_converts_the_ports_clock_to_1970_seconds(tmp_path: Path, epoch: int) -> None:
    """The other direction: the clock is moved under the HAL (not by set_clock)."""
    utcs = [int(d.timestamp()) for d in INSTANTS]
    r = run_board(
        f"""
b = hal.Board(D)
R = []
for u in {utcs!r}:
    machine.sim_set_time(u)
    R.append([hal.time.time(), b.now()])
""",
        write_cfg(tmp_path),
        epoch=epoch,
    )
    shift = calendar.timegm((epoch, 1, 1, 0, 0, 0))
    assert r == [[u - shift, u] for u in utcs]
    assert all(isinstance(now, int) for _, now in r)


@pytest.mark.req("M04")
def test_m04_on_the_unix_ports_real_clock_now_is_host_utc(tmp_path: Path) -> None:
    """With the unix port's own `time` (gmtime(0)[0] == 1970) the HAL adds nothing.

    Note: the unix port's time.time() is a float, the ESP32's an int (whole
    seconds); now() passes it through, so it is an int only on the board. The
    epoch tests above run on an int clock as the ESP32's and check the type."""
    before = int(time.time())
    r = run_board(
        """
b = hal.Board(D)
R = [hal.time.gmtime(0)[0], hal._EPOCH, b.now(), b.now_ms()]
""",
        write_cfg(tmp_path),
        epoch=None,
    )
    after = int(time.time())
    gm0, shift, now, now_ms = r
    assert gm0 == 1970 and shift == 0
    assert before - 1 <= now <= after + 1
    assert now_ms == pytest.approx(now * 1000)


# --- board.json -----------------------------------------------------------------------------


def test_board_json_is_read(tmp_path: Path) -> None:
    cfg = {
        "broker": {"host": "10.0.0.2", "port": 1884, "keepalive_s": 30},
        "wifi": {"ssid": "meter-net", "key": "s3cret"},
        "interval_s": 300,
        "utc_offset_min": 60,
        "push_mask": 1,
        "meter_multiplier": 2,
        "read_offset_s": 600,
        "tick_ms": 500,
        "pins": {"uart": {"id": 1, "tx": 4, "rx": 5, "baud": 9600}},
    }
    r = run_board(
        """
import esp32_port
b = hal.Board(D)
u = machine.sim_uarts[1]
R = {"id": b.meter_id, "key": b.key.hex(), "broker": b.broker, "keepalive": b.keepalive_s,
     "uplink": b.uplink, "tick_ms": b.tick_ms, "ident": b.ident(),
     "wlan": network.sim_log, "sta_active": network.WLAN(network.WLAN.IF_STA).active(),
     "uart": [u is b.uart, u.baudrate, u.tx, u.rx], "uarts": sorted(machine.sim_uarts),
     "flash": list(b.flash.info()), "blocks": [b.flash.ioctl(4, 0), b.flash.ioctl(5, 0)],
     "emergency_buf": esp32_port.sim_emergency_buf}
""",
        write_cfg(tmp_path, **cfg),
    )
    assert r["id"] == 4711
    assert r["key"] == KEY.hex()
    assert r["broker"] == ["10.0.0.2", 1884]
    assert r["keepalive"] == 30
    assert r["uplink"] == "mqtt"
    assert r["tick_ms"] == 500
    assert r["ident"] == {
        "interval_s": 300,
        "utc_offset_min": 60,
        "push_mask": 1,
        "meter_multiplier": 2,
        "read_offset_s": 600,
    }
    # WLAN(IF_STA): activated, then connect(ssid, key), once
    assert r["wlan"] == [["active", 0, True], ["connect", 0, "meter-net", "s3cret"]]
    assert r["sta_active"] is True
    # the serial line on its own UART, the optical port on UART2 (the default pins)
    assert r["uart"] == [True, 9600, 4, 5] and r["uarts"] == [1, 2]
    # the `meter` data partition (README "Flash layout"): 64 blocks of 4 KiB
    assert r["flash"] == [1, 0x81, 0x3C0000, 0x40000, "meter", False]
    assert r["blocks"] == [64, 4096]
    assert r["emergency_buf"] == [100]  # for the ISR's exceptions


def test_board_json_defaults(tmp_path: Path) -> None:
    r = run_board(
        """
b = hal.Board(D)
u = b.optical
o = [u.id, u.baudrate, u.bits, u.parity, u.tx, u.rx]
b.set_baud(None, 19200, 8)  # mode E: binary mode at 19,200, 8N1
o2 = [u.baudrate, u.bits, u.parity, u.stop]
b.set_baud(None, 300, 7)  # back to sign-on: 300 baud 7E1
R = {"broker": b.broker, "keepalive": b.keepalive_s, "uplink": b.uplink, "tick_ms": b.tick_ms,
     "ident": b.ident(), "wlans": len(network.sim_wlans), "pins": b.pulse_pins,
     "uart": b.uart, "optical": o, "binary": o2, "sign_on": [u.baudrate, u.bits, u.parity],
     "control_port": b.control_port}
""",
        write_cfg(tmp_path),
    )
    assert r == {
        "broker": None,
        "keepalive": 60,
        "uplink": "uart",  # no broker: unprompted frames go to a serial line (none here)
        "tick_ms": 1000,
        "ident": {},
        "wlans": 0,  # no "wifi": the radio is not touched
        "pins": list(PINS),
        "uart": None,  # no serial line unless pins "uart" names one
        # README "Wiring": the optical head on UART2, TX 17, RX 16, 300 baud 7E1
        "optical": [2, 300, 7, 0, 17, 16],
        "binary": [19200, 8, None, 1],
        "sign_on": [300, 7, 0],
        "control_port": 0,
    }


def test_board_without_the_meter_partition_refuses_to_start(tmp_path: Path) -> None:
    r = run_board(
        """
esp32.sim_new_table(0)  # a partition table without `meter`
try:
    hal.Board(D)
    R = "started"
except OSError as e:
    R = str(e)
""",
        write_cfg(tmp_path),
    )
    assert "meter" in r


def test_board_with_more_pulse_inputs_than_channels_refuses_to_start(tmp_path: Path) -> None:
    r = run_board(
        """
try:
    hal.Board(D)
    R = "started"
except ValueError as e:
    R = list(e.args)
""",
        write_cfg(tmp_path, pins={"pulses": [25, 26, 27, 14, 12]}),
    )
    assert r == ["pins.pulses", [25, 26, 27, 14, 12]]  # a clear error, not an ISR IndexError


# --- M02: the meter core's store on the board's flash ---------------------------------------

T0 = 1772323210  # 2026-03-01T00:00:10Z
PLAN = [  # pulses per channel in each interval after boot
    (12, 0, 3, 1),
    (250, 7, 0, 0),
    (70000, 1, 2, 3),  # > 65535 in one interval: the ISR's carry, a wide record
    (0, 0, 0, 0),
    (31999, 32001, 5, 6),  # around the PCNT unit's 32000 overflow
]


@pytest.mark.req("M02", "M01")
@pytest.mark.parametrize("counter", [True, False], ids=["pcnt", "pin_irq"])
def test_m02_core_on_board_flash_keeps_intervals_across_reboot(
    tmp_path: Path, counter: bool
) -> None:
    r = run_board(
        f"""
from meter import meter as core, store
machine.sim_set_time({T0})
b = hal.Board(D)
st = store.Store(b.flash)
m = core.Meter(st, core.Ident(b.meter_id, b.key, **b.ident()), b.rand, b.set_clock)
m.boot(b.now())
for counts in {PLAN!r}:
    for g, n in zip((25, 26, 27, 14), counts):
        machine.sim_pulses(g, n)
    m.add(b.drain())
    machine.sim_set_time((b.now() // 300 + 1) * 300 + 1)  # 1 s past the boundary
    m.tick(b.now(), False, b.now_ms())
nor = b.flash.sim_nor
R = {{"before": list(st.intervals()), "regs": list(st.registers()),
     "programs": nor.programs, "erases": nor.erases}}
# reboot: a new Board finds the partition again, a new Store mounts it
machine.sim_advance(3600)
b2 = hal.Board(D)
R["new_handle"] = b2.flash is not b.flash and b2.flash.sim_nor is nor
st2 = store.Store(b2.flash).mount()
R["after"] = list(st2.intervals())
R["regs_after"] = list(st2.registers())
# and the core boots on it: power-up records follow, the closed ones stay
m2 = core.Meter(st2, core.Ident(b2.meter_id, b2.key, **b2.ident()), b2.rand, b2.set_clock)
m2.boot(b2.now())
R["after_boot"] = list(st2.intervals())
""",
        write_cfg(tmp_path, interval_s=300),
        counter=counter,
    )
    start = T0 - T0 % 300
    partial = 0x04
    expected = [
        [start + 300 * k, 300, partial if k == 0 else 0, list(c)] for k, c in enumerate(PLAN)
    ]
    assert r["before"] == expected
    assert r["regs"] == [sum(c[i] for c in PLAN) for i in range(4)]
    assert r["programs"] > 0  # written through the partition's block device
    assert r["new_handle"] is True
    assert r["after"] == expected
    assert r["regs_after"] == r["regs"]
    assert r["after_boot"][: len(expected)] == expected
    power_failed = 0x01
    assert all(iv[2] & power_failed for iv in r["after_boot"][len(expected) :])
    assert len(r["after_boot"]) > len(expected)


@pytest.mark.req("M20")
def test_m20_secrets_come_from_nvs_not_board_json(tmp_path: Path) -> None:
    """Key, MQTT password, CA and Wi-Fi credentials as provisioned in NVS
    (encrypted on a product, README "Secrets"); board.json holds none."""
    (tmp_path / "board.json").write_text(
        json.dumps(
            {
                "meter_id": 4711,
                "broker": {"host": "10.0.0.2", "port": 8883, "tls": {"server_name": "mqtt.site"}},
            }
        )
    )
    key = bytes(range(100, 132))
    r = run_board(
        f"""
ns = esp32.NVS("ami")
ns.set_blob("key", {key!r})
ns.set_blob("mqtt_pw", b"0123456789abcdef0123456789abcdef")
ns.set_blob("ca", b"0\\x82\\x01\\x9dDER")
ns.set_blob("wifi_ssid", b"meter-net")
ns.set_blob("wifi_key", b"s3cret")
ns.commit()
b = hal.Board(D)
R = {{"key": b.key.hex(), "user": b.mqtt_user, "pw": b.mqtt_password,
      "tls": [b.tls[0], b.tls[1].hex(), b.tls[2]], "wlan": network.sim_log}}
""",
        tmp_path,
    )
    assert r["key"] == key.hex()
    assert r["user"] == "4711" and r["pw"] == "0123456789abcdef0123456789abcdef"
    assert r["tls"] == [None, b"0\x82\x01\x9dDER".hex(), "mqtt.site"]  # the CA pinned as bytes
    assert r["wlan"] == [["active", 0, True], ["connect", 0, "meter-net", "s3cret"]]


@pytest.mark.req("M20")
def test_m20_without_nvs_entries_board_json_is_the_fallback(tmp_path: Path) -> None:
    r = run_board(
        """
b = hal.Board(D)
R = {"key": b.key.hex(), "user": b.mqtt_user, "pw": b.mqtt_password, "tls": b.tls}
""",
        write_cfg(
            tmp_path,
            broker={
                "host": "h",
                "port": 8883,
                "password": "ab" * 16,
                "tls": {"ca": "/ca.der", "server_name": "h.site"},
            },
        ),
    )
    assert r["key"] == KEY.hex() and r["user"] == "4711" and r["pw"] == "ab" * 16
    assert r["tls"] == ["/ca.der", None, "h.site"]
