"""Missed reads of non-default schedules (D07): one row per (meter, slot, due time).

Table ``offschedule_gap`` (schema v7), lifecycle `GAP`. The primary key makes
detection idempotent across workers: whoever inserts the row first queues the
recovery read.
"""

from __future__ import annotations

from dataclasses import dataclass

from headend.store.db import Db, add_seq, seqs
from headend.store.lifecycles import GAP, GapEvent, GapState


@dataclass(frozen=True, slots=True)
class Gap:
    """A non-default schedule's read that did not arrive: intervals [start_s, due_s)."""

    meter_id: int
    slot: int
    due_s: int
    start_s: int
    state: GapState
    detected_ms: int
    attempts: int
    next_ms: int
    jobs: tuple[int, ...]
    closed_ms: int | None


_COLS = "meter_id, slot, due_s, start_s, state, detected_ms, attempts, next_ms, jobs, closed_ms"


class Gaps:
    """The offschedule_gap table over one `Db`."""

    def __init__(self, db: Db) -> None:
        self.db = db

    def detect(self, gap: Gap) -> bool:
        """Record a detected gap; False if it was recorded already (by any worker)."""
        with self.db.transaction():
            rows = self.db.query(
                f"INSERT INTO offschedule_gap ({_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, NULL) "
                "ON CONFLICT (meter_id, slot, due_s) DO NOTHING RETURNING meter_id",
                (
                    gap.meter_id,
                    gap.slot,
                    gap.due_s,
                    gap.start_s,
                    GAP.start.value,
                    gap.detected_ms,
                    gap.attempts,
                    gap.next_ms,
                    ",".join(map(str, gap.jobs)),
                ),
            )
        return bool(rows)

    def known(self, meter_id: int, slot: int, due_s: int) -> bool:
        with self.db.transaction(write=False):
            return bool(
                self.db.query(
                    "SELECT 1 FROM offschedule_gap WHERE meter_id = ? AND slot = ? AND due_s = ?",
                    (meter_id, slot, due_s),
                )
            )

    def find(self, state: GapState | None = None, meter_id: int | None = None) -> list[Gap]:
        """Gaps by meter, slot, due time; optionally one state, one meter."""
        where: list[str] = []
        params: list[object] = []
        if state is not None:
            where.append("state = ?")
            params.append(state.value)
        if meter_id is not None:
            where.append("meter_id = ?")
            params.append(meter_id)
        clause = ("WHERE " + " AND ".join(where)) if where else ""
        with self.db.transaction(write=False):
            rows = self.db.query(
                f"SELECT {_COLS} FROM offschedule_gap {clause} ORDER BY meter_id, slot, due_s",
                params,
            )
        return [
            Gap(
                int(m),
                int(s),
                int(d),
                int(st),
                GapState(state_),
                int(det),
                int(a),
                int(n),
                seqs(j),
                None if c is None else int(c),
            )
            for m, s, d, st, state_, det, a, n, j, c in rows
        ]

    def retry(self, gap: Gap, job_id: int, next_ms: int) -> None:
        """Another recovery read queued (attempt + 1)."""
        self._fire(
            gap,
            GapEvent.RETRY,
            ", attempts = attempts + 1, next_ms = ?, jobs = ?",
            (next_ms, add_seq(",".join(map(str, gap.jobs)), job_id)),
        )

    def close(self, gap: Gap, event: GapEvent, now_ms: int) -> None:
        """RECOVER or FAIL."""
        self._fire(gap, event, ", closed_ms = ?", (now_ms,))

    def _fire(self, gap: Gap, event: GapEvent, sets: str, params: tuple[object, ...]) -> None:
        key = {"meter_id": gap.meter_id, "slot": gap.slot, "due_s": gap.due_s}
        what = f"gap of meter {gap.meter_id} slot {gap.slot} due {gap.due_s}"
        GAP.fire(self.db, "offschedule_gap", key, event, what, sets, params)
