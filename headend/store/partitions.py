"""Interval data by month on PostgreSQL, and retention (T06) on both backends.

On PostgreSQL ``interval_day`` is partitioned by range of ``day`` (UTC s), one
partition per UTC month (``interval_day_YYYYMM``) and a default partition that
takes a row no month partition holds yet, so an insert never fails. The SQL
function ``interval_day_month(s)`` creates the month of ``s`` if it is missing,
moving that month's rows out of the default partition first; `ensure` calls it
for the months ahead (at store open and in the daily check), so the default
stays empty in normal operation. SQLite keeps one table.

A move must not hide rows from a query running beside it: ATTACH PARTITION lets
a query lock the parent while the new month is made, and such a query, planned
on the partitions of before, read the default emptied by the move (an export's
validation found a whole day "missing" that its own file held). So the function
(`MONTH_FUNCTION`, schema version 12) first holds writers off (SHARE on the
parent: no row reaches the default meanwhile) and, when rows are to move, every
reader too (ACCESS EXCLUSIVE): a query waits and is planned on the new
partitions. An empty month, the normal case, is made without stopping readers.

Retention drops whole months: on PostgreSQL the partitions that end before the
cut-off (``DROP TABLE``: no row-by-row delete, no bloat), on SQLite the rows of
those months. Third-party activity logs are kept at least as long (T06: the
config refuses a shorter log retention); 0 keeps data forever.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

from headend.store.db import Db

DEFAULT = "interval_day_default"
_MONTH = re.compile(r"^interval_day_(\d{4})(\d{2})$")

_MONTH_SQL = """
CREATE OR REPLACE FUNCTION interval_day_month(at_s BIGINT) RETURNS TEXT
LANGUAGE plpgsql AS $f$
DECLARE
    m TIMESTAMP := date_trunc('month', to_timestamp(at_s) AT TIME ZONE 'UTC');
    lo BIGINT := CAST(extract(epoch FROM m) AS BIGINT);
    hi BIGINT := CAST(extract(epoch FROM m + interval '1 month') AS BIGINT);
    part TEXT := 'interval_day_' || to_char(m, 'YYYYMM');
BEGIN
    -- two workers ensuring the same month: one creates it, the other finds it
    PERFORM pg_advisory_xact_lock(hashtext(current_schema() || 'interval_day_month'));
    IF to_regclass(part) IS NOT NULL THEN
        RETURN part;
    END IF;
%s    EXECUTE format('CREATE TABLE %%I (LIKE interval_day INCLUDING DEFAULTS)', part);
    EXECUTE format('INSERT INTO %%I SELECT * FROM interval_day_default '
                   'WHERE day >= %%s AND day < %%s', part, lo, hi);
    EXECUTE format('DELETE FROM interval_day_default WHERE day >= %%s AND day < %%s', lo, hi);
    EXECUTE format('ALTER TABLE interval_day ATTACH PARTITION %%I FOR VALUES FROM (%%s) TO (%%s)',
                   part, lo, hi);
    RETURN part;
END
$f$
"""
#: as migration 8 made it (a migration is never edited: `MONTH_FUNCTION` replaces it)
_FUNCTION_V8 = _MONTH_SQL % ""
#: Schema version 12: the locks that keep a move from readers
MONTH_FUNCTION = (
    _MONTH_SQL
    % """\
    -- no writer meanwhile: what the default holds of the month is all there is to move
    LOCK TABLE interval_day IN SHARE MODE;
    IF EXISTS (SELECT 1 FROM interval_day_default WHERE day >= lo AND day < hi) THEN
        -- no reader either: one planned before the move would miss the moved rows
        LOCK TABLE interval_day IN ACCESS EXCLUSIVE MODE;
    END IF;
