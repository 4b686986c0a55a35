"""H02, H05, H06, H07: jobs and schedule pushes through the store, against their tables.

The lifecycle tables (`headend.store.lifecycles.JOB`, `SCHEDULE`) are the
model: hypothesis fires every event at every state through the store's own
methods (the conditional UPDATEs derived from the tables), on SQLite and on
PostgreSQL. After each step the store holds exactly the states the table
predicts; an event the table does not allow raises `IllegalTransition` and
changes nothing; the queries that find rows waiting for an answer
(`Jobs.for_reply`, `Schedules.awaiting`) agree with the model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from headend.errors import IllegalTransition, InvalidData
from headend.store import Channel, ChannelKind, Meter, SqlStore, Unit, open_store
from headend.store.db import KEEP_SEQS
from headend.store.jobs import Jobs
from headend.store.lifecycles import (
    JOB,
    SCHEDULE,
    JobEvent,
    JobState,
    ScheduleEvent,
    ScheduleState,
)
from headend.store.records import ReadSpec, ScheduleSpec
from headend.store.schedules import Schedules

pytestmark = pytest.mark.req("H02", "H05", "H06", "H07")

Ev = TypeVar("Ev", JobEvent, ScheduleEvent)
T0 = 1_711_929_600
METERS = (1, 2)
WORKERS = ("w1", "w2")
CH = (Channel(ChannelKind.ACTIVE_IMPORT, Unit.WH),)


def _fresh(store: SqlStore) -> SqlStore:
    with store.db.transaction():
        for table in ("delivery", "job", "schedule", "meter_channel", "meter"):
            store.db.execute(f"DELETE FROM {table}")
    for mid in METERS:
        store.register_meter(Meter(mid, "1", 900, 0, 1, CH, T0))
    return store


def _biased(events: list[Ev], legal: list[Ev]) -> st.SearchStrategy[Ev]:
    """Mostly an event the state allows (to get deep into the table), else any."""
    return st.sampled_from(legal) | st.sampled_from(events) if legal else st.sampled_from(events)


class _Machine(RuleBasedStateMachine):
    """One table on one store (emptied at the start of each example)."""

    def __init__(self, store: SqlStore) -> None:
        super().__init__()
        self.store = _fresh(store)
        self.seq = 0
        self.now = 1000

    def _tick(self) -> int:
        self.now += 10
        self.seq += 1
        return self.seq

    def _expect(self, lc: Any, state: Any, event: Any, call: Callable[[], Any]) -> tuple[bool, Any]:
        """Run ``call``; it must succeed iff the table allows ``event`` in ``state``."""
        if event in lc.table[state]:
            return True, call()
        with pytest.raises(IllegalTransition, match=f"'{event.value}' is not allowed"):
            call()
        return False, None


class JobLifecycle(_Machine):
    """On-demand read jobs: the `JOB` table is the model."""

    def __init__(self, store: SqlStore) -> None:
        super().__init__(store)
        self.jobs = Jobs(self.store.db)
        self.job_state: dict[int, JobState] = {}
        self.job_worker: dict[int, str | None] = {}
        self.job_seqs: dict[int, list[int]] = {}
        self.job_acked: set[int] = set()

    @rule(meter=st.sampled_from(METERS))
    def enqueue(self, meter: int) -> None:
        jid = self.jobs.enqueue(ReadSpec(meter), "cli", self.now)
        self.job_state[jid] = JOB.start
        self.job_worker[jid] = None
        self.job_seqs[jid] = []

    @rule(worker=st.sampled_from(WORKERS), limit=st.integers(1, 3))
    def claim(self, worker: str, limit: int) -> None:
        got = [j.job_id for j in self.jobs.claim(worker, self.now, limit)]
        queued = sorted(j for j, s in self.job_state.items() if JobEvent.CLAIM in JOB.table[s])
        assert got == queued[:limit]
        for jid in got:
            self.job_state[jid] = JOB.next(self.job_state[jid], JobEvent.CLAIM)
            self.job_worker[jid] = worker

    @precondition(lambda self: self.job_state)
    @rule(data=st.data())
    def fire(self, data: st.DataObject) -> None:
        """One event on one job (CLAIM and REQUEUE are bulk: their own rules)."""
        jid = data.draw(st.sampled_from(sorted(self.job_state)), label="job")
        state = self.job_state[jid]
        seq = self._tick()
        calls: dict[JobEvent, Callable[[], Any]] = {
            JobEvent.SEND: lambda: self.jobs.sent(jid, seq, self.now, self.now + 240_000),
            JobEvent.PART: lambda: self.jobs.part(jid, seq % 3 + 1, 3, "{}"),
            JobEvent.COMPLETE: lambda: self.jobs.complete(jid, self.now),
            JobEvent.FAIL: lambda: self.jobs.fail(jid, self.now, "no answer"),
            JobEvent.ACK: lambda: self.jobs.acknowledge(jid, self.now),
        }
        event = data.draw(_biased(list(calls), [e for e in calls if e in JOB.table[state]]))
        ok, got = self._expect(JOB, state, event, calls[event])
        if not ok:
            return
        self.job_state[jid] = JOB.next(state, event)
        if event is JobEvent.SEND:
            self.job_seqs[jid] = (self.job_seqs[jid] + [seq])[-KEEP_SEQS:]
        elif event is JobEvent.PART:
            assert seq % 3 + 1 in got.parts_seen and got.state is self.job_state[jid]
        elif event is JobEvent.ACK:
            assert got is (jid not in self.job_acked)  # recorded once
            self.job_acked.add(jid)

    @precondition(lambda self: self.job_acked)
    @rule(data=st.data())
    def acknowledge_again(self, data: st.DataObject) -> None:
        jid = data.draw(st.sampled_from(sorted(self.job_acked)), label="acked job")
        assert self.jobs.acknowledge(jid, self.now + 1) is False  # recorded once
        assert self.jobs.get(jid).requester_ack_ms != self.now + 1

    @rule(worker=st.sampled_from(WORKERS))
    def requeue_orphans(self, worker: str) -> None:
        mine = [
            j
            for j, s in self.job_state.items()
            if self.job_worker[j] == worker and JobEvent.REQUEUE in JOB.table[s]
        ]
        assert self.jobs.requeue_orphans(worker) == len(mine)
        for jid in mine:
            self.job_state[jid] = JOB.next(self.job_state[jid], JobEvent.REQUEUE)

    @rule(event=st.sampled_from(JobEvent))
    def unknown_job(self, event: JobEvent) -> None:
        with pytest.raises(InvalidData, match="no job 99999"):
            self.jobs.complete(99_999, self.now)

    @precondition(lambda self: self.job_seqs)
    @rule(data=st.data())
    def reply_finds_its_job(self, data: st.DataObject) -> None:
        jid = data.draw(st.sampled_from(sorted(self.job_seqs)))
        seqs = self.job_seqs[jid] or [0]
        seq = data.draw(st.sampled_from(seqs))
        meter = self.jobs.get(jid).spec.meter_id
        found = self.jobs.for_reply(meter, seq)
        waiting = [
            j
            for j, s in self.job_state.items()
            if JobEvent.PART in JOB.table[s]
            and seq in self.job_seqs[j]
            and self.jobs.get(j).spec.meter_id == meter
        ]
        assert (found.job_id if found else None) == (waiting[0] if waiting else None)

    @invariant()
    def store_holds_the_modelled_jobs(self) -> None:
        jobs = {j.job_id: j for j in self.jobs.newest(limit=10_000)}
        assert {j: x.state for j, x in jobs.items()} == self.job_state
        assert {j: x.worker for j, x in jobs.items()} == self.job_worker
        assert {j for j, x in jobs.items() if x.requester_ack_ms is not None} == self.job_acked


SLOTS = (0, 1, 2)
ANSWERS = (ScheduleEvent.ACK, ScheduleEvent.ACK_CANCEL, ScheduleEvent.NACK, ScheduleEvent.BUSY)


class ScheduleLifecycle(_Machine):
    """Schedule pushes of meter 1, slots 0-2: the `SCHEDULE` table is the model."""

    def __init__(self, store: SqlStore) -> None:
        super().__init__(store)
        self.scheds = Schedules(self.store.db)
        self.sched_state: dict[int, ScheduleState] = {}  # slot -> state
        self.sched_seqs: dict[int, list[int]] = {}
        self.sched_answered: set[int] = set()  # slots whose answer time is recorded

    def _slot(self, data: st.DataObject) -> int:
        return data.draw(st.sampled_from(sorted(self.sched_state)), label="slot")

    def _event(
        self, data: st.DataObject, slot: int, events: tuple[ScheduleEvent, ...]
    ) -> ScheduleEvent:
        legal = [e for e in events if e in SCHEDULE.table[self.sched_state[slot]]]
        return data.draw(_biased(list(events), legal), label="event")

    @rule(slot=st.sampled_from(SLOTS), cancel=st.booleans())
    def write(self, slot: int, cancel: bool) -> None:
        spec = (
            ScheduleSpec(1, 0, offset_s=60)
            if slot == 0
            else ScheduleSpec(1, slot, period_s=3600, cancel=cancel)
        )
        self.scheds.put(spec, "system:test", self.now)
        state = self.sched_state.get(slot)
        self.sched_state[slot] = (
            SCHEDULE.start if state is None else SCHEDULE.next(state, ScheduleEvent.WRITE)
        )
        self.sched_seqs[slot] = []  # a rewrite forgets the earlier sends
        self.sched_answered.discard(slot)

    @precondition(lambda self: len(self.sched_state) < len(SLOTS))
    @rule(event=st.sampled_from([ScheduleEvent.SEND, ScheduleEvent.RESEND]))
    def push_unwritten(self, event: ScheduleEvent) -> None:
        slot = min(set(SLOTS) - set(self.sched_state))
        with pytest.raises(InvalidData, match=f"no schedule of meter 1 slot {slot}"):
            self.scheds.sent(1, slot, self._tick(), self.now, event)

    @precondition(lambda self: self.sched_state)
    @rule(data=st.data())
    def push(self, data: st.DataObject) -> None:
        slot = self._slot(data)
        event = self._event(data, slot, (ScheduleEvent.SEND, ScheduleEvent.RESEND))
        seq = self._tick()
        ok, _ = self._expect(
            SCHEDULE,
            self.sched_state[slot],
            event,
            lambda: self.scheds.sent(1, slot, seq, self.now, event),
        )
        if ok:
            self.sched_state[slot] = SCHEDULE.next(self.sched_state[slot], event)
            self.sched_seqs[slot] = (self.sched_seqs[slot] + [seq])[-KEEP_SEQS:]

    @precondition(lambda self: self.sched_state)
    @rule(data=st.data())
    def answer(self, data: st.DataObject) -> None:
        slot = self._slot(data)
        event = self._event(data, slot, ANSWERS)
        self._tick()
        ok, _ = self._expect(
            SCHEDULE,
            self.sched_state[slot],
            event,
            lambda: self.scheds.answer(1, slot, event, self.now, None),
        )
        if ok:
            self.sched_state[slot] = SCHEDULE.next(self.sched_state[slot], event)
            if event is ScheduleEvent.BUSY:
                self.sched_answered.discard(slot)  # still waiting for the real answer
            else:
                self.sched_answered.add(slot)

    @rule(seq=st.integers(1, 40))
    def answer_finds_its_schedule(self, seq: int) -> None:
        found = self.scheds.awaiting(1, seq)
        waiting = sorted(
            slot
            for slot, s in self.sched_state.items()
            if ScheduleEvent.ACK in SCHEDULE.table[s] and seq in self.sched_seqs[slot]
        )
        assert (found.spec.slot if found else None) == (waiting[0] if waiting else None)

    @invariant()
    def store_holds_the_modelled_schedules(self) -> None:
        rows = {s.spec.slot: s for s in self.scheds.find(1)}
        assert {k: s.state for k, s in rows.items()} == self.sched_state
        assert {k: list(s.seqs) for k, s in rows.items()} == self.sched_seqs
        assert {k for k, s in rows.items() if s.acked_ms is not None} == self.sched_answered


def test_h05_every_event_outside_the_table_is_refused_precisely() -> None:
    for lc, events in ((JOB, JobEvent), (SCHEDULE, ScheduleEvent)):
        for state in lc.states:
            for event in events:
                if event in lc.table[state]:
                    assert lc.next(state, event) in lc.states
                else:
                    with pytest.raises(IllegalTransition) as e:
                        lc.next(state, event, "row 7")
                    allowed = ", ".join(s.value for s in lc.allowed(event))
                    assert str(e.value) == (
                        f"row 7: {event.value!r} is not allowed in state {state.value} "
                        f"(only in: {allowed})"
                    )


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: object) -> Iterator[SqlStore]:
    if request.param == "sqlite":
        s = open_store(f"sqlite:///{tmp_path}/lifecycles.db")
    else:
        dsn, schema = request.getfixturevalue("pg_schema")
        from headend.store.postgres import PostgresStore

        s = PostgresStore(dsn, schema=schema)
    try:
        yield s
    finally:
        s.close()


@pytest.mark.parametrize("machine", [JobLifecycle, ScheduleLifecycle])
def test_h02_h05_lifecycles_through_the_store(store: SqlStore, machine: type[_Machine]) -> None:
    # the project's profile ("ci": 300 examples), capped: every step runs SQL
    cap = 200 if store.backend == "sqlite" else 100
    run_state_machine_as_test(
        lambda: machine(store),
        settings=settings(
            max_examples=min(settings().max_examples, cap), stateful_step_count=40, deadline=None
        ),
    )
