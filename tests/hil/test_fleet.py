"""The fleet simulator against the real head-end (SQLite) over a private mosquitto.

One run, shared by the tests below: 20 fleet meters (the firmware core on
CPython, one MQTT connection each), one full day at 4000x, the head-end
service in-process on the same simulated clock. Two meters lose their link
for the whole collection night: one comes back 5 minutes after the
on-schedule snapshot (its own catch-up read recovers the day), one stays
offline past the end of the run (the day is missing, and predicted so).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from hil import fleet
from hil.fleet_headend import FleetRun, RunOptions
from hil.fleet_profile import DAY, MeterPlan, Outage, parse_mix, plan_fleet
from hil.fleet_time import iso, parse_utc

START = parse_utc("2024-04-01T21:00:00Z")
DAY1 = parse_utc("2024-04-02T00:00:00Z")
BACK = DAY1 + DAY + 8 * 3600 + 20 * 60  # 08:20, after the 08:15 on-schedule snapshot
LATE, GONE = 100_003, 100_007


@pytest.fixture(scope="module")
def fleet_run(mqtt_broker_present: None) -> Iterator[tuple[FleetRun, dict[str, Any]]]:
    run = FleetRun(
        RunOptions(
            meters=20,
            days=1,
            speed=4000,
            start=START,
            profile_mix="normal=1",
            outages=(
                f"{LATE}:{iso(DAY1 + DAY)}/{iso(BACK)}",
                f"{GONE}:{iso(DAY1 + DAY)}/{iso(DAY1 + 2 * DAY)}",
            ),
            install_s=1800,
            progress_s=1000,
        )
    )
    yield run, run.run()


@pytest.fixture(scope="module")
def mqtt_broker_present() -> None:
    from hil.broker import find_mosquitto
    from tests.conftest import missing

    if find_mosquitto() is None:
        missing("mosquitto not installed: run `make setup` (or apt-get install mosquitto)")


# The shared run (~40 s on a loaded 2-core machine) is set up by whichever of these runs first.
FLEET_TIMEOUT = pytest.mark.timeout(120)


@FLEET_TIMEOUT
def test_n07_n01_every_meter_day_collected_in_the_window(
    fleet_run: tuple[FleetRun, dict[str, Any]],
) -> None:
    run, r = fleet_run
    healthy = [m for m in run.meter_ids if m not in (LATE, GONE)]
    # every meter with a link that night delivered its day by 08:15 (window 00:01-08:00)
    assert {(m, DAY1) for m in healthy} <= run.tally.on_time
    assert r["on_schedule_meter_days"] == len(healthy) == 18
    assert r["fleet_core_errors"] == 0 and r["fleet_exit"] == 0
    assert r["registered_meters"] == 20


@FLEET_TIMEOUT
def test_fleet_outage_recovered_or_missing_exactly(
    fleet_run: tuple[FleetRun, dict[str, Any]],
) -> None:
    run, r = fleet_run
    # back at 08:20: not on schedule, then the pending read (never counted while
    # offline) brings the day in: recovered by the meter itself
    assert (LATE, DAY1) not in run.tally.on_time
    assert (LATE, DAY1) in run.tally.final
    # offline past the end: its recovery read fails, the day is missing, as predicted
    assert (GONE, DAY1) not in run.tally.final
    assert r["recovered_meter_days"] == 1
    assert r["missing_meter_days"] == 1 == r["predicted_missing_meter_days"]
    assert r["collected_meter_days"] + r["missing_meter_days"] == r["expected_meter_days"] == 20
    assert r["recovery_reads"] == 1 and r["recovery_reads_done"] == 0
    assert FleetRun.ok(r)


@FLEET_TIMEOUT
def test_fleet_frames_and_failures_are_counted(
    fleet_run: tuple[FleetRun, dict[str, Any]],
) -> None:
    _, r = fleet_run
    assert r["fleet_frames_acked"] > 0
    assert r["fleet_uplinks"]["register"] >= 20 and r["fleet_uplinks"]["read_response"] >= 19
    assert r["failures_injected"]["offline_meters"] == 2
    assert r["failures_injected"]["link_drops"] == 2
    assert r["headend_frames"] >= r["fleet_frames_sent"] - r["fleet_uplinks"]["register"]


def test_profile_mix_is_split_exactly_and_reproducibly() -> None:
    mix = parse_mix("normal=0.8,offline=0.05,intermittent=0.05,slow=0.05,skew=0.05")
    a = plan_fleet(500, 1, mix, 7, START, DAY1, 3, DAY1 + 4 * DAY)
    b = plan_fleet(500, 1, mix, 7, START, DAY1, 3, DAY1 + 4 * DAY)
    assert a == b
    kinds = [p.profile for p in a]
    assert (kinds.count("normal"), kinds.count("offline"), kinds.count("skew")) == (400, 25, 25)
    for p in a:
        if p.profile == "offline":
            (o,) = p.outages
            assert o.end - o.start == DAY and DAY1 + DAY <= o.start <= DAY1 + 3 * DAY


def test_predicted_missing_counts_days_no_read_can_reach() -> None:
    end = DAY1 + 3 * DAY + 8 * 3600 + 1800
    gone = MeterPlan(1, "offline", outages=(Outage(DAY1 + 2 * DAY, end + 7200),))
    short = MeterPlan(2, "offline", outages=(Outage(DAY1 + DAY, DAY1 + 2 * DAY),))
    # day 2 and day 3 are read on nights that fall in the outage; day 1's on an earlier one
    assert fleet.predicted_missing([gone, short], DAY1, 3, end) == 2
