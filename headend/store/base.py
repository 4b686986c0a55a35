"""The meter-data store interface: value types and the `MeterStore` protocol.

Everything here is backend-neutral. SQLite (`sqlite.py`) and PostgreSQL
(`postgres.py`) implement `MeterStore` over the same schema (`migrations.py`)
and the same day-row codec and merge rule (`days.py`).

Times are UTC seconds since 1970, as ints. Interval values are the meter's raw
integers; `units.Scale` turns them into Wh/varh exactly.

Merge rule (idempotent ingest, H04/D01): see `days.py` and `quality()`.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from headend.errors import InvalidData
from headend.store.units import ChannelKind, Scale, Unit
from protocol.codes import RESERVED_FLAGS, Flag

U8_MAX = 0xFF
U16_MAX = 0xFFFF
U32_MAX = 0xFFFF_FFFF
#: Interval values on the wire are 0 <= v < 2**31 (SPEC "Channel bit stream").
VALUE_LIMIT = 1 << 31
#: Register values are varints; the store keeps them in signed 64-bit columns.
REGISTER_LIMIT = 1 << 63
#: Interval lengths a meter may be programmed to (M01). All divide a day.
INTERVAL_LENGTHS = (300, 600, 900, 1800, 3600)
DAY_S = 86_400


class Source(enum.IntEnum):
    """Where a datum came from (D01). Stored per interval; 0 means "no datum"."""

    SCHEDULED = 1
    ON_DEMAND = 2
    RECOVERY = 3
    MANUAL_UPLOAD = 4
    THIRD_PARTY = 5


class Quality(enum.IntEnum):
    """Quality of one interval's datum; a higher one replaces a lower one."""

    MISSING = 0
    INVALID = 1
    POWER_FAILED = 2
    DEGRADED = 3  # partial, clock adjusted or recovered
    VALID = 4


def quality(flags: int) -> Quality:
    """Quality of a received interval from its status flags (worst bit wins)."""
    if flags & Flag.INVALID:
        return Quality.INVALID
    if flags & Flag.POWER_FAILED:
        return Quality.POWER_FAILED
    if flags & (Flag.PARTIAL | Flag.CLOCK_ADJUSTED | Flag.RECOVERED):
        return Quality.DEGRADED
    return Quality.VALID


def _ints(values: tuple[object, ...]) -> bool:
    """True if every item is an int (not a bool, float or str); C-speed."""
    return set(map(type, values)) <= {int}


def _check_int(name: str, v: object, lo: int, hi: int) -> None:
    if type(v) is not int or not lo <= v <= hi:
        raise InvalidData(f"{name}: expected an int {lo}..{hi}, got {v!r}")


@dataclass(frozen=True, slots=True)
class Channel:
    """One recorded channel of a meter, as reported at registration (M17)."""

    kind: ChannelKind
    unit: Unit
    multiplier: int = 1
    scaler: int = 0

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "kind", ChannelKind(self.kind))
            object.__setattr__(self, "unit", Unit(self.unit))
        except ValueError as exc:
            raise InvalidData(f"channel: {exc}") from None
        _check_int("channel multiplier", self.multiplier, 1, U16_MAX)
        _check_int("channel scaler", self.scaler, -128, 127)


