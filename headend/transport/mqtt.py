"""MQTT link (aiomqtt, MQTT 5): shared subscription to every meter's uplink.

Workers with the same share group split the uplinks between them
(`$share/<group>/ami/v1/+/up`); the session is persistent (clean start off,
long session expiry), so QoS 1 uplinks that arrive while a worker reconnects
wait at the broker. Reconnection lives here, in the application loop, as
aiomqtt's docs advise; a frame that cannot be sent raises TransportError and
the caller's retry policy decides.

Logged in (SPEC "MQTT": the client id is the user name) over TLS with the
broker's CA pinned and its name checked; plain MQTT only when the config says
``insecure``. A login the broker refuses, or a certificate that does not
verify, is not retried: `LoginRefused` ends the service with one line.

Up to ``in_hand`` uplinks are handed to the service at once (in arrival
order, each `deliver` a future), so the service can handle those that
wait together (one transaction); then the link waits for the oldest. The
incoming queue is bounded (``max_queued``): a head-end that cannot keep up
stops taking messages off the link; what overflows is dropped and counted (a
warning per minute, not per message). Each message is stamped as it enters
the queue (`Uplink.received`): the wait in the queue is not in the delay a
meter measures from a time-sync answer. A dropped uplink is not lost: the meter
repeats every uplink until the head-end acks it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt import client as mqtt_client
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from headend import masterkey
from headend.brokerconf import MAX_PACKET_SIZE, payload_limit
from headend.config import Config
from headend.errors import ConfigError
from headend.secretfile import read_private
from headend.transport.base import Deliver, TransportError, Uplink, backoff_s
from headend.transport.pahoio import Outbound, Received, fast_io
from headend.transport.pahoprops import install as _install_shared_tables
from protocol.auth import mqtt_user_password

log = logging.getLogger(__name__)
_install_shared_tables()  # paho's PUBLISH/PUBACK properties without their tables rebuilt each

UP = "ami/v1/{meter}/up"
DOWN = "ami/v1/{meter}/down"
# A worker's session (its queue of uplinks) outlives a restart, but not a
# retirement: once it expires the broker stops giving the dead worker a share.
# Meters repeat every uplink until the head-end acks it, so an expired queue
# costs a repeat, not data.
SESSION_EXPIRY_S = 600
PUBLISH_TIMEOUT_S = 5.0
MAX_QUEUED = 1000
IN_HAND = 500  # uplinks handed to the service and not yet handled (two of its batches)
DROP_REPORT_S = 60.0
# MQTT 5 CONNACK reason codes that no retry can fix (bad login, not authorised, banned)
_REFUSED = {134, 135, 138, 140}


class Undeliverable(TransportError):
    """A publication no retry can deliver: said as an error and dropped, not held."""


class TooLarge(Undeliverable):
    """A message over the broker's packet limit: sending it would get us disconnected."""


class Refused(Undeliverable):
    """The broker's PUBACK refused the publication (a reason code of 0x80 and up: not
    authorised on the topic, a bad topic name...)."""


def too_large(topic: str, payload: bytes) -> TooLarge | None:
    """The error for a payload over the broker's packet limit on ``topic``, else None."""
    if len(payload) <= payload_limit(topic):
        return None
    return TooLarge(
        f"publish to {topic}: {len(payload)} bytes, over the broker's "
        f"{MAX_PACKET_SIZE}-byte packet limit"
    )


class LoginRefused(TransportError):
    """The broker refused this worker's login, or its certificate did not verify."""


@dataclass(frozen=True)
class Login:
    """How a worker connects: user (None: anonymous), password, TLS context (None: plain)."""

    user: str | None
    password: str | None = None
    tls: ssl.SSLContext | None = None

    def __repr__(self) -> str:  # a password never in a log line or traceback
        return f"Login(user={self.user!r}, tls={self.tls is not None})"


def login_from(cfg: Config) -> Login:
    """The worker's login from its config (SPEC "MQTT"); ConfigError if unusable.

    Password: ``mqtt_password_file`` (0600), else ``mqtt_password`` (env
    AMI_MQTT_PASSWORD or the config file), else derived from the master key.
    """
    url = cfg.broker_url
    user = cfg.mqtt_user
    password: str | None = None
    if user is not None:
        if cfg.mqtt_password_file:
            password = read_private(Path(cfg.mqtt_password_file), "mqtt_password_file")
        elif cfg.mqtt_password:
            password = cfg.mqtt_password
        else:
            password = mqtt_user_password(masterkey.load(cfg), user)
    tls = None
    if url.tls:
        try:
            tls = ssl.create_default_context(cafile=cfg.mqtt_ca_file or None)
        except (OSError, ssl.SSLError) as e:
            raise ConfigError(f"mqtt_ca_file {cfg.mqtt_ca_file}: not a usable CA ({e})") from e
        tls.minimum_version = ssl.TLSVersion.TLSv1_2
    return Login(user, password, tls)


