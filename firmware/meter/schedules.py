# Read schedules (M11, M12, M14, M15, M16, M19): pure, handed the time.
#
# Four slots. Slot 0 is the default daily read at offset_s after local
# standard midnight (period 86400, remotely programmable read time, cannot be
# cancelled). Slots 1-3 are non-default reads: start, end (0 = ongoing),
# period_s >= the interval length, offset_s within the period. Occurrences are
# the instants t >= start (and < end) with (t + utc_offset - offset_s) % period_s
# == 0, i.e. on a grid anchored at local standard midnight.
#
# Read periods (intervals whose start is in [start, end)):
#   slot 0: the previous local day [midnight - 1 day, midnight) (M12)
#   slots 1-3: first occurrence from local midnight to the last complete
#     interval; later ones from the previous read's end (M14)
#   after send_failed(): everything since the last acknowledged end, or since
#     the first read's start if nothing was ever acknowledged (M15)
# An occurrence missed while the meter was off fires once, late, at the next
# due() call (covering everything since the previous read).
# Bad slots or requests raise ScheduleError(field, value), a ValueError; a
# period the meter does not hold raises NotHeld, a ScheduleError.

try:
    from micropython import const
except ImportError:

    def const(x):
        return x


import struct
from collections import namedtuple

from meter import timeutil as tu

NSLOTS = const(4)
WHAT_ALL = const(15)  # every `what` bit: intervals 1, registers 2, midnight 4, events 8
_SET = const(0)  # Slot actions on the wire
_CANCEL = const(1)
DEFAULT_READ_OFFSET_S = const(3600)  # 01:00 local standard time
_MAX_PERIOD_S = const(2678400)  # 31 days
_MAX_SPAN_S = const(3888000)  # a read never covers more than 45 days (what is held)
_DAY = const(86400)
_U32 = const(0xFFFFFFFF)

# Read request modes (SPEC read_request.mode).
_MODE_PERIOD = const(0)
_MODE_SINCE_ACK = const(1)
MODE_ON_DEMAND = const(2)

_MAGIC = const(b"S\x01")
# present, start, end, period, offset, what, next, sent, acked, first, failed
_REC = const(">B4IB4IB")
_REC_LEN = const(35)
_BLOB_LEN = const(142)


class ScheduleError(ValueError):
    """A schedule or read request is invalid (nack bad_parameter), e.g. a
    period shorter than the recording interval (H07)."""


class NotHeld(ScheduleError):
    """A requested period is not held by the meter (nack not_held, M16)."""


# One read schedule (a tuple: no instance dict). Times are UTC s; offset_s is
# within the period.
Slot = namedtuple("Slot", ("index", "start", "end", "period_s", "offset_s", "what"))


def _check(name, v, lo, hi):
    """Raise ScheduleError(name, v) unless v is an int in [lo, hi]."""
    if not isinstance(v, int) or not lo <= v <= hi:
        raise ScheduleError(name, v)


def validate(slot, interval_s):
    """Raise ScheduleError unless `slot` is valid for interval_s."""
    if not isinstance(slot, Slot):
        raise ScheduleError("slot", slot)
    _check("index", slot.index, 0, NSLOTS - 1)
    _check("start", slot.start, 0, _U32)
    _check("end", slot.end, 0, _U32)
    _check("what", slot.what, 1, WHAT_ALL)
    if slot.index == 0:  # daily and ongoing
        _check("period_s", slot.period_s, _DAY, _DAY)
        _check("end", slot.end, 0, 0)
    else:  # from the interval length (H07) to 31 days
        _check("period_s", slot.period_s, interval_s, _MAX_PERIOD_S)
    _check("offset_s", slot.offset_s, 0, slot.period_s - 1)
    if slot.end and slot.end <= slot.start:
        raise ScheduleError("end", slot.end)
    return slot


def next_due(slot, after, utc_offset_s):
    """First occurrence of `slot` strictly after `after`, or None (ended)."""
    t = after + 1
    if t < slot.start:
        t = slot.start
    r = (t + utc_offset_s - slot.offset_s) % slot.period_s
    if r:
        t += slot.period_s - r
    if slot.end and t >= slot.end:
        return None
    return t