@dataclass(frozen=True, slots=True)
class Meter:
    """A registered meter. Columns the ADCS adds later default to None.

    Attributes:
        meter_id: u32 id from the frame header.
        fw_version: firmware version string.
        interval_s: recording interval length (one of `INTERVAL_LENGTHS`).
        utc_offset_min: fixed offset of local *standard* time (midnight, M03).
        meter_multiplier: u16 multiplier for every channel (e.g. CT ratio).
        channels: the channels, in block order.
        registered_at: UTC s of the (latest) registration.
        capacity_days: days of intervals the meter holds (M02).
        read_group: read group name; None = unscheduled (H01).
        transport: "mqtt", "serial", ... (H08).
        key_id: id of the meter's key in the key store (never the key).
    """

    meter_id: int
    fw_version: str
    interval_s: int
    utc_offset_min: int
    meter_multiplier: int
    channels: tuple[Channel, ...]
    registered_at: int
    capacity_days: int = 45
    read_group: str | None = None
    transport: str | None = None
    key_id: str | None = None

    def __post_init__(self) -> None:
        _check_int("meter_id", self.meter_id, 0, U32_MAX)
        if self.interval_s not in INTERVAL_LENGTHS:
            raise InvalidData(
                f"interval_s: expected one of {INTERVAL_LENGTHS}, got {self.interval_s!r}"
            )
        _check_int("utc_offset_min", self.utc_offset_min, -720, 840)
        _check_int("meter_multiplier", self.meter_multiplier, 1, U16_MAX)
        _check_int("registered_at", self.registered_at, 0, U32_MAX)
        _check_int("capacity_days", self.capacity_days, 0, U16_MAX)
        object.__setattr__(self, "channels", tuple(self.channels))
        if not 1 <= len(self.channels) <= U8_MAX:
            raise InvalidData(f"channels: expected 1..255, got {len(self.channels)}")
        if not all(isinstance(c, Channel) for c in self.channels):
            raise InvalidData("channels: expected Channel items")

    def scale(self, channel: int) -> Scale:
        """The engineering-unit scale of channel index ``channel`` (H04)."""
        try:
            c = self.channels[channel]
        except IndexError:
            raise InvalidData(
                f"meter {self.meter_id} has {len(self.channels)} channels, no index {channel}"
            ) from None
        return _scale(c.unit, c.multiplier, c.scaler, self.meter_multiplier)


@functools.lru_cache(maxsize=1024)
def _scale(unit: Unit, channel_multiplier: int, scaler: int, meter_multiplier: int) -> Scale:
    """One checked `Scale` per combination (a fleet has few; each frame asks for
    its channels' several times)."""
    return Scale(unit, channel_multiplier, scaler, meter_multiplier)


@dataclass(frozen=True, slots=True)
class IntervalBlock:
    """Interval data of one block, in the protocol's canonical form.

    ``flags[i]`` is the status of interval i; ``channels[c][i]`` its raw value
    on channel c. Intervals start at ``start + i * interval_s``.
    """

    start: int
    interval_s: int
    flags: tuple[int, ...]
    channels: tuple[tuple[int, ...], ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "flags", tuple(self.flags))
        object.__setattr__(self, "channels", tuple(tuple(c) for c in self.channels))
        self._check_shape()
        self._check_values()

    def _check_shape(self) -> None:
        """Length, start, the channels' lengths: a few comparisons per block."""
        if self.interval_s not in INTERVAL_LENGTHS:
            raise InvalidData(
                f"interval_s: expected one of {INTERVAL_LENGTHS}, got {self.interval_s!r}"
            )
        _check_int("start", self.start, 0, U32_MAX)
        if self.start % self.interval_s:
            raise InvalidData(
                f"start {self.start} is not on an interval boundary of {self.interval_s} s"
            )
        n = len(self.flags)
        if not 1 <= n <= U16_MAX:
            raise InvalidData(f"count: expected 1..{U16_MAX} intervals, got {n}")
        if self.start + n * self.interval_s > U32_MAX:  # read_ack's upto is a u32
            raise InvalidData(
                f"block ends at {self.start + n * self.interval_s}, after 2**32 - 1 s"
            )
        if not self.channels:
            raise InvalidData("a block needs at least one channel")
        for i, ch in enumerate(self.channels):
            if len(ch) != n:
                raise InvalidData(f"channel {i}: expected {n} values, got {len(ch)}")

    def _check_values(self) -> None:
        """Every flag and value: types and ranges (a pass over each)."""
        if not _ints(self.flags) or min(self.flags) < 0 or max(self.flags) > U8_MAX:
            raise InvalidData("flags: expected ints 0..0x1F (bits 0xE0 reserved)")
        if any(f & RESERVED_FLAGS for f in set(self.flags)):
            raise InvalidData(f"flags: reserved bits 0xE0 set in {sorted(set(self.flags))}")
        for i, ch in enumerate(self.channels):
            if not _ints(ch):
                raise InvalidData(f"channel {i}: values must be ints")
            if min(ch) < 0 or max(ch) >= VALUE_LIMIT:
                raise InvalidData(
                    f"channel {i}: values must be 0 <= v < 2**31, got {min(ch)}..{max(ch)}"
                )

    @property
    def count(self) -> int:
        """Number of intervals."""
        return len(self.flags)

    @property
    def end(self) -> int:
        """End of the last interval (exclusive)."""
        return self.start + len(self.flags) * self.interval_s

    @classmethod
    def from_canonical(cls, d: Mapping[str, Any]) -> IntervalBlock:
        """Build from the decoded canonical dict (SPEC "Canonical field form")."""
        try:
            return cls(d["start"], d["interval_s"], tuple(d["flags"]), tuple(d["channels"]))
        except (KeyError, TypeError) as exc:
            raise InvalidData(f"interval block: {exc!r}") from None

    @classmethod
    def from_decoded(cls, d: Mapping[str, Any]) -> IntervalBlock:
        """`from_canonical` for a block `protocol.frame.decode` returned, whose flags and
        values its unpacker checked already (`protocol.blocks.decode_runs`: ints with
        no reserved bit, one per interval; `decode_channel`: ints 0..2**31 - 1, one per
        interval): only the block's shape is checked again. ~30 -> ~3 µs for a day of
        4 channels, once per uplink. Anything else must use `from_canonical`."""
        b = object.__new__(cls)
        put = object.__setattr__
        put(b, "start", d["start"])
        put(b, "interval_s", d["interval_s"])
        put(b, "flags", tuple(d["flags"]))
        put(b, "channels", tuple(map(tuple, d["channels"])))
        b._check_shape()
        return b