class _Bounded(asyncio.Queue[Any]):
    """aiomqtt's incoming queue, counting what overflows instead of a warning per message,
    and stamping each message's arrival (``taken``: the stamp of the one taken last)."""

    def __init__(self, maxsize: int = 0) -> None:
        super().__init__(maxsize)
        self.dropped = 0
        self._stamps: collections.deque[float] = collections.deque()
        self.taken = 0.0

    def put_nowait(self, item: Any) -> None:
        if self.full():
            self.dropped += 1
        super().put_nowait(item)  # raises QueueFull when full: aiomqtt drops it

    def _put(self, item: Any) -> None:  # asyncio.Queue's hooks: FIFO, one stamp per item
        self._stamps.append(time.time())
        super()._put(item)

    def _get(self) -> Any:
        self.taken = self._stamps.popleft()
        return super()._get()


_quiet = logging.getLogger(__name__ + ".aiomqtt")
_quiet.setLevel(logging.ERROR)  # its "queue is full" per message: counted by _Bounded instead


def meter_from_topic(topic: str) -> int | None:
    """The meter id of `ami/v1/<id>/up`, or None for any other topic."""
    parts = topic.split("/")
    if len(parts) != 4 or parts[:2] != ["ami", "v1"] or parts[3] != "up":
        return None
    try:
        meter = int(parts[2])
    except ValueError:
        return None
    return meter if 0 <= meter <= 0xFFFFFFFF else None


OtherDeliver = Callable[[str, bytes], Awaitable[None]]


