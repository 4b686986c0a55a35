"""`SqlStore`: one connection to the store, and the `MeterStore` interface on it.

Opening a store opens its `Db` (SQLite or PostgreSQL) and migrates (or checks)
the schema. The queries are in modules named for what they hold, each a small
class over the same `Db`: `registry` (meters, counters, read groups, links),
`readings` (ingest, intervals, midnight registers), `events` (events, routes,
deliveries), `jobs`, `schedules`, `activity`. The head-end's components use
those through `headend.context.Ctx`; `SqlStore` keeps the backend-neutral
`MeterStore` interface (meters and readings) for tools and benches.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from headend.store import partitions
from headend.store.base import (
    BlockIngest,
    DayCoverage,
    EventRecord,
    IngestResult,
    Interval,
    Meter,
    MeterStore,
    MidnightRegister,
    StoreStats,
)
from headend.store.db import Db
from headend.store.events import Events
from headend.store.readings import Readings
from headend.store.registry import Registry


class SqlStore:
    """`MeterStore` over a `Db`. Not thread-safe: one store per thread or task runner."""

    backend: str

    def __init__(self, db: Db, *, migrate: bool = True) -> None:
        from headend.store import migrations  # migrations imports Db, not this module

        self._db = db
        self.backend = db.dialect
        try:
            if migrate:
                migrations.migrate(db)
            else:
                migrations.check_version(db)
            partitions.ensure(db, int(time.time()))  # the months ahead (PostgreSQL)
        except BaseException:
            db.close()
            raise
        self._registry = Registry(db)
        self._readings = Readings(db)
        self._events = Events(db)

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
        """The connection adapter (for the store modules, migrations, tools and benches)."""
        return self._db

    def schema_version(self) -> int:
        """The schema version of the open database."""
        from headend.store import migrations

        with self._db.transaction(write=False):
            return migrations.current_version(self._db)

    # -- MeterStore --------------------------------------------------------------------------

    def register_meter(self, meter: Meter) -> None:
        """Insert a meter, or replace its registration data (M17, re-registration)."""
        self._registry.register(meter)

    def get_meter(self, meter_id: int) -> Meter:
        """The meter's registration. Raises `UnknownMeter`."""
        return self._registry.get(meter_id)

    def meter_ids(self) -> list[int]:
        """Ids of all registered meters, ascending."""
        return self._registry.ids()

    def ingest(
        self,
        blocks: Sequence[BlockIngest] = (),
        midnights: Sequence[MidnightRegister] = (),
        events: Sequence[EventRecord] = (),
    ) -> IngestResult:
        """Store blocks, midnight registers and events in ONE transaction (see `Readings`)."""
        return self._readings.ingest(blocks, midnights, events)

    def intervals(self, meter_id: int, channel: int, start: int, end: int) -> list[Interval]:
        """Stored intervals of one channel starting in [start, end), ascending."""
        return self._readings.intervals(meter_id, channel, start, end)

    def coverage(self, meter_id: int, start: int, end: int) -> list[DayCoverage]:
        """Per local-standard day overlapping [start, end): intervals expected/present."""
        return self._readings.coverage(meter_id, start, end)

    def midnight_registers(self, meter_id: int, start: int, end: int) -> list[MidnightRegister]:
        """Midnight registers with ``start <= day < end``, ascending."""
        return self._readings.midnight_registers(meter_id, start, end)

    def events(self, meter_id: int, start: int, end: int) -> list[EventRecord]:
        """Events with ``start <= time < end``, ascending by time then code."""
        return self._events.between(meter_id, start, end)

    def stats(self, start: int | None = None, end: int | None = None) -> StoreStats:
        """Counts; with a range, only day rows starting / events timed in [start, end)."""
        return self._readings.stats(start, end)


def _implements(store: SqlStore) -> MeterStore:
    """Never called: makes mypy prove that `SqlStore` satisfies `MeterStore`."""
    return store
