"""M20: a key rotation end to end: `headend keys rotate` (a real process), the
service over a real broker, a fake meter that takes key_set, and a head-end
stopped mid-rotation (state in the store: it resumes and finishes)."""

from __future__ import annotations

import asyncio

import pytest

from headend.clock import Clock
from headend.store import SqlStore
from tests.headend.conftest import ctx_of, open_at
from tests.support.broker import Broker
from tests.support.cli import run_module
from tests.support.fakemeter import FakeMeter, MqttLink
from tests.support.service import T0, eventually, make_config, running_service

pytestmark = pytest.mark.req("M20")


def test_m20_rotation_survives_a_head_end_stop_and_then_only_the_new_key_counts(
    mqtt_broker: Broker, sqlite_url: str, store_at: list[SqlStore]
) -> None:
    cfg = make_config(mqtt_broker.url, sqlite_url, worker="m20rot", key_retry_s=120)
    clock = Clock(cfg.speed, cfg.clock_start)

    async def main() -> None:
        m = FakeMeter(961, MqttLink(mqtt_broker.host, mqtt_broker.port, 961), clock)
        async with running_service(cfg, clock):
            await m.start()
            await m.register()
        # the head-end is down: the operator queues the rotation from another process
        proc = await asyncio.to_thread(
            run_module, "headend", "keys", "rotate", "961", "--database", sqlite_url
        )
        assert proc.returncode == 0, proc.stderr
        ctx = ctx_of(open_at(sqlite_url, store_at))
        assert ctx.auth.get(961).state == "queued"  # type: ignore[union-attr]
        async with running_service(cfg, clock):  # back: it sends key_set, the meter answers
            await eventually(lambda: m.key_version == 1, 15, "the meter took key version 1")
            await eventually(
                lambda: (st := ctx.auth.get(961)) is not None and st.key_version == 1,
                15,
                "the head-end confirmed version 1",
            )
            ack = await m.daily_read(T0 - 86_400)  # signed with the new key: taken and acked
            assert ack["type"] == "read_ack" and m.rejected == []
            assert ctx.store.coverage(961, T0 - 86_400, T0)[0].present == 96
            old = FakeMeter(961, MqttLink(mqtt_broker.host, mqtt_broker.port, 961), clock)
            old.master = m.master  # the old key (version 0): refused from now on
            await old.start()
            await old.send("event", {"events": [{"code": 11, "time": T0, "data": 9}]})
            await eventually(
                lambda: any("BadMac" in a.detail for a in ctx.activity.lines(kinds=["rejected"])),
                15,
                "an uplink under the old key refused",
            )
            assert ctx.store.events(961, T0, T0 + 1) == []
            for x in (m, old):
                await x.stop()

    asyncio.run(main())


def test_m20_refusals_counted_before_a_stop_are_written_at_the_stop(
    mqtt_broker: Broker, sqlite_url: str, store_at: list[SqlStore]
) -> None:
    cfg = make_config(mqtt_broker.url, sqlite_url, worker="m20stop", speed=1.0)
    clock = Clock(cfg.speed, cfg.clock_start)

    async def main() -> None:
        async with running_service(cfg, clock) as svc:
            m = FakeMeter(962, MqttLink(mqtt_broker.host, mqtt_broker.port, 962), clock)
            await m.start()
            _, raw = m.frame("event", {"events": []})
            await m.link.send(raw[:-1] + bytes([raw[-1] ^ 1]))  # a bad CRC
            await eventually(
                lambda: svc.core is not None and svc.core.rejections.pending() == 1, 10, "counted"
            )
            await m.stop()
        rows = ctx_of(open_at(sqlite_url, store_at)).activity.lines(kinds=["bad_frame"])
        assert len(rows) == 1 and rows[0].detail.startswith("1 frame(s) refused")

    asyncio.run(main())
