"""The fleet simulator against the real head-end (SQLite) over a private mosquitto.

One run, shared by the tests below: 20 fleet meters (the firmware core on
CPython, one MQTT connection each), one full day at 4000x, the head-end
service in-process on the same simulated clock. Two meters lose their link
for the whole collection night: one comes back 45 minutes after the
on-schedule snapshot (its own catch-up read recovers the day), one stays
offline past the end of the run (the day is missing, and predicted so).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from hil import fleet
from hil.fleet_headend import FleetRun, RunOptions, reachable_ms
from hil.fleet_profile import DAY, MeterPlan, Outage, ProfileError, parse_mix, plan_fleet
from hil.fleet_time import iso, parse_utc
from hil.wait import wait_until_sync

START = parse_utc("2024-04-01T21:00:00Z")
DAY1 = parse_utc("2024-04-02T00:00:00Z")
# 09:00: well after the 08:15 on-schedule snapshot, which a busy machine takes late
BACK = DAY1 + DAY + 9 * 3600
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
            feed=True,
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
@pytest.mark.req("H04")
def test_h04_every_collected_meter_day_reaches_a_realtime_reader_on_the_secure_broker(
    fleet_run: tuple[FleetRun, dict[str, Any]],
) -> None:
    run, r = fleet_run
    assert not run.o.insecure  # TLS, logins, ACLs: the reader logged in as one (H04, T01)
    collected = run.tally.final & run.tally.expected
    assert r["collected_meter_days"] == len(collected) > 0
    assert r["realtime_meter_days"] == len(collected) and r["realtime_bad"] == 0
    # a day of intervals comes in two parts (the broker's packet limit), at least
    assert r["realtime_messages"] >= 2 * len(collected)
    assert run.ok(r)


@FLEET_TIMEOUT
def test_fleet_outage_recovered_or_missing_exactly(
    fleet_run: tuple[FleetRun, dict[str, Any]],
) -> None:
    run, r = fleet_run
    # back at 09:00: not on schedule, then the pending read (never counted while
    # offline) brings the day in: recovered by the meter itself
    assert (LATE, DAY1) not in run.tally.on_time
    assert (LATE, DAY1) in run.tally.final
    # offline past the end: the head-end's recovery read fails, the day is missing, as
    # predicted, and the head-end's own count says so (D08)
    assert (GONE, DAY1) not in run.tally.final
    assert r["recovered_meter_days"] == 1
    assert r["missing_meter_days"] == 1 == r["predicted_missing_meter_days"]
    assert r["collected_meter_days"] + r["missing_meter_days"] == r["expected_meter_days"] == 20
    h = r["headend"]
    assert (h["days"], h["meters_checked"], h["missing_before"]) == (1, 20, 2)
    assert h["d08"]["recovered_by_read"] + h["d08"]["recovered_by_meter"] == 1
    assert h["missing_meter_days"] == 1 and r["headend_agrees"]
    assert h["recovery_reads"] >= 2
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


def test_h09_a_mute_outage_keeps_the_link_up_and_loses_the_uplinks() -> None:
    mid, o = fleet.parse_outage(f"7:{iso(DAY1)}/{iso(DAY1 + 3600)}/mute")
    assert (mid, o) == (7, Outage(DAY1, DAY1 + 3600, mute=True))
    plan = MeterPlan(7, "offline", outages=(o,))
    assert plan.online(DAY1 + 10) and plan.muted(DAY1 + 10)  # up, but nothing arrives
    assert not plan.muted(DAY1 + 3600) and not plan.muted(DAY1 - 1)
    down = MeterPlan(
        8, "offline", outages=fleet.parse_outage(f"8:{iso(DAY1)}/{iso(DAY1 + 60)}")[1:]
    )
    assert not down.online(DAY1) and not down.muted(DAY1)
    with pytest.raises(ProfileError, match=r"ID:FROM/TO\[/mute\].*expected /mute"):
        fleet.parse_outage(f"7:{iso(DAY1)}/{iso(DAY1 + 3600)}/deaf")


def test_n05_a_day_found_during_its_meters_outage_counts_from_the_outages_end() -> None:
    at = reachable_ms((f"7:{iso(DAY1)}/{iso(DAY1 + DAY)}", f"8:{iso(DAY1)}/{iso(DAY1 + 60)}/mute"))
    found = (DAY1 + 6 * 3600) * 1000
    assert at(7, found) == (DAY1 + DAY) * 1000  # offline then: readable once it is back
    assert at(8, found) == found and at(9, found) == found  # healed before, never down


# -- the multiplexed link: K meters per MQTT connection, a gateway login each ---------------

GW_LATE = 100_031  # of the second gateway: off its link over the night's window
GW_BACK = DAY1 + DAY + 8 * 3600 + 45 * 60  # 08:45: after the snapshot and the run's end


@pytest.fixture(scope="module")
def gateway_run(mqtt_broker_present: None) -> Iterator[tuple[FleetRun, dict[str, Any]]]:
    run = FleetRun(
        RunOptions(
            meters=50,
            meters_per_conn=25,
            days=1,
            speed=4000,
            start=START,
            profile_mix="normal=1",
            outages=(f"{GW_LATE}:{iso(DAY1 + DAY)}/{iso(GW_BACK)}",),
            install_s=1800,
            progress_s=1000,
        )
    )
    yield run, run.run()


@FLEET_TIMEOUT
@pytest.mark.req("N01", "N07", "T02")
def test_n01_n07_t02_fifty_meters_over_two_gateway_connections_all_collected(
    gateway_run: tuple[FleetRun, dict[str, Any]],
) -> None:
    run, r = gateway_run
    assert r["fleet_connections"] == 2 and r["fleet_meters"] == 50
    healthy = [m for m in run.meter_ids if m != GW_LATE]
    # every meter's own signed, sequenced frames arrived through the shared
    # connections: each day complete in the head-end's store by 08:15
    assert {(m, DAY1) for m in healthy} == run.tally.on_time
    # the meter whose own link was down that night got its downlinks (the
    # recovery read, held by the gateway) when back, and the day came in
    assert (GW_LATE, DAY1) in run.tally.final
    assert r["collected_meter_days"] == r["expected_meter_days"] == 50
    assert r["recovered_meter_days"] == 1 and r["missing_meter_days"] == 0
    assert r["registered_meters"] == 50 and r["fleet_uplinks"]["register"] >= 50
    assert r["fleet_core_errors"] == 0 and r["fleet_exit"] == 0
    assert FleetRun.ok(r)


@pytest.mark.req("T02")
def test_t02_a_gateway_carries_exactly_its_meters_topics(mqtt_broker_present: None) -> None:
    from headend.api import brokerconf
    from hil.broker import running_broker
    from hil.fleet_gateway import partition
    from tests.support.mqttpeer import Peer

    (ga, a_ids), (gb, b_ids) = partition(range(100_001, 100_051), 25)
    assert (ga, gb, len(a_ids), b_ids[0]) == ("gw100001", "gw100026", 25, 100_026)
    gateways = tuple(brokerconf.Gateway(n, ids) for n, ids in ((ga, a_ids), (gb, b_ids)))
    with running_broker(gateways=gateways, workers=("headend",), meters=(100_100,)) as broker:

        def login(user: str) -> Peer:
            return Peer(broker.host, broker.port, user, broker.password(user), broker.ca).connect()

        worker, a, b = login("headend"), login(ga), login(gb)
        alone = login("100100")  # a meter with its own login (the default) beside them
        try:
            assert worker.accepted and a.accepted and b.accepted and alone.accepted
            assert not worker.subscribe("ami/v1/+/up")[0].is_failure
            # its own meters' downlinks: yes; another gateway's, or every meter's: refused
            assert not a.subscribe("ami/v1/100025/down")[0].is_failure
            assert a.subscribe("ami/v1/100026/down")[0].is_failure
            assert a.subscribe("ami/v1/+/down")[0].is_failure
            assert alone.subscribe("ami/v1/100001/down")[0].is_failure
            assert not b.subscribe("ami/v1/100026/down")[0].is_failure
            # the forgeries first: each sender's legitimate message after them arrives
            # after them (one connection's messages keep their order), so once those
            # are in, a forgery that got through would be in too
            a.publish("ami/v1/100026/up", b"forged")  # b's meter: dropped by the broker
            alone.publish("ami/v1/100002/up", b"forged too")  # a's meter, from outside
            a.publish("ami/v1/100001/up", b"own")  # its meter
            b.publish("ami/v1/100050/up", b"own too")
            alone.publish("ami/v1/100100/up", b"mine")
            wait_until_sync(lambda: len(worker.got) >= 3, 10, "three uplinks at the worker")
            worker.publish("ami/v1/100025/down", b"down a")
            worker.publish("ami/v1/100026/down", b"down b")
            wait_until_sync(lambda: a.got and b.got, 10, "the gateways' downlinks")
            assert sorted(worker.got) == [
                ("ami/v1/100001/up", b"own"),
                ("ami/v1/100050/up", b"own too"),
                ("ami/v1/100100/up", b"mine"),
            ]
            assert a.got == [("ami/v1/100025/down", b"down a")]
            assert b.got == [("ami/v1/100026/down", b"down b")]
        finally:
            for p in (worker, a, b, alone):
                p.close()
