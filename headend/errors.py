"""The head-end's one exception root and its few subclasses.

Every error the head-end raises on purpose is a `HeadendError`. Errors from
libraries (sqlite3, psycopg, OS errors) are translated at the edge with
``raise ... from`` so callers catch one family. Messages say what was expected
and what arrived.
"""

from __future__ import annotations


class HeadendError(Exception):
    """Root of every error the head-end raises on purpose."""


class ConfigError(HeadendError):
    """A configuration value is missing or not acceptable."""


class InvalidData(HeadendError):
    """Data does not fit its definition (shape, range, unit, interval length)."""


class IllegalTransition(HeadendError):
    """A job or schedule got an event its state does not allow (see store/lifecycles.py)."""


class StoreError(HeadendError):
    """The meter-data store failed or refused an operation."""


class UnknownMeter(StoreError):
    """The meter id is not registered in the store."""

    def __init__(self, meter_id: int) -> None:
        super().__init__(f"meter {meter_id} is not registered")
        self.meter_id = meter_id


class MissingDatabase(StoreError):
    """There is no database where one was to be opened (and none was created)."""


class SchemaError(StoreError):
    """The database schema is not one this head-end can use (older, newer, or none).

    ``have`` / ``want``: the database's version and this head-end's, when known.
    """

    def __init__(self, message: str, have: int | None = None, want: int | None = None) -> None:
        super().__init__(message)
        self.have = have
        self.want = want
