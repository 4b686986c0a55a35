"""The meter registry: registrations, downlink counters, read groups, links.

Tables ``meter`` + ``meter_channel`` (schema v1), ``auth_counter``,
``group_member`` and ``meter_link`` (v2). Every method is one transaction
(re-entrant: inside ``db.transaction()`` it joins the caller's).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence

from headend.errors import StoreError, UnknownMeter
from headend.store.base import U32_MAX, Channel, Meter
from headend.store.days import day_phase
from headend.store.db import Db, chunks, marks, opt
from headend.store.units import ChannelKind, Unit

#: (interval_s, channel count, day phase s) of a meter: how its readings are laid out
Layout = tuple[int, int, int]


def layouts(db: Db, ids: Iterable[int]) -> dict[int, Layout]:
    """meter id -> `Layout` of the registered meters among ``ids``."""
    out: dict[int, Layout] = {}
    for chunk in chunks(sorted(set(ids)), db.chunk_rows):
        for mid, step, nch, phase in db.query(
            "SELECT meter_id, interval_s, n_channels, day_phase_s FROM meter "
            f"WHERE meter_id IN ({marks(len(chunk))})",
            chunk,
        ):
            out[int(mid)] = (int(step), int(nch), int(phase))
    return out


def require(db: Db, meter_id: int) -> tuple[int, int, int]:
    """(interval_s, channel count, utc_offset_min) of a registered meter; UnknownMeter."""
    rows = db.query(
        "SELECT interval_s, n_channels, utc_offset_min FROM meter WHERE meter_id = ?",
        (meter_id,),
    )
    if not rows:
        raise UnknownMeter(meter_id)
    step, nch, off = rows[0]
    return int(step), int(nch), int(off)


@functools.lru_cache(maxsize=4096)
def _channel(kind: int, unit: int, multiplier: int, scaler: int) -> Channel:
    """One checked `Channel` per stored combination (a fleet has few; every batch
    looks up its meters' channels: two enum look-ups and four checks each)."""
    return Channel(ChannelKind(kind), Unit(unit), multiplier, scaler)


class Registry:
    """Registered meters and what the head-end keeps per meter, over one `Db`."""

    def __init__(self, db: Db) -> None:
        self.db = db

    # -- registrations (M17) ------------------------------------------------------------------

    def register(self, meter: Meter) -> None:
        """Insert a meter, or replace its registration data (re-registration)."""
        db = self.db
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

    def get(self, meter_id: int) -> Meter:
        """The meter's registration. Raises `UnknownMeter`."""
        meter = self.get_many((meter_id,)).get(meter_id)
        if meter is None:
            raise UnknownMeter(meter_id)
        return meter

    def get_many(self, meter_ids: Iterable[int]) -> dict[int, Meter]:
        """meter id -> registration of the registered meters among ``meter_ids``: two
        queries per chunk (meters, their channels), not two per meter."""
        db = self.db
        out: dict[int, Meter] = {}
        with db.transaction(write=False):
            for chunk in chunks(sorted(set(meter_ids)), db.chunk_rows):
                where = f"WHERE meter_id IN ({marks(len(chunk))})"
                rows = db.query(
                    "SELECT meter_id, fw_version, interval_s, capacity_days, utc_offset_min, "
                    "meter_multiplier, registered_at, read_group, transport, key_id "
                    f"FROM meter {where}",
                    chunk,
                )
                chans: dict[int, list[Channel]] = {int(r[0]): [] for r in rows}
                for mid, k, u, m, s in db.query(
                    "SELECT meter_id, kind, unit, multiplier, scaler FROM meter_channel "
                    f"{where} ORDER BY meter_id, idx",
                    chunk,
                ):
                    chans[int(mid)].append(_channel(int(k), int(u), int(m), int(s)))
                for mid, fw, interval_s, cap, off, mult, reg, group, transport, key_id in rows:
                    out[int(mid)] = Meter(
                        meter_id=int(mid),
                        fw_version=fw,
                        interval_s=int(interval_s),
                        utc_offset_min=int(off),
                        meter_multiplier=int(mult),
                        channels=tuple(chans[int(mid)]),
                        registered_at=int(reg),
                        capacity_days=int(cap),
                        read_group=group,
                        transport=transport,
                        key_id=key_id,
                    )
        return out

    def search(
        self, meter_id: int | None, read_groups: Sequence[str] | None, no_group: bool, limit: int
    ) -> tuple[list[Meter], int]:
        """The first ``limit`` meters by id that match, and how many match: one id
        (None: any), in one of ``read_groups`` or (``no_group``) in none (None: any
        group). A few queries however many meters there are."""
        where: list[str] = []
        params: list[object] = []
        if meter_id is not None:
            where.append("meter_id = ?")
            params.append(meter_id)
        if read_groups is not None:
            either = [f"read_group IN ({marks(len(read_groups))})"] if read_groups else []
            either += ["read_group IS NULL"] if no_group else []
            where.append(f"({' OR '.join(either) or '1 = 0'})")
            params.extend(read_groups)
        cond = f" WHERE {' AND '.join(where)}" if where else ""
        with self.db.transaction(write=False):
            total = int(self.db.query(f"SELECT COUNT(*) FROM meter{cond}", params)[0][0])
            ids = self.db.query(
                f"SELECT meter_id FROM meter{cond} ORDER BY meter_id LIMIT {int(limit)}", params
            )
            found = self.get_many(int(r[0]) for r in ids)
        return [found[i] for i in sorted(found)], total

    def ids(self) -> list[int]:
        """Ids of all registered meters, ascending."""
        with self.db.transaction(write=False):
            return [int(r[0]) for r in self.db.query("SELECT meter_id FROM meter ORDER BY 1")]

    def exists(self, meter_id: int) -> bool:
        with self.db.transaction(write=False):
            return bool(self.db.query("SELECT 1 FROM meter WHERE meter_id = ?", (meter_id,)))

    # -- replay-guard counter ----------------------------------------------------------------

    def next_counter(self, meter_id: int, floor: int = 0, registered: bool = False) -> int:
        """The next downlink counter of a meter: atomic, strictly increasing, persistent.

        ``floor`` (e.g. the current UTC second) raises a counter that is behind
        it, so a head-end whose database was restored from an old backup still
        sends counters newer than the ones the meter last accepted. ``registered``: the
        caller read the meter's registration in this transaction (not checked again).
        """
        with self.db.transaction():
            if not registered and not self.exists(meter_id):
                raise UnknownMeter(meter_id)
            return self.next_counters({meter_id: floor})[meter_id]

    def next_counters(self, floors: dict[int, int]) -> dict[int, int]:
        """`next_counter` of several registered meters (meter -> floor) in one statement
        per chunk: meter -> its next downlink counter."""
        db = self.db
        out: dict[int, int] = {}
        with db.transaction():
            for chunk in chunks([(m, max(1, f)) for m, f in floors.items()], db.chunk_rows):
                source, params = db.rows_source(("bigint", "bigint"), chunk)
                out.update(
                    (int(m), int(c))
                    for m, c in db.query(
                        # one up, or up to the floor (``excluded.counter``)
                        f"INSERT INTO auth_counter (meter_id, counter) {source} "
                        "ON CONFLICT (meter_id) DO UPDATE SET counter = CASE "
                        "WHEN auth_counter.counter + 1 > excluded.counter "
                        "THEN auth_counter.counter + 1 ELSE excluded.counter END "
                        "RETURNING meter_id, counter",
                        params,
                    )
                )
        over = [m for m, c in out.items() if c > U32_MAX]
        if over:
            raise StoreError(f"meter {over[0]}: downlink counter exhausted (u32)")
        return out

    # -- read groups (H01) -------------------------------------------------------------------

    def join_unscheduled(self, meter_id: int, now_ms: int) -> bool:
        """Put a meter in the unscheduled group unless it is in a group already."""
        with self.db.transaction():
            rows = self.db.query(
                "INSERT INTO group_member (meter_id, grp, read_offset_s, since_ms) "
                "VALUES (?, NULL, NULL, ?) ON CONFLICT (meter_id) DO NOTHING RETURNING meter_id",
                (meter_id, now_ms),
            )
        return bool(rows)

    def unscheduled(self) -> list[int]:
        """Meters in the unscheduled group, ascending."""
        with self.db.transaction(write=False):
            return [
                int(r[0])
                for r in self.db.query(
                    "SELECT meter_id FROM group_member WHERE grp IS NULL ORDER BY meter_id"
                )
            ]

    def group_loads(self) -> dict[int, int]:
        """Meters per read group (the unscheduled group is not counted)."""
        with self.db.transaction(write=False):
            return {
                int(g): int(n)
                for g, n in self.db.query(
                    "SELECT grp, COUNT(*) FROM group_member WHERE grp IS NOT NULL GROUP BY grp"
                )
            }

    def members(self, since_ms: int) -> dict[int, tuple[int, int]]:
        """meter -> (group, read offset s) of the meters in a read group since ``since_ms``
        or before."""
        with self.db.transaction(write=False):
            return {
                int(m): (int(g), int(o))
                for m, g, o in self.db.query(
                    "SELECT meter_id, grp, read_offset_s FROM group_member "
                    "WHERE grp IS NOT NULL AND since_ms <= ?",
                    (since_ms,),
                )
            }

    def group_of(self, meter_id: int) -> tuple[int | None, int | None]:
        """(group, read offset s) of a meter; (None, None) when unscheduled or unknown."""
        with self.db.transaction(write=False):
            rows = self.db.query(
                "SELECT grp, read_offset_s FROM group_member WHERE meter_id = ?", (meter_id,)
            )
        return (opt(rows[0][0]), opt(rows[0][1])) if rows else (None, None)

    def set_group(
        self, meter_id: int, grp: int, read_offset_s: int, label: str, now_ms: int
    ) -> None:
        """Move a meter into a read group (and write the group's label on the meter row)."""
        with self.db.transaction():
            self.db.execute(
                "INSERT INTO group_member (meter_id, grp, read_offset_s, since_ms) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (meter_id) DO UPDATE SET grp = excluded.grp, "
                "read_offset_s = excluded.read_offset_s, since_ms = excluded.since_ms",
                (meter_id, grp, read_offset_s, now_ms),
            )
            self.db.execute("UPDATE meter SET read_group = ? WHERE meter_id = ?", (label, meter_id))

    # -- links (H08) -------------------------------------------------------------------------

    def link_seen(
        self,
        meter_id: int,
        transport: str,
        now_ms: int,
        meter: Meter | None = None,
        counted: bool = True,
    ) -> str | None:
        """Record a frame from a meter on a link; returns the previous link if it changed.

        ``meter``: its registration as read in this transaction (its link not read again).
        ``counted`` False: the caller counts the frame later, with others (`links_seen`).
        """
        with self.db.transaction():
            if counted:
                self.links_seen([(meter_id, transport, now_ms)])
            rows = (
                [(meter.transport,)]
                if meter is not None
                else self.db.query("SELECT transport FROM meter WHERE meter_id = ?", (meter_id,))
            )
            before = rows[0][0] if rows else None
            if rows and before != transport:
                self.db.execute(
                    "UPDATE meter SET transport = ? WHERE meter_id = ?", (transport, meter_id)
                )
                return str(before) if before is not None else ""
        return None

    def links_seen(self, frames: Sequence[tuple[int, str, int]]) -> None:
        """Count frames (meter, transport, ms) on their links in one statement; at most
        one per (meter, transport) (a statement updates a row once)."""
        db = self.db
        with db.transaction():
            types = ("bigint", "text", "bigint", "bigint", "int")
            for chunk in chunks([(m, t, ms, ms, 1) for m, t, ms in frames], db.chunk_rows):
                source, params = db.rows_source(types, chunk)
                db.execute(
                    "INSERT INTO meter_link (meter_id, transport, first_seen_ms, last_seen_ms, "
                    f"frames) {source} ON CONFLICT (meter_id, transport) DO UPDATE SET "
                    "last_seen_ms = excluded.last_seen_ms, frames = meter_link.frames + 1",
                    params,
                )

    def links(self, meter_id: int | None = None) -> list[tuple[int, str, int, int, int]]:
        """(meter, transport, first seen ms, last seen ms, frames) rows."""
        where, params = ("WHERE meter_id = ?", (meter_id,)) if meter_id is not None else ("", ())
        with self.db.transaction(write=False):
            return [
                (int(m), str(t), int(f), int(ls), int(n))
                for m, t, f, ls, n in self.db.query(
                    "SELECT meter_id, transport, first_seen_ms, last_seen_ms, frames "
                    f"FROM meter_link {where} ORDER BY meter_id, transport",
                    params,
                )
            ]
