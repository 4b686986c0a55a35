"""Missing meter-days and the daily check (D02-D05, D08): tables ``missing_day``, ``daily_check``.

A ``missing_day`` row is one (meter, day) that the daily check found missing or
incomplete, with what it expected and found, and its way back (lifecycle
`MISSING`: missing -> recovering -> recovered | partial | unsuccessful). Rows are
never deleted: the table is the history of every meter that ever had missing
data (D05). A ``daily_check`` row per collection day holds the totals of its
check; the check is claimed as a timed run (`headend.store.timed`).

The scan is set-based: one aggregate query over every meter's window of days
(``COUNT``/``SUM(n_present)`` per meter) finds the incomplete meters, and only
their day rows are read. Every method is one transaction (re-entrant).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from headend.errors import IllegalTransition
from headend.store.base import DAY_S, Source
from headend.store.db import Db, Row, chunks, marks, opt
from headend.store.lifecycles import MISSING, MissingEvent, MissingState

PREV_DAY = "prev_day"
OLDER = "older"
_COLS = (
    "meter_id, day, expected, present, found_ms, kind, state, attempts, failures, job_id, "
    "next_ms, resolved_ms, pathway, reopened_ms"
)


@dataclass(frozen=True, slots=True)
class MissingDay:
    """One missing or incomplete meter-day and how far its recovery got.

    ``day``: start of the meter's day (UTC s); ``expected``/``present``: slots of the
    day, and those held when it was found; ``kind``: `PREV_DAY` or `OLDER`;
    ``attempts``: recovery reads made; ``failures``: those that failed;
    ``pathway``: how it came back (attempt, transport, job) or None; ``reopened_ms``:
    when it was given up and then re-opened because its meter was heard again (None:
    never), its ``attempts`` counted afresh from then.
    """

    meter_id: int
    day: int
    expected: int
    present: int
    found_ms: int
    kind: str
    state: MissingState
    attempts: int
    failures: int
    job_id: int | None
    next_ms: int
    resolved_ms: int | None
    pathway: str | None
    reopened_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Found:
    """A meter-day the scan found missing or incomplete (not yet a row)."""

    meter_id: int
    day: int
    expected: int
    present: int
    kind: str


@dataclass(frozen=True, slots=True)
class Closed:
    """A recovering day whose read (job) has ended, with what the store holds now.

    ``recovered_slots``: slots of the day whose datum came from a recovery read.
    """

    row: MissingDay
    job_state: str
    held: int
    recovered_slots: int


@dataclass(frozen=True, slots=True)
class Check:
    """A daily check: collection day (UTC s of its local midnight), who ran it, totals."""

    day: int
    started_ms: int
    finished_ms: int | None
    worker: str
    meters: int
    missing_meters: int
    missing_days: int


def _row(r: Row) -> MissingDay:
    return MissingDay(
        int(r[0]),
        int(r[1]),
        int(r[2]),
        int(r[3]),
        int(r[4]),
        r[5],
        MissingState(r[6]),
        int(r[7]),
        int(r[8]),
        opt(r[9]),
        int(r[10]),
        opt(r[11]),
        r[12],
        opt(r[13]),
    )


# The meters' windows of days to verify: [lo, hi) where hi is the start of the meter's
# current day (its day phase) and lo the later of hi - depth days and its first full day
# after registration. One row per meter that misses a day row or a slot in it. The
# constant bounds on i.day (every window lies in them) let PostgreSQL prune the months.
_SCAN = """
WITH w AS (
    SELECT meter_id, interval_s, hi,
           CASE WHEN reg > hi - CAST(? AS BIGINT) THEN reg
                ELSE hi - CAST(? AS BIGINT) END AS lo
    FROM (SELECT meter_id, interval_s,
                 (CAST(? AS BIGINT) - day_phase_s) / 86400 * 86400 + day_phase_s AS hi,
                 (registered_at - day_phase_s + 86399) / 86400 * 86400 + day_phase_s AS reg
          FROM meter) t
)
SELECT w.meter_id, w.lo, w.hi, w.interval_s, 1 AS short
FROM w LEFT JOIN interval_day i ON i.meter_id = w.meter_id AND i.day >= w.lo AND i.day < w.hi
    AND i.day >= CAST(? AS BIGINT) AND i.day <= CAST(? AS BIGINT)
