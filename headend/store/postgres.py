"""PostgreSQL backend (psycopg 3): the scale-out store for several workers.

Same schema and SQL as SQLite (`sql.py`). Concurrency between workers: new
day rows are inserted with ``ON CONFLICT DO NOTHING`` (a concurrent insert of
the same day waits for the other transaction, then is treated as existing),
existing rows are read ``FOR UPDATE`` in key order before they are merged, and
migrations take a transaction-level advisory lock. A transaction that still
fails with a serialization failure or deadlock raises `StoreError`; the caller
retries the batch (ingest is idempotent).

``schema`` selects a PostgreSQL schema (``search_path``), created if missing;
tests use one per test.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, LiteralString

import psycopg
from psycopg import sql

from headend.errors import StoreError
from headend.store.db import Db, Row
from headend.store.sql import SqlStore


def _q(text: str) -> LiteralString:
    """Our SQL with ``?`` placeholders as psycopg's ``%s`` (no literal ``?`` or ``%`` used)."""
    return text.replace("?", "%s")


class PostgresDb(Db):
    """`Db` over a psycopg connection in autocommit mode with explicit transactions."""

    dialect = "postgres"
    for_update = " FOR UPDATE OF i"
    skip_locked = " FOR UPDATE SKIP LOCKED"
    chunk_rows = 5000

    def rows_source(
        self, types: Sequence[str], rows: Sequence[Sequence[Any]]
    ) -> tuple[str, list[Any]]:
        """``SELECT * FROM unnest(?::t1[], ...)``: one array parameter per column.

        A multi-row VALUES list would cost psycopg a parse of a huge query text
        per batch; arrays keep the statement short and preparable.
        """
        cols = [list(c) for c in zip(*rows, strict=True)] if rows else [[] for _ in types]
        marks = ", ".join(f"?::{t}[]" for t in types)
        return f"SELECT * FROM unnest({marks})", cols

    def __init__(self, dsn: str, *, schema: str | None = None, connect_timeout: int = 10):
        try:
            self._conn = psycopg.connect(dsn, autocommit=True, connect_timeout=connect_timeout)
        except psycopg.Error as exc:
            raise StoreError(f"cannot connect to PostgreSQL: {exc}") from exc
        self.schema = schema
        self._depth = 0
        self._cache: dict[str, LiteralString] = {}
        if schema is not None:
            try:
                self._conn.execute(
                    sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema))
                )
                self._conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
            except psycopg.Error as exc:
                self._conn.close()
                raise StoreError(f"PostgreSQL: cannot use schema {schema!r}: {exc}") from exc

    def _sql(self, text: str) -> LiteralString:
        q = self._cache.get(text)
        if q is None:
            q = _q(text)
            if len(self._cache) < 512:
                self._cache[text] = q
        return q

    @contextmanager
    def transaction(self, write: bool = True) -> Iterator[None]:
        """One transaction (re-entrant)."""
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        self._depth = 1
        try:
            with self._conn.transaction():
                yield
        except psycopg.Error as exc:
            raise StoreError(f"PostgreSQL: {exc}") from exc
        finally:
            self._depth = 0

    @contextmanager
    def _nested(self) -> Iterator[None]:
        try:
            with self._conn.transaction():  # psycopg nests it as a savepoint
                yield
        except psycopg.Error as exc:
            raise StoreError(f"PostgreSQL: {exc}") from exc

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement; returns the row count."""
        with self._errors():
            return self._conn.execute(self._sql(sql), params or None).rowcount

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """Run one statement per parameter row (pipelined by psycopg)."""
        with self._errors(), self._conn.cursor() as cur:
            cur.executemany(self._sql(sql), rows)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """Run a query; returns all rows."""
        with self._errors():
            return self._conn.execute(self._sql(sql), params or None).fetchall()

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except psycopg.Error as exc:
            raise StoreError(f"PostgreSQL: {exc}") from exc

    def table_exists(self, name: str) -> bool:
        """True if the table exists in the current schema (``search_path``)."""
        return self.query("SELECT to_regclass(?)", (name,))[0][0] is not None

    def lock_schema(self) -> None:
        """Transaction-level advisory lock on the current schema's name."""
        self.query("SELECT pg_advisory_xact_lock(hashtext(current_schema()))")

    def lock(self, name: str) -> None:
        """Transaction-level advisory lock on ``name`` in the current schema."""
        self.query(
            "SELECT pg_advisory_xact_lock(hashtext(current_schema() || CAST(? AS TEXT)))", (name,)
        )

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()

    def size_bytes(self) -> int:
        """Total size of the store's tables (with indexes and TOAST) in the current schema."""
        rows = self.query(
            "SELECT COALESCE(SUM(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = current_schema() AND c.relkind = 'r'"
        )
        return int(rows[0][0])


class PostgresStore(SqlStore):
    """The meter-data store in PostgreSQL (migrated on open)."""

    def __init__(self, dsn: str, *, schema: str | None = None, migrate: bool = True) -> None:
        """Connect to ``dsn`` (and ``schema``), and by default migrate.

        Raises:
            StoreError: cannot connect.
            SchemaError: the schema is newer than this head-end.
        """
        super().__init__(PostgresDb(dsn, schema=schema), migrate=migrate)
