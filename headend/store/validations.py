"""Usage validation results (D14, schema v9): the latest outcome of each check per
meter and billing period, kept so that other systems (billing) can read them
(``SELECT ... FROM validation_result``) without running the checks again."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from headend.store.db import Db, chunks


@dataclass(frozen=True)
class StoredResult:
    meter_id: int
    start: int
    end: int
    check: str
    status: str
    detail: str
    at_ms: int


class Validations:
    """validation_result over one `Db`."""

    def __init__(self, db: Db) -> None:
        self.db = db

    def save(
        self, start: int, end: int, results: Sequence[tuple[int, str, str, str]], now_ms: int
    ) -> None:
        """Store (meter, check, status, detail) results of the period, replacing older ones."""
        types = ("bigint", "bigint", "bigint", "text", "text", "text", "bigint")
        with self.db.transaction():
            for chunk in chunks(results, self.db.chunk_rows):
                source, params = self.db.rows_source(
                    types, [(m, start, end, c, s, d, now_ms) for m, c, s, d in chunk]
                )
                self.db.execute(
                    "INSERT INTO validation_result (meter_id, start_s, end_s, check_name, "
                    f"status, detail, at_ms) {source} "
                    "ON CONFLICT (meter_id, start_s, end_s, check_name) DO UPDATE SET "
                    "status = excluded.status, detail = excluded.detail, at_ms = excluded.at_ms",
                    params,
                )

    def results(
        self, meter_id: int | None = None, status: str | None = None, limit: int = 1000
    ) -> list[StoredResult]:
        """Stored results, newest period first (of one meter / one status, or all)."""
        where: list[str] = []
        params: list[object] = []
        if meter_id is not None:
            where.append("meter_id = ?")
            params.append(meter_id)
        if status is not None:
            where.append("status = ?")
            params.append(status)
        sql = (
            "SELECT meter_id, start_s, end_s, check_name, status, detail, at_ms "
            "FROM validation_result"
            + (" WHERE " + " AND ".join(where) if where else "")
            + f" ORDER BY start_s DESC, meter_id, check_name LIMIT {int(limit)}"
        )
        with self.db.transaction(write=False):
            rows = self.db.query(sql, params)
        return [
            StoredResult(int(m), int(a), int(b), str(c), str(s), str(d), int(t))
            for m, a, b, c, s, d, t in rows
        ]
