"""The head-end's MQTT login (SPEC "MQTT"): TLS with the CA pinned, a password never on argv.

`headend serve` against the real mosquitto with the generated configuration:
it logs in; a refused login, a CA that does not match, a password file others
can read, a plain URL without --insecure each end it with one line and a
non-zero exit, no traceback, no secret. The incoming queue is bounded.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiomqtt.exceptions import MqttCodeError, MqttConnectError
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from headend.api import Config, pki
from headend.brokerconf import MAX_INFLIGHT_MESSAGES
from headend.transport.base import TransportError, Uplink
from headend.transport.mqtt import Message, MqttTransport, Refused, _refusal, login_from
from hil.broker import Broker, find_mosquitto, running_broker
from hil.wait import wait_until, wait_until_sync
from tests.conftest import missing
from tests.support.mqttpeer import Peer

ROOT = Path(__file__).resolve().parents[2]
KEY = secrets.token_hex(32)
WORKER = "headend"
SERVE_S = 30.0


@pytest.fixture(scope="module")
def broker() -> Iterator[Broker]:
    if find_mosquitto() is None:
        missing("mosquitto not installed: run `make setup` (or apt-get install mosquitto)")
    with running_broker(
        master=bytes.fromhex(KEY),
        meters=(1001,),
        workers=(WORKER, "w-queue"),
    ) as b:
        yield b


def _toml(tmp: Path, b: Broker, **extra: str) -> Path:
    table = {
        "broker": b.url_for(WORKER),
        "mqtt_ca_file": str(b.ca),
        "database": f"sqlite:///{tmp / 'h.sqlite'}",
        "master_key": KEY,
        "share_group": f"g{secrets.token_hex(4)}",
        **extra,
    }
    path = tmp / "headend.toml"
    path.write_text("[headend]\n" + "".join(f'{k} = "{v}"\n' for k, v in table.items()))
    path.chmod(0o600)
    return path


def _serve(config: Path, log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    with log.open("wb") as f:
        return subprocess.Popen(
            [sys.executable, "-m", "headend", "serve", "--config", str(config)],
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            stdout=f,
            stderr=subprocess.STDOUT,
        )


def _ends_with_one_line(proc: subprocess.Popen[bytes], log: Path) -> str:
    """Wait for the exit; the one error line (after any INFO/WARNING log lines)."""
    try:
        proc.wait(SERVE_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert proc.returncode != 0, text
    assert "Traceback" not in text, text
    errors = [ln for ln in text.splitlines() if ln.startswith("headend serve:")]
    assert len(errors) == 1, text
    return errors[0]


@pytest.mark.req("T02")
def test_t02_serve_logs_in_over_tls_with_a_private_password_file(
    broker: Broker, tmp_path: Path
) -> None:
    pw = tmp_path / "mqtt.pw"
    pw.write_text(broker.password(WORKER) + "\n")
    pw.chmod(0o600)
    log = tmp_path / "serve.log"
    proc = _serve(_toml(tmp_path, broker, mqtt_password_file=str(pw)), log)
    try:
        wait_until_sync(
            lambda: "subscribed as headend" in log.read_text() or proc.poll() is not None,
            SERVE_S,
            "headend serve on the broker",
        )
        assert proc.poll() is None, log.read_text()
        assert f"as {WORKER} (p5" in broker.log() and f"u'{WORKER}'" in broker.log()
    finally:
        proc.terminate()
        proc.wait(SERVE_S)
    assert broker.password(WORKER) not in log.read_text()


@pytest.mark.req("T02")
def test_t02_serve_refuses_a_password_file_others_can_read(broker: Broker, tmp_path: Path) -> None:
    pw = tmp_path / "mqtt.pw"
    pw.write_text(broker.password(WORKER) + "\n")
    pw.chmod(0o644)
    log = tmp_path / "serve.log"
    line = _ends_with_one_line(
        _serve(_toml(tmp_path, broker, mqtt_password_file=str(pw)), log), log
    )
    assert "mqtt_password_file" in line and "0644" in line and "chmod 600" in line
    assert broker.password(WORKER) not in log.read_text()


@pytest.mark.req("T02")
def test_t02_serve_ends_on_a_refused_login_with_one_line(broker: Broker, tmp_path: Path) -> None:
    wrong = secrets.token_hex(16)
    log = tmp_path / "serve.log"
    proc = _serve(_toml(tmp_path, broker), log, env={"AMI_MQTT_PASSWORD": wrong})
    line = _ends_with_one_line(proc, log)
    assert proc.returncode == 1
    assert "refused headend" in line and "login refused" in line, line
    assert wrong not in log.read_text() and KEY not in log.read_text()


@pytest.mark.req("T02")
def test_t02_serve_ends_on_a_ca_that_does_not_match_with_one_line(
    broker: Broker, tmp_path: Path
) -> None:
    other, _ = pki.init(tmp_path / "other")
    log = tmp_path / "serve.log"
    proc = _serve(_toml(tmp_path, broker, mqtt_ca_file=str(other.ca)), log)
    line = _ends_with_one_line(proc, log)
    assert proc.returncode == 1
    assert "does not verify against the pinned CA" in line, line


@pytest.mark.req("T02")
def test_t02_serve_refuses_plain_mqtt_without_insecure(broker: Broker, tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    proc = _serve(_toml(tmp_path, broker, broker=f"mqtt://127.0.0.1:{broker.port}"), log)
    line = _ends_with_one_line(proc, log)
    assert proc.returncode == 2
    assert "plain MQTT" in line and "insecure" in line, line


@pytest.mark.req("T02")
def test_t02_a_password_in_the_broker_url_is_refused_without_echoing_it(tmp_path: Path) -> None:
    secret = secrets.token_hex(8)
    with pytest.raises(Exception, match="password in the URL") as e:
        Config(broker=f"mqtts://headend:{secret}@127.0.0.1:8883")
    assert secret not in str(e.value)


@pytest.mark.req("T02")
@pytest.mark.timeout(60)
def test_t02_incoming_queue_is_bounded_and_overflow_is_counted_once(
    broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    """A head-end that does not keep up holds at most max_queued messages; the rest
    are dropped and counted (the meters repeat them), with one warning, not one each."""
    cfg = Config(broker=broker.url_for("w-queue"), mqtt_ca_file=str(broker.ca), master_key=KEY)
    n, bound = 40, 5

    async def main() -> None:
        # in_hand=1: the one blocked uplink holds up the link (by default the service
        # takes up to IN_HAND at once, and the queue fills behind those)
        t = MqttTransport(
            broker.host, broker.port, "w-queue", "q", login=login_from(cfg), max_queued=bound,
            in_hand=1,
        )  # fmt: skip
        release = asyncio.Event()
        got: list[Uplink] = []

        async def deliver(up: Uplink) -> None:
            got.append(up)
            await release.wait()  # the first one blocks the head-end

        task = asyncio.create_task(t.run(deliver))
        await wait_until(t.connected.is_set, 10, "the transport subscribed")
        meter = Peer(broker.host, broker.port, "1001", broker.password(1001), broker.ca).connect()
        try:
            for i in range(n):
                await asyncio.to_thread(meter.publish, "ami/v1/1001/up", bytes([i]))

            def held() -> bool:
                q = t._client._queue if t._client is not None else None  # noqa: SLF001
                return q is not None and q.qsize() + q.dropped == n - 1  # type: ignore[attr-defined]

            await wait_until(held, 10, "every message at the head-end, held or dropped")
            release.set()
            await wait_until(lambda: len(got) == 1 + bound, 10, "the held ones handled")
            await asyncio.to_thread(meter.publish, "ami/v1/1001/up", b"later")
            await wait_until(lambda: got[-1].frame == b"later", 10, "the link still works")
            assert t.overflow == n - 1 - bound
        finally:
            meter.close()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    with caplog.at_level(logging.WARNING, logger="headend.transport.mqtt"):
        asyncio.run(main())
    warnings = [r for r in caplog.records if "incoming queue full" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in caplog.records]


def test_t02_only_a_connack_refusal_ends_the_service_not_a_lost_link_after_it() -> None:
    # paho's error 4 (MQTT_ERR_NO_CONN: the broker went away between CONNACK and SUBSCRIBE,
    # as when it restarts for new logins) was taken for CONNACK 4 and ended `headend serve`
    assert _refusal(MqttCodeError(4, "Could not subscribe")) is None
    assert _refusal(MqttCodeError(5, "Could not publish message")) is None
    assert _refusal(MqttConnectError(4)) == "login refused (4)"  # MQTT 3.1.1 CONNACK
    bad_login = ReasonCode(PacketTypes.CONNACK, identifier=134)
    assert "login refused" in (_refusal(MqttConnectError(bad_login)) or "")
    assert _refusal(MqttConnectError(ReasonCode(PacketTypes.CONNACK, identifier=136))) is None


def test_t02_a_publication_the_broker_refuses_is_an_error_not_a_success(broker: Broker) -> None:
    """The broker's ACL refuses the worker a topic: its PUBACK's reason code makes
    that publication `Refused` (dropped with an error by the service, never retried
    as if the link were down), while the others of the group go through."""
    cfg = Config(broker=broker.url_for(WORKER), mqtt_ca_file=str(broker.ca), master_key=KEY)

    async def main() -> list[TransportError | None]:
        t = MqttTransport(broker.host, broker.port, WORKER, "refused", login=login_from(cfg))

        async def deliver(up: Uplink) -> None:
            pass

        task = asyncio.create_task(t.run(deliver))
        try:
            await wait_until(t.connected.is_set, 10, "the transport subscribed")
            got = await t.publish_many(
                [Message("ami/v1/1001/down", b"a"), Message("not/the/workers", b"b")] * 150
            )
            assert t._out is not None and t._out.limit == MAX_INFLIGHT_MESSAGES  # noqa: SLF001
            return got
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    out = asyncio.run(main())
    # more than the broker's Receive Maximum in flight: all completed
    assert out[0::2] == [None] * 150
    assert all(isinstance(e, Refused) and "0x87" in str(e) for e in out[1::2]), out[:2]
