"""Read-group rebalancing records (H03): each run's analysis and the meters it moved.

Tables ``rebalance_run`` and ``rebalance_move`` (schema v7). A move's
acknowledgement is the meter's slot-0 schedule row (``schedule``), written
by the run with source ``system:rebalance``; `moves` joins it in.
"""

from __future__ import annotations

from dataclasses import dataclass

from headend.store.db import Db, opt


@dataclass(frozen=True, slots=True)
class MoveRow:
    """A move of a run, with the state of the schedule it sent."""

    run_id: int
    meter_id: int
    from_grp: int
    to_grp: int
    from_offset_s: int
    to_offset_s: int
    why: str
    schedule_state: str | None
    acked_ms: int | None


class Rebalances:
    """The rebalance_run and rebalance_move tables over one `Db`."""

    def __init__(self, db: Db) -> None:
        self.db = db

    def record(
        self,
        at_ms: int,
        first_day: int,
        days: int,
        analysis: str,
        moves: list[tuple[int, int, int, int, int, str]],
    ) -> int:
        """Write a run and its moves (meter, from, to, from offset, to offset, why)."""
        with self.db.transaction():
            rows = self.db.query(
                "INSERT INTO rebalance_run (at_ms, first_day, days, analysis, moved) "
                "VALUES (?, ?, ?, ?, ?) RETURNING run_id",
                (at_ms, first_day, days, analysis, len(moves)),
            )
            run_id = int(rows[0][0])
            if moves:
                self.db.executemany(
                    "INSERT INTO rebalance_move (run_id, meter_id, from_grp, to_grp, "
                    "from_offset_s, to_offset_s, why) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [(run_id, *m) for m in moves],
                )
        return run_id

    def last(self) -> tuple[int, int, int, int, str] | None:
        """(run id, at ms, first day, days, analysis JSON) of the newest run."""
        with self.db.transaction(write=False):
            rows = self.db.query(
                "SELECT run_id, at_ms, first_day, days, analysis FROM rebalance_run "
                "ORDER BY run_id DESC LIMIT 1"
            )
        if not rows:
            return None
        r = rows[0]
        return int(r[0]), int(r[1]), int(r[2]), int(r[3]), str(r[4])

    def moves(self, run_id: int) -> list[MoveRow]:
        """A run's moves by meter, with their schedule's state and ack time."""
        with self.db.transaction(write=False):
            rows = self.db.query(
                "SELECT v.run_id, v.meter_id, v.from_grp, v.to_grp, v.from_offset_s, "
                "v.to_offset_s, v.why, s.state, s.acked_ms FROM rebalance_move v "
                "LEFT JOIN schedule s ON s.meter_id = v.meter_id AND s.slot = 0 "
                "AND s.offset_s = v.to_offset_s "
                "WHERE v.run_id = ? ORDER BY v.meter_id",
                (run_id,),
            )
        return [
            MoveRow(
                int(r[0]),
                int(r[1]),
                int(r[2]),
                int(r[3]),
                int(r[4]),
                int(r[5]),
                str(r[6]),
                None if r[7] is None else str(r[7]),
                opt(r[8]),
            )
            for r in rows
        ]
