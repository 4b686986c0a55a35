"""`python -m hil fleet`: N simulated meters in one process against the head-end.

Each meter is the real firmware core (`firmware/meter/meter.py` on CPython)
with its own in-RAM NOR flash, its own RTC error (skew, drift), its own
share of the reference load profile and a failure profile (offline days,
intermittent link, slow link, skewed clock), speaking MQTT through the
firmware's own client, one connection per meter, or K meters per connection
with ``--meters-per-conn K`` (a gateway login each; see hil/FLEET.md). One
event loop steps every meter; simulated time is shared with the head-end
(same start, same real start instant, same speed).

With ``--broker`` it is a load generator for a head-end that is already
running on the same simulated time (pass its ``--start``/``--real-start``/
``--speed``). Without, it runs the whole rig itself: a private mosquitto,
the head-end service on SQLite, the fleet in a second process, then counts
what the head-end holds. Progress goes to stderr; the last stdout line is
one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import resource
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from headend.api import Clock, check_legs, parse_hhmm
from hil.board import master_key
from hil.fleet_gateway import Gateway, partition
from hil.fleet_meter import DEFAULT_PUSH_MASK, NO_SYNC_FAILED_PUSH, FleetMeter, Stats, key_for
from hil.fleet_profile import (
    DAY,
    DEFAULT_MIX,
    LoadProfile,
    MeterPlan,
    Outage,
    ProfileError,
    describe,
    parse_mix,
    plan_fleet,
)
from hil.fleet_time import iso, parse_utc
from hil.loadprofile import DEFAULT_CSV
from hil.stats import percentiles
from protocol.auth import mqtt_user_password

DEFAULT_START = "2024-04-01T14:00:00Z"  # a Monday afternoon; the CSV starts that day
FIRST_ID = 100_001
DEFAULT_SPEED = 1200  # see FLEET.md "Time": what the head-end keeps up with
INSTALL_S = 3 * 3600  # meters are installed over three simulated hours (see FLEET.md)
SLICE_REAL_S = 0.002  # real time between two slices of a tick
SYNC_REASONS = {1: "timeout", 2: "delay", 3: "bad_reply"}


def timeline(start: int, days: int, window_end: str) -> tuple[int, int]:
    """(first full day, end of the run): the run ends 30 minutes after the
    collection window that follows the last of ``days`` full days."""
    day1 = start - start % DAY + DAY
    we = parse_hhmm("window_end", window_end)
    end = day1 + days * DAY + we.hour * 3600 + we.minute * 60 + 30 * 60
    return day1, end


def covered(plan: MeterPlan, a: int, b: int) -> bool:
    """The meter's link is down for the whole of [a, b)."""
    return any(o.start <= a and o.end >= b for o in plan.outages)


def predicted_missing(plans: Sequence[MeterPlan], day1: int, days: int, end: int) -> int:
    """Meter-days whose every chance of collection falls in an outage that lasts
    past the end of the run (nothing can fetch them)."""
    n = 0
    for p in plans:
        for k in range(days):
            if covered(p, day1 + (k + 1) * DAY, end + 3600):
                n += 1
    return n


