"""UTC instants as the fleet, the demo and the board CLI read and print them.

Simulated time itself is `headend.clock.Clock` everywhere: the head-end, the
fleet (another process) and a virtual board's RTC (``board.json``:
``clock.sim_start``, ``clock.real_start_ms``, ``clock.speed``) are built from
the same three numbers (start, wall-clock anchor, speed), so they agree to
within the wall clock's resolution, not within a process start-up time
(which at speed 1500 would be minutes of simulated time).
"""

from __future__ import annotations

from datetime import UTC, datetime


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
