"""The head-end's clock: real, or simulated (start instant + speed factor).

The head-end is the official system time for the meters (H10). Under the HIL
rig it runs on the same simulated time as the virtual boards, so 45 days can
pass in minutes; logic reads time only through a `Clock`.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field


@dataclass
class Clock:
    """UTC time, possibly scaled: now = start + (monotonic elapsed) × speed."""

    speed: float = 1.0
    start: float = 0.0  # UTC s at creation; 0 = the real time now
    _t0: float = field(default_factory=time.monotonic, repr=False)

    def __post_init__(self) -> None:
        if self.start == 0:
            self.start = time.time()

    def now(self) -> float:
        """UTC seconds (float)."""
        return self.start + (time.monotonic() - self._t0) * self.speed

    def now_s(self) -> int:
        return int(self.now())

    def now_ms(self) -> int:
        return int(self.now() * 1000)

    async def sleep(self, sim_seconds: float) -> None:
        """Sleep for `sim_seconds` of simulated time."""
        await asyncio.sleep(max(0.0, sim_seconds / self.speed))

    async def sleep_until(self, utc_s: float) -> None:
        await self.sleep(utc_s - self.now())
