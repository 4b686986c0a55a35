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
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass


@dataclass
class Clock:
    """UTC time, possibly scaled: now = start + (wall clock - anchor) × speed.

    Args:
        speed: simulated seconds per real second (1 = real time).
        start: the simulated UTC s at ``anchor``; 0 = the wall clock at ``anchor``.
        anchor: the wall-clock instant (epoch s) at which the clock reads ``start``;
            0 = now (when the Clock is made).
    """

    speed: float = 1.0
    start: float = 0.0
    anchor: float = 0.0

    def __post_init__(self) -> None:
        if self.speed <= 0:
            raise ValueError(f"clock speed must be > 0, got {self.speed}")
        if not self.anchor:
            self.anchor = time.time()
        if not self.start:
            self.start = self.anchor

    def now(self) -> float:
        """UTC seconds (float)."""
        return self.start + (time.time() - self.anchor) * self.speed

    def now_s(self) -> int:
        return int(self.now())

    def now_ms(self) -> int:
        return int(self.now() * 1000)

    def ms_at(self, wall_s: float) -> int:
        """What this clock read (UTC ms) at the wall-clock instant ``wall_s`` (epoch s)."""
        return int((self.start + (wall_s - self.anchor) * self.speed) * 1000)

    def real_at(self, sim_s: float) -> float:
        """The wall-clock instant (epoch s) at which this clock reads ``sim_s``."""
        return self.anchor + (sim_s - self.start) / self.speed

    def follow(self, sim_s: float, wall_s: float, speed: float) -> None:
        """Re-anchor: from now on ``sim_s`` at wall time ``wall_s``, at ``speed``."""
        self.start, self.anchor, self.speed = sim_s, wall_s, speed

    async def sleep(self, sim_seconds: float) -> None:
        """Sleep for `sim_seconds` of simulated time."""
        await asyncio.sleep(max(0.0, sim_seconds / self.speed))

    async def sleep_until(self, utc_s: float) -> None:
        await self.sleep(utc_s - self.now())
