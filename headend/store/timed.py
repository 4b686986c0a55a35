"""Timed jobs claimed once across workers under a lease (D02, D06, H03).

Table ``timed_run`` (schema v7, leases v8): a row per job and period (a local
day, a week, a collection day). `claim` inserts the row, or takes over a run
whose lease expired before it was done (its worker died), or one this same
worker left unfinished (a restart); the upsert decides under the row's lock, so
one worker holds a run at a time. The holder commits the job's writes together
with `done`, which only succeeds while it still holds the run: a worker that
lost it (it stalled past its lease and another took over) rolls its writes
back, so each run's effects commit once. The service's jobs each run in one
transaction, so ``lease_s`` must outlast the longest of them; `renew` is for a
holder whose run spans several transactions.
"""

from __future__ import annotations

import enum

from headend.errors import IllegalTransition
from headend.store.db import Db, opt


class LeaseLost(IllegalTransition):
    """Another worker took the run over (this worker's lease had expired)."""


class Claim(enum.Enum):
    """What `TimedRuns.claim` found."""

    WON = "won"  # this worker holds the run now: run it
    HELD = "held"  # another worker holds a live lease: ask again later
    DONE = "done"  # the period's run is finished


class TimedRuns:
    """The timed_run table over one `Db`."""

    def __init__(self, db: Db) -> None:
        self.db = db

    def claim(self, job: str, period: int, worker: str, now_ms: int, lease_ms: int) -> Claim:
        """Take ``job`` for ``period`` until ``now_ms + lease_ms``, if nobody holds it."""
        with self.db.transaction():
            rows = self.db.query(
                "INSERT INTO timed_run (job, period, worker, claimed_ms, expires_ms, attempts) "
                "VALUES (?, ?, ?, ?, ?, 1) ON CONFLICT (job, period) DO UPDATE SET "
                "worker = excluded.worker, claimed_ms = excluded.claimed_ms, "
                "expires_ms = excluded.expires_ms, attempts = timed_run.attempts + 1 "
                "WHERE timed_run.done_ms IS NULL AND (timed_run.expires_ms <= ? "
                "OR timed_run.worker = excluded.worker) RETURNING period",
                (job, period, worker, now_ms, now_ms + lease_ms, now_ms),
            )
            if rows:
                return Claim.WON
            return Claim.DONE if self.finished(job, period) else Claim.HELD

    def renew(self, job: str, period: int, worker: str, now_ms: int, lease_ms: int) -> None:
        """Extend this worker's lease. Raises `LeaseLost` if it no longer holds the run."""
        with self.db.transaction():
            n = self.db.execute(
                "UPDATE timed_run SET expires_ms = ? WHERE job = ? AND period = ? "
                "AND worker = ? AND done_ms IS NULL",
                (now_ms + lease_ms, job, period, worker),
            )
        if n != 1:
            raise LeaseLost(f"{job} (period {period}): taken over from {worker}")

    def done(self, job: str, period: int, worker: str, now_ms: int, result: str) -> None:
        """Record that the run finished (in the transaction of the job's writes).
        Raises `LeaseLost` if another worker took it over: roll back."""
        with self.db.transaction():
            n = self.db.execute(
                "UPDATE timed_run SET done_ms = ?, result = ?, expires_ms = NULL "
                "WHERE job = ? AND period = ? AND worker = ? AND done_ms IS NULL",
                (now_ms, result, job, period, worker),
            )
        if n != 1:
            raise LeaseLost(f"{job} (period {period}): taken over from {worker}")

    def runs(self, job: str) -> list[tuple[int, str, int, int | None, str | None]]:
        """(period, worker, claimed ms, done ms, result) of a job's runs, by period."""
        with self.db.transaction(write=False):
            rows = self.db.query(
                "SELECT period, worker, claimed_ms, done_ms, result FROM timed_run "
                "WHERE job = ? ORDER BY period",
                (job,),
            )
        return [(int(p), str(w), int(c), opt(d), r) for p, w, c, d, r in rows]

    def finished(self, job: str, period: int) -> bool:
        """True once the period's run is done."""
        with self.db.transaction(write=False):
            rows = self.db.query(
                "SELECT done_ms FROM timed_run WHERE job = ? AND period = ?", (job, period)
            )
        return bool(rows) and rows[0][0] is not None

    def attempts(self, job: str, period: int) -> int:
        """How many times the run was claimed (1 + takeovers); 0 if never."""
        with self.db.transaction(write=False):
            rows = self.db.query(
                "SELECT attempts FROM timed_run WHERE job = ? AND period = ?", (job, period)
            )
        return int(rows[0][0]) if rows else 0
