"""firmware/main.py with hal/unix on the real MicroPython binary, against a private
mosquitto run as a site runs it (TLS, logins, ACLs); the test plays the head-end
with protocol.frame over aiomqtt, signing every downlink and verifying every uplink.

The board is `hil.board.VirtualBoard` (the harness the rig, fleet and demo use):
a power cut is a kill -9 of the MicroPython process, a power-up starts it again.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from hil.board import BoardSpec, VirtualBoard
from hil.rig import cancel_hard
from hil.wait import WaitTimeout, wait_until
from protocol.auth import verify_frame
from protocol.errors import ProtocolError
from protocol.frame import decode, encode
from tests.conftest import missing
from tests.support.broker import Broker, BrokerError, find_mosquitto, running_broker

MID = 4711
DAY = 86400
T0 = 1772323200  # 2026-03-01T00:00:00Z

pytestmark = pytest.mark.mpy
HEAD = "head-test"  # the test head-end's MQTT login


@pytest.fixture
def secure_broker() -> Iterator[Broker]:
    """A broker of the test's own, secure as `make run` starts it: TLS, the
    meter's and the head-end's logins and ACLs."""
    if find_mosquitto() is None:
        missing("mosquitto not installed")
    try:
        with running_broker(meters=(MID,), workers=(HEAD,)) as broker:
            yield broker
    except BrokerError as e:
        pytest.fail(str(e))


def _spec(tmp: Path, broker: Broker, sim_start: int) -> BoardSpec:
    """One meter at 1200x: 15 simulated minutes are 0.75 s; the day's read at 00:30.
    It logs in with its provisioned password and pins the broker's CA."""
    return BoardSpec(
        MID,
        tmp / "flash",
        speed=1200,
        sim_start=sim_start,
        broker=(broker.host, broker.port),
        mqtt_password=broker.password(MID),
        broker_ca=broker.ca,
        keepalive_s=10,
        flat_wh=(100, 0, 30, 0),
        tick_ms=20,
        read_offset_s=1800,
    )


