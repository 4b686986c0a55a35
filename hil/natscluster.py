"""Three local nats-server nodes: a JetStream cluster with an MQTT listener on each.

For the NATS transport's tests and the ``nats-failover`` scenario. Each node
has its own free ports (client, cluster route, MQTT), its own store dir under
one temp dir, and routes to the two others. Logins (`nats_conf`): one NATS
user per head-end worker and one MQTT user per meter, in one account (AMI)
with JetStream; a meter may publish only its own uplink subject and receive
only its own downlinks. All nodes are ended when the context ends, on
Ctrl-C and SIGTERM too (the children die with their parent: `child_options`).

What nats-server (2.9) cannot do that the mosquitto ACLs do: no TLS client
identity per meter here (passwords only; TLS is the same for every client),
no per-user limit of one connection (a second login with the same user is
allowed; only the MQTT client id is unique), and a permission denial is not
reported to an MQTT 3.1.1 client (the publish is dropped after its PUBACK).
"""

from __future__ import annotations

import functools
import json
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from headend.api import brokerconf
from hil.broker import await_listening, end_process, find_program
from hil.fakemeter import MqttLink
from hil.supervise import child_options, exit_text, tail

_SBIN_CANDIDATES = ("/usr/sbin/nats-server", "/usr/local/sbin/nats-server", "/usr/bin/nats-server")
START_TIMEOUT_S = 15.0
ACCOUNT = "AMI"


class NatsError(RuntimeError):
    """nats-server could not be started (the message carries its log)."""


def find_nats_server() -> str | None:
    """Path of nats-server: $AMI_NATS_SERVER, PATH, then the sbin dirs (Debian: /usr/sbin)."""
    return find_program("nats-server", "AMI_NATS_SERVER", _SBIN_CANDIDATES)


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct TCP ports that nothing listens on right now (held open together)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


READY = "Server is ready"  # nats-server's log line once it listens on every port


@dataclass(frozen=True)
class Logins:
    """Who may log in: head-end workers (NATS users), meters (MQTT users: the
    decimal id, SPEC "MQTT") and gateways (MQTT users named as in
    ``headend broker config --gateway``), each with a password derived from ``master``."""

    master: bytes
    workers: tuple[str, ...] = ()
    meters: tuple[int, ...] = ()
    gateways: tuple[
        brokerconf.Gateway, ...
    ] = ()  # one login carrying many meters' topics (the fleet's)

    def password(self, user: str | int) -> str:
        return brokerconf.password_of(self.master, str(user))


def _q(text: str) -> str:
    return json.dumps(text)  # a JSON string is a valid nats-server config string


def users_conf(logins: Logins) -> str:
    """The ``users`` list of the AMI account (nats-server config syntax)."""
    rows = []
    for w in logins.workers:
        # workers: the uplink stream, downlinks to any meter, JetStream's API, replies
        rows.append(
            f"{{user: {_q(w)}, password: {_q(logins.password(w))}, permissions: {{"
            'publish: {allow: ["ami.v1.*.down", "$MQTT.msgs.ami.v1.*.down", "ami.v1.notify.>", '
            '"ami.v1.data.>", "$MQTT.msgs.ami.v1.notify.>", "$MQTT.msgs.ami.v1.data.>", '
            '"$JS.API.>", "$JS.ACK.>", "_INBOX.>"]}, '
            'subscribe: {allow: ["_INBOX.>", "ami.v1.notify.*.ack"]}}}'
        )
    # a meter: its own subjects only, a gateway: its meters'; $MQTT.sub.> and
    # $MQTT.JSA.> are the MQTT session's own JetStream traffic, which the server does
    # on the client's behalf
    carriers: list[tuple[str, tuple[int, ...]]] = [(str(m), (m,)) for m in logins.meters]
    carriers += [(g.name, g.meters) for g in logins.gateways]
    for user, ids in carriers:
        ups = ", ".join(_q(f"ami.v1.{m}.up") for m in ids)
        downs = ", ".join(_q(f"ami.v1.{m}.down") for m in ids)
        rows.append(
            f"{{user: {_q(user)}, password: {_q(logins.password(user))}, permissions: {{"
            f"publish: {{allow: [{ups}]}}, "
            f'subscribe: {{allow: [{downs}, "$MQTT.sub.>"]}}}}}}'
        )
    return "[\n    " + ",\n    ".join(rows) + "\n  ]"


