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

import os
import secrets
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
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
    override = os.environ.get("AMI_MOSQUITTO")
    if override:
        return override if os.access(override, os.X_OK) else None
    found = shutil.which("mosquitto")
    if found:
        return found
    for path in _SBIN_CANDIDATES:
        if os.access(path, os.X_OK):
            return path
    return None


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


class Broker:
    """One private mosquitto process; `restart()` keeps the port for outage tests.

    Args:
        binary, workdir: mosquitto and a directory of its own (config, CA, log).
        insecure: plain and anonymous (no TLS, no logins, no ACL).
        master: the site master key the logins derive from (default: random).
        meters, workers, recipients: the identities admitted at start.

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
        self.site = brokerconf.Site(
            meters=tuple(sorted(set(s.meters) | set(meters))),
            workers=tuple(dict.fromkeys((*s.workers, *workers))),
            recipients=tuple(dict.fromkeys((*s.recipients, *recipients))),
            observers=s.observers,
            notify_topic=s.notify_topic,
            realtime_topic=s.realtime_topic,
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

    def start(self) -> None:
        if self.running:
            return
        conf = self._write_config()
        self._out = open(self.workdir / "stdout.log", "ab")  # noqa: SIM115 - closed in stop()
        self._proc = subprocess.Popen(
            [self.binary, "-c", str(conf)],
            stdin=subprocess.DEVNULL,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            **child_options(),
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self.stop()
                raise BrokerError(f"mosquitto exited with {code} on start:\n{self.log()}")
            if _accepts(self.host, self.port):
                return
            time.sleep(0.05)
        self.stop()
        raise BrokerError(
            f"mosquitto did not listen on {self.url} in {START_TIMEOUT_S}s:\n{self.log()}"
        )

    def stop(self) -> None:
        """Terminate the broker (SIGTERM, then SIGKILL) and wait for it."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        elif proc is not None:
            proc.wait()  # already exited: reap it
        if self._out is not None:
            self._out.close()
            self._out = None

    def restart(self) -> None:
        """Stop and start again on the same port (clients see an outage)."""
        self.stop()
        self.start()


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
