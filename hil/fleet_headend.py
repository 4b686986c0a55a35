"""A whole fleet run: rig (broker, head-end, boards) + fleet process + the count.

`FleetRun` is what `python -m hil fleet` (without --broker) and `make demo`
run. The rig (`hil.rig.Rig`) starts a private mosquitto, the head-end service
in this process on SQLite, and the virtual boards; the fleet runs in a
second Python process (`python -m hil fleet --broker ... --hold`) on the
same simulated time (the rig clock's start and wall-clock anchor), so the
head-end and the fleet each get a core.

While time passes it takes a snapshot of the head-end's store after every
night's collection window (which meter-days were complete on schedule) and
queues the on-demand reads through the head-end's job path. The head-end
finds missing data by itself (its daily check at ``daily_check_at``) and
recovers it (recovery reads, D03/D04); after the last window the run waits
until it has settled what it found (`RunOptions.settle_all`), takes its D08
statistics and recovery figures (`recovery_figures`), and counts:

    expected   every meter x every full day of the run
    collected  complete in the head-end's store at the end
    recovered  collected, but not complete at the snapshot after that day's window
               (the meter's own catch-up read, M15, or a head-end recovery read)
    missing    expected - collected
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from headend.api import (
    RECOVERED_BY_READ,
    Clock,
    Headend,
    JobState,
    Leg,
    MissingDay,
    MissingState,
    StoreError,
    parse_hhmm,
)
from hil.board import BoardError
from hil.feed import READER, FeedReader
from hil.fleet import (
    DEFAULT_SPEED,
    DEFAULT_START,
    FIRST_ID,
    INSTALL_S,
    parse_outage,
    peak_rss_mb,
    timeline,
)
from hil.fleet_gateway import partition
from hil.fleet_meter import NO_SYNC_FAILED_PUSH
from hil.fleet_profile import DAY, DEFAULT_MIX, LoadProfile, Outage, ProfileError
from hil.fleet_time import iso, parse_utc
from hil.loadprofile import DEFAULT_CSV
from hil.rig import Rig, RigError, headend_timeouts
from hil.stats import percentile
from hil.supervise import Child, ChildDied, Stopped, run, stopped

ROOT = Path(__file__).resolve().parents[1]
RUN_START = parse_utc(DEFAULT_START)
WINDOW_START = "00:01"
WINDOW_END = "08:00"  # the head-end's default window
GROUP_MINUTES = 20
START_MARGIN_S = 2 * 3600  # simulated time the rig (boards) may take to start the fleet
ON_TIME_MARGIN_S = 900  # a day counts as collected on schedule if complete 15 min after the window
RECOVERY_WAIT_S = 30.0  # real seconds to wait at most for the recovery after the last daily check
# a day's fast leg starts this long after its daily check: the check's recovery reads
# (3 attempts 30 min apart) and the meters back from an outage run at the run's speed
RECOVERY_LEG_S = 3 * 3600
ASSIGN_REAL_S_PER_METER = 0.005  # head-end real time per schedule sent and acked (measured ~3 ms)


@dataclass(frozen=True)
class RunOptions:
    """What to run. ``outages``: the fleet's --outage strings (ID:FROM/TO)."""

    meters: int = 100
    days: int = 3
    speed: int = DEFAULT_SPEED
    start: int = RUN_START
    seed: int = 1
    profile_mix: str = DEFAULT_MIX
    outages: tuple[str, ...] = ()
    boards: int = 0
    ondemand: int = 0
    keep: bool = False
    csv: Path = DEFAULT_CSV
    first_id: int = FIRST_ID
    board_first_id: int = 1001
    progress_s: float = 5.0
    tick_s: float = 30.0
    install_s: int = INSTALL_S
    window_end: str = WINDOW_END
    push_mask: int = NO_SYNC_FAILED_PUSH
    insecure: bool = False  # plain, anonymous MQTT (else TLS, logins, ACLs)
    daily_check_at: str = "08:00"  # the head-end's daily check (D02): after the window
    #: after the last window wait until every missing meter-day the head-end found is
    #: settled (all its attempts); False: until each had its first attempt
    settle_all: bool = False
    settle_wait_s: float = RECOVERY_WAIT_S
    headend: tuple[tuple[str, Any], ...] = ()  # more head-end settings (name, value)
    meters_per_conn: int = 1  # > 1: gateway logins, K meters per connection (fleet_gateway)
    #: > speed: every collection day's daytime, when the meters only record and sync their
    #: clocks, runs at this speed (fast legs of the shared clock, headend.clock): from
    #: RECOVERY_LEG_S after the daily check (its recovery reads, 3 x 30 min, at the run's
    #: speed; an hour on the first day, whose check finds nothing) to 23:30 (the evening
    #: assignment and the night's window at the run's speed)
    idle_speed: int = 0
    #: a real-time reader (hil.feed) subscribed throughout: which collected meter-days
    #: reached the feed (H04)
    feed: bool = False


