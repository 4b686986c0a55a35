"""The live path under load: mosquitto + `headend serve` + a load generator.

    python -m bench live --meters 2000 --days 2 [--workers 1,2] [--backend postgres]

A private, secured mosquitto (TLS, logins, ACLs: `hil.broker`) on a free
port; K `headend serve --worker wN` processes of their own (one MQTT 5 share
group; SQLite, or PostgreSQL 127.0.0.1:5432 db `test` in a throwaway schema);
the load generator (`bench.loadgen`) in this process: N meters register,
then send D days of signed scheduled reads (intervals, midnight registers,
one event each) with QoS 1 over gateway connections, as fast as acks come
back (``--window`` per connection) or at ``--rate``.

Figures, for each K: frames_per_s (acked read answers over the read phase),
meter_days_per_s, ack latency (publish to the meter's read_ack), CPU per
frame of the head-end processes and of mosquitto (utime+stime from
/proc/PID/stat over the read phase; the generator shares the machine's
cores: its own CPU is printed too), and ``lost``/``doubled``: the store
counted against what was sent (interval days complete, midnight registers,
events; rows beyond what was sent are doubles); ``db_retries``/``deadlocks``:
database failures the workers logged and retried (PostgreSQL workers that
locked rows in different orders would deadlock). ``--kill-at F`` kill -9s
worker w1 once a share F of the reads is acked and starts it again: what it
had taken and not acked the broker delivers again (its session is kept), and
frames unacked after ``--resend-s`` are resent by the generator (fresh
counter, as meters do); ``sent_while_down`` counts the frames sent between
the kill and w1 back on the broker.

``--transport nats``: the broker is a 3-node NATS cluster (`bench.live_nats`).
``--realtime off``: the workers publish no real-time JSON (``realtime = false``,
a site without real-time subscribers); on by default, as the head-end is.

Progress on stderr; ONE JSON line last on stdout (several K: ``runs``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.cli import refuse
from bench.live_nats import ClusterBroker, bench_nats
from bench.loadgen import CHANNELS, FIRST_ID, INTERVAL_S, LoadGen, Stats
from headend.api import write_private
from headend.brokerconf import Gateway
from headend.errors import HeadendError
from headend.service import PROFILE_ENV
from headend.store import open_store
from headend.store.base import DAY_S
from hil.broker import Broker, BrokerError, find_mosquitto
from hil.stats import percentile
from hil.supervise import Child, ChildDied, Stopped, run

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test"
READY_S = 30.0
PROGRESS_S = 2.0
TICK_HZ = os.sysconf("SC_CLK_TCK")


class LiveError(HeadendError):
    """The bench could not run (a server missing, a child that died)."""


def _stat_cpu_s(stat: str) -> float:
    """utime + stime (s) from the text of a /proc .../stat file."""
    rest = stat.rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / TICK_HZ


def cpu_s(pid: int) -> float:
    """utime + stime of a process so far (s), from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        return _stat_cpu_s(f.read())


def thread_cpu_s(pid: int) -> dict[str, float]:
    """utime + stime so far of a process's threads (s): its main thread ("loop", the
    head-end's event loop: MQTT) and the others summed ("db": its database thread,
    which decodes, verifies and stores; nothing else of it runs long)."""
    out = {"loop": 0.0, "db": 0.0}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:  # the thread ended meanwhile
            continue
        out["loop" if task.name == str(pid) else "db"] += _stat_cpu_s(stat)
    return out


def broker_pid(broker: Broker) -> int:
    proc = broker._proc  # noqa: SLF001 - the process hil.broker started for us
    if proc is None:
        raise LiveError("mosquitto is not running")
    return proc.pid


def broker_cpu_s(broker: Broker | ClusterBroker) -> float:
    """The broker's CPU so far: mosquitto's, or the sum of a NATS cluster's nodes'."""
    pids = broker.pids() if isinstance(broker, ClusterBroker) else [broker_pid(broker)]
    return sum(cpu_s(p) for p in pids)


def own_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


@dataclass(frozen=True)
class Options:
    meters: int
    days: int
    workers: int
    backend: str
    transport: str
    window: int
    rate: float
    per_conn: int
    dsn: str
    kill_at: float
    resend_s: float
    profile: Path | None = None
    realtime: bool = True  # the workers' `realtime` setting (H04)


