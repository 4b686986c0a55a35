"""H01, H02, H07 on the running service: real mosquitto, real store, fake meters.

Simulated time at 600x: the 15-minute ack timeout is 1.5 s of real time.
"""

from __future__ import annotations

import asyncio

import pytest

from headend.adcs import scheduling
from headend.clock import Clock
from headend.context import Ctx
from headend.errors import InvalidData
from headend.store import SqlStore
from headend.store.records import ScheduleSpec, ScheduleState
from tests.headend.conftest import ctx_of, open_at
from tests.support.broker import Broker
from tests.support.fakemeter import FakeMeter, MqttLink
from tests.support.service import T0, eventually, make_config, running_service


def _meters(broker: Broker, clock: Clock, ids: range, **kw: int) -> list[FakeMeter]:
    return [FakeMeter(i, MqttLink(broker.host, broker.port, i), clock, **kw) for i in ids]


def test_h01_registered_meters_wait_unscheduled_then_fill_groups_evenly(
    mqtt_broker: Broker, sqlite_url: str, store_at: list[SqlStore]
) -> None:
    # 3 groups of 20 min (00:01-01:01), 2 meters each: 7 meters -> one stays unscheduled
    cfg = make_config(
        mqtt_broker.url,
        sqlite_url,
        clock_start=T0 + 19 * 3600 + 58 * 60,  # 2 min before the 20:00 assignment
        window_end="01:01",
        group_capacity=2,
        worker="h01",
    )
    clock = Clock(cfg.speed, cfg.clock_start)

    async def main() -> None:
        async with running_service(cfg, clock):
            meters = _meters(mqtt_broker, clock, range(101, 108))
            for m in meters:
                await m.start()
            await asyncio.gather(*(m.register() for m in meters))
            ctx = ctx_of(open_at(sqlite_url, store_at))
            assert clock.now() < T0 + 20 * 3600, "registered before the evening"
            assert ctx.registry.unscheduled() == list(range(101, 108))
            await eventually(lambda: all(0 in m.schedules for m in meters[:6]), 20, "slot 0")
            assert ctx.registry.group_loads() == {0: 2, 1: 2, 2: 2}
            assert [ctx.registry.group_of(i)[0] for i in range(101, 108)] == [
                0,
                1,
                2,
                0,
                1,
                2,
                None,
            ]
            assert ctx.registry.unscheduled() == [107]  # every group full: waits for tomorrow
            window = Ctx.build(cfg, open_at(sqlite_url, store_at)).window
            for m in meters[:6]:
                grp, offset = ctx.registry.group_of(m.meter_id)
                assert grp is not None
                lo, hi = window.bounds(grp)
                slot = m.schedules[0]
                assert slot["offset_s"] == offset and lo <= offset < hi
                assert (slot["period_s"], slot["end"], slot["action"]) == (86400, 0, 0)
            await eventually(
                lambda: all(s.state is ScheduleState.ACKED for s in ctx.schedules.find(states=())),
                10,
                "acks recorded",
            )
            log = ctx.activity.lines(kinds=["group_assigned", "schedule_ack", "registered"])
            assert sum(a.kind == "registered" for a in log) == 7
            assert sum(a.kind == "schedule_ack" for a in log) == 6
            assert any("stays unscheduled" in a.detail for a in log if a.meter_id == 107)
            for m in meters:
                await m.stop()

    asyncio.run(main())


def test_h02_missing_ack_is_flagged_after_15_minutes_and_resent(
    mqtt_broker: Broker, sqlite_url: str, store_at: list[SqlStore]
) -> None:
    cfg = make_config(mqtt_broker.url, sqlite_url, worker="h02")
    clock = Clock(cfg.speed, cfg.clock_start)

    async def main() -> None:
        async with running_service(cfg, clock):
            (m,) = _meters(mqtt_broker, clock, range(201, 202), drop_schedule_sets=1)
            await m.start()
            await m.register()
            store = open_at(sqlite_url, store_at)
            ctx = Ctx.build(cfg, store)
            sent_at = clock.now()
            scheduling.set_schedule(
                ctx, ScheduleSpec(201, 0, offset_s=1800), "op:alice", clock.now_ms()
            )
            await eventually(lambda: 0 in m.schedules, 20, "schedule applied after a re-send")
            waited = clock.now() - sent_at
            assert waited >= cfg.schedule_ack_timeout_s  # not re-sent before 15 min
            (s,) = await eventually(
                lambda: [x for x in ctx.schedules.find(201) if x.state is ScheduleState.ACKED],
                10,
                "ack recorded",
            )
            assert s.attempts == 2 and s.flagged_ms is not None and len(s.seqs) == 2
            kinds = [a.kind for a in ctx.activity.lines(201)]
            assert kinds.index("schedule_sent") < kinds.index("schedule_ack_missing")
            assert kinds[-1] == "schedule_ack"
            missing = ctx.activity.lines(201, ["schedule_ack_missing"])[0].detail
            assert "flagged" in missing and "no ack" in missing
            await m.stop()

    asyncio.run(main())


