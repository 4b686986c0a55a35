"""When scheduled reads arrive (H03): the first scheduled read of each meter's local day.

Table ``read_arrival`` (schema v7). ``day`` counts days since 1970-01-01 in the
meter's local standard time (``utc_offset_min``), the frame of its read
offset and its read group's window, so ``at_s`` minus the day's local
midnight is directly comparable with the group's bounds.
"""

from __future__ import annotations

from collections.abc import Sequence

from headend.store.base import DAY_S
from headend.store.db import Db, chunks


def local_day(at_s: int, utc_offset_min: int) -> tuple[int, int]:
    """(local day number, seconds after local standard midnight) of a UTC instant."""
    local = at_s + utc_offset_min * 60
    return local // DAY_S, local - local // DAY_S * DAY_S


class Arrivals:
    """The read_arrival table over one `Db`."""

    def __init__(self, db: Db) -> None:
        self.db = db

    def record(self, meter_id: int, utc_offset_min: int, at_s: int) -> None:
        """A scheduled read arrived at ``at_s``; only the day's first is kept."""
        self.record_many([(meter_id, utc_offset_min, at_s)])

    def record_many(self, reads: Sequence[tuple[int, int, int]]) -> None:
        """(meter, utc_offset_min, at_s) of scheduled reads, in one statement (a batch of
        uplinks'); of each meter's local day only the first is kept."""
        rows = [(m, local_day(at, off)[0], at) for m, off, at in reads]
        db = self.db
        with db.transaction():
            for chunk in chunks(rows, db.chunk_rows):
                source, params = db.rows_source(("bigint", "bigint", "bigint"), chunk)
                db.execute(
                    f"INSERT INTO read_arrival (meter_id, day, at_s) {source} "
                    "ON CONFLICT (meter_id, day) DO NOTHING",
                    params,
                )

    def time_of_day(self, first_day: int, last_day: int) -> dict[int, dict[int, int]]:
        """meter -> local day -> arrival (s after local midnight), days in [first, last]."""
        out: dict[int, dict[int, int]] = {}
        with self.db.transaction(write=False):
            rows = self.db.query(
                "SELECT a.meter_id, a.day, a.at_s + m.utc_offset_min * 60 - a.day * 86400 "
                "FROM read_arrival a JOIN meter m ON m.meter_id = a.meter_id "
                "WHERE a.day >= ? AND a.day <= ?",
                (first_day, last_day),
            )
        for mid, day, tod in rows:
            out.setdefault(int(mid), {})[int(day)] = int(tod)
        return out
