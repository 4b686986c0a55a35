"""The meter's MQTT client against a real private mosquitto, on CPython and MicroPython."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from hil.wait import wait_until
from tests.support.broker import Broker
from tests.support.mpy import run_mpy

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "firmware"))
from link.mqtt import Client  # noqa: E402

PROBE = b"probe"


async def _subscribed(sender: Client, topic: str, got: list[bytes]) -> None:
    """Until the broker routes ``topic`` to its subscriber: ``sender`` publishes
    probes there until one arrives in ``got`` (a SUBACK is not visible outside)."""

    async def probe_arrived() -> bool:
        if PROBE in got:
            return True
        await sender.publish(topic, PROBE)
        return False

    await wait_until(probe_arrived, 10, f"the subscription to {topic} live", every=0.1)


def test_qos1_both_ways_and_persistent_session(mqtt_broker: Broker) -> None:
    async def main() -> None:
        got: list[tuple[str, bytes]] = []  # what the meter received, probes aside
        probes: list[bytes] = []

        async def handler(topic: str, payload: bytes) -> None:
            if payload == PROBE:
                probes.append(payload)
            else:
                got.append((topic, payload))

        meter = Client(
            "meter-t1",
            mqtt_broker.host,
            mqtt_broker.port,
            subscriptions=("ami/v1/1/down",),
            handler=handler,
            keepalive_s=5,
        )
        head = Client("head-t1", mqtt_broker.host, mqtt_broker.port, keepalive_s=5)
        tasks = [asyncio.create_task(meter.run()), asyncio.create_task(head.run())]
        await wait_until(meter.connected.is_set, 5, "meter connected")
        await wait_until(head.connected.is_set, 5, "head connected")
        await _subscribed(head, "ami/v1/1/down", probes)
        pid = await head.publish("ami/v1/1/down", b"first")
        await wait_until(lambda: pid not in head.inflight, 5, "first PUBACKed")
        await wait_until(lambda: got == [("ami/v1/1/down", b"first")], 10, "first received")
        # meter offline: the broker queues QoS 1 downlinks for its persistent session
        # (sent after the meter's DISCONNECT: queued, or in flight on a dead socket and
        # re-sent on reconnect; either way the session keeps it)
        await meter.stop()
        pid = await head.publish("ami/v1/1/down", b"while-away")
        await wait_until(lambda: pid not in head.inflight, 5, "while-away PUBACKed")
        meter2 = Client(
            "meter-t1",
            mqtt_broker.host,
            mqtt_broker.port,
            subscriptions=("ami/v1/1/down",),
            handler=handler,
            keepalive_s=5,
        )
        tasks.append(asyncio.create_task(meter2.run()))
        await wait_until(lambda: ("ami/v1/1/down", b"while-away") in got, 10, "while-away received")
        await meter2.stop()
        await head.stop()
        for t in tasks:
            t.cancel()

    asyncio.run(main())


def test_unacked_publish_survives_broker_restart(mqtt_broker_private: Broker) -> None:
    b = mqtt_broker_private

    async def main() -> None:
        got: list[bytes] = []

        async def handler(topic: str, payload: bytes) -> None:
            got.append(payload)

        sink = Client(
            "sink-t2",
            b.host,
            b.port,
            subscriptions=("ami/v1/2/up",),
            handler=handler,
            keepalive_s=2,
        )
        meter = Client("meter-t2", b.host, b.port, keepalive_s=2)
        tasks = [asyncio.create_task(sink.run()), asyncio.create_task(meter.run())]
        await wait_until(meter.connected.is_set, 5, "meter connected")
        await wait_until(sink.connected.is_set, 5, "sink connected")
        await _subscribed(meter, "ami/v1/2/up", got)  # before the broker saves its sessions
        b.stop()
        await wait_until(lambda: not meter.connected.is_set(), 10, "meter saw the broker go")
        pid = await meter.publish("ami/v1/2/up", b"during-outage")
        assert pid in meter.inflight  # not forgotten while unacknowledged
        b.start()
        await wait_until(lambda: pid not in meter.inflight, 20, "re-sent and PUBACKed")
        await wait_until(lambda: b"during-outage" in got, 20, "during-outage received")
        assert meter.connected.is_set()  # reconnected
        await meter.stop()
        await sink.stop()
        for t in tasks:
            t.cancel()

    asyncio.run(main())


def test_client_runs_on_micropython_against_broker(mqtt_broker: Broker) -> None:
    code = f"""
import asyncio
from link.mqtt import Client
got = []
async def handler(topic, payload):
    got.append(payload)
async def main():
    c = Client("mpy-t3", "{mqtt_broker.host}", {mqtt_broker.port},
               subscriptions=("ami/v1/3/down",), handler=handler, keepalive_s=5)
    t = asyncio.create_task(c.run())
    while not c.connected.is_set():
        await asyncio.sleep_ms(20)
    await asyncio.sleep_ms(200)
    pid = await c.publish("ami/v1/3/down", b"loop")
    for _ in range(100):
        if pid not in c.inflight:
            break
        await asyncio.sleep_ms(50)
    print("acked", pid not in c.inflight)
    for _ in range(100):
        if got:
            break
        await asyncio.sleep_ms(50)
    print("got", got)
    await c.stop()
asyncio.run(main())
"""
    out = run_mpy(code, timeout=30)
    assert "acked True" in out
    assert "got [b'loop']" in out
