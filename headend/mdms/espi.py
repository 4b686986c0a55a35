"""Green Button / ESPI (NAESB REQ.21) XML: an Atom feed of the export, streamed.

The feed (namespace ``http://www.w3.org/2005/Atom``, ESPI elements in
``http://naesb.org/espi``) holds, in order:

- one ``LocalTimeParameters`` entry: the requester's zone as ESPI states it
  (standard offset, DST offset, DST start/end rules as bit-packed hex);
- per meter a ``UsagePoint`` (electricity), then per channel a ``MeterReading``,
  its ``ReadingType`` (delta data, energy, forward or reverse flow, interval
  length, ``powerOfTenMultiplier`` and ``uom`` 72 Wh / 73 VArh) and one
  ``IntervalBlock`` per local day of the zone with its ``IntervalReading``s
  (UTC ``start`` and ``duration`` s, an integer ``value``: the engineering
  value is ``value x 10**powerOfTenMultiplier`` in ``uom``);
- with registers, per channel a second ``MeterReading`` whose ``ReadingType``
  is a bulk quantity (the midnight register reads, duration 0).

ESPI has no field for a datum's origin, so each IntervalBlock entry carries an
Atom extension element (``urn:ami:export`` namespace, outside ``content``,
which ESPI readers ignore) with the source of each run of readings. A missing
interval has no reading (ESPI readings have no null value); ``ReadingQuality``
10 (questionable) marks a datum whose status flags are not clean. Events are
not part of ESPI usage data and are left out.
"""

from __future__ import annotations

import calendar
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from headend.errors import InvalidData
from headend.mdms.export import (
    Counts,
    ProgressFn,
    Request,
    Slot,
    channel_names,
    day_slots,
    local_days,
    meters_of,
    registers,
)
from headend.store import Meter, SqlStore
from headend.store.units import ChannelKind, Scale, Unit

ATOM = "http://www.w3.org/2005/Atom"
ESPI = "http://naesb.org/espi"
AMI = "urn:ami:export"

#: UnitMultiplierKind values ESPI allows for powerOfTenMultiplier.
MULTIPLIERS = (-12, -9, -6, -3, -2, -1, 0, 1, 2, 3, 6, 9, 12)
#: UomType (IEC 61968-9): 72 Wh, 73 VArh.
UOM = {Unit.WH: 72, Unit.VARH: 73}
#: FlowDirectionKind: 1 forward (delivered to the customer), 19 reverse (received).
FLOW = {
    ChannelKind.ACTIVE_IMPORT: 1,
    ChannelKind.REACTIVE_IMPORT: 1,
    ChannelKind.ACTIVE_EXPORT: 19,
    ChannelKind.REACTIVE_EXPORT: 19,
}
DELTA_DATA, BULK_QUANTITY = 4, 1  # AccumulationKind
ENERGY = 12  # MeasurementKind
QUESTIONABLE = 10  # QualityOfReading


def espi_scale(scale: Scale) -> tuple[int, int]:
    """(integer factor on raw, powerOfTenMultiplier): raw x factor x 10**p is exact."""
    allowed = [m for m in MULTIPLIERS if m <= scale.scaler]
    if not allowed:
        raise InvalidData(f"scaler {scale.scaler}: below ESPI's smallest multiplier (-12)")
    p = allowed[-1]
    return scale.factor * 10 ** (scale.scaler - p), p


# -- time zone ---------------------------------------------------------------------------------


def _transitions(tz: ZoneInfo, year: int) -> list[tuple[int, int]]:
    """(UTC s, offset after) of each change of UTC offset in ``year``."""
    t = int(datetime(year, 1, 1, tzinfo=UTC).timestamp())
    end = int(datetime(year + 1, 1, 1, tzinfo=UTC).timestamp())
    out: list[tuple[int, int]] = []

    def off(s: int) -> int:
        o = datetime.fromtimestamp(s, tz).utcoffset()
        return 0 if o is None else int(o.total_seconds())

    prev = off(t)
    while t < end:
        nxt = t + 3600
        if off(nxt) != prev:
            lo, hi = t, nxt  # the change is in (lo, hi]
            while hi - lo > 1:
                mid = (lo + hi) // 2
                lo, hi = (mid, hi) if off(mid) == prev else (lo, mid)
            prev = off(hi)
            out.append((hi, prev))
        t = nxt
    return out


def dst_rule(t: int, offset_before: int) -> str:
    """ESPI DstRuleType for a change at UTC ``t``: month, weekday occurrence, local time."""
    wall = datetime.fromtimestamp(t + offset_before, UTC)  # local wall clock before the change
    days = calendar.monthrange(wall.year, wall.month)[1]
    op = 6 if wall.day + 7 > days else (wall.day - 1) // 7 + 2  # last, or 1st..4th
    bits = (
        wall.month << 28
        | op << 25
        | wall.isoweekday() << 17
        | wall.hour << 12
        | (wall.minute * 60 + wall.second)
    )
    return f"{bits:08X}"


