"""`headend serve`: one asyncio service around the sans-IO `Core`.

Tasks: the MQTT transport and every serial line receive uplinks; a ticker
runs the timed work every ``poll_s`` (real) seconds. Every Core call runs on
one database thread (the store is synchronous and single-threaded), in order,
and its `Outbox` is sent afterwards, so nothing is acknowledged to a meter
before it is committed. Every frame, a time-sync request included, is
verified on that thread before anything acts on it; a time-sync answer takes
its t3 there, after the store gave its counter.

Outages. Transports reconnect by themselves with backoff. A database failure
(`StoreError`) closes the connection; the call is retried on a new one with
backoff until it succeeds, which holds the uplink (QoS 1 messages wait at the
broker, meters repeat unacknowledged data), so nothing is lost that a meter
will not resend. Real-time publications that fail wait in a bounded queue and
are retried by the ticker.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

from headend.clock import Clock
from headend.config import Config
from headend.context import Ctx
from headend.core import Core
from headend.errors import StoreError, UnknownMeter
from headend.outbox import Downlink, Outbox, Publish
from headend.store import SqlStore, open_store
from headend.transport.base import Transport, TransportError, Uplink, backoff_s
from headend.transport.mqtt import LoginRefused, MqttTransport, TooLarge, login_from
from headend.transport.serial import SerialTransport

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")
MAX_HELD_PUBLISHES = 10_000


class Service:
    """Args: config; clock (default: from config.speed / clock_start / clock_anchor);
    opener: opens the store (tests pass one that picks a PostgreSQL schema)."""

    def __init__(
        self,
        config: Config,
        clock: Clock | None = None,
        opener: Callable[[str], SqlStore] = open_store,
    ) -> None:
        self.config = config
        self.clock = clock or Clock(config.speed, float(config.clock_start), config.clock_anchor)
        self._opener = opener
        self._db_thread = ThreadPoolExecutor(1, thread_name_prefix="headend-db")
        self.core: Core | None = None
        host, port = config.broker_host_port
        login = login_from(config)
        if login.tls is None:
            log.warning(
                "insecure: plain MQTT to %s:%s (%s), no TLS; a lab only",
                host,
                port,
                f"as {login.user}" if login.user else "anonymous",
            )
        self.mqtt = MqttTransport(
            host,
            port,
            client_id=config.worker,
            share_group=config.share_group,
            extra_topics=(f"$share/{config.share_group}/{config.notify_topic}/+/ack",),
            on_other=self._on_other,
            session_expiry_s=config.session_expiry_s,
            login=login,
            max_queued=config.mqtt_max_queued,
        )
        self.serials = [SerialTransport(s["url"], int(s.get("baud", 19200))) for s in config.serial]
        self.transports: dict[str, Transport] = {"mqtt": self.mqtt}
        for line in self.serials:
            self.transports[line.name] = line
        self._held: collections.deque[Publish] = collections.deque(maxlen=MAX_HELD_PUBLISHES)
        self.ready = asyncio.Event()
        self._sending = asyncio.Lock()
        self.frames = 0
        self.db_failures = 0
        self.send_failures = 0
        self.errors = 0  # unexpected exceptions (bugs) caught so the service keeps running
        self.ticks = 0

    # -- database thread ---------------------------------------------------------------------

    async def _on_db(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._db_thread, lambda: fn(*args, **kwargs))

    def _reopen(self, gen: int) -> None:
        """(Re)open the store, unless another caller already did since ``gen``."""
        if self.core is not None and gen != self._gen:
            return
        if self.core is not None:
            try:
                self.core.ctx.store.close()
            except Exception as e:  # a dead connection may fail to close any way
                log.debug("closing the store: %s", e)
        store = self._opener(self.config.database)
        if self.core is None:
            self.core = Core(Ctx.build(self.config, store))
            n = self.core.ctx.jobs.requeue_orphans(self.config.worker)
            if n:
                log.info("%d job(s) sent before a restart are queued again", n)
        else:
            self.core.ctx.rebind(store)
        self._gen += 1

    def _close(self) -> None:
        if self.core is not None:
            try:  # the refusals counted since the last minute's row
                self.core.rejections.flush(self.core.ctx.activity, self.clock.now_ms(), force=True)
            except Exception as e:  # the database may be what stopped us
                log.warning("refusal counts not written: %s", e)
            try:
                self.core.ctx.store.close()
            except Exception as e:
                log.debug("closing the store: %s", e)

    async def call(self, fn: Callable[[Core], T]) -> T:
        """Run ``fn(core)`` on the database thread; on a database failure reconnect
        and retry with backoff until it succeeds (the caller waits)."""
        attempt = 0
        while True:
            gen = self._gen
            try:
                if self.core is None:
                    await self._on_db(self._reopen, gen)
                core = self.core
                if core is None:
                    raise StoreError("store not open")
                return await self._on_db(fn, core)
            except StoreError as e:
                if isinstance(e, UnknownMeter):
                    raise
                self.db_failures += 1
                delay = backoff_s(attempt, base=0.2, cap=10.0)
                attempt += 1
                log.warning("database failed (%s); reconnecting in %.1f s", e, delay)
                await asyncio.sleep(delay)
                try:
                    await self._on_db(self._reopen, gen)
                except StoreError as again:
                    log.warning("database still unavailable: %s", again)

    _gen = 0

    # -- I/O ---------------------------------------------------------------------------------

    async def deliver(self, up: Uplink) -> None:
        """Handle one uplink as if it came in on ``up.transport`` (the links call this)."""
        try:
            await self._handle(up)
        except Exception:
            # One frame must never stop collection: log it (with the traceback: a bug) and go on.
            self.errors += 1
            log.exception("meter %s: uplink via %s not handled", up.meter_id, up.transport)

    async def _handle(self, up: Uplink) -> None:
        t2 = self.clock.now_ms()
        self.frames += 1
        out = await self.call(lambda core: core.on_uplink(up, t2, self.clock.now_ms))
        await self.flush(out)

    async def _on_other(self, topic: str, payload: bytes) -> None:
        now = self.clock.now_ms()
        try:
            await self.call(lambda core: core.on_notify_ack(topic, payload, now))
        except Exception:
            self.errors += 1
            log.exception("message on %s not handled", topic)

    async def _send(self, d: Downlink) -> None:
        transport = self.transports.get(d.transport or "mqtt", self.mqtt)
        try:
            await transport.send(d.meter_id, d.frame)
        except TransportError as e:
            # the meter repeats its uplink, or our timeout re-sends the request
            self.send_failures += 1
            log.warning("downlink to meter %s lost: %s", d.meter_id, e)

    async def _publish(self, p: Publish) -> bool:
        try:
            await self.mqtt.publish(p.topic, p.payload, p.qos)
            return True
        except TooLarge as e:  # held, it would never fit: dropped, said
            self.send_failures += 1
            log.warning("%s; dropped", e)
            return True
        except TransportError as e:
            self.send_failures += 1
            log.warning("publish to %s held for retry: %s", p.topic, e)
            self._held.append(p)
            return False

    async def flush(self, out: Outbox) -> None:
        """Send an Outbox: frames to meters, then MQTT publications.

        Outboxes go out whole and in the order the database thread made them (the
        first to resume takes the lock without yielding), so a meter gets its
        downlinks in counter order and refuses none as a replay.
        """
        async with self._sending:
            for d in out.downlinks:
                await self._send(d)
            for p in out.publishes:
                await self._publish(p)

    async def _retry_held(self) -> None:
        for _ in range(len(self._held)):
            if not await self._publish(self._held.popleft()):
                break

    async def _ticker(self) -> None:
        while True:
            now = self.clock.now_ms()
            try:
                out = await self.call(functools.partial(Core.tick, now_ms=now))
                await self.flush(out)
                await self._retry_held()
            except Exception:
                self.errors += 1
                log.exception("periodic work failed; next try in %s s", self.config.poll_s)
            self.ticks += 1
            await asyncio.sleep(self.config.poll_s)

    async def run(self) -> None:
        """Run until cancelled."""
        await self.call(lambda core: None)  # open (and migrate) the store first
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self.mqtt.run(self.deliver))
                for s in self.serials:
                    tg.create_task(s.run(self.deliver))
                tg.create_task(self._ticker())
                self.ready.set()
        except* LoginRefused as group:  # one clear error, not a group of tracebacks
            raise group.exceptions[0] from None
        finally:
            self.ready.clear()
            await self._on_db(self._close)
            self._db_thread.shutdown(wait=False)
