"""Fleet meters wired straight to the head-end's `Core`, on a stepped simulated clock.

The parts are the real ones: the firmware core of each meter (`hil.fleet_meter.
FleetMeter`: firmware/meter on CPython, its flash, RTC and load), the head-end's
sans-IO `Core` on a real store, its `tick` as the service runs it. Only the MQTT
hop is replaced by handing the frames over in order, as a broker with persistent
sessions does: a downlink to a meter whose link is down waits and is delivered
when the link is back (QoS 1), an uplink the meter makes while down is not sent
(its core sends it again), an uplink over a mute link (`Outage.mute`) is lost,
and one with an expiry (`Downlink.expiry_s`; the clock
runs at ``speed`` 1) is dropped undelivered once it expired, as the broker does.
Time moves in steps of ``step_s`` simulated seconds, deterministically, so days
of collection and recovery take seconds and a run always gives the same result
(exact report contents can be asserted).
"""

from __future__ import annotations

import random
from collections import defaultdict, deque
from collections.abc import Iterable, Sequence

from headend.clock import Clock
from headend.config import Config
from headend.context import Ctx
from headend.core import Core
from headend.keys import meter_key
from headend.outbox import Outbox
from headend.store import SqlStore
from headend.transport.base import Uplink
from hil.fleet_meter import FleetMeter, Stats
from hil.fleet_profile import LoadProfile, MeterPlan, Outage
from hil.loadprofile import DEFAULT_CSV

DAY = 86_400


class DirectMeter(FleetMeter):
    """A fleet meter whose link is up exactly when its plan says (no MQTT client)."""

    def online(self) -> bool:
        return self.plan.online(self._now_true_ms / 1000)


def never(start: int) -> tuple[Outage, ...]:
    """An outage from ``start`` to the end of time: a meter that never answers again."""
    return (Outage(start, 2**32 - 1),)


class Direct:
    """Meters and one or more head-end workers (each a `Core` on its own connection to one
    database), stepped together. ``cores``: the workers, ticked in turn."""

    def __init__(
        self, cores: Sequence[Core], plans: Iterable[MeterPlan], install: int, step_s: int = 300
    ) -> None:
        self.cores = list(cores)
        cfg = self.cores[0].ctx.config
        master = bytes.fromhex(cfg.master_key)
        load = LoadProfile(DEFAULT_CSV)
        clock = Clock(1.0, float(install))
        stats = Stats()
        self.meters = {
            p.meter_id: DirectMeter(
                p, clock, load, ("127.0.0.1", 0), meter_key(master, p.meter_id), stats, install
            )
            for p in plans
        }
        self.down: dict[int, deque[tuple[bytes, int | None]]] = defaultdict(deque)
        self.now = install
        self.step_s = step_s
        self.peak_in_flight = 0
        self._turn = 0
        self._rng = random.Random(0)
        for m in self.meters.values():
            m.boot(install * 1000)

    def _core(self) -> Core:
        # uplinks go to the workers in turn, as a shared subscription shares them
        self._turn = (self._turn + 1) % len(self.cores)
        return self.cores[self._turn]

    def _queue(self, out: Outbox) -> None:
        for d in out.downlinks:
            until = None if d.expiry_s is None else self.now + d.expiry_s
            self.down[d.meter_id].append((d.wire(), until))

    def _up(self, meter_id: int, frames: Iterable[bytes]) -> None:
        if self.meters[meter_id].plan.muted(self.now):
            return  # a mute link (``Outage.mute``): lost on the way, no answer comes
        for f in frames:
            core = self._core()
            self._queue(core.on_uplink(Uplink(meter_id, f, "mqtt"), self.now * 1000))

    def _deliver(self) -> None:
        busy = True
        while busy:
            busy = False
            for mid, q in list(self.down.items()):
                m = self.meters.get(mid)
                if m is None or not q or not m.online():
                    continue
                busy = True
                while q:
                    frame, until = q.popleft()
                    if until is not None and self.now > until:
                        continue  # expired at the broker
                    ms = m.meter_ms(self.now * 1000)
                    self._up(mid, m.core.receive(frame, ms // 1000, ms))

    def run_until(self, t: int) -> None:
        """Step meters and workers to simulated time ``t`` (UTC s)."""
        while self.now < t:
            self.now = min(t, self.now + self.step_s)
            for mid, m in self.meters.items():
                frames = m.step(self.now * 1000)
                if m.online():
                    self._up(mid, frames)
            self._deliver()
            # the workers tick in a (seeded) random order: none is always first to claim
            for core in self._rng.sample(self.cores, len(self.cores)):
                self._queue(core.tick(self.now * 1000))
                self._deliver()
            ctx = self.cores[0].ctx
            self.peak_in_flight = max(self.peak_in_flight, ctx.missing.in_flight())


def worker(store: SqlStore, **config: object) -> Core:
    """A head-end worker (`Core`) on ``store`` with test settings."""
    base: dict[str, object] = {
        "database": "sqlite:///unused",
        "assign_at": "20:00",
        "window_start": "00:01",
        "window_end": "04:00",
        "daily_check_at": "06:00",
    }
    base.update(config)
    return Core(Ctx.build(Config(**base), store))  # type: ignore[arg-type]
