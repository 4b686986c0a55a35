"""The HIL rig: private mosquitto + the head-end in-process + N virtual boards.

    async with Rig(boards=2, speed=3000) as rig:
        await rig.until(rig.sim_start + 2 * 86400)      # simulated time passes
        job = await rig.read(1001)                       # an on-demand read via a job
        image = rig.boards[0].read_flash()               # what the board's flash holds

Everything shares ONE simulated clock: the boards' board.json carry the same
``sim_start`` and ``real_start_ms`` and ``speed`` as the head-end's `Clock`
(wall-clock anchored, as the board's RTC is). `Rig.set_speed` changes the speed
of every board and re-anchors the head-end clock on the first board's RTC
anchor (rtc.json), so they stay aligned to the millisecond × speed.

The head-end is `headend.service.Service` on SQLite in the rig's temp dir, as
tests/support/service.py runs it. A `Sniffer` (a plain MQTT subscriber to
``ami/v1/+/up`` and ``ami/v1/+/down``) records every frame with its real and
simulated arrival time, for checks the head-end does not log (time sync
exchanges, read spans). A `LatencyProxy` between boards and broker models a
slow link. On exit nothing keeps running, and the temp dir is removed unless
``keep=True``. While it runs a `hil.supervise.Guard` watches mosquitto, the
head-end task and every board (and whatever the owner adds to ``rig.guard``):
one that dies unexpectedly stops the run at once with `ChildDied`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import shutil
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from headend.api import (
    DEV_MASTER_KEY,
    Clock,
    Config,
    Headend,
    Job,
    Leg,
    ReadMode,
    ReadSpec,
    Service,
    brokerconf,
    on_service,
)
from hil.board import SIM_START, BoardSpec, VirtualBoard
from hil.broker import Broker, BrokerError, find_mosquitto, follow, free_port
from hil.supervise import Guard, Supervised, TaskDependent
from hil.wait import WaitTimeout, wait_until
from protocol.errors import ProtocolError
from protocol.frame import decode

T = TypeVar("T")
log = logging.getLogger(__name__)
DAY = 86_400
WORKER = "hil-headend"  # the head-end's login (and client id) on the rig's broker
SNIFFER = "hil-sniffer"


async def cancel_hard(task: asyncio.Task[Any], what: str, tries: int = 20) -> None:
    """Cancel ``task`` and wait for it, cancelling again whatever keeps running.

    On Python 3.11 a cancellation that lands while ``asyncio.wait_for`` (inside
    aiomqtt's publish) completes is swallowed: the head-end's MQTT task then goes
    on waiting for messages, and its TaskGroup (which cancels its children only
    once) waits for it forever. Tasks that were asked to cancel and still run are
    cancelled again (reported to the head-end owner).
    """
    task.cancel()
    for _ in range(tries):
        done, _ = await asyncio.wait({task}, timeout=0.5)
        if done:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                task.result()
            return
        me = asyncio.current_task()
        for t in asyncio.all_tasks():
            if t is not me and not t.done() and t.cancelling():
                t.cancel()
    stuck = "; ".join(
        f"{t.get_name()} at {' > '.join(_awaiting(t.get_coro()))}"
        for t in asyncio.all_tasks()
        if not t.done() and t is not asyncio.current_task()
    )
    log.warning("%s did not stop after %d cancellations; tasks: %s", what, tries, stuck)


def _awaiting(coro: Any) -> list[str]:
    """file:line of each frame a coroutine is suspended in, outermost first."""
    out = []
    while coro is not None:
        f = getattr(coro, "cr_frame", None) or getattr(coro, "ag_frame", None)
        f = f or getattr(coro, "gi_frame", None)
        if f is not None:
            out.append(f"{f.f_code.co_filename.rsplit('/', 1)[-1]}:{f.f_lineno}")
        coro = getattr(coro, "cr_await", None) or getattr(coro, "ag_await", None)
        coro = coro or getattr(coro, "gi_yieldfrom", None)
    return out


class RigError(RuntimeError):
    """The rig could not start, or a wait ran out (the message says what was awaited)."""


@dataclass(frozen=True)
class Seen:
    """One frame on the broker: when (real and simulated), which way, decoded."""

    real: float
    sim: float
    meter_id: int
    up: bool
    fields: dict[str, Any]
    raw: bytes = b""  # the frame as published (a replay re-sends it)

    @property
    def type(self) -> str:
        return str(self.fields["type"])


class Follower:
    """A background subscriber of ``topics`` as ``user`` (`hil.broker.follow`): `start`
    returns once it is subscribed, `stop` ends it; messages go to `_on`."""

    what = "a subscriber"

    def __init__(self, broker: Broker, user: str, topics: Sequence[str]) -> None:
        self.broker, self.user, self.topics = broker, user, tuple(topics)
        self.ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def _on(self, topic: str, payload: Any) -> None:
        raise NotImplementedError

    async def start(self) -> None:
        self._task = asyncio.create_task(
            follow(self.broker, self.user, self.topics, self._on, self.ready)
        )
        await asyncio.wait_for(self.ready.wait(), 10)

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_hard(self._task, self.what)
            self._task = None


class Sniffer(Follower):
    """An MQTT subscriber that decodes every meter frame it sees (not a head-end).

    It logs in as the broker's read-only observer `SNIFFER` (over TLS when the
    broker has it).
    """

    what = "the sniffer"

    def __init__(self, broker: Broker, clock: Clock) -> None:
        super().__init__(broker, SNIFFER, ("ami/v1/+/up", "ami/v1/+/down"))
        self.clock = clock
        self.seen: list[Seen] = []
        self.bad = 0

    def _on(self, topic: str, payload: Any) -> None:
        parts = topic.split("/")
        if len(parts) != 4 or not isinstance(payload, bytes | bytearray):
            return
        try:
            fields = decode(bytes(payload))
        except ProtocolError:
            self.bad += 1
            return
        self.seen.append(
            Seen(
                time.time(),
                self.clock.now(),
                int(parts[2]),
                parts[3] == "up",
                fields,
                bytes(payload),
            )
        )

    def of(self, mtype: str, meter_id: int | None = None) -> list[Seen]:
        return [
            s for s in self.seen if s.type == mtype and (meter_id is None or s.meter_id == meter_id)
        ]


class LatencyProxy:
    """A TCP proxy that delays every byte by ``delay_s`` (+ up to ``jitter_s``) each way.

    Models a slow link (cellular, PLC) between boards and broker; order is kept.
    """

    def __init__(self, host: str, port: int, delay_s: float, jitter_s: float = 0.0) -> None:
        self.target = (host, port)
        self.delay_s, self.jitter_s = delay_s, jitter_s
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._rand = random.Random(1)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._on_client, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _pipe(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        q: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        loop = asyncio.get_running_loop()

        async def feed() -> None:
            last = 0.0
            while data := await r.read(65536):
                due = max(loop.time() + self.delay_s + self._rand.random() * self.jitter_s, last)
                last = due
                q.put_nowait((due, data))
            q.put_nowait((0.0, b""))

        feeder = asyncio.create_task(feed())
        try:
            while True:
                due, data = await q.get()
                if not data:
                    break
                await asyncio.sleep(max(0.0, due - loop.time()))
                w.write(data)
                await w.drain()
        except OSError:
            pass
        finally:
            feeder.cancel()
            w.close()

    async def _on_client(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            r2, w2 = await asyncio.open_connection(*self.target)
        except OSError:
            w.close()
            return
        for a, b in ((r, w2), (r2, w)):
            t = asyncio.create_task(self._pipe(a, b))
            self._tasks.add(t)
            t.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for t in list(self._tasks):
            t.cancel()
        for t in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await t
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()


BoardOptions = dict[str, Any] | Callable[[int], dict[str, Any]]


@dataclass
class Rig(Supervised):
    """Broker + head-end + boards on one simulated clock (an async context manager).

    Args:
        boards: how many virtual boards (meter ids first_id, first_id + 1, ...).
        speed: simulated seconds per real second (int; see hil/README.md "Timing").
        sim_start: simulated UTC s at the start.
        board_options: extra BoardSpec fields, a dict or a function of the board index.
        headend: extra headend Config fields (poll_s, assign_at, ondemand_timeout_s ...).
        latency_s, jitter_s: put a LatencyProxy between the boards and the broker.
        insecure: a plain, anonymous broker (else TLS, logins and ACLs: hil.broker).
        admit: more meter ids the broker admits (a fleet's simulated meters).
        keep: keep the temp dir (SQLite file, flash dirs, console logs) and print where.
        say: progress printer (None: quiet).
        clock_legs: fast legs of the simulated clock (`headend.clock`); boards' RTCs
            know none, so a rig with boards takes none.
    """

    boards: int = 1
    speed: int = 600
    sim_start: int = SIM_START
    first_id: int = 1001
    board_options: BoardOptions | None = None
    headend: dict[str, Any] = field(default_factory=dict)
    latency_s: float = 0.0
    jitter_s: float = 0.0
    keep: bool = False
    workdir: Path | None = None
    say: Callable[[str], None] | None = None
    sniff: bool = True
    readers: tuple[brokerconf.Reader, ...] = ()  # real-time readers' logins (hil.feed)
    insecure: bool = False
    admit: tuple[int, ...] = ()  # more meter logins on the broker (a fleet's)
    gateways: Sequence[tuple[str, tuple[int, ...]]] = ()  # (login, meters): a fleet's gateways
    clock_legs: tuple[Leg, ...] = ()

    def __post_init__(self) -> None:
        self.board_list: list[VirtualBoard] = []
        self.broker: Broker | None = None
        self.service: Service | None = None
        self.sniffer: Sniffer | None = None
        self.proxy: LatencyProxy | None = None
        self._svc_task: asyncio.Task[None] | None = None
        self._tmp: Path | None = None
        if self.clock_legs and self.boards:
            raise RigError("a clock with fast legs runs no virtual boards (their RTCs know none)")
        self.clock = Clock(float(self.speed), float(self.sim_start), legs=self.clock_legs)
        self.config: Config | None = None
        self.guard = Guard()

    # -- life cycle -----------------------------------------------------------------------------

    def _say(self, text: str) -> None:
        if self.say is not None:
            self.say(text)

    @property
    def dir(self) -> Path:
        if self._tmp is None:
            raise RigError("rig not started")
        return self._tmp

    async def _start(self) -> None:
        if self.workdir is not None:
            self.workdir.mkdir(parents=True, exist_ok=True)
            self._tmp = Path(tempfile.mkdtemp(prefix="ami-hil-", dir=self.workdir))
        else:
            self._tmp = Path(tempfile.mkdtemp(prefix="ami-hil-"))
        mosq = find_mosquitto()
        if mosq is None:
            raise RigError("mosquitto not found (make setup installs it)")
        (self.dir / "broker").mkdir()
        worker = str(self.headend.get("worker", WORKER))
        master = str(self.headend.get("master_key", DEV_MASTER_KEY))
        self.broker = Broker(
            mosq,
            self.dir / "broker",
            insecure=self.insecure,
            master=bytes.fromhex(master),
            meters=(*range(self.first_id, self.first_id + self.boards), *self.admit),
            workers=(worker,),
            observers=(SNIFFER,),
            gateways=tuple(brokerconf.Gateway(n, ids) for n, ids in self.gateways),
            readers=self.readers,
        )
        try:
            self.broker.start()
        except BrokerError as e:
            raise RigError(str(e)) from e
        self.guard.add(self.broker)
        self._say(f"broker  mosquitto on {self.broker.url}")
        host, port, board_ca = self.broker.meter_link()
        if self.latency_s or self.jitter_s:
            self.proxy = LatencyProxy(host, port, self.latency_s, self.jitter_s)
            await self.proxy.start()
            self._say(
                f"link    boards reach the broker through a proxy adding {self.latency_s:.3f} s "
                f"(+ up to {self.jitter_s:.3f} s) each way"
            )
        # one simulated clock: the boards' board.json and the head-end's Clock
        real_start_ms = time.time_ns() // 1_000_000
        self.clock.follow(float(self.sim_start), real_start_ms / 1000, float(self.speed))
        cfg: dict[str, Any] = {
            "broker": self.broker.url_for(worker),
            "mqtt_ca_file": str(self.broker.ca or ""),
            "insecure": self.insecure,
            "database": f"sqlite:///{self.dir / 'headend.sqlite'}",
            "share_group": f"hil{uuid.uuid4().hex[:10]}",
            "worker": worker,
            "speed": float(self.speed),
            "clock_start": self.sim_start,
            "poll_s": 0.05,
            "master_key": DEV_MASTER_KEY,
        }
        cfg.update(self.headend)
        self.config = Config(**cfg)
        self.service = Service(self.config, clock=self.clock)
        self._svc_task = asyncio.create_task(self.service.run())
        self.guard.add(TaskDependent("the head-end service", self._svc_task))
        await self._service_ready()
        self._say(f"head-end in-process on {cfg['database']}, clock {self.speed}x")
        if self.sniff:
            self.sniffer = Sniffer(self.broker, self.clock)
            await self.sniffer.start()
        bport = self.proxy.port if self.proxy is not None else port
        # the boards start now: day 0 begins for them and the head-end at this instant
        real_start_ms = time.time_ns() // 1_000_000
        self.clock.follow(float(self.sim_start), real_start_ms / 1000, float(self.speed))
        for i in range(self.boards):
            opts = self.board_options
            extra = (opts(i) if callable(opts) else dict(opts)) if opts is not None else {}
            mid = self.first_id + i
            spec = BoardSpec(
                meter_id=mid,
                flash_dir=self.dir / f"board-{mid}",
                speed=self.speed,
                sim_start=self.sim_start,
                real_start_ms=real_start_ms,
                broker=(host, bport),
                broker_ca=board_ca,
                master_key=self.config.master_key,
                **extra,
            )
            self.board_list.append(VirtualBoard(spec))
        await asyncio.gather(*(b.start() for b in self.board_list))
        for b in self.board_list:
            self.guard.add(b)
        if self.board_list:
            self._say(
                f"boards  {len(self.board_list)} virtual board(s) on MicroPython: "
                + ", ".join(str(b.meter_id) for b in self.board_list)
            )

    async def _service_ready(self) -> None:
        svc, task = self.service, self._svc_task
        assert svc is not None and task is not None
        end = time.monotonic() + 15
        while not (svc.ready.is_set() and svc.mqtt.connected.is_set()):
            if task.done():
                task.result()
            if time.monotonic() > end:
                raise RigError("the head-end service did not connect to the broker in 15 s")
            await asyncio.sleep(0.02)

    async def _stop(self) -> None:
        self.guard.dependents.clear()
        for b in self.board_list:
            with contextlib.suppress(Exception):
                await b.close()
        if self._svc_task is not None:
            await cancel_hard(self._svc_task, "the head-end service")
            self._svc_task = None
        if self.sniffer is not None:
            await self.sniffer.stop()
        if self.proxy is not None:
            await self.proxy.close()
        if self.broker is not None:
            self.broker.stop()
        if self._tmp is not None:
            if self.keep:
                self._say(f"kept    {self._tmp}")
            else:
                shutil.rmtree(self._tmp, ignore_errors=True)

    # -- boards ---------------------------------------------------------------------------------

    def board(self, meter_id: int) -> VirtualBoard:
        for b in self.board_list:
            if b.meter_id == meter_id:
                return b
        raise RigError(f"no board {meter_id} on this rig")

    @property
    def meter_ids(self) -> list[int]:
        return [b.meter_id for b in self.board_list]

    # -- time -----------------------------------------------------------------------------------

    def now(self) -> float:
        """Simulated UTC s (the head-end's clock; the boards' reality)."""
        return self.clock.now()

    async def until(self, sim_t: float, tick: Callable[[], Awaitable[None]] | None = None) -> None:
        """Wait until simulated time ``sim_t`` (``tick`` is awaited about every real second)."""
        while True:
            left = sim_t - self.clock.now()
            if left <= 0:
                return
            await asyncio.sleep(min(self.clock.real_at(sim_t) - time.time(), 1.0))
            if tick is not None:
                await tick()

    async def set_speed(self, speed: int) -> None:
        """Change the speed of every board, then re-anchor the head-end on the first one."""
        for b in self.board_list:
            if b.powered:
                await b.set_speed(speed)
        for b in self.board_list:
            if b.powered:
                r = b.rtc()
                self.clock.follow(r["true_sim_ms"] / 1000, r["true_real_ms"] / 1000, float(speed))
                break
        else:
            self.clock.follow(self.clock.now(), time.time(), float(speed))
        self.speed = speed

    async def eventually(
        self,
        probe: Callable[[], Awaitable[T | None]],
        timeout: float,
        what: str,
        every: float = 0.05,
    ) -> T:
        """Poll ``probe`` until it returns something truthy (real-time ``timeout``)."""
        try:
            result: T = await wait_until(probe, timeout, what, every)
        except WaitTimeout as e:
            raise RigError(str(e)) from e
        return result

    # -- the head-end ---------------------------------------------------------------------------

    async def call(self, fn: Callable[[Headend], T]) -> T:
        """Run ``fn(headend)`` on the head-end's database thread (in order with its work)."""
        if self.service is None:
            raise RigError("rig not started")
        return await on_service(self.service, fn)

    async def registered(self) -> set[int]:
        """Meter ids the head-end has registered."""
        return set(await self.call(lambda he: he.meters()))

    async def wait_registered(self, timeout: float = 60.0) -> None:
        """Wait until the head-end has registered every board (M17)."""

        async def all_in() -> bool:
            return set(self.meter_ids) <= await self.registered()

        await self.eventually(all_in, timeout, "every board registered at the head-end", 0.05)

    async def request_read(
        self, meter_id: int, mode: int = 2, start: int = 0, end: int = 0, requester: str = "hil"
    ) -> int:
        """Queue an on-demand read job (as `headend read` does); returns the job id."""
        spec = ReadSpec(meter_id, mode=ReadMode(mode), start=start, end=end)
        now_ms = self.clock.now_ms()
        return await self.call(lambda he: he.request_read(spec, requester, now_ms))

    async def job(self, job_id: int) -> Job:
        return await self.call(lambda he: he.job(job_id))

    async def wait_job(self, job_id: int, timeout: float = 60.0) -> Job:
        """Wait until the job is done or failed; returns it."""

        async def closed() -> Job | None:
            j = await self.job(job_id)
            return j if j.closed else None

        return await self.eventually(closed, timeout, f"job {job_id} closed", every=0.02)

    async def read(self, meter_id: int, timeout: float = 60.0, **kw: Any) -> Job:
        """An on-demand read, waited for."""
        return await self.wait_job(await self.request_read(meter_id, **kw), timeout)

    async def stored_intervals(self, meter_id: int, start: int, end: int) -> dict[int, Any]:
        """start -> Interval (channel 0) the head-end holds in [start, end)."""
        rows = await self.call(lambda he: he.intervals(meter_id, 0, start, end))
        return {iv.start: iv for iv in rows}

    async def coverage(self, meter_id: int, start: int, end: int) -> list[Any]:
        """DayCoverage of each day of [start, end) the head-end holds for a meter."""
        return list(await self.call(lambda he: he.coverage(meter_id, start, end)))

    async def activity(self, meter_id: int | None, kinds: list[str] | None = None) -> list[Any]:
        return list(await self.call(lambda he: he.activity(meter_id, kinds or (), limit=100_000)))


SCHEDULE_ACK_REAL_S = 10.0  # a schedule ack is awaited at least this long in real time
ONDEMAND_REAL_S = 3.0  # an on-demand answer likewise


def headend_timeouts(speed: float) -> dict[str, int]:
    """The head-end's timeouts at ``speed``: a real-time margin over its real processing
    time (hil/FLEET.md "Time"), never shorter than the defaults."""
    return {
        "schedule_ack_timeout_s": max(900, int(SCHEDULE_ACK_REAL_S * speed)),
        "ondemand_timeout_s": max(240, int(ONDEMAND_REAL_S * speed)),
    }


def free_tcp_port() -> int:
    return free_port()