def request_period(mode, start, end, now, interval_s, utc_offset_s, held_from, acked_upto):
    """(start, end) of intervals to answer a read_request with, or raise (M13, M16).

    Bounds are interval boundaries; end never passes the last complete
    interval. held_from: start of the oldest interval held. acked_upto: end
    of the newest acknowledged read (mode since_ack). MODE_ON_DEMAND with
    start == 0 answers the complete intervals since local midnight.
    """
    last = tu.floor_to(now, interval_s, utc_offset_s)
    if mode == MODE_ON_DEMAND and start == 0:
        start, end = tu.day_start(now, utc_offset_s), last
    elif mode == _MODE_SINCE_ACK:
        if not acked_upto:
            raise NotHeld("acked_upto", acked_upto)
        start, end = acked_upto, last
    elif mode == _MODE_PERIOD or mode == MODE_ON_DEMAND:
        if end <= start:
            raise ScheduleError("end", end)
        start = tu.floor_to(start, interval_s, utc_offset_s)
        end = tu.floor_to(end - 1, interval_s, utc_offset_s) + interval_s
        if end > last:
            end = last
    else:
        raise ScheduleError("mode", mode)
    if start < held_from:
        start = held_from
    if start > end or (start == end and mode != MODE_ON_DEMAND):
        raise NotHeld("period", start, end)
    return (start, end)


