"""MQTT link (aiomqtt, MQTT 5): shared subscription to every meter's uplink.

Workers with the same share group split the uplinks between them
(`$share/<group>/ami/v1/+/up`); the session is persistent (clean start off,
long session expiry), so QoS 1 uplinks that arrive while a worker reconnects
wait at the broker. Reconnection lives here, in the application loop, as
aiomqtt's docs advise; a frame that cannot be sent raises TransportError and
the caller's retry policy decides.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from headend.transport.base import Deliver, TransportError, Uplink, backoff_s

log = logging.getLogger(__name__)

UP = "ami/v1/{meter}/up"
DOWN = "ami/v1/{meter}/down"
# A worker's session (its queue of uplinks) outlives a restart, but not a
# retirement: once it expires the broker stops giving the dead worker a share.
# Meters repeat every uplink until the head-end acks it, so an expired queue
# costs a repeat, not data.
SESSION_EXPIRY_S = 600
PUBLISH_TIMEOUT_S = 5.0


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
    """Args: host, port, client_id (unique per worker), share_group;
    extra_topics: more subscriptions (e.g. notification acks), whose messages
    go to ``on_other(topic, payload)``."""

    def __init__(
        self,
        host: str,
        port: int,
        client_id: str,
        share_group: str = "headend",
        extra_topics: tuple[str, ...] = (),
        on_other: OtherDeliver | None = None,
        session_expiry_s: int = SESSION_EXPIRY_S,
    ) -> None:
        self.session_expiry_s = session_expiry_s
        self.name = "mqtt"
        self.host = host
        self.port = port
        self.client_id = client_id
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
            # small replies (acks, time sync) must not wait for Nagle's delayed ACK
            socket_options=((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),),
            max_queued_outgoing_messages=100_000,
        )

    async def run(self, deliver: Deliver) -> None:
        attempt = 0
        while True:
            try:
                async with self._new_client() as client:
                    self._client = client
                    await client.subscribe(f"$share/{self.share_group}/ami/v1/+/up", qos=1)
                    for topic in self.extra_topics:
                        await client.subscribe(topic, qos=1)
                    self.connected.set()
                    log.info("MQTT %s:%s: subscribed as %s", self.host, self.port, self.client_id)
                    attempt = 0
                    async for message in client.messages:
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

    async def send(self, meter_id: int, frame: bytes) -> None:
        await self.publish(DOWN.format(meter=meter_id), frame)

    async def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        """Publish on any topic (real-time subscribers, notifications)."""
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
