"""Day rows: how interval data is laid out, and the merge rule.

Layout. Interval data of a meter is kept as one row per (meter, day), where a
day is 86,400 s from ``day`` = a multiple of 86,400 plus the meter's *day
phase*. The phase is fixed when the meter is first registered: its local
standard midnight (from ``utc_offset_min``), rounded down to a whole UTC hour so
that every interval length (all divide 3600 s) keeps the same slot grid. For
whole-hour offsets a row is exactly one local-standard day, so a daily read is
one row and "is yesterday complete?" is ``n_present`` of one row. The phase
never changes afterwards (a later offset change cannot make rows overlap).

* ``vals``  - every channel's raw values for every slot of the day, channel
  after channel, as little-endian unsigned ints of the smallest width that
  holds the row's largest value (1, 2 or 4 bytes; the width is
  ``len(vals) // (channels * slots)``). Empty slots hold 0.
* ``flags`` - one status-flag byte per slot.
* ``srcs``  - one `Source` byte per slot; 0 means "no datum" (missing).

A 4-channel, 96-slot household day is ~1 KB, so a million meter-days is one
million rows, and a per-interval query decodes only the days it touches.

Merge rule (idempotent ingest). For each slot, a received datum replaces the
stored one only if its quality is strictly higher:

    VALID > DEGRADED (partial, clock adjusted, recovered) > POWER_FAILED
          > INVALID > MISSING (no datum)

On equal quality the stored datum stays (with its source), so re-sending the
same or an overlapping block changes nothing, and a datum only moves up in
quality. The rule keeps the *first* datum of the highest quality in arrival
order; that is associative, so merging a batch's blocks first and then the
batch into the database gives the same result as ingesting them one by one.
All channels of a slot move together (the flags are per slot).
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Iterator

from headend.errors import InvalidData
from headend.store.base import DAY_S, IntervalBlock, quality

_T4 = "I" if array("I").itemsize == 4 else "L"
_TYPECODES = {1: "B", 2: "H", 4: _T4}
_BIG_ENDIAN = sys.byteorder == "big"
#: quality rank by flags byte.
RANK = bytes(int(quality(f)) for f in range(256))


_WIDTHS = ("B", "H", _T4)  # narrowest first


def day_phase(utc_offset_min: int) -> int:
    """Row phase for a meter: local standard midnight mod one day, down to a whole hour."""
    return (-utc_offset_min * 60) % DAY_S // 3600 * 3600


def segments(block: IntervalBlock, phase: int = 0) -> Iterator[tuple[int, int, int, int]]:
    """Split a block by row day: yields (day, first slot, first index, end index)."""
    step = block.interval_s
    slots = DAY_S // step
    n = block.count
    i = 0
    t = block.start
    while i < n:
        day = t - (t - phase) % DAY_S
        off = (t - day) // step
        take = min(n - i, slots - off)
        yield day, off, i, i + take
        i += take
        t += take * step


class DayRow:
    """One (meter, day) row of interval data, decoded (mutable, internal)."""

    __slots__ = ("day", "interval_s", "vals", "flags", "srcs")

    def __init__(
        self, day: int, interval_s: int, vals: list[list[int]], flags: bytearray, srcs: bytearray
    ) -> None:
        self.day = day
        self.interval_s = interval_s
        self.vals = vals
        self.flags = flags
        self.srcs = srcs

    @classmethod
    def empty(cls, day: int, interval_s: int, nch: int) -> DayRow:
        """A day with no datum in any slot."""
        slots = DAY_S // interval_s
        return cls(
            day, interval_s, [[0] * slots for _ in range(nch)], bytearray(slots), bytearray(slots)
        )

    @property
    def slots(self) -> int:
        """Number of intervals in the day."""
        return len(self.srcs)

    @property
    def present(self) -> int:
        """Number of slots holding a datum."""
        return len(self.srcs) - self.srcs.count(0)

    def merge_block(self, block: IntervalBlock, off: int, a: int, b: int, source: int) -> int:
        """Merge intervals ``a:b`` of ``block`` into slots from ``off``; returns slots written."""
        k = b - a
        end = off + k
        srcs = self.srcs
        if srcs.count(0, off, end) == k:  # all empty: take everything
            srcs[off:end] = bytes((source,)) * k
            self.flags[off:end] = bytes(block.flags[a:b])
            for mine, theirs in zip(self.vals, block.channels, strict=True):
                mine[off:end] = theirs[a:b]
            return k
        written = 0
        flags = self.flags
        bflags = block.flags
        for j in range(k):
            s = off + j
            f = bflags[a + j]
            if RANK[f] > (RANK[flags[s]] if srcs[s] else 0):
                srcs[s] = source
                flags[s] = f
                for mine, theirs in zip(self.vals, block.channels, strict=True):
                    mine[s] = theirs[a + j]
                written += 1
        return written

    def merge_row(self, other: DayRow) -> int:
        """Merge every datum of ``other`` (same day and layout) in; returns slots written."""
        if other.interval_s != self.interval_s or len(other.vals) != len(self.vals):
            raise InvalidData(
                f"day {self.day}: stored with {len(self.vals)} channels of "
                f"{self.interval_s} s, received {len(other.vals)} of {other.interval_s} s"
            )
        srcs, flags = self.srcs, self.flags
        osrcs, oflags = other.srcs, other.flags
        # Fast paths: ``other`` holds one contiguous run [lo, hi) (a block's part of the day).
        lo, hi = _run(osrcs)
        if osrcs.count(0, lo, hi) == 0:
            if srcs.count(0, lo, hi) == hi - lo:  # fills empty slots only
                srcs[lo:hi] = osrcs[lo:hi]
                flags[lo:hi] = oflags[lo:hi]
                for mine, theirs in zip(self.vals, other.vals, strict=True):
                    mine[lo:hi] = theirs[lo:hi]
                return hi - lo
            if srcs.count(0, lo, hi) == 0 and flags[lo:hi] == oflags[lo:hi]:
                return 0  # same quality everywhere: the stored data stays
        written = 0
        for s in range(lo, hi):
            src = osrcs[s]
            if src and RANK[oflags[s]] > (RANK[flags[s]] if srcs[s] else 0):
                srcs[s] = src
                flags[s] = oflags[s]
                for mine, theirs in zip(self.vals, other.vals, strict=True):
                    mine[s] = theirs[s]
                written += 1
        return written

    def encode(self) -> tuple[bytes, bytes, bytes]:
        """(vals, flags, srcs) blobs for the database."""
        for code in _WIDTHS:
            # the narrowest width whose array takes every value: `fromlist` refuses one
            # too large (cheaper than finding the largest first: 18 -> 6 µs a day)
            a = array(code)
            try:
                for ch in self.vals:
                    a.fromlist(ch)
            except OverflowError:
                continue
            if _BIG_ENDIAN:
                a.byteswap()
            return a.tobytes(), bytes(self.flags), bytes(self.srcs)
        raise InvalidData(f"day {self.day}: a value over 4 bytes")  # IntervalBlock forbids

    @classmethod
    def whole(cls, day: int, block: IntervalBlock, a: int, source: int) -> DayRow:
        """A day that intervals ``a:a + slots`` of ``block`` fill (what `merge_block`
        into an `empty` row gives, without it)."""
        slots = DAY_S // block.interval_s
        b = a + slots
        return cls(
            day,
            block.interval_s,
            [list(ch[a:b]) for ch in block.channels],
            bytearray(block.flags[a:b]),
            bytearray((source,)) * slots,
        )

    @classmethod
    def decode(
        cls, day: int, interval_s: int, nch: int, vals: bytes, flags: bytes, srcs: bytes
    ) -> DayRow:
        """Inverse of `encode`."""
        slots = DAY_S // interval_s
        a = _values(vals, nch * slots)
        chans = [a[c * slots : (c + 1) * slots].tolist() for c in range(nch)]
        return cls(day, interval_s, chans, bytearray(flags), bytearray(srcs))


def _run(srcs: bytearray) -> tuple[int, int]:
    """[first, last + 1) of the slots holding a datum; (0, 0) if none."""
    hi = len(srcs.rstrip(b"\0"))
    if not hi:
        return 0, 0
    return len(srcs) - len(srcs.lstrip(b"\0")), hi


def _values(vals: bytes, n: int) -> array[int]:
    width = len(vals) // n if n else 0
    try:
        a = array(_TYPECODES[width])
    except KeyError:
        raise InvalidData(f"stored day row: {len(vals)} bytes for {n} values") from None
    a.frombytes(vals)
    if _BIG_ENDIAN:
        a.byteswap()
    return a


def channel_values(vals: bytes, nch: int, slots: int, channel: int) -> array[int]:
    """Decode one channel's values of a stored day row."""
    width = len(vals) // (nch * slots)
    return _values(vals[channel * slots * width : (channel + 1) * slots * width], slots)
