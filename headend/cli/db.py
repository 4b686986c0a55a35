"""`headend db init|migrate|version|retention`: the store's schema, and its retention."""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime
from typing import Any

from headend.api import Config
from headend.cli.common import OK, Failed, Sub, Usage, add_command, emit, redact, sqlite_path
from headend.store import migrations as mig
from headend.store import partitions
from headend.store.db import Db


def add(sub: Sub, common: argparse.ArgumentParser) -> None:
    p = add_command(sub, common, "db", "create or migrate the store's schema, or show its version")
    p.add_argument(
        "action",
        choices=("init", "migrate", "version", "retention"),
        help="init/migrate: bring the schema to the latest version; version: show it; "
        "retention: create the months ahead (PostgreSQL) and drop the whole months of "
        "interval data older than retention_days, logs older than log_retention_days",
    )
    p.set_defaults(run=run)


def _open(url: str, create: bool) -> Db:
    """A `Db` adapter, not migrated (``create``: a missing SQLite file is created)."""
    if url.startswith(("postgresql://", "postgres://")):
        from headend.store.postgres import PostgresDb

        return PostgresDb(url)
    from headend.store.sqlite import SqliteDb

    if url.startswith("sqlite://") and not url.startswith("sqlite:///"):
        raise Usage(f"database URL {url!r}: expected sqlite:///path")
    if "://" in url and not url.startswith("sqlite://"):
        raise Usage(f"database URL {url!r}: expected sqlite:///... or postgresql://...")
    path = sqlite_path(url)
    if path is None:
        return SqliteDb(":memory:")
    if create:
        path.parent.mkdir(parents=True, exist_ok=True)  # the default lives in ./var/
    elif not path.is_file():
        raise Failed(f"no database at {path}: create it with `headend db init`")
    return SqliteDb(path, create=create)


def run(args: argparse.Namespace, cfg: Config) -> int:
    db = _open(cfg.database, create=args.action != "version")
    try:
        if args.action == "version":
            with db.transaction(write=False):
                have = mig.current_version(db)
            latest = mig.latest_version()
            emit(
                args,
                {"version": have, "latest": latest},
                lambda: (
                    f"schema version {have} (this head-end: {latest})"
                    + ("" if have == latest else "; run `headend db migrate`")
                ),
            )
            return OK
        if args.action == "retention":
            return _retention(args, cfg, db)
        applied = mig.migrate(db)
        with db.transaction(write=False):
            version = mig.current_version(db)
    finally:
        db.close()
    out: dict[str, Any] = {"applied": applied, "version": version}
    emit(
        args,
        out,
        lambda: (
            (f"applied migration(s) {applied}; " if applied else "nothing to apply; ")
            + f"schema version {version} ({redact(cfg.database)})"
        ),
    )
    return OK


def _retention(args: argparse.Namespace, cfg: Config, db: Db) -> int:
    mig.check_version(db)
    now_s = int(time.time())
    ahead = partitions.ensure(db, now_s)
    gone = partitions.apply_retention(db, now_s, cfg.retention_days, cfg.log_retention_days)
    out: dict[str, Any] = {
        "retention_days": cfg.retention_days,
        "log_retention_days": cfg.log_retention_days,
        "partitions": [name for name, _, _ in partitions.months(db)],
        "ahead": ahead,
        "cutoff_s": gone.cutoff_s if gone else None,
        "dropped": gone.partitions if gone else [],
        "rows": gone.rows if gone else 0,
        "log_rows": gone.log_rows if gone else 0,
    }

    def text() -> str:
        if gone is None:
            return "retention_days is 0: interval data is kept forever; nothing dropped"
        cut = datetime.fromtimestamp(gone.cutoff_s, UTC).strftime("%Y-%m-%d")
        return (
            f"interval data before {cut} dropped: {len(gone.partitions)} partition(s)"
            f"{' (' + ', '.join(gone.partitions) + ')' if gone.partitions else ''}, "
            f"{gone.rows} day row(s); {gone.log_rows} log line(s)"
        )

    emit(args, out, text)
    return OK
