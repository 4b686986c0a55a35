"""`headend serve`: one asyncio service around the sans-IO `Core`.

Tasks: the MQTT transport and every serial line receive uplinks; a ticker
runs the timed work every ``poll_s`` (real) seconds. Every Core call runs on
one database thread (the store is synchronous and single-threaded), in order,
and its `Outbox` is sent afterwards, so nothing is acknowledged to a meter
before it is committed. Uplinks that wait while the database thread is busy
are handled together, in arrival order, in one transaction (`Core.on_uplinks`:
one commit, one fsync, for up to ``MAX_BATCH`` frames or what came within
``BATCH_WAIT_S`` of the first, each in a savepoint of its own); their
Outboxes go out after that commit, while the next batch is in the database.
Every frame, a time-sync request included, is verified on that thread before
anything acts on it. A time-sync answer has
its t2 from the link's arrival stamp and is built as it is sent, t3 then,
after the store gave its counter in the request's transaction.

Outages. Transports reconnect by themselves with backoff. A database failure
(`StoreError`) closes the connection; the call is retried on a new one with
backoff until it succeeds, which holds the uplink (QoS 1 messages wait at the
broker, meters repeat unacknowledged data), so nothing is lost that a meter
will not resend. Real-time publications that fail wait in a bounded queue and
are retried by the ticker.

Profiling: with ``AMI_PROFILE=PREFIX`` in its environment the service runs
both its threads (the event loop's and the database's) under cProfile, each
timed by its own CPU time (a wall clock would count a wait for the GIL as
work), and writes ``PREFIX-main.prof`` and ``PREFIX-db.prof`` when it stops
(``python -m cProfile`` sees the main thread only). `bench live --profile`
sets it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import cProfile
import functools
import gc
import logging
import os
import time
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
from headend.transport.mqtt import (
    DOWN,
    LoginRefused,
    Message,
    MqttTransport,
    Undeliverable,
    login_from,
)
from headend.transport.nats import NatsTransport
from headend.transport.serial import SerialTransport

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")
MAX_HELD_PUBLISHES = 10_000
PROFILE_ENV = "AMI_PROFILE"  # see the module's docstring
#: the cyclic collector's thresholds for a running service (`tune_gc`)
GC_THRESHOLDS = (50_000, 20, 20)


def tune_gc() -> None:
    """Collect cycles less often in a running service, and never what it started with.

    A batch keeps its frames' decoded dicts, sections and rows alive until its
    commit, so at CPython's default (a young collection per 700 net allocations)
    the collector scanned them ~60 times per 1,000 uplinks and the whole heap now
    and then: ~30 µs per uplink in `bench live-core`, ~9 µs at 50,000. What exists
    once the service is built (modules, configuration) is frozen: it never becomes
    garbage, so no full collection walks it again.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


