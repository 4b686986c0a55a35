"""Exports (D11): interval data, midnight registers and events of a set of meters
for a period, as CSV, JSON or Green Button / ESPI XML (`espi`), streamed.

Stored times are UTC; only the rendering converts, into the requester's IANA
zone with an explicit offset on every timestamp. The period is walked in local
days of that zone (a spring-forward day is 23 hours, a fall-back day 25), and
every interval of the meter's grid in the period is written once: missing ones
too, with a null value, so a 15-minute spring-forward day has 92 rows per
channel and a fall-back day 100. Values are exact decimals in engineering
units (see `store.units`), with each datum's source.

Memory: one meter's local day of one channel set at a time (`Slots` of a day),
so an export's peak memory does not grow with the number of meters or days.
Writers are generators of text pieces; `write` sends them to a file object.
"""

from __future__ import annotations

import csv
import functools
import io
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import TextIO
from zoneinfo import ZoneInfo

from headend.errors import InvalidData
from headend.store import Meter, SqlStore
from headend.store.base import MidnightRegister, quality
from protocol.codes import Event

FORMATS = ("csv", "json", "espi")
WHAT = ("intervals", "registers", "events")

#: progress(meters done, meters total or None)
ProgressFn = Callable[[int, int | None], None]


@dataclass(frozen=True)
class Request:
    """What to export: meters (ids, resolved lazily by the caller), period, zone, records."""

    meters: Iterable[int]
    start: int
    end: int
    tz: ZoneInfo
    fmt: str = "csv"
    what: tuple[str, ...] = WHAT
    total: int | None = None  # number of meters, when known (for progress)

    def __post_init__(self) -> None:
        if self.end <= self.start:
            raise InvalidData(f"export period: start {self.start} must be before end {self.end}")
        if self.fmt not in FORMATS:
            raise InvalidData(f"format: expected one of {FORMATS}, got {self.fmt!r}")
        bad = [w for w in self.what if w not in WHAT]
        if bad or not self.what:
            raise InvalidData(f"what: expected some of {WHAT}, got {list(self.what)}")


@dataclass(frozen=True, slots=True)
class Slot:
    """One interval of the meter's grid: raw values per channel (None: missing)."""

    start: int
    raw: tuple[int | None, ...]
    flags: int
    source: str | None  # None: no channel has a datum

    @property
    def quality(self) -> str:
        return "missing" if self.source is None else quality_name(self.flags)


@dataclass
class Counts:
    """What a written export held."""

    meters: int = 0
    intervals: int = 0
    registers: int = 0
    events: int = 0

    @property
    def rows(self) -> int:
        return self.intervals + self.registers + self.events


@functools.cache
def quality_name(flags: int) -> str:
    """``valid``, ``degraded``, ... of a datum's status flags (cached: a hot path)."""
    return quality(flags).name.lower()


# -- reading -------------------------------------------------------------------------------


def local_days(start: int, end: int, tz: ZoneInfo) -> Iterator[tuple[int, int]]:
    """[lo, hi) of each local day of ``tz`` that overlaps [start, end), clipped to it."""
    d = datetime.fromtimestamp(start, tz).date()
    while True:
        lo = max(start, midnight(d, tz))
        d += timedelta(days=1)
        hi = min(end, midnight(d, tz))
        if lo < hi:
            yield lo, hi
        if hi >= end:
            return


def midnight(d: date, tz: ZoneInfo) -> int:
    """UTC s of the first instant of local day ``d`` in ``tz``."""
    return int(datetime(d.year, d.month, d.day, tzinfo=tz).timestamp())


