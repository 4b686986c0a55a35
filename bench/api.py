"""HTTP API benchmark (issue 16): an interval query of one meter-month, requests/s and
latency while real collection runs.

    python -m bench api --meters 200 --days 31 --seconds 20 --clients 2 --collect-rate 200

One `headend serve` process serves both the service and the API, as in production
(``api_listen``, plain HTTP on 127.0.0.1), on a SQLite store seeded before the clock
starts (`bench.export.build`: ``--meters`` meters 1..N, two 15-minute channels,
``--days`` full days each) with an operator API key. Collection is `bench live`'s
(`bench.live`: a private mosquitto, the worker, `bench.loadgen`): meters of their own
register, then send signed scheduled reads with QoS 1 at ``--collect-rate`` frames/s,
enough of them to last ``--seconds``. While the reads go, ``--clients`` threads each
ask ``GET /api/v1/meters/{m}/intervals`` for a random seeded meter's whole period
(``--days`` x 96 intervals); the window is the read phase (``--seconds`` if the machine
keeps up the rate). ``--no-collect``: the same process, no uplinks, ``--seconds`` of
queries (the API alone, to compare).

Figures: API requests/s, p50/p99/max ms, errors (any answer but 200, or no answer);
collection's frames/s achieved in the window, ack p50/p99/max ms, and lost/doubled
(the store counted against what was sent, as `bench live`). Progress on stderr; ONE
JSON line last on stdout. Ctrl-C/SIGTERM ends the broker, the worker and the
generator and removes the temp folder.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.cli import refuse
from bench.export import FIRST_DAY, build
from bench.live import (
    Database,
    LiveError,
    Options,
    Workers,
    day_list,
    latency_ms,
    loadgen,
    lost_doubled,
    mosquitto,
    register,
    say,
)
from bench.loadgen import RESEND_S, LoadGen, Stats
from headend.cli.common import sqlite_path
from headend.errors import HeadendError
from headend.store import open_store
from headend.store.apikeys import ApiKeys
from headend.store.base import DAY_S
from hil.broker import free_port
from hil.supervise import ChildDied, Stopped, run, stopped

COLLECT_DAYS = 30  # days each collecting meter sends: frames / 30 meters register first
PER_CONN = 25  # collecting meters per gateway connection
WINDOW = 50  # frames awaiting ack per connection (the rate paces them)
READY_S = 20.0
PROGRESS_S = 2.0


@dataclass
class Tally:
    """What the client threads saw: latencies (s) of 200 answers, errors, intervals."""

    lat: list[float] = field(default_factory=list)
    errors: int = 0
    first_error: str = ""
    intervals: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def failed(self, what: str) -> None:
        with self.lock:
            self.errors += 1
            self.first_error = self.first_error or what


def _client(base: str, key: str, args: argparse.Namespace, stop: threading.Event, t: Tally) -> None:
    """Ask for random meters' whole period until ``stop``."""
    start, end = FIRST_DAY, FIRST_DAY + args.days * DAY_S
    with httpx.Client(base_url=base, headers={"X-API-Key": key}, timeout=10) as c:
        while not stop.is_set():
            m = random.randint(1, args.meters)
            t0 = time.perf_counter()
            try:
                r = c.get(f"/api/v1/meters/{m}/intervals", params={"start": start, "end": end})
            except httpx.HTTPError as e:
                if not stop.is_set():  # the worker ending after the window is no error
                    t.failed(f"{type(e).__name__}: {e}")
                continue
            dt = time.perf_counter() - t0
            if r.status_code != 200:
                t.failed(f"{r.status_code}: {r.text[:200]}")
                continue
            if not t.intervals:  # decoded once: the clients share the machine with the rest
                t.intervals = len(r.json())
            with t.lock:
                t.lat.append(dt)


def _seed(url: str, meters: int, days: int) -> str:
    """The store's meter-months and an operator key (returned)."""
    path = sqlite_path(url)
    assert path is not None  # Database("sqlite", ...) is a file
    build(path, meters, days)
    store = open_store(url, migrate=False)
    try:
        return ApiKeys(store.db).add("bench", 0)
    finally:
        store.close()


