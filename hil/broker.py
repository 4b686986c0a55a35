"""A private Mosquitto broker on a free loopback port, for tests and the demo.

The system broker (if any) is never touched: each Broker has its own config,
log file and port, and is terminated when the context ends.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

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

    A `hil.supervise.Dependent`: `failure()` says so if mosquitto died on its own.
    """

    name = "mosquitto"

    def __init__(self, binary: str, workdir: Path, host: str = "127.0.0.1") -> None:
        self.binary = binary
        self.host = host
        self.port = free_port(host)
        self.workdir = workdir
        self.log_path = workdir / "mosquitto.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._out: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _write_config(self) -> Path:
        conf = self.workdir / "mosquitto.conf"
        # Run as whoever we are: as root mosquitto would otherwise switch to the
        # `mosquitto` user and fail to open a log file in our private temp dir.
        user = pwd.getpwuid(os.getuid()).pw_name
        conf.write_text(
            f"user {user}\n"
            f"listener {self.port} {self.host}\n"
            "allow_anonymous true\n"
            "persistence false\n"
            f"log_dest file {self.log_path}\n"
            "log_type error\nlog_type warning\nlog_type notice\nlog_type information\n"
            "connection_messages true\n"
            # Nagle's algorithm would hold a small reply for the peer's delayed
            # ACK (~40 ms): seconds of simulated round trip at the rig's speeds
            "set_tcp_nodelay true\n"
        )
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


@contextmanager
def running_broker(binary: str | None = None) -> Iterator[Broker]:
    """Start a private broker, yield it, and always stop it."""
    path = binary or find_mosquitto()
    if path is None:
        raise BrokerError("mosquitto not found (make setup installs it)")
    with tempfile.TemporaryDirectory(prefix="ami-mosquitto-") as tmp:
        broker = Broker(path, Path(tmp))
        try:
            broker.start()
            yield broker
        finally:
            broker.stop()
