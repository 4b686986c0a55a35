"""Schema v2: the ADCS's operational tables, on SQLite and PostgreSQL alike.

Counters, read groups, schedules, jobs, the activity log, routes and
deliveries; races between two connections (two workers, or the CLI and the
service) are settled by the database, never twice.
"""

from __future__ import annotations

import threading

import pytest

from headend.adcs.scheduling import answer_event
from headend.context import Ctx
from headend.errors import IllegalTransition, InvalidData, UnknownMeter
from headend.store import Channel, ChannelKind, Meter, SqlStore, Unit, open_store
from headend.store.lifecycles import ScheduleEvent
from headend.store.migrations import latest_version
from headend.store.records import (
    DeliveryState,
    JobState,
    ReadSpec,
    ScheduleSpec,
    ScheduleState,
)
from protocol.codes import Nack
from tests.headend.conftest import ctx_of, open_at

T0 = 1_711_929_600
CH = (Channel(ChannelKind.ACTIVE_IMPORT, Unit.WH), Channel(ChannelKind.ACTIVE_EXPORT, Unit.WH))


def _meter(store: SqlStore, mid: int) -> None:
    store.register_meter(Meter(mid, "1", 900, 0, 1, CH, T0))


@pytest.fixture
def ctx(backend: str, store_at: list[SqlStore]) -> Ctx:
    s = open_at(backend, store_at)
    for mid in (1, 2, 3):
        _meter(s, mid)
    return ctx_of(s)


def test_d01_schema_v2_is_migrated(backend: str, store_at: list[SqlStore]) -> None:
    s = open_at(backend, store_at)
    assert s.schema_version() == latest_version()
    tables = ("auth_counter", "group_member", "schedule", "job", "activity", "delivery")
    for table in (*tables, "missing_day", "daily_check"):
        assert s.db.table_exists(table)


def test_d01_counter_only_grows_and_survives_reopen(
    backend: str, ctx: Ctx, store_at: list[SqlStore]
) -> None:
    got = [ctx.registry.next_counter(1) for _ in range(5)]
    assert got == sorted(set(got)) and got[0] >= 1
    assert ctx.registry.next_counter(1, floor=T0) == T0  # a restored database jumps ahead
    assert ctx.registry.next_counter(1, floor=5) == T0 + 1  # and never back
    other = ctx_of(open_at(backend, store_at))
    assert other.registry.next_counter(1) == T0 + 2
    assert ctx.registry.next_counter(2) == 1  # per meter
    with pytest.raises(UnknownMeter):
        ctx.registry.next_counter(99)


def test_d01_counter_is_atomic_between_connections(
    backend: str, ctx: Ctx, store_at: list[SqlStore]
) -> None:
    conns = [ctx_of(open_at(backend, store_at)) for _ in range(2)]
    got: list[int] = []
    lock = threading.Lock()

    def work(o: Ctx) -> None:
        for _ in range(25):
            v = o.registry.next_counter(3)
            with lock:
                got.append(v)

    threads = [threading.Thread(target=work, args=(o,)) for o in conns]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == list(range(1, 51))  # no value handed out twice


def test_h01_unscheduled_until_placed(ctx: Ctx) -> None:
    assert ctx.registry.join_unscheduled(1, 10) and ctx.registry.join_unscheduled(2, 10)
    assert not ctx.registry.join_unscheduled(1, 11)  # already a member
    assert ctx.registry.unscheduled() == [1, 2]
    ctx.registry.set_group(1, 4, 4000, "01:21-01:41", 12)
    assert ctx.registry.unscheduled() == [2]
    assert ctx.registry.group_loads() == {4: 1}
    assert ctx.registry.group_of(1) == (4, 4000)
    assert not ctx.registry.join_unscheduled(1, 13)  # a re-registration keeps the group
    assert ctx.registry.group_of(1) == (4, 4000)


