"""D09, N03 (event routing with acknowledgement) and H10 (time service)."""

from __future__ import annotations

import asyncio
import json

from headend.clock import Clock
from headend.store import SqlStore
from headend.store.records import DeliveryState
from protocol.codes import Event
from tests.headend.conftest import ctx_of, open_at
from tests.support.broker import Broker
from tests.support.fakemeter import FakeMeter, MqttLink
from tests.support.service import T0, Subscriber, eventually, make_config, running_service

TAMPER, POWER_DOWN, OUT_OF_SYNC = Event.TAMPER, Event.POWER_DOWN, Event.CLOCK_OUT_OF_SYNC


def test_d09_events_stored_routed_resent_until_acked(
    mqtt_broker: Broker, backend: str, store_at: list[SqlStore]
) -> None:
    cfg = make_config(mqtt_broker.url, backend, worker="d09", notify_retry_s=120)
    clock = Clock(cfg.speed, cfg.clock_start)

    async def main() -> None:
        async with (
            running_service(cfg, clock),
            Subscriber(mqtt_broker.host, mqtt_broker.port, ("ami/v1/notify/#",)) as inbox,
        ):
            store = open_at(backend, store_at)
            ctx = ctx_of(store)
            ctx.events.add_route(TAMPER, "security", 0)
            ctx.events.add_route(0, "archive", 0)  # every code
            m = FakeMeter(901, MqttLink(mqtt_broker.host, mqtt_broker.port, 901), clock)
            await m.start()
            await m.register()
            t = int(clock.now()) - 30
            events = [
                {"code": TAMPER, "time": t, "data": 3},
                {"code": POWER_DOWN, "time": t, "data": 0},
            ]
            ack = await m.push_events(events)
            assert ack["type"] == "event_ack"
            await m.push_events(events)  # the meter repeats: stored and routed once
            stored = store.events(901, t, t + 1)
            assert [(e.code, e.time) for e in stored] == [(POWER_DOWN, t), (TAMPER, t)]
            assert all(e.received_at >= t for e in stored)  # meter time and receipt time
            sec = await eventually(lambda: inbox.json("ami/v1/notify/security"), 10, "security")
            assert (
                sec[0]["code"] == TAMPER and sec[0]["meter"] == 901 and sec[0]["name"] == "tamper"
            )
            arch = await eventually(
                lambda: (
                    len(inbox.json("ami/v1/notify/archive")) >= 2
                    and inbox.json("ami/v1/notify/archive")
                ),
                10,
                "archive gets both",
            )
            assert sorted(a["code"] for a in arch[:2]) == [POWER_DOWN, TAMPER]
            # security acknowledges; archive does not, so it gets re-sends
            await inbox.publish(
                sec[0]["ack_topic"], json.dumps({"delivery": sec[0]["delivery"]}).encode()
            )
            await eventually(
                lambda: (
                    len({a["delivery"] for a in inbox.json("ami/v1/notify/archive")})
                    < len(inbox.json("ami/v1/notify/archive"))
                ),
                10,
                "archive re-sent",
            )
            ds = {d.recipient + str(d.event_id): d for d in ctx.events.deliveries()}
            assert len(ds) == 3  # (tamper -> security, archive), (power_down -> archive)
            sd = await eventually(
                lambda: [
                    d for d in ctx.events.deliveries() if d.recipient == "security" and d.acked_ms
                ],
                10,
                "ack recorded",
            )
            assert sd[0].state is DeliveryState.ACKED and sd[0].sent_ms is not None
            # N03: routing latency (receipt -> first send) is recorded per delivery
            assert all(
                d.sent_ms is not None and d.sent_ms >= d.created_ms for d in ctx.events.deliveries()
            )
            assert any(a.kind == "delivery_acked" for a in ctx.activity.lines())
            await m.stop()

    asyncio.run(main())


def test_n03_events_are_routed_on_receipt_not_on_a_timer(
    mqtt_broker: Broker, sqlite_url: str, store_at: list[SqlStore]
) -> None:
    # The ticker runs once at start (poll_s huge): a delivery can only go out on receipt.
    cfg = make_config(mqtt_broker.url, sqlite_url, worker="n03", poll_s=1000)
    clock = Clock(cfg.speed, cfg.clock_start)

    async def main() -> None:
        ctx = ctx_of(open_at(sqlite_url, store_at))
        ctx.events.add_route(TAMPER, "security", 0)
        async with (
            running_service(cfg, clock),
            Subscriber(mqtt_broker.host, mqtt_broker.port, ("ami/v1/notify/security",)) as inbox,
        ):
            m = FakeMeter(902, MqttLink(mqtt_broker.host, mqtt_broker.port, 902), clock)
            await m.start()
            await m.register()
            await m.push_events([{"code": TAMPER, "time": T0, "data": 0}])
            (msg,) = await eventually(lambda: inbox.json(), 10, "delivered")
            assert msg["code"] == TAMPER
            await m.stop()

    asyncio.run(main())


def test_h10_time_sync_answers_from_head_end_clock_and_sets_far_off_meters(
    mqtt_broker: Broker, sqlite_url: str, store_at: list[SqlStore]
) -> None:
    cfg = make_config(mqtt_broker.url, sqlite_url, worker="h10", speed=1.0)
    clock = Clock(cfg.speed, cfg.clock_start)

    async def main() -> None:
        async with running_service(cfg, clock):
            good = FakeMeter(951, MqttLink(mqtt_broker.host, mqtt_broker.port, 951), clock)
            off = FakeMeter(
                952, MqttLink(mqtt_broker.host, mqtt_broker.port, 952), clock, skew_s=-300
            )
            for mt in (good, off):
                await mt.start()
                await mt.register()
            # four timestamps from the head-end clock: the offset is what the meter is off by
            assert abs(await good.time_sync()) < 1000
            assert abs(await off.time_sync() - 300_000) < 1000
            # > 120 s off: the meter reports event 4; the head-end sends an authenticated time_set
            await off.push_events([{"code": OUT_OF_SYNC, "time": off.now(), "data": 300}])
            (ts,) = await eventually(
                lambda: [f for f in off.received if f["type"] == "time_set"], 10, "time_set"
            )
            assert ts["auth"] is not None and off.rejected == []  # MAC and counter verified
            assert abs(off.skew_s) <= 1 and abs(await off.time_sync()) < 1000
            # a new report gets a new time_set; its repeat (a meter retry) does not
            report = [{"code": OUT_OF_SYNC, "time": ts["timestamp"] + 5, "data": 200}]
            for _ in range(3):  # the third's ack comes after anything sent for the second
                await off.push_events(report)
            assert len([f for f in off.received if f["type"] == "time_set"]) == 2
            ctx = ctx_of(open_at(sqlite_url, store_at))
            logged = ctx.activity.lines(952, ["time_set"])
            assert len(logged) == 2 and "300 s off" in logged[0].detail
            for mt in (good, off):
                await mt.stop()

    asyncio.run(main())
