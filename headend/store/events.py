"""Stored meter events, their routes and the deliveries to recipients (D09, N03).

Tables ``meter_event`` (schema v1; rows are inserted by `Readings.ingest`),
``event_route`` and ``delivery`` (v2). A delivery carries an event, an
on-demand read's result or a trouble notice to one recipient and is re-sent
until acknowledged. Every method is one transaction (re-entrant).
"""

from __future__ import annotations

from collections.abc import Sequence

from headend.store.base import EventRecord
from headend.store.db import Db, Row, chunks, opt
from headend.store.readings import SOURCES
from headend.store.records import Delivery, DeliveryState, Route, check_recipient
from headend.store.registry import require

_DELIVERY_COLS = (
    "delivery_id, recipient, kind, event_id, job_id, payload, state, created_ms, sent_ms, "
    "next_ms, attempts, acked_ms"
)
_OPEN = "('pending', 'sent')"  # deliveries still re-sent until acked


def _delivery(r: Row) -> Delivery:
    return Delivery(
        int(r[0]),
        r[1],
        r[2],
        opt(r[3]),
        opt(r[4]),
        r[5],
        DeliveryState(r[6]),
        int(r[7]),
        opt(r[8]),
        int(r[9]),
        int(r[10]),
        opt(r[11]),
    )


