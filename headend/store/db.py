"""The database as the store needs it: a small `Db` adapter, and row helpers.

`Db` hides the driver: ``?`` placeholders, explicit (re-entrant)
transactions, error translation to `StoreError`. The SQL of every store
module is portable between SQLite (>= 3.35: ``ON CONFLICT``, ``RETURNING``,
row values) and PostgreSQL, so both backends (`sqlite.py`, `postgres.py`)
run the same queries and pass the same tests.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

Row = tuple[Any, ...]

#: Seqs remembered per schedule or job (one per attempt): enough to match late answers.
KEEP_SEQS = 8


class Db(ABC):
    """A database connection as the store needs it (one per thread)."""

    dialect: str
    #: appended to the SELECT (table alias ``i``) that reads rows about to be updated
    for_update: str = ""
    #: rows per multi-row statement
    chunk_rows: int = 500
    #: appended to a SELECT of rows a worker claims (inside a write transaction): rows
    #: another worker's transaction holds are passed over, not waited for. Nothing on
    #: SQLite, whose write transaction holds the whole database.
    skip_locked: str = ""

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

    _depth = 0  # transactions entered and not left (the backends keep it)

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        """A transaction, or inside one a savepoint: if its body raises, what the body
        wrote is undone and the outer transaction goes on without it (several
        uplinks, one commit: `headend.core.Core.on_uplinks`)."""
        if not self._depth:
            with self.transaction():
                yield
            return
        self._depth += 1
        try:
            with self._nested():
                yield
        finally:
            self._depth -= 1

    @abstractmethod
    def _nested(self) -> Any:
        """Context manager: a savepoint inside the current transaction (see `savepoint`)."""

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

    def lock(self, name: str) -> None:
        """Inside a write transaction: serialise the holders of lock ``name`` between
        workers. Default: nothing to do (SQLite's write transaction holds the database)."""
        return None

    @abstractmethod
    def close(self) -> None:
        """Close the connection."""

    @abstractmethod
    def size_bytes(self) -> int:
        """Bytes the store's data take on disk (for figures, not exact accounting)."""


def chunks(seq: Sequence[Any], n: int) -> Iterator[Sequence[Any]]:
    """``seq`` in slices of at most ``n`` items."""
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


def marks(n: int) -> str:
    """``?, ?, ?`` for ``n`` parameters."""
    return ", ".join("?" * n)


def opt(v: Any) -> int | None:
    """A nullable integer column."""
    return None if v is None else int(v)


def seqs(text: str) -> tuple[int, ...]:
    """The seqs column (``"41,42"``) as ints."""
    return tuple(int(s) for s in text.split(",") if s)


def add_seq(text: str, seq: int) -> str:
    """The seqs column with one more seq (only the newest `KEEP_SEQS` are kept)."""
    return ",".join(str(s) for s in (*seqs(text), seq)[-KEEP_SEQS:])
