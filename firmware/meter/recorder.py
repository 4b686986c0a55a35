# Interval recorder (M01, M03, M04): pure logic, handed the time.
#
# Holds the per-channel cumulative registers, the accumulators and status
# flags of the interval in progress, and closes intervals exactly on their
# boundaries (aligned to local standard midnight, never adjusted for DST).
# Every call that can close intervals returns an iterable of records
# (start, interval_s, flags, values): () when none, else a generator that
# never allocates per record beyond the tuple it yields, however long the gap.
#
# App loop contract, each pass: rec.add(drained_counts); for r in rec.tick(now):
# store r; then drain rec.midnight_due(). Before stepping the clock call
# rec.tick(old) and then rec.clock_step(old, new). A bad argument or a call out
# of order raises a plain ValueError naming the argument and its value.
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
# 0x08 RECOVERED (SPEC): never set by the recorder
INVALID = const(0x10)

# Gap records older than this before the new interval are not emitted (the
# store keeps 45 days; a clock set years ahead must not write years of zeros).
_MAX_GAP_S = const(3888000)  # 45 days
_MAX_CHANNELS = const(8)
_DAY = const(86400)


def _records(head, frm, to, flags, old, switch, new, values):
    # The records one call closed: `head`, then a run over the starts in
    # [frm, to): length `old` before `switch`, `new` from it on, each with
    # `flags` and `values`, as (start, interval_s, flags, values). A generator,
    # not a list: after an outage the run is up to 45 days long.
    yield head
    while frm < to:
        n = old if frm < switch else new
        yield (frm, n, flags, values)
        frm += n


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
            raise ValueError("channels", channels)
        self.interval_s = interval_s
        self.utc_offset_s = utc_offset_s
        self.acc = [0] * channels  # energy of the interval in progress, one per channel
        if registers is None:
            self.registers = [0] * channels
        else:
            self.registers = list(self._checked(registers, "registers", True))
        self.start_s = None  # start of the interval in progress (None: not started)
        self.flags = 0  # flags of the interval in progress
        self.now = 0  # latest `now` handed in
        # (new interval_s, UTC instant it takes effect: a common boundary) or None
        self.pending_interval = None
        self.last_midnight = None  # last local midnight whose register was returned
        self._midnight = None  # (latest local midnight crossed, registers then), not returned
        # the interval length that took effect in a call's records (0: none);
        # the caller logs event 15 for it and sets it back to 0
        self.switched = 0

    # -- inputs --------------------------------------------------------------

    def _checked(self, values, what, exact):
        # ints >= 0, at most one per channel (exact: one per channel)
        n = len(values)
        ch = len(self.acc)
        bad = n > ch or (exact and n != ch)
        for v in values:
            if not isinstance(v, int) or v < 0:
                bad = True
        if bad:
            raise ValueError(what, values)
        return values

    def add(self, counts):
        """Add energy counted since the last call (ints >= 0, one per channel)."""
        n = len(self._checked(counts, "counts", False))
        acc = self.acc
        regs = self.registers
        for i in range(n):
            acc[i] += counts[i]
            regs[i] += counts[i]

    def start(self, now, flags=0):
        """Begin recording at `now` (fresh install). PARTIAL unless on a boundary."""
        s = tu.floor_to(now, self.interval_s, self.utc_offset_s)
        self.start_s = s
        self.flags = flags | (PARTIAL if now != s else 0)
        self.now = now
        self.last_midnight = tu.day_start(s, self.utc_offset_s)
        return ()

    # -- time passing --------------------------------------------------------

    def tick(self, now):
        """Close every interval whose end is <= now. Returns the closed records.

        Ticking is expected at least once per interval; if a tick crosses two
        or more boundaries, see the module header (late tick rule). A `now`
        earlier than the last one seen (an unannounced clock step back) flags
        the interval in progress CLOCK_ADJUSTED and emits nothing.
        """
        if self.start_s is None:
            return self.start(now)
        if now < self.now:
            self.flags |= CLOCK_ADJUSTED
        if now < self.start_s + self.interval_s:
            self.now = now
            return ()
        return self._close(now, 0, 0, True)

    def _close(self, now, run_flags, new_flags, late):
        # Close the interval in progress at its end, emit the intervals wholly
        # between its end and the interval holding `now` (run_flags), open that
        # interval (new_flags). late: a tick, where the late-tick rule applies.
        off = self.utc_offset_s
        s = self.start_s
        old = self.interval_s
        end = s + old  # the switch is never inside the interval in progress
        new = old
        pend = self.pending_interval
        if pend and now >= pend[1]:
            new = pend[0]
        new_start = tu.floor_to(now, new, off)
        head_flags = self.flags
        acc = self.acc
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
            if pend and frm < pend[1]:
                frm = tu.floor_to(frm, old, off)
        switch = pend[1] if pend else new_start
        out = _records(head, frm, new_start, run_flags, old, switch, new, (0,) * len(acc))
        if new != old:
            self.interval_s = new
            self.pending_interval = None
            self.switched = new
        self.start_s = new_start
        self.flags = new_flags
        self.now = now
        mid = tu.day_start(new_start, off)
        if self.last_midnight is None or mid > self.last_midnight:
            self._midnight = (mid, tuple(self.registers))
        return out

    def clock_step(self, old_now, new_now):
        """The clock was stepped from old_now to new_now. Returns the closed records.

        Call tick(old_now) first (ValueError otherwise). Forward across
        boundaries closes them (see module header); backward never emits or
        re-opens a record: the interval in progress is held open and flagged.
        """
        if self.start_s is None:
            return ()
        end = self.start_s + self.interval_s
        if old_now >= end:
            raise ValueError("tick first", old_now)
        if new_now < end:
            if new_now != old_now:
                self.flags |= CLOCK_ADJUSTED
            self.now = new_now
            return ()
        new_len = self.interval_s
        pend = self.pending_interval
        if pend and new_now >= pend[1]:
            new_len = pend[0]
        entered = PARTIAL if not tu.is_boundary(new_now, new_len, self.utc_offset_s) else 0
        self.flags |= CLOCK_ADJUSTED | PARTIAL  # the interval in progress, closed as the head
        return self._close(new_now, CLOCK_ADJUSTED | INVALID, CLOCK_ADJUSTED | entered, False)

    def power_fail(self, now):
        """Power is failing at `now`: close what is due, flag the interval.

        The app then persists in_progress() and registers if it still can.
        """
        out = self.tick(now)
        self.flags |= POWER_FAILED
        return out

    def power_up(self, now, start, acc=None, flags=0, last_midnight=None, interval_s=None):
        """Resume after a reboot (call on a Recorder built with persisted registers).

        start, interval_s: the newest stored record's start (None: no record
        ever, then recording starts at `now` flagged POWER_FAILED) and length
        (default: the current interval_s; it differs if an interval change took
        effect at its end). acc/flags: the in-progress accumulators and flags
        persisted at power-down, if any. last_midnight: newest stored midnight
        register day (default: every midnight up to the end of the newest
        record counts as stored).
        """
        if start is None:
            return self.start(now, POWER_FAILED)
        off = self.utc_offset_s
        d = start + (interval_s or self.interval_s)  # in progress at power-down
        if not tu.is_boundary(d, self.interval_s, off):
            raise ValueError("start", start)  # its interval ends off a boundary
        self.start_s = d
        self.flags = flags | POWER_FAILED | PARTIAL
        if acc is not None:
            for i, v in enumerate(self._checked(acc, "acc", False)):
                self.acc[i] = v
        self.last_midnight = tu.day_start(d, off) if last_midnight is None else last_midnight
        self.now = now
        if now < d + self.interval_s:
            if now < d:  # clock behind the newest record: hold (never doubled)
                self.flags |= CLOCK_ADJUSTED
            return ()
        up = 0 if tu.is_boundary(now, self.interval_s, off) else POWER_FAILED | PARTIAL
        return self._close(now, POWER_FAILED | INVALID, up, False)

    def set_interval(self, interval_s, now):
        """Program a new interval length (M01). Returns the UTC instant it takes effect.

        It takes effect at the first boundary of the current length that is
        also a boundary of the new one, at or after the end of the interval in
        progress (and after now): at most one hour away. Returns None if it
        changes nothing (a pending change is then cancelled). The call whose
        records it takes effect in sets `switched` to it.
        """
        tu.check_interval(interval_s)
        if self.start_s is None:
            self.interval_s = interval_s
            return None
        if interval_s == self.interval_s:
            self.pending_interval = None
            return None
        off = self.utc_offset_s
        old = self.interval_s
        at = self.start_s + old
        nb = tu.next_boundary(now, old, off)
        if nb > at:
            at = nb
        common = tu.lcm(old, interval_s)
        at = tu.floor_to(at - 1, common, off) + common
        self.pending_interval = (interval_s, at)
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
        if self._midnight is None:
            return None
        to, regs = self._midnight
        done = self.last_midnight
        nxt = to if done is None else done + _DAY
        if to - nxt > _MAX_GAP_S:
            nxt = to - _MAX_GAP_S
        self.last_midnight = nxt
        if nxt >= to:
            self._midnight = None
        return (nxt, regs)

    def in_progress(self):
        """(start, interval_s, flags, values) of the interval in progress, or None."""
        if self.start_s is None:
            return None
        return (self.start_s, self.interval_s, self.flags, tuple(self.acc))

    def totals(self):
        """Current registers as a tuple."""
        return tuple(self.registers)
