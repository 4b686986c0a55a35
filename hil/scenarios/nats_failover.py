"""nats-failover: one node of a 3-node NATS cluster stops under load (H08, N01).

`python -m hil scenario nats-failover [--meters N] [--days D] --json`

A private cluster (hil/natscluster.py: JetStream and the MQTT listener on each
node, a login per worker and per meter), two head-end workers (the real
service, in this process, one SQLite store, ``transport = "nats"``) pulling
one durable work queue, and N protocol-level meters (hil/fakemeter.py)
speaking MQTT 3.1.1, spread evenly over the three nodes. Each meter sends D daily
reads, one after the other, each repeated until its read_ack (as a meter does).
Once a third of the meter-days are acknowledged the node that leads the uplink
stream is stopped (SIGTERM): its meters move to the next node, the stream
elects a new leader, the workers reconnect. Then every meter-day must still be acknowledged.

Prints one JSON line: ``meters``, ``meter_days`` sent, ``acked_before_stop``,
``acked_after_stop``, ``stopped_node``, ``meters_moved``, ``sent_intervals``
(what the acknowledged reads carried) against ``stored_intervals``, ``lost``
(sent, not stored), ``doubled`` (stored more than once or never sent),
``frames`` per worker, the uplink consumer's ``redelivered`` / ``pending`` /
``ack_pending`` at the end, ``wall_s``, ``ok`` (all acknowledged, 0 lost,
0 doubled, both workers worked, nothing left pending).
Defaults: 60 meters, 4 days.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import nats

from headend.api import DEV_MASTER_KEY, Clock, Config, Headend, Service
from hil.fakemeter import DAY, FakeMeter, MqttLink
from hil.natscluster import Logins, NatsCluster, NatsError, find_nats_server
from hil.rig import RigError, cancel_hard
from hil.scenarios.common import Options, Progress
from hil.wait import wait_until

T0 = 1_711_929_600  # 2024-04-01T00:00:00Z: the head-end's clock starts at noon that day
FIRST = 9001
WORKERS = ("fw1", "fw2")
STREAM = Config().nats_stream
ACK_TIMEOUT_S = 180.0  # one read repeated until acked, through a failover


def _config(cluster: NatsCluster, worker: str, db: str, group: str) -> Config:
    return Config(
        broker=f"mqtt://{worker}@127.0.0.1:1",  # the login's user; the broker is the cluster
        insecure=True,
        transport="nats",
        nats_url=",".join(cluster.urls),
        share_group=group,
        worker=worker,
        database=db,
        speed=600.0,
        clock_start=T0 + 12 * 3600,
        poll_s=0.2,
    )


async def run(opts: Options) -> dict[str, Any]:
    n = int(opts.pick("meters", 60))
    days = int(opts.pick("days", 4))
    if n < 3 or not 1 <= days <= 30:
        raise RigError(f"nats-failover: expected --meters >= 3 and --days 1..30, got {n}, {days}")
    binary = find_nats_server()
    if binary is None:
        raise RigError("nats-server not found (make setup installs it)")
    p = Progress(None, opts.say)
    master = bytes.fromhex(DEV_MASTER_KEY)
    ids = tuple(range(FIRST, FIRST + n))
    logins = Logins(master, WORKERS, ids)
    with tempfile.TemporaryDirectory(prefix="ami-nats-failover-") as tmp:
        cluster = NatsCluster(binary, Path(tmp) / "nats", logins)
        try:
            cluster.start()
        except NatsError as e:
            raise RigError(str(e)) from None
        try:
            return await _run(cluster, logins, ids, days, f"sqlite:///{tmp}/headend.db", p)
        finally:
            cluster.stop()


async def _run(
    cluster: NatsCluster,
    logins: Logins,
    ids: tuple[int, ...],
    days: int,
    db: str,
    p: Progress,
) -> dict[str, Any]:
    t_start = time.monotonic()
    group = f"f{uuid.uuid4().hex[:8]}"
    cfgs = [_config(cluster, w, db, group) for w in WORKERS]
    clock = Clock(cfgs[0].speed, float(cfgs[0].clock_start))
    svcs = [Service(c, clock=clock) for c in cfgs]
    tasks = [asyncio.create_task(s.run()) for s in svcs]
    meters = []
    for k, i in enumerate(ids):  # node k % 3 first, then the others
        meters.append(FakeMeter(i, cluster.meter_link(i, k), clock))
    day1 = T0 - DAY
    acked: list[float] = []
    stopped_at: list[float] = []
    try:

        def up() -> bool:
            for t in tasks:
                if t.done():
                    t.result()  # raises what stopped it
            return all(s.ready.is_set() and s.mqtt.connected.is_set() for s in svcs)

        await wait_until(up, 60, "both workers pulling the uplink stream", every=0.1)
        p(f"nats-failover: {len(ids)} meters x {days} days over 3 nodes, 2 workers")
        for m in meters:
            await m.start()
        await asyncio.gather(
            *(m.send_until_acked("register", m.register_body(), timeout=60) for m in meters)
        )
        p("meters registered")

        async def one(m: FakeMeter) -> None:
            for d in range(days):
                day = day1 - d * DAY
                body = {
                    "request_seq": 0,
                    "kind": 0,
                    "part": 1,
                    "parts": 1,
                    "sections": m.day_sections(day),
                }
                await m.send_until_acked("read_response", body, timeout=ACK_TIMEOUT_S)
                acked.append(time.monotonic())

        sending = asyncio.gather(*(one(m) for m in meters))
        total = len(ids) * days
        await wait_until(lambda: len(acked) >= total // 3 or sending.done(), 300, "a third acked")
        leader = await _stream_leader(cluster, logins)
        victim = next((k for k, nd in enumerate(cluster.nodes) if nd.name == leader), 0)
        before = len(acked)
        p(
            f"{before} of {total} meter-days acked; stopping {cluster.nodes[victim].name} "
            f"(leader of the uplink stream: {leader})"
        )
        cluster.stop_node(victim)
        stopped_at.append(time.monotonic())
        await sending
        p(f"all {total} meter-days acked, {time.monotonic() - stopped_at[0]:.1f} s after the stop")
        alive = next(k for k in range(3) if k != victim)
        info = await _consumer(cluster, logins, group, alive, svcs)
        moved = sum(1 for m in meters if isinstance(m.link, MqttLink) and m.link.reconnects > 0)
    finally:
        for m in meters:
            await m.stop()
        for t in tasks:
            await cancel_hard(t, "a head-end worker")
    he = Headend.open(db)
    try:
        sent = stored = lost = extra = 0
        for i in ids:
            got = he.intervals(i, 0, day1 - (days - 1) * DAY, day1 + DAY)
            starts = [iv.start for iv in got]
            want = set(range(day1 - (days - 1) * DAY, day1 + DAY, 900))
            sent += len(want)
            stored += len(starts)
            lost += len(want - set(starts))
            extra += len(starts) - len(set(starts)) + len(set(starts) - want)
        total_rows = he.ctx.store.stats().intervals
    finally:
        he.close()
    out: dict[str, Any] = {
        "scenario": "nats-failover",
        "meters": len(ids),
        "meter_days": len(ids) * days,
        "acked_before_stop": before,
        "acked_after_stop": len(acked) - before,
        "stopped_node": cluster.nodes[victim].name,
        "meters_moved": moved,
        "sent_intervals": sent,
        "stored_intervals": stored,
        "lost": lost,
        "doubled": extra + (total_rows - stored),
        "frames": {s.config.worker: s.frames for s in svcs},
        "nacked": sum(getattr(s.mqtt, "nacked", 0) for s in svcs),
        **info,
        "collect_after_stop_s": round(max(acked) - stopped_at[0], 1),
        "wall_s": round(time.monotonic() - t_start, 1),
    }
    out["ok"] = bool(
        len(acked) == len(ids) * days
        and out["acked_after_stop"] > 0
        and lost == 0
        and out["doubled"] == 0
        and all(v > 0 for v in out["frames"].values())
        and info.get("pending") == 0
        and info.get("ack_pending") == 0
    )
    return out


async def _connect(cluster: NatsCluster, logins: Logins, urls: list[str]) -> Any:
    return await nats.connect(
        servers=urls,
        user=WORKERS[0],
        password=logins.password(WORKERS[0]),
        max_reconnect_attempts=2,
        connect_timeout=2,
    )


async def _stream_leader(cluster: NatsCluster, logins: Logins) -> str | None:
    nc = await _connect(cluster, logins, cluster.urls)
    try:
        si = await nc.jetstream().stream_info(STREAM)
        return si.cluster.leader if si.cluster is not None else None
    finally:
        await nc.close()


async def _consumer(
    cluster: NatsCluster, logins: Logins, group: str, alive: int, svcs: list[Service]
) -> dict[str, Any]:
    """The uplink consumer once the workers are idle: nothing left, how much redelivered."""
    nc = await _connect(cluster, logins, [cluster.urls[alive]])
    try:
        js = nc.jetstream()

        async def idle() -> dict[str, Any] | None:
            ci = await js.consumer_info(STREAM, group)
            if ci.num_pending == 0 and ci.num_ack_pending == 0:
                return {
                    "pending": ci.num_pending,
                    "ack_pending": ci.num_ack_pending,
                    "redelivered": ci.num_redelivered,
                }
            return None

        got: dict[str, Any] = {"pending": None, "ack_pending": None, "redelivered": None}
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(60):
                while (r := await idle()) is None:
                    await asyncio.sleep(0.2)
                got = r
        return got
    finally:
        await nc.close()
