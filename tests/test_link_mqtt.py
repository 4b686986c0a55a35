"""The meter's MQTT client against a real private mosquitto, on CPython and MicroPython."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from headend import pki
from headend.brokerconf import MAX_INFLIGHT_MESSAGES
from hil.broker import find_mosquitto, running_broker
from hil.wait import wait_until
from tests.conftest import missing
from tests.support.broker import Broker
from tests.support.mpy import FIRMWARE, micropython_binary, run_mpy

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "firmware"))
from link.mqtt import Client  # noqa: E402

PROBE = b"probe"


async def _subscribed(sender: Client, topic: str, got: list[bytes]) -> None:
    """Until the broker routes ``topic`` to its subscriber: ``sender`` publishes
    probes there until one arrives in ``got`` (a SUBACK is not visible outside)."""

    async def probe_arrived() -> bool:
        if PROBE in got:
            return True
        await sender.publish(topic, PROBE)
        return False

    await wait_until(probe_arrived, 10, f"the subscription to {topic} live", every=0.1)


def test_qos1_both_ways_and_persistent_session(mqtt_broker: Broker) -> None:
    async def main() -> None:
        got: list[tuple[str, bytes]] = []  # what the meter received, probes aside
        probes: list[bytes] = []

        async def handler(topic: str, payload: bytes) -> None:
            if payload == PROBE:
                probes.append(payload)
            else:
                got.append((topic, payload))

        meter = Client(
            "meter-t1",
            mqtt_broker.host,
            mqtt_broker.port,
            subscriptions=("ami/v1/1/down",),
            handler=handler,
            keepalive_s=5,
        )
        head = Client("head-t1", mqtt_broker.host, mqtt_broker.port, keepalive_s=5)
        tasks = [asyncio.create_task(meter.run()), asyncio.create_task(head.run())]
        await wait_until(meter.connected.is_set, 5, "meter connected")
        await wait_until(head.connected.is_set, 5, "head connected")
        await _subscribed(head, "ami/v1/1/down", probes)
        pid = await head.publish("ami/v1/1/down", b"first")
        await wait_until(lambda: pid not in head.inflight, 5, "first PUBACKed")
        await wait_until(lambda: got == [("ami/v1/1/down", b"first")], 10, "first received")
        # meter offline: the broker queues QoS 1 downlinks for its persistent session
        # (sent after the meter's DISCONNECT: queued, or in flight on a dead socket and
        # re-sent on reconnect; either way the session keeps it)
        await meter.stop()
        pid = await head.publish("ami/v1/1/down", b"while-away")
        await wait_until(lambda: pid not in head.inflight, 5, "while-away PUBACKed")
        meter2 = Client(
            "meter-t1",
            mqtt_broker.host,
            mqtt_broker.port,
            subscriptions=("ami/v1/1/down",),
            handler=handler,
            keepalive_s=5,
        )
        tasks.append(asyncio.create_task(meter2.run()))
        await wait_until(lambda: ("ami/v1/1/down", b"while-away") in got, 10, "while-away received")
        await meter2.stop()
        await head.stop()
        for t in tasks:
            t.cancel()

    asyncio.run(main())


def test_unacked_publish_survives_broker_restart(mqtt_broker_private: Broker) -> None:
    b = mqtt_broker_private

    async def main() -> None:
        got: list[bytes] = []

        async def handler(topic: str, payload: bytes) -> None:
            got.append(payload)

        sink = Client(
            "sink-t2",
            b.host,
            b.port,
            subscriptions=("ami/v1/2/up",),
            handler=handler,
            keepalive_s=2,
        )
        meter = Client("meter-t2", b.host, b.port, keepalive_s=2)
        tasks = [asyncio.create_task(sink.run()), asyncio.create_task(meter.run())]
        await wait_until(meter.connected.is_set, 5, "meter connected")
        await wait_until(sink.connected.is_set, 5, "sink connected")
        await _subscribed(meter, "ami/v1/2/up", got)  # before the broker saves its sessions
        b.stop()
        await wait_until(lambda: not meter.connected.is_set(), 10, "meter saw the broker go")
        pid = await meter.publish("ami/v1/2/up", b"during-outage")
        assert pid in meter.inflight  # not forgotten while unacknowledged
        b.start()
        await wait_until(lambda: pid not in meter.inflight, 20, "re-sent and PUBACKed")
        await wait_until(lambda: b"during-outage" in got, 20, "during-outage received")
        assert meter.connected.is_set()  # reconnected
        await meter.stop()
        await sink.stop()
        for t in tasks:
            t.cancel()

    asyncio.run(main())


def test_client_runs_on_micropython_against_broker(mqtt_broker: Broker) -> None:
    code = f"""