def node_conf(
    name: str,
    host: str,
    port: int,
    cluster_port: int,
    mqtt_port: int,
    routes: Sequence[int],
    store: Path,
    logins: Logins | None,
) -> str:
    """One node's config: JetStream, cluster routes to the others, the MQTT listener."""
    route_list = ", ".join(_q(f"nats-route://{host}:{p}") for p in routes)
    accounts = ""
    if logins is not None:
        accounts = (
            f"accounts {{\n  {ACCOUNT}: {{\n  jetstream: enabled\n  users: {users_conf(logins)}\n"
            "  }\n}\n"
        )
    else:
        accounts = (
            f"accounts {{\n  {ACCOUNT}: {{ jetstream: enabled, users: [{{user: anon}}] }}\n}}\n"
            "no_auth_user: anon\n"
        )
    return (
        f"server_name: {_q(name)}\n"
        f"listen: {_q(f'{host}:{port}')}\n"
        f"jetstream {{ store_dir: {_q(str(store))}, max_memory_store: 64MB, "
        "max_file_store: 1GB }\n"
        f"cluster {{ name: ami, listen: {_q(f'{host}:{cluster_port}')}, "
        f"routes: [{route_list}] }}\n"
        # the MQTT sessions' consumers in memory, one replica: a meter's session is
        # cheap to lose (it resubscribes; its data is in the work queue, replicated)
        f"mqtt {{ listen: {_q(f'{host}:{mqtt_port}')}, ack_wait: 30s, max_ack_pending: 100, "
        "stream_replicas: 3 }\n" + accounts
    )


