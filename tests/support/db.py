"""PostgreSQL for tests: find a DSN that answers, and throwaway schemas on it.

The server is the machine's own (127.0.0.1:5432, database `test`); tests never
create databases, only schemas with unique names, so runs cannot collide.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NamedTuple

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

ENV_DSN = "AMI_TEST_PG_DSN"
DEFAULT_DSNS = (
    "postgresql://postgres@127.0.0.1:5432/test",
    # Some machines only have a role named after the OS user.
    "postgresql://root@127.0.0.1:5432/test",
)
CONNECT_TIMEOUT_S = 3


class PgSchema(NamedTuple):
    """What `pg_schema` yields; unpacks as `(dsn, schema)`."""

    dsn: str
    schema: str

    @property
    def scoped_dsn(self) -> str:
        """The DSN with search_path set to the schema, for code that takes only a DSN."""
        return make_conninfo(self.dsn, options=f"-c search_path={self.schema}")


def candidate_dsns() -> tuple[str, ...]:
    override = os.environ.get(ENV_DSN)
    return (override,) if override else DEFAULT_DSNS


def find_dsn() -> tuple[str | None, str]:
    """(first DSN that answers `SELECT 1`, None) or (None, why none did)."""
    errors = []
    for dsn in candidate_dsns():
        try:
            with psycopg.connect(dsn, connect_timeout=CONNECT_TIMEOUT_S) as conn:
                conn.execute("SELECT 1")
            return dsn, ""
        except psycopg.Error as e:
            errors.append(f"{dsn}: {' '.join(str(e).split())}")
    return None, "PostgreSQL not reachable (" + "; ".join(errors) + f"); set {ENV_DSN}"


@contextmanager
def throwaway_schema(dsn: str, prefix: str = "t") -> Iterator[PgSchema]:
    """Create a uniquely named schema, yield it, then drop it with everything in it."""
    name = f"{prefix}_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
    try:
        yield PgSchema(dsn, name)
    finally:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S) as conn:
            # A test that leaked an open transaction must fail the run, not hang it.
            conn.execute("SET lock_timeout = '10s'")
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))
