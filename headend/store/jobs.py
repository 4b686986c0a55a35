"""On-demand read jobs (H05, H06): queued by anyone, claimed and run by a worker.

Table ``job`` (schema v2). The CLI or an API (another process) queues a
job; a worker claims it, sends its read_request, records the parts of the
answer and closes it. Every state change is an event of the `JOB` lifecycle
(`lifecycles.py`), applied by a conditional UPDATE derived from its table,
so a job is claimed once and closed once however many workers race for it.
Every method is one transaction (re-entrant).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
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
    "requester_ack_ms, result, trouble, priority"
)
#: Job priorities (D13): routine work (system recovery) is claimed before ad hoc work.
ROUTINE = 0
AD_HOC = 1
#: Of the jobs a claim may start, this share (at least one of two or more places) is kept
#: for waiting ad hoc work, so a long routine queue (mass recovery) never starves it.
AD_HOC_SHARE = 0.1


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
        int(r[22]),
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

    def enqueue(self, spec: ReadSpec, requester: str, now_ms: int, priority: int = AD_HOC) -> int:
        """Queue an on-demand read; returns the job id. The service picks it up.

        ``priority``: `ROUTINE` (claimed first) or `AD_HOC`.
        """
        check_recipient(requester)
        if priority not in (ROUTINE, AD_HOC):
            raise InvalidData(
                f"priority: expected {ROUTINE} routine or {AD_HOC} ad hoc, got {priority!r}"
            )
        with self.db.transaction():
            require(self.db, spec.meter_id)
            rows = self.db.query(
                "INSERT INTO job (meter_id, mode, start_s, end_s, what, source, requester, state, "
                "worker, seqs, attempts, parts, parts_seen, created_ms, priority) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL, '', 0, 0, '', ?, ?) RETURNING job_id",
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
                    priority,
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

    def claim(
        self,
        worker: str,
        now_ms: int,
        limit: int = 100,
        max_in_flight: int | None = None,
        rate_per_s: int | None = None,
        second_ms: int = 1000,
    ) -> list[Job]:
        """Take queued jobs for this worker (each job is claimed by one worker only).

        The throttle (H09, N05, D13) is here, for every worker at once: at most
        ``max_in_flight`` jobs out (state sent, any worker) and at most ``rate_per_s``
        started in the last second (``second_ms`` of the service clock: one wall-clock
        second, however fast a simulated clock runs). Routine jobs go first,
        but a share of what may start (`AD_HOC_SHARE`, at least one) is kept for ad
        hoc jobs that wait. A job queued with ``created_ms`` 0 (by a CLI that cannot
        know a simulated service clock) is stamped with ``now_ms`` here.
        """
        claimed: list[Job] = []
        throttled = max_in_flight is not None or rate_per_s is not None
        with self.db.transaction():
            if throttled:  # one claimer at a time: the throttle holds across workers
                self.db.lock("job claim")
            room = limit
            if max_in_flight is not None:
                out = self.db.query("SELECT COUNT(*) FROM job WHERE state = 'sent'")[0][0]
                room = min(room, max_in_flight - int(out))
            if rate_per_s is not None:
                started = self.db.query(
                    "SELECT COUNT(*) FROM job WHERE sent_ms > ? AND sent_ms <= ?",
                    (now_ms - second_ms, now_ms),
                )[0][0]
                room = min(room, rate_per_s - int(started))
            if room <= 0:
                return []
            queued = [
                row
                for op in ("=", "<>")
                for row in self.db.query(
                    f"SELECT job_id, priority FROM job WHERE {JOB.sql_where(JobEvent.CLAIM)} "
                    f"AND priority {op} ? ORDER BY priority, job_id LIMIT ?{self.db.skip_locked}",
                    (ROUTINE, room),
                )
            ]
            for jid in pick(queued, room):
                try:
                    self._fire(
                        jid,
                        JobEvent.CLAIM,
                        # deadline: a job claimed by a worker that dies before sending it
                        # is overdue, and taken over (`overdue`)
                        ", worker = ?, deadline_ms = ?, created_ms = CASE WHEN created_ms = 0 "
                        "THEN ? ELSE created_ms END",
                        (worker, now_ms, now_ms),
                    )
                except IllegalTransition:
                    continue  # another worker claimed it first
                claimed.append(self.get(jid))
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

    def overdue(self, worker: str, now_ms: int, takeover_ms: int | None = None) -> list[Job]:
        """This worker's jobs whose answer is overdue (retried or failed now).

        ``takeover_ms``: first the jobs of other workers overdue by more than that
        (their worker died: a live one retries or fails its own within a tick) are
        queued again if their request never went out, else taken over by this worker;
        each by one worker (rows another worker holds are passed over)."""
        with self.db.transaction(write=takeover_ms is not None):
            if takeover_ms is not None:
                # a job taken over is due now: it is this worker's for a lease again
                take = "worker = ?, deadline_ms = ?"
                for sets, sent in ((JOB.sql_set(JobEvent.REQUEUE), "="), (take, ">")):
                    params: list[Any] = [worker, now_ms] if sent == ">" else []
                    self.db.execute(
                        f"UPDATE job SET {sets} WHERE job_id IN (SELECT job_id FROM job WHERE "
                        f"{JOB.sql_where(JobEvent.FAIL)} AND attempts {sent} 0 AND worker <> ? "
                        f"AND deadline_ms <= ? ORDER BY job_id LIMIT 1000{self.db.skip_locked})",
                        [*params, worker, now_ms - takeover_ms],
                    )
            rows = self.db.query(
                f"SELECT {_COLS} FROM job WHERE {JOB.sql_where(JobEvent.FAIL)} AND worker = ? "
                "AND attempts > 0 AND deadline_ms <= ? ORDER BY job_id",
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


def pick(queued: Sequence[Row], room: int) -> list[int]:
    """Which of the queued (job_id, priority) rows, in (priority, job_id) order, to start:
    routine first, but of two places or more ``max(1, room * AD_HOC_SHARE)`` go to ad hoc
    jobs if any wait (a single place goes to routine work)."""
    routine = [int(j) for j, p in queued if int(p) == ROUTINE]
    ad_hoc = [int(j) for j, p in queued if int(p) != ROUTINE]
    share = max(1, int(room * AD_HOC_SHARE)) if room >= 2 else 0
    keep = min(len(ad_hoc), share)
    take = routine[: room - keep]
    return sorted(take + ad_hoc[: room - len(take)])
