"""The head-end's clock: real, or simulated (an instant, an anchor, a speed).

The head-end is the official system time for the meters (H10). Under the HIL
rig it runs on the same simulated time as the virtual boards, so 45 days can
pass in minutes; logic reads time only through a `Clock`.

A simulated clock is anchored on the wall clock, not on this process's start:
at wall time ``anchor`` (epoch s) it reads ``start``, and it runs ``speed``
times faster from there. A virtual board's RTC (hal/unix, board.json
``clock``) and the fleet simulator count the same way, so a head-end started
as its own process (`headend serve --clock-start S --clock-anchor A`) reads
the same simulated instant as boards started with ``sim_start`` S and
``real_start_ms`` A x 1000, to within the wall clock's resolution.

A simulated clock may also carry fast legs: spans of simulated time it runs
through at another speed (a simulation's idle daytime at 100x where its busy
nights run at 20x). The legs are part of the clock's definition, so two
processes given the same (start, anchor, speed, legs) still read the same
instant without talking to each other. ``speed`` stays the base speed: what
converts a real-time bound to simulated time (a throttle's second, a reply's
timeout) uses it, so a fast leg must span only what such bounds do not govern.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

Leg = tuple[float, float, float]  # (from, to: simulated UTC s; speed over that span)


def check_legs(legs: tuple[Leg, ...]) -> tuple[Leg, ...]:
    """The legs in order, or ValueError: each from < to, speed > 0, no overlap."""
    out = tuple(sorted((float(a), float(b), float(v)) for a, b, v in legs))
    for i, (a, b, v) in enumerate(out):
        if not a < b or v <= 0:
            raise ValueError(f"clock leg {a:.0f}..{b:.0f} at {v:g}x: need from < to, speed > 0")
        if i and a < out[i - 1][1]:
            raise ValueError(f"clock legs overlap at {a:.0f}")
    return out


@dataclass
class Clock:
    """UTC time, possibly scaled: now = start + (wall clock - anchor) × speed (legs apart).

    Args:
        speed: simulated seconds per real second (1 = real time).
        start: the simulated UTC s at ``anchor``; 0 = the wall clock at ``anchor``.
        anchor: the wall-clock instant (epoch s) at which the clock reads ``start``;
            0 = now (when the Clock is made).
        legs: (from, to, speed) spans of simulated time run at their own speed.
    """

    speed: float = 1.0
    start: float = 0.0
    anchor: float = 0.0
    legs: tuple[Leg, ...] = ()

    def __post_init__(self) -> None:
        if self.speed <= 0:
            raise ValueError(f"clock speed must be > 0, got {self.speed}")
        if not self.anchor:
            self.anchor = time.time()
        if not self.start:
            self.start = self.anchor
        self.legs = check_legs(self.legs)

    def _pieces(self) -> list[tuple[float, float, float]]:
        """(simulated s, wall s, speed) where each stretch of one speed begins, from the
        anchor on: one walk over the legs that both directions read."""
        out = [(self.start, self.anchor, self.speed)]
        sim, wall = self.start, self.anchor
        for a, b, v in self.legs:
            if b <= sim:
                continue
            a = max(a, sim)
            wall += (a - sim) / self.speed
            wall_end = wall + (b - a) / v
            out += [(a, wall, v), (b, wall_end, self.speed)]
            sim, wall = b, wall_end
        return out

    def _piece(self, side: int, at: float) -> tuple[float, float, float]:
        """The stretch that holds ``at`` (side 0: a simulated instant, 1: a wall one)."""
        pieces = self._pieces()
        begun = [p for p in pieces if p[side] <= at]
        return begun[-1] if begun else pieces[0]  # before the anchor: the first

    def _sim_at(self, wall_s: float) -> float:
        sim, wall, v = self._piece(1, wall_s)
        return sim + (wall_s - wall) * v

    def now(self) -> float:
        """UTC seconds (float)."""
        return self._sim_at(time.time())

    def now_s(self) -> int:
        return int(self.now())

    def now_ms(self) -> int:
        return int(self.now() * 1000)

    def ms_at(self, wall_s: float) -> int:
        """What this clock read (UTC ms) at the wall-clock instant ``wall_s`` (epoch s)."""
        return int(self._sim_at(wall_s) * 1000)

    def real_at(self, sim_s: float) -> float:
        """The wall-clock instant (epoch s) at which this clock reads ``sim_s``."""
        sim, wall, v = self._piece(0, sim_s)
        return wall + (sim_s - sim) / v

    def follow(self, sim_s: float, wall_s: float, speed: float) -> None:
        """Re-anchor: from now on ``sim_s`` at wall time ``wall_s``, at ``speed`` (the
        legs kept)."""
        self.start, self.anchor, self.speed = sim_s, wall_s, speed

    async def sleep(self, sim_seconds: float) -> None:
        """Sleep for `sim_seconds` of simulated time."""
        now = time.time()
        await asyncio.sleep(max(0.0, self.real_at(self._sim_at(now) + sim_seconds) - now))

    async def sleep_until(self, utc_s: float) -> None:
        await self.sleep(utc_s - self.now())