class Fleet:
    """N FleetMeters on one event loop. Args: plans; tb: shared time;
    broker: (host, port); load: the profile; master: key master;
    install: true time of the first installation; tick_s: simulated seconds
    between two steps of a meter; tls: (CA file, None, server name), or None
    for plain MQTT."""

    def __init__(
        self,
        plans: Sequence[MeterPlan],
        tb: Clock,
        broker: tuple[str, int],
        load: LoadProfile,
        master: bytes,
        install: int,
        tick_s: float = 30.0,
        spread_s: int = INSTALL_S,
        push_mask: int = DEFAULT_PUSH_MASK,
        tls: tuple[str, None, str] | None = None,
        per_conn: int = 1,
    ) -> None:
        self.plans = list(plans)
        self.tb = tb
        self.stats = Stats()
        keys = key_for(master)
        n = max(1, len(plans))
        self.meters = [
            FleetMeter(
                p,
                tb,
                load,
                broker,
                keys(p.meter_id),
                self.stats,
                install + i * spread_s // n,
                push_mask=push_mask,
                tls=tls,
            )
            for i, p in enumerate(plans)
        ]
        # multiplexed mode: K meters per connection, each gateway its own login
        self.gateways: list[Gateway] = []
        if per_conn > 1:
            rng = random.Random(len(plans))
            for name, ids in partition([p.meter_id for p in plans], per_conn):
                gw = Gateway(
                    name,
                    ids,
                    broker,
                    mqtt_user_password(master, name),
                    tls,
                    lambda: rng.getrandbits(16),
                )
                self.gateways.append(gw)
            by_id = {m.id: m for m in self.meters}
            for gw in self.gateways:
                for mid in gw.ids:
                    by_id[mid].join(gw)
        self.tick_real = max(0.02, tick_s / tb.speed)
        self.passes = 0
        self.started = time.monotonic()
        self.slow_passes = 0  # a pass took longer than a tick (the fleet is behind)
        self._new_links = 0

    async def _step(self, m: FleetMeter, now_ms: int) -> None:
        if not m.booted:
            if m.install * 1000 > now_ms:
                return
            m.boot(now_ms)
        want = m.want_link(now_ms / 1000)
        if want and not m.linked():
            if m.gateway is None:
                if self._new_links <= 0:
                    return  # a few connections per slice: no SYN storm at the broker
                self._new_links -= 1
            await m.link_up()
        elif not want and m.linked():
            self.stats.link_drops += 1
            await m.link_down()
        frames = m.step(now_ms)
        if frames:
            await m.send(frames)

    async def run(
        self, end: float, hold: asyncio.Event | None = None, progress_s: float = 5.0
    ) -> None:
        """Step every meter until simulated time ``end`` (and, if ``hold`` is given,
        until it is set: the meters stay up for the head-end's recovery reads).

        Each tick is cut into slices a few real ms apart and every meter is
        stepped in its own slice, so what the meters send is spread over the
        tick as from a real fleet, not sent in one burst per tick (a burst
        would queue at the head-end and, at high speed, look like a slow
        head-end to the meters' retry timers).
        """
        n = len(self.meters)
        # the installation spread starts when the fleet does (the rig's boards may
        # have taken simulated hours to start): never a burst of late installs
        late = int(self.tb.now()) - self.meters[0].install if self.meters else 0
        if late > 0:
            for m in self.meters:
                m.install += late
        for gw in self.gateways:
            gw.start()
        k = max(1, min(n, int(self.tick_real / SLICE_REAL_S)))
        slices = [self.meters[j::k] for j in range(k)]
        next_note = time.monotonic() + progress_s
        while True:
            t0 = time.monotonic()
            now_ms = self.tb.now_ms()
            if now_ms >= end * 1000 and (hold is None or hold.is_set()):
                break
            self._new_links = 8
            for j, group in enumerate(slices):
                now_ms = self.tb.now_ms()
                for m in group:
                    await self._step(m, now_ms)
                await asyncio.sleep(max(0.0, t0 + (j + 1) * self.tick_real / k - time.monotonic()))
            self.passes += 1
            if time.monotonic() - t0 > self.tick_real * 1.5:
                self.slow_passes += 1
            if progress_s and time.monotonic() >= next_note:
                next_note = time.monotonic() + progress_s
                print(self.progress(now_ms / 1000), file=sys.stderr, flush=True)

    def progress(self, now: float) -> str:
        s = self.stats
        booted = sum(m.booted for m in self.meters)
        online = sum(m.online() for m in self.meters)
        reg = sum(m.core.registered for m in self.meters if m.booted)
        p90 = percentiles([x * 1000 for x in s.ack_s[-2000:]]).get("p90")
        return (
            f"fleet: {iso(now)}  meters {booted}/{len(self.meters)} up {online} reg {reg}  "
            f"frames up {sum(s.up.values())} down {sum(s.down.values())}  "
            f"read_acks {s.down['read_ack']} (p90 {p90} ms)  "
            f"link drops {s.link_drops}  "
            f"sync failed {s.events['sync_failed']}  errors {s.errors}"
        )

    def acked_days(self, day1: int, days: int) -> int:
        """Meter-days the meters saw acknowledged by the head-end (their own view)."""
        n = 0
        for m in self.meters:
            a = m.acked_until()
            n += max(0, min(days, (a - day1) // DAY))
        return n

    async def close(self) -> None:
        await asyncio.gather(*(m.close() for m in self.meters), return_exceptions=True)
        await asyncio.gather(*(g.close() for g in self.gateways), return_exceptions=True)

    def summary(self, day1: int, days: int, end: int) -> dict[str, Any]:
        s = self.stats
        plans = self.plans
        now_ms = self.tb.now_ms()
        errs = [abs(m.clock_error_s(now_ms)) for m in self.meters if m.booted]
        acks = ("read_ack", "event_ack", "register_ack")
        return {
            "meters": len(plans),
            "connections": len(self.gateways) or len(plans),
            "days": days,
            "speed": int(self.tb.speed),
            "start": iso(self.tb.start),
            "first_day": iso(day1),
            "end": iso(end),
            "real_s": round(time.monotonic() - self.started, 1),
            "profiles": describe(plans),
            "frames_sent": sum(s.up.values()),
            "frames_acked": sum(s.down[a] for a in acks),
            "uplinks": dict(sorted(s.up.items())),
            "downlinks": dict(sorted(s.down.items())),
            "failures_injected": {
                "offline_meters": sum(p.profile == "offline" for p in plans),
                "intermittent_meters": sum(p.profile == "intermittent" for p in plans),
                "outages_planned": sum(1 for p in plans for o in p.outages if o.start < end),
                "link_drops": s.link_drops,
                "slow_meters": sum(p.latency_s > 0 for p in plans),
                "skewed_meters": sum(abs(p.skew_s) > 20 for p in plans),
            },
            "meter_events": dict(sorted(s.events.items())),
            "meter_events_by_profile": dict(sorted(s.by_profile.items())),
            "sync_failed": {
                SYNC_REASONS.get(k, str(k)): v for k, v in sorted(s.sync_failed.items())
            },
            "clock_error_max_s": round(max(errs), 1) if errs else 0,
            "registered": sum(m.core.registered for m in self.meters if m.booted),
            "expected_meter_days": len(plans) * days,
            "acked_meter_days_meter_view": self.acked_days(day1, days),
            "predicted_missing_meter_days": predicted_missing(plans, day1, days, end),
            "frames_not_taken_by_link": s.dropped,
            "frames_lost_on_mute_links": s.muted,
            "ack_latency_real_ms": percentiles([x * 1000 for x in s.ack_s]),
            "ack_latency_worst_hours": _worst_hours(s.ack_at, s.ack_s),
            "core_errors": s.errors,
            "slow_passes": self.slow_passes,
            "passes": self.passes,
            "peak_rss_mb": peak_rss_mb(),
        }


def _worst_hours(hours: list[int], lat: list[float], n: int = 6) -> dict[str, float]:
    """The simulated hours with the slowest acks: hour -> p90 real ms."""
    by: dict[int, list[float]] = {}
    for h, x in zip(hours, lat, strict=False):
        by.setdefault(h, []).append(x * 1000)
    p90 = {h: percentiles(v)["p90"] for h, v in by.items()}
    worst = sorted(p90, key=lambda h: -p90[h])[:n]
    return {iso(h * 3600)[:13]: p90[h] for h in sorted(worst)}


def peak_rss_mb() -> int:
    """This process's peak resident set (Linux: ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024


def raise_fd_limit(need: int) -> None:
    """One socket per meter: lift the soft limit of open files towards the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, need))
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    if want < need:
        print(f"fleet: only {want} open files allowed for {need} sockets", file=sys.stderr)