def parse_workers(text: str) -> list[int]:
    try:
        ks = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        ks = []
    if not ks or min(ks) < 1:
        raise argparse.ArgumentTypeError(f"expected worker counts like 1,2, got {text!r}")
    return ks


class Database:
    """A fresh store for one run: a SQLite file, or a throwaway PostgreSQL schema."""

    def __init__(self, backend: str, dsn: str, tmp: Path) -> None:
        self.backend = backend
        self.dsn = dsn
        self.schema: str | None = None
        if backend == "sqlite":
            self.url = f"sqlite:///{tmp / 'headend.sqlite'}"
        else:
            import psycopg
            from psycopg import sql

            self.schema = f"live_{uuid.uuid4().hex[:12]}"
            try:
                with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
                    conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(self.schema)))
            except psycopg.Error as e:
                raise LiveError(f"PostgreSQL at {dsn}: {e}") from e
            sep = "&" if "?" in dsn else "?"
            self.url = f"{dsn}{sep}options=-csearch_path%3D{self.schema}"

    def count(self, meters: list[int], days: list[int]) -> dict[str, int]:
        """Rows of the bench's meters and days: complete interval days, midnights, events."""
        store = open_store(self.url, schema=self.schema, migrate=False)
        try:
            lo, hi = meters[0], meters[-1]
            d0, d1 = days[0], days[-1]
            slots = DAY_S // INTERVAL_S
            q = store.db.query
            iv = q(
                "SELECT COUNT(*), SUM(CASE WHEN n_present = ? THEN 1 ELSE 0 END) FROM interval_day"
                " WHERE meter_id BETWEEN ? AND ? AND day BETWEEN ? AND ?",
                (slots, lo, hi, d0, d1),
            )[0]
            mn = q(
                "SELECT COUNT(*) FROM midnight_register WHERE meter_id BETWEEN ? AND ?"
                " AND day BETWEEN ? AND ?",
                (lo, hi, d0 + DAY_S, d1 + DAY_S),
            )[0]
            ev = q(
                "SELECT COUNT(*) FROM meter_event WHERE meter_id BETWEEN ? AND ?"
                " AND time BETWEEN ? AND ?",
                (lo, hi, d0, d1 + DAY_S),
            )[0]
            return {
                "interval_days": int(iv[0] or 0),
                "complete_days": int(iv[1] or 0),
                "midnights": int(mn[0] or 0),
                "events": int(ev[0] or 0),
            }
        finally:
            store.close()

    def drop(self) -> None:
        if self.schema is None:
            return
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.dsn, autocommit=True, connect_timeout=5) as conn:
            conn.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(self.schema))
            )


