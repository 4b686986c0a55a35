# Host stand-in for the ESP32 port's `machine` module (MicroPython v1.28 docs:
# machine.RTC, machine.Counter, machine.Pin.irq, machine.UART,
# machine.disable_irq/enable_irq). It stands in for hardware on the host only
# (tests/test_hal_esp32.py runs firmware/hal/esp32.py on the unix-port binary
# with tests/esp32_host/ first on sys.path); it is never part of the firmware.
# Only what hal/esp32.py uses is modelled, with the documented signatures; the
# `sim_*` names are the test's side of the wires (inject pulses, move the clock).
#
# The model:
#   * RTC: one clock for the whole "board" (UTC seconds since 1970 held here).
#     RTC().datetime(8-tuple) sets it and is recorded in sim_rtc_sets;
#     datetime() reads it back with the weekday computed (Monday = 0). Stricter
#     than the ESP32 (which ignores the weekday field): out-of-range fields and a
#     weekday that does not match the date raise ValueError.
#   * Pin: one object per GPIO; Pin.irq(handler, trigger, wake) as the ESP32
#     port has it (soft IRQs only: no `hard` argument). A pulse on an S0 input
#     is a falling edge then a rising edge (open collector pulled up), so a pin
#     IRQ on IRQ_FALLING and a Counter on RISING each count it once.
#   * Counter: the PCNT unit as the port's machine.Counter (see below).
#   * disable_irq/enable_irq: see "IRQ state" below.
# Calendar arithmetic here is loop-based and independent of meter/timeutil.py.

_MDAYS = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def _leap(y):
    return y % 4 == 0 and (y % 100 != 0 or y % 400 == 0)


def _mdays(y, m):
    return 29 if m == 2 and _leap(y) else _MDAYS[m - 1]


def sim_days(y, m, d):
    """Days from 1970-01-01 to y-m-d (y >= 1970)."""
    n = 0
    for yy in range(1970, y):
        n += 366 if _leap(yy) else 365
    for mm in range(1, m):
        n += _mdays(y, mm)
    return n + d - 1