def _answer(ctx: Ctx, meter_id: int, seq: int, status: int, now_ms: int) -> bool:
    """The meter's answer to the send under ``seq``, as the ADCS records it."""
    sched = ctx.schedules.awaiting(meter_id, seq)
    if sched is None:
        return False
    event = answer_event(status, sched.spec.cancel)
    ctx.schedules.answer(meter_id, sched.spec.slot, event, now_ms, status or None)
    return True


def test_h02_schedule_lifecycle_ack_once(ctx: Ctx) -> None:
    ctx.schedules.put(ScheduleSpec(1, 0, offset_s=3600), "system:test", 100)
    (s,) = ctx.schedules.find(1)
    assert (s.state, s.source, s.attempts) == (ScheduleState.PENDING, "system:test", 0)
    ctx.schedules.sent(1, 0, 41, 200, ScheduleEvent.SEND)
    with pytest.raises(IllegalTransition, match="'send' is not allowed in state sent"):
        ctx.schedules.sent(1, 0, 42, 250, ScheduleEvent.SEND)  # sent once (another worker)
    ctx.schedules.sent(1, 0, 42, 300, ScheduleEvent.RESEND)  # missing ack: flagged, re-sent
    (s,) = ctx.schedules.find(1)
    assert (s.state, s.seqs, s.attempts, s.flagged_ms) == (ScheduleState.FLAGGED, (41, 42), 2, 300)
    assert _answer(ctx, 1, 41, 0, 350)  # a late ack of the first send
    assert not _answer(ctx, 1, 42, 0, 360)  # recorded once
    (s,) = ctx.schedules.find(1)
    assert (s.state, s.acked_ms) == (ScheduleState.ACKED, 350)
    assert not _answer(ctx, 2, 41, 0, 400)  # another meter's seq
    with pytest.raises(IllegalTransition, match="schedule of meter 1 slot 0: 'nack'"):
        ctx.schedules.answer(1, 0, ScheduleEvent.NACK, 410, 7)


def test_h07_cancel_busy_and_nack_states(ctx: Ctx) -> None:
    ctx.schedules.put(ScheduleSpec(1, 2, period_s=3600, offset_s=60), "party:utility-a", 1)
    ctx.schedules.sent(1, 2, 6, 2, ScheduleEvent.SEND)
    assert _answer(ctx, 1, 6, Nack.BUSY, 3)  # says nothing about the schedule: still open
    (s,) = ctx.schedules.find(1)
    assert (s.state, s.reason, s.acked_ms) == (ScheduleState.SENT, Nack.BUSY, None)
    ctx.schedules.sent(1, 2, 7, 4, ScheduleEvent.RESEND)
    assert _answer(ctx, 1, 7, Nack.BAD_PARAMETER, 5)
    (s,) = ctx.schedules.find(1)
    assert (s.state, s.reason) == (ScheduleState.NACKED, Nack.BAD_PARAMETER)
    ctx.schedules.put(ScheduleSpec(1, 2, cancel=True), "party:utility-a", 6)
    ctx.schedules.sent(1, 2, 8, 7, ScheduleEvent.SEND)
    assert _answer(ctx, 1, 8, 0, 8)
    (s,) = ctx.schedules.find(1)
    assert s.state is ScheduleState.CANCELLED and s.spec.cancel


@pytest.mark.parametrize(
    "kw",
    [
        {"slot": 0, "cancel": True},
        {"slot": 0, "period_s": 3600},
        {"slot": 1, "period_s": 3600, "offset_s": 3600},
        {"slot": 4},
        {"slot": 1, "period_s": 3600, "start": 100, "end": 50},
        {"slot": 1, "period_s": 3600, "what": 0},
    ],
)
def test_h07_bad_schedule_specs_are_refused(kw: dict[str, int]) -> None:
    with pytest.raises(InvalidData):
        ScheduleSpec(1, **kw)