def lost_doubled(found: dict[str, int], meters: int, days: int) -> tuple[int, int]:
    """(lost, doubled): what the store lacks of what was sent, and what it holds beyond it."""
    want = {
        "interval_days": meters * days,
        "midnights": meters * days * CHANNELS,
        "events": meters * days,
    }
    lost = want["interval_days"] - found["complete_days"]
    lost += max(0, want["midnights"] - found["midnights"])
    lost += max(0, want["events"] - found["events"])
    doubled = sum(max(0, found[k] - want[k]) for k in want)
    return lost, doubled


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class Workers:
    """K `headend serve` processes, one config each (0600: it holds the master key)."""

    def __init__(
        self,
        broker: Broker | ClusterBroker,
        db: Database,
        k: int,
        tmp: Path,
        transport: str,
        profile: Path | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        self.broker = broker
        self.profile = profile
        self.names = [f"w{i + 1}" for i in range(k)]
        self.tmp = tmp
        self.children: dict[str, Child] = {}
        self.dead_cpu_s = 0.0
        self.configs: dict[str, Path] = {}
        for name in self.names:
            cfg: dict[str, Any] = {
                "broker": broker.url_for(name),
                "mqtt_ca_file": str(broker.ca),
                "database": db.url,
                "master_key": broker.master.hex(),
                "worker": name,
                "share_group": "live",
                "mqtt_max_queued": 5000,
                "poll_s": 1.0,
                **(extra or {}),  # e.g. `bench api`: the API served beside the service
            }
            if isinstance(broker, ClusterBroker):  # bench.live_nats
                cfg.update(broker.worker_settings(name))
            lines = ["[headend]"] + [f"{k_} = {json.dumps(v)}" for k_, v in cfg.items()]
            path = tmp / f"{name}.toml"
            write_private(path, "\n".join(lines) + "\n")
            self.configs[name] = path

    async def start(self, name: str) -> None:
        seen = self.broker.log().count(f" as {name} ")
        argv = [sys.executable, "-m", "headend", "serve", "--config", str(self.configs[name])]
        if self.profile is not None:  # both threads' profiles, written when the worker ends
            self.profile.mkdir(parents=True, exist_ok=True)
            prefix = self.profile / f"{name}-{len(self.children)}-{os.getpid()}"
            argv[:0] = ["env", f"{PROFILE_ENV}={prefix}"]  # headend.service
        child = await Child.spawn(
            f"headend serve {name}", argv, log=self.tmp / f"{name}.log", cwd=ROOT
        )
        self.children[name] = child
        end = time.monotonic() + READY_S
        while self.broker.log().count(f" as {name} ") <= seen:
            if child.proc.returncode is not None:
                await child.wait()
                raise ChildDied(child.name, child.failure() or "it exited")
            if time.monotonic() > end:
                raise LiveError(f"{child.name} not on the broker in {READY_S:.0f} s")
            await asyncio.sleep(0.05)

    async def kill9(self, name: str) -> None:
        child = self.children[name]
        child.expect_exit()
        self.dead_cpu_s += cpu_s(child.proc.pid)  # its CPU so far still counts
        with contextlib.suppress(ProcessLookupError):
            child.proc.send_signal(signal.SIGKILL)
        await child.wait()

    def cpu_s(self) -> float:
        return self.dead_cpu_s + sum(
            cpu_s(c.proc.pid) for c in self.children.values() if c.proc.returncode is None
        )

    def threads_cpu_s(self) -> dict[str, float]:
        """The running workers' CPU so far by thread name (a killed one's is not in it)."""
        out: dict[str, float] = {}
        for c in self.children.values():
            if c.proc.returncode is None:
                with contextlib.suppress(OSError):
                    for name, s in thread_cpu_s(c.proc.pid).items():
                        out[name] = out.get(name, 0.0) + s
        return out

    def failure(self) -> str | None:
        for c in self.children.values():
            what = c.failure()
            if what is not None:
                return f"{c.name}: {what}"
        return None

    async def stop(self) -> None:
        for c in self.children.values():
            await c.stop(timeout=60 if self.profile is not None else 5)

    def db_retries(self) -> tuple[int, int]:
        """(database failures the workers retried, of them deadlocks), from their logs."""
        text = "".join(
            (self.tmp / f"{n}.log").read_text(errors="replace")
            for n in self.names
            if (self.tmp / f"{n}.log").exists()
        )
        failed = [line for line in text.splitlines() if "database failed" in line]
        return len(failed), sum("deadlock" in line for line in failed)


def day_list(days: int) -> list[int]:
    """The ``days`` whole UTC days before today's."""
    today = int(time.time()) // DAY_S * DAY_S
    return [today - (days - i) * DAY_S for i in range(days)]


def loadgen(opts: Options, broker: Broker | ClusterBroker, days: list[int]) -> LoadGen:
    """The generator of ``opts.meters`` meters' ``days`` on ``broker``'s meter side."""
    host, port, ca = broker.meter_link()
    return LoadGen(
        broker.master,
        opts.meters,
        days,
        broker.meter_addrs() if isinstance(broker, ClusterBroker) else (host, port),
        (str(ca), None, broker.server_name) if ca is not None else None,
        broker.password,
        opts.per_conn,
        opts.window,
        opts.rate,
        opts.resend_s,
    )


async def register(gen: LoadGen, days: list[int], who: str) -> int:
    """Connect the gateways, register every meter, sign the reads; how many reads."""
    await gen.connect()
    gen.build_registers(days[0])
    say(f"{who}: registering {len(gen.meters)} meters over {len(gen.conns)} connections")
    await gen.run()
    return gen.build_reads()


def latency_ms(lat: list[float], ndigits: int = 1) -> dict[str, float | None]:
    """p50_ms, p99_ms, max_ms of sorted latencies in s (None for none)."""

    def ms(p: float) -> float | None:
        v = percentile(lat, p)
        return None if v is None else round(v * 1000, ndigits)

    return {"p50_ms": ms(50), "p99_ms": ms(99), "max_ms": ms(100)}


async def one_run(opts: Options, broker: Broker | ClusterBroker, tmp: Path) -> dict[str, Any]:
    db = Database(opts.backend, opts.dsn, tmp)
    extra = None if opts.realtime else {"realtime": False}
    workers = Workers(broker, db, opts.workers, tmp, opts.transport, opts.profile, extra)
    days = day_list(opts.days)
    gen = loadgen(opts, broker, days)
    try:
        for name in workers.names:
            await workers.start(name)
        n = await register(gen, days, "live")
        say(f"live: {n} read answers signed; sending ({opts.workers} worker(s), {opts.backend})")
        killed = asyncio.Event()
        restarts: list[asyncio.Task[None]] = []

        down = {"sent": 0, "s": 0.0}

        async def kill_and_restart() -> None:
            say("live: kill -9 w1")
            sent0, t0 = gen.stats.sent, time.monotonic()
            await workers.kill9("w1")
            await workers.start("w1")  # returns once w1 is on the broker again
            # sent while no worker was there: stored only if the broker kept them (or resent)
            down["sent"], down["s"] = gen.stats.sent - sent0, time.monotonic() - t0
            say(f"live: w1 restarted after {down['s']:.2f} s; {down['sent']} sent meanwhile")

        last = [time.monotonic(), 0]

        def progress(st: Stats, total: int) -> None:
            failed = workers.failure() or broker.failure()
            if failed is not None:
                raise LiveError(failed)
            if opts.kill_at and not killed.is_set() and st.acked >= opts.kill_at * total:
                killed.set()
                restarts.append(asyncio.create_task(kill_and_restart()))
            now = time.monotonic()
            if now - last[0] >= PROGRESS_S:
                rate = (st.acked - last[1]) / (now - last[0])
                last[0], last[1] = now, st.acked
                say(
                    f"live: {st.acked}/{total} acked, {rate:.0f}/s now, "
                    f"{st.sent - st.acked + st.resent} in flight, {st.resent} resent"
                )

        he0, br0, me0 = workers.cpu_s(), broker_cpu_s(broker), own_cpu_s()
        th0 = workers.threads_cpu_s()
        stats = await gen.run(progress)
        for t in restarts:
            await t
        he1, br1, me1 = workers.cpu_s(), broker_cpu_s(broker), own_cpu_s()
        th1 = workers.threads_cpu_s()
        per_frame = 1e6 / max(1, stats.acked)
        await workers.stop()
        retries, deadlocks = workers.db_retries()
        found = await asyncio.to_thread(db.count, gen.ids, days)
        lost, doubled = lost_doubled(found, opts.meters, opts.days)
        span = max(1e-9, stats.last_ack - stats.first_send)
        return {
            "frames_per_s": round(stats.acked / span, 1),
            "meter_days_per_s": round(stats.acked / span, 1),  # one frame carries one meter-day
            "frames": stats.acked,
            "seconds": round(span, 2),
            **latency_ms(sorted(stats.latencies)),
            "headend_cpu_us_per_frame": round((he1 - he0) * per_frame, 1),
            # where it goes: the event loop (MQTT) and the database thread (`thread_cpu_s`)
            "headend_threads_us_per_frame": {
                name: round((th1[name] - th0.get(name, 0.0)) * per_frame, 1)
                for name in sorted(th1)
                if th1[name] - th0.get(name, 0.0) > 0
            },
            "broker_cpu_us_per_frame": round((br1 - br0) / max(1, stats.acked) * 1e6, 1),
            "loadgen_cpu_us_per_frame": round((me1 - me0) / max(1, stats.acked) * 1e6, 1),
            "resent": stats.resent,
            "db_retries": retries,  # batches a worker handled again after a database failure
            "deadlocks": deadlocks,
            "lost": lost,
            "doubled": doubled,
            "stored": found,
            "workers": opts.workers,
            "backend": opts.backend,
            "transport": opts.transport,
            "realtime": opts.realtime,
            "meters": opts.meters,
            "days": opts.days,
            "window": opts.window,
            "rate": opts.rate or None,
            "connections": len(gen.conns),
            "killed": bool(opts.kill_at),
            "sent_while_down": down["sent"],  # --kill-at: frames sent between the kill and w1 back
            "down_s": round(down["s"], 2),
            "cores": os.cpu_count(),
            "loadavg_1m": round(os.getloadavg()[0], 2),  # the machine is shared: say how busy
        }
    finally:  # each step whatever the one before did: no child outlives the bench
        try:
            await workers.stop()
        finally:
            try:
                await gen.close()
            finally:
                await asyncio.to_thread(db.drop)


@contextlib.contextmanager
def mosquitto(tmp: Path, meters: int, per_conn: int, workers: int) -> Iterator[Broker]:
    """A private, secured mosquitto (in ``tmp``/broker) for the generator's ``meters``
    (``per_conn`` a gateway) and workers w1..w``workers``; stopped on the way out."""
    mosq = find_mosquitto()
    if mosq is None:
        raise LiveError("mosquitto not found (make setup installs it)")
    ids = tuple(range(FIRST_ID, FIRST_ID + meters))
    gws = tuple(Gateway(f"gw{ids[i]}", ids[i : i + per_conn]) for i in range(0, meters, per_conn))
    names = tuple(f"w{i + 1}" for i in range(workers))
    broker = Broker(mosq, tmp / "broker", workers=names, gateways=gws)
    (tmp / "broker").mkdir()
    try:
        broker.start()
    except BrokerError as e:
        raise LiveError(str(e)) from e
    try:
        yield broker
    finally:
        broker.stop()


async def bench(opts: Options, ks: list[int]) -> dict[str, Any]:
    if opts.transport == "nats":
        return await bench_nats(opts, ks, one_run)
    tmp = Path(tempfile.mkdtemp(prefix="ami-live-"))
    try:
        with mosquitto(tmp, opts.meters, opts.per_conn, max(ks)) as broker:
            runs = []
            for k in ks:
                run_dir = tmp / f"k{k}"
                run_dir.mkdir()
                runs.append(
                    await one_run(Options(**{**opts.__dict__, "workers": k}), broker, run_dir)
                )
                say("live: " + json.dumps(runs[-1]))
        return runs[0] if len(runs) == 1 else {"runs": runs}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m bench live", description=__doc__.split("\n\n")[0])
    ap.add_argument("--meters", type=int, default=2000)
    ap.add_argument("--days", type=int, default=2)
    ap.add_argument("--workers", type=parse_workers, default=[1], help="worker counts, e.g. 1,2")
    ap.add_argument("--backend", choices=("sqlite", "postgres"), default="sqlite")
    ap.add_argument("--transport", choices=("mqtt", "nats"), default="mqtt")
    ap.add_argument("--window", type=int, default=20, help="frames awaiting ack per connection")
    ap.add_argument("--rate", type=float, default=0.0, help="frames/s in all (0: as acks allow)")
    ap.add_argument("--per-conn", type=int, default=100, help="meters per gateway connection")
    ap.add_argument("--dsn", default=os.environ.get("AMI_TEST_PG_DSN", DEFAULT_DSN))
    ap.add_argument("--kill-at", type=float, default=0.0, help="kill -9 w1 at this share acked")
    ap.add_argument("--resend-s", type=float, default=10.0, help="resend an unacked frame after")
    ap.add_argument(
        "--realtime",
        choices=("on", "off"),
        default="on",
        help="the workers publish real-time JSON (H04; off: a site without real-time subscribers)",
    )
    ap.add_argument(
        "--profile", type=Path, help="run the workers' two threads under cProfile, files here"
    )
    return ap


def main(argv: list[str]) -> int:
    ap = parser()
    args = ap.parse_args(argv)
    if args.meters < 1 or args.days < 1 or args.window < 1 or args.per_conn < 1:
        ap.error("--meters, --days, --window and --per-conn must be >= 1")
    if not 0 <= args.kill_at < 1:
        ap.error("--kill-at must be in [0, 1)")
    if args.backend == "sqlite" and max(args.workers) > 1 and args.transport == "mqtt":
        ap.error("several workers share a PostgreSQL store: add --backend postgres")
    if args.transport != "mqtt" and not (ROOT / "headend" / "transport" / "nats.py").exists():
        return refuse("--transport nats: headend/transport/nats.py is not in this tree")
    ks = args.workers
    opts = Options(
        args.meters,
        args.days,
        ks[0],
        args.backend,
        args.transport,
        args.window,
        args.rate,
        args.per_conn,
        args.dsn,
        args.kill_at,
        args.resend_s,
        args.profile,
        args.realtime == "on",
    )
    try:
        out = run(lambda: bench(opts, ks))
    except Stopped as e:
        return e.exit_status
    except (HeadendError, ChildDied, TimeoutError) as e:
        return refuse(e)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