"""
)

#: Migration 8 on PostgreSQL: the v7 table becomes a partitioned one, every row kept
#: (copied into the month partitions of its days, then the old table dropped). A table
#: that is partitioned already is left as it is.
CONVERT: tuple[str, ...] = (
    _FUNCTION_V8,
    """DO $conv$
    DECLARE lo BIGINT; hi BIGINT; m TIMESTAMP;
    BEGIN
        IF (SELECT relkind FROM pg_class WHERE oid = to_regclass('interval_day')) = 'p' THEN
            RETURN;
        END IF;
        ALTER TABLE interval_day RENAME TO interval_day_v7;
        ALTER INDEX interval_day_pkey RENAME TO interval_day_v7_pkey;
        ALTER INDEX interval_day_day RENAME TO interval_day_v7_day;
        CREATE TABLE interval_day (
            meter_id BIGINT NOT NULL REFERENCES meter (meter_id),
            day BIGINT NOT NULL,
            interval_s INTEGER NOT NULL,
            n_channels INTEGER NOT NULL,
            n_present INTEGER NOT NULL,
            vals BYTEA NOT NULL,
            flags BYTEA NOT NULL,
            srcs BYTEA NOT NULL,
            updated_at BIGINT NOT NULL,
            PRIMARY KEY (meter_id, day)
        ) PARTITION BY RANGE (day);
        CREATE INDEX interval_day_day ON interval_day (day);
        CREATE TABLE interval_day_default PARTITION OF interval_day DEFAULT;
        -- the months of the rows held (min..max: two index reads, not a scan)
        SELECT MIN(day), MAX(day) INTO lo, hi FROM interval_day_v7;
        IF lo IS NOT NULL THEN
            m := date_trunc('month', to_timestamp(lo) AT TIME ZONE 'UTC');
            WHILE CAST(extract(epoch FROM m) AS BIGINT) <= hi LOOP
                PERFORM interval_day_month(CAST(extract(epoch FROM m) AS BIGINT));
                m := m + interval '1 month';
            END LOOP;
        END IF;
        INSERT INTO interval_day SELECT * FROM interval_day_v7;
        DROP TABLE interval_day_v7;
    END
    $conv$""",
)


def month_start(s: int) -> int:
    """UTC s of the start of the UTC month holding ``s``."""
    d = datetime.fromtimestamp(s, UTC)
    return int(datetime(d.year, d.month, 1, tzinfo=UTC).timestamp())


def next_month(s: int) -> int:
    """UTC s of the start of the month after the one holding ``s``."""
    d = datetime.fromtimestamp(month_start(s), UTC)
    y, m = (d.year + 1, 1) if d.month == 12 else (d.year, d.month + 1)
    return int(datetime(y, m, 1, tzinfo=UTC).timestamp())


def partitioned(db: Db) -> bool:
    """True where interval data is partitioned by month (PostgreSQL)."""
    return db.dialect == "postgres"


def ensure(db: Db, now_s: int, ahead: int = 2) -> list[str]:
    """Create the partitions of the month of ``now_s`` and ``ahead`` months after it
    (PostgreSQL; nothing elsewhere). Returns the partitions' names."""
    if not partitioned(db):
        return []
    names: list[str] = []
    at = month_start(now_s)
    with db.transaction():
        for _ in range(ahead + 1):
            names.append(str(db.query("SELECT interval_day_month(?)", (at,))[0][0]))
            at = next_month(at)
    return names


def months(db: Db) -> list[tuple[str, int, int]]:
    """The month partitions (name, first s, end s), oldest first (PostgreSQL)."""
    if not partitioned(db):
        return []
    rows = db.query(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = CAST('interval_day' AS regclass)"
    )
    out = []
    for (name,) in rows:
        m = _MONTH.match(str(name))
        if m:
            lo = int(datetime(int(m[1]), int(m[2]), 1, tzinfo=UTC).timestamp())
            out.append((str(name), lo, next_month(lo)))
    return sorted(out, key=lambda p: p[1])


@dataclass(frozen=True)
class Dropped:
    """What a retention pass removed."""

    cutoff_s: int  # interval data of days before this (a month start) is gone
    partitions: list[str]
    rows: int  # day rows deleted (SQLite, or PostgreSQL's default partition)
    log_rows: int  # activity lines deleted


def apply_retention(db: Db, now_s: int, keep_days: int, log_keep_days: int) -> Dropped | None:
    """Drop the whole months of interval data that ended ``keep_days`` before ``now_s``,
    and activity older than ``log_keep_days`` (0: keep forever). None if nothing is due
    to go (``keep_days`` 0)."""
    if keep_days <= 0:
        return None
    cutoff = month_start(now_s - keep_days * 86_400)
    with db.transaction():
        gone = [name for name, _, hi in months(db) if hi <= cutoff]
        for name in gone:
            db.execute(f"DROP TABLE {name}")  # name from the catalogue, matching _MONTH
        table = DEFAULT if partitioned(db) else "interval_day"
        rows = db.execute(f"DELETE FROM {table} WHERE day < ?", (cutoff,))
        log_rows = 0
        if log_keep_days > 0:
            # never newer than the interval cut-off: the logs outlive the data (T06)
            log_cut_ms = min(now_s - log_keep_days * 86_400, cutoff) * 1000
            log_rows = db.execute("DELETE FROM activity WHERE at_ms < ?", (log_cut_ms,))
            if db.table_exists("portal_log"):  # the portal's request log goes alike (T06)
                log_rows += db.execute("DELETE FROM portal_log WHERE at_ms < ?", (log_cut_ms,))
    return Dropped(cutoff, gone, rows, log_rows)
