"""Operational tables of the ADCS on the store's `Db` (schema v2), both backends.

Holds what the head-end itself must remember, beside the meter data: the
per-meter downlink counter (the replay guard), read-group membership, the
links each meter was heard on, schedules per meter and slot, on-demand read
jobs, the activity log, event routes and deliveries. Every method is one
transaction (re-entrant: inside `db.transaction()` it joins the caller's), so
an ingest and the deliveries it causes commit together.

State changes that several workers (or the CLI in another process) may race
for are conditional updates (``... WHERE state = ?``): the row count says who
won, so a job is claimed once and an ack is recorded once.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from headend.errors import InvalidData, StoreError, UnknownMeter
from headend.store.base import U32_MAX, Source
from headend.store.records import (
    Activity,
    Delivery,
    DeliveryState,
    Job,
    JobState,
    ReadSpec,
    Route,
    Schedule,
    ScheduleSpec,
    ScheduleState,
    check_recipient,
)
from headend.store.sql import Db, Row
from protocol.codes import ReadMode

#: Seqs remembered per schedule or job (one per attempt): enough to match late answers.
KEEP_SEQS = 8

# Activity kinds ("logged with the reason"): one word each, so a log is easy to filter.
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
STORE_FAILED = "store_failed"


def _seqs(text: str) -> tuple[int, ...]:
    return tuple(int(s) for s in text.split(",") if s)


def _add_seq(text: str, seq: int) -> str:
    return ",".join(str(s) for s in (*_seqs(text), seq)[-KEEP_SEQS:])


def _opt(v: Any) -> int | None:
    return None if v is None else int(v)


_SCHEDULE_COLS = (
    "meter_id, slot, period_s, offset_s, start_s, end_s, what, cancel, source, state, seqs, "
    "attempts, requested_ms, sent_ms, acked_ms, flagged_ms, reason"
)
_JOB_COLS = (
    "job_id, meter_id, mode, start_s, end_s, what, source, requester, state, worker, seqs, "
    "attempts, parts, parts_seen, created_ms, sent_ms, deadline_ms, done_ms, latency_ms, "
    "requester_ack_ms, result, trouble"
)
_DELIVERY_COLS = (
    "delivery_id, recipient, kind, event_id, job_id, payload, state, created_ms, sent_ms, "
    "next_ms, attempts, acked_ms"
)


def _schedule(r: Row) -> Schedule:
    spec = ScheduleSpec(
        int(r[0]), int(r[1]), int(r[2]), int(r[3]), int(r[4]), int(r[5]), int(r[6]), bool(r[7])
    )
    return Schedule(
        spec,
        r[8],
        ScheduleState(r[9]),
        _seqs(r[10]),
        int(r[11]),
        int(r[12]),
        _opt(r[13]),
        _opt(r[14]),
        _opt(r[15]),
        _opt(r[16]),
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
        _seqs(r[10]),
        int(r[11]),
        int(r[12]),
        _seqs(r[13]),
        int(r[14]),
        _opt(r[15]),
        _opt(r[16]),
        _opt(r[17]),
        _opt(r[18]),
        _opt(r[19]),
        r[20],
        r[21],
    )


def _delivery(r: Row) -> Delivery:
    return Delivery(
        int(r[0]),
        r[1],
        r[2],
        _opt(r[3]),
        _opt(r[4]),
        r[5],
        DeliveryState(r[6]),
        int(r[7]),
        _opt(r[8]),
        int(r[9]),
        int(r[10]),
        _opt(r[11]),
    )


class Ops:
    """The operational tables over one `Db` (share the `SqlStore`'s: ``Ops(store.db)``)."""

    def __init__(self, db: Db) -> None:
        self.db = db

    # -- replay-guard counter ----------------------------------------------------------------

    def next_counter(self, meter_id: int, floor: int = 0) -> int:
        """The next downlink counter of a meter: atomic, strictly increasing, persistent.

        ``floor`` (e.g. the current UTC second) raises a counter that is behind
        it, so a head-end whose database was restored from an old backup still
        sends counters newer than the ones the meter last accepted.
        """
        with self.db.transaction():
            if not self.db.query("SELECT 1 FROM meter WHERE meter_id = ?", (meter_id,)):
                raise UnknownMeter(meter_id)
            rows = self.db.query(
                "INSERT INTO auth_counter (meter_id, counter) VALUES (?, ?) "
                "ON CONFLICT (meter_id) DO UPDATE SET counter = CASE "
                "WHEN auth_counter.counter + 1 > excluded.counter THEN auth_counter.counter + 1 "
                "ELSE excluded.counter END RETURNING counter",
                (meter_id, max(1, floor)),
            )
        value = int(rows[0][0])
        if value > U32_MAX:
            raise StoreError(f"meter {meter_id}: downlink counter exhausted (u32)")
        return value

    # -- read groups (H01) -------------------------------------------------------------------

    def join_unscheduled(self, meter_id: int, now_ms: int) -> bool:
        """Put a meter in the unscheduled group unless it is in a group already."""
        with self.db.transaction():
            rows = self.db.query(
                "INSERT INTO group_member (meter_id, grp, read_offset_s, since_ms) "
                "VALUES (?, NULL, NULL, ?) ON CONFLICT (meter_id) DO NOTHING RETURNING meter_id",
                (meter_id, now_ms),
            )
        return bool(rows)

    def unscheduled(self) -> list[int]:
        """Meters in the unscheduled group, ascending."""
        with self.db.transaction(write=False):
            return [
                int(r[0])
                for r in self.db.query(
                    "SELECT meter_id FROM group_member WHERE grp IS NULL ORDER BY meter_id"
                )
            ]

    def group_loads(self) -> dict[int, int]:
        """Meters per read group (the unscheduled group is not counted)."""
        with self.db.transaction(write=False):
            return {
                int(g): int(n)
                for g, n in self.db.query(
                    "SELECT grp, COUNT(*) FROM group_member WHERE grp IS NOT NULL GROUP BY grp"
                )
            }

    def group_of(self, meter_id: int) -> tuple[int | None, int | None]:
        """(group, read offset s) of a meter; (None, None) when unscheduled or unknown."""
        with self.db.transaction(write=False):
            rows = self.db.query(
                "SELECT grp, read_offset_s FROM group_member WHERE meter_id = ?", (meter_id,)
            )
        return (_opt(rows[0][0]), _opt(rows[0][1])) if rows else (None, None)

    def set_group(
        self, meter_id: int, grp: int, read_offset_s: int, label: str, now_ms: int
    ) -> None:
        """Move a meter into a read group (and write the group's label on the meter row)."""
        with self.db.transaction():
            self.db.execute(
                "INSERT INTO group_member (meter_id, grp, read_offset_s, since_ms) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (meter_id) DO UPDATE SET grp = excluded.grp, "
                "read_offset_s = excluded.read_offset_s, since_ms = excluded.since_ms",
                (meter_id, grp, read_offset_s, now_ms),
            )
            self.db.execute("UPDATE meter SET read_group = ? WHERE meter_id = ?", (label, meter_id))

    # -- links (H08) -------------------------------------------------------------------------

    def link_seen(self, meter_id: int, transport: str, now_ms: int) -> str | None:
        """Record a frame from a meter on a link; returns the previous link if it changed."""
        with self.db.transaction():
            self.db.execute(
                "INSERT INTO meter_link (meter_id, transport, first_seen_ms, last_seen_ms, frames) "
                "VALUES (?, ?, ?, ?, 1) ON CONFLICT (meter_id, transport) DO UPDATE SET "
                "last_seen_ms = excluded.last_seen_ms, frames = meter_link.frames + 1",
                (meter_id, transport, now_ms, now_ms),
            )
            rows = self.db.query("SELECT transport FROM meter WHERE meter_id = ?", (meter_id,))
            before = rows[0][0] if rows else None
            if rows and before != transport:
                self.db.execute(
                    "UPDATE meter SET transport = ? WHERE meter_id = ?", (transport, meter_id)
                )
                return str(before) if before is not None else ""
        return None

    def links(self, meter_id: int | None = None) -> list[tuple[int, str, int, int, int]]:
        """(meter, transport, first seen ms, last seen ms, frames) rows."""
        where, params = ("WHERE meter_id = ?", (meter_id,)) if meter_id is not None else ("", ())
        with self.db.transaction(write=False):
            return [
                (int(m), str(t), int(f), int(ls), int(n))
                for m, t, f, ls, n in self.db.query(
                    "SELECT meter_id, transport, first_seen_ms, last_seen_ms, frames "
                    f"FROM meter_link {where} ORDER BY meter_id, transport",
                    params,
                )
            ]

    # -- schedules (H02, H07) ----------------------------------------------------------------

    def put_schedule(self, spec: ScheduleSpec, source: str, now_ms: int) -> None:
        """Write a schedule (set, update or cancel) as pending; the service sends it."""
        if not source:
            raise InvalidData("a schedule needs its source (system or party)")
        with self.db.transaction():
            if not self.db.query("SELECT 1 FROM meter WHERE meter_id = ?", (spec.meter_id,)):
                raise UnknownMeter(spec.meter_id)
            self.db.execute(
                f"INSERT INTO schedule ({_SCHEDULE_COLS}) "
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

    def schedules(
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
            where.append("state IN (" + ", ".join("?" * len(st)) + ")")
            params += st
        clause = ("WHERE " + " AND ".join(where)) if where else ""
        with self.db.transaction(write=False):
            rows = self.db.query(
                f"SELECT {_SCHEDULE_COLS} FROM schedule {clause} ORDER BY meter_id, slot", params
            )
        return [_schedule(r) for r in rows]

    def schedule_sent(self, meter_id: int, slot: int, seq: int, now_ms: int, flag: bool) -> bool:
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
                (state.value, _add_seq(rows[0][1], seq), now_ms, int(flag), now_ms, meter_id, slot),
            )
        return True

    def schedule_answered(
        self, meter_id: int, seq: int, status: int, now_ms: int
    ) -> Schedule | None:
        """Record the meter's answer (status 0 = ack, else the nack reason) to the send
        under ``seq``; returns the schedule as it was, or None if no open one matches."""
        with self.db.transaction():
            rows = self.db.query(
                f"SELECT {_SCHEDULE_COLS} FROM schedule WHERE meter_id = ? "
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

    def reopen_schedule(self, meter_id: int, slot: int) -> None:
        """A nacked send that says nothing about the schedule (replay, busy): back to
        ``sent``, so the missing-ack check re-sends it after the timeout."""
        with self.db.transaction():
            self.db.execute(
                "UPDATE schedule SET state = 'sent', acked_ms = NULL "
                "WHERE meter_id = ? AND slot = ? AND state = 'nacked'",
                (meter_id, slot),
            )

    # -- on-demand read jobs (H05, H06) ------------------------------------------------------

    def enqueue_job(self, spec: ReadSpec, requester: str, now_ms: int) -> int:
        """Queue an on-demand read; returns the job id. The service picks it up."""
        check_recipient(requester)
        with self.db.transaction():
            if not self.db.query("SELECT 1 FROM meter WHERE meter_id = ?", (spec.meter_id,)):
                raise UnknownMeter(spec.meter_id)
            rows = self.db.query(
                "INSERT INTO job (meter_id, mode, start_s, end_s, what, source, requester, state, "
                "worker, seqs, attempts, parts, parts_seen, created_ms) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL, '', 0, 0, '', ?) RETURNING job_id",
                (
                    spec.meter_id,
                    spec.mode,
                    spec.start,
                    spec.end,
                    spec.what,
                    int(spec.source),
                    requester,
                    JobState.QUEUED.value,
                    now_ms,
                ),
            )
        return int(rows[0][0])

    def job(self, job_id: int) -> Job:
        """One job. Raises InvalidData if there is no such job."""
        with self.db.transaction(write=False):
            rows = self.db.query(f"SELECT {_JOB_COLS} FROM job WHERE job_id = ?", (job_id,))
        if not rows:
            raise InvalidData(f"no job {job_id}")
        return _job(rows[0])

    def jobs(self, states: Iterable[JobState] = (), limit: int = 100) -> list[Job]:
        """Jobs, newest first; optionally only some states."""
        st = [s.value for s in states]
        clause = ("WHERE state IN (" + ", ".join("?" * len(st)) + ")") if st else ""
        with self.db.transaction(write=False):
            rows = self.db.query(
                f"SELECT {_JOB_COLS} FROM job {clause} ORDER BY job_id DESC LIMIT ?", [*st, limit]
            )
        return [_job(r) for r in rows]

    def claim_jobs(self, worker: str, now_ms: int, limit: int = 100) -> list[Job]:
        """Take queued jobs for this worker (each job is claimed by one worker only).

        A job queued with ``created_ms`` 0 (by a CLI that cannot know a simulated
        service clock) is stamped with ``now_ms`` here.
        """
        claimed: list[Job] = []
        with self.db.transaction():
            for (jid,) in self.db.query(
                "SELECT job_id FROM job WHERE state = 'queued' ORDER BY job_id LIMIT ?", (limit,)
            ):
                if self.db.execute(
                    "UPDATE job SET worker = ?, state = 'sent', created_ms = CASE "
                    "WHEN created_ms = 0 THEN ? ELSE created_ms END "
                    "WHERE job_id = ? AND state = 'queued'",
                    (worker, now_ms, int(jid)),
                ):
                    claimed.append(self.job(int(jid)))
        return claimed

    def job_sent(self, job_id: int, seq: int, now_ms: int, deadline_ms: int) -> None:
        """Record one attempt of a job's read_request (a retry forgets the parts seen)."""
        with self.db.transaction():
            rows = self.db.query("SELECT seqs FROM job WHERE job_id = ?", (job_id,))
            if not rows:
                raise InvalidData(f"no job {job_id}")
            self.db.execute(
                "UPDATE job SET state = 'sent', seqs = ?, attempts = attempts + 1, "
                "sent_ms = COALESCE(sent_ms, ?), deadline_ms = ?, parts = 0, parts_seen = '', "
                "result = NULL WHERE job_id = ?",
                (_add_seq(rows[0][0], seq), now_ms, deadline_ms, job_id),
            )

    def job_for_reply(self, meter_id: int, seq: int) -> Job | None:
        """The open job of a meter that sent a request under ``seq``, if any."""
        with self.db.transaction(write=False):
            rows = self.db.query(
                f"SELECT {_JOB_COLS} FROM job WHERE meter_id = ? AND state = 'sent'", (meter_id,)
            )
        for r in rows:
            job = _job(r)
            if seq in job.seqs:
                return job
        return None

    def job_part(self, job_id: int, part: int, parts: int, result: str) -> Job:
        """Record one part of a job's answer (``result``: the job's accumulated JSON)."""
        with self.db.transaction():
            rows = self.db.query("SELECT parts_seen FROM job WHERE job_id = ?", (job_id,))
            if not rows:
                raise InvalidData(f"no job {job_id}")
            seen = sorted({*_seqs(rows[0][0]), part})
            self.db.execute(
                "UPDATE job SET parts = ?, parts_seen = ?, result = ? WHERE job_id = ?",
                (parts, ",".join(map(str, seen)), result, job_id),
            )
            return self.job(job_id)

    def finish_job(
        self, job_id: int, state: JobState, now_ms: int, trouble: str | None = None
    ) -> bool:
        """Close a sent job as done or failed (once: False if it was closed already)."""
        if state not in (JobState.DONE, JobState.FAILED):
            raise InvalidData(f"a job finishes done or failed, not {state}")
        with self.db.transaction():
            return bool(
                self.db.execute(
                    "UPDATE job SET state = ?, done_ms = ?, latency_ms = ? - created_ms, "
                    "trouble = ? WHERE job_id = ? AND state = 'sent'",
                    (state.value, now_ms, now_ms, trouble, job_id),
                )
            )

    def overdue_jobs(self, worker: str, now_ms: int) -> list[Job]:
        """This worker's sent jobs whose answer is overdue."""
        with self.db.transaction(write=False):
            rows = self.db.query(
                f"SELECT {_JOB_COLS} FROM job WHERE state = 'sent' AND worker = ? "
                "AND deadline_ms <= ? ORDER BY job_id",
                (worker, now_ms),
            )
        return [_job(r) for r in rows]

    def requeue_orphans(self, worker: str) -> int:
        """At start-up: jobs this worker had sent before a restart are queued again."""
        with self.db.transaction():
            return self.db.execute(
                "UPDATE job SET state = 'queued' WHERE state = 'sent' AND worker = ?", (worker,)
            )

    def ack_job(self, job_id: int, now_ms: int) -> bool:
        """The requester acknowledged the job's result (once)."""
        with self.db.transaction():
            n = self.db.execute(
                "UPDATE job SET requester_ack_ms = ? WHERE job_id = ? "
                "AND requester_ack_ms IS NULL AND state IN ('done', 'failed')",
                (now_ms, job_id),
            )
            self.db.execute(
                "UPDATE delivery SET state = 'acked', acked_ms = ? "
                "WHERE job_id = ? AND state IN ('pending', 'sent')",
                (now_ms, job_id),
            )
        return bool(n)

    # -- activity log ------------------------------------------------------------------------

    def log(
        self,
        at_ms: int,
        kind: str,
        detail: str,
        meter_id: int | None = None,
        ref: str | None = None,
    ) -> None:
        """Append one line to the activity log."""
        with self.db.transaction():
            self.db.execute(
                "INSERT INTO activity (at_ms, meter_id, kind, detail, ref) VALUES (?, ?, ?, ?, ?)",
                (at_ms, meter_id, kind, detail, ref),
            )

    def activity(
        self,
        meter_id: int | None = None,
        kinds: Sequence[str] = (),
        since_ms: int = 0,
        limit: int = 1000,
    ) -> list[Activity]:
        """Activity lines, oldest first."""
        where = ["at_ms >= ?"]
        params: list[Any] = [since_ms]
        if meter_id is not None:
            where.append("meter_id = ?")
            params.append(meter_id)
        if kinds:
            where.append("kind IN (" + ", ".join("?" * len(kinds)) + ")")
            params += list(kinds)
        with self.db.transaction(write=False):
            rows = self.db.query(
                "SELECT activity_id, at_ms, meter_id, kind, detail, ref FROM activity "
                f"WHERE {' AND '.join(where)} ORDER BY activity_id LIMIT ?",
                [*params, limit],
            )
        return [Activity(int(i), int(a), _opt(m), k, d, r) for i, a, m, k, d, r in rows]

    # -- event routes and deliveries (D09, N03) ----------------------------------------------

    def add_route(self, code: int, recipient: str, now_ms: int) -> bool:
        """Route event ``code`` (0 = all) to ``recipient``; False if it was routed already."""
        Route(code, recipient, now_ms)
        with self.db.transaction():
            return bool(
                self.db.query(
                    "INSERT INTO event_route (code, recipient, added_ms) VALUES (?, ?, ?) "
                    "ON CONFLICT (code, recipient) DO NOTHING RETURNING code",
                    (code, recipient, now_ms),
                )
            )

    def remove_route(self, code: int, recipient: str) -> bool:
        with self.db.transaction():
            return bool(
                self.db.execute(
                    "DELETE FROM event_route WHERE code = ? AND recipient = ?", (code, recipient)
                )
            )

    def routes(self) -> list[Route]:
        with self.db.transaction(write=False):
            rows = self.db.query(
                "SELECT code, recipient, added_ms FROM event_route ORDER BY code, recipient"
            )
        return [Route(int(c), r, int(a)) for c, r, a in rows]

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

    def due_deliveries(self, now_ms: int, limit: int = 500) -> list[Delivery]:
        """Unacknowledged deliveries whose (re-)send time has come, oldest first."""
        with self.db.transaction(write=False):
            rows = self.db.query(
                f"SELECT {_DELIVERY_COLS} FROM delivery WHERE state IN ('pending', 'sent') "
                "AND next_ms <= ? ORDER BY next_ms, delivery_id LIMIT ?",
                (now_ms, limit),
            )
        return [_delivery(r) for r in rows]

    def delivery_sent(self, delivery_id: int, now_ms: int, next_ms: int, expire: bool) -> None:
        """Record a send; ``expire`` marks the last allowed attempt."""
        with self.db.transaction():
            self.db.execute(
                "UPDATE delivery SET sent_ms = COALESCE(sent_ms, ?), next_ms = ?, "
                "attempts = attempts + 1, state = CASE WHEN state = 'acked' THEN state "
                "WHEN ? = 1 THEN 'expired' ELSE 'sent' END WHERE delivery_id = ?",
                (now_ms, next_ms, int(expire), delivery_id),
            )

    def ack_delivery(self, delivery_id: int, now_ms: int) -> Delivery | None:
        """Record a recipient's ack (once); returns the delivery, None if unknown or acked."""
        with self.db.transaction():
            n = self.db.execute(
                "UPDATE delivery SET state = 'acked', acked_ms = ? "
                "WHERE delivery_id = ? AND state IN ('pending', 'sent', 'expired')",
                (now_ms, delivery_id),
            )
            if not n:
                return None
            rows = self.db.query(
                f"SELECT {_DELIVERY_COLS} FROM delivery WHERE delivery_id = ?", (delivery_id,)
            )
            d = _delivery(rows[0])
            if d.job_id is not None:
                self.db.execute(
                    "UPDATE job SET requester_ack_ms = ? WHERE job_id = ? "
                    "AND requester_ack_ms IS NULL",
                    (now_ms, d.job_id),
                )
        return d

    def delivery(self, delivery_id: int) -> Delivery | None:
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

    def event_ids(
        self, meter_id: int, keys: Sequence[tuple[int, int, int]]
    ) -> dict[tuple[int, int, int], int]:
        """(time, code, data) -> event_id for stored events of a meter."""
        out: dict[tuple[int, int, int], int] = {}
        if not keys:
            return out
        lo = min(k[0] for k in keys)
        hi = max(k[0] for k in keys)
        want = set(keys)
        with self.db.transaction(write=False):
            for eid, t, c, d in self.db.query(
                "SELECT event_id, time, code, data FROM meter_event "
                "WHERE meter_id = ? AND time >= ? AND time <= ?",
                (meter_id, lo, hi),
            ):
                k = (int(t), int(c), int(d))
                if k in want:
                    out[k] = int(eid)
        return out

    def recent_events(
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
