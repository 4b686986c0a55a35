"""One fleet meter: the real firmware core and link client on CPython.

`FleetMeter` wires `firmware/meter/meter.py` (the sans-IO core a board runs)
to an in-RAM NOR flash model, an RTC that is the shared simulated time plus
this meter's skew and drift, the load profile, and the firmware's own MQTT
client (`firmware/link/mqtt.py`, one connection per meter, or a share of a
gateway's connection, hil/fleet_gateway.py; persistent
session, QoS 1) on ``ami/v1/<id>/up|down``: what `firmware/main.py` does on
a board, minus the hardware. The fleet calls `step()` periodically; energy
is drained and the core ticked at every interval boundary crossed, so a
late step never makes an interval INVALID.

Link trouble follows the meter's `MeterPlan`: during an outage the client
is stopped (the broker keeps the session and queues downlinks, as for a
real meter out of coverage) and the core is told it is offline; a slow link
delays every frame by ``latency_s`` of simulated time each way.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import random
import struct
import sys
import time
from collections.abc import Callable
from typing import Any

from hil import fleet_flash

fleet_flash.on_path()

from link import mqtt  # noqa: E402
from meter import events, wire  # noqa: E402
from meter import meter as core  # noqa: E402
from meter.store import Store  # noqa: E402

from headend.api import Clock  # noqa: E402
from hil.fleet_gateway import Gateway  # noqa: E402
from hil.fleet_profile import DAY, LoadProfile, MeterPlan  # noqa: E402
from protocol.auth import mqtt_password  # noqa: E402

# A fleet meter's flash: 29 blocks of 4 KiB (116 KiB, not the board's 256 KiB):
# 19 interval blocks keep 46 days at 15 minutes (the capacity it registers).
# Sparse (hil/fleet_flash.py): only blocks programmed since their erase take RAM.
FLASH_BLOCKS = (19, 6, 4)
BLOCK_SIZE = 4096
MAX_INFLIGHT = 8  # frames handed to MQTT and not yet PUBACKed (as firmware/main.py)
DEFAULT_PUSH_MASK = events.DEFAULT_PUSH_MASK
NO_SYNC_FAILED_PUSH = events.DEFAULT_PUSH_MASK & ~(1 << events.SYNC_FAILED)
_ACKED = (wire.MESSAGE_TYPES["read_response"], wire.MESSAGE_TYPES["event"])
_ACKS = (wire.MESSAGE_TYPES["read_ack"], wire.MESSAGE_TYPES["event_ack"])
TYPE_NAMES = {code: name for code, (name, _) in wire.MESSAGES.items()}
EVENT_NAMES = {
    events.CLOCK_ADJUSTED: "clock_adjusted",
    events.CLOCK_OUT_OF_SYNC: "clock_out_of_sync",
    events.SYNC_FAILED: "sync_failed",
    events.READ_FAILED: "read_failed",
    events.AUTH_FAILED: "auth_failed",
    events.READ_UNANSWERABLE: "read_unanswerable",
    events.SCHEDULE_CHANGED: "schedule_changed",
}


class Stats:
    """Counters shared by every meter of a fleet (one event loop: no locks)."""

    def __init__(self) -> None:
        self.up: collections.Counter[str] = collections.Counter()  # uplinks by type
        self.down: collections.Counter[str] = collections.Counter()  # downlinks by type
        self.events: collections.Counter[str] = collections.Counter()  # meter events logged
        self.by_profile: collections.Counter[str] = collections.Counter()  # "profile:event"
        self.sync_failed: collections.Counter[int] = collections.Counter()  # by reason
        self.link_drops = 0  # outages started (client stopped)
        self.dropped = 0  # frames the link could not take (core re-sends)
        self.muted = 0  # frames lost on a mute link (an outage ``/mute``)
        self.errors = 0  # exceptions out of the core (a firmware bug)
        self.ack_s: list[float] = []  # real s from a data/event frame's first send to its ack
        self.ack_at: list[int] = []  # simulated hour (UTC s // 3600) of each ack_s sample


class FleetMeter:
    """Args: plan; tb: the shared simulated clock; load: the reference profile;
    broker: (host, port); key: the meter's 32-byte key; stats: shared counters;
    install: true time the meter boots; interval_s: its recording interval;
    tls: (CA file, None, server name) for TLS, None for plain MQTT. It logs in
    as its id with its MQTT password (SPEC "MQTT", derived from ``key``)."""

    def __init__(
        self,
        plan: MeterPlan,
        tb: Clock,
        load: LoadProfile,
        broker: tuple[str, int],
        key: bytes,
        stats: Stats,
        install: int,
        interval_s: int = 900,
        keepalive_s: int = 60,
        push_mask: int = events.DEFAULT_PUSH_MASK,
        tls: tuple[str, None, str] | None = None,
    ) -> None:
        self.plan = plan
        self.tls = tls
        self._password = mqtt_password(key)  # the provisioned key: v0
        self.id = plan.meter_id
        self.tb = tb
        self.load = load
        self.broker = broker
        self.stats = stats
        self.install = install
        self.keepalive_s = keepalive_s
        self._rng = random.Random(plan.meter_id)
        self.flash = fleet_flash.SparseFlash(BLOCK_SIZE, sum(FLASH_BLOCKS))
        ib, eb, cb = FLASH_BLOCKS
        store = Store(self.flash, interval_blocks=ib, event_blocks=eb, config_blocks=cb)
        self.core = core.Meter(
            store,
            core.Ident(plan.meter_id, key, interval_s=interval_s, push_mask=push_mask),
            self._rand,
            self._set_clock,
        )
        # RTC: meter ms = true ms + skew + (true ms - anchor) x drift
        self._skew_ms = plan.skew_s * 1000
        self._anchor_ms = install * 1000
        self._now_true_ms = install * 1000  # true time of the call in progress
        self._frac = [0, 0, 0, 0]
        self._last_true = install  # energy drained up to here (true s)
        self._last_m = 0  # meter time of the last tick
        self.booted = False
        self.client: mqtt.Client | None = None
        # multiplexed mode (hil/fleet_gateway.py): the shared connection, and the
        # (packet id, frame) this meter has in flight on it (its own limit)
        self.gateway: Gateway | None = None
        self._mine: list[tuple[int, bytes]] = []
        self._task: asyncio.Task[None] | None = None
        self.up_topic = f"ami/v1/{self.id}/up"
        self.down_topic = f"ami/v1/{self.id}/down"
        self._delay = plan.latency_s / tb.speed  # real seconds per frame, each way
        self._pending: set[asyncio.Task[None]] = set()
        self._sent: dict[int, float] = {}  # seq -> first send (monotonic), awaiting its ack
        self.energy = [0, 0, 0, 0]  # everything handed to the core (Wh, true time)

    # -- the RTC ---------------------------------------------------------------------------

    def _rand(self) -> int:
        return self._rng.getrandbits(32)

    def meter_ms(self, true_ms: int) -> int:
        return (
            true_ms + self._skew_ms + (true_ms - self._anchor_ms) * self.plan.drift_ppm // 1_000_000
        )

    def _set_clock(self, utc_s: int) -> None:
        # the firmware steps its RTC (time sync, time_set): from now on meter = utc_s
        t = self._now_true_ms
        self._skew_ms = utc_s * 1000 - t
        self._anchor_ms = t
        self._last_m = utc_s  # boundaries before the step were closed by the core

    def clock_error_s(self, true_ms: int) -> float:
        return (self.meter_ms(true_ms) - true_ms) / 1000

    # -- the core ----------------------------------------------------------------------------

    def _log_events(self) -> None:
        # count what the core logs (clock steps, sync failures, failed reads): wraps
        # the EventLog instance's method, the firmware is not changed
        ev = self.core.ev
        orig = ev.log
        stats = self.stats
        profile = self.plan.profile

        def log(code: int, now: int, data: int = 0) -> Any:
            name = EVENT_NAMES.get(code)
            if name is not None:
                stats.events[name] += 1
                stats.by_profile[f"{profile}:{name}"] += 1
                if code == events.SYNC_FAILED:
                    stats.sync_failed[data] += 1
            return orig(code, now, data)

        ev.log = log

    def boot(self, true_ms: int) -> None:
        self._now_true_ms = true_ms
        self._anchor_ms = true_ms  # skew as planned at boot, drift from then on
        self.core.boot(self.meter_ms(true_ms) // 1000)
        self._log_events()
        self._last_true = true_ms // 1000
        self._last_m = self.meter_ms(true_ms) // 1000
        self.booted = True

    def _tick(self, t_m: int, true_s: int, online: bool, now_ms: int | None) -> list[bytes]:
        e = self.load.energy(
            self._last_true + self.plan.shift_days * DAY,
            true_s + self.plan.shift_days * DAY,
            self.plan.scale_pct,
            self._frac,
        )
        self._last_true = max(self._last_true, true_s)
        if any(e):
            for i in range(4):
                self.energy[i] += e[i]
            self.core.add(e)
        try:
            return list(self.core.tick(t_m, online, now_ms))
        except Exception as ex:  # a core bug must not stop the fleet (counted, shown)
            self.stats.errors += 1
            print(f"fleet: meter {self.id}: core.tick failed: {ex!r}", file=sys.stderr)
            return []

    def step(self, true_ms: int) -> list[bytes]:
        """Drain energy and tick the core up to true time ``true_ms``; uplinks due."""
        self._now_true_ms = true_ms
        now_ms = self.meter_ms(true_ms)
        t_m = now_ms // 1000
        true_s = true_ms // 1000
        online = self.online()
        out: list[bytes] = []
        iv = self.core.interval_s
        off = self.core.utc_offset_s
        d = t_m - true_s  # meter minus true, constant within one step
        b = self._last_m - (self._last_m + off) % iv + iv  # next boundary (meter time)
        while b <= t_m:  # every boundary crossed since the last step, in order
            out += self._tick(b, b - d, online, None)
            b += iv
        out += self._tick(t_m, true_s, online, now_ms)
        self._last_m = t_m
        return out

    # -- the link ----------------------------------------------------------------------------

    def online(self) -> bool:
        g = self.gateway
        if g is not None:
            return self.id in g.attached and g.online()
        c = self.client
        return c is not None and c.connected.is_set()

    def linked(self) -> bool:
        """The meter's link is up as far as it is concerned (its plan: not in an outage)."""
        if self.gateway is not None:
            return self.id in self.gateway.attached
        return self.client is not None

    def join(self, gateway: Gateway) -> None:
        """Speak through ``gateway`` instead of a connection of its own."""
        self.gateway = gateway
        gateway.handlers[self.id] = self._from_gateway

    async def _from_gateway(self, topic: str, payload: bytes) -> None:
        if self._delay > 0:  # a slow meter must not hold up the others' downlinks
            self._later(self._on_down(topic, payload))
        else:
            await self._on_down(topic, payload)

    def _inflight(self) -> int:
        """This meter's frames handed to the link and not yet PUBACKed."""
        g = self.gateway
        if g is None:
            return len(self.client.inflight) if self.client is not None else 0
        pending = g.client.inflight
        self._mine = [(p, raw) for p, raw in self._mine if pending.get(p, (0, None))[1] is raw]
        return len(self._mine)

    async def _up(self, raw: bytes) -> None:
        g = self.gateway
        if g is not None:
            self._mine.append((await g.publish(self.up_topic, raw), raw))
        elif self.client is not None:
            await self.client.publish(self.up_topic, raw)

    def want_link(self, true_s: float) -> bool:
        return self.plan.online(true_s)

    async def link_up(self) -> None:
        if self.gateway is not None:
            await self.gateway.attach(self.id)
            return
        if self._task is not None:
            return
        host, port = self.broker
        self.client = mqtt.Client(
            str(self.id),  # the broker makes the client id the user name anyway
            host,
            port,
            subscriptions=(self.down_topic,),
            handler=self._on_down,
            keepalive_s=self.keepalive_s,
            rand=lambda: self._rng.getrandbits(16),
            user=str(self.id),
            password=self._password,
            tls=self.tls,
        )
        self._task = asyncio.create_task(self.client.run())

    async def link_down(self) -> None:
        if self.gateway is not None:
            self.gateway.detach(self.id)
            return
        c, task = self.client, self._task
        self.client, self._task = None, None
        if c is not None:
            await c.stop()
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):  # a dying link
                await task

    async def send(self, frames: list[bytes]) -> None:
        """Hand uplinks to the link (after the simulated latency, if any)."""
        if self._delay > 0:
            self._later(self._publish(frames))
        else:
            await self._publish(frames)

    def _later(self, coro: Any) -> None:
        async def run() -> None:
            await asyncio.sleep(self._delay)
            await coro

        t = asyncio.create_task(run())
        self._pending.add(t)
        t.add_done_callback(self._pending.discard)

    async def _publish(self, frames: list[bytes]) -> None:
        for raw in frames:
            # bounded, as on the board: a frame the link cannot take is re-sent by the core
            if not self.online() or self._inflight() >= MAX_INFLIGHT:
                self.stats.dropped += 1
                continue
            if self.plan.muted(self._now_true_ms / 1000):  # lost on the way: no ack will come
                self.stats.muted += 1
                continue
            self.stats.up[TYPE_NAMES.get(raw[1], str(raw[1]))] += 1
            if raw[1] in _ACKED:
                self._sent.setdefault(struct.unpack_from(">H", raw, 3)[0], time.monotonic())
            await self._up(raw)

    async def _on_down(self, topic: str, payload: bytes) -> None:
        if self._delay > 0:
            await asyncio.sleep(self._delay)
        if len(payload) > 1:
            self.stats.down[TYPE_NAMES.get(payload[1], str(payload[1]))] += 1
            if payload[1] in _ACKS and len(payload) >= wire.HEADER_LEN + 2:
                t = self._sent.pop(struct.unpack_from(">H", payload, wire.HEADER_LEN)[0], None)
                if t is not None:
                    self.stats.ack_s.append(time.monotonic() - t)
                    self.stats.ack_at.append(int(self.tb.now()) // 3600)
        true_ms = self.tb.now_ms()
        self._now_true_ms = true_ms
        ms = self.meter_ms(true_ms)
        try:
            out = self.core.receive(payload, ms // 1000, ms)
        except Exception as ex:
            self.stats.errors += 1
            print(f"fleet: meter {self.id}: core.receive failed: {ex!r}", file=sys.stderr)
            return
        if out and self.linked():
            for raw in out:
                self.stats.up[TYPE_NAMES.get(raw[1], str(raw[1]))] += 1
                await self._up(raw)

    # -- what it holds -----------------------------------------------------------------------

    def acked_until(self) -> int:
        """End of the newest scheduled read the head-end acknowledged (meter's view)."""
        return max(self.core.sched.acked_end) if self.booted else 0

    async def close(self) -> None:
        for t in list(self._pending):
            t.cancel()
        await self.link_down()


def key_for(master: bytes) -> Callable[[int], bytes]:
    """meter id -> key, as the head-end derives it (headend.keys)."""
    from headend.api import meter_key

    return lambda mid: meter_key(master, mid)
