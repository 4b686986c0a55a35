"""One simulated time for every part of a run: head-end, fleet, virtual boards.

A `TimeBase` is (sim_start, real_start, speed): at the wall-clock instant
``real_start`` (epoch seconds) simulated time is ``sim_start`` and it runs
``speed`` times faster from then on. The head-end's `Clock` (monotonic), the
fleet (another process) and a virtual board's RTC (``board.json``:
``clock.sim_start``, ``clock.real_start_ms``, ``clock.speed``) are all built
from the same three numbers, so they agree to within the wall clock's
resolution, not within a process start-up time (which at speed 1500 would be
minutes of simulated time).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from headend.api import Clock


def parse_utc(text: str) -> int:
    """``2024-04-01T18:00:00Z`` (or a number of UTC seconds) -> UTC seconds."""
    if text.lstrip("-").isdigit():
        return int(text)
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp())


def iso(t: float) -> str:
    return datetime.fromtimestamp(int(t), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class TimeBase:
    """Simulated UTC = sim_start + (wall clock - real_start) x speed."""

    sim_start: int
    real_start: float
    speed: int

    def __post_init__(self) -> None:
        if self.speed < 1:
            raise ValueError(f"speed must be a whole number >= 1, got {self.speed}")

    def now(self) -> float:
        return self.sim_start + (time.time() - self.real_start) * self.speed

    def now_ms(self) -> int:
        return int(self.now() * 1000)

    def real_at(self, sim_s: float) -> float:
        """Wall-clock instant at which simulated time reaches ``sim_s``."""
        return self.real_start + (sim_s - self.sim_start) / self.speed

    async def sleep_until(self, sim_s: float) -> None:
        await asyncio.sleep(max(0.0, self.real_at(sim_s) - time.time()))

    def headend_clock(self) -> Clock:
        """The head-end's Clock on this time base (Clock counts from time.monotonic)."""
        t0 = time.monotonic() - (time.time() - self.real_start)
        return Clock(float(self.speed), float(self.sim_start), _t0=t0)

    def board_clock(self) -> dict[str, int]:
        """The ``clock`` block of a virtual board's board.json."""
        return {
            "sim_start": self.sim_start,
            "real_start_ms": int(self.real_start * 1000),
            "speed": self.speed,
        }
