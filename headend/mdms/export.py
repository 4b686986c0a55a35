"""Exports (D11, part): a meter's intervals for a period, in engineering units,
as CSV or JSON, with timestamps in the requester's IANA time zone.

Stored times are UTC; only the rendering converts (DST included: an autumn
night shows the repeated local hour twice, with different UTC offsets, and
never a doubled interval). Values are exact decimals (see `store.units`).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from headend.errors import InvalidData
from headend.store import Meter, SqlStore
from headend.store.base import DAY_S

FORMATS = ("csv", "json")


@dataclass(frozen=True, slots=True)
class Row:
    """One interval of every channel."""

    start: int
    interval_s: int
    flags: int
    source: str
    values: tuple[str, ...]


def column_names(meter: Meter) -> list[str]:
    """``active_import_Wh``, ... one per channel (index-suffixed if a kind repeats)."""
    names: list[str] = []
    for i, c in enumerate(meter.channels):
        name = f"{c.kind.name.lower()}_{c.unit.symbol}"
        names.append(name if name not in names else f"{name}_{i}")
    return names


def rows(
    store: SqlStore,
    meter_id: int,
    start: int,
    end: int,
    progress: Callable[[int, int], None] | None = None,
) -> Iterator[Row]:
    """Stored intervals starting in [start, end), a day at a time, ascending.

    ``progress(done_days, total_days)`` is called after each day.
    """
    if end <= start:
        raise InvalidData(f"export period: start {start} must be before end {end}")
    meter = store.get_meter(meter_id)
    scales = [meter.scale(c) for c in range(len(meter.channels))]
    total = -(-(end - start) // DAY_S)
    for n, day in enumerate(range(start, end, DAY_S)):
        hi = min(day + DAY_S, end)
        per_channel = [store.intervals(meter_id, c, day, hi) for c in range(len(scales))]
        for slot, first in enumerate(per_channel[0]):
            vals = tuple(
                str(scales[c].engineering(per_channel[c][slot].value)) for c in range(len(scales))
            )
            yield Row(first.start, meter.interval_s, first.flags, first.source.name.lower(), vals)
        if progress is not None:
            progress(n + 1, total)


def _local(t: int, tz: ZoneInfo) -> str:
    return datetime.fromtimestamp(t, tz).isoformat()


def render(meter: Meter, data: Iterator[Row], fmt: str, tz: ZoneInfo) -> str:
    """The rows as CSV (header + one line per interval) or JSON."""
    if fmt not in FORMATS:
        raise InvalidData(f"format: expected one of {FORMATS}, got {fmt!r}")
    names = column_names(meter)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["start", "end", *names, "flags", "source"])
        for r in data:
            w.writerow(
                [
                    _local(r.start, tz),
                    _local(r.start + r.interval_s, tz),
                    *r.values,
                    r.flags,
                    r.source,
                ]
            )
        return buf.getvalue()
    doc = {
        "meter": meter.meter_id,
        "time_zone": tz.key,
        "interval_s": meter.interval_s,
        "channels": names,
        "intervals": [
            {
                "start": _local(r.start, tz),
                "end": _local(r.start + r.interval_s, tz),
                "values": dict(zip(names, r.values, strict=True)),
                "flags": r.flags,
                "source": r.source,
            }
            for r in data
        ],
    }
    return json.dumps(doc, indent=1) + "\n"
