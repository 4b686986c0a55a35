# Read responses (M12, M13, M14, M15): plan a read as parts, build each part.
#
# Pure logic over the store: handed the period, the time and what to send.
# A read of [start, end) is split into parts so every frame stays under
# MAX_PAYLOAD and the meter never holds more than one part in RAM:
#   interval parts: a local day each, or an equal share of it holding at
#     most _PART_IV intervals (8 h at 5 minutes, 12 h at 10), with the
#     intervals whose start is in the part's span (as IntervalBlock sections
#     of at most _CHUNK intervals of a contiguous run of equal length) and
#     the midnight register reads in that span (the last part also takes the
#     midnight at `end`);
#   event parts: up to _EVENTS_PER_PART events each, the events with a time
#     in the read's event span, oldest first.
# Part 0 also carries the clock section and, if asked, the current registers.
# Parts are rebuilt from flash each time they are (re)sent: nothing but the
# plan (a list of small tuples) is kept between sends. A part is encoded
# straight from the store into its frame, twice: once to size it, once into a
# bytearray of exactly that size; the only other heap it takes is one chunk
# of interval columns (_CHUNK x 4 u32 + flags, 0.5 KB), no lists or dicts.

try:
    from micropython import const
except ImportError:

    def const(x):
        return x


import struct
from array import array

from meter import auth, blocks
from meter import timeutil as tu
from meter.errors import BadLength, MalformedPayload

WHAT_INTERVALS = const(1)
WHAT_REGISTERS = const(2)
WHAT_MIDNIGHT = const(4)
WHAT_EVENTS = const(8)
_EVENTS_PER_PART = const(200)  # 9 bytes each: 1.8 KB
_MAX_PARTS = const(255)
_DAY = const(86400)
_PART_IV = const(96)  # intervals per part at most
_CHUNK = const(32)  # intervals per IntervalBlock at most (one channel group); downloads: _PART_IV
_NCH = const(4)  # channels of a stored interval
# frame layout (SPEC; wire.py): header, read_response payload, CRC
_HEADER = const(">BBBHIIH")
_HEADER_LEN = const(15)
_FLAG_AUTH = const(1)
_TRAILER = const(22)  # auth counter u32, MAC[16], CRC u16
_MAX_PAYLOAD = const(4096)
_READ_RESPONSE = const(8)  # type codes
_DOWNLOAD_DATA = const(0x12)
_SEC_CLOCK = const(1)  # section tags
_SEC_REGISTERS = const(2)
_SEC_MIDNIGHT = const(3)
_SEC_INTERVALS = const(4)
_SEC_EVENTS = const(5)


_IV = const(0)  # part tuple (_IV, span_start, span_end, midnight_until)
_EV = const(1)  # part tuple (_EV, first_seq, last_seq)


class ReadError(ValueError):
    """A read cannot be planned (e.g. more than _MAX_PARTS parts)."""


