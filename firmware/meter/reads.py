# Read responses (M12, M13, M14, M15): plan a read as parts, build each part.
#
# Pure logic over the store: handed the period, the time and what to send.
# A read of [start, end) is split into parts so every frame stays under
# MAX_PAYLOAD and the meter never holds more than one part in RAM:
#   interval parts: one local day each (half a day at 5-minute intervals),
#     holding the intervals whose start is in the part's span (as one
#     IntervalBlock section per contiguous run of equal length) and the
#     midnight register reads in that span (the last part also takes the
#     midnight at `end`);
#   event parts: up to _EVENTS_PER_PART events each, the events with a time
#     in the read's event span, oldest first.
# Part 0 also carries the clock section and, if asked, the current registers.
# Parts are rebuilt from flash each time they are (re)sent: nothing but the
# plan (a list of small tuples) is kept between sends.

try:
    from micropython import const
except ImportError:

    def const(x):
        return x


from array import array

from meter import timeutil as tu

WHAT_INTERVALS = const(1)
WHAT_REGISTERS = const(2)
WHAT_MIDNIGHT = const(4)
WHAT_EVENTS = const(8)
_EVENTS_PER_PART = const(200)  # 9 bytes each: 1.8 KB
_MAX_PARTS = const(255)
_DAY = const(86400)
_HALF_DAY = const(43200)

KIND_SCHEDULED = const(0)
KIND_ON_DEMAND = const(1)
KIND_PERIOD = const(2)

_IV = const(0)  # part tuple (_IV, span_start, span_end, midnight_until)
_EV = const(1)  # part tuple (_EV, first_seq, last_seq)


class ReadError(ValueError):
    """A read cannot be planned (e.g. more than _MAX_PARTS parts)."""


def chunk_s(interval_s):
    """Span of one interval part: a local day, half a day at 5 minutes."""
    return _HALF_DAY if interval_s < 600 else _DAY


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


def interval_sections(store, a, b, out):
    """Append IntervalBlock sections for the stored intervals starting in [a, b)."""
    blk = None
    flags = chans = None
    for rec in store.intervals(a, b):
        s, ln, fl, vals = rec
        if blk is not None and (s != blk["start"] + ln * len(flags) or ln != blk["interval_s"]):
            out.append({"tag": "intervals", "body": blk})
            blk = None
        if blk is None:  # 1 (flags) and 4 bytes (values) per interval, not 8
            flags = bytearray()
            chans = [array("I") for _ in range(len(vals))]
            blk = {"start": s, "interval_s": ln, "flags": flags, "channels": chans}
        flags.append(fl)
        for i in range(len(vals)):
            chans[i].append(vals[i])
    if blk is not None:
        out.append({"tag": "intervals", "body": blk})
    return out


def sections(part, first, what, store, events, now, registers, ev_from, ev_to):
    """The sections of one part (a list of section dicts)."""
    out = []
    if first:
        out.append({"tag": "clock", "body": {"time": now}})
        if what & WHAT_REGISTERS:
            out.append({"tag": "registers", "body": {"at": now, "values": list(registers)}})
    if part[0] == _IV:
        _, a, b, mid_to = part
        if what & WHAT_INTERVALS and a < b:
            interval_sections(store, a, b, out)
        if what & WHAT_MIDNIGHT and a < mid_to:
            for t, regs in store.register_reads(a, mid_to):
                out.append({"tag": "midnight", "body": {"day": t, "values": list(regs)}})
    else:
        _, lo, hi = part
        evs = []
        for row in events.since(lo):
            seq, code, t, data = row
            if seq > hi or len(evs) >= _EVENTS_PER_PART:
                break
            if ev_from <= t < ev_to:
                evs.append((code, t, data))  # compact form of the Event struct
        out.append({"tag": "events", "body": evs})
    return out
