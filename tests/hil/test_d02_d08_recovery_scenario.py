"""D02-D05, D08, H09, N05: `python -m hil scenario recovery`, shortened (real service, fleet
process, private mosquitto): meters on a mute link over the night's window (what only recovery
reads bring back: the mass recovery of N05), offline 1 day, intermittent, never answering."""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path

import pytest

from hil.broker import find_mosquitto
from hil.fleet_headend import FleetRun, RunOptions
from hil.fleet_profile import DAY, ProfileError
from hil.fleet_time import iso
from hil.scenarios import recovery
from hil.scenarios.common import Options
from hil.supervise import run
from tests.conftest import missing
from tests.support.cli import refused, run_module


@pytest.mark.timeout(120)  # ~50 s on a loaded 2-core machine
def test_d02_d03_d05_d08_h09_n05_scenario_recovery_30_meters() -> None:
    if find_mosquitto() is None:
        missing("mosquitto not installed: run `make setup` (or apt-get install mosquitto)")
    # 3 meters "offline" (10 %): two on a mute link over the night's window (healed at 05:30:
    # their reads failed and they send nothing more before their next night, so the 06:00
    # check's recovery reads must bring their day back), one offline a whole day; 1
    # intermittent (1 day); 1 silent (both days)
    # the first day's daytime runs at 60000x (a fast leg of both processes' clock)
    opts = Options(
        speed=6000,
        idle_speed=60_000,
        meters=30,
        offline_pct=10,
        days_offline=(0, 1),
        say=lambda s: None,
    )
    r = run(lambda: recovery.run(opts))
    assert r["idle_speed"] == 60_000
    assert r["expected_missing"] == {"offline": 3, "intermittent": 1, "never": 2}
    assert (r["missing_before"], r["recovered"], r["unsuccessful"]) == (6, 4, 2)
    d08 = r["d08"]
    assert d08["recovered_by_read"] + d08["recovered_by_meter"] == 4
    assert d08["recovered_by_read"] >= 2 and r["recovered_by_read"] >= 2  # the mute ones, at least
    assert (d08["unsuccessful"], d08["in_progress"]) == (2, 0)
    assert d08["on_schedule"] == 30 * 2 - 6
    assert r["headend_agrees"] and r["run_missing_meter_days"] == 2
    assert 0 < r["peak_in_flight"] <= 500 and r["recovery_reads"] >= 6
    assert 0 < r["recovery_sim_minutes"] <= 120, r  # N05: found to recovered, simulated
    assert r["recovery_span_sim_minutes"] >= r["recovery_sim_minutes"] and r["ok"]


def test_h09_scenario_recovery_slows_down_and_spreads_installation_for_a_big_fleet() -> None:
    # the night's reads then reach the head-end at one real rate, whatever the fleet's size
    assert recovery.default_speed(200) == recovery.default_speed(333) == 1200
    assert recovery.default_speed(1000) == 400 and recovery.default_speed(2000) == 200
    assert recovery.default_speed(100_000) == 4
    # and installs it at <= 100 registrations a real second (30 min to 5 h simulated)
    assert recovery.install_s(20, 6000) == 1800 and recovery.install_s(2000, 600) == 12_000
    assert recovery.install_s(10**7, 1) == 5 * 3600
    # starts early enough that installation and the evening assignment end before the window
    assert iso(recovery.start_at(30, 6000))[11:16] == "17:00"
    assert iso(recovery.start_at(100_000, 50))[11:16] == "09:00"  # 5 h + 2 h + 6.9 h + 1 h
    # the fleet's tick grows with meters x speed (a pass over the meters: <= 1/3 of a tick)
    assert recovery.tick_s(30, 6000) == 30 and recovery.tick_s(100_000, 50) == pytest.approx(150)
    # the collection days' daytimes faster: time syncs at <= ~120 a real second
    assert (recovery.idle_speed(30), recovery.idle_speed(100_000)) == (1200, 100)
    # mute nights only: the one day they read; outages of k days: k + 1
    assert (recovery.run_days((0,)), recovery.run_days((0, 1)), recovery.run_days((1, 3, 6))) == (
        1,
        2,
        7,
    )


def test_h09_a_fleet_run_s_idle_legs_are_the_days_daytimes_and_only_with_fleet_meters(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where a run would make its dir
    o = RunOptions(meters=100, days=1, speed=20, daily_check_at="06:00", idle_speed=100)
    fr = FleetRun(o)
    assert fr.legs == ((fr.day1 + 7 * 3600, fr.day1 + DAY - 1800, 100.0),)
    # 16.5 simulated hours at 100x instead of 20x
    assert fr.real_s(o.start, fr.end) == pytest.approx((fr.end - o.start - 59_400) / 20 + 594)
    # every day's: the first from an hour after its check (which finds nothing), the others
    # from 3 h after it (its recovery reads at the run's speed); nights at the run's speed
    d1 = FleetRun(replace(o, days=3)).day1
    assert FleetRun(replace(o, days=3)).legs == (
        (d1 + 7 * 3600, d1 + DAY - 1800, 100.0),
        (d1 + DAY + 9 * 3600, d1 + 2 * DAY - 1800, 100.0),
        (d1 + 2 * DAY + 9 * 3600, d1 + 3 * DAY - 1800, 100.0),
    )
    assert FleetRun(replace(o, idle_speed=20)).legs == ()  # not faster: no leg
    for bad in (replace(o, boards=1), replace(o, ondemand=5)):
        with pytest.raises(ProfileError, match="--idle-speed runs no boards"):
            FleetRun(bad)
    assert list(tmp_path.iterdir()) == []  # a run only built leaves no directory behind


@pytest.mark.timeout(60)
def test_d02_scenario_recovery_bad_options_are_refused_before_anything_starts() -> None:
    bad = run_module("hil", "scenario", "recovery", "--meters-per-conn", "0", "--json")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr, bad.stderr
    assert bad.stderr.splitlines()[-1].endswith(
        "argument --meters-per-conn: expected a whole number >= 1, got '0'"
    )
    bad = run_module("hil", "scenario", "recovery", "--idle-speed", "fast", "--json")
    assert bad.returncode == 2 and bad.stderr.splitlines()[-1].endswith(
        "argument --idle-speed: expected a whole number >= 0, got 'fast'"
    ), bad.stderr
    line = refused(run_module("hil", "scenario", "recovery", "--meters", "2", "--json"))
    assert line == "error: 2 meters cannot carry 0 offline and 1 intermittent", line