class Schedules:
    """The four slots and their read bookkeeping (0 means "none" for instants).

    A fresh instance plans slot 0 at its first due() call, from that instant on.
    """

    def __init__(self, interval_s, utc_offset_s, read_offset_s):
        tu.check_interval(interval_s)
        tu.check_utc_offset(utc_offset_s)
        self.interval_s = interval_s
        self.utc_offset_s = utc_offset_s
        self.slots = [None] * NSLOTS
        self.next_at = [0] * NSLOTS  # next occurrence
        self.sent_end = [0] * NSLOTS  # end of the previous read issued
        self.acked_end = [0] * NSLOTS  # end of the last acknowledged read
        self.first = [0] * NSLOTS  # start of the first read (nothing acked yet)
        self.failed = 0  # bit 1 << i: a send of slot i failed since its last full ack
        self.slots[0] = validate(Slot(0, 0, 0, _DAY, read_offset_s, WHAT_ALL), interval_s)

    def cancel(self, index, now):
        """Cancel a non-default slot. Slot 0 cannot be cancelled (N07)."""
        _check("slot", index, 1, NSLOTS - 1)
        self.slots[index] = None
        self.next_at[index] = self.sent_end[index] = self.acked_end[index] = 0
        self.first[index] = 0
        self.failed &= ~(1 << index)

    def apply(self, fields, now):
        """Apply one wire Slot dict {slot, action, start, end, period_s, offset_s, what}:
        set, update or cancel a slot (M11, M19). Returns its next occurrence
        (None: cancelled or ended).

        Setting a non-default slot starts it afresh (its first occurrence
        reads from midnight, M14); slot 0 keeps its read bookkeeping.
        """
        i = fields.get("slot")
        action = fields.get("action", _SET)
        if action == _CANCEL:
            self.cancel(i, now)
            return None
        if action != _SET:
            raise ScheduleError("action", action)
        slot = Slot(
            i,
            fields.get("start", 0),
            fields.get("end", 0),
            fields.get("period_s", 0),
            fields.get("offset_s", 0),
            fields.get("what", WHAT_ALL),
        )
        validate(slot, self.interval_s)
        if i != 0:
            self.cancel(i, now)  # start afresh
        self.slots[i] = slot
        nxt = next_due(slot, now, self.utc_offset_s)
        self.next_at[i] = nxt or 0
        return nxt

    def conflicts(self, interval_s):
        """Indices of slots that a change to interval_s would make invalid."""
        out = []
        for s in self.slots:
            if s is not None and s.index and s.period_s < interval_s:
                out.append(s.index)
        return out

    def set_interval(self, interval_s):
        """Adopt a new interval length. Raises ScheduleError if a slot conflicts."""
        tu.check_interval(interval_s)
        bad = self.conflicts(interval_s)
        if bad:
            raise ScheduleError("interval_s", interval_s)
        self.interval_s = interval_s

    # -- reading -------------------------------------------------------------

    def due(self, now):
        """Reads to send now: list of (slot, period_start, period_end), start < end."""
        out = []
        off = self.utc_offset_s
        for i in range(NSLOTS):
            slot = self.slots[i]
            nxt = self.next_at[i]
            if slot is None:
                continue
            if not nxt and i == 0:  # never planned (fresh meter): from now on
                self.next_at[0] = next_due(slot, now, off)
                continue
            if not nxt or now < nxt:
                continue
            self.next_at[i] = next_due(slot, now, off) or 0
            if i == 0:
                end = tu.day_start(now, off)
                first = end - _DAY
            else:
                end = tu.floor_to(now, self.interval_s, off)
                first = tu.day_start(now - 1, off)
            if not self.sent_end[i]:
                start = first
                self.first[i] = first
            elif self.failed >> i & 1:
                start = self.acked_end[i] or self.first[i]
            else:
                start = self.sent_end[i]
            if end - start > _MAX_SPAN_S:
                start = end - _MAX_SPAN_S
            if start >= end:
                if i:
                    continue  # nothing new (clock stepped back): skip
                start = first  # default read: resend the previous day
            self.failed &= ~(1 << i)
            if end > self.sent_end[i]:
                self.sent_end[i] = end
            out.append((i, start, end))
        return out

    def send_failed(self, index):
        """A scheduled read could not be sent (the app logs read_failed, M15)."""
        if self.sent_end[index]:
            self.failed |= 1 << index

    def acknowledged(self, index, upto, start):
        """read_ack for a read of `index` covering [start, upto). Returns True if taken.

        An ack for a read that starts after the last acknowledged end (a
        hole: an earlier read was lost) is not taken; the next read then
        re-sends from the last acknowledged end.
        """
        base = self.acked_end[index] or self.first[index]
        if base and start > base:
            return False
        if upto > self.acked_end[index]:
            self.acked_end[index] = upto
        if self.acked_end[index] >= self.sent_end[index]:
            self.failed &= ~(1 << index)
        return True

    def clock_step(self, old_now, new_now):
        """The clock was stepped. Backward: re-plan occurrences from new_now."""
        if new_now >= old_now:
            return  # forward: occurrences stepped over fire once at the next due()
        for i in range(NSLOTS):
            slot = self.slots[i]
            if slot is not None and (self.next_at[i] or i == 0):
                self.next_at[i] = next_due(slot, new_now, self.utc_offset_s) or 0

    # -- persistence ---------------------------------------------------------

    def to_bytes(self):
        """Compact blob (142 bytes) of slots and bookkeeping, for the store."""
        buf = bytearray(_BLOB_LEN)
        buf[0:2] = _MAGIC
        for i in range(NSLOTS):
            s = self.slots[i]
            if s is None:
                continue
            struct.pack_into(
                _REC,
                buf,
                2 + i * _REC_LEN,
                1,
                s.start,
                s.end,
                s.period_s,
                s.offset_s,
                s.what,
                self.next_at[i],
                self.sent_end[i],
                self.acked_end[i],
                self.first[i],
                self.failed >> i & 1,
            )
        return bytes(buf)

    @staticmethod
    def from_bytes(blob, interval_s, utc_offset_s):
        """Rebuild from to_bytes(). Raises ScheduleError on a bad blob or slot."""
        if len(blob) != _BLOB_LEN or bytes(blob[0:2]) != _MAGIC:
            raise ScheduleError("blob", len(blob))
        sch = Schedules(interval_s, utc_offset_s, DEFAULT_READ_OFFSET_S)  # slot 0 read below
        for i in range(NSLOTS):
            r = struct.unpack_from(_REC, blob, 2 + i * _REC_LEN)
            if not r[0]:
                if i == 0:
                    raise ScheduleError("slot", 0)  # the default read is always set
                sch.slots[i] = None
                continue
            if r[0] != 1 or r[10] > 1:
                raise ScheduleError("slot", i)
            sch.slots[i] = validate(Slot(i, r[1], r[2], r[3], r[4], r[5]), interval_s)
            sch.next_at[i] = r[6]
            sch.sent_end[i] = r[7]
            sch.acked_end[i] = r[8]
            sch.first[i] = r[9]
            sch.failed |= r[10] << i
        return sch