class MqttTransport:
    """Args: host, port, client_id (unique per worker; the login's user when
    there is one), share_group; extra_topics: more subscriptions (e.g.
    notification acks), whose messages go to ``on_other(topic, payload)``;
    login: user, password, TLS (default anonymous, plain); max_queued: the
    incoming queue's bound."""

    def __init__(
        self,
        host: str,
        port: int,
        client_id: str,
        share_group: str = "headend",
        extra_topics: tuple[str, ...] = (),
        on_other: OtherDeliver | None = None,
        session_expiry_s: int = SESSION_EXPIRY_S,
        login: Login | None = None,
        max_queued: int = MAX_QUEUED,
        in_hand: int = IN_HAND,
    ) -> None:
        self.login = login or Login(None)
        self._in_hand = asyncio.Semaphore(in_hand)
        self._handed: set[asyncio.Future[None]] = set()
        self.max_queued = max_queued
        self.overflow = 0  # incoming messages dropped on a full queue
        self._reported = 0
        self._report_at = 0.0
        self.session_expiry_s = session_expiry_s
        self.name = "mqtt"
        self.host = host
        self.port = port
        # the broker makes the client id the user name (use_username_as_clientid)
        self.client_id = self.login.user or client_id
        self.share_group = share_group
        self.extra_topics = extra_topics
        self.on_other = on_other
        self._client: aiomqtt.Client | None = None
        self._out: Outbound | None = None  # the connected client's publisher
        self.connected = asyncio.Event()
        self.reconnects = 0
        self.dropped = 0  # uplinks on a topic that names no meter

    def _new_client(self) -> aiomqtt.Client:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self.session_expiry_s
        client = aiomqtt.Client(
            self.host,
            self.port,
            identifier=self.client_id,
            protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=False,
            properties=props,
            keepalive=30,
            username=self.login.user,
            password=self.login.password,
            tls_context=self.login.tls,
            logger=_quiet,
            queue_type=_Bounded,
            max_queued_incoming_messages=self.max_queued,
            socket_options=_SOCKET_OPTIONS,
            max_queued_outgoing_messages=100_000,
        )
        queue: Any = client._queue  # noqa: SLF001 - the bounded queue made above

        def received(message: Received) -> None:  # what aiomqtt's on_message would queue
            with contextlib.suppress(asyncio.QueueFull):  # counted by _Bounded
                queue.put_nowait(message)

        # reads ahead, joins writes, publishes and takes plain PUBLISHes without paho's objects
        self._out = fast_io(client._client, _SOCKET_OPTIONS, received)  # noqa: SLF001
        return client

    async def run(self, deliver: Deliver) -> None:
        attempt = 0
        while True:
            try:
                client = self._new_client()
                async with client:
                    self._client = client
                    await client.subscribe(f"$share/{self.share_group}/ami/v1/+/up", qos=1)
                    for topic in self.extra_topics:
                        await client.subscribe(topic, qos=1)
                    self.connected.set()
                    log.info("MQTT %s:%s: subscribed as %s", self.host, self.port, self.client_id)
                    attempt = 0
                    while True:
                        message = _queued(client)
                        if message is None:
                            message = await anext(client.messages)
                        self._count_overflow(client)
                        meter = meter_from_topic(str(message.topic))
                        payload = message.payload
                        topic = str(message.topic)
                        if (
                            meter is None
                            and self.on_other is not None
                            and not (topic.startswith("ami/v1/") and topic.endswith("/up"))
                            and isinstance(payload, bytes | bytearray)
                        ):
                            await self.on_other(topic, bytes(payload))
                            continue
                        if meter is None or not isinstance(payload, bytes | bytearray):
                            self.dropped += 1
                            log.warning("dropped uplink on %s: not a meter frame", message.topic)
                            continue
                        up = Uplink(meter, bytes(payload), self.name, _arrival(client))
                        await self._hand(deliver, up)
            except aiomqtt.MqttError as e:
                refused = _refusal(e)
                if refused is not None:
                    raise LoginRefused(
                        f"MQTT broker {self.host}:{self.port} refused "
                        f"{self.login.user or 'an anonymous client'}: {refused}"
                    ) from None
                self._client = None
                self.connected.clear()
                self.reconnects += 1
                delay = backoff_s(attempt)
                attempt += 1
                log.warning("MQTT link lost (%s); reconnecting in %.1f s", e, delay)
                await asyncio.sleep(delay)
            finally:
                self._client = None
                self.connected.clear()

    async def _hand(self, deliver: Deliver, up: Uplink) -> None:
        """Start ``deliver(up)``; return once fewer than ``in_hand`` are under way (the
        next message waits in the incoming queue, its arrival stamp kept, till then).
        The service's `deliver` queues the uplink and returns its future: no task per
        uplink (a coroutine, another link's, gets a task, started in call order)."""
        await self._in_hand.acquire()  # at once: room was waited for after the last one
        handed = asyncio.ensure_future(deliver(up))
        self._handed.add(handed)
        handed.add_done_callback(self._handled)
        await self._in_hand.acquire()
        self._in_hand.release()

    def _handled(self, handed: asyncio.Future[None]) -> None:
        self._handed.discard(handed)
        self._in_hand.release()

    def _count_overflow(self, client: aiomqtt.Client) -> None:
        """Take the queue's drop count; log what overflowed at most once a minute."""
        queue = client._queue  # noqa: SLF001 - the bounded queue this transport made
        if isinstance(queue, _Bounded):
            self.overflow += queue.dropped
            queue.dropped = 0
        now = time.monotonic()
        if self.overflow > self._reported and now >= self._report_at:
            log.warning(
                "incoming queue full (%d): %d message(s) dropped so far; meters repeat them",
                self.max_queued,
                self.overflow,
            )
            self._reported, self._report_at = self.overflow, now + DROP_REPORT_S

    async def send(self, meter_id: int, frame: bytes, expiry_s: int | None = None) -> None:
        await self.publish(DOWN.format(meter=meter_id), frame, expiry_s=expiry_s)

    async def publish(
        self, topic: str, payload: bytes, qos: int = 1, expiry_s: int | None = None
    ) -> None:
        """Publish on any topic (real-time subscribers, notifications); ``expiry_s``: the
        broker drops it if not delivered by then (MQTT 5 message expiry).

        Raises:
            TooLarge: over the broker's packet limit (the broker would cut us off).
            Refused: the broker's PUBACK refused it.
            TransportError: not connected, or the publish failed.
        """
        (err,) = await self.publish_many([Message(topic, payload, qos, expiry_s)])
        if err is not None:
            raise err

    async def publish_many(self, msgs: list[Message]) -> list[TransportError | None]:
        """Publish a group in order and wait for all their PUBACKs at once; per message
        None (acknowledged by the broker) or the error `publish` would have raised.

        A batch's answers are hundreds of messages: one task, one Event and one
        timeout each (what a publish costs through aiomqtt) were a third of the
        service's CPU. QoS 1 ones go through the client's `Outbound` (no paho
        message objects), queued in order before the first wait; they share one
        `PUBLISH_TIMEOUT_S`. A PUBACK with a failure code makes its message
        `Refused`. `publish` is this for one message.
        """
        out: list[TransportError | None] = [None] * len(msgs)
        client = self._client
        if client is None and msgs:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.connected.wait(), 5)
            client = self._client
        publisher = self._out if client is not None else None
        group = _Group(msgs, out)
        for i, m in enumerate(msgs):
            out[i] = too_large(m.topic, m.payload)
            if out[i] is not None:
                continue
            if client is None or publisher is None:
                out[i] = TransportError(f"MQTT broker {self.host}:{self.port} not connected")
                continue
            if m.qos == 0:  # paho's own path: nothing to wait for
                props = None if m.expiry_s is None else _expiry(m.expiry_s)
                info = client._client.publish(m.topic, m.payload, 0, False, props)  # noqa: SLF001
                if info.rc != mqtt_client.MQTT_ERR_SUCCESS:
                    out[i] = TransportError(f"publish to {m.topic} failed: code {info.rc}")
                continue
            packed = _NO_PROPS if m.expiry_s is None else _expiry_packed(m.expiry_s)
            group.waiting.add(i)
            if not publisher.publish(m.topic, m.payload, packed, functools.partial(group.acked, i)):
                group.waiting.discard(i)
                out[i] = TransportError(f"publish to {m.topic} failed: not connected or queue full")
        if group.waiting:
            group.arm()
            try:
                await asyncio.wait_for(asyncio.shield(group.done), PUBLISH_TIMEOUT_S)
            except TimeoutError:
                for i in group.waiting:
                    out[i] = TransportError(
                        f"publish to {msgs[i].topic}: no PUBACK in {PUBLISH_TIMEOUT_S:g} s"
                    )
                group.waiting.clear()  # a PUBACK after this changes nothing
        return out