MAX_BATCH = 250  # uplinks in one transaction (their acks wait for its commit)
BATCH_WAIT_S = 0.005  # a batch that is not full closes once its first uplink waited this long


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
        self._profile_to = os.environ.get(PROFILE_ENV)
        self._profiles = (
            {t: cProfile.Profile(time.thread_time) for t in ("main", "db")}
            if self._profile_to
            else {}
        )
        db_profile = self._profiles.get("db")
        self._db_thread = ThreadPoolExecutor(
            1,
            thread_name_prefix="headend-db",
            initializer=db_profile.enable if db_profile is not None else None,
        )
        self.core: Core | None = None
        self.mqtt: MqttTransport | NatsTransport
        if config.transport == "nats":  # meters on MQTT to a NATS cluster; workers pull a stream
            self.mqtt = NatsTransport.from_config(config, on_other=self._on_other)
            if self.mqtt.login.tls is None:
                log.warning("insecure: plain NATS to %s, no TLS; a lab only", config.nats_url)
        else:
            self.mqtt = self._mqtt_transport(config)
        self.serials = [SerialTransport(s["url"], int(s.get("baud", 19200))) for s in config.serial]
        self.transports: dict[str, Transport] = {self.mqtt.name: self.mqtt}
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
        # uplinks waiting for the database thread, each with its caller's future
        self._inbox: asyncio.Queue[tuple[Uplink, asyncio.Future[None]]] = asyncio.Queue()
        self._batcher: asyncio.Task[None] | None = None
        self._answering: set[asyncio.Task[None]] = set()  # batches' answers being sent
        self.batches = 0

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

    def _dump_profile(self, thread: str) -> None:
        """Stop and write the profile of ``thread`` (``AMI_PROFILE``), on that thread."""
        profile = self._profiles.get(thread)
        if profile is not None:
            profile.disable()
            profile.dump_stats(f"{self._profile_to}-{thread}.prof")

    def _close(self) -> None:
        self._dump_profile("db")
        if self.core is not None:
            self.core.exports.close()  # a run in progress stops after its current meter
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

    def _mqtt_transport(self, config: Config) -> MqttTransport:
        host, port = config.broker_host_port
        login = login_from(config)
        if login.tls is None:
            log.warning(
                "insecure: plain MQTT to %s:%s (%s), no TLS; a lab only",
                host,
                port,
                f"as {login.user}" if login.user else "anonymous",
            )
        return MqttTransport(
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

    # -- I/O ---------------------------------------------------------------------------------

    def deliver(self, up: Uplink) -> asyncio.Future[None]:
        """Hand one uplink over as if it came in on ``up.transport`` (the links call
        this): queued at once, so uplinks are handled in the order of the calls; the
        future is done once it is committed and its answers are sent. A function, not a
        coroutine: a link keeps the order without a task per uplink."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._inbox.put_nowait((up, done))
        if self._batcher is None or self._batcher.done():
            self._batcher = asyncio.create_task(self._batches())
        return done

    def _take(self, batch: list[tuple[Uplink, asyncio.Future[None]]]) -> None:
        while len(batch) < MAX_BATCH and not self._inbox.empty():
            batch.append(self._inbox.get_nowait())

    async def _batches(self) -> None:
        while True:
            batch = [await self._inbox.get()]
            self._take(batch)
            # Bounded by count and by time: a batch that is not full waits for more
            # until its first frame is BATCH_WAIT_S old (under load it is older already:
            # it waited while the database thread committed the batch before).
            wait = batch[0][0].received + BATCH_WAIT_S - time.time()
            if len(batch) < MAX_BATCH and wait > 0:
                await asyncio.sleep(wait)
                self._take(batch)
            try:
                outs = await self._commit(batch)
            except Exception:
                # One batch must never stop collection: log it (with the traceback: a bug).
                self.errors += len(batch)
                log.exception("%d uplink(s) not handled", len(batch))
                self._release(batch)
                continue
            # Its answers go out while the next batch is in the database: the sends
            # keep the order of the commits (`flush` takes its lock in call order).
            task = asyncio.create_task(self._answer(batch, outs))
            self._answering.add(task)
            task.add_done_callback(self._answering.discard)

    async def _commit(self, batch: list[tuple[Uplink, asyncio.Future[None]]]) -> list[Outbox]:
        """Handle a batch in one transaction; its Outboxes (to send after the commit)."""
        # t2: each one's arrival at the link, before any queue
        ups = [(up, self.clock.ms_at(up.received)) for up, _ in batch]
        self.frames += len(ups)
        self.batches += 1
        outs = await self.call(lambda core: core.on_uplinks(ups, self.clock.now_ms))
        self.errors += outs.count(None)  # bugs: Core logged them
        return [out for out in outs if out is not None]

    async def _answer(
        self, batch: list[tuple[Uplink, asyncio.Future[None]]], outs: list[Outbox]
    ) -> None:
        try:
            await self.flush(*outs)
        except Exception:
            self.errors += 1
            log.exception("answers of %d uplink(s) not sent", len(batch))
        finally:
            self._release(batch)

    @staticmethod
    def _release(batch: list[tuple[Uplink, asyncio.Future[None]]]) -> None:
        for _, done in batch:
            if not done.done():
                done.set_result(None)

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
            await transport.send(d.meter_id, d.wire(), d.expiry_s)  # a time-sync answer: t3 now
        except TransportError as e:
            self._failed(d, e)

    async def _publish(self, p: Publish) -> bool:
        """Publish one; False if it is held for a retry."""
        try:
            await self.mqtt.publish(p.topic, p.payload, p.qos)
            return True
        except TransportError as e:
            self._failed(p, e)
            return isinstance(e, Undeliverable)

    async def flush(self, *outs: Outbox) -> None:
        """Send Outboxes: frames to meters, then MQTT publications.

        Outboxes go out whole and in the order the database thread made them (the
        first to resume takes the lock without yielding), so a meter gets its
        downlinks in counter order and refuses none as a replay. MQTT frames and
        publications are written in that order as one group and the broker's
        PUBACKs awaited together (`MqttTransport.publish_many`): one round trip
        for a batch's answers, not one each; a serial line's frames are handed
        to it in order too (a task each, started in order).
        """
        async with self._sending:
            msgs: list[Message] = []
            what: list[Downlink | Publish] = []
            others: list[asyncio.Task[None]] = []
            for out in outs:
                for d in out.downlinks:
                    link = self.transports.get(d.transport or "mqtt", self.mqtt)
                    if link is self.mqtt:  # a time-sync answer is built now: t3 as it leaves
                        msgs.append(Message(DOWN.format(meter=d.meter_id), d.wire(), 1, d.expiry_s))
                        what.append(d)
                    else:
                        others.append(asyncio.create_task(self._send(d)))
            for out in outs:
                for p in out.publishes:
                    msgs.append(Message(p.topic, p.payload, p.qos))
                    what.append(p)
            if msgs:
                for item, err in zip(what, await self.mqtt.publish_many(msgs), strict=True):
                    if err is not None:
                        self._failed(item, err)
            if others:
                await asyncio.gather(*others)

    def _failed(self, item: Downlink | Publish, err: TransportError) -> None:
        self.send_failures += 1
        if isinstance(item, Downlink):  # the meter repeats its uplink, or a timeout re-sends
            log.warning("downlink to meter %s lost: %s", item.meter_id, err)
        elif isinstance(err, Undeliverable):  # never fits, or refused: dropped, said as an error
            log.error("%s; dropped", err)
        else:
            log.warning("publish to %s held for retry: %s", item.topic, err)
            self._held.append(item)

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
        if (profile := self._profiles.get("main")) is not None:
            profile.enable()
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
            if self._batcher is not None:
                self._batcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._batcher
            for task in list(self._answering):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            while not self._inbox.empty():  # never handled: their callers stop waiting
                self._inbox.get_nowait()[1].cancel()
            await self._on_db(self._close)
            self._db_thread.shutdown(wait=False)
            self._dump_profile("main")
