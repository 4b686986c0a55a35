# The meter's persistent store (M02, M05): interval ring, event log, config/state,
# on any block device (esp32.Partition on the board, hal.norflash on the host).
#
#   s = Store(bdev).mount()
#   s.append_interval(start, interval_s, flags, (wh_imp, wh_exp, varh_imp, varh_exp))
#   for start, interval_s, flags, values in s.intervals(start, end): ...
#   s.registers()            cumulative registers, rebuilt at mount
#   seq = s.append_event(code, time, data); s.events(since_seq)
#   s.put_config(key, bytes); s.get_config(key)
#
# All values are integers (energy in the channel's unit, time in UTC seconds):
# floats are refused (TypeError), as ESP32 floats are single precision; anything
# else the store cannot do raises a plain ValueError naming the argument and its
# value (no caller tells store errors apart). Logic only: no clock.
# Format, limits and timing: STORE.md next to this file.
import struct

from meter.config_log import ConfigLog
from meter.ring import HDR_SLOTS, SLOT, Ring

try:
    from micropython import const
except ImportError:

    def const(x):
        return x


_CHANNELS = const(4)
_INTERVALS_45D_5MIN = const(12960)  # 45 days x 288
_REGISTER_READS_45D = const(45)  # one midnight register read per day, 2 slots each
_HEADROOM_SLOTS = const(256)  # torn slots after cuts, partial/wide records
_TAG_INTERVALS = const(1)
_TAG_EVENTS = const(2)
_TAG_CONFIG = const(3)
_KIND_INTERVAL = const(0)  # 1 slot: nominal length, flags < 32, values < 65536
_KIND_INTERVAL_WIDE = const(1)  # 2 slots: any length/flags, values < 2**32
_KIND_REG_SET = const(2)  # 2 slots: registers set to absolute values (no longer written)
_KIND_REG_READ = const(3)  # 2 slots: a register read (midnight, M03)
_KIND_EVENT = const(0)
_NOMINAL = const((300, 600, 900, 1800, 3600))  # interval lengths of the compact record
_REG_MOD = const(1 << 48)  # registers roll over at 2**48
_U32 = const(0xFFFFFFFF)
_MAX_EVENT_DATA = const(242)
# flag bits (the recorder decides what it sets; the store only keeps 8 bits)
_FLAG_POWER_FAIL = const(1)
_FLAG_CLOCK_SET = const(2)
_FLAG_PARTIAL = const(4)


def _int(x, lo, hi, what):
    if not isinstance(x, int) or isinstance(x, bool):
        raise TypeError(what, x)
    if x < lo or x > hi:
        raise ValueError(what, x)
    return x