@functools.lru_cache(maxsize=64)
def _expiry(expiry_s: int) -> Properties:
    """PUBLISH properties with a message expiry, one object per value for all the
    publications that carry it (never changed once made: paho only packs it)."""
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.MessageExpiryInterval = max(1, expiry_s)
    return props


@dataclass(frozen=True, slots=True)
class Message:
    """One publication of a `publish_many` group: topic, payload, QoS, expiry (s) or None."""

    topic: str
    payload: bytes
    qos: int = 1
    expiry_s: int | None = None


@functools.lru_cache(maxsize=64)
def _expiry_packed(expiry_s: int) -> bytes:
    """`_expiry` as the bytes a PUBLISH carries."""
    return bytes(_expiry(expiry_s).pack())  # type: ignore[no-untyped-call]


_NO_PROPS = b"\x00"  # an MQTT 5 PUBLISH without properties


class _Group:
    """The PUBACKs a group of publications waits for, one future for all; a failure
    reason code (0x80 and up: not authorised, quota exceeded...) is the message's error."""

    def __init__(self, msgs: list[Message], out: list[TransportError | None]) -> None:
        self.msgs, self.out = msgs, out
        self.waiting: set[int] = set()
        self.done = asyncio.get_running_loop().create_future()
        self._armed = False

    def arm(self) -> None:
        """Every publication is out: the group is done when ``waiting`` empties."""
        self._armed = True
        self._check()

    def acked(self, i: int, reason: int) -> None:
        if i not in self.waiting:
            return  # timed out already
        self.waiting.discard(i)
        if reason >= 0x80:
            self.out[i] = Refused(
                f"publish to {self.msgs[i].topic}: refused, reason code {reason:#04x}"
            )
        self._check()

    def _check(self) -> None:
        if self._armed and not self.waiting and not self.done.done():
            self.done.set_result(None)


# small replies (acks, time sync) must not wait for Nagle's delayed ACK
_SOCKET_OPTIONS = ((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),)


def _queued(client: aiomqtt.Client) -> aiomqtt.Message | None:
    """The next message already in the client's queue, or None: aiomqtt's iterator
    makes a task and an `asyncio.wait` per message even when one is waiting (a
    tenth of the event loop's time under load); it is awaited only for an empty
    queue, where it also notices a lost connection."""
    queue = client._queue  # noqa: SLF001 - the stamping queue this transport made
    return queue.get_nowait() if queue.qsize() else None


def _arrival(client: aiomqtt.Client) -> float:
    """When the message just taken from the client's queue arrived (epoch s)."""
    queue = client._queue  # noqa: SLF001 - the stamping queue this transport made
    return queue.taken if isinstance(queue, _Bounded) else time.time()


def _refusal(e: aiomqtt.MqttError) -> str | None:
    """Why the broker or TLS refused us for good, or None for a link that may come back."""
    cause = e.__cause__ or e.__context__
    if isinstance(cause, ssl.SSLCertVerificationError):
        return f"its certificate does not verify against the pinned CA ({cause.verify_message})"
    # only a CONNACK's code: the same ints from a SUBSCRIBE or PUBLISH are paho's own
    # errors (4: MQTT_ERR_NO_CONN, the broker went away between CONNACK and SUBSCRIBE)
    if isinstance(e, MqttConnectError):
        code = getattr(e.rc, "value", e.rc)
        if code in _REFUSED or code in (4, 5):  # v3.1.1: bad user name or password, not authorised
            return f"login refused ({e.rc})"
    return None
