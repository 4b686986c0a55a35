"""Refused uplinks, counted per reason and logged in aggregate.

Anyone on the network can send junk, so a refused frame must cost no more
than a counter: `Rejections.add` counts it under its (kind, reason) in
memory, keeping the first example and at most a few meter ids. `flush`
writes ONE activity row and one log line per reason for the period (a
minute by default), however many frames there were.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from headend.store.activity import ActivityLog, Kind

_log = logging.getLogger("headend.core")

PERIOD_MS = 60_000
_MAX_IDS = 5  # meter ids named per reason and period
_MAX_EXAMPLE = 200  # characters of the first example kept


@dataclass
class _Count:
    n: int = 0
    example: str = ""
    meters: list[int] = field(default_factory=list)
    more_meters: bool = False


class Rejections:
    """Args: period_ms: how often the counts are written (simulated ms)."""

    def __init__(self, period_ms: int = PERIOD_MS) -> None:
        self.period_ms = period_ms
        self._counts: dict[tuple[Kind, str], _Count] = {}
        self._since_ms: int | None = None
        self.total = 0

    def add(self, kind: Kind, reason: str, meter_id: int | None, text: str, now_ms: int) -> None:
        """Count one refused frame (``reason``: a short key, ``text``: what happened)."""
        self.total += 1
        if self._since_ms is None:
            self._since_ms = now_ms
        c = self._counts.setdefault((kind, reason), _Count())
        c.n += 1
        if not c.example:
            c.example = text[:_MAX_EXAMPLE]
        if meter_id is not None and meter_id not in c.meters:
            if len(c.meters) < _MAX_IDS:
                c.meters.append(meter_id)
            else:
                c.more_meters = True

    def pending(self) -> int:
        """Frames counted and not written yet."""
        return sum(c.n for c in self._counts.values())

    def flush(self, activity: ActivityLog, now_ms: int, force: bool = False) -> int:
        """Write one row per reason once the period is over (``force``: now); returns rows."""
        since = self._since_ms
        if since is None or (not force and now_ms - since < self.period_ms):
            return 0
        counts, self._counts, self._since_ms = self._counts, {}, None
        secs = max(0, now_ms - since) // 1000
        for (kind, reason), c in sorted(counts.items()):
            ids = ", ".join(map(str, c.meters)) + (", ..." if c.more_meters else "")
            who = f"meter(s) {ids}" if ids else "no meter id"
            text = f"{c.n} frame(s) refused in {secs} s: {reason} ({who}); first: {c.example}"
            _log.warning("%s", text)
            only = c.meters[0] if len(c.meters) == 1 and not c.more_meters else None
            activity.log(now_ms, kind, text, only)
        return len(counts)