@dataclass
class Node:
    name: str
    port: int
    cluster_port: int
    mqtt_port: int
    conf: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    out: IO[bytes] | None = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class NatsCluster:
    """Three nodes (``size``) under ``workdir``; `start()`, `stop_node(i)`, `stop()`.

    A `hil.supervise.Dependent`: `failure()` names a node that died on its own.
    """

    binary: str
    workdir: Path
    logins: Logins | None = None
    size: int = 3
    host: str = "127.0.0.1"
    nodes: list[Node] = field(default_factory=list)
    name = "nats-server"

    def __post_init__(self) -> None:
        ports = free_ports(3 * self.size, self.host)
        for i in range(self.size):
            d = self.workdir / f"n{i + 1}"
            d.mkdir(parents=True, exist_ok=True)
            self.nodes.append(
                Node(
                    f"n{i + 1}",
                    ports[i],
                    ports[self.size + i],
                    ports[2 * self.size + i],
                    d / "nats.conf",
                    d / "nats.log",
                )
            )
        for i, n in enumerate(self.nodes):
            others = [o.cluster_port for j, o in enumerate(self.nodes) if j != i]
            n.conf.write_text(
                node_conf(
                    n.name,
                    self.host,
                    n.port,
                    n.cluster_port,
                    n.mqtt_port,
                    others,
                    n.conf.parent / "js",
                    self.logins,
                )
            )

    @property
    def urls(self) -> list[str]:
        """The NATS client URLs of every node (a worker's ``nats_url``, comma-joined)."""
        return [f"nats://{self.host}:{n.port}" for n in self.nodes]

    @property
    def mqtt_ports(self) -> list[int]:
        return [n.mqtt_port for n in self.nodes]

    def meter_link(self, meter_id: int, first: int) -> MqttLink:
        """A meter's MQTT link, logged in as the meter: node ``first`` (mod the size)
        first, the others in turn when its node goes."""
        ports = self.mqtt_ports
        k = first % len(ports)
        password = self.logins.password(meter_id) if self.logins is not None else None
        return MqttLink(self.host, ports[k], meter_id, password, ports[k + 1 :] + ports[:k])

    def start(self) -> None:
        """Start every node that is not running, and wait until each listens (NATS, MQTT)."""
        # the log is kept across restarts: each start's "ready" is counted (a port that
        # accepts may be another process's, taken between free_port and the bind)
        ready = {n.name: self._text(n).count(READY) for n in self.nodes}
        for n in self.nodes:
            if not n.running:
                self._spawn(n)
            else:
                ready[n.name] = -1  # up already
        deadline = time.monotonic() + START_TIMEOUT_S
        for n in self.nodes:
            assert n.proc is not None  # spawned just above
            said = functools.partial(self._said_ready, n, ready[n.name])
            why = await_listening(n.proc, self.host, [n.port, n.mqtt_port], deadline, said)
            if why is not None:
                self.stop()
                raise NatsError(f"nats-server {n.name} {why}:{self._log(n)}")
        # JetStream answers once the nodes elected a metadata leader (their logs say so)
        while not any("new metadata leader" in self._text(n) for n in self.nodes):
            if time.monotonic() > deadline:
                self.stop()
                raise NatsError(
                    "the NATS cluster elected no JetStream leader in time:"
                    + self._log(self.nodes[0])
                )
            time.sleep(0.05)

    def _said_ready(self, n: Node, before: int) -> bool:
        return self._text(n).count(READY) > before

    def _text(self, n: Node) -> str:
        return n.log.read_text(errors="replace") if n.log.exists() else ""

    def _spawn(self, n: Node) -> None:
        n.out = open(n.log, "ab")  # noqa: SIM115 - closed in _end()
        n.proc = subprocess.Popen(
            [self.binary, "-c", str(n.conf)],
            stdin=subprocess.DEVNULL,
            stdout=n.out,
            stderr=subprocess.STDOUT,
            **child_options(),
        )

    def _log(self, n: Node) -> str:
        return tail(self._text(n))

    def stop_node(self, i: int) -> None:
        """End node ``i`` (SIGTERM: its clients see the link drop and move to another)."""
        self._end(self.nodes[i])

    def start_node(self, i: int) -> None:
        self._spawn(self.nodes[i])

    def _end(self, n: Node) -> None:
        proc, n.proc = n.proc, None
        if proc is not None:
            end_process(proc, 10)
        if n.out is not None:
            n.out.close()
            n.out = None

    def stop(self) -> None:
        for n in self.nodes:
            self._end(n)

    def failure(self) -> str | None:
        """None while every started node runs; else which one ended and its log."""
        for n in self.nodes:
            if n.proc is not None and n.proc.poll() is not None:
                return (
                    f"nats-server {n.name} {exit_text(n.proc.returncode)}; its log:{self._log(n)}"
                )
        return None


def check_config(binary: str, conf: Path) -> str | None:
    """``nats-server -t``: None if the config parses, else what the server said."""
    r = subprocess.run(
        [binary, "-t", "-c", str(conf)], capture_output=True, text=True, timeout=30, check=False
    )
    return None if r.returncode == 0 else (r.stdout + r.stderr).strip()


@contextmanager
def running_cluster(
    binary: str | None = None, logins: Logins | None = None, size: int = 3
) -> Iterator[NatsCluster]:
    """Start a private cluster, yield it, and always stop every node."""
    path = binary or find_nats_server()
    if path is None:
        raise NatsError("nats-server not found (make setup installs it)")
    with tempfile.TemporaryDirectory(prefix="ami-nats-") as tmp:
        cluster = NatsCluster(path, Path(tmp), logins, size)
        try:
            cluster.start()
            yield cluster
        finally:
            cluster.stop()
