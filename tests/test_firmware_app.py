"""firmware/main.py with hal/unix on the real MicroPython binary, against a private
mosquitto; the test plays the head-end with protocol.frame over aiomqtt."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from hil.rig import cancel_hard
from protocol.frame import decode, encode
from tests.support.broker import Broker, free_port
from tests.support.mpy import FIRMWARE, micropython_binary

MID = 4711
KEY = bytes(range(32))
DAY = 86400
T0 = 1772323200  # 2026-03-01T00:00:00Z

pytestmark = pytest.mark.mpy


class VirtualBoard:
    """One virtual meter process (power cut = kill -9, power-up = start again)."""

    def __init__(self, tmp: Path, broker: Broker, sim_start: int, speed: int = 1200) -> None:
        self.dir = tmp
        self.control_port = free_port()
        self.uart_port = free_port()
        cfg = {
            "meter_id": MID,
            "key": KEY.hex(),
            "broker": {"host": broker.host, "port": broker.port, "keepalive_s": 10},
            "clock": {"sim_start": sim_start, "speed": speed},
            "energy": {"flat_wh": [100, 0, 30, 0]},
            "uart_port": self.uart_port,
            "control_port": self.control_port,
            "tick_ms": 20,
            "read_offset_s": 1800,
        }
        (tmp / "board.json").write_text(json.dumps(cfg))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()
        env = dict(os.environ, MICROPYPATH=f"{FIRMWARE}:.frozen")
        self.proc = subprocess.Popen(
            [micropython_binary(), "-X", "heapsize=1M", str(FIRMWARE / "main.py"), str(self.dir)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
        )
        assert self.proc.stdout is not None
        for _ in range(50):
            line = self.proc.stdout.readline().decode()
            if line.strip() == "ready" or not line:
                break
        assert line.strip() == "ready", f"firmware did not start: {line!r}"

    def control(self, cmd: str) -> str:
        with socket.create_connection(("127.0.0.1", self.control_port), timeout=5) as s:
            s.sendall(cmd.encode() + b"\n")
            return s.makefile().readline().strip()

    def status(self) -> dict[str, Any]:
        return dict(json.loads(self.control("status")))

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> bytes:
        self.kill()
        out = b""
        p = self.proc
        if p is not None and p.stdout is not None and not p.stdout.closed:
            out = p.stdout.read()
            p.stdout.close()
        return out


class HeadEnd:
    """A minimal head-end: acks register/reads/events, answers time sync, signs requests."""

    def __init__(self, broker: Broker, ack_reads: bool = True) -> None:
        self.broker = broker
        self.ack_reads = ack_reads
        self.got: list[dict[str, Any]] = []
        self.seq = 0
        self.counter = 0
        self.client: aiomqtt.Client | None = None

    def frame(
        self, mtype: str, body: dict[str, Any], auth: bool = False, key: bytes = KEY
    ) -> bytes:
        self.seq += 1
        a = None
        if auth:
            self.counter += 1
            a = {"counter": self.counter, "mac": b""}
        f = {"type": mtype, "seq": self.seq, "meter_id": MID, "timestamp": T0, "auth": a}
        return encode(dict(f, body=body), key=key)

    async def send(self, raw: bytes) -> None:
        assert self.client is not None
        await self.client.publish(f"ami/v1/{MID}/down", raw, qos=1)

    async def run(self) -> None:
        async with aiomqtt.Client(
            self.broker.host, self.broker.port, identifier="head-test"
        ) as client:
            self.client = client
            await client.subscribe(f"ami/v1/{MID}/up", qos=1)
            async for msg in client.messages:
                f = decode(bytes(msg.payload))  # type: ignore[arg-type]
                self.got.append(f)
                t, body = f["type"], f["body"]
                if t == "register":
                    await self.send(self.frame("register_ack", {"status": 0}))
                elif t == "event":
                    await self.send(self.frame("event_ack", {"acked_seq": f["seq"]}))
                elif t == "read_response" and self.ack_reads:
                    await self.send(self.frame("read_ack", {"acked_seq": f["seq"], "upto": 0}))
                elif t == "time_sync_request":
                    t2 = body["t1_ms"] + 10
                    resp = {"t1_ms": body["t1_ms"], "t2_ms": t2, "t3_ms": t2 + 1}
                    await self.send(self.frame("time_sync_response", resp))

    def of(self, mtype: str) -> list[dict[str, Any]]:
        return [f for f in self.got if f["type"] == mtype]

    async def wait(self, pred: Any, timeout: float = 30.0) -> Any:
        for _ in range(int(timeout / 0.05)):
            r = pred()
            if r:
                return r
            await asyncio.sleep(0.05)
        raise AssertionError(f"head-end: condition not met; got {[f['type'] for f in self.got]}")


def intervals(frames: list[dict[str, Any]]) -> list[tuple[int, int]]:
    # a part re-sent before its ack came back keeps its seq (SPEC: a repeat is
    # idempotent); at 1200x the retry is 12-25 real ms away, so a loaded
    # machine sees repeats: count each frame once, as the head-end does
    out = []
    for f in {f["seq"]: f for f in frames}.values():
        for s in f["body"]["sections"]:
            if s["tag"] == "intervals":
                b = s["body"]
                for i, fl in enumerate(b["flags"]):
                    out.append((b["start"] + i * b["interval_s"], fl))
    return out


def _run(coro_fn: Any, board: VirtualBoard, head: HeadEnd) -> None:
    async def main() -> None:
        task = asyncio.create_task(head.run())
        await asyncio.sleep(0.3)  # subscribed before the meter speaks
        try:
            await coro_fn()
        finally:
            # Python 3.11's wait_for inside aiomqtt can swallow one cancellation
            await cancel_hard(task, "the test head-end")

    try:
        asyncio.run(main())
    except BaseException:
        print(board.stop().decode(errors="replace"))
        raise
    board.stop()


def test_m17_m12_registration_and_scheduled_read_over_mqtt(
    tmp_path: Path, mqtt_broker_private: Broker
) -> None:
    board = VirtualBoard(tmp_path, mqtt_broker_private, T0 - 2 * 3600)  # 22:00
    head = HeadEnd(mqtt_broker_private)

    async def scenario() -> None:
        board.start()
        regs = await head.wait(lambda: head.of("register"))
        assert regs[0]["body"]["interval_s"] == 900 and regs[0]["meter_id"] == MID
        assert [c["kind"] for c in regs[0]["body"]["channels"]] == [1, 2, 3, 4]
        # 00:30 the next day: the default read of the previous day (22:00-24:00 recorded)
        reads = await head.wait(
            lambda: [f for f in head.of("read_response") if f["timestamp"] >= T0 + 1800]
        )
        await head.wait(lambda: board.status()["reads"] == 0)  # every part acked
        iv = intervals(reads)
        assert [t for t, _ in iv] == [T0 - 7200 + 900 * i for i in range(8)]
        assert all(fl & ~0x04 == 0 for _, fl in iv)  # (partial only if booted mid-interval)
        assert board.status()["registered"] is True

    _run(scenario, board, head)


def test_m13_m20_on_demand_read_authenticated_forged_nacked(
    tmp_path: Path, mqtt_broker_private: Broker
) -> None:
    board = VirtualBoard(tmp_path, mqtt_broker_private, T0 + 3600)
    head = HeadEnd(mqtt_broker_private)

    async def scenario() -> None:
        board.start()
        await head.wait(lambda: head.of("register"))
        await head.wait(lambda: board.status()["now"] >= T0 + 3 * 3600)
        req = {"mode": 2, "start": 0, "end": 0, "what": 15}
        good = head.frame("read_request", req, auth=True)
        good_seq = head.seq  # (acks the head-end sends move head.seq on)
        await head.send(good)
        resp = await head.wait(
            lambda: [f for f in head.of("read_response") if f["body"]["request_seq"] == good_seq]
        )
        assert resp[0]["body"]["kind"] == 1
        assert intervals(resp)[0][0] == T0 + 3600  # since midnight (recording began at 01:00)
        forged = head.frame("read_request", req, auth=True, key=b"\x01" * 32)
        forged_seq = head.seq
        await head.send(forged)
        nack = await head.wait(
            lambda: [f for f in head.of("nack") if f["body"]["nacked_seq"] == forged_seq]
        )
        assert nack[0]["body"]["reason"] == 3
        await head.send(good)  # a replay of the good one
        nack = await head.wait(
            lambda: [f for f in head.of("nack") if f["body"]["nacked_seq"] == good_seq]
        )
        assert nack[0]["body"]["reason"] == 4

    _run(scenario, board, head)


def test_m05_power_cut_kill_9_and_restart_lose_no_closed_interval(
    tmp_path: Path, mqtt_broker_private: Broker
) -> None:
    board = VirtualBoard(tmp_path, mqtt_broker_private, T0 + 3600)
    head = HeadEnd(mqtt_broker_private)

    async def scenario() -> None:
        board.start()
        await head.wait(lambda: board.status()["now"] >= T0 + 3 * 3600)
        before = board.status()
        board.kill()  # power cut
        await asyncio.sleep(1.0)  # off for ~20 simulated minutes
        board.start()  # power-up: recover from flash alone
        after = board.status()
        assert after["now"] > before["now"]
        assert after["last"][0] >= before["last"][0]
        await head.wait(lambda: board.status()["now"] >= T0 + 5 * 3600)
        req = {"mode": 0, "start": T0 + 3600, "end": T0 + 5 * 3600, "what": 1}
        raw = head.frame("read_request", req, auth=True)
        req_seq = head.seq
        await head.send(raw)

        def complete() -> list[dict[str, Any]] | None:
            rs = [f for f in head.of("read_response") if f["body"]["request_seq"] == req_seq]
            return (
                rs
                if rs and len({f["body"]["part"] for f in rs}) == rs[0]["body"]["parts"]
                else None
            )

        resp = await head.wait(complete)
        resp = list({f["body"]["part"]: f for f in resp}.values())  # a repeat is idempotent
        starts = [t for t, _ in intervals(resp)]
        assert starts == [T0 + 3600 + 900 * i for i in range(16)]  # none lost, none doubled
        assert before["last"][0] in starts
        flagged = [fl for _, fl in intervals(resp) if fl & 0x01]
        assert flagged  # the outage is flagged power-failed
        pushed = [e["code"] for f in head.of("event") for e in f["body"]["events"]]
        assert 1 in pushed and 2 in pushed  # power down / up pushed

    _run(scenario, board, head)


def test_m10_tamper_from_control_port_is_pushed_and_uart_link_answers(
    tmp_path: Path, mqtt_broker_private: Broker
) -> None:
    from protocol.hdlc import Deframer, stuff

    board = VirtualBoard(tmp_path, mqtt_broker_private, T0 + 3600)
    head = HeadEnd(mqtt_broker_private)

    async def scenario() -> None:
        board.start()
        assert board.control("tamper") == "ok"
        await head.wait(
            lambda: any(e["code"] == 11 for f in head.of("event") for e in f["body"]["events"])
        )
        # the optical/serial port: the same frames, HDLC-framed
        await head.wait(lambda: board.status()["now"] >= T0 + 2 * 3600)
        r, w = await asyncio.open_connection("127.0.0.1", board.uart_port)
        req = head.frame("read_request", {"mode": 2, "start": 0, "end": 0, "what": 3}, True)
        req_seq = head.seq
        w.write(b"\x00noise" + stuff(req))
        await w.drain()
        de = Deframer()
        frames: list[bytes] = []
        while not frames:
            frames += de.feed(await asyncio.wait_for(r.read(4096), 10))
        f = decode(frames[0])
        assert f["type"] == "read_response" and f["body"]["request_seq"] == req_seq
        w.close()

    _run(scenario, board, head)