try:
    from link import loop as asyncio  # MicroPython: the firmware's scheduler
except ImportError:
    import asyncio
from link.mqtt import Client
got = []
async def handler(topic, payload):
    got.append(payload)
async def main():
    c = Client("mpy-t3", "{mqtt_broker.host}", {mqtt_broker.port},
               subscriptions=("ami/v1/3/down",), handler=handler, keepalive_s=5)
    t = asyncio.create_task(c.run())
    while not c.connected.is_set():
        await asyncio.sleep_ms(20)
    await asyncio.sleep_ms(200)
    pid = await c.publish("ami/v1/3/down", b"loop")
    for _ in range(100):
        if pid not in c.inflight:
            break
        await asyncio.sleep_ms(50)
    print("acked", pid not in c.inflight)
    for _ in range(100):
        if got:
            break
        await asyncio.sleep_ms(50)
    print("got", got)
    await c.stop()
asyncio.run(main())
"""
    out = run_mpy(code, timeout=30)
    assert "acked True" in out
    assert "got [b'loop']" in out


# -- login and TLS (SPEC "MQTT"), against the broker as a site runs it ----------

# One script for both interpreters: each case connects, and says how it ended.
_LOGIN_TLS = """
try:
    from link import loop as asyncio  # MicroPython: the firmware's scheduler
except ImportError:
    import asyncio
from link.mqtt import Client

def ms(n):
    return asyncio.sleep_ms(n) if hasattr(asyncio, "sleep_ms") else asyncio.sleep(n / 1000)

async def case(name, user, password, tls, admit_after=None):
    c = Client(user, HOST, PORT, keepalive_s=5, user=user, password=password, tls=tls)
    t = asyncio.create_task(c.run())
    for i in range(150):  # 15 s at most
        if c.connected.is_set() or (admit_after is None and c.error and i > 20):
            break
        if admit_after is not None and c.error and not admitted:
            admitted.append(1)
            print("admit", admit_after)  # the test admits it now
        await ms(100)
    ok = c.connected.is_set()
    if ok:
        pid = await c.publish("ami/v1/%s/up" % user, b"x")
        for _ in range(100):
            if pid not in c.inflight:
                break
            await ms(50)
        ok = pid not in c.inflight
    print(name, "connected" if ok else "refused", repr(c.error))
    await c.stop()
    t.cancel()

admitted = []

async def main():
    await case("good", "1001", PW, (CA, None, "localhost"))
    await case("bad_password", "1001", "0" * 32, (CA, None, "localhost"))
    await case("wrong_ca", "1001", PW, (OTHER_CA, None, "localhost"))
    await case("wrong_name", "1001", PW, (CA, None, "meter.example"))
    await case("plain_to_tls", "1001", PW, None)
    await case("later", "1002", PW2, (CA, None, "localhost"), admit_after="1002")

