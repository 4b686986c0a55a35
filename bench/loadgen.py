"""The live bench's load: N meters x D days of signed uplinks over gateway connections.

Each meter registers, then answers D days of scheduled reads (a read_response
with the day's intervals, its midnight registers and one event). Frames are
built and signed before the clock starts (`protocol.frame.encode` under the
meter's key, as the firmware does), so the generator's own CPU goes to
moving bytes. The connections are the fleet's gateways (`hil.fleet_gateway`:
the firmware's MQTT client, QoS 1, one login carrying many meters' topics).

Flow: per connection at most ``window`` frames await their head-end ack (the
read_ack / register_ack downlink), or, with ``rate``, frames leave at that
total rate (still bounded by the window). A frame not acked within
``resend_s`` is sent again as a meter would: the same seq, a fresh counter
(re-signed), so a head-end killed after its commit but before its ack sees
a new frame and acks it. Ack latency counts from the frame's first send.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.seed import load_profile
from headend.keys import meter_key
from headend.store.base import DAY_S
from hil.fleet_gateway import Gateway
from hil.loadprofile import DEFAULT_CSV, ProfileError
from protocol.codes import Event
from protocol.frame import decode, encode

FIRST_ID = 500_001
INTERVAL_S = 900
CHANNELS = 4
RESEND_S = 10.0


@dataclass
class Meter:
    """A simulated meter's signing state: its key, last counter and seq."""

    meter_id: int
    key: bytes
    counter: int = 0
    seq: int = 0

    def sign(self, mtype: str, body: dict[str, Any], at: int, seq: int | None = None) -> bytes:
        """A frame with a fresh counter (``seq`` None: the next seq)."""
        if seq is None:
            self.seq = self.seq % 0xFFFF + 1
            seq = self.seq
        self.counter += 1
        fields = {
            "type": mtype,
            "seq": seq,
            "meter_id": self.meter_id,
            "timestamp": at,
            "auth": {"counter": self.counter, "mac": b""},
            "body": body,
        }
        return encode(fields, key=self.key)


@dataclass
class Frame:
    """One uplink to deliver: its meter, type, seq, body (kept for a resend), wire bytes."""

    meter: Meter
    mtype: str
    seq: int
    body: dict[str, Any]
    at: int
    raw: bytes
    first: float = 0.0  # monotonic s of the first send
    last: float = 0.0
    tries: int = 0


def register_body() -> dict[str, Any]:
    return {
        "fw_version": "bench-live",
        "interval_s": INTERVAL_S,
        "capacity_days": 45,
        "utc_offset_min": 0,
        "meter_multiplier": 1,
        "channels": [
            {"kind": 1 + c, "unit": 1 if c < 2 else 2, "multiplier": 1, "scaler": 0}
            for c in range(CHANNELS)
        ],
    }