def parse_outage(text: str) -> tuple[int, Outage]:
    """``ID:FROM/TO[/mute]`` (UTC, ISO 8601 or seconds) -> (meter id, outage)."""
    mid, _, span = text.partition(":")
    a, _, rest = span.partition("/")
    b, _, kind = rest.partition("/")
    try:
        if kind not in ("", "mute"):
            raise ValueError(f"expected /mute or nothing after TO, got /{kind}")
        return int(mid), Outage(parse_utc(a), parse_utc(b), mute=kind == "mute")
    except ValueError as e:
        raise ProfileError(f"--outage: expected ID:FROM/TO[/mute], got {text!r} ({e})") from e


def build_plans(args: argparse.Namespace, day1: int, end: int) -> list[MeterPlan]:
    plans = plan_fleet(
        args.meters,
        args.first_id,
        parse_mix(args.profile_mix),
        args.seed,
        parse_utc(args.start),
        day1,
        args.days,
        end,
    )
    extra: dict[int, list[Outage]] = {}
    for text in args.outage or ():
        mid, o = parse_outage(text)
        extra.setdefault(mid, []).append(o)
    out = []
    for p in plans:
        if p.meter_id in extra:
            p = MeterPlan(
                p.meter_id,
                "offline",
                p.scale_pct,
                p.shift_days,
                p.skew_s,
                p.drift_ppm,
                p.latency_s,
                tuple(extra[p.meter_id]),
            )
        out.append(p)
    return out


