"""The activity log: what the head-end did or refused, to which meter, and why.

One line per registration, send, ack, retry, failure, bad frame... (table
``activity``, schema v2), so an operator can follow a meter's story with
``headend log``. Each line has a `Kind` (one word, easy to filter on).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Any

from headend.store.db import Db, marks, opt
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


class ActivityLog:
    """The activity table over one `Db`."""

    def __init__(self, db: Db) -> None:
        self.db = db

    def log(
        self,
        at_ms: int,
        kind: Kind,
        detail: str,
        meter_id: int | None = None,
        ref: str | None = None,
    ) -> None:
        """Append one line."""
        with self.db.transaction():
            self.db.execute(
                "INSERT INTO activity (at_ms, meter_id, kind, detail, ref) VALUES (?, ?, ?, ?, ?)",
                (at_ms, meter_id, str(kind), detail, ref),
            )

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
