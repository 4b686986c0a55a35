"""On-demand reads under load, in real time (N02, H05): request to stored answer.

    python -m bench ondemand [--meters 500] [--slow-pct 20] [--reads 100]
        [--duration 120] [--days 2] [--transport mqtt|nats] [--seed 1]

Speed 1: the head-end's clock is the wall clock (its simulated day starts at
02:00, inside the collection window). Parts, all real:
- a private broker: mosquitto (``--transport mqtt``, the head-end's MQTT 5
  shared subscription) or a 3-node NATS cluster (``nats``: hil/natscluster.py);
- the head-end service in this process on SQLite, default settings (poll_s
  1 s: a queued read waits for the next tick, as one from ``headend read`` does);
- ``--meters`` protocol-level meters (hil/fakemeter.py: signed frames,
  SPEC "Conversations"), one MQTT connection each; ``--slow-pct`` of them on a
  slow link: every frame delayed 0.5-3 s (uniform per meter) EACH WAY, as the
  fleet's "slow" profile (hil/fleet_profile.py);
- the collection window's load: every meter sends ``--days`` daily reads
  (a day of 15-min intervals, 4 channels, each repeated until acked), at
  random instants over ``--duration`` seconds;
- ``--reads`` on-demand reads (registers + today's intervals) of random meters
  at random instants over the same span, queued through the head-end's job
  path (`Headend.request_read`, what ``headend read`` does).

Figures: the head-end's own latency of each job (request queued to the answer's
last part committed; ``p50_s``/``p80_s``/``p99_s``/``max_s``), the slow
meters' share of them, and the load carried (``frames``, ``frames_per_s``).
Progress on stderr; ONE JSON line on stdout. Targets (issue 14): p80 <= 10 s,
p99 <= 20 s (N02 asks 30 s / 60 s); figures only, nothing here asserts them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import random
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from bench.cli import refuse
from headend.api import Headend, JobState, ReadMode, ReadSpec, on_service
from headend.clock import Clock
from headend.config import DEV_MASTER_KEY, Config
from headend.errors import HeadendError
from headend.service import Service
from hil.broker import BrokerError, find_mosquitto, running_broker
from hil.fakemeter import DAY, FakeMeter, MqttLink
from hil.natscluster import Logins, NatsError, running_cluster
from hil.rig import cancel_hard
from hil.stats import percentile
from hil.wait import wait_until

T0 = 1_711_929_600  # 2024-04-01T00:00:00Z; the head-end's clock starts at 02:00 of it
FIRST = 200_001
P80_TARGET_S = 10.0
P99_TARGET_S = 20.0
READ_TIMEOUT_S = 120.0
CONNECT_BATCH = 25  # meters connecting at once (a NATS node makes a consumer for each)


class SlowLink:
    """A meter's link with ``delay_s`` added to every frame, each way; frames overlap
    (a delay is latency, not a narrow pipe)."""

    def __init__(self, inner: MqttLink, delay_s: float) -> None:
        self.inner, self.delay_s = inner, delay_s
        self.meter_id = inner.meter_id
        self.connected = inner.connected
        self._late: set[asyncio.Task[None]] = set()

    async def run(self, on_frame: Callable[[bytes], Awaitable[None]]) -> None:
        async def later(raw: bytes) -> None:
            async def one() -> None:
                await asyncio.sleep(self.delay_s)
                await on_frame(raw)

            t = asyncio.create_task(one())
            self._late.add(t)
            t.add_done_callback(self._late.discard)

        await self.inner.run(later)

    async def send(self, frame: bytes) -> None:
        await asyncio.sleep(self.delay_s)
        await self.inner.send(frame)


def _args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench ondemand",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--meters", type=int, default=500)
    p.add_argument("--slow-pct", type=float, default=20.0, help="meters on a 0.5-3 s link")
    p.add_argument("--reads", type=int, default=100)
    p.add_argument("--duration", type=float, default=120.0, help="real seconds of load")
    p.add_argument("--days", type=int, default=2, help="daily reads each meter sends")
    p.add_argument("--transport", choices=("mqtt", "nats"), default="mqtt")
    p.add_argument("--seed", type=int, default=1)
    return p.parse_args(argv)


def _bad(a: argparse.Namespace) -> str | None:
    """What is wrong with the options, or None."""
    if a.meters < 1 or a.reads < 1 or a.duration <= 0 or not 0 <= a.slow_pct <= 100:
        return "expected --meters >= 1, --reads >= 1, --duration > 0, --slow-pct 0..100"
    if not 0 <= a.days <= 30:
        return f"expected --days 0..30, got {a.days}"
    return None


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


@contextlib.asynccontextmanager
async def _broker(
    transport: str, ids: tuple[int, ...], tmp: Path
) -> AsyncIterator[tuple[dict[str, Any], Callable[[int], MqttLink]]]:
    """(the head-end's settings for it, a meter's link) on a private broker."""
    if transport == "nats":
        logins = Logins(bytes.fromhex(DEV_MASTER_KEY), ("bench-od",), ids)
        with running_cluster(logins=logins) as c:
            cfg = {
                "broker": "mqtt://bench-od@127.0.0.1:1",  # the login's user
                "transport": "nats",
                "nats_url": ",".join(c.urls),
            }
            yield cfg, lambda i: c.meter_link(i, i)
        return
    if find_mosquitto() is None:
        raise BrokerError("mosquitto not found (make setup installs it)")
    with running_broker(insecure=True) as b:
        yield {"broker": b.url}, lambda i: MqttLink(b.host, b.port, i)


async def bench(a: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(a.seed)
    ids = tuple(range(FIRST, FIRST + a.meters))
    slow = {i: rng.uniform(0.5, 3.0) for i in rng.sample(ids, round(a.meters * a.slow_pct / 100))}
    with tempfile.TemporaryDirectory(prefix="ami-bench-ondemand-") as tmp:
        async with _broker(a.transport, ids, Path(tmp)) as (settings, link_of):
            cfg = Config(
                database=f"sqlite:///{tmp}/headend.db",
                insecure=True,
                worker="bench-od",
                speed=1.0,
                clock_start=T0 + 2 * 3600,
                **settings,
            )
            clock = Clock(1.0, float(cfg.clock_start))
            svc = Service(cfg, clock=clock)
            task = asyncio.create_task(svc.run())
            meters: list[FakeMeter] = []
            try:
                await wait_until(
                    lambda: _up(svc, task), 60, "the head-end connected to the broker", every=0.1
                )
                for i in ids:
                    inner = link_of(i)
                    link = SlowLink(inner, slow[i]) if i in slow else inner
                    meters.append(FakeMeter(i, link, clock))  # type: ignore[arg-type]
                t = time.monotonic()
                for k in range(0, len(meters), CONNECT_BATCH):  # a fleet comes up over time
                    await asyncio.gather(*(m.start(60) for m in meters[k : k + CONNECT_BATCH]))
                await asyncio.gather(
                    *(
                        m.send_until_acked("register", m.register_body(), every=8.0, timeout=300)
                        for m in meters
                    )
                )
                say(
                    f"ondemand: {len(meters)} meters connected and registered in "
                    f"{time.monotonic() - t:.1f} s ({len(slow)} slow, 0.5-3 s each way)"
                )
                return await _load(a, svc, clock, meters, slow, rng)
            finally:
                for m in meters:
                    await m.stop()
                await cancel_hard(task, "the head-end service")


def _up(svc: Service, task: asyncio.Task[None]) -> bool:
    if task.done():
        task.result()
    return svc.ready.is_set() and svc.mqtt.connected.is_set()


async def _load(
    a: argparse.Namespace,
    svc: Service,
    clock: Clock,
    meters: list[FakeMeter],
    slow: dict[int, float],
    rng: random.Random,
) -> dict[str, Any]:
    frames0 = svc.frames
    t0 = time.monotonic()
    day1 = T0 - DAY
    acked: list[int] = []

    async def collect(m: FakeMeter, at: float, day: int) -> None:
        await asyncio.sleep(max(0.0, t0 + at - time.monotonic()))
        body = {"request_seq": 0, "kind": 0, "part": 1, "parts": 1, "sections": m.day_sections(day)}
        # a meter repeats an unacknowledged read after a while (every=: its timer)
        await m.send_until_acked("read_response", body, every=10.0, timeout=READ_TIMEOUT_S * 3)
        acked.append(1)

    plan = [(m, rng.uniform(0, a.duration), day1 - d * DAY) for m in meters for d in range(a.days)]
    reads = sorted(
        (rng.uniform(0, a.duration), rng.choice(meters).meter_id) for _ in range(a.reads)
    )
    jobs: list[tuple[int, int, float]] = []  # (job id, meter, monotonic at request)

    async def requests() -> None:
        for at, mid in reads:
            await asyncio.sleep(max(0.0, t0 + at - time.monotonic()))
            job = await on_service(svc, functools.partial(_request, mid, clock.now_ms()))
            jobs.append((job, mid, time.monotonic()))

    async def progress() -> None:
        while True:
            await asyncio.sleep(10)
            say(
                f"[{time.monotonic() - t0:5.0f} s] daily reads acked {len(acked)}/{len(plan)}, "
                f"on-demand requested {len(jobs)}/{len(reads)}, head-end frames "
                f"{svc.frames - frames0}"
            )

    ticker = asyncio.create_task(progress())
    try:
        await asyncio.gather(requests(), *(collect(m, at, d) for m, at, d in plan))
        load_s = time.monotonic() - t0

        async def closed() -> bool:
            states = await on_service(svc, lambda he: [he.job(j).closed for j, _, _ in jobs])
            return all(states)

        await wait_until(closed, READ_TIMEOUT_S, "every on-demand read closed", every=0.5)
    finally:
        ticker.cancel()
    got = await on_service(svc, lambda he: [he.job(j) for j, _, _ in jobs])
    lat = [
        j.latency_ms / 1000 for j in got if j.state is JobState.DONE and j.latency_ms is not None
    ]
    slow_lat = [
        j.latency_ms / 1000
        for j in got
        if j.state is JobState.DONE and j.latency_ms is not None and j.spec.meter_id in slow
    ]
    p80, p99 = percentile(lat, 80), percentile(lat, 99)
    return {
        "bench": "ondemand",
        "transport": a.transport,
        "speed": 1,
        "meters": len(meters),
        "slow_meters": len(slow),
        "slow_latency_s": [0.5, 3.0],
        "reads": len(jobs),
        "done": len(lat),
        "failed": sum(1 for j in got if j.state is JobState.FAILED),
        "retried": sum(1 for j in got if j.attempts > 1),
        "p50_s": _r(percentile(lat, 50)),
        "p80_s": _r(p80),
        "p99_s": _r(p99),
        "max_s": _r(max(lat, default=None)),
        "slow_p80_s": _r(percentile(slow_lat, 80)),
        "p80_target_s": P80_TARGET_S,
        "p99_target_s": P99_TARGET_S,
        "met": bool(
            p80 is not None
            and p99 is not None
            and p80 <= P80_TARGET_S
            and p99 <= P99_TARGET_S
            and len(lat) == len(jobs)
        ),
        "daily_reads": len(plan),
        "frames": svc.frames - frames0,
        "frames_per_s": round((svc.frames - frames0) / load_s, 1),
        "load_s": round(load_s, 1),
    }


def _request(meter: int, now_ms: int, he: Headend) -> int:
    """Queue an on-demand read of registers and today's intervals, as `headend read` does."""
    return he.request_read(ReadSpec(meter, mode=ReadMode(2)), "bench", now_ms)


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


def main(argv: list[str]) -> int:
    a = _args(argv)
    bad = _bad(a)
    if bad is not None:
        return refuse(bad)
    try:
        result = asyncio.run(bench(a))
    except (HeadendError, BrokerError, NatsError, TimeoutError, OSError) as e:
        return refuse(e)
    print(json.dumps(result), flush=True)
    return 0
