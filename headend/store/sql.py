"""The SQL store shared by both backends, over a small `Db` adapter.

`Db` hides the driver: ``?`` placeholders, explicit transactions, error
translation to `StoreError`. `SqlStore` holds every query; the SQL is portable
between SQLite (>= 3.35: ``ON CONFLICT``, ``RETURNING``, row values) and
PostgreSQL, so both backends run the same code and pass the same tests.

Ingest of a batch, in one transaction:
1. look up the batch's meters; reject unknown meters and blocks whose channel
   count or interval length differs from the registration;
2. merge the batch's blocks into (meter, day) rows in memory (`days.py`);
3. insert the rows with ``ON CONFLICT DO NOTHING RETURNING`` (new days: done);
4. read the days that already existed (``FOR UPDATE`` on PostgreSQL), merge
   with the rule in `days.py`, and update only the rows that changed.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from typing import Any

from headend.errors import InvalidData, UnknownMeter
from headend.store.base import (
    DAY_S,
    BlockIngest,
    Channel,
    DayCoverage,
    EventRecord,
    IngestResult,
    Interval,
    Meter,
    MeterStore,
    MidnightRegister,
    Source,
    StoreStats,
)
from headend.store.days import DayRow, channel_values, day_phase, segments
from headend.store.units import ChannelKind, Unit

Row = tuple[Any, ...]
_SOURCES = {int(s): s for s in Source}


class Db(ABC):
    """A database connection as the store needs it (one per thread)."""

    dialect: str
    #: appended to the SELECT (table alias ``i``) that reads rows about to be updated
    for_update: str = ""
    #: rows per multi-row statement
    chunk_rows: int = 500

    def rows_source(
        self, types: Sequence[str], rows: Sequence[Sequence[Any]]
    ) -> tuple[str, list[Any]]:
        """SQL for a literal row set (after ``INSERT INTO t (...)`` or in a CTE) and its params.

        ``types`` are PostgreSQL type names of the columns. This default is a
        multi-row ``VALUES`` list with one parameter per value.
        """
        one = "(" + ", ".join("?" * len(types)) + ")"
        return "VALUES " + ", ".join([one] * len(rows)), [x for r in rows for x in r]

    @abstractmethod
    def transaction(self, write: bool = True) -> Any:
        """Context manager: one transaction (re-entrant: inner calls join the outer)."""

    @abstractmethod
    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement; returns the row count."""

    @abstractmethod
    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """Run one statement per parameter row."""

    @abstractmethod
    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """Run a query; returns all rows."""

    @abstractmethod
    def table_exists(self, name: str) -> bool:
        """True if the table exists (in the current schema)."""

    @abstractmethod
    def lock_schema(self) -> None:
        """Inside a write transaction: serialise schema changes between workers."""

    @abstractmethod
    def close(self) -> None:
        """Close the connection."""

    @abstractmethod
    def size_bytes(self) -> int:
        """Bytes the store's data take on disk (for figures, not exact accounting)."""