def test_h05_job_is_claimed_by_one_worker(backend: str, ctx: Ctx, store_at: list[SqlStore]) -> None:
    jobs = [ctx.jobs.enqueue(ReadSpec(1), "cli", 0) for _ in range(6)]
    other = ctx_of(open_at(backend, store_at))
    a = ctx.jobs.claim("w1", 1000, limit=4)
    b = other.jobs.claim("w2", 2000)
    assert sorted(j.job_id for j in a + b) == jobs  # every job once
    assert {j.job_id for j in a}.isdisjoint(j.job_id for j in b)
    j = ctx.jobs.get(a[0].job_id)
    assert (j.state, j.worker, j.created_ms) == (JobState.SENT, "w1", 1000)  # stamped at claim
    ctx.jobs.sent(j.job_id, 9, 1100, 1500)
    assert ctx.jobs.for_reply(1, 9) is not None and ctx.jobs.for_reply(2, 9) is None
    assert [x.job_id for x in ctx.jobs.overdue("w1", 1500)] == [j.job_id]
    with pytest.raises(
        IllegalTransition, match=f"job {j.job_id}: 'ack' is not allowed in state sent"
    ):
        ctx.jobs.acknowledge(j.job_id, 1550)  # nothing to acknowledge yet
    ctx.jobs.complete(j.job_id, 1600)
    with pytest.raises(IllegalTransition, match="'fail' is not allowed in state done"):
        ctx.jobs.fail(j.job_id, 1700, "late")  # closed once
    j = ctx.jobs.get(j.job_id)
    assert (j.state, j.latency_ms) == (JobState.DONE, 600)
    assert ctx.jobs.acknowledge(j.job_id, 1800) and not ctx.jobs.acknowledge(j.job_id, 1900)
    assert ctx.jobs.get(j.job_id).requester_ack_ms == 1800
    with pytest.raises(UnknownMeter):
        ctx.jobs.enqueue(ReadSpec(77), "cli", 0)
    with pytest.raises(InvalidData):
        ctx.jobs.enqueue(ReadSpec(1), "no spaces allowed", 0)


def test_d09_routes_and_deliveries_are_idempotent(ctx: Ctx, backend: str) -> None:
    store = open_store(backend)
    try:
        from headend.store import EventRecord, Source

        store.ingest(events=[EventRecord(1, 11, T0, 0, Source.SCHEDULED, T0 + 5)])
    finally:
        store.close()
    assert ctx.events.add_route(11, "security", 1) and not ctx.events.add_route(11, "security", 2)
    assert ctx.events.add_route(0, "archive", 1)
    (eid,) = ctx.events.ids(1, [(T0, 11, 0)]).values()
    d1 = ctx.events.add_delivery("security", "event", "{}", 10, event_id=eid)
    assert d1 is not None
    assert ctx.events.add_delivery("security", "event", "{}", 11, event_id=eid) is None  # once
    assert [d.delivery_id for d in ctx.events.due(10)] == [d1]
    ctx.events.sent(d1, 12, 70, expire=False)
    assert ctx.events.due(69) == [] and len(ctx.events.due(70)) == 1  # re-send due
    acked = ctx.events.acknowledge(d1, 80)
    assert acked is not None and acked.state is DeliveryState.ACKED
    assert ctx.events.acknowledge(d1, 81) is None
    assert ctx.events.due(10_000) == []
    assert ctx.events.remove_route(11, "security") and not ctx.events.remove_route(11, "security")
    with pytest.raises(InvalidData):
        ctx.events.add_route(300, "x", 1)


def test_d01_activity_log_filters(ctx: Ctx) -> None:
    ctx.activity.log(1, "bad_frame", "BadCrc", 1)
    ctx.activity.log(2, "registered", "ok", 2)
    ctx.activity.log(3, "bad_frame", "unknown meter", None)
    assert [a.detail for a in ctx.activity.lines(kinds=["bad_frame"])] == [
        "BadCrc",
        "unknown meter",
    ]
    assert [a.kind for a in ctx.activity.lines(meter_id=2)] == ["registered"]
    assert len(ctx.activity.lines(since_ms=2)) == 2