async def _until_status(
    board: VirtualBoard, what: str, ok: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """The board's status, once ``ok(status)``."""

    async def probe() -> dict[str, Any] | None:
        st = await board.status()
        return st if ok(st) else None

    return await wait_until(probe, 30, what)


class HeadEnd:
    """A minimal head-end: acks register/reads/events, answers time sync, signs
    every downlink, verifies every uplink's MAC and counter (SPEC "Authentication")."""

    def __init__(self, broker: Broker, key: bytes, ack_reads: bool = True) -> None:
        self.broker = broker
        self.key = key
        self.ack_reads = ack_reads
        self.got: list[dict[str, Any]] = []
        self.seq = 0
        self.counter = 0
        self.up_counter = 0  # the last uplink counter accepted
        self.refused: list[dict[str, Any]] = []  # uplinks that did not verify
        self.client: aiomqtt.Client | None = None
        self.subscribed = asyncio.Event()

    def frame(
        self, mtype: str, body: dict[str, Any], auth: bool = True, key: bytes | None = None
    ) -> bytes:
        self.seq += 1
        a = None
        if auth:
            self.counter += 1
            a = {"counter": self.counter, "mac": b""}
        f = {"type": mtype, "seq": self.seq, "meter_id": MID, "timestamp": T0, "auth": a}
        return encode(dict(f, body=body), key=self.key if key is None else key)

    async def send(self, raw: bytes) -> None:
        assert self.client is not None
        await self.client.publish(f"ami/v1/{MID}/down", raw, qos=1)

    async def run(self) -> None:
        assert self.broker.ca is not None
        async with aiomqtt.Client(
            self.broker.host,
            self.broker.port,
            identifier=HEAD,
            username=HEAD,
            password=self.broker.password(HEAD),
            tls_context=ssl.create_default_context(cafile=str(self.broker.ca)),
            tls_insecure=False,
        ) as client:
            self.client = client
            await client.subscribe(f"ami/v1/{MID}/up", qos=1)
            self.subscribed.set()
            async for msg in client.messages:
                raw = bytes(msg.payload)  # type: ignore[arg-type]
                f = decode(raw)
                try:  # a repeat at the MQTT layer (DUP) carries an old counter: dropped
                    self.up_counter = verify_frame(raw, self.key, self.up_counter)
                except ProtocolError:
                    self.refused.append(f)
                    continue
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

    async def wait(self, pred: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
        try:
            return await wait_until(pred, timeout, what)
        except WaitTimeout as e:
            raise AssertionError(f"{e}; the head-end got {[f['type'] for f in self.got]}") from e


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


Scenario = Callable[[VirtualBoard, HeadEnd], Awaitable[None]]


def _run(scenario: Scenario, spec: BoardSpec, broker: Broker) -> None:
    """The head-end subscribed first, then the board powered up, then ``scenario``."""

    async def main() -> None:
        head = HeadEnd(broker, spec.key)
        task = asyncio.create_task(head.run())

        def subscribed() -> bool:
            if task.done():
                task.result()  # raises what stopped it
            return head.subscribed.is_set()

        try:
            await wait_until(subscribed, 10, "the test head-end subscribed")
            async with VirtualBoard(spec) as board:
                await scenario(board, head)
        finally:
            # Python 3.11's wait_for inside aiomqtt can swallow one cancellation
            await cancel_hard(task, "the test head-end")

    try:
        asyncio.run(main())
    except BaseException:
        log = spec.flash_dir / "console.log"
        if log.exists():
            print(log.read_text(errors="replace")[-6000:])  # what the firmware said
        raise


def test_m17_m12_registration_and_scheduled_read_over_mqtt(
    tmp_path: Path, secure_broker: Broker
) -> None:
    spec = _spec(tmp_path, secure_broker, T0 - 2 * 3600)  # 22:00

    async def scenario(board: VirtualBoard, head: HeadEnd) -> None:
        regs = await head.wait(lambda: head.of("register"), "a register frame")
        assert regs[0]["body"]["interval_s"] == 900 and regs[0]["meter_id"] == MID
        assert [c["kind"] for c in regs[0]["body"]["channels"]] == [1, 2, 3, 4]
        # 00:30 the next day: the default read of the previous day (22:00-24:00 recorded)
        reads = await head.wait(
            lambda: [f for f in head.of("read_response") if f["timestamp"] >= T0 + 1800],
            "the 00:30 default read",
        )
        await _until_status(board, "every read part acked", lambda st: st["reads"] == 0)
        iv = intervals(reads)
        assert [t for t, _ in iv] == [T0 - 7200 + 900 * i for i in range(8)]
        assert all(fl & ~0x04 == 0 for _, fl in iv)  # (partial only if booted mid-interval)
        assert (await board.status())["registered"] is True

    _run(scenario, spec, secure_broker)


def test_m13_m20_on_demand_read_authenticated_forged_nacked(
    tmp_path: Path, secure_broker: Broker
) -> None:
    spec = _spec(tmp_path, secure_broker, T0 + 3600)

    async def scenario(board: VirtualBoard, head: HeadEnd) -> None:
        await head.wait(lambda: head.of("register"), "a register frame")
        await _until_status(board, "03:00 on the meter", lambda st: st["now"] >= T0 + 3 * 3600)
        req = {"mode": 2, "start": 0, "end": 0, "what": 15}
        good = head.frame("read_request", req)
        good_seq = head.seq  # (acks the head-end sends move head.seq on)
        await head.send(good)
        resp = await head.wait(
            lambda: [f for f in head.of("read_response") if f["body"]["request_seq"] == good_seq],
            "the answer to the signed read_request",
        )
        assert resp[0]["body"]["kind"] == 1
        assert intervals(resp)[0][0] == T0 + 3600  # since midnight (recording began at 01:00)
        forged = head.frame("read_request", req, key=b"\x01" * 32)
        forged_seq = head.seq
        await head.send(forged)
        nack = await head.wait(
            lambda: [f for f in head.of("nack") if f["body"]["nacked_seq"] == forged_seq],
            "the nack of the forged read_request",
        )
        assert nack[0]["body"]["reason"] == 3
        await head.send(good)  # a replay of the good one
        nack = await head.wait(
            lambda: [f for f in head.of("nack") if f["body"]["nacked_seq"] == good_seq],
            "the nack of the replayed read_request",
        )
        assert nack[0]["body"]["reason"] == 4

    _run(scenario, spec, secure_broker)


def test_m05_power_cut_kill_9_and_restart_lose_no_closed_interval(
    tmp_path: Path, secure_broker: Broker
) -> None:
    spec = _spec(tmp_path, secure_broker, T0 + 3600)

    async def scenario(board: VirtualBoard, head: HeadEnd) -> None:
        before = await _until_status(
            board, "03:00 on the meter", lambda st: st["now"] >= T0 + 3 * 3600
        )
        await board.power_cut()  # kill -9
        assert not board.powered
        await wait_until(
            lambda: board.true_now() >= before["now"] + 1200,
            10,
            "20 simulated minutes with the power off",
        )
        await board.power_up()  # recover from flash alone
        after = await board.status()
        assert after["now"] > before["now"]
        assert after["last"][0] >= before["last"][0]
        # the 04:45 interval is closed (the meter's clock passing 05:00 comes a tick before)
        await _until_status(
            board,
            "04:45-05:00 closed on the meter",
            lambda st: st["last"] is not None and st["last"][0] >= T0 + 5 * 3600 - 900,
        )
        req = {"mode": 0, "start": T0 + 3600, "end": T0 + 5 * 3600, "what": 1}
        raw = head.frame("read_request", req)
        req_seq = head.seq
        await head.send(raw)

        def complete() -> list[dict[str, Any]] | None:
            rs = [f for f in head.of("read_response") if f["body"]["request_seq"] == req_seq]
            return (
                rs
                if rs and len({f["body"]["part"] for f in rs}) == rs[0]["body"]["parts"]
                else None
            )

        resp = await head.wait(complete, "every part of the 01:00-05:00 read")
        resp = list({f["body"]["part"]: f for f in resp}.values())  # a repeat is idempotent
        starts = [t for t, _ in intervals(resp)]
        assert starts == [T0 + 3600 + 900 * i for i in range(16)]  # none lost, none doubled
        assert before["last"][0] in starts
        flagged = [fl for _, fl in intervals(resp) if fl & 0x01]
        assert flagged  # the outage is flagged power-failed
        pushed = [e["code"] for f in head.of("event") for e in f["body"]["events"]]
        assert 1 in pushed and 2 in pushed  # power down / up pushed

    _run(scenario, spec, secure_broker)


def test_m10_tamper_from_control_port_is_pushed_and_uart_link_answers(
    tmp_path: Path, secure_broker: Broker
) -> None:
    from protocol.hdlc import Deframer, stuff

    spec = _spec(tmp_path, secure_broker, T0 + 3600)

    async def scenario(board: VirtualBoard, head: HeadEnd) -> None:
        await board.tamper()
        await head.wait(
            lambda: any(e["code"] == 11 for f in head.of("event") for e in f["body"]["events"]),
            "the tamper event (11) pushed",
        )
        # the optical/serial port: the same frames, HDLC-framed
        await _until_status(board, "02:00 on the meter", lambda st: st["now"] >= T0 + 2 * 3600)
        r, w = await asyncio.open_connection("127.0.0.1", spec.uart_port)
        req = head.frame("read_request", {"mode": 2, "start": 0, "end": 0, "what": 3})
        req_seq = head.seq
        w.write(b"\x00noise" + stuff(req))
        await w.drain()
        de = Deframer()
        frames: list[bytes] = []
        while not frames:
            chunk = await asyncio.wait_for(r.read(4096), 10)
            assert chunk, "the optical port closed without an answer"
            frames += de.feed(chunk)
        f = decode(frames[0])
        assert f["type"] == "read_response" and f["body"]["request_seq"] == req_seq
        w.close()

    _run(scenario, spec, secure_broker)


def test_m20_t02_refused_login_is_reported_and_retried_never_a_crash(
    tmp_path: Path, secure_broker: Broker
) -> None:
    bad = "0" * 32
    spec = _spec(tmp_path, secure_broker, T0 + 3600)
    spec.mqtt_password = bad

    async def scenario(board: VirtualBoard, head: HeadEnd) -> None:
        log = spec.flash_dir / "console.log"
        await wait_until(
            lambda: "CONNACK" in log.read_text(errors="replace"), 20, "the refusal in the log"
        )
        st = await _until_status(board, "an hour on", lambda st: st["now"] >= T0 + 2 * 3600)
        assert st["mqtt"] is False and st["errors"] == 0  # recording on, no crash
        assert head.got == []
        text = log.read_text(errors="replace")
        assert "Traceback" not in text and bad not in text  # the password is never printed
        # and retried, with backoff (0.5 s doubling): the broker saw several attempts
        await wait_until(
            lambda: secure_broker.log().count("not authorised") >= 3, 20, "3 attempts refused"
        )

    _run(scenario, spec, secure_broker)
