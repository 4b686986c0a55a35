"""A blocking MQTT 5 client for broker tests: connect as someone, publish, collect.

paho-mqtt (aiomqtt's own engine) on its network thread; every wait has a
deadline (hil.wait.wait_until_sync). What the broker answered is kept:
``refused`` (the CONNACK reason), ``granted`` (SUBACK reasons), ``got``
(topic, payload) in arrival order, ``disconnected`` (reason) when the broker
closed the connection.
"""

from __future__ import annotations

import ssl
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties

from hil.wait import wait_until_sync

DEADLINE_S = 10.0


class Peer:
    """One connection. ``ca``: TLS with that CA pinned (None: plain)."""

    def __init__(
        self,
        host: str,
        port: int,
        user: str | None,
        password: str | None,
        ca: Path | None,
        client_id: str | None = None,
        server_name: str | None = None,
    ) -> None:
        self.host, self.port = host, port
        self.c = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id or (user or "anon"),
            protocol=mqtt.MQTTv5,
        )
        if user is not None:
            self.c.username_pw_set(user, password)
        if ca is not None:
            ctx = ssl.create_default_context(cafile=str(ca))
            if server_name is not None:
                ctx.check_hostname = True
            self.c.tls_set_context(ctx)
        self.server_name = server_name
        self.connack: Any = None
        self.granted: dict[int, list[Any]] = {}
        self.got: list[tuple[str, bytes]] = []
        self.disconnected: Any = None
        self.error: BaseException | None = None
        self._lock = threading.Lock()
        self.c.on_connect = self._on_connect
        self.c.on_subscribe = self._on_subscribe
        self.c.on_message = self._on_message
        self.c.on_disconnect = self._on_disconnect

    # paho's callbacks (its network thread)
    def _on_connect(self, c: Any, u: Any, flags: Any, rc: Any, props: Any) -> None:
        self.connack = rc

    def _on_subscribe(self, c: Any, u: Any, mid: int, rcs: list[Any], props: Any) -> None:
        self.granted[mid] = rcs

    def _on_message(self, c: Any, u: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.got.append((msg.topic, bytes(msg.payload)))

    def _on_disconnect(self, c: Any, u: Any, flags: Any, rc: Any, props: Any) -> None:
        self.disconnected = rc

    # what a test does
    def connect(self) -> Peer:
        """Connect and wait for the CONNACK (``connack``); TLS errors are kept in ``error``."""
        try:
            self.c.connect(self.server_name or self.host, self.port, keepalive=30)
        except (OSError, ssl.SSLError) as e:
            self.error = e
            return self
        self.c.loop_start()
        wait_until_sync(
            lambda: self.connack is not None or self.disconnected is not None,
            DEADLINE_S,
            "a CONNACK",
        )
        return self

    @property
    def accepted(self) -> bool:
        return self.connack is not None and not self.connack.is_failure

    def subscribe(self, topic: str) -> list[Any]:
        """Subscribe (QoS 1); the broker's reason codes."""
        _, mid = self.c.subscribe(topic, qos=1)
        rcs: list[Any] = wait_until_sync(lambda: self.granted.get(mid), DEADLINE_S, "a SUBACK")
        return rcs

    def publish(self, topic: str, payload: bytes) -> None:
        """Publish QoS 1 and wait until paho has handed it over (or the link dropped)."""
        info = self.c.publish(topic, payload, qos=1, properties=Properties(3))  # PUBLISH
        wait_until_sync(
            lambda: info.is_published() or self.disconnected is not None,
            DEADLINE_S,
            f"a PUBACK for {topic}",
            ignore=(RuntimeError, ValueError),
        )

    def payloads(self, topic: str) -> list[bytes]:
        with self._lock:
            return [p for t, p in self.got if t == topic]

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()
