"""Meter readings: intervals and midnight registers in, and the queries on them.

Ingest of a batch, in one transaction:
1. look up the batch's meters; reject unknown meters and blocks whose channel
   count or interval length differs from the registration;
2. merge the batch's blocks into (meter, day) rows in memory (`days.py`);
3. insert the rows with ``ON CONFLICT DO NOTHING RETURNING`` (new days: done);
4. read the days that already existed (``FOR UPDATE`` on PostgreSQL), merge
   with the rule in `days.py`, and update only the rows that changed.
Events that come with the batch are inserted in the same transaction (once
per (meter, time, code, data)); their queries, routes and deliveries are in
`events.py`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from headend.errors import InvalidData, UnknownMeter
from headend.store.base import (
    DAY_S,
    BlockIngest,
    DayCoverage,
    EventRecord,
    IngestResult,
    Interval,
    MidnightRegister,
    Source,
    StoreStats,
)
from headend.store.days import DayRow, channel_values, segments
from headend.store.db import Db, Row, chunks
from headend.store.registry import Layout, layouts, require

SOURCES = {int(s): s for s in Source}


def windows(
    days: Sequence[tuple[int, int, bytes]], first: int, end: int, step: int
) -> list[DayCoverage]:
    """Coverage of the days [first + k * DAY_S, ...) before ``end`` from a meter's day
    rows (day, interval_s, srcs) overlapping them; ``step`` is its interval now."""
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


class Readings:
    """Interval data, midnight registers and the events of a read, over one `Db`."""

    def __init__(self, db: Db) -> None:
        self.db = db

    def ingest(
        self,
        blocks: Sequence[BlockIngest] = (),
        midnights: Sequence[MidnightRegister] = (),
        events: Sequence[EventRecord] = (),
        known: Mapping[int, Layout] | None = None,
    ) -> IngestResult:
        """Store blocks, midnight registers and events in ONE transaction (idempotent).

        ``known``: layouts of the items' meters as read in this transaction (a batch
        of uplinks reads them once); the others are looked up.

        Raises:
            UnknownMeter: an item names a meter that is not registered.
            InvalidData: channel count or interval length differs from the
                meter's registration. Nothing is stored.
            StoreError: the database failed. Nothing is stored.
        """
        return self.ingest_by_meter(blocks, midnights, events, known)[0]

    def ingest_by_meter(
        self,
        blocks: Sequence[BlockIngest] = (),
        midnights: Sequence[MidnightRegister] = (),
        events: Sequence[EventRecord] = (),
        known: Mapping[int, Layout] | None = None,
    ) -> tuple[IngestResult, dict[int, tuple[int, int]]]:
        """`ingest`, and per meter (intervals written, midnight days written): the
        share of each of several uplinks stored together (one meter each)."""
        if not (blocks or midnights or events):
            return IngestResult(), {}
        db = self.db
        with db.transaction():
            ids = {b.meter_id for b in blocks}
            ids.update(m.meter_id for m in midnights)
            ids.update(e.meter_id for e in events)
            have = dict(known or {})
            if not ids <= have.keys():
                have.update(layouts(self.db, ids - have.keys()))
            unknown = sorted(ids - have.keys())
            if unknown:
                raise UnknownMeter(unknown[0])
            written, kept, inserted, updated, per_iv = self._ingest_blocks(blocks, have)
            mid_days = self._ingest_midnights(midnights, have)
            n_ev = self._ingest_events(events)
        per: dict[int, tuple[int, int]] = {m: (n, 0) for m, n in per_iv.items()}
        for m, _ in mid_days:
            n, k = per.get(m, (0, 0))
            per[m] = (n, k + 1)
        return IngestResult(written, kept, inserted, updated, len(mid_days), n_ev), per

    def _ingest_blocks(
        self, blocks: Sequence[BlockIngest], layouts: dict[int, Layout]
    ) -> tuple[int, int, int, int, dict[int, int]]:
        """(written, kept, days inserted, days updated, written per meter)."""
        if not blocks:
            return 0, 0, 0, 0, {}
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
            slots = DAY_S // step
            for day, off, a, e in segments(b, phase):
                key = (bi.meter_id, day)
                row = pending.get(key)
                if row is None:
                    stamp[key] = bi.received_at
                    if e - a == slots:  # the whole day (a scheduled read's block)
                        pending[key] = DayRow.whole(day, b, a, src)
                        continue
                    row = pending[key] = DayRow.empty(day, step, nch)
                elif bi.received_at > stamp[key]:
                    stamp[key] = bi.received_at
                row.merge_block(b, off, a, e, src)
            received += b.count

        keys = sorted(pending)
        new: set[tuple[int, int]] = set()
        db = self.db
        types = ("bigint", "bigint", "int", "int", "int", "bytea", "bytea", "bytea", "bigint")
        for chunk in chunks(keys, db.chunk_rows):
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
        per: dict[int, int] = {}
        for k in new:
            per[k[0]] = per.get(k[0], 0) + pending[k].present
        written = sum(per.values())

        updates: list[tuple[Any, ...]] = []
        old_keys = [k for k in keys if k not in new]
        for chunk in chunks(old_keys, db.chunk_rows):
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
                    per[key[0]] = per.get(key[0], 0) + w
                    v, f, s = row.encode()
                    updates.append((row.present, v, f, s, max(int(upd), stamp[key]), *key))
        if updates:
            db.executemany(
                "UPDATE interval_day SET n_present = ?, vals = ?, flags = ?, srcs = ?, "
                "updated_at = ? WHERE meter_id = ? AND day = ?",
                updates,
            )
        return written, received - written, len(new), len(updates), per

    def _ingest_midnights(
        self, midnights: Sequence[MidnightRegister], layouts: dict[int, Layout]
    ) -> set[tuple[int, int]]:
        """The (meter, day)s of which a register was new."""
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
        for chunk in chunks(rows, self.db.chunk_rows):
            source, params = self.db.rows_source(types, chunk)
            for mid, day in self.db.query(
                "INSERT INTO midnight_register (meter_id, day, channel, value, source, "
                f"received_at) {source} "
                "ON CONFLICT (meter_id, day, channel) DO NOTHING RETURNING meter_id, day",
                params,
            ):
                written.add((int(mid), int(day)))
        return written

    def _ingest_events(self, events: Sequence[EventRecord]) -> int:
        return len(self._insert_events(events))

    def add_events(self, events: Sequence[EventRecord]) -> dict[tuple[int, int, int, int], int]:
        """Store events of registered meters (idempotent, inside the caller's transaction:
        it holds their `Meter`s); returns (meter, time, code, data) -> event_id of those
        that are new, from the insert itself (no look before or after)."""
        with self.db.transaction():
            rows = self._insert_events(events)
        return {(int(m), int(t), int(c), int(d)): int(e) for e, m, t, c, d in rows}

    def _insert_events(self, events: Sequence[EventRecord]) -> list[Row]:
        """(event_id, meter_id, time, code, data) of the events inserted (not there before)."""
        out: list[Row] = []
        types = ("bigint", "bigint", "int", "bigint", "int", "int", "bigint")
        for chunk in chunks(events, self.db.chunk_rows):
            source, params = self.db.rows_source(
                types,
                [
                    (e.meter_id, e.time, e.code, e.data, e.seq, int(e.source), e.received_at)
                    for e in chunk
                ],
            )
            out += self.db.query(
                "INSERT INTO meter_event (meter_id, time, code, data, seq, source, "
                f"received_at) {source} "
                "ON CONFLICT (meter_id, time, code, data) DO NOTHING "
                "RETURNING event_id, meter_id, time, code, data",
                params,
            )
        return out

    # -- queries -----------------------------------------------------------------------------

    def _day_rows(self, cols: str, meter_id: int, start: int, end: int) -> list[Row]:
        """Day rows of a meter that overlap [start, end), ascending."""
        return self.db.query(
            f"SELECT {cols} FROM interval_day WHERE meter_id = ? AND day > ? AND day < ? "
            "ORDER BY day",
            (meter_id, start - DAY_S, end),
        )

    def intervals(self, meter_id: int, channel: int, start: int, end: int) -> list[Interval]:
        """Stored intervals of one channel starting in [start, end), ascending."""
        db = self.db
        with db.transaction(write=False):
            nch = require(self.db, meter_id)[1]
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
                    out.append(Interval(day + s * step, values[s], flags[s], SOURCES[src]))
        return out

    def coverage(self, meter_id: int, start: int, end: int) -> list[DayCoverage]:
        """Per local-standard day overlapping [start, end): intervals expected/present."""
        db = self.db
        with db.transaction(write=False):
            step, _, off_min = require(self.db, meter_id)
            off = off_min * 60
            first = (start + off) // DAY_S * DAY_S - off
            rows = self._day_rows("day, interval_s, srcs", meter_id, first, end)
        return windows([(int(d), int(s), bytes(b)) for d, s, b in rows], first, end, step)

    def midnight_registers(self, meter_id: int, start: int, end: int) -> list[MidnightRegister]:
        """Midnight registers with ``start <= day < end``, ascending."""
        with self.db.transaction(write=False):
            require(self.db, meter_id)
            rows = self.db.query(
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
            out.append(MidnightRegister(meter_id, int(day), values, SOURCES[src], int(rec)))
            i = j
        return out

    def stats(self, start: int | None = None, end: int | None = None) -> StoreStats:
        """Counts; with a range, only day rows starting / events timed in [start, end)."""
        lo = 0 if start is None else start
        hi = (1 << 62) if end is None else end
        db = self.db
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
