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

try:
    from micropython import const
except ImportError:

    def const(x):
        return x


import struct

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
_REC = const(
    ">BIIIIBIIIIB"
)  # present, start, end, period, offset, what, next, sent, acked, first, failed
_REC_LEN = const(35)
_BLOB_LEN = const(142)


class ScheduleError(ValueError):
    """A schedule or read request is invalid (nack bad_parameter), e.g. a
    period shorter than the recording interval (H07)."""


class NotHeld(ScheduleError):
    """A requested period is not held by the meter (nack not_held, M16)."""


class Slot:
    """One read schedule. Times are UTC s; offset_s is within the period."""

    def __init__(self, index, start, end, period_s, offset_s, what=WHAT_ALL):
        self.index = index
        self.start = start
        self.end = end
        self.period_s = period_s
        self.offset_s = offset_s
        self.what = what


def validate(slot, interval_s):
    """Raise ScheduleError unless `slot` is valid for interval_s."""
    if not isinstance(slot, Slot):
        raise ScheduleError("not a Slot: %r" % (slot,))
    if not isinstance(slot.index, int) or not 0 <= slot.index < NSLOTS:
        raise ScheduleError("slot index must be 0..3, got %r" % (slot.index,))
    for name in ("start", "end", "period_s", "offset_s"):
        v = getattr(slot, name)
        if not isinstance(v, int) or not 0 <= v <= _U32:
            raise ScheduleError("%s must be a u32, got %r" % (name, v))
    if not isinstance(slot.what, int) or not 1 <= slot.what <= WHAT_ALL:
        raise ScheduleError("what must be 1..15, got %r" % (slot.what,))
    if slot.index == 0:
        if slot.period_s != _DAY or slot.end != 0:
            raise ScheduleError("slot 0 is daily and ongoing: period_s=86400, end=0")
    elif slot.period_s < interval_s:
        raise ScheduleError("period_s %d < interval %d" % (slot.period_s, interval_s))
    elif slot.period_s > _MAX_PERIOD_S:
        raise ScheduleError("period_s %d > %d" % (slot.period_s, _MAX_PERIOD_S))
    if slot.offset_s >= slot.period_s:
        raise ScheduleError("offset_s %d must be < period_s %d" % (slot.offset_s, slot.period_s))
    if slot.end and slot.end <= slot.start:
        raise ScheduleError("end %d must be 0 or after start %d" % (slot.end, slot.start))
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


def request_period(mode, start, end, now, interval_s, utc_offset_s, held_from, acked_upto=0):
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
            raise NotHeld("nothing acknowledged yet")
        start, end = acked_upto, last
    elif mode == _MODE_PERIOD or mode == MODE_ON_DEMAND:
        if end <= start:
            raise ScheduleError("empty period %r..%r" % (start, end))
        start = tu.floor_to(start, interval_s, utc_offset_s)
        end = tu.floor_to(end - 1, interval_s, utc_offset_s) + interval_s
        if end > last:
            end = last
    else:
        raise ScheduleError("unknown read mode %r" % (mode,))
    if start < held_from:
        start = held_from
    if start > end or (start == end and mode != MODE_ON_DEMAND):
        raise NotHeld("period %r..%r not held (held from %r to %r)" % (start, end, held_from, last))
    return (start, end)