class Snapshots:
    """Which (meter, day) pairs are complete in the head-end's store.

    Reads through a connection of its own (as the CLI would, SQLite WAL: no
    writer waits for it) on one worker thread, so the head-end's event loop
    and database thread are never held up by the count.
    """

    def __init__(self, db_url: str) -> None:
        self.db_url = db_url
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="fleet-count")
        self._store: Headend | None = None

    def _complete(self, meter_ids: list[int], days: list[int]) -> set[tuple[int, int]]:
        if self._store is None:
            self._store = Headend.open(self.db_url)
        store = self._store
        out: set[tuple[int, int]] = set()
        lo, hi = min(days), max(days) + DAY
        want = set(days)
        known = set(store.meters())
        for mid in meter_ids:
            if mid not in known:
                continue
            for c in store.coverage(mid, lo, hi):
                if c.day in want and c.complete:
                    out.add((mid, c.day))
        return out

    async def complete(self, meter_ids: list[int], days: list[int]) -> set[tuple[int, int]]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._complete, meter_ids, days)

    def close(self) -> None:
        def shut() -> None:
            if self._store is not None:
                self._store.close()
                self._store = None

        self._pool.submit(shut).result()
        self._pool.shutdown()


@dataclass
class Tally:
    """What the head-end holds, counted against what it should hold."""

    expected: set[tuple[int, int]]
    on_time: set[tuple[int, int]] = field(default_factory=set)
    before_recovery: set[tuple[int, int]] = field(default_factory=set)
    final: set[tuple[int, int]] = field(default_factory=set)

    def counts(self) -> dict[str, int]:
        collected = self.final & self.expected
        on_time = self.on_time & collected
        by_meter = (self.before_recovery & collected) - on_time
        recovered = collected - on_time
        return {
            "expected_meter_days": len(self.expected),
            "collected_meter_days": len(collected),
            "on_schedule_meter_days": len(on_time),
            "recovered_meter_days": len(recovered),
            "recovered_by_meter_meter_days": len(by_meter),
            "recovered_by_headend_meter_days": len(recovered - by_meter),
            "missing_meter_days": len(self.expected - collected),
        }