def _chunks(seq: Sequence[Any], n: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


class SqlStore:
    """`MeterStore` over a `Db`. Not thread-safe: one store per thread or task runner."""

    backend: str

    def __init__(self, db: Db, *, migrate: bool = True) -> None:
        from headend.store import migrations  # migrations imports Db from here

        self._db = db
        self.backend = db.dialect
        try:
            if migrate:
                migrations.migrate(db)
            else:
                migrations.check_version(db)
        except BaseException:
            db.close()
            raise

    # -- lifecycle ---------------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection."""
        self._db.close()

    def __enter__(self) -> SqlStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def db(self) -> Db:
        """The underlying connection adapter (for migrations, tools and benches)."""
        return self._db

    def schema_version(self) -> int:
        """The schema version of the open database."""
        from headend.store import migrations

        with self._db.transaction(write=False):
            return migrations.current_version(self._db)

    # -- meters ------------------------------------------------------------------------------

    def register_meter(self, meter: Meter) -> None:
        """Insert a meter, or replace its registration data (M17, re-registration)."""
        db = self._db
        with db.transaction():
            db.execute(
                "INSERT INTO meter (meter_id, fw_version, interval_s, capacity_days, "
                "utc_offset_min, meter_multiplier, n_channels, registered_at, read_group, "
                "transport, key_id, day_phase_s) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (meter_id) DO UPDATE SET fw_version = excluded.fw_version, "
                "interval_s = excluded.interval_s, capacity_days = excluded.capacity_days, "
                "utc_offset_min = excluded.utc_offset_min, "
                "meter_multiplier = excluded.meter_multiplier, "
                "n_channels = excluded.n_channels, registered_at = excluded.registered_at, "
                "read_group = excluded.read_group, transport = excluded.transport, "
                "key_id = excluded.key_id",
                (
                    meter.meter_id,
                    meter.fw_version,
                    meter.interval_s,
                    meter.capacity_days,
                    meter.utc_offset_min,
                    meter.meter_multiplier,
                    len(meter.channels),
                    meter.registered_at,
                    meter.read_group,
                    meter.transport,
                    meter.key_id,
                    day_phase(meter.utc_offset_min),
                ),
            )
            db.execute("DELETE FROM meter_channel WHERE meter_id = ?", (meter.meter_id,))
            db.executemany(
                "INSERT INTO meter_channel (meter_id, idx, kind, unit, multiplier, scaler) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (meter.meter_id, i, int(c.kind), int(c.unit), c.multiplier, c.scaler)
                    for i, c in enumerate(meter.channels)
                ],
            )

    def get_meter(self, meter_id: int) -> Meter:
        """The meter's registration. Raises `UnknownMeter`."""
        db = self._db
        with db.transaction(write=False):
            rows = db.query(
                "SELECT fw_version, interval_s, capacity_days, utc_offset_min, meter_multiplier, "
                "registered_at, read_group, transport, key_id FROM meter WHERE meter_id = ?",
                (meter_id,),
            )
            if not rows:
                raise UnknownMeter(meter_id)
            chans = db.query(
                "SELECT kind, unit, multiplier, scaler FROM meter_channel "
                "WHERE meter_id = ? ORDER BY idx",
                (meter_id,),
            )
        fw, interval_s, cap, off, mult, reg, group, transport, key_id = rows[0]
        return Meter(
            meter_id=meter_id,
            fw_version=fw,
            interval_s=int(interval_s),
            utc_offset_min=int(off),
            meter_multiplier=int(mult),
            channels=tuple(
                Channel(ChannelKind(k), Unit(u), int(m), int(s)) for k, u, m, s in chans
            ),
            registered_at=int(reg),
            capacity_days=int(cap),
            read_group=group,
            transport=transport,
            key_id=key_id,
        )

    def meter_ids(self) -> list[int]:
        """Ids of all registered meters, ascending."""
        with self._db.transaction(write=False):
            return [int(r[0]) for r in self._db.query("SELECT meter_id FROM meter ORDER BY 1")]

    # -- ingest ------------------------------------------------------------------------------

    def _layouts(self, ids: set[int]) -> dict[int, tuple[int, int, int]]:
        """meter id -> (interval_s, channel count, day phase) of registered meters in ``ids``."""
        out: dict[int, tuple[int, int, int]] = {}
        for chunk in _chunks(sorted(ids), self._db.chunk_rows):
            marks = ", ".join("?" * len(chunk))
            for mid, step, nch, phase in self._db.query(
                "SELECT meter_id, interval_s, n_channels, day_phase_s FROM meter "
                f"WHERE meter_id IN ({marks})",
                chunk,
            ):
                out[int(mid)] = (int(step), int(nch), int(phase))
        return out

    def ingest(
        self,
        blocks: Sequence[BlockIngest] = (),
        midnights: Sequence[MidnightRegister] = (),
        events: Sequence[EventRecord] = (),
    ) -> IngestResult:
        """Store blocks, midnight registers and events in ONE transaction (idempotent).

        Raises:
            UnknownMeter: an item names a meter that is not registered.
            InvalidData: channel count or interval length differs from the
                meter's registration. Nothing is stored.
            StoreError: the database failed. Nothing is stored.
        """
        if not (blocks or midnights or events):
            return IngestResult()
        db = self._db
        with db.transaction():
            ids = {b.meter_id for b in blocks}
            ids.update(m.meter_id for m in midnights)
            ids.update(e.meter_id for e in events)
            layouts = self._layouts(ids)
            unknown = sorted(ids - layouts.keys())
            if unknown:
                raise UnknownMeter(unknown[0])
            written, kept, inserted, updated = self._ingest_blocks(blocks, layouts)
            n_mid = self._ingest_midnights(midnights, layouts)
            n_ev = self._ingest_events(events)
        return IngestResult(written, kept, inserted, updated, n_mid, n_ev)

    def _ingest_blocks(
        self, blocks: Sequence[BlockIngest], layouts: dict[int, tuple[int, int, int]]
    ) -> tuple[int, int, int, int]:
        if not blocks:
            return 0, 0, 0, 0
        pending: dict[tuple[int, int], DayRow] = {}
        stamp: dict[tuple[int, int], int] = {}
        received = 0
        for n, bi in enumerate(blocks):
            b = bi.block
            step, nch, phase = layouts[bi.meter_id]
            if len(b.channels) != nch:
                raise InvalidData(
                    f"block {n} for meter {bi.meter_id}: expected {nch} channels, "
                    f"got {len(b.channels)}"
                )
            if b.interval_s != step:
                raise InvalidData(
                    f"block {n} for meter {bi.meter_id}: expected {step} s intervals, "
                    f"got {b.interval_s} s"
                )
            src = int(bi.source)
            for day, off, a, e in segments(b, phase):
                key = (bi.meter_id, day)
                row = pending.get(key)
                if row is None:
                    row = pending[key] = DayRow.empty(day, step, nch)
                    stamp[key] = bi.received_at
                elif bi.received_at > stamp[key]:
                    stamp[key] = bi.received_at
                row.merge_block(b, off, a, e, src)
            received += b.count

        keys = sorted(pending)
        new: set[tuple[int, int]] = set()
        db = self._db
        types = ("bigint", "bigint", "int", "int", "int", "bytea", "bytea", "bytea", "bigint")
        for chunk in _chunks(keys, db.chunk_rows):
            rows: list[tuple[Any, ...]] = []
            for key in chunk:
                row = pending[key]
                vals, flags, srcs = row.encode()
                rows.append(
                    (
                        *key,
                        row.interval_s,
                        len(row.vals),
                        row.present,
                        vals,
                        flags,
                        srcs,
                        stamp[key],
                    )
                )
            source, params = db.rows_source(types, rows)
            for mid, day in db.query(
                "INSERT INTO interval_day (meter_id, day, interval_s, n_channels, n_present, "
                f"vals, flags, srcs, updated_at) {source} "
                "ON CONFLICT (meter_id, day) DO NOTHING RETURNING meter_id, day",
                params,
            ):
                new.add((int(mid), int(day)))
        written = sum(pending[k].present for k in new)

        updates: list[tuple[Any, ...]] = []
        old_keys = [k for k in keys if k not in new]
        for chunk in _chunks(old_keys, db.chunk_rows):
            source, params = db.rows_source(("bigint", "bigint"), chunk)
            for mid, day, step, nch, vals, flags, srcs, upd in db.query(
                f"WITH k (m, d) AS ({source}) "
                "SELECT i.meter_id, i.day, i.interval_s, i.n_channels, i.vals, i.flags, i.srcs, "
                "i.updated_at FROM k JOIN interval_day i ON i.meter_id = k.m AND i.day = k.d "
                "ORDER BY i.meter_id, i.day" + db.for_update,
                params,
            ):
                key = (int(mid), int(day))
                row = DayRow.decode(key[1], int(step), int(nch), vals, flags, srcs)
                w = row.merge_row(pending[key])
                if w:
                    written += w
                    v, f, s = row.encode()
                    updates.append((row.present, v, f, s, max(int(upd), stamp[key]), *key))
        if updates:
            db.executemany(
                "UPDATE interval_day SET n_present = ?, vals = ?, flags = ?, srcs = ?, "
                "updated_at = ? WHERE meter_id = ? AND day = ?",
                updates,
            )
        return written, received - written, len(new), len(updates)

    def _ingest_midnights(
        self, midnights: Sequence[MidnightRegister], layouts: dict[int, tuple[int, int, int]]
    ) -> int:
        rows: list[tuple[int, int, int, int, int, int]] = []
        for n, m in enumerate(midnights):
            nch = layouts[m.meter_id][1]
            if len(m.values) != nch:
                raise InvalidData(
                    f"midnight register {n} for meter {m.meter_id}: expected {nch} values, "
                    f"got {len(m.values)}"
                )
            rows += (
                (m.meter_id, m.day, c, v, int(m.source), m.received_at)
                for c, v in enumerate(m.values)
            )
        written: set[tuple[int, int]] = set()
        types = ("bigint", "bigint", "int", "bigint", "int", "bigint")
        for chunk in _chunks(rows, self._db.chunk_rows):
            source, params = self._db.rows_source(types, chunk)
            for mid, day in self._db.query(
                "INSERT INTO midnight_register (meter_id, day, channel, value, source, "
                f"received_at) {source} "
                "ON CONFLICT (meter_id, day, channel) DO NOTHING RETURNING meter_id, day",
                params,
            ):
                written.add((int(mid), int(day)))
        return len(written)

    def _ingest_events(self, events: Sequence[EventRecord]) -> int:
        n = 0
        types = ("bigint", "bigint", "int", "bigint", "int", "int", "bigint")
        for chunk in _chunks(events, self._db.chunk_rows):
            source, params = self._db.rows_source(
                types,
                [
                    (e.meter_id, e.time, e.code, e.data, e.seq, int(e.source), e.received_at)
                    for e in chunk
                ],
            )
            n += len(
                self._db.query(
                    "INSERT INTO meter_event (meter_id, time, code, data, seq, source, "
                    f"received_at) {source} "
                    "ON CONFLICT (meter_id, time, code, data) DO NOTHING RETURNING event_id",
                    params,
                )
            )
        return n

    # -- queries -----------------------------------------------------------------------------

    def _require_meter(self, meter_id: int) -> tuple[int, int, int]:
        """(interval_s, channel count, utc_offset_min) of a registered meter."""
        rows = self._db.query(
            "SELECT interval_s, n_channels, utc_offset_min FROM meter WHERE meter_id = ?",
            (meter_id,),
        )
        if not rows:
            raise UnknownMeter(meter_id)
        step, nch, off = rows[0]
        return int(step), int(nch), int(off)

    def _day_rows(self, cols: str, meter_id: int, start: int, end: int) -> list[Row]:
        """Day rows of a meter that overlap [start, end), ascending."""
        return self._db.query(
            f"SELECT {cols} FROM interval_day WHERE meter_id = ? AND day > ? AND day < ? "
            "ORDER BY day",
            (meter_id, start - DAY_S, end),
        )

    def intervals(self, meter_id: int, channel: int, start: int, end: int) -> list[Interval]:
        """Stored intervals of one channel starting in [start, end), ascending."""
        db = self._db
        with db.transaction(write=False):
            nch = self._require_meter(meter_id)[1]
            if not 0 <= channel < nch:
                raise InvalidData(f"meter {meter_id} has {nch} channels, no index {channel}")
            rows = self._day_rows(
                "day, interval_s, n_channels, vals, flags, srcs", meter_id, start, end
            )
        out: list[Interval] = []
        for day, step, rch, vals, flags, srcs in rows:
            day, step = int(day), int(step)
            slots = DAY_S // step
            if channel >= rch:
                continue
            values = channel_values(vals, int(rch), slots, channel)
            lo = max(0, -((day - start) // step))
            hi = min(slots, -((day - end) // step))
            for s in range(lo, hi):
                src = srcs[s]
                if src:
                    out.append(Interval(day + s * step, values[s], flags[s], _SOURCES[src]))
        return out

    def coverage(self, meter_id: int, start: int, end: int) -> list[DayCoverage]:
        """Per local-standard day overlapping [start, end): intervals expected/present."""
        db = self._db
        with db.transaction(write=False):
            step, _, off_min = self._require_meter(meter_id)
            off = off_min * 60
            first = (start + off) // DAY_S * DAY_S - off
            rows = self._day_rows("day, interval_s, srcs", meter_id, first, end)
        days = [(int(d), int(s), bytes(b)) for d, s, b in rows]
        out: list[DayCoverage] = []
        for w in range(first, end, DAY_S):
            present = 0
            for u, rstep, srcs in days:
                if u <= w - DAY_S or u >= w + DAY_S:
                    continue
                lo = -(-(max(w, u) - u) // rstep)
                hi = -(-(min(w + DAY_S, u + DAY_S) - u) // rstep)
                if hi > lo:
                    present += (hi - lo) - srcs.count(0, lo, hi)
            out.append(DayCoverage(w, DAY_S // step, present))
        return out

    def midnight_registers(self, meter_id: int, start: int, end: int) -> list[MidnightRegister]:
        """Midnight registers with ``start <= day < end``, ascending."""
        with self._db.transaction(write=False):
            self._require_meter(meter_id)
            rows = self._db.query(
                "SELECT day, channel, value, source, received_at FROM midnight_register "
                "WHERE meter_id = ? AND day >= ? AND day < ? ORDER BY day, channel",
                (meter_id, start, end),
            )
        out: list[MidnightRegister] = []
        i = 0
        while i < len(rows):
            day, _, _, src, rec = rows[i]
            j = i
            while j < len(rows) and rows[j][0] == day:
                j += 1
            values = tuple(int(r[2]) for r in rows[i:j])
            out.append(MidnightRegister(meter_id, int(day), values, _SOURCES[src], int(rec)))
            i = j
        return out

    def events(self, meter_id: int, start: int, end: int) -> list[EventRecord]:
        """Events with ``start <= time < end``, ascending by time then code."""
        with self._db.transaction(write=False):
            self._require_meter(meter_id)
            rows = self._db.query(
                "SELECT code, time, data, source, received_at, seq FROM meter_event "
                "WHERE meter_id = ? AND time >= ? AND time < ? ORDER BY time, code, data",
                (meter_id, start, end),
            )
        return [
            EventRecord(
                meter_id, int(c), int(t), int(d), _SOURCES[s], int(r), None if q is None else int(q)
            )
            for c, t, d, s, r, q in rows
        ]

    def stats(self, start: int | None = None, end: int | None = None) -> StoreStats:
        """Counts; with a range, only day rows starting / events timed in [start, end)."""
        lo = 0 if start is None else start
        hi = (1 << 62) if end is None else end
        db = self._db
        by_source = dict.fromkeys(Source, 0)
        days = intervals = 0
        with db.transaction(write=False):
            meters = int(db.query("SELECT COUNT(*) FROM meter")[0][0])
            for n_present, srcs in db.query(
                "SELECT n_present, srcs FROM interval_day WHERE day >= ? AND day < ?", (lo, hi)
            ):
                days += 1
                intervals += int(n_present)
                if n_present:
                    srcs = bytes(srcs)
                    for s in Source:
                        by_source[s] += srcs.count(int(s))
            midnights = int(
                db.query(
                    "SELECT COUNT(*) FROM (SELECT DISTINCT meter_id, day FROM midnight_register "
                    "WHERE day >= ? AND day < ?) t",
                    (lo, hi),
                )[0][0]
            )
            events = int(
                db.query("SELECT COUNT(*) FROM meter_event WHERE time >= ? AND time < ?", (lo, hi))[
                    0
                ][0]
            )
        return StoreStats(meters, days, intervals, midnights, events, by_source)


def _implements(store: SqlStore) -> MeterStore:
    """Never called: makes mypy prove that `SqlStore` satisfies `MeterStore`."""
    return store