asyncio.run(main())
"""


def _run_admitting(interpreter: str, code: str, broker: Broker) -> dict[str, str]:
    """The script on one interpreter, firmware/ on its path, its output by case;
    an `admit ID` line from it admits that meter on the broker at once."""
    import subprocess

    argv = [sys.executable, "-u"]
    env = dict(os.environ)
    if interpreter == "micropython":
        argv = [micropython_binary(), "-X", "heapsize=2M"]
        env["MICROPYPATH"] = ":".join([str(FIRMWARE), ".frozen", "~/.micropython/lib"])
    prelude = f"import sys\nsys.path.insert(0, {str(FIRMWARE)!r})\n"
    got = {}
    with subprocess.Popen([*argv, "-c", prelude + code], stdout=subprocess.PIPE, env=env) as proc:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode()
            if line.startswith("admit "):
                broker.admit(meters=(int(line.split()[1]),))
            elif line.split():
                got[line.split()[0]] = line
        assert proc.wait(timeout=60) == 0
    return got


@pytest.fixture(scope="module")
def secure_broker() -> Iterator[Broker]:
    """TLS, logins and ACLs, as `make run` starts it; meter 1001 admitted, 1002 not yet."""
    if find_mosquitto() is None:
        missing("mosquitto not installed")
    with running_broker(meters=(1001,)) as b:
        yield b


@pytest.mark.timeout(120)
@pytest.mark.parametrize("interpreter", ["micropython", "cpython"])
def test_m20_t02_login_tls_pinned_ca_server_name_and_refusals_retried(
    secure_broker: Broker, interpreter: str, tmp_path: Path
) -> None:
    b = secure_broker
    pki.init(tmp_path / "other-pki")
    code = (
        f"HOST, PORT = {b.host!r}, {b.port}\n"
        f"PW, PW2 = {b.password(1001)!r}, {b.password(1002)!r}\n"
        f"CA, OTHER_CA = {str(b.ca)!r}, {str(pki.Pki(tmp_path / 'other-pki').ca)!r}\n" + _LOGIN_TLS
    )
    got = _run_admitting(interpreter, code, b)
    assert got["good"].startswith("good connected None")
    # a refused login is reported (CONNACK 5: not authorised) and retried, never a crash
    assert "refused" in got["bad_password"] and "CONNACK" in got["bad_password"]
    assert "0" * 32 not in "".join(got.values())  # the password is never printed
    assert "refused" in got["wrong_ca"]  # a broker the pinned CA did not sign
    assert "refused" in got["wrong_name"]  # the certificate does not name it
    assert "refused" in got["plain_to_tls"]
    # refused while unknown, then admitted: the backoff retries get it in
    assert got["later"].startswith("later connected None"), got["later"]


# -- the broker's window towards a meter (brokerconf.MAX_INFLIGHT_MESSAGES) -------------

_WINDOW_METER = """
from link import loop as asyncio
from link.mqtt import Client
import gc
got = []
probes = []
low = [gc.mem_free()]
async def handler(topic, payload):
    if payload == b"probe":
        probes.append(1)
        return
    got.append(int(payload[:5]))  # the number only: the payload itself is dropped
    gc.collect()
    low[0] = min(low[0], gc.mem_free())
async def main():
    c = Client("mpy-window", HOST, PORT, subscriptions=("ami/v1/5/down",), handler=handler,
               keepalive_s=5)
    t = asyncio.create_task(c.run())
    for _ in range(200):
        if c.connected.is_set():
            break
        await asyncio.sleep_ms(50)
    if PHASE == 1:  # the session and its subscription exist once a probe comes back
        for _ in range(100):
            await c.publish("ami/v1/5/down", b"probe")
            await asyncio.sleep_ms(100)
            if probes and not c.inflight:
                break
        print("subscribed", bool(probes))
    else:
        for _ in range(400):  # 20 s at most
            if len(got) >= N:
                break
            await asyncio.sleep_ms(50)
        await asyncio.sleep_ms(300)  # nothing more (a duplicate) arrives
        print("got", len(got), "in_order", got == list(range(len(got))), "low_free", low[0])
    await c.stop()
    t.cancel()
asyncio.run(main())
"""


def test_n01_m20_a_meter_takes_the_brokers_full_window_on_micropython(
    mqtt_broker_private: Broker,
) -> None:
    """150 QoS 1 downlinks (more than the broker's window of 100) wait for a meter's
    persistent session; on reconnect the broker sends 100 at once, unacknowledged:
    the firmware's client on MicroPython with a 64 KB heap takes every one, in order,
    once."""
    b = mqtt_broker_private
    n = 150
    setup = f"HOST = {b.host!r}\nPORT = {b.port}\nN = {n}\n"
    conf = (b.workdir / "mosquitto.conf").read_text()
    assert f"max_inflight_messages {MAX_INFLIGHT_MESSAGES}" in conf and n > MAX_INFLIGHT_MESSAGES
    out = run_mpy(setup + "PHASE = 1\n" + _WINDOW_METER, heapsize="64K", timeout=60)
    assert "subscribed True" in out, out

    async def queue() -> None:
        head = Client("head-window", b.host, b.port, keepalive_s=5)
        task = asyncio.create_task(head.run())
        await wait_until(head.connected.is_set, 5, "head connected")
        for i in range(n):  # ~a schedule frame each: the number, then padding
            await head.publish("ami/v1/5/down", b"%05d" % i + bytes(395))
        await wait_until(lambda: not head.inflight, 20, "every downlink PUBACKed")
        await head.stop()
        task.cancel()

    asyncio.run(queue())
    out = run_mpy(setup + "PHASE = 2\n" + _WINDOW_METER, heapsize="64K", timeout=60)
    assert f"got {n} in_order True" in out, out
