"""Schedules per meter and slot (H02, H07): written pending, sent, answered.

Table ``schedule`` (schema v2). Whoever changes a schedule (the evening
assignment, an operator's CLI, a party's API call) writes it as *pending*
with its source; the service sends it and records the meter's answer.
Every method is one transaction (re-entrant).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from headend.errors import InvalidData
from headend.store.db import Db, Row, add_seq, marks, opt, seqs
from headend.store.records import Schedule, ScheduleSpec, ScheduleState
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
        with self.db.transaction():
            require(self.db, spec.meter_id)
            self.db.execute(
                f"INSERT INTO schedule ({_COLS}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, '', 0, ?, NULL, NULL, NULL, NULL) "
                "ON CONFLICT (meter_id, slot) DO UPDATE SET period_s = excluded.period_s, "
                "offset_s = excluded.offset_s, start_s = excluded.start_s, end_s = excluded.end_s, "
                "what = excluded.what, cancel = excluded.cancel, source = excluded.source, "
                "state = excluded.state, seqs = '', attempts = 0, "
                "requested_ms = excluded.requested_ms, sent_ms = NULL, acked_ms = NULL, "
                "flagged_ms = NULL, reason = NULL",
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
                    ScheduleState.PENDING.value,
                    now_ms,
                ),
            )

    def find(
        self, meter_id: int | None = None, states: Iterable[ScheduleState] = ()
    ) -> list[Schedule]:
        """Schedule rows, by meter and slot; optionally one meter and some states."""
        where: list[str] = []
        params: list[Any] = []
        if meter_id is not None:
            where.append("meter_id = ?")
            params.append(meter_id)
        st = [s.value for s in states]
        if st:
            where.append(f"state IN ({marks(len(st))})")
            params += st
        clause = ("WHERE " + " AND ".join(where)) if where else ""
        with self.db.transaction(write=False):
            rows = self.db.query(
                f"SELECT {_COLS} FROM schedule {clause} ORDER BY meter_id, slot", params
            )
        return [_schedule(r) for r in rows]

    def sent(self, meter_id: int, slot: int, seq: int, now_ms: int, flag: bool) -> bool:
        """Record a send (or a re-send after a missing ack when ``flag``); False if superseded."""
        with self.db.transaction():
            rows = self.db.query(
                "SELECT state, seqs FROM schedule WHERE meter_id = ? AND slot = ?", (meter_id, slot)
            )
            if not rows or rows[0][0] not in ("pending", "sent", "flagged"):
                return False
            state = ScheduleState.FLAGGED if flag else ScheduleState.SENT
            self.db.execute(
                "UPDATE schedule SET state = ?, seqs = ?, attempts = attempts + 1, sent_ms = ?, "
                "flagged_ms = CASE WHEN ? = 1 THEN ? ELSE flagged_ms END "
                "WHERE meter_id = ? AND slot = ?",
                (state.value, add_seq(rows[0][1], seq), now_ms, int(flag), now_ms, meter_id, slot),
            )
        return True

    def answered(self, meter_id: int, seq: int, status: int, now_ms: int) -> Schedule | None:
        """Record the meter's answer (status 0 = ack, else the nack reason) to the send
        under ``seq``; returns the schedule as it was, or None if no open one matches."""
        with self.db.transaction():
            rows = self.db.query(
                f"SELECT {_COLS} FROM schedule WHERE meter_id = ? "
                "AND state IN ('sent', 'flagged') ORDER BY slot",
                (meter_id,),
            )
            for r in rows:
                sched = _schedule(r)
                if seq not in sched.seqs:
                    continue
                if status:
                    new = ScheduleState.NACKED
                elif sched.spec.cancel:
                    new = ScheduleState.CANCELLED
                else:
                    new = ScheduleState.ACKED
                self.db.execute(
                    "UPDATE schedule SET state = ?, acked_ms = ?, reason = ? "
                    "WHERE meter_id = ? AND slot = ?",
                    (new.value, now_ms, status or None, meter_id, sched.spec.slot),
                )
                return sched
        return None

    def reopen(self, meter_id: int, slot: int) -> None:
        """A nacked send that says nothing about the schedule (replay, busy): back to
        ``sent``, so the missing-ack check re-sends it after the timeout."""
        with self.db.transaction():
            self.db.execute(
                "UPDATE schedule SET state = 'sent', acked_ms = NULL "
                "WHERE meter_id = ? AND slot = ? AND state = 'nacked'",
                (meter_id, slot),
            )