def sim_civil(t):
    """(y, m, d, hh, mi, ss, weekday Monday=0, yearday) of UTC seconds t >= 0."""
    days, s = divmod(t, 86400)
    wd = (days + 3) % 7  # 1970-01-01 was a Thursday
    y = 1970
    while True:
        n = 366 if _leap(y) else 365
        if days < n:
            break
        days -= n
        y += 1
    yd = days + 1
    m = 1
    while days >= _mdays(y, m):
        days -= _mdays(y, m)
        m += 1
    return (y, m, days + 1, s // 3600, s // 60 % 60, s % 60, wd, yd)


# --- RTC ------------------------------------------------------------------------

_clock = [946684800]  # UTC seconds since 1970; a fresh ESP32 starts at 2000-01-01
sim_rtc_sets = []  # every tuple passed to RTC.datetime(tuple), in order


def sim_time():
    """The board clock, UTC seconds since 1970."""
    return _clock[0]


def sim_set_time(utc_s):
    _clock[0] = utc_s


def sim_advance(s):
    _clock[0] += s


class RTC:
    def __init__(self, id=0):
        if id != 0:
            raise ValueError("RTC id", id)

    def init(self, datetime):
        t = tuple(datetime) + (0,) * (8 - len(datetime))
        y, mo, d, h, mi, s = t[0], t[1], t[2], t[3], t[4], t[5]
        self.datetime((y, mo, d, sim_civil(sim_days(y, mo, d) * 86400)[6], h, mi, s, t[6]))

    def datetime(self, datetimetuple=None):
        if datetimetuple is None:
            y, mo, d, h, mi, s, wd, _ = sim_civil(_clock[0])
            return (y, mo, d, wd, h, mi, s, 0)
        t = tuple(datetimetuple)
        if len(t) != 8:
            raise ValueError("datetime needs an 8-tuple", t)
        for v in t:
            if not isinstance(v, int):
                raise TypeError("datetime fields are ints", t)
        y, mo, d, wd, h, mi, s, sub = t
        if not (
            y >= 1970
            and 1 <= mo <= 12
            and 1 <= d <= _mdays(y, mo)
            and 0 <= wd <= 6
            and 0 <= h < 24
            and 0 <= mi < 60
            and 0 <= s < 60
            and 0 <= sub < 1000000
        ):
            raise ValueError("datetime field out of range", t)
        days = sim_days(y, mo, d)
        if (days + 3) % 7 != wd:
            raise ValueError("weekday does not match the date", t)
        sim_rtc_sets.append(t)
        _clock[0] = days * 86400 + h * 3600 + mi * 60 + s


# --- IRQ state --------------------------------------------------------------------
# On the ESP32 every pin IRQ is soft: the GPIO interrupt only schedules the
# handler (mp_sched_schedule), which runs between bytecodes of the main program
# (Pin.irq takes handler, trigger, wake: no `hard`). disable_irq() masks the
# CPU's interrupts: an edge then only latches the pin's interrupt status bit
# (one per GPIO, so several edges on one pin collapse into one) and its ISR
# schedules the handler once enable_irq() unmasks it. Here a scheduled handler
# runs as soon as it is scheduled: the main program is never inside a long C call.

_irq_on = [True]
_latched = []  # GPIOs whose interrupt fired while masked, in order
sim_during_irq_off = [None]  # a function run inside disable_irq (edges arriving then)


def disable_irq():
    state = _irq_on[0]
    _irq_on[0] = False
    f = sim_during_irq_off[0]
    if f is not None:
        sim_during_irq_off[0] = None
        f()
    return state


def enable_irq(state=True):
    _irq_on[0] = bool(state)
    while _irq_on[0] and _latched:
        _isr(_latched.pop(0))


def sim_irq_enabled():
    return _irq_on[0]


def _isr(gpio):
    irq = sim_irqs.get(gpio)
    if irq is not None:
        irq[0](_pins[gpio])  # "scheduled", and run at once


# --- Pin ------------------------------------------------------------------------------

# GPIOs that exist on the ESP32 (no 20, 24, 28-31); 34-39 are input only
_NO_GPIO = (20, 24, 28, 29, 30, 31)


def _one_per_id(cls, registry, key):
    # the port keeps one object per GPIO / PCNT unit: (object, created now)
    o = registry.get(key)
    if o is not None:
        return o, False
    o = registry[key] = object.__new__(cls)
    return o, True


_pins = {}  # gpio -> Pin (one object per GPIO, as the port's pin table)
sim_pins = {}  # gpio -> (mode, pull) as last configured
sim_irqs = {}  # gpio -> (handler, trigger)
_level = {}  # gpio -> input level (pulled up: 1)


class Pin:
    IN = 1
    OUT = 3
    OPEN_DRAIN = 7
    PULL_DOWN = 1
    PULL_UP = 2
    IRQ_RISING = 1
    IRQ_FALLING = 2

    def __new__(cls, id, *args, **kwargs):
        if not isinstance(id, int) or not 0 <= id <= 39 or id in _NO_GPIO:
            raise ValueError("invalid pin", id)
        o, new = _one_per_id(cls, _pins, id)
        if new:
            o.id = id
            _level[id] = 1
        return o

    def __init__(self, id, *args, **kwargs):
        if args or kwargs:
            self.init(*args, **kwargs)

    def init(self, mode=None, pull=-1, *, value=None, drive=None, hold=None):
        if mode not in (None, Pin.IN, Pin.OUT, Pin.OPEN_DRAIN):
            raise ValueError("invalid pin mode", mode)
        if pull not in (-1, None, Pin.PULL_UP, Pin.PULL_DOWN):
            raise ValueError("invalid pull", pull)
        if mode in (Pin.OUT, Pin.OPEN_DRAIN) and self.id >= 34:
            raise ValueError("pin can only be input", self.id)
        sim_pins[self.id] = (mode, pull)

    def value(self, x=None):
        if x is None:
            return _level[self.id]
        _level[self.id] = 1 if x else 0
        return None

    def irq(self, handler=None, trigger=3, wake=None):
        if trigger & ~(Pin.IRQ_RISING | Pin.IRQ_FALLING):
            raise ValueError("invalid trigger", trigger)
        if handler is None:
            sim_irqs.pop(self.id, None)
        else:
            sim_irqs[self.id] = (handler, trigger)
        return None


def _edge(gpio, irq_bit, counter_edge):
    c = _counter_on.get(gpio)
    if c is not None and c._edge & counter_edge:
        c._count()
    irq = sim_irqs.get(gpio)
    if irq is not None and irq[1] & irq_bit:
        if _irq_on[0]:
            _isr(gpio)
        elif gpio not in _latched:
            _latched.append(gpio)


def sim_pulses(gpio, n=1):
    """n S0 pulses on `gpio`: each a falling edge (pulled low) then a rising one."""
    for _ in range(n):
        _level[gpio] = 0
        _edge(gpio, Pin.IRQ_FALLING, 2)  # Counter.FALLING (the test may delete Counter)
        _level[gpio] = 1
        _edge(gpio, Pin.IRQ_RISING, 1)  # Counter.RISING


# --- Counter (PCNT) ----------------------------------------------------------------------
# As the port's frozen machine.py builds it on esp32.PCNT: a singleton per unit
# id; Counter(id) alone returns it unchanged, Counter(id, src, ...) reconfigures
# it and resets it to 0; the 16-bit unit counts to +-32000 and resets, each
# overflow counted; value([v]) = overflows * 32000 + unit + offset, and with v
# re-bases the count on v. It counts in hardware: IRQ masking does not matter.

_units = {}  # id -> Counter
_counter_on = {}  # gpio -> Counter counting it
_PCNT_UNITS = 8  # ESP32: 8 PCNT units
_RANGE = 32000


class Counter:
    RISING = 1
    FALLING = 2
    UP = 1
    DOWN = -1

    def __new__(cls, unit_id, *args, **kwargs):
        if not isinstance(unit_id, int) or not 0 <= unit_id < _PCNT_UNITS:
            raise ValueError("invalid PCNT unit", unit_id)
        o, new = _one_per_id(cls, _units, unit_id)
        if new:
            o._src = None
        return o

    def __init__(self, unit_id, *args, filter_ns=0, **kwargs):
        self._unit_id = unit_id
        if self._src is not None and not (args or kwargs):
            return
        self._configure(*args, **kwargs)
        if not isinstance(filter_ns, int) or filter_ns < 0:
            raise ValueError("filter_ns", filter_ns)
        self.filter_ns = filter_ns
        self._unit = 0
        self._overflows = 0
        self._offset = 0

    def _configure(self, src, edge=1, direction=1):
        if not isinstance(src, Pin):
            raise TypeError("src must be a Pin", src)
        if not edge or edge & ~(Counter.RISING | Counter.FALLING):
            raise ValueError("edge", edge)
        if direction not in (Counter.UP, Counter.DOWN):
            raise ValueError("direction", direction)
        if self._src is not None:
            _counter_on.pop(self._src.id, None)
        self._src = src
        self._edge = edge
        self._dir = direction
        _counter_on[src.id] = self

    def init(self, *args, **kwargs):
        self.__init__(self._unit_id, *args, **kwargs)

    def deinit(self):
        if self._src is not None:
            _counter_on.pop(self._src.id, None)
        self._src = None

    def _count(self):
        self._unit += self._dir
        if self._unit >= _RANGE:
            self._unit = 0
            self._overflows += 1
        elif self._unit <= -_RANGE:
            self._unit = 0
            self._overflows -= 1

    def value(self, value=None):
        if self._src is None:
            raise RuntimeError("not initialised")
        result = self._overflows * _RANGE + self._unit + self._offset
        if value is not None:
            self._overflows = 0
            self._offset = value - self._unit
        return result


# --- UART -------------------------------------------------------------------------------

sim_uarts = {}  # id -> UART


class UART:
    def __init__(self, id, baudrate=9600, bits=8, parity=None, stop=1, *, tx=None, rx=None):
        if id not in (0, 1, 2):
            raise ValueError("UART id", id)
        self.id = id
        self.init(baudrate, bits, parity, stop, tx=tx, rx=rx)
        self.sim_rx = bytearray()  # bytes the optical head "received"
        self.sim_tx = bytearray()  # bytes written
        sim_uarts[id] = self

    def init(self, baudrate=9600, bits=8, parity=None, stop=1, *, tx=None, rx=None):
        if not isinstance(baudrate, int) or baudrate <= 0:
            raise ValueError("baudrate", baudrate)
        self.baudrate = baudrate
        self.bits = bits
        self.parity = parity
        self.stop = stop
        self.tx = tx
        self.rx = rx

    def any(self):
        return len(self.sim_rx)

    def read(self, n=-1):
        if not self.sim_rx:
            return None
        if n < 0:
            n = len(self.sim_rx)
        b = bytes(self.sim_rx[:n])
        self.sim_rx = self.sim_rx[n:]
        return b

    def write(self, buf):
        self.sim_tx.extend(buf)
        return len(buf)
