"""The activity log: what the head-end did or refused, to which meter, and why.

One line per registration, send, ack, retry, failure, bad frame... (table
``activity``, schema v2), so an operator can follow a meter's story with
``headend log``. Each line has a `Kind` (one word, easy to filter on).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from typing import Any

from headend.store.db import Db, chunks, marks, opt
from headend.store.records import Activity


class Kind(enum.StrEnum):
    """What an activity line is about."""

    REGISTERED = "registered"
    SCHEDULE_SET = "schedule_set"
    SCHEDULE_SENT = "schedule_sent"
    SCHEDULE_ACK = "schedule_ack"
    SCHEDULE_NACK = "schedule_nack"
    SCHEDULE_ACK_MISSING = "schedule_ack_missing"
    GROUP_ASSIGNED = "group_assigned"
    READ_QUEUED = "read_queued"
    READ_SENT = "read_sent"
    READ_RETRY = "read_retry"
    READ_DONE = "read_done"
    READ_FAILED = "read_failed"
    READ_ACKED = "read_acked_by_requester"
    DATA_STORED = "data_stored"
    EVENT_STORED = "event_stored"
    DELIVERY_ACKED = "delivery_acked"
    DELIVERY_EXPIRED = "delivery_expired"
    TIME_SET = "time_set"
    LINK_CHANGED = "link_changed"
    BAD_FRAME = "bad_frame"
    UNKNOWN_METER = "unknown_meter"
    REJECTED = "rejected"
    LAYOUT_HELD = "layout_held"
    LAYOUT_ACCEPTED = "layout_accepted"
    KEY_ROTATION = "key_rotation"
    KEY_SENT = "key_sent"
    KEY_CONFIRMED = "key_confirmed"
    STORE_FAILED = "store_failed"
    PROBE_KEY_ISSUED = "probe_key_issued"
    MANUAL_UPLOAD = "manual_upload"
    UPLOAD_REFUSED = "upload_refused"
    DAILY_CHECK = "daily_check"
    MISSING_FOUND = "missing_found"
    RECOVERY_DONE = "recovery_done"
    RECOVERY_FAILED = "recovery_failed"
    TROUBLE_OPENED = "trouble_opened"
    TROUBLE_CLOSED = "trouble_closed"
    OFFSCHEDULE_MISSING = "offschedule_missing"
    OFFSCHEDULE_RECOVERED = "offschedule_recovered"
    OFFSCHEDULE_FAILED = "offschedule_failed"
    SCHEDULE_VERIFY = "schedule_verify"
    REBALANCE = "rebalance"


_LINE_TYPES = ("bigint", "text", "text", "bigint", "text")


class ActivityLog:
    """The activity table over one `Db`."""

    def __init__(self, db: Db) -> None:
        self.db = db
        # while `holding`: lines logged, written by `write_held` (one statement for a
        # batch of uplinks, in its transaction)
        self._held: list[tuple[int, str, str, int | None, str | None]] | None = None

    def log(
        self,
        at_ms: int,
        kind: Kind,
        detail: str,
        meter_id: int | None = None,
        ref: str | None = None,
    ) -> None:
        """Append one line."""
        if self._held is not None:
            self._held.append((at_ms, str(kind), detail, meter_id, ref))
            return
        with self.db.transaction():
            self.db.execute(
                "INSERT INTO activity (at_ms, meter_id, kind, detail, ref) VALUES (?, ?, ?, ?, ?)",
                (at_ms, meter_id, str(kind), detail, ref),
            )

    def log_many(self, rows: Iterable[tuple[int, Kind, str, int | None, str | None]]) -> None:
        """Append lines (at_ms, kind, detail, meter_id, ref) in one statement per batch."""
        batch = [(at, str(k), d, m, r) for at, k, d, m, r in rows]
        if self._held is not None:
            self._held += batch
        elif batch:
            self._insert(batch)

    def _insert(self, batch: list[tuple[int, str, str, int | None, str | None]]) -> None:
        # one statement per chunk, not per line: on PostgreSQL each execution costs
        # as much as a line's data (a batch of uplinks logs two lines per frame)
        db = self.db
        with db.transaction():
            for chunk in chunks(batch, db.chunk_rows):
                source, params = db.rows_source(_LINE_TYPES, chunk)
                db.execute(
                    f"INSERT INTO activity (at_ms, kind, detail, meter_id, ref) {source}", params
                )

    # -- held lines: a batch of uplinks writes its lines in one statement ---------------------

    def hold(self) -> None:
        """Keep the lines logged from now on until `write_held` (or `drop_held`)."""
        self._held = []

    def mark(self) -> int:
        """How many lines are held (for `drop_to`)."""
        return len(self._held) if self._held is not None else 0

    def drop_to(self, mark: int) -> None:
        """Forget the lines held since ``mark`` (their savepoint was rolled back)."""
        if self._held is not None:
            del self._held[mark:]

    def write_held(self) -> None:
        """Write the held lines (inside the batch's transaction) and stop holding."""
        held, self._held = self._held, None
        if held:
            self._insert(held)

    def drop_held(self) -> None:
        """Stop holding; the held lines are dropped (their transaction failed)."""
        self._held = None

    def lines(
        self,
        meter_id: int | None = None,
        kinds: Sequence[str] = (),
        since_ms: int = 0,
        limit: int = 1000,
        newest: bool = False,
        after_id: int = 0,
    ) -> list[Activity]:
        """Lines, oldest first: the first ``limit`` from ``since_ms``, or with
        ``newest`` the last ``limit``. ``after_id``: only lines logged after that one
        (to follow the log)."""
        where = ["at_ms >= ?", "activity_id > ?"]
        params: list[Any] = [since_ms, after_id]
        if meter_id is not None:
            where.append("meter_id = ?")
            params.append(meter_id)
        if kinds:
            where.append(f"kind IN ({marks(len(kinds))})")
            params += [str(k) for k in kinds]
        with self.db.transaction(write=False):
            rows = self.db.query(
                "SELECT activity_id, at_ms, meter_id, kind, detail, ref FROM activity "
                f"WHERE {' AND '.join(where)} "
                f"ORDER BY activity_id {'DESC' if newest else ''} LIMIT ?",
                [*params, limit],
            )
        if newest:
            rows.reverse()
        return [Activity(int(i), int(a), opt(m), k, d, r) for i, a, m, k, d, r in rows]