def day_bodies(
    meters: int, days: Sequence[int], profile: list[list[list[int]]]
) -> Iterator[tuple[int, int, dict[str, Any]]]:
    """(meter index, day, read_response body): every meter's first day, then the next..."""
    totals = [[0] * CHANNELS for _ in range(meters)]
    per_day = DAY_S // INTERVAL_S
    for d, day in enumerate(days):
        for m in range(meters):
            k = 50 + (m * 37) % 151  # 50 %..200 % of the household
            prof = profile[(d + m * 7) % len(profile)]
            chans = [[v * k // 100 for v in ch] for ch in prof[:CHANNELS]]
            tot = totals[m]
            for c in range(CHANNELS):
                tot[c] += sum(chans[c])
            block = {"start": day, "interval_s": INTERVAL_S, "flags": [0] * per_day}
            block["channels"] = chans
            event = {"code": int(Event.POWER_UP), "time": day + 3600 + m % 3600, "data": 0}
            sections = [
                {"tag": "intervals", "body": block},
                {"tag": "midnight", "body": {"day": day + DAY_S, "values": list(tot)}},
                {"tag": "events", "body": [event]},
            ]
            body = {"request_seq": 0, "kind": 0, "part": 1, "parts": 1, "sections": sections}
            yield m, day, body


def profile() -> list[list[list[int]]]:
    """The reference load profile's days, [day][channel][slot] (15-minute intervals)."""
    _, step, prof = load_profile(DEFAULT_CSV)
    if step != INTERVAL_S:
        raise ProfileError(f"{DEFAULT_CSV}: {step} s intervals, the bench sends {INTERVAL_S} s")
    return prof


@dataclass
class Stats:
    """What the generator saw: sends, acks and their latencies (s)."""

    sent: int = 0
    resent: int = 0
    acked: int = 0
    latencies: list[float] = field(default_factory=list)
    first_send: float = 0.0
    last_ack: float = 0.0
    stray: int = 0  # downlinks that matched nothing in flight (late acks of resends)


class Connection:
    """One gateway connection: its frames in order, at most ``window`` awaiting acks."""

    def __init__(self, gw: Gateway, window: int, stats: Stats) -> None:
        self.gw = gw
        self.window = window
        self.stats = stats
        self.queue: collections.deque[Frame] = collections.deque()
        self.pending: dict[tuple[int, int], Frame] = {}
        self.room = asyncio.Event()
        self.room.set()
        for mid in gw.ids:
            gw.handlers[mid] = self._on_down
            gw.attached.add(mid)

    async def _on_down(self, topic: str, payload: bytes) -> None:
        try:
            fields = decode(payload)
        except Exception:  # noqa: BLE001 - a bench: an undecodable downlink is a stray
            self.stats.stray += 1
            return
        mtype = fields["type"]
        if mtype not in ("read_ack", "register_ack"):
            return  # schedules, time sets: not what this bench measures
        acked = fields["body"].get("acked_seq") if mtype == "read_ack" else None
        key = (fields["meter_id"], acked if acked is not None else -1)
        f = self.pending.pop(key, None)
        if f is None:
            self.stats.stray += 1
            return
        now = time.monotonic()
        self.stats.acked += 1
        self.stats.latencies.append(now - f.first)
        self.stats.last_ack = now
        self.room.set()

    async def send(self, f: Frame, now: float) -> None:
        f.tries += 1
        f.last = now
        if f.tries == 1:
            f.first = now
            self.stats.sent += 1
        else:
            self.stats.resent += 1
        await self.gw.publish(f"ami/v1/{f.meter.meter_id}/up", f.raw)

    async def resend_due(self, resend_s: float) -> None:
        now = time.monotonic()
        for f in list(self.pending.values()):
            if now - f.last >= resend_s:
                f.raw = f.meter.sign(f.mtype, f.body, f.at, f.seq)
                await self.send(f, now)

    async def drive(self, pace: Callable[[], Any] | None) -> None:
        """Send every queued frame (waiting for room in the window, and for ``pace``)."""
        while self.queue:
            while len(self.pending) >= self.window:
                self.room.clear()
                await self.room.wait()
            if pace is not None:
                await pace()
            f = self.queue.popleft()
            key = (f.meter.meter_id, f.seq if f.mtype == "read_response" else -1)
            self.pending[key] = f
            await self.send(f, time.monotonic())

    def done(self) -> bool:
        return not self.queue and not self.pending


class Pacer:
    """Shared open-loop pace: ``rate`` sends a second over all connections."""

    def __init__(self, rate: float) -> None:
        self.gap = 1.0 / rate
        self.next = time.monotonic()

    async def __call__(self) -> None:
        now = time.monotonic()
        self.next = max(self.next + self.gap, now - 0.1)
        if self.next > now:
            await asyncio.sleep(self.next - now)


class LoadGen:
    """Args: meter ids; days (UTC midnights); broker (host, port), or a list that the
    connections take in turn (a cluster's nodes); tls for the
    firmware client (CA file, None, server name) or None; password(login);
    per_conn: meters per gateway connection; window; rate (0: as fast as acks);
    say: progress sink."""

    def __init__(
        self,
        master: bytes,
        meters: int,
        days: Sequence[int],
        broker: tuple[str, int] | list[tuple[str, int]],
        tls: tuple[str, None, str] | None,
        password: Callable[[str], str],
        per_conn: int,
        window: int,
        rate: float = 0.0,
        resend_s: float = RESEND_S,
    ) -> None:
        self.ids = list(range(FIRST_ID, FIRST_ID + meters))
        self.meters = [Meter(m, meter_key(master, m)) for m in self.ids]
        self.days = list(days)
        self.window = window
        self.rate = rate
        self.resend_s = resend_s
        self.stats = Stats()
        rng = random.Random(1)
        self.conns: list[Connection] = []
        for i in range(0, meters, per_conn):
            ids = self.ids[i : i + per_conn]
            name = f"gw{ids[0]}"
            at = broker[len(self.conns) % len(broker)] if isinstance(broker, list) else broker
            gw = Gateway(name, ids, at, password(name), tls, lambda: rng.getrandbits(16))
            self.conns.append(Connection(gw, window, self.stats))

    @property
    def by_meter(self) -> dict[int, Connection]:
        return {mid: c for c in self.conns for mid in c.gw.ids}

    def build_reads(self) -> int:
        """Sign every read answer (before the clock starts); returns the frame count."""
        conn = self.by_meter
        n = 0
        for m, day, body in day_bodies(len(self.meters), self.days, profile()):
            meter = self.meters[m]
            at = day + DAY_S + 3600
            raw = meter.sign("read_response", body, at)
            conn[meter.meter_id].queue.append(
                Frame(meter, "read_response", meter.seq, body, at, raw)
            )
            n += 1
        return n

    def build_registers(self, at: int) -> None:
        conn = self.by_meter
        body = register_body()
        for meter in self.meters:
            raw = meter.sign("register", body, at)
            conn[meter.meter_id].queue.append(Frame(meter, "register", meter.seq, body, at, raw))

    async def connect(self, timeout: float = 30.0) -> None:
        for c in self.conns:
            c.gw.start()
        end = time.monotonic() + timeout
        while not all(c.gw.online() for c in self.conns):
            if time.monotonic() > end:
                raise TimeoutError("gateway connections not up")
            await asyncio.sleep(0.05)

    async def run(self, progress: Callable[[Stats, int], None] | None = None) -> Stats:
        """Send every queued frame, resending unacked ones, until all are acked."""
        self.stats = stats = Stats()
        for c in self.conns:
            c.stats = stats
        total = sum(len(c.queue) for c in self.conns)
        pace = Pacer(self.rate) if self.rate > 0 else None
        stats.first_send = time.monotonic()
        drivers = [asyncio.create_task(c.drive(pace)) for c in self.conns]
        try:
            while not all(c.done() for c in self.conns):
                await asyncio.sleep(0.5)
                for c in self.conns:
                    await c.resend_due(self.resend_s)
                if progress is not None:
                    progress(stats, total)
        finally:
            for t in drivers:
                t.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await t
        return stats

    async def close(self) -> None:
        await asyncio.gather(*(c.gw.close() for c in self.conns))
