"""The MDMS meter-data store: one interface, SQLite (default) or PostgreSQL.

Use `open_store` with ``sqlite:///path/to/file.db`` (or a plain path) or a
``postgresql://`` DSN. Types and the `MeterStore` protocol are in `base`; the
storage layout and the merge rule for re-sent data in `days`; units in `units`.
"""

from __future__ import annotations

from headend.errors import ConfigError
from headend.store.base import (
    BlockIngest,
    Channel,
    DayCoverage,
    EventRecord,
    IngestResult,
    Interval,
    IntervalBlock,
    Meter,
    MeterStore,
    MidnightRegister,
    Quality,
    Source,
    StoreStats,
    quality,
)
from headend.store.sql import SqlStore
from headend.store.units import ChannelKind, Quantity, Scale, Unit
from protocol.codes import Flag

__all__ = [
    "BlockIngest",
    "Channel",
    "ChannelKind",
    "DayCoverage",
    "EventRecord",
    "Flag",
    "IngestResult",
    "Interval",
    "IntervalBlock",
    "Meter",
    "MeterStore",
    "MidnightRegister",
    "Quality",
    "Quantity",
    "Scale",
    "Source",
    "SqlStore",
    "StoreStats",
    "Unit",
    "open_store",
    "quality",
]


def open_store(url: str, *, schema: str | None = None, migrate: bool = True) -> SqlStore:
    """Open (creating and migrating) a store.

    Args:
        url: ``sqlite:///relative.db``, ``sqlite:////abs/path.db``, a plain file
            path, or ``postgresql://user@host:port/db``.
        schema: PostgreSQL schema to use (ignored for SQLite).
        migrate: bring the schema to the latest version; False: refuse (SchemaError)
            a database that is not at it.

    Raises:
        ConfigError: the URL names no supported backend.
    """
    if url.startswith(("postgresql://", "postgres://")):
        from headend.store.postgres import PostgresStore

        return PostgresStore(url, schema=schema, migrate=migrate)
    if url.startswith("sqlite://"):
        path = url.removeprefix("sqlite://")
        if not path.startswith("/"):
            raise ConfigError(f"store URL {url!r}: expected sqlite:///path")
        path = path[1:] or ":memory:"
        from headend.store.sqlite import SqliteStore

        return SqliteStore(path, migrate=migrate)
    if "://" in url:
        raise ConfigError(f"store URL {url!r}: expected sqlite:///... or postgresql://...")
    from headend.store.sqlite import SqliteStore

    return SqliteStore(url, migrate=migrate)
