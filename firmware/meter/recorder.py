# Interval recorder (M01, M03, M04): pure logic, handed the time.
#
# Holds the per-channel cumulative registers, the accumulators and status
# flags of the interval in progress, and closes intervals exactly on their
# boundaries (aligned to local standard midnight, never adjusted for DST).
# Every call that can close intervals returns a Closed iterator of records
# (start, interval_s, flags, values); it never allocates per record beyond
# the tuple it yields, however long the gap.
#
# App loop contract, each pass: rec.add(drained_counts); for r in rec.tick(now):
# store r; then drain rec.midnight_due(). Before stepping the clock call
# rec.tick(old) and then rec.clock_step(old, new).
#
# Flag rules (values of a flagged INVALID record are placeholders, never a
# measurement: the head-end reads them as missing, not as zero):
#   late tick over >= 2 boundaries: head record keeps all drained energy; if any
#     is non-zero, head and skipped intervals get INVALID (not attributable).
#   clock step forward within the interval: CLOCK_ADJUSTED on it.
#   clock step forward across boundaries: head CLOCK_ADJUSTED|PARTIAL, wholly
#     skipped intervals CLOCK_ADJUSTED|INVALID (zeros), new interval
#     CLOCK_ADJUSTED (+PARTIAL unless entered on its boundary).
#   clock step backward (any size): no record is emitted or re-opened; the
#     interval in progress stays open, keeps accumulating and is flagged
#     CLOCK_ADJUSTED; it closes when the clock reaches its end again.
#   power fail/up: the interval in progress at power-down is POWER_FAILED|
#     PARTIAL; wholly missed intervals are emitted POWER_FAILED|INVALID with
#     zeros; the interval holding the power-up instant is POWER_FAILED|PARTIAL
#     (flags 0 if power returned exactly on its start). A power-up clock
#     earlier than the newest record holds the interval open (CLOCK_ADJUSTED).

try:
    from micropython import const
except ImportError:

    def const(x):
        return x


from meter import timeutil as tu

POWER_FAILED = const(0x01)
CLOCK_ADJUSTED = const(0x02)
PARTIAL = const(0x04)
RECOVERED = const(0x08)
INVALID = const(0x10)

# Gap records older than this before the new interval are not emitted (the
# store keeps 45 days; a clock set years ahead must not write years of zeros).
_MAX_GAP_S = const(3888000)  # 45 days
_MAX_CHANNELS = const(8)
_DAY = const(86400)


class RecorderError(ValueError):
    """Bad argument to the recorder, or a call out of order."""


class Closed:
    """Records closed by one call: an optional head record, then a run.

    Iterating yields (start, interval_s, flags, values) in start order; len()
    gives how many remain. `new_interval` is the interval length that took
    effect during this call (0 if none): the app logs event 15 for it.
    """

    def __init__(self, head=None, frm=0, to=0, flags=0, old=0, switch=0, new=0, zeros=()):
        self._head = head
        self._next = frm
        self._to = to
        self._flags = flags
        self._old = old
        self._switch = switch  # first start using length `new`
        self._new = new
        self._zeros = zeros
        self.new_interval = 0

    def __iter__(self):
        return self

    def __next__(self):
        h = self._head
        if h is not None:
            self._head = None
            return h
        s = self._next
        if s >= self._to:
            raise StopIteration
        n = self._old if s < self._switch else self._new
        self._next = s + n
        return (s, n, self._flags, self._zeros)

    def __len__(self):
        n = 0 if self._head is None else 1
        s, to = self._next, self._to
        if s < to:
            mid = self._switch if self._switch < to else to
            if s < mid:
                n += (mid - s) // self._old
                s = mid
            if s < to:
                n += (to - s) // self._new
        return n