@dataclass(frozen=True, slots=True)
class BlockIngest:
    """One interval block to store for a meter, with its source (D01)."""

    meter_id: int
    block: IntervalBlock
    source: Source
    received_at: int

    def __post_init__(self) -> None:
        _check_int("meter_id", self.meter_id, 0, U32_MAX)
        object.__setattr__(self, "source", _source(self.source))
        _check_int("received_at", self.received_at, 0, U32_MAX)


@dataclass(frozen=True, slots=True)
class MidnightRegister:
    """Register reads of every channel at a local-standard midnight (M03).

    ``day`` is the UTC instant of that midnight.
    """

    meter_id: int
    day: int
    values: tuple[int, ...]
    source: Source
    received_at: int

    def __post_init__(self) -> None:
        _check_int("meter_id", self.meter_id, 0, U32_MAX)
        _check_int("day", self.day, 0, U32_MAX)
        object.__setattr__(self, "values", tuple(self.values))
        if not 1 <= len(self.values) <= U8_MAX:
            raise InvalidData(f"values: expected 1..255 channels, got {len(self.values)}")
        for v in self.values:
            _check_int("register value", v, 0, REGISTER_LIMIT - 1)
        object.__setattr__(self, "source", _source(self.source))
        _check_int("received_at", self.received_at, 0, U32_MAX)


@dataclass(frozen=True, slots=True)
class EventRecord:
    """A meter event (SPEC "Event") as stored. Identity: (meter, time, code, data)."""

    meter_id: int
    code: int
    time: int
    data: int
    source: Source
    received_at: int
    seq: int | None = None

    def __post_init__(self) -> None:
        _check_int("meter_id", self.meter_id, 0, U32_MAX)
        _check_int("event code", self.code, 0, U8_MAX)
        _check_int("event time", self.time, 0, U32_MAX)
        _check_int("event data", self.data, 0, U32_MAX)
        object.__setattr__(self, "source", _source(self.source))
        _check_int("received_at", self.received_at, 0, U32_MAX)
        if self.seq is not None:
            _check_int("seq", self.seq, 0, U16_MAX)


@dataclass(frozen=True, slots=True)
class Interval:
    """One stored interval of one channel: raw value, status flags, source."""

    start: int
    value: int
    flags: int
    source: Source


