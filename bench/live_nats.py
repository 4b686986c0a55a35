"""`bench live --transport nats`: the live path through a 3-node NATS cluster.

    python -m bench live --transport nats --workers 1,2 --meters 500 --days 8

As `bench.live`, with the broker a private 3-node NATS JetStream cluster
(`hil.natscluster`) instead of mosquitto: the gateways log in to the nodes'
MQTT listeners in turn (connection i to node i mod 3), each with a login that
may publish only its meters' uplinks and read only their downlinks; the K
`headend serve` workers (``transport = "nats"``) pull the one durable work
queue of uplinks and answer through the server's MQTT stream (QoS 1). A
fresh cluster for each K: no stream, consumer or MQTT session of one run is
in the next. K > 1 workers run on PostgreSQL (they share a store; SQLite is
one process's), K = 1 on ``--backend`` (default SQLite).
``broker_cpu_us_per_frame`` is the sum of the three nodes' CPU.

Set-up is slow: nats-server makes a replicated JetStream consumer for every
meter's downlink subscription (QoS 1), about 0.1-0.3 s each here, and a
register is acked only once its meter's consumer exists (the generator
resends after ``--resend-s``). With thousands of subscriptions at once
(``--meters 2000``: 20 gateways x 100) on this shared 2-core machine some
consumer creations may time out in the cluster (seen once at load average
8; the next run passed); the gateway client does not subscribe again, so
those meters would never be acked: the run fails with the node's line
(`refused_subscription`, `watched`) instead of running for ever. A few
hundred meters (``--meters 500 --days 8``) set up in about a minute.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import shutil
import sys
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from bench.loadgen import FIRST_ID
from headend.brokerconf import Gateway
from headend.errors import HeadendError
from hil.fleet_gateway import partition
from hil.natscluster import Logins, NatsCluster, NatsError, find_nats_server

if TYPE_CHECKING:
    from bench.live import Options

OneRun = Callable[["Options", "ClusterBroker", Path], Awaitable[dict[str, Any]]]


class ClusterError(HeadendError):
    """The NATS cluster could not be started (nats-server missing, or it failed)."""


@dataclass
class ClusterBroker:
    """What `bench.live` asks of its broker, for a NATS cluster: the workers' settings,
    the gateways' listeners and logins, readiness, failure and CPU of the nodes."""

    cluster: NatsCluster
    master: bytes
    run_dir: Path  # the run's worker logs: a worker is ready once it says it pulls
    ca = None  # plain MQTT and NATS on 127.0.0.1: nats-server's TLS is the same for all
    server_name = "localhost"

    def worker_settings(self, name: str) -> dict[str, Any]:
        """A worker's config: its login (the URL's user; the cluster is dialled, not the
        URL's host) and the cluster's NATS URLs."""
        return {
            "broker": f"mqtt://{name}@127.0.0.1:1",
            "insecure": True,
            "mqtt_ca_file": "",
            "transport": "nats",
            "nats_url": ",".join(self.cluster.urls),
        }

    def url_for(self, user: str) -> str:
        return str(self.worker_settings(user)["broker"])

    def password(self, user: str | int) -> str:
        return Logins(self.master).password(user)

    def meter_link(self) -> tuple[str, int, None]:
        return self.cluster.host, self.cluster.mqtt_ports[0], None

    def meter_addrs(self) -> list[tuple[str, int]]:
        """Every node's MQTT listener: the gateways take them in turn."""
        return [(self.cluster.host, p) for p in self.cluster.mqtt_ports]

    def log(self) -> str:
        """The workers' logs (`bench.live.Workers.start` counts " as <worker> " lines)."""
        return "".join(p.read_text(errors="replace") for p in sorted(self.run_dir.glob("w*.log")))

    def failure(self) -> str | None:
        """A node that ended, or a meter subscription a node could not set up."""
        if (ended := self.cluster.failure()) is not None:
            return ended
        for n in self.cluster.nodes:
            text = n.log.read_text(errors="replace") if n.log.exists() else ""
            if (refused := refused_subscription(text)) is not None:
                return f"nats-server {n.name}: {refused}"
        return None

    def pids(self) -> list[int]:
        return [n.proc.pid for n in self.cluster.nodes if n.proc is not None]


WATCH_S = 0.5
REFUSED_SUBSCRIPTION = "Unable to add JetStream consumer for subscription"


def refused_subscription(log: str) -> str | None:
    """What a node's log says of the first MQTT subscription it could not make a consumer
    for (that meter never gets a downlink), or None."""
    at = log.find(REFUSED_SUBSCRIPTION)
    if at < 0:
        return None
    line = log[log.rfind("\n", 0, at) + 1 :].split("\n", 1)[0]
    return (
        f"{line.split('[ERR] ', 1)[-1]}: its meters get no downlinks, the run would "
        "never end (too many subscriptions at once for this machine: fewer --meters)"
    )


def backend_for(k: int, asked: str) -> str:
    """The store of a run with ``k`` workers: several share PostgreSQL; one, the one asked."""
    return asked if k == 1 else "postgres"


class Failing(Protocol):
    def failure(self) -> str | None: ...


async def watched(run: Awaitable[dict[str, Any]], broker: Failing) -> dict[str, Any]:
    """``run``, ended (its own clean-up runs) once the cluster fails, in the registration
    too (`bench.live` looks only while the reads run): no run that never ends."""
    task = asyncio.ensure_future(run)
    while not task.done():
        await asyncio.wait({task}, timeout=WATCH_S)
        failed = None if task.done() else broker.failure()
        if failed is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            raise ClusterError(failed)
    return task.result()


async def bench_nats(opts: Options, ks: list[int], one_run: OneRun) -> dict[str, Any]:
    """One run of `one_run` per worker count, each on a fresh cluster; progress on stderr."""
    binary = find_nats_server()
    if binary is None:
        raise ClusterError("nats-server not found (make setup installs it)")
    ids = tuple(range(FIRST_ID, FIRST_ID + opts.meters))
    gws = tuple(Gateway(name, g) for name, g in partition(ids, opts.per_conn))
    master = secrets.token_bytes(32)  # the site key the logins and meter keys derive from
    logins = Logins(master, tuple(f"w{i + 1}" for i in range(max(ks))), (), gws)
    tmp = Path(tempfile.mkdtemp(prefix="ami-live-nats-"))
    try:
        runs = []
        for k in ks:
            run_dir = tmp / f"k{k}"
            cluster = NatsCluster(binary, run_dir / "nats", logins)
            try:
                cluster.start()
            except NatsError as e:
                raise ClusterError(str(e)) from e
            try:
                run_opts = replace(opts, workers=k, backend=backend_for(k, opts.backend))
                broker = ClusterBroker(cluster, master, run_dir)
                runs.append(await watched(one_run(run_opts, broker, run_dir), broker))
            finally:
                cluster.stop()
            print("live: " + json.dumps(runs[-1]), file=sys.stderr, flush=True)
        return runs[0] if len(runs) == 1 else {"runs": runs}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
