"""A protocol-level fake meter for head-end tests and benches, over MQTT or a serial line.

It speaks the wire protocol exactly (`protocol.frame`): it signs every uplink
with its key and a fresh counter per transmission (a repeat keeps its seq,
not its counter), checks the MAC and counter of every downlink like a meter
(nack 3/4 otherwise, the frame ignored), takes a key_set (SPEC
"Authentication": the new key unwrapped, key_ack under it, the old key taken
for downlinks until the first one under the new), and answers as SPEC
"Conversations" says: register until acked, schedule_ack, read_response to
read_request, read_ack/event_ack handling, time sync. Energy is a
deterministic function of time, so a test can state what the head-end must
have stored. Knobs make it misbehave on purpose (drop acks, ignore reads,
nack reads).

Links: `MqttLink` (aiomqtt, its own persistent session) and `SerialBus`, a
TCP server the head-end's `SerialTransport` opens as ``socket://host:port``;
several meters can share one bus (multi-drop: each keeps only its frames).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import struct
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiomqtt

from headend.api import Clock, meter_key
from hil.rig import cancel_hard
from protocol.auth import unwrap_key, verify_frame
from protocol.errors import BadMac, ProtocolError
from protocol.frame import decode, encode
from protocol.hdlc import Deframer, stuff
from protocol.schema import MESSAGE_TYPES

DAY = 86_400
# Uplink counters: one sequence for every fake meter of the test process, so a
# meter made again for the same id (a "power cut") still counts up, as a meter
# that persists its counter ceiling does.
_UP_COUNTERS = itertools.count(1)
Handler = Callable[[bytes], Awaitable[None]]


def value(channel: int, start: int, interval_s: int) -> int:
    """Raw energy of one interval: deterministic, channel-dependent, small."""
    return (start // interval_s) % 37 + 10 * channel + 1


class MqttLink:
    """The meter's MQTT connection: up on ami/v1/<id>/up, down on ami/v1/<id>/down.

    ``password``: log in as the meter (user = its decimal id, SPEC "MQTT"), else
    anonymous; ``more_ports``: other nodes of a broker cluster on ``host``: when the
    link drops the meter tries the next one, in turn (a meter given several
    addresses). ``reconnects`` counts the drops.
    """

    def __init__(
        self,
        host: str,
        port: int,
        meter_id: int,
        password: str | None = None,
        more_ports: Sequence[int] = (),
    ) -> None:
        self.host, self.port, self.meter_id = host, port, meter_id
        self.ports = [port, *more_ports]
        self.password = password
        # unique per link: a session left at the broker by an earlier test must not be resumed
        self.client_id = f"meter-{meter_id}-{uuid.uuid4().hex[:8]}"
        self._client: aiomqtt.Client | None = None
        self.connected = asyncio.Event()
        self.reconnects = 0

    async def run(self, on_frame: Handler) -> None:
        while True:
            self.port = self.ports[self.reconnects % len(self.ports)]
            try:
                async with aiomqtt.Client(
                    self.host,
                    self.port,
                    identifier=self.client_id,
                    username=str(self.meter_id) if self.password else None,
                    password=self.password,
                    clean_session=False,
                    keepalive=10,
                ) as c:
                    self._client = c
                    granted = await c.subscribe(f"ami/v1/{self.meter_id}/down", qos=1)
                    if any(getattr(g, "is_failure", False) for g in granted or ()):
                        # refused (a busy cluster could not set the session up): again
                        raise aiomqtt.MqttError(f"subscription refused: {granted}")
                    self.connected.set()
                    async for m in c.messages:
                        if isinstance(m.payload, bytes):
                            await on_frame(m.payload)
            except aiomqtt.MqttError:
                self._client = None
                self.connected.clear()
                self.reconnects += 1
                await asyncio.sleep(0.1)

    async def send(self, frame: bytes) -> None:
        await self.connected.wait()
        if self._client is None:
            raise ConnectionError("meter link down")
        await self._client.publish(f"ami/v1/{self.meter_id}/up", frame, qos=1)


class SerialBus:
    """A TCP server standing in for a serial line (point-to-point or multi-drop)."""

    def __init__(self) -> None:
        self.meters: dict[int, Handler] = {}
        self._writer: asyncio.StreamWriter | None = None
        self.connected = asyncio.Event()
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"socket://127.0.0.1:{self.port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self.connected.set()
        deframer = Deframer()
        try:
            while chunk := await reader.read(4096):
                for frame in deframer.feed(chunk):
                    if len(frame) >= 9:
                        handler = self.meters.get(struct.unpack_from(">I", frame, 5)[0])
                        if handler is not None:
                            await handler(frame)
        finally:
            self.connected.clear()
            self._writer = None
            writer.close()

    async def write_raw(self, data: bytes) -> None:
        """Bytes onto the line as they are (line noise, broken frames)."""
        await self.connected.wait()
        if self._writer is None:
            raise ConnectionError("no head-end on the line")
        self._writer.write(data)
        await self._writer.drain()

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


class SerialLink:
    """One meter on a `SerialBus`."""

    def __init__(self, bus: SerialBus, meter_id: int) -> None:
        self.bus, self.meter_id = bus, meter_id
        self.connected = bus.connected

    async def run(self, on_frame: Handler) -> None:
        self.bus.meters[self.meter_id] = on_frame
        await asyncio.Event().wait()

    async def send(self, frame: bytes) -> None:
        await self.bus.write_raw(stuff(frame))


Link = MqttLink | SerialLink


@dataclass
class FakeMeter:
    """A meter that follows the protocol. ``clock`` is shared with the head-end
    (simulated time); ``skew_s`` is how far this meter's clock is off."""

    meter_id: int
    link: Link
    clock: Clock
    master: bytes = b"\0" * 32
    interval_s: int = 900
    utc_offset_min: int = 0
    channels: int = 4
    meter_multiplier: int = 1
    channel_multiplier: int = 1
    scaler: int = 0
    skew_s: int = 0
    # misbehaviour knobs
    drop_schedule_sets: int = 0  # ignore this many schedule_sets (H02: missing ack)
    ignore_reads: int = 0  # ignore this many read_requests (H06)
    nack_reads: int = 0  # nack every read_request with this reason (0 = answer)
    parts: int = 1  # on-demand answers in this many read_response frames
    # what it saw
    received: list[dict[str, Any]] = field(default_factory=list)
    schedules: dict[int, dict[str, Any]] = field(default_factory=dict)
    rejected: list[str] = field(default_factory=list)
    acks: dict[int, dict[str, Any]] = field(default_factory=dict)  # our seq -> the ack
    last_counter: int = 0
    key_version: int = 0
    key_acks: int = 0  # key_acks sent
    clock_offset_ms: int | None = None
    tries: int = 0  # frames sent until acknowledged, repeats included
    _seq: int = 0
    _register_seq: int = -1
    _key: bytes | None = None
    _old_key: bytes | None = None  # taken for downlinks until one arrives under the new key
    _task: asyncio.Task[None] | None = None
    _got: asyncio.Condition = field(default_factory=asyncio.Condition)

    @property
    def key(self) -> bytes:
        """The key it signs with (v0, or the one the last key_set gave)."""
        if self._key is None:
            self._key = meter_key(self.master, self.meter_id)
        return self._key

    def now(self) -> int:
        return int(self.clock.now()) + self.skew_s

    def now_ms(self) -> int:
        return self.clock.now_ms() + self.skew_s * 1000

    async def start(self, timeout: float = 10.0) -> None:
        self._task = asyncio.create_task(self.link.run(self._on_frame))
        await asyncio.wait_for(self.link.connected.wait(), timeout)

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_hard(self._task, f"fake meter {self.meter_id}")

    # -- sending -------------------------------------------------------------------------------

    def frame(self, mtype: str, body: dict[str, Any], seq: int | None = None) -> tuple[int, bytes]:
        """(seq, frame) signed with a fresh counter; ``seq`` None takes the next one."""
        if seq is None:
            self._seq = self._seq % 0xFFFF + 1
            seq = self._seq
        fields = {
            "type": mtype,
            "seq": seq,
            "meter_id": self.meter_id,
            "timestamp": self.now(),
            "auth": {"counter": next(_UP_COUNTERS), "mac": b""},
            "body": body,
        }
        return seq, encode(fields, key=self.key)

    async def send(self, mtype: str, body: dict[str, Any]) -> int:
        seq, raw = self.frame(mtype, body)
        await self.link.send(raw)
        return seq

    async def until(self, cond: Callable[[], bool], timeout: float = 10.0) -> None:
        async with self._got:
            await asyncio.wait_for(self._got.wait_for(cond), timeout)

    async def send_until_acked(
        self, mtype: str, body: dict[str, Any], every: float = 0.5, timeout: float = 15.0
    ) -> dict[str, Any]:
        """Send (the same seq, a fresh counter each time) until acknowledged, like a meter."""
        seq, raw = self.frame(mtype, body)
        if mtype == "register":
            self._register_seq = seq
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while loop.time() < end:
            if self.tries:
                raw = self.frame(mtype, body, seq)[1]
            self.tries += 1
            # a send into a dying connection may hang until the client's own timeout
            with contextlib.suppress(ConnectionError, TimeoutError, aiomqtt.MqttError):
                await asyncio.wait_for(self.link.send(raw), every)
            with contextlib.suppress(TimeoutError):
                await self.until(lambda: seq in self.acks, every)
                return self.acks[seq]
        raise TimeoutError(f"meter {self.meter_id}: {mtype} seq {seq} never acknowledged")

    # -- messages ------------------------------------------------------------------------------

    def register_body(self) -> dict[str, Any]:
        return {
            "fw_version": "fake-1.0",
            "interval_s": self.interval_s,
            "capacity_days": 45,
            "utc_offset_min": self.utc_offset_min,
            "meter_multiplier": self.meter_multiplier,
            "channels": [
                {
                    "kind": 1 + c % 4,
                    "unit": 1 if c % 4 < 2 else 2,
                    "multiplier": self.channel_multiplier,
                    "scaler": self.scaler,
                }
                for c in range(self.channels)
            ],
        }

    async def register(self) -> dict[str, Any]:
        return await self.send_until_acked("register", self.register_body())

    def block(self, start: int, end: int) -> dict[str, Any]:
        starts = range(start, end, self.interval_s)
        return {
            "start": start,
            "interval_s": self.interval_s,
            "flags": [0] * len(starts),
            "channels": [
                [value(c, t, self.interval_s) for t in starts] for c in range(self.channels)
            ],
        }

    def register_values(self, at: int) -> list[int]:
        """Cumulative register = sum of intervals since a fixed origin (day 0 of 2024)."""
        origin = 1_704_067_200
        n = (at - origin) // self.interval_s
        return [
            sum(value(c, origin + i * self.interval_s, self.interval_s) for i in range(n))
            for c in range(self.channels)
        ]

    def day_sections(
        self, day: int, events: list[dict[str, int]] | None = None
    ) -> list[dict[str, Any]]:
        end = day + DAY
        return [
            {"tag": "intervals", "body": self.block(day, end)},
            {"tag": "midnight", "body": {"day": end, "values": self.register_values(end)}},
            {"tag": "events", "body": list(events or [])},
        ]

    async def daily_read(
        self, day: int, events: list[dict[str, int]] | None = None
    ) -> dict[str, Any]:
        """The default read of [day, day + 1 d), repeated until read_ack (M12)."""
        body = {
            "request_seq": 0,
            "kind": 0,
            "part": 1,
            "parts": 1,
            "sections": self.day_sections(day, events),
        }
        return await self.send_until_acked("read_response", body)

    async def push_events(self, events: list[dict[str, int]]) -> dict[str, Any]:
        return await self.send_until_acked("event", {"events": events})

    async def time_sync(self, timeout: float = 5.0) -> int:
        """One NTP-style exchange; returns the offset (head-end - meter) in ms."""
        t1 = self.now_ms()
        seq = await self.send("time_sync_request", {"t1_ms": t1})
        self.clock_offset_ms = None
        await self.until(lambda: self.clock_offset_ms is not None, timeout)
        del seq
        return self.clock_offset_ms or 0

    # -- receiving -----------------------------------------------------------------------------

    def _verify(self, raw: bytes, fields: dict[str, Any]) -> int:
        """0 if the downlink is signed and new, else the nack reason (3 auth_failed, 4 replay)."""
        try:
            try:
                self.last_counter = verify_frame(raw, self.key, self.last_counter)
                self._old_key = None  # the head-end signs with the new key: the old one is done
            except BadMac:
                if self._old_key is None:
                    raise
                self.last_counter = verify_frame(raw, self._old_key, self.last_counter)
        except ProtocolError as e:
            self.rejected.append(f"{fields['type']}: {type(e).__name__}")
            return 4 if type(e).__name__ == "Replay" else 3
        return 0

    async def _key_set(self, fields: dict[str, Any]) -> None:
        body = fields["body"]
        version = body["version"]
        if version > self.key_version:
            new = unwrap_key(self.key, body["wrapped"], version)
            self._old_key, self._key, self.key_version = self.key, new, version
        status = 0 if version == self.key_version else 7
        self.key_acks += 1
        await self.send(
            "key_ack", {"acked_seq": fields["seq"], "version": self.key_version, "status": status}
        )

    async def _nack(self, fields: dict[str, Any], reason: int) -> None:
        await self.send(
            "nack",
            {
                "nacked_type": MESSAGE_TYPES[fields["type"]],
                "nacked_seq": fields["seq"],
                "reason": reason,
            },
        )

    async def _on_frame(self, raw: bytes) -> None:
        try:
            fields = decode(raw)
        except ProtocolError as e:
            self.rejected.append(f"undecodable: {e}")
            return
        if fields["meter_id"] != self.meter_id:
            return
        self.received.append(fields)
        try:
            await self._answer(raw, fields)
        finally:
            async with self._got:
                self._got.notify_all()

    async def _answer(self, raw: bytes, fields: dict[str, Any]) -> None:
        mtype, body = fields["type"], fields["body"]
        reason = self._verify(raw, fields)
        if reason:
            if mtype != "nack":
                await self._nack(fields, reason)
            return
        if mtype in ("register_ack", "read_ack", "event_ack"):
            # register_ack names no seq: it answers the (latest) register frame
            ref = body.get("acked_seq", self._register_seq)
            self.acks[ref] = fields
        elif mtype == "nack":
            self.acks[body["nacked_seq"]] = fields
        elif mtype == "time_sync_response":
            t4 = self.now_ms()
            b = body
            self.clock_offset_ms = ((b["t2_ms"] - b["t1_ms"]) + (b["t3_ms"] - t4)) // 2
        elif mtype == "key_set":
            await self._key_set(fields)
        elif mtype in ("schedule_set", "read_request", "time_set", "config_set"):
            if mtype == "schedule_set":
                if self.drop_schedule_sets > 0:
                    self.drop_schedule_sets -= 1
                    return
                for slot in body["slots"]:
                    if slot["action"] == 1:
                        self.schedules.pop(slot["slot"], None)
                    else:
                        self.schedules[slot["slot"]] = slot
                await self.send("schedule_ack", {"acked_seq": fields["seq"], "status": 0})
            elif mtype == "read_request":
                await self._read(fields)
            elif mtype == "time_set":
                self.skew_s = body["utc_ms"] // 1000 - int(self.clock.now())
            else:
                await self.send("config_ack", {"acked_seq": fields["seq"], "status": 0})

    async def _read(self, fields: dict[str, Any]) -> None:
        if self.ignore_reads > 0:
            self.ignore_reads -= 1
            return
        if self.nack_reads:
            await self._nack(fields, self.nack_reads)
            return
        now = self.now()
        off = self.utc_offset_min * 60
        last = now - (now + off) % self.interval_s
        midnight = now - (now + off) % DAY
        b = fields["body"]
        start, end = (b["start"], b["end"]) if b["mode"] == 0 else (midnight, last)
        head: list[dict[str, Any]] = [
            {"tag": "clock", "body": {"time": now}},
            {"tag": "registers", "body": {"at": now, "values": self.register_values(last)}},
        ]
        n = max(1, (end - start) // self.interval_s)
        cuts = [start + (n * i // self.parts) * self.interval_s for i in range(self.parts + 1)]
        for part in range(1, self.parts + 1):
            a, z = cuts[part - 1], cuts[part]
            sections = head if part == 1 else []
            if z > a:
                sections = [*sections, {"tag": "intervals", "body": self.block(a, z)}]
            await self.send(
                "read_response",
                {
                    "request_seq": fields["seq"],
                    "kind": 1 if b["mode"] == 2 else 2,
                    "part": part,
                    "parts": self.parts,
                    "sections": sections,
                },
            )
