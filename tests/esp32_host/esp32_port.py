# Host only (tests/test_hal_esp32.py): imports firmware/hal/esp32.py on the
# unix-port binary with the two built-ins that differ from the ESP32 port put
# back the ESP32's way for the import. Never part of the firmware.
#
#   * `micropython.alloc_emergency_exception_buf` exists on the ESP32 (emergency
#     exception buffer allocated at run time) but not in the unix port's
#     `micropython`, which is not extensible by a .py file: a wrapper with the
#     real module's functions plus that one is put in sys.modules.
#   * `time` (optional, epoch=1970 or 2000): the board clock as the ESP32 port
#     has it: time() counts whole seconds from the port's epoch on the same
#     clock machine.RTC().datetime(tuple) sets (tests/esp32_host/machine.py),
#     gmtime(0)[0] is the epoch year (2000 on the ESP32, 1970 on the unix port).
#     epoch=None keeps the unix port's real `time` (host clock, epoch 1970),
#     which RTC.datetime does not move.
# sys.modules is restored right after the import: the HAL keeps the modules it
# bound, nothing else sees the substitutes.
import asyncio  # noqa: F401  (imported first: it binds the real time module)
import sys
import time as _time

import micropython as _mp
from link import loop  # noqa: F401  (the HAL's scheduler: the same)

sim_emergency_buf = []  # sizes passed to alloc_emergency_exception_buf


class _Micropython:
    def __init__(self):
        for name in dir(_mp):
            if not name.startswith("__"):
                setattr(self, name, getattr(_mp, name))

    def alloc_emergency_exception_buf(self, size):
        sim_emergency_buf.append(size)


class EspTime:
    """`time` of a port counting from `epoch` (1970 or 2000), on the RTC clock
    of `machine` (the stand-in module, handed in by the test)."""

    def __init__(self, machine, epoch):
        self.m = machine
        self.epoch = epoch
        self.shift = machine.sim_days(epoch, 1, 1) * 86400
        for name in ("ticks_ms", "ticks_us", "ticks_diff", "ticks_add", "sleep", "sleep_ms"):
            setattr(self, name, getattr(_time, name))

    def time(self):
        return self.m.sim_time() - self.shift

    def gmtime(self, secs=None):
        if secs is None:
            secs = self.time()
        return self.m.sim_civil(secs + self.shift)

    localtime = gmtime


def load_hal(machine, epoch=None):
    """Import hal.esp32 as the ESP32 port would; return the module. `machine`:
    the stand-in whose RTC the port's clock follows (with an epoch)."""
    saved = {k: sys.modules.get(k) for k in ("micropython", "time")}
    sys.modules["micropython"] = _Micropython()
    if epoch is not None:
        sys.modules["time"] = EspTime(machine, epoch)
    try:
        from hal import esp32 as hal
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    return hal