def day_slots(store: SqlStore, meter: Meter, lo: int, hi: int) -> list[Slot]:
    """Every grid interval of ``meter`` starting in [lo, hi), stored or not, ascending."""
    step = meter.interval_s
    nch = len(meter.channels)
    got = [{iv.start: iv for iv in store.intervals(meter.meter_id, c, lo, hi)} for c in range(nch)]
    out: list[Slot] = []
    for t in range(-(-lo // step) * step, hi, step):
        ivs = [g.get(t) for g in got]
        first = next((iv for iv in ivs if iv is not None), None)
        raw = tuple(None if iv is None else iv.value for iv in ivs)
        if first is None:
            out.append(Slot(t, raw, 0, None))
        else:
            out.append(Slot(t, raw, first.flags, first.source.name.lower()))
    return out


def registers(store: SqlStore, meter_id: int, start: int, end: int) -> list[MidnightRegister]:
    """Midnight registers at instants in [start, end] (the end's midnight included: a
    period's closing read)."""
    return store.midnight_registers(meter_id, start, end + 1)


def channel_names(meter: Meter) -> list[str]:
    """``active_import``, ... one per channel (index-suffixed if a kind repeats)."""
    names: list[str] = []
    for i, c in enumerate(meter.channels):
        name = c.kind.name.lower()
        names.append(name if name not in names else f"{name}_{i}")
    return names


def number(d: Decimal | None) -> str:
    """A decimal as plain digits (never an exponent); '' for None."""
    return "" if d is None else format(d, "f")


def event_name(code: int) -> str:
    try:
        return Event(code).name.lower()
    except ValueError:
        return f"code_{code}"


def local(t: int, tz: ZoneInfo) -> str:
    return datetime.fromtimestamp(t, tz).isoformat()


# -- writers -------------------------------------------------------------------------------


def pieces(
    store: SqlStore, req: Request, counts: Counts, progress: ProgressFn | None = None
) -> Iterator[str]:
    """The export as text pieces (one meter-day at most per piece)."""
    if req.fmt == "espi":
        from headend.mdms import espi

        return espi.pieces(store, req, counts, progress)
    if req.fmt == "json":
        return _json(store, req, counts, progress)
    return _csv(store, req, counts, progress)


def write(store: SqlStore, req: Request, out: TextIO, progress: ProgressFn | None = None) -> Counts:
    """Stream the export to ``out``; what it held."""
    counts = Counts()
    for p in pieces(store, req, counts, progress):
        out.write(p)
    return counts


def meters_of(store: SqlStore, req: Request, progress: ProgressFn | None) -> Iterator[Meter]:
    """The request's meters, one at a time, with progress after each."""
    for n, mid in enumerate(req.meters, 1):
        yield store.get_meter(mid)
        if progress is not None:
            progress(n, req.total)


CSV_COLUMNS = (
    "meter", "record", "start", "end", "channel", "unit", "value",
    "quality", "flags", "source", "event",
)  # fmt: skip


def _csv(
    store: SqlStore, req: Request, counts: Counts, progress: ProgressFn | None
) -> Iterator[str]:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    tz = req.tz
    for meter in meters_of(store, req, progress):
        counts.meters += 1
        mid = meter.meter_id
        names = channel_names(meter)
        scales = [meter.scale(c) for c in range(len(names))]
        units = [c.unit.symbol for c in meter.channels]
        if "intervals" in req.what:
            for lo, hi in local_days(req.start, req.end, tz):
                for s in day_slots(store, meter, lo, hi):
                    a, b = local(s.start, tz), local(s.start + meter.interval_s, tz)
                    for c, r in enumerate(s.raw):
                        v = None if r is None else scales[c].engineering(r)
                        w.writerow(
                            [mid, "interval", a, b, names[c], units[c], number(v),
                             s.quality if r is not None else "missing",
                             s.flags if r is not None else "", s.source or "", ""]
                        )  # fmt: skip
                    counts.intervals += 1
                yield _drain(buf)
        if "registers" in req.what:
            for m in registers(store, mid, req.start, req.end):
                for c, r in enumerate(m.values):
                    w.writerow(
                        [mid, "register", local(m.day, tz), "", names[c], units[c],
                         number(scales[c].engineering(r)), "", "", m.source.name.lower(), ""]
                    )  # fmt: skip
                counts.registers += 1
            yield _drain(buf)
        if "events" in req.what:
            for e in store.events(mid, req.start, req.end):
                w.writerow(
                    [mid, "event", local(e.time, tz), "", "", "", e.data, "", "",
                     e.source.name.lower(), event_name(e.code)]
                )  # fmt: skip
                counts.events += 1
            yield _drain(buf)


def _drain(buf: io.StringIO) -> str:
    text = buf.getvalue()
    buf.seek(0)
    buf.truncate()
    return text


def _json(
    store: SqlStore, req: Request, counts: Counts, progress: ProgressFn | None
) -> Iterator[str]:
    tz = req.tz
    dumps = json.dumps
    yield (
        f'{{"time_zone": {dumps(tz.key)}, "start": {dumps(local(req.start, tz))}, '
        f'"end": {dumps(local(req.end, tz))}, "meters": ['
    )
    for n, meter in enumerate(meters_of(store, req, progress)):
        counts.meters += 1
        mid = meter.meter_id
        names = channel_names(meter)
        scales = [meter.scale(c) for c in range(len(names))]
        chans = [
            {"name": nm, "unit": c.unit.symbol} for nm, c in zip(names, meter.channels, strict=True)
        ]
        yield (
            f'{"," if n else ""}\n {{"meter": {mid}, "interval_s": {meter.interval_s}, '
            f'"channels": {dumps(chans)}'
        )
        if "intervals" in req.what:
            yield ', "intervals": ['
            sep = ""
            for lo, hi in local_days(req.start, req.end, tz):
                part: list[str] = []
                for s in day_slots(store, meter, lo, hi):
                    vals = ", ".join(
                        f"{dumps(names[c])}: "
                        + ("null" if r is None else number(scales[c].engineering(r)))
                        for c, r in enumerate(s.raw)
                    )
                    src = "null" if s.source is None else dumps(s.source)
                    part.append(
                        f'{sep}\n  {{"start": "{local(s.start, tz)}", '
                        f'"end": "{local(s.start + meter.interval_s, tz)}", '
                        f'"values": {{{vals}}}, "flags": {s.flags}, '
                        f'"quality": "{s.quality}", "source": {src}}}'
                    )
                    sep = ","
                    counts.intervals += 1
                yield "".join(part)
            yield "]"
        if "registers" in req.what:
            regs = []
            for m in registers(store, mid, req.start, req.end):
                vals = ", ".join(
                    f"{dumps(names[c])}: {number(scales[c].engineering(r))}"
                    for c, r in enumerate(m.values)
                )
                regs.append(
                    f'\n  {{"at": "{local(m.day, tz)}", "values": {{{vals}}}, '
                    f'"source": "{m.source.name.lower()}"}}'
                )
                counts.registers += 1
            yield ', "registers": [' + ",".join(regs) + "]"
        if "events" in req.what:
            evs = []
            for e in store.events(mid, req.start, req.end):
                evs.append(
                    f'\n  {{"at": "{local(e.time, tz)}", "event": "{event_name(e.code)}", '
                    f'"code": {e.code}, "data": {e.data}, "source": "{e.source.name.lower()}"}}'
                )
                counts.events += 1
            yield ', "events": [' + ",".join(evs) + "]"
        yield "}"
    yield "\n]}\n"