def local_time_parameters(tz: ZoneInfo, year: int) -> tuple[int, int, str, str]:
    """(tzOffset, dstOffset, dstStartRule, dstEndRule) of ``tz`` in ``year``."""
    ch = _transitions(tz, year)
    jan = datetime(year, 1, 1, tzinfo=tz)
    std = int((jan.utcoffset() or timedelta()).total_seconds())
    if len(ch) < 2:
        fixed = ch[-1][1] if ch else std  # no DST (or a one-off change): a fixed offset
        return fixed, 0, "00000000", "00000000"
    (t1, o1), (t2, o2) = ch[0], ch[1]
    if o1 > o2:  # northern hemisphere: the first change of the year moves clocks forward
        return o2, o1 - o2, dst_rule(t1, o2), dst_rule(t2, o1)
    return o1, o2 - o1, dst_rule(t2, o1), dst_rule(t1, o2)


# -- the feed ----------------------------------------------------------------------------------


def _iso(t: int) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _entry(self_href: str, title: str, content: str, updated: str, *links: tuple[str, str],
           extra: str = "") -> str:  # fmt: skip
    rel = "".join(f'<link rel="{r}" href="{h}"/>' for r, h in links)
    return (
        f'\n <entry><id>urn:ami:{self_href}</id><link rel="self" href="{self_href}"/>{rel}'
        f"<title>{title}</title>{extra}<content>{content}</content>"
        f"<published>{updated}</published><updated>{updated}</updated></entry>"
    )


def _reading_type(meter: Meter, c: int, accumulation: int, length: int) -> str:
    ch = meter.channels[c]
    _, p = espi_scale(meter.scale(c))
    return (
        "<espi:ReadingType>"
        f"<espi:accumulationBehaviour>{accumulation}</espi:accumulationBehaviour>"
        "<espi:commodity>1</espi:commodity>"
        "<espi:dataQualifier>12</espi:dataQualifier>"
        f"<espi:flowDirection>{FLOW[ch.kind]}</espi:flowDirection>"
        f"<espi:intervalLength>{length}</espi:intervalLength>"
        f"<espi:kind>{ENERGY}</espi:kind>"
        "<espi:phase>769</espi:phase>"
        f"<espi:powerOfTenMultiplier>{p}</espi:powerOfTenMultiplier>"
        "<espi:timeAttribute>0</espi:timeAttribute>"
        f"<espi:uom>{UOM[ch.unit]}</espi:uom>"
        "</espi:ReadingType>"
    )


def _reading(start: int, duration: int, value: int, questionable: bool) -> str:
    q = (
        f"<espi:ReadingQuality><espi:quality>{QUESTIONABLE}</espi:quality></espi:ReadingQuality>"
        if questionable
        else ""
    )
    return (
        f"<espi:IntervalReading>{q}<espi:timePeriod><espi:duration>{duration}</espi:duration>"
        f"<espi:start>{start}</espi:start></espi:timePeriod>"
        f"<espi:value>{value}</espi:value></espi:IntervalReading>"
    )


def _sources(slots: list[Slot], c: int) -> str:
    """The source of each run of present readings: <ami:source start= count=>name."""
    runs: list[tuple[int, int, str]] = []
    for s in slots:
        if s.raw[c] is None or s.source is None:
            continue
        if runs and runs[-1][2] == s.source:
            a, n, src = runs[-1]
            runs[-1] = (a, n + 1, src)
        else:
            runs.append((s.start, 1, s.source))
    body = "".join(f'<ami:source start="{a}" count="{n}">{src}</ami:source>' for a, n, src in runs)
    return f'<ami:sources xmlns:ami="{AMI}">{body}</ami:sources>'


