"""H08: MQTT and serial side by side; the store records which meter uses which.

The serial line is a TCP socket the service opens as ``socket://`` (pyserial
URL), with two meters on it (multi-drop) and line noise between frames.
"""

from __future__ import annotations

import asyncio

from headend.adcs import ondemand
from headend.clock import Clock
from headend.store import Source, SqlStore
from headend.store.records import JobState, ReadSpec
from tests.headend.conftest import ctx_of, open_at
from tests.support.broker import Broker
from tests.support.fakemeter import DAY, FakeMeter, MqttLink, SerialBus, SerialLink
from tests.support.service import T0, eventually, make_config, running_service


def test_h08_mqtt_and_serial_meters_collected_and_links_recorded(
    mqtt_broker: Broker, sqlite_url: str, store_at: list[SqlStore]
) -> None:
    async def main() -> None:
        bus = SerialBus()
        await bus.start()
        cfg = make_config(mqtt_broker.url, sqlite_url, worker="h08", serial=({"url": bus.url},))
        clock = Clock(cfg.speed, cfg.clock_start)
        serial_name = f"serial:{bus.url}"
        async with running_service(cfg, clock):
            await asyncio.wait_for(bus.connected.wait(), 10)
            s1 = FakeMeter(1101, SerialLink(bus, 1101), clock)
            s2 = FakeMeter(1102, SerialLink(bus, 1102), clock)
            mq = FakeMeter(1103, MqttLink(mqtt_broker.host, mqtt_broker.port, 1103), clock)
            for m in (s1, s2, mq):
                await m.start()
            await bus.write_raw(b"\x7e\x01\x02\x7d\x7e\x00noise\x7e")  # a broken frame, noise
            await asyncio.gather(s1.register(), s2.register(), mq.register())
            await asyncio.gather(*(m.daily_read(T0 - DAY) for m in (s1, s2, mq)))
            store = open_at(sqlite_url, store_at)
            ctx = ctx_of(store)
            assert [store.get_meter(i).transport for i in (1101, 1102, 1103)] == [
                serial_name,
                serial_name,
                "mqtt",
            ]
            assert store.stats().intervals == 3 * 96
            # on-demand reads go out on each meter's own link
            jobs = [ondemand.request_read(ctx, ReadSpec(i), "cli", 0) for i in (1101, 1103)]
            await eventually(
                lambda: all(ctx.jobs.get(j).state is JobState.DONE for j in jobs), 10, "reads done"
            )
            assert any(f["type"] == "read_request" for f in s1.received)
            assert not any(f["type"] == "read_request" for f in s2.received)  # not its frame
            midnight = int(clock.now()) // DAY * DAY
            got = store.intervals(1101, 0, midnight, midnight + DAY)
            assert got and {iv.source for iv in got} == {Source.ON_DEMAND}
            # meter 1101 is moved to MQTT: the change is recorded and downlinks follow it
            await s1.stop()
            moved = FakeMeter(1101, MqttLink(mqtt_broker.host, mqtt_broker.port, 1101), clock)
            moved.last_counter = s1.last_counter  # the same meter: it keeps its replay guard
            await moved.start()
            await moved.push_events([{"code": 2, "time": T0, "data": 0}])
            assert store.get_meter(1101).transport == "mqtt"
            (change,) = ctx.activity.lines(1101, ["link_changed"])
            assert serial_name in change.detail
            assert [t for _, t, *_ in ctx.registry.links(1101)] == ["mqtt", serial_name]
            job = ondemand.request_read(ctx, ReadSpec(1101), "cli", 0)
            await eventually(lambda: ctx.jobs.get(job).state is JobState.DONE, 10, "read over mqtt")
            assert any(f["type"] == "read_request" for f in moved.received)
            for m in (s2, mq, moved):
                await m.stop()
        await bus.close()

    asyncio.run(main())
