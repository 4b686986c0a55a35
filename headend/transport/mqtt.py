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

The incoming queue is bounded (``max_queued``): a head-end that cannot keep up
stops taking messages off the link; what overflows is dropped and counted (a
warning per minute, not per message). A dropped uplink is not lost: the meter
repeats every uplink until the head-end acks it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from headend import masterkey
from headend.brokerconf import MAX_PACKET_SIZE, payload_limit
from headend.config import Config
from headend.errors import ConfigError
from headend.secretfile import read_private
from headend.transport.base import Deliver, TransportError, Uplink, backoff_s
from protocol.auth import mqtt_user_password

log = logging.getLogger(__name__)

UP = "ami/v1/{meter}/up"
DOWN = "ami/v1/{meter}/down"
# A worker's session (its queue of uplinks) outlives a restart, but not a
# retirement: once it expires the broker stops giving the dead worker a share.
# Meters repeat every uplink until the head-end acks it, so an expired queue
# costs a repeat, not data.
SESSION_EXPIRY_S = 600
PUBLISH_TIMEOUT_S = 5.0
MAX_QUEUED = 1000
DROP_REPORT_S = 60.0
# MQTT 5 CONNACK reason codes that no retry can fix (bad login, not authorised, banned)
_REFUSED = {134, 135, 138, 140}


class TooLarge(TransportError):
    """A message over the broker's packet limit: sending it would get us disconnected."""


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
    """aiomqtt's incoming queue, counting what overflows instead of a warning per message."""

    def __init__(self, maxsize: int = 0) -> None:
        super().__init__(maxsize)
        self.dropped = 0

    def put_nowait(self, item: Any) -> None:
        if self.full():
            self.dropped += 1
        super().put_nowait(item)  # raises QueueFull when full: aiomqtt drops it


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
    ) -> None:
        self.login = login or Login(None)
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
        self.connected = asyncio.Event()
        self.reconnects = 0
        self.dropped = 0  # uplinks on a topic that names no meter

    def _new_client(self) -> aiomqtt.Client:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self.session_expiry_s
        return aiomqtt.Client(
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
            # small replies (acks, time sync) must not wait for Nagle's delayed ACK
            socket_options=((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),),
            max_queued_outgoing_messages=100_000,
        )

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
                    async for message in client.messages:
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
                        await deliver(Uplink(meter, bytes(payload), self.name))
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

    async def send(self, meter_id: int, frame: bytes) -> None:
        await self.publish(DOWN.format(meter=meter_id), frame)

    async def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        """Publish on any topic (real-time subscribers, notifications).

        Raises:
            TooLarge: over the broker's packet limit (the broker would cut us off).
            TransportError: not connected, or the publish failed.
        """
        if len(payload) > payload_limit(topic):
            raise TooLarge(
                f"publish to {topic}: {len(payload)} bytes, over the broker's "
                f"{MAX_PACKET_SIZE}-byte packet limit"
            )
        client = self._client
        if client is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.connected.wait(), 5)
            client = self._client
        if client is None:
            raise TransportError(f"MQTT broker {self.host}:{self.port} not connected")
        try:
            # bounded: a publish into a dying connection would otherwise wait the
            # client's whole timeout and hold up every uplink behind it
            await client.publish(topic, payload, qos=qos, timeout=PUBLISH_TIMEOUT_S)
        except aiomqtt.MqttError as e:
            raise TransportError(f"publish to {topic} failed: {e}") from e


def _refusal(e: aiomqtt.MqttError) -> str | None:
    """Why the broker or TLS refused us for good, or None for a link that may come back."""
    cause = e.__cause__ or e.__context__
    if isinstance(cause, ssl.SSLCertVerificationError):
        return f"its certificate does not verify against the pinned CA ({cause.verify_message})"
    if isinstance(e, aiomqtt.MqttCodeError):
        code = getattr(e.rc, "value", e.rc)
        if code in _REFUSED or code in (4, 5):  # v3.1.1: bad user name or password, not authorised
            return f"login refused ({e.rc})"
    return None
