"""Fixtures of the head-end tests: a store of each backend, the service's config.

`backend` yields a database URL the service, the CLI (another process) and the
test can all open: a SQLite file, or a throwaway PostgreSQL schema named in
the URL (``?options=-csearch_path=...``), so no part needs to know the schema.
"""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import quote

import pytest

from headend.config import Config
from headend.context import Ctx
from headend.store import SqlStore, open_store


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: object) -> Iterator[str]:
    """A database URL of a fresh store, on both backends."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/headend.db"
    else:
        dsn, schema = request.getfixturevalue("pg_schema")
        yield f"{dsn}?options={quote(f'-c search_path={schema}')}"


@pytest.fixture
def sqlite_url(tmp_path: object) -> str:
    """A database URL of a fresh SQLite store (for tests where the backend is not the point)."""
    return f"sqlite:///{tmp_path}/headend.db"


@pytest.fixture
def store_at() -> Iterator[list[SqlStore]]:
    """Stores a test opened (closed at the end)."""
    opened: list[SqlStore] = []
    yield opened
    for s in opened:
        s.close()


def open_at(url: str, opened: list[SqlStore]) -> SqlStore:
    s = open_store(url)
    opened.append(s)
    return s


def ctx_of(store: SqlStore) -> Ctx:
    """The head-end's tables on an open store (what the service and the CLI use)."""
    return Ctx.build(Config(), store)