class FleetRun:
    """Rig + fleet process + count; `run()` returns the result dict."""

    def __init__(self, opts: RunOptions) -> None:
        LoadProfile(opts.csv)  # fleet and boards read it: a bad one stops us before anything runs
        self.o = opts
        self.fleet_ids = list(range(opts.first_id, opts.first_id + opts.meters))
        self.board_ids = list(range(opts.board_first_id, opts.board_first_id + opts.boards))
        self.meter_ids = self.board_ids + self.fleet_ids
        self.day1, self.end = timeline(opts.start, opts.days, opts.window_end)
        # the evening assignment, after the last meter was installed; the fleet starts
        # its installation when it starts (after the boards, up to START_MARGIN_S late)
        t = opts.start + opts.install_s + START_MARGIN_S
        self.assign = -(-t // 1800) * 1800  # on the half hour
        if self.assign > self.day1 - 1800:
            raise ProfileError(
                f"installation ({opts.install_s} s from {iso(opts.start)}) plus "
                f"{START_MARGIN_S} s of start-up must end before 23:00 of the first evening"
            )
        self.legs = self._idle_legs()
        self.days = [self.day1 + k * DAY for k in range(opts.days)]
        self.tally = Tally({(m, d) for m in self.meter_ids for d in self.days})
        self.jobs: list[int] = []
        self.recovery: dict[str, Any] = {}
        self.fleet_result: dict[str, Any] = {}
        self.fleet_rc: int | None = None
        self.headend_frames = 0
        self.headend_batches = 0
        self.registered = 0
        self.feed: FeedReader | None = None
        self.t_start = time.monotonic()
        # the rig's temp dir goes in a dir of our own, made when the run starts (a FleetRun
        # only built leaves nothing behind) and removed at its end unless --keep (`tidy`)
        self.workdir: Path | None = None

    @staticmethod
    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    def run(self) -> dict[str, Any]:
        """The whole run; SIGINT/SIGTERM stop it (`hil.supervise.Stopped`), a child
        that dies stops it (`hil.supervise.ChildDied`); either way after cleaning up."""
        try:
            return run(self._main)
        finally:
            self.tidy()

    def tidy(self) -> None:
        """Remove the run's directory (or say where it is kept, with --keep)."""
        if self.workdir is None:
            return
        if self.o.keep:
            self.say(f"run: kept {self.workdir}")
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def main(self, what: str) -> int:
        """Run; print the summary and the JSON line; the exit status (0: ok)."""
        try:
            result = self.run()
        except (ChildDied, RigError, BoardError) as e:
            print(f"{what}: error: {e}", file=sys.stderr)
            return 1
        except Stopped as e:
            return stopped(what, e)
        print(self.human(result))
        print(json.dumps(result), flush=True)
        return 0 if self.ok(result) else 1

    # -- the run -------------------------------------------------------------------------------

    def _headend_config(self) -> dict[str, Any]:
        total = len(self.meter_ids)
        speed = self.o.speed
        return {
            "poll_s": 0.1,
            **headend_timeouts(speed),
            # the evening assignment sends every meter its schedule at once: the acks
            # of thousands take the head-end real seconds (FLEET.md "Scale")
            "schedule_ack_timeout_s": max(
                headend_timeouts(speed)["schedule_ack_timeout_s"],
                int(total * ASSIGN_REAL_S_PER_METER * speed),
            ),
            "assign_at": iso(self.assign)[11:16],
            "window_start": WINDOW_START,
            "window_end": self.o.window_end,
            "group_minutes": GROUP_MINUTES,
            "group_capacity": max(1, math.ceil(total / self.groups())),
            "worker": "fleet-headend",
            "daily_check_at": self.o.daily_check_at,
            **dict(self.o.headend),
        }

    def _idle_legs(self) -> tuple[Leg, ...]:
        o = self.o
        if o.idle_speed <= o.speed:
            return ()
        if o.boards or o.ondemand:
            raise ProfileError(
                "--idle-speed runs no boards (their RTCs keep one speed) and no reads"
            )
        check = parse_hhmm("daily_check_at", o.daily_check_at)
        at = check.hour * 3600 + check.minute * 60
        legs = []
        for k in range(o.days):
            day = self.day1 + k * DAY
            a = day + at + (3600 if k == 0 else RECOVERY_LEG_S)
            b = day + DAY - 1800
            if a < b:
                legs.append((float(a), float(b), float(o.idle_speed)))
        return tuple(legs)

    def real_s(self, a: float, b: float) -> float:
        """Real seconds from simulated ``a`` to ``b`` on this run's clock (legs too)."""
        clock = Clock(float(self.o.speed), float(a), 1.0, self.legs)
        return clock.real_at(b) - 1.0

    def groups(self) -> int:
        """Read groups in the window: the meters are spread evenly over all of them."""
        ws = parse_hhmm("window_start", WINDOW_START)
        we = parse_hhmm("window_end", self.o.window_end)
        span = (we.hour - ws.hour) * 60 + we.minute - ws.minute
        return max(1, math.ceil(span / GROUP_MINUTES))

    def _board_options(self, i: int) -> dict[str, Any]:
        return {"csv": self.o.csv, "scale_pct": 60 + 25 * i}

    async def _main(self) -> dict[str, Any]:
        o = self.o
        self.workdir = Path(tempfile.mkdtemp(prefix="ami-fleet-"))
        self.say(
            f"run: {len(self.meter_ids)} meters ({o.boards} virtual boards, {o.meters} fleet), "
            f"{o.days} day(s) from {iso(self.day1)}, x{o.speed}; simulated {iso(o.start)} .. "
            f"{iso(self.end)} (~{self.real_s(o.start, self.end):.0f} s real)"
        )
        async with Rig(
            workdir=self.workdir,
            boards=o.boards,
            speed=o.speed,
            sim_start=o.start,
            first_id=o.board_first_id,
            board_options=self._board_options,
            headend=self._headend_config(),
            keep=o.keep,
            say=lambda s: self.say(f"rig: {s}"),
            sniff=False,
            readers=(READER,) if o.feed else (),
            admit=() if o.meters_per_conn > 1 else tuple(self.fleet_ids),
            gateways=partition(self.fleet_ids, o.meters_per_conn) if o.meters_per_conn > 1 else (),
            insecure=o.insecure,
            clock_legs=self.legs,
        ) as rig:
            assert rig.config is not None and rig.broker is not None and rig.service is not None
            tb = rig.clock
            snaps = Snapshots(rig.config.database)
            host, port, ca = rig.broker.meter_link()
            if o.feed:  # before any meter sends: every publication is seen
                self.feed = FeedReader(rig.broker, rig.config.realtime_topic)
                await self.feed.start()
            fleet = await self._spawn_fleet(tb, host, port, ca)
            try:
                if fleet is not None:
                    rig.guard.add(fleet)
                await self._collect(rig, tb, snaps)
                await self._recover(rig, tb, snaps)
                await self._end_fleet(fleet)
            finally:
                if fleet is not None:
                    rig.guard.discard(fleet)
                    await fleet.stop()
                snaps.close()
                if self.feed is not None:
                    await self.feed.stop()
            self.headend_frames = rig.service.frames
            self.headend_batches = rig.service.batches
            ondemand_stats = await self._ondemand_stats(rig)
        return self._result(ondemand_stats)

    async def _spawn_fleet(self, tb: Clock, host: str, port: int, ca: Path | None) -> Child | None:
        o = self.o
        if not o.meters:
            self.fleet_rc = 0
            return None
        argv = [
            sys.executable,
            "-m",
            "hil",
            "fleet",
            "--broker",
            f"{host}:{port}",
            "--meters",
            str(o.meters),
            "--days",
            str(o.days),
            "--speed",
            str(o.speed),
            "--start",
            str(int(tb.start)),
            "--real-start",
            repr(tb.anchor),
            "--end",
            str(self.end),
            "--seed",
            str(o.seed),
            "--profile-mix",
            o.profile_mix,
            "--first-id",
            str(o.first_id),
            "--csv",
            str(o.csv),
            "--tick-s",
            str(o.tick_s),
            "--install-s",
            str(o.install_s),
            "--push-mask",
            hex(o.push_mask),
            "--meters-per-conn",
            str(o.meters_per_conn),
            "--hold",
            "--quiet",
        ]
        for text in o.outages:
            argv += ["--outage", text]
        for a, b, v in self.legs:
            argv += ["--fast", f"{iso(a)}/{iso(b)}/{v:g}"]
        if ca is not None:  # the meters log in over TLS (their passwords: from their keys)
            argv += ["--ca", str(ca)]
        return await Child.spawn(
            "the fleet process (python -m hil fleet)",
            argv,
            echo=self.say,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            cwd=ROOT,
        )

    async def _end_fleet(self, fleet: Child | None) -> None:
        """Close the fleet's stdin (--hold: EOF ends it) and take its JSON line."""
        if fleet is None:
            return
        proc = fleet.proc
        fleet.expect_exit()
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.close()
        try:
            out = await asyncio.wait_for(proc.stdout.read(), 60)
        except TimeoutError:
            out = b""
        try:
            self.fleet_rc = await asyncio.wait_for(fleet.wait(), 30)
        except TimeoutError:
            self.fleet_rc = await fleet.stop()
        lines = [ln for ln in out.decode(errors="replace").splitlines() if ln.startswith("{")]
        if lines:
            self.fleet_result = json.loads(lines[-1])

    def _snapshots(self) -> list[tuple[int, int]]:
        """(simulated time, day) of each on-schedule snapshot."""
        we = parse_hhmm("window_end", self.o.window_end)
        after = we.hour * 3600 + we.minute * 60 + ON_TIME_MARGIN_S
        return [(d + DAY + after, d) for d in self.days]

    def _ondemand_plan(self) -> list[tuple[int, int]]:
        """(simulated time, meter) of each on-demand read: daytime of the 2nd full day
        (1st if only one), 09:00-17:00, boards and fleet meters alike."""
        if not self.o.ondemand:
            return []
        rng = random.Random(self.o.seed + 7)
        day = self.days[1] if len(self.days) > 1 else self.days[0]
        times = sorted(rng.uniform(day + 9 * 3600, day + 17 * 3600) for _ in range(self.o.ondemand))
        return [(int(t), rng.choice(self.meter_ids)) for t in times]

    async def _collect(self, rig: Rig, tb: Clock, snaps: Snapshots) -> None:
        due = self._snapshots()
        reads = self._ondemand_plan()
        next_note = time.monotonic() + self.o.progress_s
        while True:
            now = tb.now()
            while due and now >= due[0][0]:
                _, day = due.pop(0)
                got = await snaps.complete(self.meter_ids, [day])
                self.tally.on_time |= got
                self.say(
                    f"run: {iso(now)}  day {iso(day)[:10]} collected on schedule: "
                    f"{len(got)}/{len(self.meter_ids)} meters"
                )
            while reads and now >= reads[0][0]:
                _, mid = reads.pop(0)
                with contextlib.suppress(StoreError):  # an unregistered meter: not asked
                    self.jobs.append(await rig.request_read(mid, requester="demo"))
            if now >= self.end:
                break
            if time.monotonic() >= next_note:
                next_note = time.monotonic() + self.o.progress_s
                await self._progress(rig, now)
            await asyncio.sleep(0.1)

    async def _progress(self, rig: Rig, now: float) -> None:
        assert rig.service is not None
        registered = len(await rig.registered())
        done = len(self.tally.on_time)
        day_no = (now - self.day1) / DAY
        self.say(
            f"run: {iso(now)}  day {day_no:+.1f}/{self.o.days}  "
            f"real {time.monotonic() - self.t_start:.0f} s  registered {registered}/"
            f"{len(self.meter_ids)}  head-end frames {rig.service.frames}  "
            f"meter-days on schedule {done}/{len(self.tally.expected)}  "
            f"on-demand queued {len(self.jobs)}"
        )

    async def _recover(self, rig: Rig, tb: Clock, snaps: Snapshots) -> None:
        """Wait for the head-end's own recovery (daily check, recovery reads), then count."""
        have = await snaps.complete(self.meter_ids, self.days)
        self.tally.before_recovery = have
        known = await rig.registered()
        self.registered = len(known)
        self.say(
            f"run: {iso(tb.now())}  after the last window: {len(have)}/{len(self.tally.expected)}"
            " meter-days complete; the head-end recovers the rest by itself"
        )
        last_check = self.days[-1]
        # the wait counts from the last daily check (a slow clock takes long to reach it)
        check = parse_hhmm("daily_check_at", self.o.daily_check_at)
        at = last_check + DAY + check.hour * 3600 + check.minute * 60
        end = time.monotonic() + max(0.0, tb.real_at(at) - time.time()) + self.o.settle_wait_s
        while time.monotonic() < end:
            # one call, the check's record first: a daily check run between two calls would
            # leave its new days out of ``rows`` while ``done`` already counts it
            checked, rows = await rig.call(
                lambda he: (he.report("stats", 0).rows, he.missing_days())
            )
            done = any(r[0] == iso(last_check)[:10] for r in checked)
            if done and all(self._settled(r) for r in rows):
                break
            await asyncio.sleep(0.2)
        self.recovery = await rig.call(
            lambda he: recovery_figures(he, self.days, tb.now_ms(), self.o.speed, self.o.outages)
        )
        self.tally.final = await snaps.complete(self.meter_ids, self.days)

    def _settled(self, r: MissingDay) -> bool:
        if r.state in (MissingState.RECOVERED, MissingState.UNSUCCESSFUL):
            return True
        if r.state is MissingState.RECOVERING:
            return False
        return not self.o.settle_all and r.attempts >= 1

    async def _ondemand_stats(self, rig: Rig) -> dict[str, Any]:
        lat: list[float] = []
        failed = 0
        open_ = 0
        for j in self.jobs:
            job = await rig.job(j)
            if job.state is JobState.DONE and job.latency_ms is not None:
                lat.append(job.latency_ms / 1000 / self.o.speed)  # simulated ms -> real s
            elif job.state is JobState.FAILED:
                failed += 1
            else:
                open_ += 1
        p80, p99 = percentile(lat, 80), percentile(lat, 99)
        return {
            "ondemand_requested": len(self.jobs),
            "ondemand_done": len(lat),
            "ondemand_failed": failed,
            "ondemand_open": open_,
            "ondemand_p80_s": round(p80, 3) if p80 is not None else None,
            "ondemand_p99_s": round(p99, 3) if p99 is not None else None,
            "ondemand_p80_sim_s": round(p80 * self.o.speed, 1) if p80 is not None else None,
            "ondemand_p99_sim_s": round(p99 * self.o.speed, 1) if p99 is not None else None,
        }

    def _result(self, od: dict[str, Any]) -> dict[str, Any]:
        f = self.fleet_result
        real_s = time.monotonic() - self.t_start
        out: dict[str, Any] = {
            "meters": len(self.meter_ids),
            "boards": self.o.boards,
            "fleet_meters": self.o.meters,
            "days": self.o.days,
            "speed": self.o.speed,
            "first_day": iso(self.day1),
            **self.tally.counts(),
            "predicted_missing_meter_days": f.get("predicted_missing_meter_days"),
            **od,
            "headend": self.recovery,
            "headend_agrees": self.recovery.get("missing_meter_days")
            == self.tally.counts()["missing_meter_days"],
            "registered_meters": self.registered,
            "headend_frames": self.headend_frames,
            "fleet_frames_sent": f.get("frames_sent"),
            "fleet_frames_acked": f.get("frames_acked"),
            "fleet_frames_not_taken": f.get("frames_not_taken_by_link"),
            "fleet_uplinks": f.get("uplinks"),
            "fleet_ack_latency_real_ms": f.get("ack_latency_real_ms"),
            "fleet_ack_latency_worst_hours": f.get("ack_latency_worst_hours"),
            "failures_injected": f.get("failures_injected"),
            "meter_events": f.get("meter_events"),
            "sync_failed": f.get("sync_failed"),
            "fleet_core_errors": f.get("core_errors"),
            "fleet_exit": self.fleet_rc,
            "fleet_slow_passes": f.get("slow_passes"),
            "real_s": round(real_s, 1),
            # the scale figures (FLEET.md "Scale"); the head-end runs in this process
            "meter_days": len(self.tally.expected),
            "collected": len(self.tally.final & self.tally.expected),
            "wall_s": round(real_s, 1),
            "peak_rss_mb": {"fleet": f.get("peak_rss_mb"), "headend": peak_rss_mb()},
            "uplinks_per_s": round(self.headend_frames / real_s, 1) if real_s else None,
            "headend_batches": self.headend_batches,
            "fleet_connections": f.get("connections"),
        }
        if self.feed is not None:  # H04: what a real-time reader of every meter received
            collected = self.tally.final & self.tally.expected
            out["realtime_messages"] = self.feed.messages
            out["realtime_bad"] = self.feed.bad
            out["realtime_meter_days"] = len(self.feed.covered(collected))
        return out

    # -- verdict and words -----------------------------------------------------------------------

    @staticmethod
    def ok(r: dict[str, Any]) -> bool:
        """Every meter-day accounted for, nothing missing that could have been fetched, and
        the head-end's own count of missing meter-days the same."""
        return bool(
            r["collected_meter_days"] + r["missing_meter_days"] == r["expected_meter_days"]
            and r["headend_agrees"]
            and r["fleet_exit"] == 0
            and r["missing_meter_days"] <= (r["predicted_missing_meter_days"] or 0)
            and r.get("realtime_meter_days", r["collected_meter_days"]) == r["collected_meter_days"]
            and not r.get("realtime_bad")
        )

    @staticmethod
    def human(r: dict[str, Any]) -> str:
        fi = r.get("failures_injected") or {}
        lines = [
            f"{r['meters']} meters ({r['boards']} virtual boards on MicroPython, "
            f"{r['fleet_meters']} fleet meters), {r['days']} day(s) from {r['first_day'][:10]} "
            f"at x{r['speed']}, {r['real_s']:.0f} s real",
            f"  meter-days expected {r['expected_meter_days']}: collected "
            f"{r['collected_meter_days']} ({r['on_schedule_meter_days']} on schedule, "
            f"{r['recovered_meter_days']} recovered: {r['recovered_by_meter_meter_days']} by the "
            f"meters' catch-up reads, {r['recovered_by_headend_meter_days']} by head-end recovery "
            f"reads), missing {r['missing_meter_days']} "
            f"(predicted {r['predicted_missing_meter_days']}: offline through the end)",
            f"  failures injected: {fi.get('offline_meters', 0)} meters offline a day, "
            f"{fi.get('intermittent_meters', 0)} intermittent ({fi.get('link_drops', 0)} link "
            f"drops), {fi.get('slow_meters', 0)} slow links, {fi.get('skewed_meters', 0)} "
            "skewed clocks",
            f"  head-end: {r['headend_frames']} uplinks handled; fleet sent "
            f"{r['fleet_frames_sent']} frames, {r['fleet_frames_acked']} acknowledged",
            f"  meter events: {r.get('meter_events')}; time-sync failures by reason "
            f"{r.get('sync_failed')}",
        ]
        if r.get("ondemand_requested"):
            lines.append(
                f"  on-demand reads: {r['ondemand_requested']} requested, {r['ondemand_done']} "
                f"done, {r['ondemand_failed']} failed; request to stored answer p80 "
                f"{r['ondemand_p80_s']} s, p99 {r['ondemand_p99_s']} s real "
                f"({r['ondemand_p80_sim_s']} s / {r['ondemand_p99_sim_s']} s simulated)"
            )
        if "realtime_messages" in r:
            lines.append(
                f"  real-time feed (H04): {r['realtime_messages']} messages to a reader of every "
                f"meter; {r['realtime_meter_days']} of the {r['collected_meter_days']} collected "
                "meter-days came in it whole"
                + (f", {r['realtime_bad']} not of the feed's shape" if r["realtime_bad"] else "")
            )
        h = r.get("headend") or {}
        d = h.get("d08") or {}
        lines.append(
            f"  head-end D08 (its own count): {h.get('meters_checked')} meters x "
            f"{h.get('days')} day(s) checked, on schedule {d.get('on_schedule')}, recovered by "
            f"recovery reads {d.get('recovered_by_read')}, by the meters' own reads "
            f"{d.get('recovered_by_meter')}, unsuccessful {d.get('unsuccessful')}, in progress "
            f"{d.get('in_progress')}: missing {h.get('missing_meter_days')} "
            f"({'agrees with' if r.get('headend_agrees') else 'DIFFERS from'} the count above); "
            f"{h.get('recovery_reads')} recovery reads, at most {h.get('peak_in_flight')} "
            "reads in flight"
        )
        return "\n".join(lines)


def reachable_ms(outages: tuple[str, ...]) -> Callable[[int, int], int]:
    """(meter id, ms) -> when from that time on the meter could be read: the end of the
    fleet outage (down or mute) it was in then, else that time."""
    by_meter: dict[int, list[Outage]] = {}
    for text in outages:
        mid, o = parse_outage(text)
        by_meter.setdefault(mid, []).append(o)

    def at(mid: int, ms: int) -> int:
        return next((o.end * 1000 for o in by_meter.get(mid, ()) if o.holds(ms / 1000)), ms)

    return at


def recovery_figures(
    he: Headend, days: list[int], now_ms: int, speed: float, outages: tuple[str, ...] = ()
) -> dict[str, Any]:
    """The head-end's own account of the run's days: its D08 statistics summed over
    ``days`` (collection days, UTC midnights), and of its recovery: meter-days found
    (``missing_before``), recovered, unsuccessful, recovery reads, and the most reads
    ever in flight at once (from the jobs' send and end times).

    Times, simulated minutes: ``recovery_sim_minutes`` (N05, H09), the longest a day
    that a recovery read brought back waited from being found missing, or from its
    meter's injected outage (``outages``, the fleet's --outage strings) ending if it was
    unreachable then, or from being re-opened (given up, its meter heard again), to being
    recovered (the throttle's queue and the retries
    included; days that came back by the meter's own next read are the meter's doing);
    ``recovery_span_sim_minutes``, from the first recovery read to the last day
    resolved any way (a meter offline for days stretches it)."""
    labels = {iso(d)[:10] for d in days}
    stats = [r for r in he.report("stats", now_ms).records() if r["day"] in labels]
    total = {k: sum(int(r[k] or 0) for r in stats) for k in STATS}
    rows = [r for r in he.missing_days() if iso(r.day + DAY // 2)[:10] in labels]
    reads = [j for j in he.jobs() if j.requester == "recovery"]
    first = min((j.sent_ms for j in reads if j.sent_ms is not None), default=None)
    last = max((r.resolved_ms for r in rows if r.resolved_ms is not None), default=None)
    span = (last - first) / 60_000 if first is not None and last is not None else None
    reachable = reachable_ms(outages)
    waits = [
        r.resolved_ms - (r.reopened_ms or reachable(r.meter_id, r.found_ms))
        for r in rows
        if r.resolved_ms is not None and (r.pathway or "").startswith(RECOVERED_BY_READ)
    ]
    minutes = max(waits) / 60_000 if waits else None
    spans = [(j.sent_ms, j.done_ms or now_ms) for j in he.jobs() if j.sent_ms is not None]
    return {
        "days": len(stats),
        "meters_checked": max((int(r["meters"] or 0) for r in stats), default=0),
        "d08": total,
        "missing_meter_days": total["unsuccessful"] + total["in_progress"],
        "missing_before": len(rows),
        "recovered": sum(r.state is MissingState.RECOVERED for r in rows),
        "unsuccessful": sum(r.state is not MissingState.RECOVERED for r in rows),
        "recovery_reads": len(reads),
        "recovered_by_read": len(waits),
        "recovery_sim_minutes": round(minutes, 1) if minutes is not None else None,
        "recovery_real_s": round(minutes * 60 / speed, 1) if minutes is not None else None,
        "recovery_span_sim_minutes": round(span, 1) if span is not None else None,
        "peak_in_flight": peak(spans),
    }


STATS = ("on_schedule", "recovered_by_read", "recovered_by_meter", "unsuccessful", "in_progress")


def peak(spans: list[tuple[int, int]]) -> int:
    """Most spans [start, end) open at once."""
    edges = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans])
    best = cur = 0
    for _, d in edges:
        cur += d
        best = max(best, cur)
    return best
