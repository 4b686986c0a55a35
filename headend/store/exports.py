"""Exports in the store (D11, D13): which meters an export names, routine export
schedules and their runs (schema v9).

A meter selection is text, so a schedule can keep it: ``all``, ``group:N`` (a
read group) or ids ``1,2,10-20``. `meter_ids` pages through it (a short read
transaction per page), so a selection of a million meters is never a list.

``export_run`` has one row per schedule and period. The worker whose INSERT
creates it runs the export (``running``); the outcome is ``done`` (with size,
row count, target) or ``failed`` (error, next attempt time). A failed run, or
one left ``running`` by a worker that died, is taken back by a conditional
UPDATE, so one worker retries it. An ad-hoc run (`queue`, priority `AD_HOC`) waits
``queued`` until a worker has no routine export to run (D13).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from headend.errors import InvalidData
from headend.store.db import Db, Row, opt
from headend.store.jobs import AD_HOC, ROUTINE

PAGE = 1000
#: SQLite page cache of an export's connection: an export reads each page once, so the
#: store's usual 64 MB would only make its memory grow with the data it reads.
STREAM_CACHE_KB = 2048


def for_streaming(db: Db, cache_kb: int = STREAM_CACHE_KB) -> None:
    """Set a connection that runs exports (its own: CLI, export thread) to stream."""
    if db.dialect == "sqlite":
        db.execute(f"PRAGMA cache_size=-{int(cache_kb)}")


@dataclass(frozen=True)
class Selection:
    """A set of meters: every one, a read group, or ids and id ranges."""

    text: str

    def __post_init__(self) -> None:
        self.parts()  # refuse a bad selection when it is made

    def parts(self) -> tuple[str, int | None, list[tuple[int, int]]]:
        """(kind, group, id ranges inclusive); kind is all, group or ids."""
        t = self.text.strip().lower()
        if t == "all":
            return "all", None, []
        if t.startswith("group:"):
            g = t.removeprefix("group:")
            if not g.isdigit():
                raise InvalidData(f"meters {self.text!r}: expected group:N (a read group number)")
            return "group", int(g), []
        ranges: list[tuple[int, int]] = []
        for item in t.split(","):
            a, _, b = item.strip().partition("-")
            if not a.isdigit() or (b and not b.isdigit()):
                raise InvalidData(
                    f"meters {self.text!r}: expected all, group:N or ids like 1,2,10-20"
                )
            lo, hi = int(a), int(b or a)
            if hi < lo:
                raise InvalidData(f"meters {self.text!r}: range {item} runs backwards")
            ranges.append((lo, hi))
        return "ids", None, ranges


def _page(db: Db, sel: Selection, after: int) -> list[int]:
    kind, grp, ranges = sel.parts()
    if kind == "group":
        sql = "SELECT meter_id FROM group_member WHERE grp = ? AND meter_id > ?"
        params: tuple[int, ...] = (grp or 0, after)
    else:
        sql, params = "SELECT meter_id FROM meter WHERE meter_id > ?", (after,)
        if kind == "ids":
            sql += " AND (" + " OR ".join("meter_id BETWEEN ? AND ?" for _ in ranges) + ")"
            params += tuple(x for r in ranges for x in r)
    with db.transaction(write=False):
        rows = db.query(sql + f" ORDER BY meter_id LIMIT {PAGE}", params)
    return [int(r[0]) for r in rows]


def meter_ids(db: Db, sel: Selection) -> Iterator[int]:
    """The selection's registered meters, ascending, a page at a time."""
    after = -1
    while True:
        page = _page(db, sel, after)
        yield from page
        if len(page) < PAGE:
            return
        after = page[-1]


def count(db: Db, sel: Selection) -> int:
    """How many registered meters the selection names."""
    return sum(1 for _ in meter_ids(db, sel))


def missing_ids(db: Db, sel: Selection) -> list[int]:
    """Ids named one by one (not ranges) that are not registered."""
    kind, _, ranges = sel.parts()
    singles = [lo for lo, hi in ranges if lo == hi]
    if kind != "ids" or not singles:
        return []
    known = set(meter_ids(db, sel))
    return [m for m in singles if m not in known]


# -- routine exports ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportSchedule:
    """A routine export: which meters, what, format, zone, when, for how many days, where."""

    name: str
    meters: str
    what: str  # comma-separated of intervals, registers, events
    fmt: str
    tz: str
    at: str  # HH:MM local (tz)
    every_days: int
    days: int  # the export covers the ``days`` local days before the run's day
    destination: str  # a directory, or an http(s):// URL that receives a POST
    enabled: bool = True


@dataclass(frozen=True)
class ExportRun:
    """One run of a schedule; ``period`` is the local-day period (routine) or the
    request's ms (ad hoc)."""

    name: str
    period: int
    priority: int
    start: int
    end: int
    state: str  # queued, running, done, failed
    worker: str | None
    attempts: int
    started_ms: int
    next_ms: int | None
    done_ms: int | None
    size: int | None
    rows: int | None
    target: str | None
    error: str | None


_SCHED = "name, meters, what, fmt, tz, at_hhmm, every_days, days, destination, enabled"
_RUN = (
    "name, period, priority, start_s, end_s, state, worker, attempts, started_ms, next_ms, "
    "done_ms, bytes, rows_n, target, error"
)


def _s(v: object) -> str | None:
    return None if v is None else str(v)


def _run(r: Row) -> ExportRun:
    return ExportRun(
        str(r[0]), int(r[1]), int(r[2]), int(r[3]), int(r[4]), str(r[5]), _s(r[6]), int(r[7]),
        int(r[8]), opt(r[9]), opt(r[10]), opt(r[11]), opt(r[12]), _s(r[13]), _s(r[14]),
    )  # fmt: skip


