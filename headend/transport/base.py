"""The one interface every link to meters implements."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from headend.errors import HeadendError


class TransportError(HeadendError):
    """A link could not carry a frame (down, closed, or refused)."""


@dataclass(frozen=True)
class Uplink:
    """One frame as it arrived, with the link it came by and when (wall clock, epoch s:
    the link stamps it on arrival, before any queue, so a time-sync answer's t2 is
    the arrival and not the end of a wait behind other frames)."""

    meter_id: int
    frame: bytes
    transport: str
    received: float = field(default_factory=time.time)


Deliver = Callable[[Uplink], Awaitable[None]]


class Transport(Protocol):
    """A link to some meters.

    `run` receives until cancelled, reconnecting by itself with backoff;
    `send` hands one frame to one meter (TransportError if it cannot).
    """

    name: str

    async def run(self, deliver: Deliver) -> None: ...

    async def send(self, meter_id: int, frame: bytes, expiry_s: int | None = None) -> None: ...


def backoff_s(attempt: int, base: float = 0.5, cap: float = 30.0) -> float:
    """Reconnect delay: exponential and capped (the loop adds no jitter: one service)."""
    return float(min(cap, base * 2 ** min(attempt, 16)))