class Events:
    """Meter events, routes and deliveries over one `Db`."""

    def __init__(self, db: Db) -> None:
        self.db = db

    # -- stored events -----------------------------------------------------------------------

    def between(self, meter_id: int, start: int, end: int) -> list[EventRecord]:
        """Events with ``start <= time < end``, ascending by time then code. UnknownMeter."""
        with self.db.transaction(write=False):
            require(self.db, meter_id)
            rows = self.db.query(
                "SELECT code, time, data, source, received_at, seq FROM meter_event "
                "WHERE meter_id = ? AND time >= ? AND time < ? ORDER BY time, code, data",
                (meter_id, start, end),
            )
        return [
            EventRecord(meter_id, int(c), int(t), int(d), SOURCES[s], int(r), opt(q))
            for c, t, d, s, r, q in rows
        ]

    def ids(
        self, meter_id: int, keys: Sequence[tuple[int, int, int]]
    ) -> dict[tuple[int, int, int], int]:
        """(time, code, data) -> event_id for stored events of a meter.

        Exact lookups on the event's identity (the UNIQUE index): the cost follows
        ``len(keys)``, not how many events the meter has or how far apart they lie.
        """
        out: dict[tuple[int, int, int], int] = {}
        want = sorted(set(keys))
        with self.db.transaction(write=False):
            for chunk in chunks(want, max(1, self.db.chunk_rows // 4)):
                # the meter id in every term: each is one lookup of the whole UNIQUE key
                # (with it factored out, SQLite scans all of the meter's events)
                one = "(meter_id = ? AND time = ? AND code = ? AND data = ?)"
                for eid, t, c, d in self.db.query(
                    "SELECT event_id, time, code, data FROM meter_event "
                    f"WHERE {' OR '.join([one] * len(chunk))}",
                    [v for k in chunk for v in (meter_id, *k)],
                ):
                    out[(int(t), int(c), int(d))] = int(eid)
        return out

    def recent(
        self, meter_id: int | None = None, since_s: int = 0, limit: int = 200
    ) -> list[tuple[int, int, int, int, int, int]]:
        """(event_id, meter, time, code, data, received_at) of stored events, newest first."""
        where, params = "WHERE time >= ?", [since_s]
        if meter_id is not None:
            where += " AND meter_id = ?"
            params.append(meter_id)
        with self.db.transaction(write=False):
            rows = self.db.query(
                "SELECT event_id, meter_id, time, code, data, received_at FROM meter_event "
                f"{where} ORDER BY time DESC, event_id DESC LIMIT ?",
                [*params, limit],
            )
        return [(int(a), int(b), int(c), int(d), int(e), int(f)) for a, b, c, d, e, f in rows]

    # -- routes ------------------------------------------------------------------------------

    def add_route(self, code: int, recipient: str, now_ms: int) -> bool:
        """Route event ``code`` (0 = all) to ``recipient``; False if it was routed already."""
        r = Route(code, recipient, now_ms)
        with self.db.transaction():
            return bool(
                self.db.query(
                    "INSERT INTO event_route (code, recipient, added_ms) VALUES (?, ?, ?) "
                    "ON CONFLICT (code, recipient) DO NOTHING RETURNING code",
                    (r.code, r.recipient, now_ms),
                )
            )

    def remove_route(self, code: int, recipient: str) -> bool:
        with self.db.transaction():
            return bool(
                self.db.execute(
                    "DELETE FROM event_route WHERE code = ? AND recipient = ?",
                    (int(code), recipient),
                )
            )

    def routes(self) -> list[Route]:
        with self.db.transaction(write=False):
            rows = self.db.query(
                "SELECT code, recipient, added_ms FROM event_route ORDER BY code, recipient"
            )
        return [Route(int(c), r, int(a)) for c, r, a in rows]

    # -- deliveries --------------------------------------------------------------------------

    def add_delivery(
        self,
        recipient: str,
        kind: str,
        payload: str,
        now_ms: int,
        event_id: int | None = None,
        job_id: int | None = None,
    ) -> int | None:
        """Queue a message for a recipient; None if this event already goes to it."""
        check_recipient(recipient)
        with self.db.transaction():
            rows = self.db.query(
                "INSERT INTO delivery (recipient, kind, event_id, job_id, payload, state, "
                "created_ms, next_ms, attempts) VALUES (?, ?, ?, ?, ?, 'pending', ?, ?, 0) "
                "ON CONFLICT (event_id, recipient) DO NOTHING RETURNING delivery_id",
                (recipient, kind, event_id, job_id, payload, now_ms, now_ms),
            )
        return int(rows[0][0]) if rows else None

    def due(self, now_ms: int, limit: int = 500) -> list[Delivery]:
        """Unacknowledged deliveries whose (re-)send time has come, oldest first."""
        with self.db.transaction(write=False):
            rows = self.db.query(
                f"SELECT {_DELIVERY_COLS} FROM delivery WHERE state IN {_OPEN} "
                "AND next_ms <= ? ORDER BY next_ms, delivery_id LIMIT ?",
                (now_ms, limit),
            )
        return [_delivery(r) for r in rows]

    def sent(self, delivery_id: int, now_ms: int, next_ms: int, expire: bool) -> None:
        """Record a send; ``expire`` marks the last allowed attempt."""
        with self.db.transaction():
            self.db.execute(
                "UPDATE delivery SET sent_ms = COALESCE(sent_ms, ?), next_ms = ?, "
                "attempts = attempts + 1, state = CASE WHEN state = 'acked' THEN state "
                "WHEN ? = 1 THEN 'expired' ELSE 'sent' END WHERE delivery_id = ?",
                (now_ms, next_ms, int(expire), delivery_id),
            )

    def acknowledge(self, delivery_id: int, now_ms: int) -> Delivery | None:
        """Record a recipient's ack (once); returns the delivery, None if unknown or acked."""
        with self.db.transaction():
            n = self.db.execute(
                "UPDATE delivery SET state = 'acked', acked_ms = ? "
                "WHERE delivery_id = ? AND state IN ('pending', 'sent', 'expired')",
                (now_ms, delivery_id),
            )
            if not n:
                return None
            return self.get(delivery_id)

    def acknowledge_job(self, job_id: int, now_ms: int) -> int:
        """The requester took a job's result another way (the CLI printed it): its
        deliveries stop. Returns how many were still open."""
        with self.db.transaction():
            return self.db.execute(
                "UPDATE delivery SET state = 'acked', acked_ms = ? "
                f"WHERE job_id = ? AND state IN {_OPEN}",
                (now_ms, job_id),
            )

    def open_of_job(self, job_id: int) -> int:
        """How many of a job's deliveries are still unacknowledged (expired ones too)."""
        with self.db.transaction(write=False):
            rows = self.db.query(
                "SELECT COUNT(*) FROM delivery WHERE job_id = ? AND state <> 'acked'", (job_id,)
            )
        return int(rows[0][0])

    def delivery_counts(self) -> dict[str, int]:
        """Deliveries per state (`DeliveryState` values; absent states count 0), and
        ``retrying``: the unacked ones already sent at least once (the operator page)."""
        with self.db.transaction(write=False):
            rows = self.db.query("SELECT state, COUNT(*) FROM delivery GROUP BY state")
            retry = self.db.query(
                f"SELECT COUNT(*) FROM delivery WHERE state IN {_OPEN} AND attempts > 0"
            )
        counts = {s.value: 0 for s in DeliveryState}
        counts.update({str(s): int(n) for s, n in rows})
        counts["retrying"] = int(retry[0][0])
        return counts

    def get(self, delivery_id: int) -> Delivery | None:
        with self.db.transaction(write=False):
            rows = self.db.query(
                f"SELECT {_DELIVERY_COLS} FROM delivery WHERE delivery_id = ?", (delivery_id,)
            )
        return _delivery(rows[0]) if rows else None

    def deliveries(
        self, event_id: int | None = None, job_id: int | None = None, limit: int = 1000
    ) -> list[Delivery]:
        """Deliveries, oldest first; optionally of one event or one job."""
        where, params = "", [limit]
        if event_id is not None:
            where, params = "WHERE event_id = ?", [event_id, limit]
        elif job_id is not None:
            where, params = "WHERE job_id = ?", [job_id, limit]
        with self.db.transaction(write=False):
            rows = self.db.query(
                f"SELECT {_DELIVERY_COLS} FROM delivery {where} ORDER BY delivery_id LIMIT ?",
                params,
            )
        return [_delivery(r) for r in rows]
