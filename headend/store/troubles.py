"""Trouble reports (D06): the missing-day masks of the population, and the reports.

Table ``trouble`` (schema v7), one row per report, lifecycle `TROUBLE`; a
partial unique index lets a meter hold one open report only. `candidates`
is one set-based query over ``meter`` x ``interval_day``: per meter a bit mask
of the complete days among the last N local days (bit 0 = yesterday), only for
meters with at least 3 days not complete and no open report, so 100,000 meters
cost one scan of their recent day rows, not a query each.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from headend.store.base import DAY_S
from headend.store.db import Db, Row, chunks, marks, opt
from headend.store.lifecycles import TROUBLE, TroubleEvent, TroubleState


@dataclass(frozen=True, slots=True)
class DayMask:
    """A meter's recent days: ``today`` is the start (UTC s) of its current day
    row; bit b of ``complete`` is the day starting ``today - (b + 1) * DAY_S``."""

    meter_id: int
    today: int
    registered_at: int
    utc_offset_min: int
    complete: int


@dataclass(frozen=True, slots=True)
class Trouble:
    """A trouble report row."""

    trouble_id: int
    meter_id: int
    opened_ms: int
    reason: str
    days: tuple[str, ...]
    state: TroubleState
    closed_ms: int | None
    closed_why: str | None


_COLS = "trouble_id, meter_id, opened_ms, reason, days, state, closed_ms, closed_why"


def _trouble(r: Row) -> Trouble:
    return Trouble(
        int(r[0]),
        int(r[1]),
        int(r[2]),
        str(r[3]),
        tuple(d for d in str(r[4]).split(",") if d),
        TroubleState(r[5]),
        opt(r[6]),
        None if r[7] is None else str(r[7]),
    )


class Troubles:
    """The trouble table, and the day-row query it is opened from, over one `Db`."""

    def __init__(self, db: Db) -> None:
        self.db = db

    def candidates(self, now_s: int, window_days: int) -> list[DayMask]:
        """Meters without an open report that have >= 3 of the last ``window_days``
        days (yesterday back) not complete (no row, or fewer slots than a day has)."""
        # today = the start of the meter's current day row (phase + whole days);
        # `%` is avoided: the PostgreSQL driver reserves it.
        sql = (
            "WITH m AS (SELECT meter_id, registered_at, utc_offset_min, "
            "86400 / interval_s AS slots, "
            "day_phase_s + ((? - day_phase_s) / 86400) * 86400 AS today FROM meter "
            "WHERE NOT EXISTS (SELECT 1 FROM trouble t WHERE t.meter_id = meter.meter_id "
            f"AND t.{TROUBLE.sql_where(TroubleEvent.CLOSE)})) "
            "SELECT m.meter_id, m.today, m.registered_at, m.utc_offset_min, "
            "COALESCE(SUM(CASE WHEN i.n_present >= m.slots THEN CAST(1 AS BIGINT) << "
            "CAST((m.today - i.day) / 86400 - 1 AS INTEGER) ELSE 0 END), 0) "
            "FROM m LEFT JOIN interval_day i ON i.meter_id = m.meter_id "
            "AND i.day >= m.today - ? AND i.day < m.today "
            "GROUP BY m.meter_id, m.today, m.registered_at, m.utc_offset_min "
            "HAVING COUNT(CASE WHEN i.n_present >= m.slots THEN 1 END) <= ? "
            "ORDER BY m.meter_id"
        )
        with self.db.transaction(write=False):
            rows = self.db.query(sql, (now_s, window_days * DAY_S, window_days - 3))
        return [DayMask(int(a), int(b), int(c), int(d), int(e)) for a, b, c, d, e in rows]

    def last_closed(self, meter_ids: Iterable[int]) -> dict[int, int]:
        """Meter -> when its latest closed report closed (ms), for meters that had one."""
        out: dict[int, int] = {}
        ids = sorted(meter_ids)
        with self.db.transaction(write=False):
            for chunk in chunks(ids, self.db.chunk_rows):
                for mid, ms in self.db.query(
                    "SELECT meter_id, MAX(closed_ms) FROM trouble "
                    f"WHERE state = ? AND meter_id IN ({marks(len(chunk))}) GROUP BY meter_id",
                    (TroubleState.CLOSED.value, *chunk),
                ):
                    out[int(mid)] = int(ms)
        return out

    def open(self, meter_id: int, now_ms: int, reason: str, days: Iterable[str]) -> int | None:
        """Open a report; None if the meter has an open one already (never a second)."""
        with self.db.transaction():
            rows = self.db.query(
                "INSERT INTO trouble (meter_id, opened_ms, reason, days, state) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING RETURNING trouble_id",
                (meter_id, now_ms, reason, ",".join(days), TROUBLE.start.value),
            )
        return int(rows[0][0]) if rows else None

    def closable(self) -> list[tuple[int, int, int]]:
        """(report, meter, day) of open reports whose meter sent a complete day
        (the earliest such day row, UTC s) after the report opened."""
        with self.db.transaction(write=False):
            rows = self.db.query(
                "SELECT t.trouble_id, t.meter_id, MIN(i.day) FROM trouble t "
                "JOIN meter m ON m.meter_id = t.meter_id "
                "JOIN interval_day i ON i.meter_id = t.meter_id "
                "AND i.n_present >= 86400 / m.interval_s AND i.updated_at * 1000 >= t.opened_ms "
                f"WHERE t.{TROUBLE.sql_where(TroubleEvent.CLOSE)} "
                "GROUP BY t.trouble_id, t.meter_id ORDER BY t.trouble_id"
            )
        return [(int(t), int(m), int(d)) for t, m, d in rows]

    def close(self, trouble_id: int, now_ms: int, why: str) -> None:
        """Close an open report. Raises IllegalTransition if it is closed already."""
        TROUBLE.fire(
            self.db,
            "trouble",
            {"trouble_id": trouble_id},
            TroubleEvent.CLOSE,
            f"trouble report {trouble_id}",
            ", closed_ms = ?, closed_why = ?",
            (now_ms, why),
        )

    def find(
        self,
        meter_id: int | None = None,
        state: TroubleState | None = None,
        open_at_ms: int | None = None,
    ) -> list[Trouble]:
        """Reports, oldest first; optionally one meter's, one state's, or only those
        still open at ``open_at_ms`` or after (open now, or closed since)."""
        where: list[str] = []
        params: list[object] = []
        if open_at_ms is not None:
            where.append("(state = ? OR closed_ms >= ?)")
            params += [TroubleState.OPEN.value, open_at_ms]
        if meter_id is not None:
            where.append("meter_id = ?")
            params.append(meter_id)
        if state is not None:
            where.append("state = ?")
            params.append(state.value)
        clause = ("WHERE " + " AND ".join(where)) if where else ""
        with self.db.transaction(write=False):
            rows = self.db.query(
                f"SELECT {_COLS} FROM trouble {clause} ORDER BY opened_ms, trouble_id", params
            )
        return [_trouble(r) for r in rows]