async def _wait_up(base: str) -> None:
    end = time.monotonic() + READY_S
    async with httpx.AsyncClient(base_url=base, timeout=1) as c:
        while True:
            try:
                await c.get("/openapi.json")
                return
            except httpx.TransportError:
                if time.monotonic() > end:
                    raise LiveError(f"the API at {base} did not start in {READY_S:.0f} s") from None
                await asyncio.sleep(0.1)


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    frames = 0 if args.no_collect else max(1, round(args.collect_rate * args.seconds))
    collectors = max(1, math.ceil(frames / COLLECT_DAYS))
    opts = Options(
        collectors, COLLECT_DAYS, 1, "sqlite", "mqtt", WINDOW, 0.0, PER_CONN, "", 0.0, RESEND_S,
    )  # fmt: skip
    tmp = Path(tempfile.mkdtemp(prefix="ami-api-"))
    try:
        with mosquitto(tmp, collectors, PER_CONN, 1) as broker:
            db = Database("sqlite", "", tmp)
            say(f"api: seeding {args.meters} meters x {args.days} days")
            key = await asyncio.to_thread(_seed, db.url, args.meters, args.days)
            listen = f"127.0.0.1:{free_port()}"
            extra = {"api_listen": listen, "api_insecure": True}
            workers = Workers(broker, db, 1, tmp, "mqtt", extra=extra)
            days = day_list(COLLECT_DAYS)
            gen = None if args.no_collect else loadgen(opts, broker, days)
            try:
                await workers.start("w1")
                await _wait_up(f"http://{listen}")
                if gen is not None:
                    await register(gen, days, "api")  # as fast as acks come: not timed
                    gen.rate = args.collect_rate
                out = await _window(args, f"http://{listen}", key, workers, gen)
                if gen is not None:
                    await workers.stop()  # its last batch committed before counting
                    found = await asyncio.to_thread(db.count, gen.ids, days)
                    out["lost"], out["doubled"] = lost_doubled(found, collectors, COLLECT_DAYS)
                return out
            finally:
                try:
                    await workers.stop()
                finally:
                    if gen is not None:
                        await gen.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


async def _window(
    args: argparse.Namespace, base: str, key: str, workers: Workers, gen: LoadGen | None
) -> dict[str, Any]:
    """Query while the reads go (or for ``--seconds``); the figures."""
    tally, stop = Tally(), threading.Event()
    threads = [
        threading.Thread(target=_client, args=(base, key, args, stop, tally), daemon=True)
        for _ in range(args.clients)
    ]
    last = [time.monotonic(), 0, 0]

    def progress(st: Stats, total: int) -> None:
        failed = workers.failure() or workers.broker.failure()
        if failed is not None:
            raise LiveError(failed)
        now = time.monotonic()
        if now - last[0] >= PROGRESS_S:
            n = len(tally.lat)
            rate, frames = (n - last[1]) / (now - last[0]), (st.acked - last[2]) / (now - last[0])
            last[:] = [now, n, st.acked]
            said = f"; collection {st.acked}/{total} acked, {frames:.0f}/s now" if total else ""
            say(f"api: {n} requests, {rate:.0f}/s now, {tally.errors} errors{said}")

    t0 = time.monotonic()
    for t in threads:
        t.start()
    try:
        if gen is None:
            while time.monotonic() - t0 < args.seconds:
                await asyncio.sleep(0.5)
                progress(Stats(), 0)
            stats = Stats()
        else:
            stats = await gen.run(progress)
    finally:
        stop.set()
        for t in threads:
            await asyncio.to_thread(t.join, 15)
    span = time.monotonic() - t0
    lat = sorted(tally.lat)
    out: dict[str, Any] = {
        "bench": "api",
        "meters": args.meters,
        "days": args.days,
        "clients": args.clients,
        "seconds": round(span, 2),
        "requests": len(lat),
        "requests_per_s": round(len(lat) / span, 1),
        **latency_ms(lat, 2),
        "errors": tally.errors,
        "intervals_per_answer": tally.intervals,
        "collect_rate": None if gen is None else args.collect_rate,
        "frames": stats.acked,
        "frames_per_s": round(stats.acked / max(1e-9, stats.last_ack - stats.first_send), 1),
        **{f"ack_{k}": v for k, v in latency_ms(sorted(stats.latencies)).items()},
        "resent": stats.resent,
        "lost": None,
        "doubled": None,
        "cores": os.cpu_count(),
        "loadavg_1m": round(os.getloadavg()[0], 2),  # the machine is shared: say how busy
    }
    if tally.first_error:
        say(f"api: first error: {tally.first_error}")
    return out


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench api", description=__doc__.split("\n\n")[0])
    p.add_argument("--meters", type=int, default=200, help="meters in the store")
    p.add_argument("--days", type=int, default=31, help="days of data per meter (a month)")
    p.add_argument(
        "--seconds",
        type=float,
        default=10.0,
        help="how long to query (collection: rate x s frames)",
    )
    p.add_argument("--clients", type=int, default=2, help="concurrent client threads")
    p.add_argument("--collect-rate", type=float, default=200.0, help="collection frames/s")
    p.add_argument("--no-collect", action="store_true", help="the API alone: no uplinks")
    args = p.parse_args(argv)
    if min(args.meters, args.days, args.clients) < 1 or min(args.seconds, args.collect_rate) <= 0:
        return refuse("--meters, --days, --clients, --seconds, --collect-rate: expected > 0")
    try:
        out = run(lambda: bench(args))
    except Stopped as e:
        return stopped("bench api", e)
    except (HeadendError, ChildDied, TimeoutError) as e:
        return refuse(e)
    print(
        f"interval query of one meter-month ({args.days} days x 96): "
        f"{out['requests_per_s']} req/s, p50 {out['p50_ms']} ms, p99 {out['p99_ms']} ms, "
        f"max {out['max_ms']} ms, {out['errors']} errors ({args.clients} clients); "
        f"collection {out['frames_per_s']} frames/s of {out['collect_rate']}, "
        f"ack p99 {out['ack_p99_ms']} ms, lost {out['lost']}, doubled {out['doubled']}"
    )
    print(json.dumps(out))
    return 0