def chunk_s(interval_s):
    """Span of one interval part: a local day, or the smallest equal share of
    it holding at most _PART_IV intervals."""
    n = (_DAY // interval_s + _PART_IV - 1) // _PART_IV
    return _DAY // n


def plan(start, end, what, interval_s, utc_offset_s, events, ev_from, ev_to, seq_hi):
    """Parts of a read: a list of part tuples (at least one).

    events: an EventLog (its since(seq) iterator); ev_from/ev_to: the event
    time span [ev_from, ev_to); seq_hi: the newest event seq to include.
    """
    parts = []
    if what & (WHAT_INTERVALS | WHAT_MIDNIGHT) and start < end:
        step = chunk_s(interval_s)
        a = start
        while a < end:
            b = tu.floor_to(a, step, utc_offset_s) + step
            if b > end:
                b = end
            parts.append((_IV, a, b, b))
            a = b
        last = parts[-1]
        parts[-1] = (_IV, last[1], last[2], last[2] + 1)  # the midnight at `end` too
    if what & WHAT_EVENTS:
        n = 0
        for row in events.since(1):
            seq, _code, t, _data = row
            if seq > seq_hi:
                break
            if ev_from <= t < ev_to:
                if n % _EVENTS_PER_PART == 0:
                    parts.append((_EV, seq, seq_hi))
                n += 1
        # each event part runs to the next one's first seq
        k = len(parts) - 1
        nxt = seq_hi
        while k >= 0 and parts[k][0] == _EV:
            p = parts[k]
            parts[k] = (_EV, p[1], nxt)
            nxt = p[1] - 1
            k -= 1
    if not parts:
        parts.append((_IV, start, start, start))  # clock (+ registers) only
    if len(parts) > _MAX_PARTS:
        raise ReadError("read needs %d parts (max %d)" % (len(parts), _MAX_PARTS))
    return parts


def _regs(buf, p, t, values):
    # registers / midnight body: at:I values:[V
    if buf is not None:
        struct.pack_into(">IB", buf, p, t, len(values))
    p += 5
    for v in values:
        p = blocks.put_varint(buf, p, v)
    return p


def _head(buf, p, tag, n):
    # a section's tag and body length
    if buf is not None:
        buf[p] = tag
    return blocks.put_varint(buf, p + 1, n)


def _block(buf, p, s0, ln, k, cols, flags):
    # one IntervalBlock body from the column chunk (SPEC; blocks.encode_block)
    if buf is not None:
        struct.pack_into(">IHHB", buf, p, s0, ln, k, _NCH)
    p += 9
    nr = 0
    last = -1
    for i in range(k):
        if flags[i] != last:
            last = flags[i]
            if last & ~0x1F:
                raise MalformedPayload("status flags use reserved bits", "only bits of 0x1f", last)
            nr += 1
    p = blocks.put_varint(buf, p, nr)
    i = 0
    while i < k:
        f = flags[i]
        j = i + 1
        while j < k and flags[j] == f:
            j += 1
        p = blocks.put_varint(buf, p, j - i)
        if buf is not None:
            buf[p] = f
        p += 1
        i = j
    for c in range(_NCH):
        n = blocks.put_channel(None, 0, cols, c * len(flags), k)
        p = blocks.put_varint(buf, p, n)
        p = blocks.put_channel(buf, p, cols, c * len(flags), k) if buf is not None else p + n
    return p


def _events(buf, p, events, lo, hi, ev_from, ev_to):
    # the events body: varint count, then (code:B time:I data:I) each
    n = 0
    for _pass in (0, 1):
        if _pass:
            p = blocks.put_varint(buf, p, n)
            if buf is None:
                return p + 9 * n
        k = 0
        for row in events.since(lo):
            seq, code, t, data = row
            if seq > hi or k >= _EVENTS_PER_PART:
                break
            if ev_from <= t < ev_to:
                if _pass:
                    struct.pack_into(">BII", buf, p, code, t, data)
                    p += 9
                k += 1
        n = k
    return p


def _sections(
    buf, p, part, first, what, store, events, now, registers, ev_from, ev_to, cols, flags
):
    # the sections of one part from p; returns (next p, number of sections)
    ns = 0
    if first:
        p = _head(buf, p, _SEC_CLOCK, 4)
        if buf is not None:
            struct.pack_into(">I", buf, p, now)
        p += 4
        ns += 1
        if what & WHAT_REGISTERS:
            p = _head(buf, p, _SEC_REGISTERS, _regs(None, 0, now, registers))
            p = _regs(buf, p, now, registers)
            ns += 1
    if part[0] == _IV:
        _, a, b, mid_to = part
        if what & WHAT_INTERVALS and a < b:
            k = s0 = ln = 0
            for rec in store.intervals(a, b):
                s, rl, fl, vals = rec
                if k and (k == len(flags) or rl != ln or s != s0 + ln * k):
                    p = _head(buf, p, _SEC_INTERVALS, _block(None, 0, s0, ln, k, cols, flags))
                    p = _block(buf, p, s0, ln, k, cols, flags)
                    ns += 1
                    k = 0
                if not k:
                    s0 = s
                    ln = rl
                flags[k] = fl
                for c in range(_NCH):
                    cols[c * len(flags) + k] = vals[c]
                k += 1
            if k:
                p = _head(buf, p, _SEC_INTERVALS, _block(None, 0, s0, ln, k, cols, flags))
                p = _block(buf, p, s0, ln, k, cols, flags)
                ns += 1
        if what & WHAT_MIDNIGHT and a < mid_to:
            for t, regs in store.register_reads(a, mid_to):
                p = _head(buf, p, _SEC_MIDNIGHT, _regs(None, 0, t, regs))
                p = _regs(buf, p, t, regs)
                ns += 1
    else:
        _, lo, hi = part
        p = _head(buf, p, _SEC_EVENTS, _events(None, 0, events, lo, hi, ev_from, ev_to))
        p = _events(buf, p, events, lo, hi, ev_from, ev_to)
        ns += 1
    return p, ns


def frame(
    seq,
    meter_id,
    request_seq,
    kind,
    p,
    parts,
    part,
    what,
    store,
    events,
    now,
    registers,
    ev_from,
    ev_to,
    key,
    counter,
    probe=None,
    payload=None,
):
    """The read_response frame (bytearray) of part number p (part: its plan tuple),
    signed with key and counter.

    Byte-identical to wire.encode of the same body; sized first, then written
    into one bytearray of the frame's size. probe(1), if given, is called
    with everything the build holds still live (the bench's heap peak).
    payload: (count, bytes) of whole sections to append: a download_data
    frame (optical.py; no request_seq or kind) instead.
    """
    # small pieces: a fragmented heap has no room for one large block
    # a download's blocks are a whole part (fewer bytes on a slow optical line)
    n = _CHUNK if payload is None else _PART_IV
    cols = array("I", bytes(4 * _NCH * n))
    flags = bytearray(n)
    args = (part, p == 0, what, store, events, now, registers, ev_from, ev_to, cols, flags)
    pre = _HEADER_LEN + (6 if payload is None else 3)
    n, ns = _sections(None, pre, *args)
    if payload is not None:
        n += len(payload[1])
        ns += payload[0]
    n -= _HEADER_LEN
    if n > _MAX_PAYLOAD:
        raise BadLength("payload over maximum", "no more than %d" % _MAX_PAYLOAD, n)
    if ns > 0xFF:
        raise MalformedPayload("too many sections", "no more than 255", ns)
    buf = bytearray(_HEADER_LEN + n + _TRAILER)
    mtype = _READ_RESPONSE if payload is None else _DOWNLOAD_DATA
    struct.pack_into(_HEADER, buf, 0, 1, mtype, _FLAG_AUTH, seq, meter_id, now, n)
    if payload is None:
        struct.pack_into(">HBBBB", buf, _HEADER_LEN, request_seq, kind, p, parts, ns)
    else:  # download_data: part, parts, sections
        buf[_HEADER_LEN] = p
        buf[_HEADER_LEN + 1] = parts
        buf[_HEADER_LEN + 2] = ns
    q = _sections(buf, pre, *args)[0]
    if payload is not None:
        buf[q : q + len(payload[1])] = payload[1]
    auth.seal(buf, _HEADER_LEN + n, key, counter)
    if probe is not None:
        probe(1)
    return buf


class Read:
    """A read response in progress: its plan and which parts are acknowledged
    (here, a cold module: the class is on the heap only while reads run)."""

    def __init__(self, slot, kind, request_seq, start, end, what, ev_from, ev_to, parts):
        self.slot = slot  # 0-3, or 255 (on demand: no slot)
        self.kind = kind
        self.request_seq = request_seq
        self.start = start
        self.end = end
        self.what = what
        self.ev_from = ev_from
        self.ev_to = ev_to
        self.parts = parts
        self.next_part = 0  # first part never sent
        self.out = {}  # frame seq -> part index, sent and not acknowledged
        self.acked = 0  # parts acknowledged
        self.attempt = 0  # sends of the oldest unacknowledged part
        self.next_try = 0
        self.dead = False  # failed: dropped at the next reap
