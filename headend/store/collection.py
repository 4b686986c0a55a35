"""Collection progress of every meter at once (D10 overview): per read group, the meters
and those whose collection day in a span is complete, in two queries whatever the
fleet's size.

A meter's collection day is its local-standard day (``utc_offset_min``) whose middle
falls in the span, the day the recovery reports label with the span's date (a meter
on another offset than the report's time zone has a day of its own "yesterday", not
two days overlapping it, the second still running); it is complete when it has one
datum per interval of the meter's interval now, as `Readings.coverage` counts.

Day rows lie on the meter's day phase; where a row starts on a day (whole-hour
offsets: every row) its ``n_present`` is the day's count, so one aggregate query
settles those meters. Only the rare meter with a row off its days (a half-hour
offset, an offset changed after registration) has its rows read, by the second
query, and counted slot by slot as `Readings.coverage` does.
"""

from __future__ import annotations

from dataclasses import dataclass

from headend.store.base import DAY_S
from headend.store.db import Db, Row
from headend.store.readings import windows

# each meter's collection day: its first local-standard day whose middle is at or after
# the span's start (one for a span of a day)
_METERS = """
SELECT meter_id, read_group, interval_s, utc_offset_min * 60 AS off,
       (CAST(? AS BIGINT) - 43200 + utc_offset_min * 60 + 86399) / 86400 * 86400
           - utc_offset_min * 60 AS first
FROM meter
"""
# a meter's rows overlapping its day; the constant bounds (every meter's rows lie in
# them) let PostgreSQL prune the months of interval_day
_ROWS = """
i.meter_id = m.meter_id AND i.day > m.first - 86400 AND i.day < m.first + 86400
AND i.day > CAST(? AS BIGINT) AND i.day < CAST(? AS BIGINT)
"""
# a row off the meter's days (no '%': psycopg takes it for a placeholder; day + off > 0)
_ODD = "(i.day + m.off) / 86400 * 86400 <> i.day + m.off"

_BY_GROUP = f"""
SELECT read_group, COUNT(*), SUM(CASE WHEN odd = 0 AND good = 1 THEN 1 ELSE 0 END)
FROM (SELECT m.meter_id, m.read_group, m.first,
             COUNT(CASE WHEN NOT {_ODD} AND i.n_present = 86400 / m.interval_s THEN 1 END)
                 AS good,
             COUNT(CASE WHEN {_ODD} THEN 1 END) AS odd
      FROM ({_METERS}) m LEFT JOIN interval_day i ON {_ROWS}
      GROUP BY m.meter_id, m.read_group, m.first) t
GROUP BY read_group
"""

_ODD_ROWS = f"""
SELECT m.meter_id, m.read_group, m.interval_s, m.first, i.day, i.interval_s, i.srcs
FROM ({_METERS}) m JOIN interval_day i ON {_ROWS}
WHERE EXISTS (SELECT 1 FROM interval_day o WHERE o.meter_id = m.meter_id
              AND o.day > m.first - 86400 AND o.day < m.first + 86400
              AND (o.day + m.off) / 86400 * 86400 <> o.day + m.off)
ORDER BY m.meter_id, i.day
"""


@dataclass(frozen=True)
class GroupCollection:
    """One read group (None: unscheduled) with its meters and the collected ones."""

    read_group: str | None
    meters: int
    collected: int


def by_group(db: Db, start: int) -> list[GroupCollection]:
    """Per read group: meters, and meters whose collection day labelled with the day
    that begins at ``start`` (its middle in [start, start + a day)) is complete (see the
    module doc), in read group order (unscheduled first)."""
    # every meter's day lies in (start - 12 h, start + 36 h), its rows within a day of it
    bounds = (start - 3 * DAY_S, start + 3 * DAY_S)
    with db.transaction(write=False):
        groups = db.query(_BY_GROUP, (start, *bounds))
        odd = db.query(_ODD_ROWS, (start, *bounds))
    done: dict[str | None, int] = {}
    for meter_rows in _per_meter(odd):
        _, grp, step, first = meter_rows[0][:4]
        days = [(int(r[4]), int(r[5]), bytes(r[6])) for r in meter_rows]
        if all(c.complete for c in windows(days, int(first), int(first) + DAY_S, int(step))):
            done[grp] = done.get(grp, 0) + 1
    out = [
        GroupCollection(g, int(n), int(c or 0) + done.get(g, 0))
        for g, n, c in groups  # fmt: skip
    ]
    return sorted(out, key=lambda g: (g.read_group is not None, g.read_group or ""))


def _per_meter(rows: list[Row]) -> list[list[Row]]:
    """Rows ordered by meter, in a list per meter."""
    out: list[list[Row]] = []
    for r in rows:
        if out and out[-1][0][0] == r[0]:
            out[-1].append(r)
        else:
            out.append([r])
    return out
