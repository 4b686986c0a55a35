"""H08: the NATS JetStream transport on a real 3-node cluster (hil/natscluster.py).

Meters speak MQTT 3.1.1 to different nodes, logged in as themselves; two
workers pull one durable work queue of uplinks; every datum is stored once and
every meter gets its acks (QoS 1 downlinks through the cluster).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import aiomqtt
import nats
import nats.js.errors
import pytest
from nats.js.client import JetStreamContext

from headend.clock import Clock
from headend.config import DEV_MASTER_KEY, Config, load
from headend.errors import ConfigError
from headend.service import Service
from headend.store import SqlStore
from headend.transport import nats as nats_link
from headend.transport.base import TransportError, Uplink
from headend.transport.mqtt import Login, LoginRefused, Message, TooLarge
from headend.transport.nats import NatsTransport, meter_from_subject, subject_of
from hil.natscluster import Logins, NatsCluster, NatsError, find_nats_server
from hil.natscluster import running_cluster as cluster_of
from hil.rig import cancel_hard
from tests.conftest import missing
from tests.headend.conftest import open_at
from tests.support.fakemeter import DAY, FakeMeter
from tests.support.service import T0, eventually, make_config, running_service

DAY1 = T0 - DAY
MASTER = bytes.fromhex(DEV_MASTER_KEY)
METERS = tuple(range(8401, 8407))
WORKERS = ("nw1", "nw2")
METER_CONNECT_S = 90  # a meter login, tried again till then (`_meter_client`)
STREAM = Config().nats_stream


@pytest.fixture(scope="module")
def nats_cluster() -> Iterator[NatsCluster]:
    if find_nats_server() is None:
        missing("nats-server not installed: run `make setup` (or apt-get install nats-server)")
    try:
        with cluster_of(logins=Logins(MASTER, WORKERS, METERS)) as c:
            yield c
    except NatsError as e:
        missing(str(e))


def nats_config(c: NatsCluster, worker: str, db: str, group: str) -> Config:
    return make_config(
        f"mqtt://{worker}@127.0.0.1:1",  # the login's user; the broker is the cluster
        db,
        worker=worker,
        insecure=True,
        transport="nats",
        nats_url=",".join(c.urls),
        share_group=group,
    )


@pytest.mark.req("H08")
@pytest.mark.timeout(90)
def test_h08_nats_two_workers_share_one_work_queue_and_store_each_datum_once(
    nats_cluster: NatsCluster, sqlite_url: str, store_at: list[SqlStore]
) -> None:
    group = f"t{uuid.uuid4().hex[:12]}"  # a durable consumer of its own
    cfgs = [nats_config(nats_cluster, w, sqlite_url, group) for w in WORKERS]
    clock = Clock(cfgs[0].speed, cfgs[0].clock_start)

    async def main() -> None:
        await _fresh_stream(nats_cluster)  # a work queue has one consumer (all workers')
        async with contextlib.AsyncExitStack() as stack:
            svcs = [await stack.enter_async_context(running_service(c, clock)) for c in cfgs]
            meters = []
            for k, i in enumerate(METERS):  # spread over the three nodes
                meters.append(FakeMeter(i, nats_cluster.meter_link(i, k), clock))
            for m in meters:
                await m.start()
            await asyncio.gather(*(m.register() for m in meters))
            acks = await asyncio.gather(*(m.daily_read(DAY1) for m in meters))
            assert all(a["body"]["upto"] == DAY1 + DAY for a in acks)
            assert sum(s.frames for s in svcs) >= 2 * len(METERS)
            assert all(s.mqtt.name == "nats" for s in svcs)
            for m in meters:
                await m.stop()

    asyncio.run(main())
    store = open_at(sqlite_url, store_at)
    assert sorted(store.meter_ids()) == list(METERS)
    for i in METERS:
        assert len(store.intervals(i, 0, DAY1, DAY1 + DAY)) == 96
    assert store.stats().intervals == 96 * len(METERS)


@pytest.mark.req("H08")
def test_h08_nats_worker_with_a_wrong_password_is_refused_in_one_line(
    nats_cluster: NatsCluster, sqlite_url: str
) -> None:
    cfg = nats_config(nats_cluster, "nw1", sqlite_url, "refused")
    cfg = dataclasses.replace(cfg, mqtt_password="not-the-password")

    async def main() -> None:
        svc = Service(cfg)
        with pytest.raises(LoginRefused, match="refused nw1"):
            await asyncio.wait_for(svc.run(), 20)

    asyncio.run(main())


@pytest.mark.req("H08")
def test_h08_nats_config_and_subjects() -> None:
    cfg = load(transport="nats", nats_url="nats://a:4222, tls://b:4222")
    assert cfg.nats_servers == ["nats://a:4222", "tls://b:4222"]
    for bad in ({"transport": "amqp"}, {"nats_url": "http://a"}, {"nats_url": "nats://u:p@a:1"}):
        with pytest.raises(ConfigError):
            load(**bad)
    assert subject_of("ami/v1/7/down") == "ami.v1.7.down"
    assert meter_from_subject("ami.v1.7.up") == 7
    assert meter_from_subject("ami.v1.x.up") is None
    assert meter_from_subject("ami.v1.7.down") is None


def _stream_ready(js: JetStreamContext) -> Callable[[], Awaitable[bool]]:
    """The uplink stream exists (the first worker made it; else this test makes it)."""

    async def ready() -> bool:
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await js.stream_info(STREAM)
            return True
        await js.add_stream(name=STREAM, subjects=["ami.v1.*.up"], retention="workqueue")
        return True

    return ready


async def _fresh_stream(c: NatsCluster) -> None:
    """Remove what earlier tests left on the uplink stream: consumers, messages."""
    nc = await nats.connect(c.urls, user="nw1", password=_pw_of("nw1"))
    try:
        js = nc.jetstream()
        with contextlib.suppress(nats.js.errors.NotFoundError):
            for ci in await js.consumers_info(STREAM):
                await js.delete_consumer(STREAM, ci.name)
            await js.purge_stream(STREAM)
    finally:
        await nc.close()


def _pw_of(user: str) -> str:
    return Logins(MASTER).password(user)


def _pw(meter: int) -> str:
    return Logins(MASTER).password(meter)


@contextlib.asynccontextmanager
async def _meter_client(port: int, meter: int) -> AsyncIterator[aiomqtt.Client]:
    """A meter's own MQTT login to one node. The account's first MQTT client waits while
    the servers make its MQTT streams (three replicas): on a busy machine that took
    longer than one CONNECT's 30 s (a CI run of 2026-12-07), so the client connects
    again until ``METER_CONNECT_S``, as a meter reconnects."""
    deadline = time.monotonic() + METER_CONNECT_S
    while True:
        client = aiomqtt.Client(
            "127.0.0.1",
            port,
            identifier=str(meter),
            username=str(meter),
            password=_pw(meter),
            clean_session=True,
            timeout=30,
        )
        try:
            await client.__aenter__()
            break
        except aiomqtt.MqttError:
            if time.monotonic() >= deadline:
                raise
    try:
        yield client
    finally:
        await client.__aexit__(None, None, None)


@pytest.mark.req("H08", "T02")
@pytest.mark.timeout(METER_CONNECT_S + 90)  # a meter login may take its retries
def test_h08_t02_nats_meter_reads_only_its_downlinks_and_writes_only_its_uplinks(
    nats_cluster: NatsCluster,
) -> None:
    a, b = METERS[0], METERS[1]

    async def main() -> None:
        async with _meter_client(nats_cluster.mqtt_ports[0], b) as mb:
            for topic in (f"ami/v1/{a}/down", "ami/v1/+/down", "#", "$MQTT/sub/#"):
                (code,) = await mb.subscribe(topic, qos=1)
                assert code.is_failure, topic  # refused, not granted
            (code,) = await mb.subscribe(f"ami/v1/{b}/down", qos=1)
            assert not code.is_failure
            # what a meter publishes as another meter never reaches the uplink stream
            nc = await nats.connect(nats_cluster.urls, user="nw1", password=_pw_of("nw1"))
            try:
                js = nc.jetstream()
                await eventually(_stream_ready(js), 30, "the uplink stream")
                last = (await js.stream_info(STREAM)).state.last_seq
                await mb.publish(f"ami/v1/{a}/up", b"forged", qos=1)
                await mb.publish(f"ami/v1/{b}/up", b"own", qos=1)

                async def arrived() -> bool:
                    return (await js.stream_info(STREAM)).state.last_seq > last

                await eventually(arrived, 10, "the meter's own uplink in the stream")
                assert (await js.stream_info(STREAM)).state.last_seq == last + 1
                assert (await js.get_msg(STREAM, last + 1)).subject == f"ami.v1.{b}.up"
            finally:
                await nc.close()
        with pytest.raises(aiomqtt.MqttError):  # a wrong password: no connection at all
            async with aiomqtt.Client(
                "127.0.0.1", nats_cluster.mqtt_ports[1], username=str(a), password="x" * 32
            ):
                pass

    asyncio.run(main())


@pytest.mark.req("H08")
def test_h08_nats_uplink_not_acked_until_delivered_goes_to_another_worker(
    nats_cluster: NatsCluster,
) -> None:
    """A worker that dies before its commit (deliver never returned) acknowledged
    nothing: after the ack wait the stream hands the uplink to the other worker."""
    meter = METERS[2]
    durable = f"t{uuid.uuid4().hex[:8]}"

    def worker(name: str) -> NatsTransport:
        login = Login(name, _pw_of(name))
        return NatsTransport(
            nats_cluster.urls, name, login, stream=STREAM, ack_wait_s=2, durable=durable
        )

    async def main() -> None:
        stuck: list[Uplink] = []
        done: list[Uplink] = []

        async def never(up: Uplink) -> None:  # the commit that never comes
            stuck.append(up)
            await asyncio.Event().wait()

        async def commit(up: Uplink) -> None:
            done.append(up)

        await _fresh_stream(nats_cluster)  # a work queue has one consumer (all workers')
        w1, w2 = worker("nw1"), worker("nw2")
        t1 = asyncio.create_task(w1.run(never))
        await eventually(w1.connected.is_set, 30, "worker 1 pulling")
        link = nats_cluster.meter_link(meter, 1)
        m = FakeMeter(meter, link, Clock(1.0, float(T0)))
        await m.start()
        await m.send("event", {"events": []})
        await eventually(lambda: stuck, 10, "worker 1 holding the uplink")
        await cancel_hard(t1, "worker 1")  # dies before its commit: no ack
        assert w1.acked == 0
        t2 = asyncio.create_task(w2.run(commit))
        try:
            await eventually(lambda: done, 15, "the uplink handed to worker 2")
            assert done[0].frame == stuck[0].frame and done[0].meter_id == meter
            await eventually(lambda: w2.acked == 1, 5, "worker 2 acknowledged it")
        finally:
            await cancel_hard(t2, "worker 2")
            await m.stop()

    asyncio.run(main())


@pytest.mark.req("H08")
@pytest.mark.timeout(METER_CONNECT_S + 90)  # a meter login may take its retries
def test_h08_nats_publish_many_sends_a_group_in_order_with_one_outcome_each(
    nats_cluster: NatsCluster,
) -> None:
    """The service sends a batch's answers with `publish_many`: on NATS too they reach
    the meter in order, QoS 1, and a message the broker would refuse is reported
    alone (TooLarge) while the others go."""
    meter = METERS[3]
    down = f"ami/v1/{meter}/down"
    too_big = b"x" * 9000

    async def main() -> None:
        await _fresh_stream(nats_cluster)
        link = NatsTransport(
            nats_cluster.urls, "nw1", Login("nw1", _pw_of("nw1")), stream=STREAM, durable="pm"
        )

        async def nothing(up: Uplink) -> None:
            pass

        run = asyncio.create_task(link.run(nothing))
        try:
            async with _meter_client(nats_cluster.mqtt_ports[2], meter) as mc:
                await mc.subscribe(down, qos=1)
                await eventually(link.connected.is_set, 30, "the worker connected")
                msgs = [Message(down, b"1"), Message(down, too_big), Message(down, b"2")]
                msgs.append(Message(down, b"3"))
                out = await link.publish_many(msgs)
                assert out[0] is None and out[2] is None and out[3] is None
                assert isinstance(out[1], TooLarge)
                got: list[tuple[bytes, int]] = []
                async with asyncio.timeout(10):
                    async for m in mc.messages:
                        assert isinstance(m.payload, bytes)
                        got.append((m.payload, m.qos))
                        if len(got) == 3:
                            break
                assert got == [(b"1", 1), (b"2", 1), (b"3", 1)]
        finally:
            await cancel_hard(run, "the worker")

    asyncio.run(main())


@pytest.mark.req("H08")
def test_h08_nats_publish_many_unconnected_reports_each_message(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(nats_link, "PUBLISH_TIMEOUT_S", 0.05)

    async def main() -> None:
        link = NatsTransport(["nats://127.0.0.1:1"], "nw1")
        msgs = [Message("ami/v1/1/down", b"a"), Message("ami/v1/1/down", b"x" * 9000, 0)]
        out = await link.publish_many(msgs)
        assert isinstance(out[1], TooLarge)
        assert isinstance(out[0], TransportError) and "not connected" in str(out[0])
        assert await link.publish_many([]) == []
        with pytest.raises(TransportError, match="not connected"):
            await link.publish("ami/v1/1/down", b"a")

    asyncio.run(main())
