"""SQLite backend: the embedded default (one file, WAL, stdlib `sqlite3`).

Durability. The connection runs in WAL mode. ``synchronous`` decides what a
commit survives:

* ``FULL`` (default): the WAL is fsynced at every commit; a committed batch
  survives power loss. Each ingest batch is one transaction, so the fsync cost
  is paid once per batch, not per block.
* ``NORMAL``: commits survive a crash of the process but the last commits
  may be lost on power loss or an OS crash (the database stays consistent).

Either way the rule is the same: acknowledge data to a meter (``read_ack``)
only after the ingest call that stored it returned. Under ``NORMAL`` a power
cut can still lose acknowledged data; it is then found by missing-data
detection (D02) and recovered from the meter, which keeps 45 days (M02).

Limits: one writer at a time (``BEGIN IMMEDIATE``; others wait up to
``timeout`` seconds); a store object must be used by one thread at a time.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from headend.errors import ConfigError, MissingDatabase, StoreError
from headend.store.db import Db, Row
from headend.store.sql import SqlStore

_SYNC = ("OFF", "NORMAL", "FULL", "EXTRA")


class SqliteDb(Db):
    """`Db` over a `sqlite3` connection in autocommit mode with explicit transactions."""

    dialect = "sqlite"
    chunk_rows = 500  # x 9 columns: well under SQLite's 32,766 parameters

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: str = "FULL",
        timeout: float = 30.0,
        create: bool = True,
    ):
        if synchronous.upper() not in _SYNC:
            raise ConfigError(f"synchronous: expected one of {_SYNC}, got {synchronous!r}")
        self.path = Path(path)
        memory = str(path) == ":memory:"
        if not create and not memory and not self.path.is_file():
            raise MissingDatabase(f"no database at {path}")
        try:
            self._conn = sqlite3.connect(
                # mode=rw: an existing file only (a missing one is not created on the side)
                self.path.absolute().as_uri() + "?mode=rw" if not (create or memory) else str(path),
                isolation_level=None,
                timeout=timeout,
                check_same_thread=False,
                uri=not (create or memory),
            )
            mode = self._conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(path) != ":memory:" and mode != "wal":
                raise StoreError(f"{path}: expected journal_mode wal, got {mode}")
            for pragma in (
                f"synchronous={synchronous.upper()}",
                "foreign_keys=ON",
                "cache_size=-65536",
                "temp_store=MEMORY",
            ):
                self._conn.execute(f"PRAGMA {pragma}")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open SQLite database {path}: {exc}") from exc
        self._depth = 0

    @contextmanager
    def transaction(self, write: bool = True) -> Iterator[None]:
        """One transaction; ``BEGIN IMMEDIATE`` for writes so read-merge-write is safe."""
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        try:
            self._conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite: cannot begin a transaction: {exc}") from exc
        self._depth = 1
        try:
            yield
        except BaseException as exc:
            self._depth = 0
            self._conn.rollback()
            if isinstance(exc, sqlite3.Error):
                raise StoreError(f"SQLite: {exc}") from exc
            raise
        self._depth = 0
        try:
            self._conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._conn.rollback()
            raise StoreError(f"SQLite: commit failed: {exc}") from exc

    @contextmanager
    def _nested(self) -> Iterator[None]:
        name = f"sp{self._depth}"
        with self._errors():
            self._conn.execute(f"SAVEPOINT {name}")
        try:
            yield
        except BaseException:
            with self._errors():
                self._conn.execute(f"ROLLBACK TO {name}")
                self._conn.execute(f"RELEASE {name}")
            raise
        with self._errors():
            self._conn.execute(f"RELEASE {name}")

    # The three below run several times per uplink: a plain try, not `_errors` (a
    # generator context manager costs more than the statement's own Python).

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement; returns the row count."""
        try:
            return self._conn.execute(sql, params).rowcount
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite: {exc}") from exc

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """Run one statement per parameter row."""
        try:
            self._conn.executemany(sql, rows)
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite: {exc}") from exc

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """Run a query; returns all rows."""
        try:
            return self._conn.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite: {exc}") from exc

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite: {exc}") from exc

    def table_exists(self, name: str) -> bool:
        """True if the table exists."""
        return bool(
            self.query("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,))
        )

    def lock_schema(self) -> None:
        """No-op: ``BEGIN IMMEDIATE`` already holds the database's write lock."""

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()

    def size_bytes(self) -> int:
        """Database file size after a WAL checkpoint."""
        try:
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite: checkpoint failed: {exc}") from exc
        size = self.path.stat().st_size
        wal = self.path.with_name(self.path.name + "-wal")
        return size + (wal.stat().st_size if wal.exists() else 0)


class SqliteStore(SqlStore):
    """The meter-data store in one SQLite file (created and migrated on open)."""

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: str = "FULL",
        timeout: float = 30.0,
        migrate: bool = True,
    ) -> None:
        """Open (and by default create/migrate) the store at ``path``.

        Raises:
            ConfigError: bad ``synchronous`` value.
            StoreError: the file cannot be opened.
            SchemaError: the file's schema is newer than this head-end (or, with
                ``migrate=False``, not exactly this head-end's).
            MissingDatabase: ``migrate=False`` and there is no file (none is created).
        """
        db = SqliteDb(path, synchronous=synchronous, timeout=timeout, create=migrate)
        super().__init__(db, migrate=migrate)
