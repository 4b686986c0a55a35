"""NATS JetStream link (nats-py): meters speak MQTT 3.1.1 to any node of a NATS
cluster (its MQTT listener); workers share a durable work queue of uplinks.

Uplinks. An MQTT publish on ``ami/v1/<id>/up`` is the NATS subject
``ami.v1.<id>.up`` (nats-server maps ``/`` to ``.``). A stream (``nats_stream``,
work-queue retention, ``nats_replicas`` copies) keeps every one until a worker
acknowledges it; all workers pull from ONE durable consumer (named after
``share_group``), so each uplink goes to one worker. A work-queue stream takes
one consumer per subject: a consumer left by an old ``share_group`` must be
deleted (``nats consumer rm``) before workers of a new group can pull.

A worker acknowledges a message only once ``deliver`` has returned, i.e. after
the service committed it and sent its answers; a worker that dies holding
messages leaves them unacknowledged, and the server hands them to another
worker after ``nats_ack_wait_s``. A message handed twice (an
acknowledgement lost with a node) is a meter's repeat to the head-end: it is
stored once.

Downlinks and publications. nats-server delivers a NATS message to an MQTT
subscriber with QoS 0, unless it is stored in the server's own MQTT stream
(``$MQTT_msgs``, subject ``$MQTT.msgs.<subject>``) with the header that marks
an MQTT QoS 1 publish: then the subscriber's session gets it with QoS 1 and
the server re-sends it until the meter's PUBACK. So a QoS 1 frame is a
JetStream publish there, and returns once the stream (replicated) holds it.
MQTT 5 message expiry has no equivalent: ``expiry_s`` is not carried (the
meter's counter check refuses a stale frame any way).

Reconnection is nats-py's (every server of ``nats_url``, forever); a pull that
fails while it reconnects is tried again with backoff. A refused login ends
the service with one line (`LoginRefused`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    PubAck,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.client import JetStreamContext

from headend.brokerconf import MAX_PACKET_SIZE
from headend.config import Config
from headend.transport.base import Deliver, TransportError, Uplink, backoff_s
from headend.transport.mqtt import (
    Login,
    LoginRefused,
    Message,
    OtherDeliver,
    login_from,
    too_large,
)

log = logging.getLogger(__name__)

UP_SUBJECT = "ami.v1.*.up"
MQTT_QOS1 = "$MQTT.msgs."  # nats-server's MQTT stream: what is stored here goes out QoS 1
MQTT_PUB_HEADER = {"Nmqtt-Pub": "1"}  # what nats-server marks an MQTT QoS 1 publish with
PUBLISH_TIMEOUT_S = 5.0
IN_HAND = 200  # uplinks handed to the service and not yet acknowledged (two of its batches)
FETCH_WAIT_S = 1.0
STREAM_MAX_AGE_S = 7 * 86_400  # a meter repeats unacknowledged data; a week of backlog at most
MAX_ACK_PENDING = 20_000  # every worker together


def subject_of(topic: str) -> str:
    """The NATS subject of an MQTT topic (our topics have no '.' to escape)."""
    return topic.replace("/", ".")


def topic_of(subject: str) -> str:
    return subject.replace(".", "/")


def meter_from_subject(subject: str) -> int | None:
    """The meter id of ``ami.v1.<id>.up``, or None for any other subject."""
    parts = subject.split(".")
    if len(parts) != 4 or parts[:2] != ["ami", "v1"] or parts[3] != "up":
        return None
    if not parts[2].isdigit():
        return None
    meter = int(parts[2])
    return meter if meter <= 0xFFFFFFFF else None


class NatsTransport:
    """Args: servers (NATS URLs of the cluster's nodes); worker: this worker's name
    (the connection's name); login: user, password, TLS (as the MQTT broker's);
    stream, replicas, ack_wait_s: the uplink work queue; durable: the consumer
    every worker shares; extra_subjects: queue-group subscriptions (notification
    acks) whose messages go to ``on_other(mqtt topic, payload)``."""

    name = "nats"

    def __init__(
        self,
        servers: list[str],
        worker: str,
        login: Login | None = None,
        stream: str = "AMI_UP",
        replicas: int = 3,
        ack_wait_s: int = 30,
        durable: str = "headend",
        extra_subjects: tuple[str, ...] = (),
        on_other: OtherDeliver | None = None,
        in_hand: int = IN_HAND,
    ) -> None:
        self.servers = servers
        self.worker = worker
        self.login = login or Login(None)
        self.stream = stream
        self.replicas = replicas
        self.ack_wait_s = ack_wait_s
        self.durable = durable
        self.extra_subjects = extra_subjects
        self.on_other = on_other
        self.in_hand = in_hand
        self._nc: NatsClient | None = None
        self._others_on: NatsClient | None = None
        self.connected = asyncio.Event()
        self.reconnects = 0
        self.dropped = 0  # messages on the stream that name no meter (acknowledged, dropped)
        self.acked = 0
        self.nacked = 0  # deliver failed: handed back for another try
        self._handed: set[asyncio.Task[None]] = set()
        self._js: tuple[NatsClient, JetStreamContext] | None = None  # for publishing

    @classmethod
    def from_config(cls, cfg: Config, on_other: OtherDeliver | None = None) -> NatsTransport:
        """The worker's link from its config: ``nats_url``, the broker's login."""
        login = login_from(cfg)
        if not any(u.startswith("tls://") for u in cfg.nats_servers):
            login = Login(login.user, login.password, None)  # plain nats:// servers
        return cls(
            cfg.nats_servers,
            cfg.worker,
            login,
            stream=cfg.nats_stream,
            replicas=cfg.nats_replicas,
            ack_wait_s=cfg.nats_ack_wait_s,
            durable=cfg.share_group,
            extra_subjects=(subject_of(f"{cfg.notify_topic}/*/ack"),),
            on_other=on_other,
        )

    # -- connection ----------------------------------------------------------------------

    async def _connect(self) -> NatsClient:
        async def disconnected() -> None:
            self.connected.clear()
            log.warning("NATS link lost; nats-py reconnects to another node")

        async def reconnected() -> None:
            self.reconnects += 1
            self.connected.set()
            nc = self._nc
            log.info(
                "NATS reconnected to %s",
                nc.connected_url.netloc if nc and nc.connected_url else "?",
            )

        refused: asyncio.Future[str] = asyncio.get_running_loop().create_future()

        async def error(e: Exception) -> None:
            if "authorization" in str(e).lower() and not refused.done():
                refused.set_result(str(e))  # before the first connection: our login is wrong
            log.debug("NATS: %s", e)

        connecting = asyncio.create_task(
            nats.connect(
                servers=self.servers,
                name=self.worker,
                user=self.login.user,
                password=self.login.password,
                tls=self.login.tls,
                max_reconnect_attempts=-1,  # every node, forever: the cluster comes back
                reconnect_time_wait=1,
                connect_timeout=2,
                ping_interval=5,
                max_outstanding_pings=2,
                disconnected_cb=disconnected,
                reconnected_cb=reconnected,
                error_cb=error,
            )
        )
        await asyncio.wait((connecting, refused), return_when=asyncio.FIRST_COMPLETED)
        if not connecting.done():  # refused: nats-py would try again for ever
            connecting.cancel()
            with contextlib.suppress(asyncio.CancelledError, nats.errors.Error):
                await connecting
            raise LoginRefused(
                f"NATS {','.join(self.servers)} refused "
                f"{self.login.user or 'an anonymous client'}: {refused.result()}"
            )
        return connecting.result()

    async def _ensure_stream(self, nc: NatsClient) -> None:
        """Make the uplink stream if missing (JetStream may still be electing its leader)."""
        js = nc.jetstream()
        cfg = StreamConfig(
            name=self.stream,
            subjects=[UP_SUBJECT],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            num_replicas=self.replicas,
            max_age=STREAM_MAX_AGE_S,
            max_msg_size=MAX_PACKET_SIZE,
        )
        try:
            await js.stream_info(self.stream)
            return
        except nats.js.errors.NotFoundError:
            pass
        try:
            await js.add_stream(cfg)
            log.info("NATS stream %s made (%d replicas)", self.stream, self.replicas)
        except nats.js.errors.BadRequestError as e:
            if "already in use" not in str(e):  # another worker made it first: fine
                raise

    def _consumer(self) -> ConsumerConfig:
        return ConsumerConfig(
            durable_name=self.durable,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=float(self.ack_wait_s),
            max_ack_pending=MAX_ACK_PENDING,
            max_deliver=-1,  # never given up: a meter's data is dropped only by max_age
        )

    # -- receiving ---------------------------------------------------------------------------

    async def run(self, deliver: Deliver) -> None:
        attempt = 0
        try:
            while True:
                try:
                    nc = self._nc or await self._connect()
                    self._nc = nc
                    await self._ensure_stream(nc)
                    js = nc.jetstream()
                    sub = await js.pull_subscribe(
                        UP_SUBJECT,
                        durable=self.durable,
                        stream=self.stream,
                        config=self._consumer(),
                    )
                    if self._others_on is not nc:  # once per connection (it survives reconnects)
                        for subject in self.extra_subjects:
                            await nc.subscribe(subject, queue=self.durable, cb=self._other)
                        self._others_on = nc
                    self.connected.set()
                    at = nc.connected_url.netloc if nc.connected_url else "?"
                    # " as <worker> ": the line `bench live` waits for (as mosquitto's)
                    log.info("NATS: pulling %s as %s from %s", self.stream, self.worker, at)
                    attempt = 0
                    await self._pull(sub, deliver)
                except (TransportError, nats.errors.Error, OSError, TimeoutError) as e:
                    if isinstance(e, LoginRefused):
                        raise
                    delay = backoff_s(attempt, base=0.5, cap=10.0)
                    attempt += 1
                    log.warning("NATS stream not ready (%s); trying again in %.1f s", e, delay)
                    await asyncio.sleep(delay)
        finally:
            self.connected.clear()
            await self._close()

    async def _pull(self, sub: JetStreamContext.PullSubscription, deliver: Deliver) -> None:
        """Fetch what there is room for; hand each to ``deliver`` in arrival order; ack each
        once it returns. A pull that fails (a node went) is tried again, the room kept."""
        room = asyncio.Semaphore(self.in_hand)
        failures = 0
        while True:
            await room.acquire()  # at least one free
            free = 1
            while free < self.in_hand and not room.locked():
                await room.acquire()
                free += 1
            try:
                msgs = await sub.fetch(free, timeout=FETCH_WAIT_S)
                failures = 0
            except TimeoutError:
                msgs = []
            except nats.errors.Error as e:
                msgs = []
                failures += 1
                if failures > 1:
                    log.warning("NATS pull failed (%s); again", e)
                await asyncio.sleep(min(2.0, 0.1 * failures))
            for _ in range(free - len(msgs)):
                room.release()
            arrived = time.time()
            for m in msgs:
                self._start(m, arrived, deliver, room)

    def _start(self, m: Msg, arrived: float, deliver: Deliver, room: asyncio.Semaphore) -> None:
        meter = meter_from_subject(m.subject)

        async def one() -> None:
            try:
                if meter is None:
                    self.dropped += 1
                    log.warning("dropped uplink on %s: not a meter frame", m.subject)
                else:
                    await deliver(Uplink(meter, bytes(m.data), self.name, arrived))
            except asyncio.CancelledError:
                raise  # stopping: unacknowledged, the server re-sends it to another worker
            except Exception as e:
                self.nacked += 1
                log.warning("uplink of meter %s not handled (%s): handed back", meter, e)
                with contextlib.suppress(nats.errors.Error):
                    await m.nak(delay=1.0)
                return
            finally:
                room.release()
            try:
                await m.ack()  # after the commit: deliver returned
                self.acked += 1
            except nats.errors.Error as e:  # redelivered later: stored once
                log.debug("ack of %s lost: %s", m.subject, e)

        task = asyncio.create_task(one())  # deliver() queues before its first await: in order
        self._handed.add(task)
        task.add_done_callback(self._handed.discard)

    async def _other(self, m: Msg) -> None:
        if self.on_other is not None:
            await self.on_other(topic_of(m.subject), bytes(m.data))

    async def _close(self) -> None:
        nc, self._nc = self._nc, None
        if nc is not None and not nc.is_closed:
            with contextlib.suppress(Exception):
                await nc.close()

    # -- sending -----------------------------------------------------------------------------

    async def send(self, meter_id: int, frame: bytes, expiry_s: int | None = None) -> None:
        await self.publish(f"ami/v1/{meter_id}/down", frame)

    async def publish(
        self, topic: str, payload: bytes, qos: int = 1, expiry_s: int | None = None
    ) -> None:
        """Publish on an MQTT topic through the cluster (`publish_many` of one).

        Raises:
            TooLarge: over the broker's packet limit.
            TransportError: not connected, or the cluster did not store it in time.
        """
        (err,) = await self.publish_many([Message(topic, payload, qos, expiry_s)])
        if err is not None:
            raise err

    async def publish_many(self, msgs: list[Message]) -> list[TransportError | None]:
        """Publish a group in order, QoS 1 through the server's MQTT stream, QoS 0 as plain
        NATS messages; per message None (stored, or sent for QoS 0) or the error `publish`
        would raise. `MqttTransport.publish_many`'s contract: every message is written
        before the first wait (they leave in order) and the stream's acknowledgements
        are awaited together, within one `PUBLISH_TIMEOUT_S`."""
        out: list[TransportError | None] = [None] * len(msgs)
        nc = await self._link() if msgs else None
        js = self._js_of(nc) if nc is not None else None
        stored: dict[int, asyncio.Future[PubAck]] = {}
        for i, m in enumerate(msgs):
            out[i] = too_large(m.topic, m.payload)
            if out[i] is not None:
                continue
            if nc is None or js is None:
                out[i] = TransportError(f"NATS {','.join(self.servers)} not connected")
                continue
            try:
                if m.qos == 0:
                    await nc.publish(subject_of(m.topic), m.payload)
                else:
                    stored[i] = await js.publish_async(
                        MQTT_QOS1 + subject_of(m.topic),
                        m.payload,
                        wait_stall=PUBLISH_TIMEOUT_S,
                        headers=MQTT_PUB_HEADER,
                    )
            except (nats.errors.Error, TimeoutError) as e:
                out[i] = TransportError(f"publish to {m.topic} failed: {e!r}")
        if stored:
            await asyncio.wait(stored.values(), timeout=PUBLISH_TIMEOUT_S)
        for i, fut in stored.items():
            if not fut.done():
                fut.cancel()  # frees its slot in nats-py's table of pending publishes
                out[i] = TransportError(
                    f"publish to {msgs[i].topic}: not stored in {PUBLISH_TIMEOUT_S:g} s"
                )
            elif (refused := fut.exception()) is not None:
                out[i] = TransportError(f"publish to {msgs[i].topic} failed: {refused!r}")
        return out

    async def _link(self) -> NatsClient | None:
        """The connected client, waiting up to `PUBLISH_TIMEOUT_S` for one; None if none."""
        nc = self._nc
        if nc is None or not self.connected.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.connected.wait(), PUBLISH_TIMEOUT_S)
            nc = self._nc
        return nc if nc is not None and nc.is_connected else None

    def _js_of(self, nc: NatsClient) -> JetStreamContext:
        """One JetStream context per connection: its reply subscription for asynchronous
        publishes is made once and lives as long as the connection (nats-py resubscribes
        it on a reconnect)."""
        if self._js is None or self._js[0] is not nc:
            self._js = (nc, nc.jetstream())
        return self._js[1]