async def run_fleet(args: argparse.Namespace) -> dict[str, Any]:
    """The fleet alone, against a broker and head-end already running."""
    host, _, port = args.broker.removeprefix("mqtt://").rpartition(":")
    start = parse_utc(args.start)
    tb = Clock(
        float(args.speed), float(start), args.real_start or time.time(), tuple(args.fast or ())
    )
    day1, end = timeline(start, args.days, args.window_end)
    if args.end:
        end = parse_utc(args.end)
    plans = build_plans(args, day1, end)
    per_conn = max(1, args.meters_per_conn)
    raise_fd_limit(-(-len(plans) // per_conn) + 256)
    fleet = Fleet(
        plans,
        tb,
        (host or "127.0.0.1", int(port)),
        LoadProfile(args.csv),
        master_key(args.master_key_file),
        start,
        args.tick_s,
        spread_s=args.install_s,
        push_mask=args.push_mask,
        tls=(str(args.ca.resolve()), None, args.server_name) if args.ca else None,
        per_conn=per_conn,
    )
    hold: asyncio.Event | None = None
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if args.hold:
        hold = asyncio.Event()
        loop.add_reader(sys.stdin.fileno(), lambda: _stdin_closed(hold))
    print(
        f"fleet: {len(plans)} meters {describe(plans)} from {iso(start)}, "
        f"{args.days} day(s) from {iso(day1)} to {iso(end)} at x{args.speed} "
        f"(~{tb.real_at(end) - time.time():.0f} s real), broker {host}:{port}",
        file=sys.stderr,
        flush=True,
    )
    runner = asyncio.create_task(fleet.run(end, hold, 0 if args.quiet else args.progress_s))
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait({runner, stopper}, return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    if not runner.done():
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
    else:
        runner.result()
    if args.hold:
        loop.remove_reader(sys.stdin.fileno())
    out = fleet.summary(day1, args.days, end)
    await fleet.close()
    return out


def fast_leg(text: str) -> tuple[float, float, float]:
    """``FROM/TO/SPEED`` (UTC instants, a speed) -> a clock leg (argparse type)."""
    try:
        a, b, v = text.split("/")
        leg = (float(parse_utc(a)), float(parse_utc(b)), float(v))
        check_legs((leg,))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{text!r}: expected FROM/TO/SPEED ({e})") from None
    return leg


def _stdin_closed(hold: asyncio.Event) -> None:
    if not os.read(sys.stdin.fileno(), 4096):  # EOF: the harness is done with us
        hold.set()
        asyncio.get_running_loop().remove_reader(sys.stdin.fileno())


def add_run_options(p: argparse.ArgumentParser, progress_s: float) -> None:
    """The options of a fleet run that `python -m hil demo` shares."""
    p.add_argument("--days", type=int, default=3, help="full simulated days to collect")
    p.add_argument(
        "--speed", type=int, default=DEFAULT_SPEED, help="simulated s per real s (FLEET.md)"
    )
    p.add_argument("--start", default=DEFAULT_START, help="simulated start, UTC")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--profile-mix", default=DEFAULT_MIX, help=f"default {DEFAULT_MIX}")
    p.add_argument("--csv", type=Path, default=DEFAULT_CSV, help="load profile CSV")
    p.add_argument("--progress-s", type=float, default=progress_s, help="real s between progress")
    p.add_argument(
        "--insecure", action="store_true", help="plain, anonymous MQTT (default: TLS, logins, ACLs)"
    )
    p.add_argument(
        "--meters-per-conn",
        type=int,
        default=1,
        metavar="K",
        help="meters per MQTT connection (default 1: each its own login); K > 1: a gateway "
        "login gw<first id> per K meters, whose ACL allows exactly their topics",
    )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m hil fleet",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--meters", type=int, default=100, help="fleet size (default 100)")
    add_run_options(p, progress_s=5.0)
    p.add_argument("--broker", help="host:port of a running broker + head-end (else: own rig)")
    p.add_argument(
        "--ca", type=Path, metavar="FILE", help="with --broker: its CA (PEM), TLS (else plain)"
    )
    p.add_argument(
        "--server-name",
        default="localhost",
        help="with --ca: the name the broker's certificate must carry (default localhost)",
    )
    p.add_argument(
        "--real-start",
        type=float,
        default=0.0,
        help="wall-clock epoch s at which simulated time = --start (default: now)",
    )
    p.add_argument("--end", help="end of the run, UTC (default: after the last window)")
    p.add_argument(
        "--fast",
        action="append",
        type=fast_leg,
        metavar="FROM/TO/SPEED",
        help="run the simulated span [FROM, TO) (UTC) at SPEED: a fast leg of the clock, "
        "the same as the head-end's (headend.clock); repeatable",
    )
    p.add_argument("--window-end", default="08:00", help="the head-end's window_end")
    p.add_argument(
        "--outage",
        action="append",
        metavar="ID:FROM/TO[/mute]",
        help="take meter ID offline over [FROM, TO) (UTC); /mute: its link stays up but its "
        "uplinks are lost (no ack comes: its reads fail); repeatable",
    )
    p.add_argument("--first-id", type=int, default=FIRST_ID)
    p.add_argument(
        "--master-key-file",
        type=Path,
        help="a file holding the site's hex master key (default: the all-zero dev key); "
        "a file, never the key itself on the command line",
    )
    p.add_argument(
        "--push-mask",
        type=lambda x: int(x, 0),
        default=NO_SYNC_FAILED_PUSH,
        help=f"event codes pushed at once (default {NO_SYNC_FAILED_PUSH:#x}: the firmware's "
        f"{DEFAULT_PUSH_MASK:#x} without sync_failed, see FLEET.md)",
    )
    p.add_argument(
        "--install-s",
        type=int,
        default=INSTALL_S,
        help="simulated s over which the meters are installed (booted), from --start "
        "or from when the fleet starts, whichever is later",
    )
    p.add_argument("--tick-s", type=float, default=30.0, help="simulated s between steps")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument(
        "--hold",
        action="store_true",
        help="after the end keep the meters up until stdin closes (for recovery reads)",
    )
    p.add_argument("--keep", action="store_true", help="own rig: keep the database")
    return p


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    try:
        parse_mix(args.profile_mix)
        if args.meters < 1 or args.days < 1 or args.speed < 1 or args.meters_per_conn < 1:
            raise ProfileError("--meters, --days, --speed and --meters-per-conn must be >= 1")
        for text in args.outage or ():
            parse_outage(text)
        parse_hhmm("--window-end", args.window_end)
        LoadProfile(args.csv)  # a bad CSV stops us before anything runs
    except (ProfileError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.broker:
        result = asyncio.run(run_fleet(args))  # it ends on SIGINT/SIGTERM with its summary
        print(json.dumps(result), flush=True)
        return 0 if result["core_errors"] == 0 else 1
    from hil.fleet_headend import FleetRun, RunOptions

    try:
        run = FleetRun(
            RunOptions(
                meters=args.meters,
                days=args.days,
                speed=args.speed,
                start=parse_utc(args.start),
                seed=args.seed,
                profile_mix=args.profile_mix,
                outages=tuple(args.outage or ()),
                keep=args.keep,
                csv=args.csv,
                first_id=args.first_id,
                progress_s=args.progress_s,
                tick_s=args.tick_s,
                install_s=args.install_s,
                window_end=args.window_end,
                push_mask=args.push_mask,
                insecure=args.insecure,
                meters_per_conn=args.meters_per_conn,
            )
        )
    except ProfileError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return run.main("fleet")
