"""On-demand read jobs (H05, H06): queued by anyone, claimed and run by a worker.

Table ``job`` (schema v2). The CLI or an API (another process) queues a
job; a worker claims it, sends its read_request, records the parts of the
answer and closes it. Every state change is an event of the `JOB` lifecycle
(`lifecycles.py`), applied by a conditional UPDATE derived from its table,
so a job is claimed once and closed once however many workers race for it.
Every method is one transaction (re-entrant).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from headend.errors import IllegalTransition, InvalidData
from headend.store.base import Source
from headend.store.db import Db, Row, add_seq, marks, opt, seqs
from headend.store.lifecycles import JOB, JobEvent, JobState
from headend.store.records import Job, ReadSpec, check_recipient
from headend.store.registry import require
from protocol.codes import ReadMode

_COLS = (
    "job_id, meter_id, mode, start_s, end_s, what, source, requester, state, worker, seqs, "
    "attempts, parts, parts_seen, created_ms, sent_ms, deadline_ms, done_ms, latency_ms, "
    "requester_ack_ms, result, trouble"
)


def _job(r: Row) -> Job:
    spec = ReadSpec(
        int(r[1]), ReadMode(int(r[2])), int(r[3]), int(r[4]), int(r[5]), Source(int(r[6]))
    )
    return Job(
        int(r[0]),
        spec,
        r[7],
        JobState(r[8]),
        r[9],
        seqs(r[10]),
        int(r[11]),
        int(r[12]),
        seqs(r[13]),
        int(r[14]),
        opt(r[15]),
        opt(r[16]),
        opt(r[17]),
        opt(r[18]),
        opt(r[19]),
        r[20],
        r[21],
    )


class Jobs:
    """The job table over one `Db`."""

    def __init__(self, db: Db) -> None:
        self.db = db

    def _fire(
        self,
        job_id: int,
        event: JobEvent,
        sets: str = "",
        params: tuple[Any, ...] = (),
        guard: str = "",
    ) -> bool:
        return JOB.fire(
            self.db, "job", {"job_id": job_id}, event, f"job {job_id}", sets, params, guard
        )

    def enqueue(self, spec: ReadSpec, requester: str, now_ms: int) -> int:
        """Queue an on-demand read; returns the job id. The service picks it up."""
        check_recipient(requester)
        with self.db.transaction():
            require(self.db, spec.meter_id)
            rows = self.db.query(
                "INSERT INTO job (meter_id, mode, start_s, end_s, what, source, requester, state, "
                "worker, seqs, attempts, parts, parts_seen, created_ms) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL, '', 0, 0, '', ?) RETURNING job_id",
                (
                    spec.meter_id,
                    int(spec.mode),
                    spec.start,
                    spec.end,
                    spec.what,
                    int(spec.source),
                    requester,
                    JOB.start.value,
                    now_ms,
                ),
            )
        return int(rows[0][0])

    def get(self, job_id: int) -> Job:
        """One job. Raises InvalidData if there is no such job."""
        with self.db.transaction(write=False):
            rows = self.db.query(f"SELECT {_COLS} FROM job WHERE job_id = ?", (job_id,))
        if not rows:
            raise InvalidData(f"no job {job_id}")
        return _job(rows[0])

    def newest(self, states: Iterable[JobState] = (), limit: int = 100) -> list[Job]:
        """Jobs, newest first; optionally only some states."""
        st = [s.value for s in states]
        clause = f"WHERE state IN ({marks(len(st))})" if st else ""
        with self.db.transaction(write=False):
            rows = self.db.query(
                f"SELECT {_COLS} FROM job {clause} ORDER BY job_id DESC LIMIT ?", [*st, limit]
            )
        return [_job(r) for r in rows]

    def claim(self, worker: str, now_ms: int, limit: int = 100) -> list[Job]:
        """Take queued jobs for this worker (each job is claimed by one worker only).

        A job queued with ``created_ms`` 0 (by a CLI that cannot know a simulated
        service clock) is stamped with ``now_ms`` here.
        """
        claimed: list[Job] = []
        with self.db.transaction():
            for (jid,) in self.db.query(
                f"SELECT job_id FROM job WHERE {JOB.sql_where(JobEvent.CLAIM)} "
                "ORDER BY job_id LIMIT ?",
                (limit,),
            ):
                try:
                    self._fire(
                        int(jid),
                        JobEvent.CLAIM,
                        ", worker = ?, created_ms = CASE WHEN created_ms = 0 THEN ? "
                        "ELSE created_ms END",
                        (worker, now_ms),
                    )
                except IllegalTransition:
                    continue  # another worker claimed it first
                claimed.append(self.get(int(jid)))
        return claimed

    def sent(self, job_id: int, seq: int, now_ms: int, deadline_ms: int) -> None:
        """Record one attempt of a job's read_request (a retry forgets the parts seen).

        Raises IllegalTransition if the job is no longer waiting for an answer.
        """
        with self.db.transaction():
            rows = self.db.query("SELECT seqs FROM job WHERE job_id = ?", (job_id,))
            if not rows:
                raise InvalidData(f"no job {job_id}")
            self._fire(
                job_id,
                JobEvent.SEND,
                ", seqs = ?, attempts = attempts + 1, sent_ms = COALESCE(sent_ms, ?), "
                "deadline_ms = ?, parts = 0, parts_seen = '', result = NULL",
                (add_seq(rows[0][0], seq), now_ms, deadline_ms),
            )

    def for_reply(self, meter_id: int, seq: int) -> Job | None:
        """The job of a meter, still waiting for its answer, that sent a request under ``seq``."""
        with self.db.transaction(write=False):
            rows = self.db.query(
                f"SELECT {_COLS} FROM job WHERE meter_id = ? AND {JOB.sql_where(JobEvent.PART)}",
                (meter_id,),
            )
        for r in rows:
            job = _job(r)
            if seq in job.seqs:
                return job
        return None

    def part(self, job_id: int, part: int, parts: int, result: str) -> Job:
        """Record one part of a job's answer (``result``: the job's accumulated JSON)."""
        with self.db.transaction():
            rows = self.db.query("SELECT parts_seen FROM job WHERE job_id = ?", (job_id,))
            if not rows:
                raise InvalidData(f"no job {job_id}")
            seen = sorted({*seqs(rows[0][0]), part})
            self._fire(
                job_id,
                JobEvent.PART,
                ", parts = ?, parts_seen = ?, result = ?",
                (parts, ",".join(map(str, seen)), result),
            )
            return self.get(job_id)

    def complete(self, job_id: int, now_ms: int) -> None:
        """The last part is in: done, latency (queued -> complete) recorded."""
        self._fire(
            job_id,
            JobEvent.COMPLETE,
            ", done_ms = ?, latency_ms = ? - created_ms",
            (now_ms, now_ms),
        )

    def fail(self, job_id: int, now_ms: int, trouble: str) -> None:
        """The job failed (``trouble`` says why)."""
        self._fire(
            job_id,
            JobEvent.FAIL,
            ", done_ms = ?, latency_ms = ? - created_ms, trouble = ?",
            (now_ms, now_ms, trouble),
        )

    def overdue(self, worker: str, now_ms: int) -> list[Job]:
        """This worker's jobs whose answer is overdue (retried or failed now)."""
        with self.db.transaction(write=False):
            rows = self.db.query(
                f"SELECT {_COLS} FROM job WHERE {JOB.sql_where(JobEvent.FAIL)} AND worker = ? "
                "AND deadline_ms <= ? ORDER BY job_id",
                (worker, now_ms),
            )
        return [_job(r) for r in rows]

    def requeue_orphans(self, worker: str) -> int:
        """At start-up: jobs this worker had sent before a restart are queued again."""
        event = JobEvent.REQUEUE
        with self.db.transaction():
            return self.db.execute(
                f"UPDATE job SET {JOB.sql_set(event)} WHERE {JOB.sql_where(event)} AND worker = ?",
                (worker,),
            )

    def acknowledge(self, job_id: int, now_ms: int) -> bool:
        """The requester acknowledged the job's result; False if it had already."""
        return self._fire(
            job_id,
            JobEvent.ACK,
            ", requester_ack_ms = ?",
            (now_ms,),
            " AND requester_ack_ms IS NULL",
        )