class Recorder:
    """Interval recorder state for `channels` channels.

    interval_s: 300, 600, 900, 1800 or 3600. utc_offset_s: fixed local
    standard offset (whole minutes). registers: persisted cumulative totals
    (ints, Wh/varh) or None for zeros.
    """

    def __init__(self, interval_s, channels=4, utc_offset_s=0, registers=None):
        tu.check_interval(interval_s)
        tu.check_utc_offset(utc_offset_s)
        if not isinstance(channels, int) or not 1 <= channels <= _MAX_CHANNELS:
            raise RecorderError("channels must be 1..%d, got %r" % (_MAX_CHANNELS, channels))
        self.interval_s = interval_s
        self.channels = channels
        self.utc_offset_s = utc_offset_s
        if registers is None:
            self.registers = [0] * channels
        else:
            self.registers = self._checked(registers, "registers", True)
        self._acc = [0] * channels
        self._zeros = tuple(self._acc)
        self.start_s = None  # start of the interval in progress (None: not started)
        self.flags = 0  # flags of the interval in progress
        self._seen = 0  # latest `now` handed in
        self._pending = 0  # interval length waiting to take effect
        self._switch_at = 0  # instant it takes effect (a common boundary)
        self._mid_done = None  # last local midnight whose register was returned
        self._mid_to = None  # latest local midnight crossed, awaiting midnight_due()
        self._mid_regs = None  # registers when _mid_to was crossed

    # -- inputs --------------------------------------------------------------

    def _checked(self, values, what, exact):
        n = len(values)
        if n > self.channels or (exact and n != self.channels):
            raise RecorderError("%s: %d values for %d channels" % (what, n, self.channels))
        for v in values:
            if not isinstance(v, int) or v < 0:
                raise RecorderError("%s: values must be ints >= 0, got %r" % (what, v))
        return list(values)

    def add(self, counts):
        """Add energy counted since the last call (ints >= 0, one per channel)."""
        n = len(counts)
        if n > self.channels:
            raise RecorderError("counts: %d values for %d channels" % (n, self.channels))
        for i in range(n):
            c = counts[i]
            if not isinstance(c, int) or c < 0:
                raise RecorderError("counts must be ints >= 0, got %r" % (c,))
        acc = self._acc
        regs = self.registers
        for i in range(n):
            acc[i] += counts[i]
            regs[i] += counts[i]

    def start(self, now, flags=0):
        """Begin recording at `now` (fresh install). PARTIAL unless on a boundary."""
        s = tu.floor_to(now, self.interval_s, self.utc_offset_s)
        self.start_s = s
        self.flags = flags | (PARTIAL if now != s else 0)
        self._seen = now
        self._mid_done = tu.day_start(s, self.utc_offset_s)
        return Closed()

    # -- time passing --------------------------------------------------------

    def tick(self, now):
        """Close every interval whose end is <= now. Returns Closed records.

        Ticking is expected at least once per interval; if a tick crosses two
        or more boundaries, see the module header (late tick rule). A `now`
        earlier than the last one seen (an unannounced clock step back) flags
        the interval in progress CLOCK_ADJUSTED and emits nothing.
        """
        if self.start_s is None:
            return self.start(now)
        if now < self._seen:
            self.flags |= CLOCK_ADJUSTED
        if now < self.start_s + self.interval_s:
            self._seen = now
            return Closed()
        return self._close(now, 0, 0, 0, True)

    def _close(self, now, head_extra, run_flags, new_flags, late):
        # Close the interval in progress at its end, emit the intervals wholly
        # between its end and the interval holding `now`, open that interval.
        off = self.utc_offset_s
        s = self.start_s
        old = self.interval_s
        end = s + old  # the switch is never inside the interval in progress
        new = old
        if self._pending and now >= self._switch_at:
            new = self._pending
        new_start = tu.floor_to(now, new, off)
        head_flags = self.flags | head_extra
        acc = self._acc
        if late and new_start > end:
            for v in acc:
                if v:
                    head_flags |= INVALID
                    run_flags |= INVALID
                    break
        head = (s, old, head_flags, tuple(acc))
        for i in range(len(acc)):
            acc[i] = 0
        frm = end
        if new_start - frm > _MAX_GAP_S:
            frm = new_start - _MAX_GAP_S
            if self._pending and frm < self._switch_at:
                frm = tu.floor_to(frm, old, off)
        switch = self._switch_at if self._pending else new_start
        out = Closed(head, frm, new_start, run_flags, old, switch, new, self._zeros)
        if new != old:
            self.interval_s = new
            self._pending = 0
            out.new_interval = new
        self.start_s = new_start
        self.flags = new_flags
        self._seen = now
        mid = tu.day_start(new_start, off)
        if self._mid_done is None or mid > self._mid_done:
            self._mid_to = mid
            self._mid_regs = tuple(self.registers)
        return out

    def clock_step(self, old_now, new_now):
        """The clock was stepped from old_now to new_now. Returns Closed records.

        Call tick(old_now) first (RecorderError otherwise). Forward across
        boundaries closes them (see module header); backward never emits or
        re-opens a record: the interval in progress is held open and flagged.
        """
        if self.start_s is None:
            return Closed()
        end = self.start_s + self.interval_s
        if old_now >= end:
            raise RecorderError("clock_step: tick(old_now) first")
        if new_now < end:
            if new_now != old_now:
                self.flags |= CLOCK_ADJUSTED
            self._seen = new_now
            return Closed()
        new_len = self.interval_s
        if self._pending and new_now >= self._switch_at:
            new_len = self._pending
        entered = PARTIAL if not tu.is_boundary(new_now, new_len, self.utc_offset_s) else 0
        return self._close(
            new_now,
            CLOCK_ADJUSTED | PARTIAL,
            CLOCK_ADJUSTED | INVALID,
            CLOCK_ADJUSTED | entered,
            False,
        )

    def power_fail(self, now):
        """Power is failing at `now`: close what is due, flag the interval.

        The app then persists in_progress() and registers if it still can.
        """
        out = self.tick(now)
        self.flags |= POWER_FAILED
        return out

    def power_up(
        self, now, last_closed_start, acc=None, flags=0, last_midnight=None, last_len=None
    ):
        """Resume after a reboot (call on a Recorder built with persisted registers).

        last_closed_start: start of the newest stored record (None: no record
        ever, then recording starts at `now` flagged POWER_FAILED). acc/flags:
        the in-progress accumulators and flags persisted at power-down, if any.
        last_midnight: newest stored midnight register day (default: every
        midnight up to the end of the newest record counts as stored).
        last_len: that record's interval_s, if an interval change took effect
        at its end (default: the current interval_s).
        """
        if last_closed_start is None:
            return self.start(now, POWER_FAILED)
        off = self.utc_offset_s
        d = last_closed_start + (last_len or self.interval_s)  # in progress at power-down
        if not tu.is_boundary(d, self.interval_s, off):
            raise RecorderError("record %r..%r does not end on a boundary" % (last_closed_start, d))
        self.start_s = d
        self.flags = flags | POWER_FAILED | PARTIAL
        if acc is not None:
            for i, v in enumerate(self._checked(acc, "acc", False)):
                self._acc[i] = v
        self._mid_done = tu.day_start(d, off) if last_midnight is None else last_midnight
        self._seen = now
        if now < d + self.interval_s:
            if now < d:  # clock behind the newest record: hold (never doubled)
                self.flags |= CLOCK_ADJUSTED
            return Closed()
        up = 0 if tu.is_boundary(now, self.interval_s, off) else POWER_FAILED | PARTIAL
        return self._close(now, 0, POWER_FAILED | INVALID, up, False)

    def set_interval(self, new_s, now):
        """Program a new interval length (M01). Returns the UTC instant it takes effect.

        It takes effect at the first boundary of the current length that is
        also a boundary of the new one, at or after the end of the interval in
        progress (and after now): at most one hour away. Returns None if it
        changes nothing (a pending change is then cancelled). The Closed batch
        in which it takes effect carries new_interval.
        """
        tu.check_interval(new_s)
        if self.start_s is None:
            self.interval_s = new_s
            return None
        if new_s == self.interval_s:
            self._pending = 0
            return None
        off = self.utc_offset_s
        old = self.interval_s
        at = self.start_s + old
        nb = tu.next_boundary(now, old, off)
        if nb > at:
            at = nb
        common = tu.lcm(old, new_s)
        at = tu.floor_to(at - 1, common, off) + common
        self._pending = new_s
        self._switch_at = at
        return at

    # -- outputs -------------------------------------------------------------

    def midnight_due(self):
        """Next midnight register not yet returned: (day_start_utc, registers) or None.

        Oldest first, exactly once per local standard midnight (M03); call it
        until None after each tick. A midnight counts once the interval ending
        on it is closed; the registers are those at that close (midnights
        inside a gap share the value: nothing was measured in between). At
        most 45 days of backlog are returned.
        """
        to = self._mid_to
        if to is None:
            return None
        done = self._mid_done
        nxt = to if done is None else done + _DAY
        if to - nxt > _MAX_GAP_S:
            nxt = to - _MAX_GAP_S
        self._mid_done = nxt
        regs = self._mid_regs
        if nxt >= to:
            self._mid_to = None
            self._mid_regs = None
        return (nxt, regs)

    def in_progress(self):
        """(start, interval_s, flags, values) of the interval in progress, or None."""
        if self.start_s is None:
            return None
        return (self.start_s, self.interval_s, self.flags, tuple(self._acc))

    def totals(self):
        """Current registers as a tuple."""
        return tuple(self.registers)

    @property
    def pending_interval(self):
        """(new_interval_s, effective_at) of a change not yet in effect, or None."""
        if not self._pending:
            return None
        return (self._pending, self._switch_at)
