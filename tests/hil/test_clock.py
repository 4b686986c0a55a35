"""One clock: a head-end configured with (clock_start, clock_anchor, speed) and a
virtual board given the same three numbers read the same simulated instant,
whichever process started when (H10: the head-end is the meters' time)."""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

import pytest

from headend.cli import build_parser, config_from
from headend.clock import Clock
from headend.config import load
from headend.service import Service
from hil.board import BoardSpec, VirtualBoard
from hil.fleet import fast_leg

T0 = 1772323200  # 2026-03-01T00:00:00Z
SPEED = 600


def test_clock_reads_start_at_its_wall_clock_anchor_and_follows_a_new_one() -> None:
    anchor = time.time() - 100
    c = Clock(SPEED, T0, anchor)
    assert abs(c.now() - (T0 + 100 * SPEED)) < SPEED  # 100 real s ago it read T0
    assert abs(c.real_at(T0) - anchor) < 1e-6
    c.follow(T0, time.time(), 1.0)
    assert abs(c.now() - T0) < 1
    real = Clock()  # no start, no anchor: the wall clock itself
    assert abs(real.now() - time.time()) < 0.01


def test_h10_a_fast_leg_runs_its_span_at_its_speed_and_both_directions_agree() -> None:
    anchor = 1_000_000.0
    leg = (T0 + 3600.0, T0 + 7200.0, 60.0)  # an hour at 60x after an hour at 20x
    c = Clock(20, T0, anchor, (leg,))
    assert c.ms_at(anchor + 180) == (T0 + 3600) * 1000  # 3600 s at 20x: 180 real s
    assert c.ms_at(anchor + 180 + 30) == (T0 + 3600 + 1800) * 1000  # 30 s at 60x
    assert c.ms_at(anchor + 240) == (T0 + 7200) * 1000  # the leg's hour: 60 real s
    assert c.ms_at(anchor + 250) == (T0 + 7200 + 200) * 1000  # then 20x again
    assert c.ms_at(anchor - 10) == (T0 - 200) * 1000  # before the anchor: base speed
    for sim in (T0 - 50, T0, T0 + 3599.5, T0 + 3600, T0 + 5000, T0 + 7200, T0 + 9999):
        assert abs(c.ms_at(c.real_at(sim)) - sim * 1000) <= 1
    plain = Clock(20, T0, anchor)
    assert c.real_at(T0 + 3000) == plain.real_at(T0 + 3000)
    c.follow(T0 + 5000, anchor + 500, 20)  # re-anchored inside the leg: still 60x there
    assert c.ms_at(anchor + 510) == (T0 + 5600) * 1000
    assert c.ms_at(anchor + 500 + 2200 / 60 + 10) == (T0 + 7400) * 1000


@pytest.mark.parametrize(
    "legs",
    [
        ((T0 + 10.0, T0 + 5.0, 50.0),),
        ((T0, T0 + 5.0, 0.0),),
        ((T0, T0 + 9.0, 5.0), (T0 + 8.0, T0 + 20.0, 5.0)),
    ],
)
def test_h10_a_clock_refuses_legs_backwards_stopped_or_overlapping(legs: tuple) -> None:
    with pytest.raises(ValueError, match="clock leg"):
        Clock(20, T0, 1.0, legs)


def test_h10_the_fleet_takes_a_leg_as_from_to_speed_and_refuses_a_bad_one() -> None:
    leg = fast_leg("2024-04-02T07:00:00Z/2024-04-02T23:30:00Z/100")
    assert leg == (1712041200.0, 1712100600.0, 100.0)
    for bad in ("2024-04-02T07:00:00Z/100", "a/b/c", "2024-04-02T23:00:00Z/2024-04-02T07:00:00Z/5"):
        with pytest.raises(argparse.ArgumentTypeError, match="expected FROM/TO/SPEED"):
            fast_leg(bad)


def test_headend_config_file_and_serve_flag_carry_the_anchor(tmp_path: Path) -> None:
    anchor = time.time() - 100
    toml = tmp_path / "headend.toml"
    toml.write_text(
        f"[headend]\nspeed = {SPEED}\nclock_start = {T0}\nclock_anchor = {anchor!r}\n"
        f'database = "sqlite:///{tmp_path / "h.sqlite"}"\n'
    )
    svc = Service(load(toml))  # built, never run: only its clock is read
    assert abs(svc.clock.now() - Clock(SPEED, T0, anchor).now()) < 1
    args = build_parser().parse_args(["serve", "--config", str(toml), "--clock-anchor", "5.5"])
    args.overrides = {k: getattr(args, k) for k in args.overrides_from}
    assert config_from(args).clock_anchor == 5.5


@pytest.mark.mpy
@pytest.mark.req("H10")
@pytest.mark.usefixtures("rig_parts")
def test_h10_a_board_and_the_headend_clock_agree_from_the_same_three_numbers(
    tmp_path: Path,
) -> None:
    anchor = float(int(time.time()) - 30)  # the head-end "started" 30 s before the board
    clock = Clock(SPEED, T0, anchor)
    spec = BoardSpec(
        1001, tmp_path / "b", speed=SPEED, sim_start=T0, real_start_ms=int(anchor * 1000)
    )

    async def main() -> None:
        async with VirtualBoard(spec) as board:
            before = clock.now()
            board_now = (await board.status())["now"]
            after = clock.now()
            # the board's RTC moves in steps of SPEED ms (0.6 s): one step either way
            assert before - 1 <= board_now <= after + 1, (before, board_now, after)

    asyncio.run(main())
