"""recovery: the head-end finds missing data and recovers it by itself (D02-D05, D08, H09, N05).

`python -m hil scenario recovery --meters N --offline-pct P [--days-offline 1,3,6]
[--meters-per-conn K] [--speed S] [--idle-speed S] --json`

The real head-end service (in this process, SQLite) and the fleet simulator (a
second process: the firmware core per meter, one MQTT connection each) on one
simulated clock, through a private mosquitto (`hil.fleet_headend.FleetRun`).
Failures injected with the fleet's ``--outage``: P % of the meters lose their
link from 00:00 of the second day for 1, 3 or 6 days (split evenly over
``--days-offline``; 0: a mute link over the night's read window instead,
00:00-05:30: the meter stays connected and sends, its uplinks are lost, its
read fails after its tries (M15) and it sends nothing more before its next
night, so only the 06:00 check's recovery reads bring the day back: the mass
recovery of N05 and H09), a third as many are intermittent (down 00:00-07:00 on the
second, and the fourth, day: down at the 06:00 check, back after), and one
meter never answers again. The head-end's window is 00:01-04:00, its daily
check at 06:00; each missing meter-day gets 3 recovery reads 30 min apart
(one send each: ``ondemand_retries`` 0), through the throttle. The run lasts
the longest outage plus a day (mute nights only: the one day they read), then
waits until every day found is settled. The fleet's tick grows with meters x speed
(``tick_s``) so that stepping the meters leaves the head-end most of the machine.
Each collection day's daytime, when the meters only record, runs faster
(``idle_speed``: fast legs of the shared clock, from 3 h after the daily check to
23:30); the nights, the checks and their recovery reads run at ``speed``.

Prints one JSON line: ``meters``, ``missing_before`` (meter-days the head-end
found missing), ``recovered``, ``unsuccessful``, ``recovered_by_read``,
``recovery_sim_minutes`` (N05: the longest a day a recovery read brought back
waited from being found missing, or from its meter's outage ending if it was
unreachable then, simulated), ``recovery_span_sim_minutes``
(first recovery read to the last day resolved any way), ``peak_in_flight``
(reads out at once, from the jobs), ``wall_s``; and the head-end's D08 totals, the
expected figures, ``ok``. With the firmware's own catch-up (M15) a meter whose
link returns sends what it holds by itself: those days count as recovered "by
the meter"; the never-answering meter's days stay unsuccessful.
Defaults: 200 meters, 10 %, 1,3,6 days, 1200x up to 333 meters and
400,000 / meters above (``default_speed``; ``--speed`` sets it), the daytimes at
1200x, 10,000,000 / meters above 8,333 meters (``idle_speed``; ``--idle-speed``
sets it, 0: none).
"""

from __future__ import annotations

import time
from typing import Any

from hil.fleet import FIRST_ID
from hil.fleet_headend import ASSIGN_REAL_S_PER_METER, START_MARGIN_S, FleetRun, RunOptions
from hil.fleet_profile import DAY
from hil.fleet_time import iso, parse_utc
from hil.rig import RigError
from hil.scenarios.common import Options

START = parse_utc("2024-04-01T17:00:00Z")  # installation, then the evening assignment at 22:00
FOREVER = 365 * DAY
INSTALL_RATE = 100  # registrations a real second the installation is spread to (`install_s`)
INSTALL_MAX_S = 5 * 3600  # from 17:00: done before the evening assignment
METER_SPEED = 400_000  # meters x speed the default speed keeps to (`default_speed`)
IDLE_METER_SPEED = 10_000_000  # meters x speed of the first day's daytime (`idle_speed`)
# --days-offline 0: uplinks lost until 05:30, after the night's window, before the daily check
MUTE_S = 5 * 3600 + 1800