class Exports:
    """export_schedule and export_run over one `Db`."""

    def __init__(self, db: Db) -> None:
        self.db = db

    def put(self, s: ExportSchedule, now_ms: int) -> None:
        """Create or replace a schedule (its runs are kept)."""
        with self.db.transaction():
            self.db.execute(
                f"INSERT INTO export_schedule ({_SCHED}, created_ms) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
                "meters = excluded.meters, what = excluded.what, fmt = excluded.fmt, "
                "tz = excluded.tz, at_hhmm = excluded.at_hhmm, "
                "every_days = excluded.every_days, days = excluded.days, "
                "destination = excluded.destination, enabled = excluded.enabled",
                (s.name, s.meters, s.what, s.fmt, s.tz, s.at, s.every_days, s.days,
                 s.destination, int(s.enabled), now_ms),
            )  # fmt: skip

    def remove(self, name: str) -> bool:
        with self.db.transaction():
            self.db.execute("DELETE FROM export_run WHERE name = ?", (name,))
            return self.db.execute("DELETE FROM export_schedule WHERE name = ?", (name,)) > 0

    def schedules(self, enabled_only: bool = False) -> list[ExportSchedule]:
        where = " WHERE enabled = 1" if enabled_only else ""
        with self.db.transaction(write=False):
            rows = self.db.query(f"SELECT {_SCHED} FROM export_schedule{where} ORDER BY name")
        return [
            ExportSchedule(
                str(r[0]),
                str(r[1]),
                str(r[2]),
                str(r[3]),
                str(r[4]),
                str(r[5]),
                int(r[6]),
                int(r[7]),
                str(r[8]),
                bool(r[9]),
            )  # fmt: skip
            for r in rows
        ]

    def claim(self, name: str, period: int, start: int, end: int, worker: str, now_ms: int) -> bool:
        """True if this worker runs ``name`` for ``period`` (nobody had it yet)."""
        with self.db.transaction():
            rows = self.db.query(
                f"INSERT INTO export_run ({_RUN}) "
                "VALUES (?, ?, ?, ?, ?, 'running', ?, 1, ?, NULL, NULL, NULL, NULL, NULL, NULL) "
                "ON CONFLICT (name, period) DO NOTHING RETURNING period",
                (name, period, ROUTINE, start, end, worker, now_ms),
            )
        return bool(rows)

    def queue(self, name: str, start: int, end: int, now_ms: int) -> int:
        """Queue an ad-hoc run of schedule ``name`` for [start, end); its period (the
        request's ms, made unique)."""
        with self.db.transaction():
            if not self.db.query("SELECT 1 FROM export_schedule WHERE name = ?", (name,)):
                raise InvalidData(f"no routine export named {name!r}")
            last = self.db.query(
                "SELECT MAX(period) FROM export_run WHERE name = ? AND priority = ?",
                (name, AD_HOC),
            )[0][0]
            period = max(now_ms, int(last or 0) + 1)
            self.db.execute(
                f"INSERT INTO export_run ({_RUN}) "
                "VALUES (?, ?, ?, ?, ?, 'queued', NULL, 0, ?, NULL, NULL, NULL, NULL, NULL, NULL)",
                (name, period, AD_HOC, start, end, now_ms),
            )
        return period

    def retry_due(self, now_ms: int, max_attempts: int, stale_ms: int) -> list[ExportRun]:
        """Runs to take back, routine first: failed ones whose next attempt is due and that
        have attempts left, running ones not finished ``stale_ms`` after they started
        (their worker died), queued ad-hoc ones."""
        with self.db.transaction(write=False):
            rows = self.db.query(
                f"SELECT {_RUN} FROM export_run WHERE (state = 'failed' AND next_ms <= ? "
                "AND attempts < ?) OR (state = 'running' AND started_ms <= ?) "
                "OR state = 'queued' ORDER BY priority, started_ms",
                (now_ms, max_attempts, now_ms - stale_ms),
            )
        return [_run(r) for r in rows]

    def take_back(self, run: ExportRun, worker: str, now_ms: int) -> bool:
        """Claim a run found by `retry_due` for an attempt (one worker wins)."""
        with self.db.transaction():
            n = self.db.execute(
                "UPDATE export_run SET state = 'running', worker = ?, attempts = attempts + 1, "
                "started_ms = ?, next_ms = NULL WHERE name = ? AND period = ? "
                "AND state = ? AND attempts = ?",
                (worker, now_ms, run.name, run.period, run.state, run.attempts),
            )
        return n == 1

    def done(self, name: str, period: int, now_ms: int, size: int, rows: int, target: str) -> None:
        with self.db.transaction():
            self.db.execute(
                "UPDATE export_run SET state = 'done', done_ms = ?, bytes = ?, rows_n = ?, "
                "target = ?, error = NULL WHERE name = ? AND period = ?",
                (now_ms, size, rows, target, name, period),
            )

    def failed(self, name: str, period: int, now_ms: int, next_ms: int, error: str) -> None:
        with self.db.transaction():
            self.db.execute(
                "UPDATE export_run SET state = 'failed', done_ms = ?, next_ms = ?, error = ? "
                "WHERE name = ? AND period = ?",
                (now_ms, next_ms, error, name, period),
            )

    def runs(self, name: str | None = None, limit: int = 100) -> list[ExportRun]:
        """Runs, newest first (of one schedule, or all)."""
        where, params = (" WHERE name = ?", (name,)) if name else ("", ())
        with self.db.transaction(write=False):
            rows = self.db.query(
                f"SELECT {_RUN} FROM export_run{where} ORDER BY started_ms DESC, name "
                f"LIMIT {int(limit)}",
                params,
            )
        return [_run(r) for r in rows]
