"""A private Mosquitto broker on a free loopback port, for tests, the stack and the demo.

The system broker (if any) is never touched: each Broker has its own config,
log file and port, and is terminated when the context ends.

Secure by default, as a site's broker (`headend.brokerconf`): TLS 1.2+ with a
CA of its own (`headend.pki`, in its work dir), no anonymous client, a login
per meter and per head-end worker derived from the site master key, and the
ACLs of protocol/SPEC.md "MQTT". ``admit()`` adds identities (a running broker
restarts for them: its ACL plugin reads its file at start only). ``insecure=True``
is the plain, anonymous broker of old, for what asks for it explicitly.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import random
import secrets
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from headend.api import brokerconf, pki
from hil.supervise import child_options, exit_text, tail

# Debian installs mosquitto in /usr/sbin, which is not on a normal user's PATH.
_SBIN_CANDIDATES = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")
START_TIMEOUT_S = 10.0


class BrokerError(RuntimeError):
    """Mosquitto could not be started (the message carries its log)."""


def find_mosquitto() -> str | None:
    """Path of the mosquitto binary: $AMI_MOSQUITTO, PATH, then the sbin dirs."""
    return find_program("mosquitto", "AMI_MOSQUITTO", _SBIN_CANDIDATES)


def find_program(name: str, env: str, candidates: tuple[str, ...]) -> str | None:
    """Path of a server binary: $``env`` (if executable), PATH, then ``candidates``
    (Debian installs servers in /usr/sbin, which is not on a normal user's PATH)."""
    override = os.environ.get(env)
    if override:
        return override if os.access(override, os.X_OK) else None
    found = shutil.which(name)
    if found:
        return found
    for path in candidates:
        if os.access(path, os.X_OK):
            return path
    return None


# Below Linux's ephemeral range (32768-60999): a port picked here is never the
# local end of some other process's outgoing connection, which binding port 0
# could hand out a moment later (a board then fails to listen: EADDRINUSE).
_PORT_RANGE = (20000, 32767)
_handed: set[int] = set()


# mosquitto's log lines: all its listeners are open; a listener's port is taken
_RUNNING = " running"
_IN_USE = "Address already in use"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that nothing listens on right now, outside the ephemeral range,
    and not handed out before by this process."""
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randint(*_PORT_RANGE)
        if port in _handed:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        _handed.add(port)
        return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:  # range exhausted
        s.bind((host, 0))
        return int(s.getsockname()[1])


def end_process(proc: subprocess.Popen[bytes], grace_s: float) -> None:
    """SIGTERM, then SIGKILL after ``grace_s``; wait for it (an exited one is reaped)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
    proc.wait()


def accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def await_listening(
    proc: subprocess.Popen[bytes],
    host: str,
    ports: Sequence[int],
    deadline: float,
    ready: Callable[[], bool] | None = None,
) -> str | None:
    """Wait until a started server accepts on every one of ``ports``, by ``deadline``.

    ``deadline`` is on `time.monotonic`, so one budget can cover several
    processes. None once it listens; else why not (``exited with 1 on start``,
    ``did not listen in time``) for the caller's error, which adds its log.
    ``ready``: the server's own word that it listens (another process on the same
    port, about to make this one fail, also accepts).
    """
    while True:
        if proc.poll() is not None:
            return f"exited with {proc.returncode} on start"
        if all(accepts(host, p) for p in ports) and (ready is None or ready()):
            return None
        if time.monotonic() > deadline:
            return "did not listen in time"
        time.sleep(0.05)


class Broker:
    """One private mosquitto process; `restart()` keeps the port for outage tests.

    Args:
        binary, workdir: mosquitto and a directory of its own (config, CA, log).
        insecure: plain and anonymous (no TLS, no logins, no ACL).
        master: the site master key the logins derive from (default: random).
        meters, workers, recipients, observers, gateways, readers: the identities
            admitted at start.

    A `hil.supervise.Dependent`: `failure()` says so if mosquitto died on its own.
    """

    name = "mosquitto"

    def __init__(
        self,
        binary: str,
        workdir: Path,
        host: str = "127.0.0.1",
        *,
        insecure: bool = False,
        master: bytes | None = None,
        meters: tuple[int, ...] = (),
        workers: tuple[str, ...] = (),
        recipients: tuple[str, ...] = (),
        observers: tuple[str, ...] = (),
        gateways: tuple[brokerconf.Gateway, ...] = (),
        readers: tuple[brokerconf.Reader, ...] = (),
    ) -> None:
        self.binary = binary
        self.host = host
        self.port = free_port(host)
        self.insecure = insecure
        self.master = secrets.token_bytes(32) if master is None else master
        self.site = brokerconf.Site(
            meters=tuple(meters),
            workers=tuple(workers),
            recipients=tuple(recipients),
            observers=tuple(observers),
            gateways=gateways,
            readers=readers,
        )
        self.workdir = workdir
        self.log_path = workdir / "mosquitto.log"
        self.pki = pki.Pki(workdir / "pki")
        self._proc: subprocess.Popen[bytes] | None = None
        self._out: IO[bytes] | None = None

    @property
    def url(self) -> str:
        """``mqtts://host:port`` (secure) or ``mqtt://host:port`` (insecure)."""
        scheme = "mqtt" if self.insecure else "mqtts"
        return f"{scheme}://{self.host}:{self.port}"

    def url_for(self, user: str) -> str:
        """The URL a head-end worker configures: its user name in it (never a password)."""
        return self.url if self.insecure else self.url.replace("://", f"://{user}@", 1)

    @property
    def ca(self) -> Path | None:
        """The CA clients pin (None when insecure)."""
        return None if self.insecure else self.pki.ca

    server_name = "localhost"  # a name in the server certificate (pki.DEFAULT_HOSTS)

    def password(self, user: str | int) -> str:
        """The MQTT password of a meter (an int or its decimal id) or a named user."""
        return brokerconf.password_of(self.master, str(user))

    def meter_link(self) -> tuple[str, int, Path | None]:
        """(host, port, CA or None) where a meter (a board, a fleet meter) connects."""
        return self.host, self.port, self.ca

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _write_config(self) -> Path:
        if self.insecure:
            return self._write_plain_config()
        pki.init(self.pki.dir)  # kept across restarts: clients pin this CA
        listeners = [
            brokerconf.Listener(
                self.port, self.host, self.pki.ca, self.pki.server_cert, self.pki.server_key
            )
        ]
        files = brokerconf.write(
            self.workdir, self.site, self.master, listeners, None, self.log_path
        )
        return files.conf

    def admit(
        self,
        meters: tuple[int, ...] = (),
        workers: tuple[str, ...] = (),
        recipients: tuple[str, ...] = (),
    ) -> None:
        """Add identities (logins and ACLs); a running broker restarts on its port for them."""
        s = self.site
        self.site = dataclasses.replace(
            s,
            meters=tuple(sorted(set(s.meters) | set(meters))),
            workers=tuple(dict.fromkeys((*s.workers, *workers))),
            recipients=tuple(dict.fromkeys((*s.recipients, *recipients))),
        )
        if self.running and not self.insecure:
            # the ACL plugin reads its file at start only: a restart (clients reconnect)
            self.restart()

    def _write_plain_config(self) -> Path:
        conf = self.workdir / "mosquitto.conf"
        # `user`: run as whoever we are; as root mosquitto would otherwise switch
        # to the `mosquitto` user and fail to open a log file in our temp dir.
        listener = [brokerconf.Listener(self.port, self.host)]
        conf.write_text(brokerconf.mosquitto_conf(None, listener, None, self.log_path))
        return conf

    def failure(self) -> str | None:
        """None while it runs or after `stop()`; else how it ended and its log."""
        proc = self._proc
        if proc is None or proc.poll() is None:
            return None
        return f"mosquitto on {self.url} {exit_text(proc.returncode)}; its log:{tail(self.log())}"

    def log(self) -> str:
        """Everything the broker wrote so far (for failure messages)."""
        parts = []
        for p in (self.log_path, self.workdir / "stdout.log"):
            if p.exists():
                parts.append(p.read_text(errors="replace"))
        return "".join(parts)

    def start(self, keep_port: bool = False) -> None:
        """Start mosquitto. A port picked for it that another process took first
        (between `free_port` and the bind) is picked again, up to 3 times, unless
        ``keep_port`` (a restart: clients reconnect to the same port)."""
        for attempt in range(3):
            if self._start_once():
                return
            if keep_port or attempt == 2:
                break
            self.port = free_port(self.host)
        raise BrokerError(f"mosquitto on {self.url}: its port is taken:\n{self.log()}")

    def _start_once(self) -> bool:
        """True once it runs, False if its port was taken; BrokerError else."""
        if self.running:
            return True
        conf = self._write_config()
        log = self.log()  # kept across restarts: count what this start adds
        running, in_use = log.count(_RUNNING), log.count(_IN_USE)
        self._out = open(self.workdir / "stdout.log", "ab")  # noqa: SIM115 - closed in stop()
        self._proc = subprocess.Popen(
            [self.binary, "-c", str(conf)],
            stdin=subprocess.DEVNULL,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            **child_options(),
        )
        why = await_listening(
            self._proc,
            self.host,
            [self.port],
            time.monotonic() + START_TIMEOUT_S,
            ready=lambda: self.log().count(_RUNNING) > running,
        )
        if why is None:
            return True
        self.stop()
        if self.log().count(_IN_USE) > in_use:
            return False
        raise BrokerError(f"mosquitto on {self.url} {why}:\n{self.log()}")

    def stop(self) -> None:
        """Terminate the broker (SIGTERM, then SIGKILL) and wait for it."""
        proc, self._proc = self._proc, None
        if proc is not None:
            end_process(proc, 5)
        if self._out is not None:
            self._out.close()
            self._out = None

    def restart(self) -> None:
        """Stop and start again on the same port (clients see an outage)."""
        self.stop()
        self.start(keep_port=True)


def client_login(broker: Broker, user: str) -> dict[str, Any]:
    """aiomqtt.Client keyword arguments to log in to ``broker`` as ``user`` (TLS, CA pinned)."""
    if broker.insecure:
        return {"identifier": f"{user}-{secrets.token_hex(4)}"}
    tls = ssl.create_default_context(cafile=str(broker.pki.ca))
    return {
        "identifier": user,
        "username": user,
        "password": broker.password(user),
        "tls_context": tls,
    }


async def follow(
    broker: Broker,
    user: str,
    topics: Sequence[str],
    on_message: Callable[[str, Any], None],
    ready: asyncio.Event,
) -> None:
    """Log in as ``user``, subscribe to ``topics`` (QoS 1) and hand each message's topic and
    payload to ``on_message``, until cancelled; a dropped link is opened again (``ready``:
    set once subscribed)."""
    import aiomqtt  # the subscribers' client: not needed to run a broker

    while True:
        try:
            async with aiomqtt.Client(broker.host, broker.port, **client_login(broker, user)) as c:
                for t in topics:
                    await c.subscribe(t, qos=1)
                ready.set()
                async for m in c.messages:
                    on_message(str(m.topic), m.payload)
        except aiomqtt.MqttError:
            await asyncio.sleep(0.2)


@contextmanager
def running_broker(binary: str | None = None, **options: Any) -> Iterator[Broker]:
    """Start a private broker (`Broker`'s keyword options), yield it, and always stop it."""
    path = binary or find_mosquitto()
    if path is None:
        raise BrokerError("mosquitto not found (make setup installs it)")
    with tempfile.TemporaryDirectory(prefix="ami-mosquitto-") as tmp:
        broker = Broker(path, Path(tmp), **options)
        try:
            broker.start()
            yield broker
        finally:
            broker.stop()