class Schedules:
    """The four slots and their read bookkeeping (0 means "none" for instants).

    A fresh instance plans slot 0 at its first due() call, from that instant on.
    """

    def __init__(self, interval_s, utc_offset_s=0, read_offset_s=DEFAULT_READ_OFFSET_S):
        tu.check_interval(interval_s)
        tu.check_utc_offset(utc_offset_s)
        self.interval_s = interval_s
        self.utc_offset_s = utc_offset_s
        self.slots = [None] * NSLOTS
        self.next_at = [0] * NSLOTS  # next occurrence
        self.sent_end = [0] * NSLOTS  # end of the previous read issued
        self.acked_end = [0] * NSLOTS  # end of the last acknowledged read
        self.first = [0] * NSLOTS  # start of the first read (nothing acked yet)
        self.failed = [0] * NSLOTS  # a send failed since the last full ack
        self.slots[0] = validate(Slot(0, 0, 0, _DAY, read_offset_s), interval_s)

    def set(self, slot, now):
        """Set or update a slot (M11, M19). Returns its next occurrence (or None).

        Updating a non-default slot starts it afresh (its first occurrence
        reads from midnight, M14); slot 0 keeps its read bookkeeping.
        """
        validate(slot, self.interval_s)
        i = slot.index
        if i != 0:
            self.cancel(i, now)  # start afresh
        self.slots[i] = slot
        nxt = next_due(slot, now, self.utc_offset_s)
        self.next_at[i] = nxt or 0
        return nxt

    def cancel(self, index, now):
        """Cancel a non-default slot. Slot 0 cannot be cancelled (N07)."""
        if not isinstance(index, int) or not 1 <= index < NSLOTS:
            raise ScheduleError("only slots 1..3 can be cancelled, got %r" % (index,))
        self.slots[index] = None
        self.next_at[index] = self.sent_end[index] = self.acked_end[index] = 0
        self.first[index] = self.failed[index] = 0

    def apply(self, fields, now):
        """Apply one wire Slot dict {slot, action, start, end, period_s, offset_s, what}."""
        action = fields.get("action", _SET)
        if action == _CANCEL:
            self.cancel(fields.get("slot"), now)
            return None
        if action != _SET:
            raise ScheduleError("action must be 0 (set) or 1 (cancel), got %r" % (action,))
        slot = Slot(
            fields.get("slot"),
            fields.get("start", 0),
            fields.get("end", 0),
            fields.get("period_s", 0),
            fields.get("offset_s", 0),
            fields.get("what", WHAT_ALL),
        )
        return self.set(slot, now)

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
            raise ScheduleError("slots %r have periods shorter than %d" % (bad, interval_s))
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
            elif self.failed[i]:
                start = self.acked_end[i] or self.first[i]
            else:
                start = self.sent_end[i]
            if end - start > _MAX_SPAN_S:
                start = end - _MAX_SPAN_S
            if start >= end:
                if i:
                    continue  # nothing new (clock stepped back): skip
                start = first  # default read: resend the previous day
            self.failed[i] = 0
            if end > self.sent_end[i]:
                self.sent_end[i] = end
            out.append((i, start, end))
        return out

    def send_failed(self, index):
        """A scheduled read could not be sent (the app logs read_failed, M15)."""
        if self.sent_end[index]:
            self.failed[index] = 1

    def acknowledged(self, index, upto, start=None):
        """read_ack for a read of `index` covering [start, upto). Returns True if taken.

        An ack for a read that starts after the last acknowledged end (a
        hole: an earlier read was lost) is not taken; the next read then
        re-sends from the last acknowledged end.
        """
        base = self.acked_end[index] or self.first[index]
        if start is not None and base and start > base:
            return False
        if upto > self.acked_end[index]:
            self.acked_end[index] = upto
        if self.acked_end[index] >= self.sent_end[index]:
            self.failed[index] = 0
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
                self.failed[i],
            )
        return bytes(buf)

    @staticmethod
    def from_bytes(blob, interval_s, utc_offset_s=0):
        """Rebuild from to_bytes(). Raises ScheduleError on a bad blob or slot."""
        if len(blob) != _BLOB_LEN or bytes(blob[0:2]) != _MAGIC:
            raise ScheduleError("bad schedules blob (%d bytes)" % len(blob))
        sch = Schedules(interval_s, utc_offset_s)
        for i in range(NSLOTS):
            r = struct.unpack_from(_REC, blob, 2 + i * _REC_LEN)
            if not r[0]:
                if i == 0:
                    raise ScheduleError("schedules blob without slot 0")
                sch.slots[i] = None
                continue
            if r[0] != 1 or r[10] > 1:
                raise ScheduleError("bad schedules blob record %d" % i)
            sch.slots[i] = validate(Slot(i, r[1], r[2], r[3], r[4], r[5]), interval_s)
            sch.next_at[i] = r[6]
            sch.sent_end[i] = r[7]
            sch.acked_end[i] = r[8]
            sch.first[i] = r[9]
            sch.failed[i] = r[10]
        return sch