@dataclass(frozen=True, slots=True)
class DayCoverage:
    """How many intervals of one local-standard day are stored for a meter."""

    day: int
    expected: int
    present: int

    @property
    def missing(self) -> int:
        """Intervals with no datum."""
        return self.expected - self.present

    @property
    def complete(self) -> bool:
        """True when every interval of the day has a datum."""
        return self.present == self.expected


@dataclass(frozen=True, slots=True)
class IngestResult:
    """What one `MeterStore.ingest` call changed.

    Attributes:
        intervals_written: intervals (all channels of one slot) stored or upgraded.
        intervals_kept: received intervals not stored because the stored one is
            as good or better (duplicates and worse data).
        days_inserted: (meter, day) rows created (see `days.py` for "day").
        days_updated: existing (meter, day) rows changed.
        midnights_written / events_written: new rows (duplicates are ignored).
    """

    intervals_written: int = 0
    intervals_kept: int = 0
    days_inserted: int = 0
    days_updated: int = 0
    midnights_written: int = 0
    events_written: int = 0


@dataclass(frozen=True, slots=True)
class StoreStats:
    """Counts over the whole store (or a day range, see `MeterStore.stats`).

    Attributes:
        meters: registered meters.
        meter_days: (meter, day) rows holding interval data.
        intervals: stored interval slots (one slot = every channel of one interval).
        midnight_registers: (meter, midnight) register sets.
        events: stored events.
        intervals_by_source: ``intervals`` split by the source of each datum (D08).
    """

    meters: int
    meter_days: int
    intervals: int
    midnight_registers: int
    events: int
    intervals_by_source: Mapping[Source, int] = field(default_factory=dict)


def _source(s: int) -> Source:
    if type(s) is Source:  # the common case, three times a frame: no enum look-up
        return s
    try:
        return Source(s)
    except ValueError:
        codes = [int(x) for x in Source]
        raise InvalidData(f"source: expected one of {codes}, got {s!r}") from None


class MeterStore(Protocol):
    """The MDMS storage interface; SQLite and PostgreSQL implement it alike.

    All writes of one call happen in one transaction: a call either stores
    everything or raises a `HeadendError` and changes nothing. A caller must
    not acknowledge data to a meter before the call that stores it returned.
    """

    backend: str

    def close(self) -> None:
        """Close the connection."""

    def schema_version(self) -> int:
        """The schema version of the open database."""

    def register_meter(self, meter: Meter) -> None:
        """Insert a meter, or replace its registration data (M17, re-registration)."""

    def get_meter(self, meter_id: int) -> Meter:
        """The meter's registration. Raises `UnknownMeter`."""

    def meter_ids(self) -> list[int]:
        """Ids of all registered meters, ascending."""

    def ingest(
        self,
        blocks: Sequence[BlockIngest] = (),
        midnights: Sequence[MidnightRegister] = (),
        events: Sequence[EventRecord] = (),
    ) -> IngestResult:
        """Store blocks, midnight registers and events in ONE transaction.

        Idempotent: re-sending the same or an overlapping block never doubles
        data and never replaces a datum with a worse one (see `days.py`).

        Raises:
            UnknownMeter: an item names a meter that is not registered.
            InvalidData: channel count or interval length differs from the
                meter's registration. Nothing is stored.
            StoreError: the database failed. Nothing is stored.
        """

    def intervals(self, meter_id: int, channel: int, start: int, end: int) -> list[Interval]:
        """Stored intervals of one channel starting in [start, end), ascending."""

    def coverage(self, meter_id: int, start: int, end: int) -> list[DayCoverage]:
        """Per local-standard day overlapping [start, end): intervals expected/present."""

    def midnight_registers(self, meter_id: int, start: int, end: int) -> list[MidnightRegister]:
        """Midnight registers with ``start <= day < end``, ascending."""

    def events(self, meter_id: int, start: int, end: int) -> list[EventRecord]:
        """Events with ``start <= time < end``, ascending by time then code."""

    def stats(self, start: int | None = None, end: int | None = None) -> StoreStats:
        """Counts; with a range, only day rows starting / events timed in [start, end)."""