WHERE w.lo < w.hi
GROUP BY w.meter_id, w.lo, w.hi, w.interval_s
HAVING COALESCE(SUM(i.n_present), 0) < (w.hi - w.lo) / w.interval_s
UNION ALL
SELECT COUNT(*), 0, 0, 0, 0 FROM w WHERE w.lo < w.hi
"""


class MissingDays:
    """The missing_day and daily_check tables over one `Db`."""

    def __init__(self, db: Db) -> None:
        self.db = db

    # -- the daily check ---------------------------------------------------------------------

    def record_check(
        self,
        day: int,
        worker: str,
        now_ms: int,
        meters: int,
        missing_meters: int,
        missing_days: int,
    ) -> None:
        """Record a finished check's totals (the meter-days found missing or incomplete,
        new or not). The run itself is claimed in ``timed_run`` (job ``daily_check``)."""
        with self.db.transaction():
            self.db.execute(
                "INSERT INTO daily_check (day, started_ms, finished_ms, worker, meters, "
                "missing_meters, missing_days) VALUES (?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (day) DO UPDATE SET finished_ms = excluded.finished_ms, "
                "worker = excluded.worker, meters = excluded.meters, "
                "missing_meters = excluded.missing_meters, missing_days = excluded.missing_days",
                (day, now_ms, now_ms, worker, meters, missing_meters, missing_days),
            )

    def checks(self, day: int | None = None) -> list[Check]:
        """Daily checks, oldest first (only ``day``'s if given)."""
        where, params = ("WHERE day = ?", [day]) if day is not None else ("", [])
        with self.db.transaction(write=False):
            rows = self.db.query(
                "SELECT day, started_ms, finished_ms, worker, meters, missing_meters, "
                f"missing_days FROM daily_check {where} ORDER BY day",
                params,
            )
        return [
            Check(int(a), int(b), opt(c), d, int(e), int(f), int(g)) for a, b, c, d, e, f, g in rows
        ]

    def scan(self, now_s: int, depth_days: int) -> tuple[int, list[Found]]:
        """Every registered meter's days in its window (up to ``depth_days`` before its
        current day, from its first full day after registration): (meters with at least
        one day to verify, the days missing or incomplete), by meter and day. The
        meter's previous day is `PREV_DAY`, the ones before it `OLDER`."""
        depth = depth_days * DAY_S
        found: list[Found] = []
        with self.db.transaction(write=False):
            rows = self.db.query(_SCAN, (depth, depth, now_s, now_s - depth - DAY_S, now_s))
            short = sorted((r for r in rows if int(r[4])), key=lambda r: int(r[0]))
            meters = sum(int(r[0]) for r in rows if not int(r[4]))
            for chunk in chunks(short, self.db.chunk_rows):
                held: dict[tuple[int, int], int] = {}
                ids = [int(r[0]) for r in chunk]
                lo = min(int(r[1]) for r in chunk)
                hi = max(int(r[2]) for r in chunk)  # bounded: months outside are pruned
                for mid, day, n in self.db.query(
                    "SELECT meter_id, day, n_present FROM interval_day "
                    f"WHERE meter_id IN ({marks(len(ids))}) AND day >= ? AND day < ?",
                    [*ids, lo, hi],
                ):
                    held[int(mid), int(day)] = int(n)
                for mid, mlo, mhi, step, _ in chunk:
                    mid, mlo, mhi, expected = int(mid), int(mlo), int(mhi), DAY_S // int(step)
                    for day in range(mlo, mhi, DAY_S):
                        n = held.get((mid, day), 0)
                        if n < expected:
                            kind = PREV_DAY if day == mhi - DAY_S else OLDER
                            found.append(Found(mid, day, expected, n, kind))
        return meters, found

    def add(self, found: Sequence[Found], now_ms: int) -> list[Found]:
        """Insert the days not known yet (a day already found keeps its row); returns them."""
        new: list[Found] = []
        with self.db.transaction():
            for chunk in chunks(found, self.db.chunk_rows):
                one = "(?, ?, ?, ?, ?, ?, ?, 0, 0, NULL, ?, NULL, NULL, NULL)"
                params: list[Any] = []
                for f in chunk:
                    params += [f.meter_id, f.day, f.expected, f.present, now_ms, f.kind]
                    params += [MISSING.start.value, now_ms]
                got = self.db.query(
                    f"INSERT INTO missing_day ({_COLS}) VALUES "
                    + ", ".join([one] * len(chunk))
                    + " ON CONFLICT (meter_id, day) DO NOTHING RETURNING meter_id, day",
                    params,
                )
                keys = {(int(m), int(d)) for m, d in got}
                new += [f for f in chunk if (f.meter_id, f.day) in keys]
        return new

    def reopen(self, found: Sequence[Found], now_ms: int) -> list[MissingDay]:
        """Give the ``found`` days that were given up (unsuccessful, never re-opened) a
        second round when their meter has been heard (any frame, `Registry.link_seen`)
        since the last attempt failed: it was unreachable then and is back, and the days
        are still missing and in its memory (the scan's window). Their attempts count
        afresh; returns them as they were before."""
        want = {(f.meter_id, f.day) for f in found}
        if not want:
            return []
        ev = MissingEvent.REOPEN
        cols = ", ".join(f"m.{c.strip()}" for c in _COLS.split(","))
        out: list[MissingDay] = []
        with self.db.transaction():
            rows = self.db.query(
                f"SELECT {cols} FROM missing_day m WHERE m.state = ? AND m.reopened_ms IS NULL "
                "AND m.day >= ? AND EXISTS (SELECT 1 FROM meter_link l "
                "WHERE l.meter_id = m.meter_id AND l.last_seen_ms > m.resolved_ms) "
                "ORDER BY m.meter_id, m.day",
                (MissingState.UNSUCCESSFUL.value, min(d for _, d in want)),
            )
            for d in (_row(r) for r in rows):
                if (d.meter_id, d.day) not in want:
                    continue  # complete by now (the sweep settles it) or no longer held
                try:
                    self.fire(
                        d.meter_id,
                        d.day,
                        ev,
                        ", attempts = 0, next_ms = ?, resolved_ms = NULL, reopened_ms = ?",
                        (now_ms, now_ms),
                    )
                except IllegalTransition:
                    continue  # settled meanwhile by another worker
                out.append(d)
        return out

    # -- recovery ----------------------------------------------------------------------------

    def due(self, now_ms: int, max_attempts: int, limit: int = 10_000) -> list[MissingDay]:
        """Days waiting for a recovery read now, by meter and day."""
        with self.db.transaction(write=False):
            rows = self.db.query(
                f"SELECT {_COLS} FROM missing_day WHERE {MISSING.sql_where(MissingEvent.REQUEST)} "
                "AND next_ms <= ? AND attempts < ? ORDER BY meter_id, day LIMIT ?",
                (now_ms, max_attempts, limit),
            )
        return [_row(r) for r in rows]

    def request(self, meter_id: int, days: Sequence[int], now_ms: int, max_attempts: int) -> None:
        """One more attempt for ``days`` (they go recovering). Raises IllegalTransition
        unless every one of them was still due (another worker took them): roll back."""
        ev = MissingEvent.REQUEST
        with self.db.transaction():
            n = self.db.execute(
                f"UPDATE missing_day SET {MISSING.sql_set(ev)}, attempts = attempts + 1 "
                f"WHERE meter_id = ? AND day IN ({marks(len(days))}) AND {MISSING.sql_where(ev)} "
                "AND next_ms <= ? AND attempts < ?",
                [meter_id, *days, now_ms, max_attempts],
            )
            if n != len(days):
                raise IllegalTransition(f"meter {meter_id}: days {list(days)} no longer due")

    def set_job(self, meter_id: int, days: Sequence[int], job_id: int) -> None:
        """The read that recovers ``days``."""
        with self.db.transaction():
            self.db.execute(
                f"UPDATE missing_day SET job_id = ? WHERE meter_id = ? "
                f"AND day IN ({marks(len(days))})",
                [job_id, meter_id, *days],
            )

    def closed(self, limit: int = 10_000) -> list[Closed]:
        """Recovering days whose job is done or failed, with the store's slots now."""
        cols = ", ".join(f"m.{c.strip()}" for c in _COLS.split(","))
        with self.db.transaction(write=False):
            rows = self.db.query(
                f"SELECT {cols}, j.state, i.n_present, i.srcs FROM missing_day m "
                "JOIN job j ON j.job_id = m.job_id "
                "LEFT JOIN interval_day i ON i.meter_id = m.meter_id AND i.day = m.day "
                "WHERE m.state = ? AND j.state IN ('done', 'failed') "
                "ORDER BY m.job_id, m.day LIMIT ?",
                (MissingState.RECOVERING.value, limit),
            )
        rec = int(Source.RECOVERY)
        return [
            Closed(_row(r[:14]), r[14], int(r[15] or 0), bytes(r[16] or b"").count(rec))
            for r in rows
        ]

    def arrived(self, found_since_ms: int, limit: int = 10_000) -> list[tuple[MissingDay, int]]:
        """Days not being read (missing, partial, unsuccessful), found since ``found_since_ms``,
        that are complete now, each with its slots that came from a read (recovery or on
        demand: a late answer)."""
        cols = ", ".join(f"m.{c.strip()}" for c in _COLS.split(","))
        states = (MissingState.MISSING, MissingState.PARTIAL, MissingState.UNSUCCESSFUL)
        with self.db.transaction(write=False):
            rows = self.db.query(
                f"SELECT {cols}, i.srcs FROM missing_day m JOIN interval_day i "
                "ON i.meter_id = m.meter_id AND i.day = m.day "
                f"WHERE m.state IN ({marks(len(states))}) AND m.found_ms >= ? "
                "AND i.n_present >= m.expected ORDER BY m.meter_id, m.day LIMIT ?",
                [*(s.value for s in states), found_since_ms, limit],
            )
        read = (int(Source.RECOVERY), int(Source.ON_DEMAND))
        return [(_row(r[:14]), sum(bytes(r[14]).count(x) for x in read)) for r in rows]

    def fire(
        self,
        meter_id: int,
        day: int,
        event: MissingEvent,
        sets: str = "",
        params: Iterable[Any] = (),
    ) -> bool:
        """Apply ``event`` to one day (`Lifecycle.fire`): IllegalTransition if its state moved."""
        return MISSING.fire(
            self.db,
            "missing_day",
            {"meter_id": meter_id, "day": day},
            event,
            f"meter {meter_id} day {day}",
            sets,
            tuple(params),
        )

    # -- reports -----------------------------------------------------------------------------

    def rows(
        self,
        states: Iterable[MissingState] = (),
        found_from_ms: int | None = None,
        found_to_ms: int | None = None,
    ) -> list[MissingDay]:
        """Rows by meter and day; optionally only some states, found in [from, to)."""
        where: list[str] = []
        params: list[Any] = []
        st = [s.value for s in states]
        if st:
            where.append(f"state IN ({marks(len(st))})")
            params += st
        if found_from_ms is not None:
            where.append("found_ms >= ?")
            params.append(found_from_ms)
        if found_to_ms is not None:
            where.append("found_ms < ?")
            params.append(found_to_ms)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        with self.db.transaction(write=False):
            rows = self.db.query(
                f"SELECT {_COLS} FROM missing_day {clause} ORDER BY meter_id, day", params
            )
        return [_row(r) for r in rows]

    def found_per_day(self, found_from_ms: int) -> dict[int, int]:
        """Meter-days found missing since ``found_from_ms``, counted per day (its start,
        UTC s): one grouped query on the found index, not a row per meter-day."""
        with self.db.transaction(write=False):
            rows = self.db.query(
                "SELECT day, COUNT(*) FROM missing_day WHERE found_ms >= ? GROUP BY day",
                (found_from_ms,),
            )
        return {int(d): int(n) for d, n in rows}

    def failed_reads(self) -> dict[int, int]:
        """Recovery reads that failed, per meter."""
        with self.db.transaction(write=False):
            rows = self.db.query(
                "SELECT meter_id, COUNT(*) FROM job WHERE requester = 'recovery' "
                "AND state = 'failed' GROUP BY meter_id"
            )
        return {int(m): int(n) for m, n in rows}

    def in_flight(self) -> int:
        """Jobs out now (any worker)."""
        with self.db.transaction(write=False):
            return int(self.db.query("SELECT COUNT(*) FROM job WHERE state = 'sent'")[0][0])