def layout(block_size=4096):
    """Blocks per ring for a block size: (interval, event, config).

    The interval ring keeps (blocks - 1) full blocks at all times (one block may
    be being reused), which must hold 45 days of 5-minute compact records + 45
    register reads + _HEADROOM_SLOTS (torn slots after cuts, partial/wide records)."""
    usable = block_size // SLOT - HDR_SLOTS
    need = _INTERVALS_45D_5MIN + 2 * _REGISTER_READS_45D + _HEADROOM_SLOTS
    ib = (need + usable - 1) // usable + 1
    eb = max(3, (6 * 4096) // block_size)
    cb = max(3, (4 * 4096) // block_size)
    return ib, eb, cb


class Store:
    """Interval ring + event log + config on blocks [first, first + total) of bdev."""

    def __init__(self, bdev, first=0, interval_blocks=0, event_blocks=0, config_blocks=0):
        bs = bdev.ioctl(5, 0)
        ib, eb, cb = layout(bs)
        ib = interval_blocks or ib
        eb = event_blocks or eb
        cb = config_blocks or cb
        self.blocks = (ib, eb, cb)
        # one record buffer for the three rings: a record is built and appended
        # before the next one starts (the config copy uses its own)
        self._iv = Ring(bdev, first, ib, _TAG_INTERVALS)
        self._ev = Ring(bdev, first + ib, eb, _TAG_EVENTS, self._iv.buf)
        self._cf = ConfigLog(bdev, first + ib + eb, cb, _TAG_CONFIG, self._iv.buf)
        self._iv.payload = self._ev.payload = self._payload
        self._regs = [0] * _CHANNELS
        self._hw = 0  # highest interval start seen (running max)
        self._last = None
        self._next_seq = 0  # 0: not mounted yet

    def _payload(self, ring, buf):
        # a new block's header payload, what mount() resumes from: the highest
        # interval start and the registers; the next event sequence number
        if ring is self._ev:
            struct.pack_into("<I", buf, 0, self._next_seq)
        else:
            struct.pack_into("<I4Q", buf, 0, self._hw, *self._regs)

    # --- capacity -------------------------------------------------------------------
    def capacity(self):
        """Guaranteed retention in slots: (interval slots, event slots, config slots).
        A compact interval uses 1 slot, a wide one or a register read 2."""
        u = self._iv.spb - HDR_SLOTS
        ib, eb, cb = self.blocks
        return (ib - 1) * u, (eb - 1) * u, u // 2  # config: ConfigLog keeps half a block live

    # --- mount ----------------------------------------------------------------------
    def mount(self):
        """Rebuild head/tail, registers, last interval, next event seq and the config
        index from flash. Reads every block header and scans the head blocks (and
        all config blocks): bounded time, O(blocks) memory."""
        iv = self._iv
        iv.mount()
        self._regs = [0] * _CHANNELS
        self._hw = 0
        self._last = None
        if iv.order:
            head = iv.order[-1]
            iv.read_header(head, iv.buf)
            vals = struct.unpack_from("<I4Q", iv.buf, 8)
            self._hw = vals[0]
            self._regs = list(vals[1:])
            for _, kind, rec in iv.records(head):
                self._apply(kind, rec)
            if self._last is None:
                for i in range(len(iv.order) - 2, -1, -1):
                    for _, kind, rec in iv.records(iv.order[i]):
                        if kind <= _KIND_INTERVAL_WIDE:
                            self._last = _decode(kind, rec)
                    if self._last is not None:
                        break
        ev = self._ev
        ev.mount()
        self._next_seq = 1
        if ev.order:
            head = ev.order[-1]
            ev.read_header(head, ev.buf)
            self._next_seq = struct.unpack_from("<I", ev.buf, 8)[0]
            for _, kind, rec in ev.records(head):
                if kind == _KIND_EVENT:
                    seq = struct.unpack_from("<I", rec, 1)[0]
                    if seq >= self._next_seq:
                        self._next_seq = seq + 1
        self._cf.mount()
        return self

    def _need_mount(self):
        if not self._next_seq:
            raise ValueError("unmounted")

    def _apply(self, kind, rec):
        regs = self._regs
        if kind <= _KIND_INTERVAL_WIDE:
            t = _decode(kind, rec)
            v = t[3]
            for i in range(_CHANNELS):
                regs[i] = (regs[i] + v[i]) % _REG_MOD
            if t[0] > self._hw:
                self._hw = t[0]
            self._last = t
        elif kind == _KIND_REG_SET:
            r = _decode_regs(rec)
            for i in range(_CHANNELS):
                regs[i] = r[1][i]

    # --- intervals ------------------------------------------------------------------
    def append_interval(self, start, interval_s, flags, values):
        """Commit one closed interval. Returns when it is on flash."""
        self._need_mount()
        _int(start, 0, _U32, "start")
        _int(interval_s, 1, 0xFFFF, "interval_s")
        _int(flags, 0, 255, "flags")
        if len(values) != _CHANNELS:
            raise ValueError("values", values)
        small = interval_s in _NOMINAL and flags < 32
        for v in values:
            _int(v, 0, _U32, "values")
            if v > 0xFFFF:
                small = False
        buf = self._iv.buf
        v0, v1, v2, v3 = values
        if small:
            code = (flags << 3) | _NOMINAL.index(interval_s)
            struct.pack_into("<IB4H", buf, 1, start, code, v0, v1, v2, v3)
            self._iv.append(_KIND_INTERVAL, 14)
        else:
            struct.pack_into("<IHB4I", buf, 1, start, interval_s, flags, v0, v1, v2, v3)
            self._iv.append(_KIND_INTERVAL_WIDE, 24)
        regs = self._regs
        for i in range(_CHANNELS):
            regs[i] = (regs[i] + values[i]) % _REG_MOD
        if start > self._hw:
            self._hw = start
        self._last = (start, interval_s, flags, tuple(values))

    def append_register_read(self, time, values):
        """Store a register read (e.g. the midnight read of M03)."""
        self._need_mount()
        _int(time, 0, _U32, "time")
        if len(values) != _CHANNELS:
            raise ValueError("values", values)
        for v in values:
            _int(v, 0, _REG_MOD - 1, "registers")
        buf = self._iv.buf
        struct.pack_into("<I", buf, 1, time)
        for i in range(_CHANNELS):
            v = values[i]
            struct.pack_into("<IH", buf, 5 + 6 * i, v & _U32, v >> 32)
        self._iv.append(_KIND_REG_READ, 29)

    def registers(self):
        """Cumulative registers: the sum of every committed interval."""
        return tuple(self._regs)

    def last_interval(self):
        return self._last

    def _blocks_from(self, ring, since):
        """Blocks of `ring` oldest first, from the first one that may hold an
        entry >= `since`: a block is skipped while the first payload word of its
        successor's header (written when that one was opened) is < `since`."""
        order = list(ring.order)
        hdr = bytearray(48)
        start = 0
        for i in range(len(order) - 1):
            if (
                ring.read_header(order[i + 1], hdr) < 0
                or struct.unpack_from("<I", hdr, 8)[0] >= since
            ):
                break
            start = i + 1
        return order[start:]

    def intervals(self, start=0, end=_U32 + 1):
        """Yield (start, interval_s, flags, values) of the intervals starting in
        [start, end), oldest first (in the order they were appended)."""
        self._need_mount()
        iv = self._iv
        # a block's intervals all start at or before the highest start its
        # successor's header holds
        for blk in self._blocks_from(iv, start):
            for _, kind, rec in iv.records(blk):
                if kind <= _KIND_INTERVAL_WIDE:
                    t = struct.unpack_from("<I", rec, 1)[0]
                    if start <= t < end:
                        yield _decode(kind, rec)

    def register_reads(self, start=0, end=_U32 + 1):
        """Yield (time, registers) of the register reads with start <= time < end."""
        self._need_mount()
        iv = self._iv
        # a register read follows the interval ending on its time: skip only
        # blocks whose intervals all start more than a day before `start`
        for blk in self._blocks_from(iv, start - 86400):
            for _, kind, rec in iv.records(blk):
                if kind == _KIND_REG_READ:
                    r = _decode_regs(rec)
                    if start <= r[0] < end:
                        yield r

    # --- events ---------------------------------------------------------------------
    def append_event(self, code, time, data=b""):
        """Log an event; returns its sequence number (1, 2, ...)."""
        self._need_mount()
        _int(code, 0, 0xFFFF, "code")
        _int(time, 0, _U32, "time")
        n = _int(len(data), 0, _MAX_EVENT_DATA, "data")
        seq = self._next_seq
        buf = self._ev.buf
        struct.pack_into("<IIHB", buf, 1, seq, time, code, n)
        buf[12 : 12 + n] = data
        self._ev.append(_KIND_EVENT, 12 + n)
        self._next_seq = seq + 1
        return seq

    def next_event_seq(self):
        return self._next_seq

    def events(self, since_seq=0):
        """Yield (seq, time, code, data) for the retained events with seq >= since_seq."""
        self._need_mount()
        ev = self._ev
        # a block's events all come before the next seq its successor's header holds
        for blk in self._blocks_from(ev, since_seq + 1):
            for _, kind, rec in ev.records(blk):
                if kind == _KIND_EVENT:
                    seq, t, code, n = struct.unpack_from("<IIHB", rec, 1)
                    if seq >= since_seq:
                        yield seq, t, code, bytes(rec[12 : 12 + n])

    # --- config ---------------------------------------------------------------------
    def put_config(self, key, value):
        """Persist bytes `value` (<= 251) under int `key` (0..255); last put wins."""
        self._need_mount()
        self._cf.put(key, value)

    def get_config(self, key, default=None):
        self._need_mount()
        return self._cf.get(key, default)


def _decode(kind, rec):
    if kind == _KIND_INTERVAL:
        t, code, v0, v1, v2, v3 = struct.unpack_from("<IB4H", rec, 1)
        return t, _NOMINAL[code & 7], code >> 3, (v0, v1, v2, v3)
    t, ilen, flags, v0, v1, v2, v3 = struct.unpack_from("<IHB4I", rec, 1)
    return t, ilen, flags, (v0, v1, v2, v3)


def _decode_regs(rec):
    t = struct.unpack_from("<I", rec, 1)[0]
    out = []
    for i in range(_CHANNELS):
        lo, hi = struct.unpack_from("<IH", rec, 5 + 6 * i)
        out.append(lo | (hi << 32))
    return t, tuple(out)
