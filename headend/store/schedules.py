"""Schedules per meter and slot (H02, H07): written pending, sent, answered.

Table ``schedule`` (schema v2). Whoever changes a schedule (the evening
assignment, an operator's CLI, a party's API call) writes it as *pending*
with its source; the service sends it and records the meter's answer.
Every state change is an event of the `SCHEDULE` lifecycle
(`lifecycles.py`), applied by a conditional UPDATE derived from its table.
Every method is one transaction (re-entrant).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from headend.errors import InvalidData
from headend.store.db import Db, Row, add_seq, marks, opt, seqs
from headend.store.lifecycles import SCHEDULE, ScheduleEvent, ScheduleState
from headend.store.records import Schedule, ScheduleSpec
from headend.store.registry import require

_COLS = (
    "meter_id, slot, period_s, offset_s, start_s, end_s, what, cancel, source, state, seqs, "
    "attempts, requested_ms, sent_ms, acked_ms, flagged_ms, reason"
)


def _schedule(r: Row) -> Schedule:
    spec = ScheduleSpec(
        int(r[0]), int(r[1]), int(r[2]), int(r[3]), int(r[4]), int(r[5]), int(r[6]), bool(r[7])
    )
    return Schedule(
        spec,
        r[8],
        ScheduleState(r[9]),
        seqs(r[10]),
        int(r[11]),
        int(r[12]),
        opt(r[13]),
        opt(r[14]),
        opt(r[15]),
        opt(r[16]),
    )


class Schedules:
    """The schedule table over one `Db`."""

    def __init__(self, db: Db) -> None:
        self.db = db

    def put(self, spec: ScheduleSpec, source: str, now_ms: int) -> None:
        """Write a schedule (set, update or cancel) as pending; the service sends it."""
        if not source:
            raise InvalidData("a schedule needs its source (system or party)")
        write = ScheduleEvent.WRITE
        with self.db.transaction():
            require(self.db, spec.meter_id)
            n = self.db.execute(
                f"INSERT INTO schedule ({_COLS}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, '', 0, ?, NULL, NULL, NULL, NULL) "
                "ON CONFLICT (meter_id, slot) DO UPDATE SET period_s = excluded.period_s, "
                "offset_s = excluded.offset_s, start_s = excluded.start_s, end_s = excluded.end_s, "
                "what = excluded.what, cancel = excluded.cancel, source = excluded.source, "
                f"{SCHEDULE.sql_set(write, 'schedule.state')}, seqs = '', attempts = 0, "
                "requested_ms = excluded.requested_ms, sent_ms = NULL, acked_ms = NULL, "
                "flagged_ms = NULL, reason = NULL "
                f"WHERE {SCHEDULE.sql_where(write, 'schedule.state')}",
                (
                    spec.meter_id,
                    spec.slot,
                    spec.period_s,
                    spec.offset_s,
                    spec.start,
                    spec.end,
                    spec.what,
                    int(spec.cancel),
                    source,
                    SCHEDULE.start.value,
                    now_ms,
                ),
            )
            if not n:  # a state the table lets no write into: say which
                (state,) = self.db.query(
                    "SELECT state FROM schedule WHERE meter_id = ? AND slot = ?",
                    (spec.meter_id, spec.slot),
                )[0]
                SCHEDULE.next(ScheduleState(state), write, _what(spec.meter_id, spec.slot))

    def find(
        self,
        meter_id: int | None = None,
        states: Iterable[ScheduleState] = (),
        sent_by_ms: int | None = None,
        limit: int | None = None,
        claim: bool = False,
    ) -> list[Schedule]:
        """Schedule rows, by meter and slot; optionally one meter, some states, and
        only those sent at or before ``sent_by_ms`` (the ack timeout's scan: every
        tick, so never all of a large fleet's schedules), at most ``limit``.
        ``claim`` (inside the caller's write transaction): lock the rows, passing
        over those another worker is sending (`Db.skip_locked`)."""
        where: list[str] = []
        params: list[Any] = []
        if sent_by_ms is not None:
            where.append("sent_ms <= ?")
            params.append(sent_by_ms)
        if meter_id is not None:
            where.append("meter_id = ?")
            params.append(meter_id)
        st = [s.value for s in states]
        if st:
            where.append(f"state IN ({marks(len(st))})")
            params += st
        clause = ("WHERE " + " AND ".join(where)) if where else ""
        if limit is not None:
            clause += " ORDER BY meter_id, slot LIMIT ?"
            params.append(limit)
        else:
            clause += " ORDER BY meter_id, slot"
        with self.db.transaction(write=claim):
            rows = self.db.query(
                f"SELECT {_COLS} FROM schedule {clause}{self.db.skip_locked if claim else ''}",
                params,
            )
        return [_schedule(r) for r in rows]

    def non_default(self) -> list[Schedule]:
        """Non-default schedule rows (slot > 0, not a cancel), by meter and slot (D07)."""
        with self.db.transaction(write=False):
            rows = self.db.query(
                f"SELECT {_COLS} FROM schedule WHERE slot > 0 AND cancel = 0 "
                "ORDER BY meter_id, slot"
            )
        return [_schedule(r) for r in rows]

    def sent(self, meter_id: int, slot: int, seq: int, now_ms: int, event: ScheduleEvent) -> None:
        """Record a send (SEND) or a re-send after a missing ack (RESEND, flagged).

        Raises IllegalTransition if the schedule moved on meanwhile (rewritten,
        answered, or sent by another worker).
        """
        if event not in (ScheduleEvent.SEND, ScheduleEvent.RESEND):
            raise InvalidData(
                f"a send is {ScheduleEvent.SEND} or {ScheduleEvent.RESEND}, not {event}"
            )
        with self.db.transaction():
            rows = self.db.query(
                "SELECT seqs FROM schedule WHERE meter_id = ? AND slot = ?", (meter_id, slot)
            )
            if not rows:
                raise InvalidData(f"no {_what(meter_id, slot)}")
            flagged = ", flagged_ms = ?" if event is ScheduleEvent.RESEND else ""
            self._fire(
                meter_id,
                slot,
                event,
                f", seqs = ?, attempts = attempts + 1, sent_ms = ?{flagged}",
                (add_seq(rows[0][0], seq), now_ms, *((now_ms,) if flagged else ())),
            )

    def awaiting(self, meter_id: int, seq: int) -> Schedule | None:
        """The schedule of a meter, waiting for an answer, that was sent under ``seq``."""
        with self.db.transaction(write=False):
            rows = self.db.query(
                f"SELECT {_COLS} FROM schedule WHERE meter_id = ? "
                f"AND {SCHEDULE.sql_where(ScheduleEvent.ACK)} ORDER BY slot",
                (meter_id,),
            )
        for r in rows:
            sched = _schedule(r)
            if seq in sched.seqs:
                return sched
        return None

    def answer(
        self, meter_id: int, slot: int, event: ScheduleEvent, now_ms: int, reason: int | None
    ) -> None:
        """Record the meter's answer: ACK, ACK_CANCEL, NACK (``reason``), or BUSY (a nack
        that says nothing about the schedule: it waits for the next re-send)."""
        acked = None if event is ScheduleEvent.BUSY else now_ms
        self._fire(meter_id, slot, event, ", acked_ms = ?, reason = ?", (acked, reason))

    def _fire(
        self, meter_id: int, slot: int, event: ScheduleEvent, sets: str, params: tuple[Any, ...]
    ) -> None:
        key = {"meter_id": meter_id, "slot": slot}
        SCHEDULE.fire(self.db, "schedule", key, event, _what(meter_id, slot), sets, params)


def _what(meter_id: int, slot: int) -> str:
    return f"schedule of meter {meter_id} slot {slot}"