def pieces(
    store: SqlStore, req: Request, counts: Counts, progress: ProgressFn | None = None
) -> Iterator[str]:
    """The feed as text pieces (one IntervalBlock entry at most per piece)."""
    tz = req.tz
    now = _iso(int(datetime.now(UTC).timestamp()))
    year = datetime.fromtimestamp(req.start, tz).year
    std, dst, rule_on, rule_off = local_time_parameters(tz, year)
    yield (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<feed xmlns="{ATOM}" xmlns:espi="{ESPI}">'
        f"<id>urn:ami:export:{req.start}:{req.end}</id><title>AMI export {_iso(req.start)} .. "
        f"{_iso(req.end)} ({tz.key})</title><updated>{now}</updated>"
    )
    ltp = "LocalTimeParameters/1"
    yield _entry(
        ltp,
        tz.key,
        "<espi:LocalTimeParameters>"
        f"<espi:dstEndRule>{rule_off}</espi:dstEndRule><espi:dstOffset>{dst}</espi:dstOffset>"
        f"<espi:dstStartRule>{rule_on}</espi:dstStartRule><espi:tzOffset>{std}</espi:tzOffset>"
        "</espi:LocalTimeParameters>",
        now,
    )
    for meter in meters_of(store, req, progress):
        counts.meters += 1
        mid = meter.meter_id
        up = f"UsagePoint/{mid}"
        yield _entry(
            up,
            f"meter {mid}",
            "<espi:UsagePoint><espi:ServiceCategory><espi:kind>0</espi:kind>"
            "</espi:ServiceCategory></espi:UsagePoint>",
            now,
            ("up", "UsagePoint"),
            ("related", f"{up}/MeterReading"),
            ("related", ltp),
        )
        names = channel_names(meter)
        if "intervals" in req.what:
            yield from _interval_readings(store, req, meter, names, counts, now)
        if "registers" in req.what:
            for c, name in enumerate(names):
                yield from _register_reading(store, req, meter, c, name, counts, now)
    yield "\n</feed>\n"


def _meter_reading(meter: Meter, key: str, title: str, rt: str, now: str) -> str:
    up = f"UsagePoint/{meter.meter_id}"
    mr = f"{up}/MeterReading/{key}"
    return _entry(
        mr,
        title,
        "<espi:MeterReading/>",
        now,
        ("up", f"{up}/MeterReading"),
        ("related", f"ReadingType/{meter.meter_id}-{key}"),
        ("related", f"{mr}/IntervalBlock"),
    ) + _entry(f"ReadingType/{meter.meter_id}-{key}", title, rt, now, ("up", "ReadingType"))


def _interval_readings(
    store: SqlStore, req: Request, meter: Meter, names: list[str], counts: Counts, now: str
) -> Iterator[str]:
    """A MeterReading per channel, then per local day one IntervalBlock per channel (a
    day's slots are read once for every channel)."""
    step = meter.interval_s
    factors = [espi_scale(meter.scale(c))[0] for c in range(len(names))]
    for c, name in enumerate(names):
        rt = _reading_type(meter, c, DELTA_DATA, step)
        yield _meter_reading(meter, str(c), name, rt, now)
    for lo, hi in local_days(req.start, req.end, req.tz):
        slots = day_slots(store, meter, lo, hi)
        counts.intervals += len(slots)
        for c, name in enumerate(names):
            mr = f"UsagePoint/{meter.meter_id}/MeterReading/{c}"
            body = "".join(
                _reading(s.start, step, raw * factors[c], s.quality != "valid")
                for s in slots
                if (raw := s.raw[c]) is not None
            )
            yield _entry(
                f"{mr}/IntervalBlock/{lo}",
                f"{name} {_iso(lo)}",
                f"<espi:IntervalBlock><espi:interval><espi:duration>{hi - lo}</espi:duration>"
                f"<espi:start>{lo}</espi:start></espi:interval>{body}</espi:IntervalBlock>",
                now,
                ("up", f"{mr}/IntervalBlock"),
                extra=_sources(slots, c),
            )


def _register_reading(
    store: SqlStore, req: Request, meter: Meter, c: int, name: str, counts: Counts, now: str
) -> Iterator[str]:
    key = f"{c}-register"
    factor, _ = espi_scale(meter.scale(c))
    yield _meter_reading(
        meter, key, f"{name} midnight register",
        _reading_type(meter, c, BULK_QUANTITY, 0), now,
    )  # fmt: skip
    mr = f"UsagePoint/{meter.meter_id}/MeterReading/{key}"
    regs = registers(store, meter.meter_id, req.start, req.end)
    if c == 0:
        counts.registers += len(regs)
    body = "".join(_reading(m.day, 0, m.values[c] * factor, False) for m in regs)
    srcs = "".join(
        f'<ami:source start="{m.day}" count="1">{m.source.name.lower()}</ami:source>' for m in regs
    )
    yield _entry(
        f"{mr}/IntervalBlock/{req.start}",
        f"{name} midnight registers",
        f"<espi:IntervalBlock><espi:interval><espi:duration>{req.end - req.start}"
        f"</espi:duration><espi:start>{req.start}</espi:start></espi:interval>{body}"
        "</espi:IntervalBlock>",
        now,
        ("up", f"{mr}/IntervalBlock"),
        extra=f'<ami:sources xmlns:ami="{AMI}">{srcs}</ami:sources>',
    )
