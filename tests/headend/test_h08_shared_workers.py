"""Several head-end workers share the meters' uplinks (MQTT 5 shared subscription)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid

from headend.clock import Clock
from headend.store import SqlStore
from tests.headend.conftest import open_at
from tests.support.broker import Broker
from tests.support.fakemeter import DAY, FakeMeter, MqttLink
from tests.support.service import T0, make_config, running_service

DAY1 = T0 - DAY


def test_h08_two_workers_share_uplinks_and_store_each_datum_once(
    mqtt_broker: Broker, backend: str, store_at: list[SqlStore]
) -> None:
    group = f"t{uuid.uuid4().hex[:12]}"
    cfg1 = make_config(mqtt_broker.url, backend, worker="w1", share_group=group)
    cfg2 = make_config(mqtt_broker.url, backend, worker="w2", share_group=group)
    clock = Clock(cfg1.speed, cfg1.clock_start)
    ids = list(range(801, 813))

    async def main() -> None:
        async with contextlib.AsyncExitStack() as stack:
            w1 = await stack.enter_async_context(running_service(cfg1, clock))
            w2 = await stack.enter_async_context(running_service(cfg2, clock))
            meters = [
                FakeMeter(i, MqttLink(mqtt_broker.host, mqtt_broker.port, i), clock) for i in ids
            ]
            for m in meters:
                await m.start()
            for m in meters:
                await m.register()
            acks = await asyncio.gather(*(m.daily_read(DAY1) for m in meters))
            assert all(a["body"]["upto"] == DAY1 + DAY for a in acks)
            # the broker split the uplinks between the two workers
            assert w1.frames > 0 and w2.frames > 0
            assert w1.frames + w2.frames >= 2 * len(ids)
            for m in meters:
                await m.stop()

    asyncio.run(main())
    store = open_at(backend, store_at)
    assert sorted(store.meter_ids()) == ids
    for i in ids:
        got = store.intervals(i, 0, DAY1, DAY1 + DAY)
        assert len(got) == 96  # each interval once, whichever worker stored it
    assert store.stats().intervals == 96 * len(ids)
