"""H10: a time-sync answer's t2 is the request's arrival, its t3 the answer's departure.

The meter works out the round-trip delay as (t4 - t1) - (t3 - t2) and refuses
an answer whose delay is too long (4 s): whatever the head-end spends between
arrival and departure must fall between t2 and t3. The MQTT link stamps each
message as it enters the bounded incoming queue (a frame that waits behind
others keeps its arrival time), and the answer is built, t3 read, only when
the service sends it (after the commit, after frames sent before it).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Iterator

import pytest

from headend.api import Config
from headend.clock import Clock
from headend.context import Ctx
from headend.core import Core
from headend.store import SqlStore
from headend.transport.base import Uplink
from headend.transport.mqtt import MqttTransport, login_from
from hil.broker import Broker, find_mosquitto, running_broker
from hil.wait import wait_until
from tests.conftest import missing
from tests.headend.conftest import open_at
from tests.support.mqttpeer import Peer
from tests.support.signed import T0, SimMeter, deliver, frames_to

pytestmark = pytest.mark.req("H10")

KEY = secrets.token_hex(32)
WORKER = "w-stamps"


@pytest.fixture(scope="module")
def broker() -> Iterator[Broker]:
    if find_mosquitto() is None:
        missing("mosquitto not installed: run `make setup` (or apt-get install mosquitto)")
    with running_broker(master=bytes.fromhex(KEY), meters=(1101,), workers=(WORKER,)) as b:
        yield b


@pytest.mark.timeout(60)
def test_h10_uplink_keeps_its_arrival_time_while_it_waits_in_the_queue(broker: Broker) -> None:
    cfg = Config(broker=broker.url_for(WORKER), mqtt_ca_file=str(broker.ca), master_key=KEY)

    async def main() -> None:
        # one uplink in the head-end's hands at a time: the next waits in the queue
        t = MqttTransport(
            broker.host, broker.port, WORKER, "stamps", login=login_from(cfg), in_hand=1
        )
        release = asyncio.Event()
        got: list[tuple[Uplink, float]] = []

        async def deliver_(up: Uplink) -> None:
            got.append((up, time.time()))
            await release.wait()  # the head-end busy with the first frame

        task = asyncio.create_task(t.run(deliver_))
        await wait_until(t.connected.is_set, 10, "the transport subscribed")
        meter = Peer(broker.host, broker.port, "1101", broker.password(1101), broker.ca).connect()
        try:
            before = time.time()
            for raw in (b"first", b"second"):
                await asyncio.to_thread(meter.publish, "ami/v1/1101/up", raw)

            def queued() -> bool:
                c = t._client  # noqa: SLF001
                return c is not None and c._queue.qsize() == 1  # noqa: SLF001

            await wait_until(queued, 10, "the second frame waiting in the queue")
            released = time.time()
            release.set()
            await wait_until(lambda: len(got) == 2, 10, "both frames handled")
        finally:
            meter.close()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        (first, _), (second, handed) = got
        assert [first.frame, second.frame] == [b"first", b"second"]
        # stamped on arrival, before the wait: not when it was handed over
        assert before <= first.received <= second.received < released <= handed

    asyncio.run(main())


def test_h10_answer_built_when_sent_t2_arrival_t3_departure(
    sqlite_url: str, store_at: list[SqlStore]
) -> None:
    core = Core(Ctx.build(Config(), open_at(sqlite_url, store_at)))
    m = SimMeter(1102)
    assert frames_to(deliver(core, 1102, m.frame("register", m.register_body())), 1102)
    reads: list[int] = []

    def clock() -> int:
        reads.append(T0 * 1000 + 900)
        return reads[-1]

    arrived = T0 * 1000 + 100  # the link's stamp, earlier than the handling
    req = m.frame("time_sync_request", {"t1_ms": T0 * 1000})
    out = core.on_uplink(Uplink(1102, req, "mqtt"), arrived, clock)
    (d,) = out.downlinks
    assert reads == []  # nothing built yet: t3 is read when the frame leaves
    stored = core.ctx.db.query("SELECT counter FROM auth_counter WHERE meter_id = 1102")
    fields = m.take(d.wire())
    assert fields is not None and reads == [T0 * 1000 + 900]
    body = fields["body"]
    assert (body["t1_ms"], body["t2_ms"], body["t3_ms"]) == (T0 * 1000, arrived, T0 * 1000 + 900)
    # the counter was the store's, taken in the request's transaction
    assert stored == [(fields["auth"]["counter"],)] and m.refused == []


def test_h10_clock_reads_a_past_wall_instant() -> None:
    clock = Clock(speed=1200.0, start=float(T0), anchor=1_700_000_000.0)
    assert clock.ms_at(1_700_000_000.0) == T0 * 1000
    assert clock.ms_at(1_700_000_000.5) == T0 * 1000 + 600_000
    assert clock.ms_at(1_699_999_999.0) == T0 * 1000 - 1_200_000
