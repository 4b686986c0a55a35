"""Run the head-end service inside a test, on real parts, with simulated time.

`running_service` starts `headend.service.Service` as a task on the test's
event loop against a real broker and a real store (SQLite file or a
PostgreSQL schema), and stops it cleanly. `eventually` is `hil.wait.wait_until`
(a test states *what* must become true, never how fast).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from headend.clock import Clock
from headend.config import Config
from headend.service import Service
from headend.store import SqlStore, open_store
from headend.store.postgres import PostgresStore
from hil.rig import cancel_hard
from hil.wait import wait_until

T0 = 1_711_929_600  # 2024-04-01T00:00:00Z, a Monday


def opener_for(url: str, schema: str | None = None) -> Callable[[str], SqlStore]:
    """How the service (and a test) opens the store: a PostgreSQL schema when given."""
    if schema is None:
        return open_store
    return lambda _url: PostgresStore(url, schema=schema)


def make_config(broker_url: str, database: str, **kw: Any) -> Config:
    # A share group of its own: a stopped worker's persistent session stays a
    # member of its group at the broker and would take its share of uplinks.
    base: dict[str, Any] = {
        "share_group": f"t{uuid.uuid4().hex[:12]}",
        "broker": broker_url,
        "database": database,
        "speed": 600.0,  # 15 min of head-end time = 1.5 s
        "clock_start": T0 + 12 * 3600,
        "poll_s": 0.05,
        "assign_at": "20:00",
        "notify_retry_s": 60,
        # the shared test broker is the plain one (hil.broker insecure=True)
        "insecure": broker_url.startswith("mqtt://"),
    }
    base.update(kw)
    return Config(**base)


@contextlib.asynccontextmanager
async def running_service(
    config: Config, clock: Clock, opener: Callable[[str], SqlStore] = open_store
) -> AsyncIterator[Service]:
    svc = Service(config, clock=clock, opener=opener)
    task = asyncio.create_task(svc.run())
    try:
        await _ready(svc, task)
        yield svc
        assert svc.errors == 0, "the service caught unexpected exceptions (see the log)"
    finally:
        # Python 3.11's wait_for can swallow a cancellation inside aiomqtt: cancel
        # again whatever keeps running, so a test never hangs on shutdown
        await cancel_hard(task, "the head-end service")


async def _ready(svc: Service, task: asyncio.Task[None]) -> None:
    def up() -> bool:
        if task.done():
            task.result()  # raises what stopped it
        return svc.ready.is_set() and svc.mqtt.connected.is_set()

    await wait_until(up, 15, "the head-end service connected to the broker", every=0.02)


# The name the head-end tests use; the polling and its error are hil.wait's.
eventually = wait_until


class Subscriber:
    """An MQTT client that collects (topic, payload) of some topics (a real-time
    subscriber, an event recipient); `ack` publishes on a topic."""

    def __init__(self, host: str, port: int, topics: tuple[str, ...]) -> None:
        self.host, self.port, self.topics = host, port, topics
        self.got: list[tuple[str, bytes]] = []
        self._client: Any = None
        self._task: asyncio.Task[None] | None = None
        self.ready = asyncio.Event()

    async def _run(self) -> None:
        import aiomqtt

        async with aiomqtt.Client(
            self.host, self.port, identifier=f"sub-{uuid.uuid4().hex[:8]}"
        ) as c:
            self._client = c
            for t in self.topics:
                await c.subscribe(t, qos=1)
            self.ready.set()
            async for m in c.messages:
                if isinstance(m.payload, bytes):
                    self.got.append((str(m.topic), m.payload))

    async def __aenter__(self) -> Subscriber:
        self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self.ready.wait(), 10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            await cancel_hard(self._task, "the test subscriber")

    async def publish(self, topic: str, payload: bytes) -> None:
        await self._client.publish(topic, payload, qos=1)

    def json(self, prefix: str = "") -> list[Any]:
        import json

        return [json.loads(p) for t, p in self.got if t.startswith(prefix)]
