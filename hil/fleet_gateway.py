"""The fleet's multiplexed link: one MQTT connection carries K meters' topics.

At 100,000 meters one connection per meter is 100,000 sockets and sessions
in the fleet and in mosquitto; a gateway (a data concentrator, in the field)
carries many. Each meter's core still builds, signs and sequences its own
frames and keeps its own in-flight limit and retry timers: the gateway only
moves bytes. Its login (``headend broker config --gateway NAME:IDS``,
`headend.brokerconf.Gateway`) may publish only its meters' ``up`` topics and
read only their ``down`` topics.

The connection is the firmware's own client (`firmware/link/mqtt.py`): QoS 1,
persistent session, reconnect with backoff. Two things differ from a meter's
own connection: the subscriptions go out in several SUBSCRIBE packets (1,000
topics in one would exceed the broker's 8 KiB packet limit), sent again on
every (re)connect, before anything is published on it; and a downlink for a
meter whose own link is down (its plan's outage) waits in the gateway, as the
broker's persistent session would hold it, until the meter is back.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from hil import fleet_flash

fleet_flash.on_path()

from link import mqtt  # noqa: E402

SUBSCRIBE_CHUNK = 256  # topics per SUBSCRIBE: ~5.4 KB, under the broker's 8 KiB
HELD_PER_METER = 1000  # downlinks kept for a detached meter (the broker's per-client bound)

Handler = Callable[[str, bytes], Awaitable[None]]


def gateway_name(first_id: int) -> str:
    """The login of the gateway whose first meter is ``first_id`` (not a number: not a meter)."""
    return f"gw{first_id}"


def partition(meter_ids: Sequence[int], per_conn: int) -> list[tuple[str, tuple[int, ...]]]:
    """Consecutive groups of ``per_conn`` meters, each with its gateway's name."""
    out = []
    for i in range(0, len(meter_ids), per_conn):
        ids = tuple(meter_ids[i : i + per_conn])
        out.append((gateway_name(ids[0]), ids))
    return out


class GatewayClient(mqtt.Client):  # type: ignore[misc]  # the firmware's client: untyped
    """The firmware's client, subscribing to ``topics`` in chunks on every connect.

    Its session loop sets ``writer`` once the broker accepted the login and
    before anything is published: the SUBSCRIBEs are written there.
    """

    def __init__(self, topics: Sequence[str], *args: Any, **kwargs: Any) -> None:
        self._topics = tuple(topics)
        self._writer: Any = None
        super().__init__(*args, subscriptions=(), **kwargs)

    @property
    def writer(self) -> Any:
        return self._writer

    @writer.setter
    def writer(self, w: Any) -> None:
        self._writer = w
        if w is None:
            return
        t = self._topics
        for i in range(0, len(t), SUBSCRIBE_CHUNK):
            w.write(mqtt.subscribe_packet(self._next_pid(), t[i : i + SUBSCRIBE_CHUNK]))


class Gateway:
    """One connection for meters ``ids``. ``handlers[id]``: the meter's downlink
    handler (async (topic, payload)). Args of the connection as FleetMeter's."""

    def __init__(
        self,
        name: str,
        ids: Sequence[int],
        broker: tuple[str, int],
        password: str,
        tls: tuple[str, None, str] | None,
        rand: Callable[[], int],
        keepalive_s: int = 60,
    ) -> None:
        self.name = name
        self.ids = tuple(ids)
        self.handlers: dict[int, Handler] = {}
        self.attached: set[int] = set()
        self._held: dict[int, collections.deque[tuple[str, bytes]]] = {}
        host, port = broker
        self.client = GatewayClient(
            [f"ami/v1/{m}/down" for m in self.ids],
            name,
            host,
            port,
            handler=self._on_down,
            keepalive_s=keepalive_s,
            rand=rand,
            user=name,
            password=password,
            tls=tls,
        )
        self._task: asyncio.Task[None] | None = None
        self.held_dropped = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self.client.run())

    def online(self) -> bool:
        return bool(self.client.is_set())

    # -- meters come and go (their plans' outages) ------------------------------------------

    async def attach(self, meter_id: int) -> None:
        """The meter's link is up: deliver what waited for it, in order."""
        self.attached.add(meter_id)
        held = self._held.pop(meter_id, None)
        while held:
            topic, payload = held.popleft()
            await self.handlers[meter_id](topic, payload)

    def detach(self, meter_id: int) -> None:
        self.attached.discard(meter_id)

    async def _on_down(self, topic: str, payload: bytes) -> None:
        try:
            meter_id = int(topic.split("/")[2])
        except (IndexError, ValueError):
            return  # not a meter's downlink: the ACL lets none through
        handler = self.handlers.get(meter_id)
        if handler is None:
            return
        if meter_id not in self.attached:
            q = self._held.setdefault(meter_id, collections.deque())
            if len(q) >= HELD_PER_METER:
                self.held_dropped += 1
                return
            q.append((topic, payload))
            return
        await handler(topic, payload)

    # -- uplinks ---------------------------------------------------------------------------

    async def publish(self, topic: str, payload: bytes) -> int:
        pid: int = await self.client.publish(topic, payload)
        return pid

    async def close(self) -> None:
        task, self._task = self._task, None
        await self.client.stop()
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):  # a dying link
                await task