def test_h07_non_default_schedule_set_update_cancel_logged_with_source(
    mqtt_broker: Broker, sqlite_url: str, store_at: list[SqlStore]
) -> None:
    cfg = make_config(mqtt_broker.url, sqlite_url, worker="h07")
    clock = Clock(cfg.speed, cfg.clock_start)

    async def main() -> None:
        async with running_service(cfg, clock):
            (m,) = _meters(mqtt_broker, clock, range(301, 302))
            await m.start()
            await m.register()
            ctx = Ctx.build(cfg, open_at(sqlite_url, store_at))
            now = clock.now_ms

            def acked(state: ScheduleState) -> bool:
                return [x.state for x in ctx.schedules.find(301)] == [state]

            start, end = T0 + 86400, T0 + 8 * 86400
            spec = ScheduleSpec(301, 1, period_s=3600, offset_s=300, start=start, end=end)
            scheduling.set_schedule(ctx, spec, "party:retailer-7", now())
            await eventually(lambda: m.schedules.get(1, {}).get("period_s") == 3600, 10, "set")
            await eventually(lambda: acked(ScheduleState.ACKED), 10, "set acked")
            assert (m.schedules[1]["start"], m.schedules[1]["end"]) == (start, end)
            # update: ongoing, every 15 min (= the meter's interval: the most often allowed)
            spec = ScheduleSpec(301, 1, period_s=900, offset_s=0)
            scheduling.set_schedule(ctx, spec, "system:recovery", now())
            await eventually(lambda: m.schedules.get(1, {}).get("period_s") == 900, 10, "update")
            await eventually(lambda: acked(ScheduleState.ACKED), 10, "update acked")
            assert m.schedules[1]["end"] == 0
            scheduling.cancel_schedule(ctx, 301, 1, "party:retailer-7", now())
            await eventually(lambda: 1 not in m.schedules, 10, "cancel")
            (s,) = await eventually(
                lambda: [x for x in ctx.schedules.find(301) if x.state is ScheduleState.CANCELLED],
                10,
                "cancel acked",
            )
            assert s.source == "party:retailer-7"
            sets = [a.detail for a in ctx.activity.lines(301, ["schedule_set"])]
            assert [d.rsplit("source ", 1)[1] for d in sets] == [
                "party:retailer-7",
                "system:recovery",
                "party:retailer-7",
            ]
            acks = ctx.activity.lines(301, ["schedule_ack"])
            assert len(acks) == 3 and all("source" in a.detail for a in acks)
            await m.stop()

    asyncio.run(main())


@pytest.mark.parametrize(
    ("period", "why"),
    [(600, "shorter than"), (86400, "more than once a day"), (2 * 86400, "more than once")],
)
def test_h07_frequency_rules_against_the_meter_interval(
    sqlite_url: str, store_at: list[SqlStore], period: int, why: str
) -> None:
    from headend.config import Config
    from headend.store import Channel, ChannelKind, Meter, Unit

    store = open_at(sqlite_url, store_at)
    store.register_meter(
        Meter(5, "1", 900, 0, 1, (Channel(ChannelKind.ACTIVE_IMPORT, Unit.WH),), T0)
    )
    ctx = Ctx.build(Config(database=sqlite_url), store)
    with pytest.raises(InvalidData, match=why):
        scheduling.set_schedule(ctx, ScheduleSpec(5, 1, period_s=period), "op", 0)
    assert ctx.schedules.find(5) == [] and ctx.activity.lines(5) == []  # nothing written