def default_speed(meters: int) -> int:
    """1200x up to 333 meters, slower for more: the night's reads then come at the same
    real rate whatever the fleet's size (~28 a second over the 00:01-04:00 window). The
    meters re-send a read part after 15-30 simulated seconds, i.e. 15/S real: at three
    times this rate a night with meters back from an outage (their catch-up, the held
    requests) pushed the round trip past that, every part went 3-4 times and the
    head-end fell hours of simulated time behind (1,000 meters at 1200x: ack p90 0.85 s,
    89 healthy meter-days late)."""
    return max(1, min(1200, METER_SPEED // max(1, meters)))


def idle_speed(meters: int) -> int:
    """The speed of each collection day's daytime (`RunOptions.idle_speed`): 1200x,
    less for a big fleet, so that its meters' daily time syncs come at ~120 a real second
    at most and each round trip stays within the firmware's 4 s (100,000 meters: 100x)."""
    return max(1, min(1200, IDLE_METER_SPEED // max(1, meters)))


def install_s(meters: int, speed: int) -> int:
    """Simulated seconds the fleet's installation is spread over: at most INSTALL_RATE
    registrations a real second (meters retry in simulated time: at 600x a burst the
    head-end cannot take in turns into a storm of retries), from 30 minutes to 5 hours."""
    return min(INSTALL_MAX_S, max(1800, -(-meters * speed // INSTALL_RATE)))


def start_at(meters: int, speed: int) -> int:
    """When the run starts: 17:00 the day before the first collection day, earlier for a
    big fast fleet, so that its installation, the rig's start-up margin and the evening
    assignment (ASSIGN_REAL_S_PER_METER real seconds a meter) end an hour before the
    night's window (100,000 meters at 50x: from 09:00)."""
    assign = meters * ASSIGN_REAL_S_PER_METER * speed
    need = install_s(meters, speed) + START_MARGIN_S + assign + 3600
    midnight = START - START % DAY + DAY
    return min(START, midnight - -(-int(need) // 3600) * 3600)


def run_days(days_offline: tuple[int, ...]) -> int:
    """Collection days of the run: the longest outage plus a day (the day its meters come
    back and send what they hold); mute nights only: one, the day the mute night reads."""
    return max(days_offline) + 1 if any(days_offline) else 1


def tick_s(meters: int, speed: int) -> float:
    """The fleet's tick, simulated seconds: 30, longer for a big fast fleet, so one pass
    over its meters (~10 us CPU each) takes at most a third of a tick's real time and the
    fleet process leaves the head-end most of the machine (100,000 meters at 50x: 150)."""
    return max(30.0, 3 * meters * 1e-5 * speed)


def plan(
    meters: int, offline_pct: float, days_offline: tuple[int, ...], day1: int
) -> tuple[list[str], dict[str, int]]:
    """The fleet's --outage strings and the meter-days that will be missing, by kind."""
    n_off = round(meters * offline_pct / 100)
    n_int = max(1, n_off // 3)
    if n_off + n_int + 2 > meters:
        raise ValueError(f"{meters} meters cannot carry {n_off} offline and {n_int} intermittent")
    days = run_days(days_offline)
    outages: list[str] = []
    want = {"offline": 0, "intermittent": 0, "never": 0}
    ids = iter(range(FIRST_ID + 1, FIRST_ID + meters))  # FIRST_ID stays healthy
    back = day1 + DAY  # 00:00 of the second day: the first night's read cannot go
    for i in range(n_off):
        k = days_offline[i % len(days_offline)]
        until, kind = (back + k * DAY, "") if k else (back + MUTE_S, "/mute")
        outages.append(f"{next(ids)}:{iso(back)}/{iso(until)}{kind}")
        want["offline"] += max(k, 1)
    for _ in range(n_int):
        mid = next(ids)
        for d in (1, 3):  # the night after day d reads day d: in the run if d <= days
            if d <= days:
                t = day1 + d * DAY
                outages.append(f"{mid}:{iso(t)}/{iso(t + 7 * 3600)}")
                want["intermittent"] += 1
    outages.append(f"{next(ids)}:{iso(back)}/{iso(back + FOREVER)}")
    want["never"] = days
    return outages, want


async def run(opts: Options) -> dict[str, Any]:
    meters = int(opts.pick("meters", 200))
    pct = float(opts.pick("offline_pct", 10.0))
    days_offline = tuple(opts.pick("days_offline", (1, 3, 6)))
    speed = int(opts.pick("speed", default_speed(meters)))
    per_conn = int(opts.pick("meters_per_conn", 1))
    idle = int(opts.pick("idle_speed", idle_speed(meters)))
    start = start_at(meters, speed)
    day1 = start - start % DAY + DAY
    try:
        outages, want = plan(meters, pct, days_offline, day1)
    except ValueError as e:
        raise RigError(str(e)) from None
    days = run_days(days_offline)
    t0 = time.monotonic()
    fr = FleetRun(
        RunOptions(
            meters=meters,
            days=days,
            speed=speed,
            start=start,
            seed=opts.seed,
            profile_mix="normal=1",
            outages=tuple(outages),
            install_s=install_s(meters, speed),
            tick_s=tick_s(meters, speed),
            idle_speed=idle,
            window_end="04:00",
            daily_check_at="06:00",
            settle_all=True,
            settle_wait_s=600.0,
            headend=(("ondemand_retries", 0),),
            keep=opts.keep,
            progress_s=30.0,
            meters_per_conn=per_conn,
        )
    )
    try:
        r = await fr._main()
    finally:
        fr.tidy()
    h = r.get("headend") or {}
    expected = sum(want.values())
    out: dict[str, Any] = {
        "scenario": "recovery",
        "meters": meters,
        "offline_pct": pct,
        "days_offline": list(days_offline),
        "days": days,
        "speed": speed,
        "meters_per_conn": per_conn,
        "idle_speed": idle if fr.legs else None,
        "missing_before": h.get("missing_before"),
        "recovered": h.get("recovered"),
        "unsuccessful": h.get("unsuccessful"),
        "recovered_by_read": h.get("recovered_by_read"),
        "recovery_sim_minutes": h.get("recovery_sim_minutes"),
        "recovery_span_sim_minutes": h.get("recovery_span_sim_minutes"),
        "peak_in_flight": h.get("peak_in_flight"),
        "recovery_reads": h.get("recovery_reads"),
        "d08": h.get("d08"),
        "expected_missing": want,
        "headend_missing_meter_days": h.get("missing_meter_days"),
        "run_missing_meter_days": r.get("missing_meter_days"),
        "headend_agrees": r.get("headend_agrees"),
        "fleet_exit": r.get("fleet_exit"),
        # how the meters saw the head-end: real ms from a frame's first send to its ack
        # (at speed S a round trip of x real s is S·x of the firmware's retry timers)
        "fleet_ack_real_ms": r.get("fleet_ack_latency_real_ms"),
        "fleet_ack_worst_hours": r.get("fleet_ack_latency_worst_hours"),
        "fleet_frames_not_taken": r.get("fleet_frames_not_taken"),
        "fleet_slow_passes": r.get("fleet_slow_passes"),
        "wall_s": round(time.monotonic() - t0, 1),
    }
    out["ok"] = bool(
        out["missing_before"] == expected
        and out["unsuccessful"] == want["never"]
        and out["recovered"] == expected - want["never"]
        and out["headend_agrees"]
        and out["fleet_exit"] == 0
    )
    return out
