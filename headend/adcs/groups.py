"""Read groups: 20-minute slots of the nightly window, kept balanced (H01).

Pure functions: given the loads of the groups and the meters to place, say
where each goes. Placement is deterministic (meters in id order, the least
loaded group relative to capacity, ties to the earliest group), so two runs
on the same data agree and a test can state the answer.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import time

from headend.errors import ConfigError


@dataclass(frozen=True)
class Window:
    """The nightly collection window cut into groups."""

    start: time
    end: time
    group_minutes: int
    capacity: int

    def __post_init__(self) -> None:
        if self.group_minutes <= 0 or self.capacity <= 0:
            raise ConfigError("group_minutes and capacity must be > 0")
        if self.end_min <= self.start_min:
            raise ConfigError(f"window end {self.end} must be after start {self.start}")

    @property
    def start_min(self) -> int:
        return self.start.hour * 60 + self.start.minute

    @property
    def end_min(self) -> int:
        return self.end.hour * 60 + self.end.minute

    @property
    def count(self) -> int:
        """Groups in the window; the last may be shorter."""
        return -(-(self.end_min - self.start_min) // self.group_minutes)

    def bounds(self, group: int) -> tuple[int, int]:
        """(start, end) of a group in seconds after local midnight."""
        if not 0 <= group < self.count:
            raise ConfigError(f"read group {group} outside 0..{self.count - 1}")
        s = self.start_min + group * self.group_minutes
        e = min(s + self.group_minutes, self.end_min)
        return s * 60, e * 60

    def label(self, group: int) -> str:
        s, e = self.bounds(group)
        return f"{s // 3600:02d}:{s // 60 % 60:02d}-{e // 3600:02d}:{e // 60 % 60:02d}"

    def read_offset(self, group: int, meter_id: int) -> int:
        """The meter's read time (s after local midnight) inside its group.

        Spread by a hash of the id so a group's meters do not all send at once;
        kept 60 s clear of the group's end so the read lands inside it.
        """
        s, e = self.bounds(group)
        span = max(1, e - s - 60)
        h = int.from_bytes(hashlib.sha256(meter_id.to_bytes(8, "big")).digest()[:4], "big")
        return s + h % span


def place(window: Window, loads: Mapping[int, int], meters: Iterable[int]) -> dict[int, int]:
    """Group for each meter: the least loaded by fill ratio, earliest on ties.

    Meters that find every group full are left out of the result (they stay
    unscheduled and are tried again at the next assignment).
    """
    current = {g: loads.get(g, 0) for g in range(window.count)}
    out: dict[int, int] = {}
    for meter in sorted(meters):
        open_groups = [g for g in current if current[g] < window.capacity]
        if not open_groups:
            break
        g = min(open_groups, key=lambda k: (current[k] / window.capacity, k))
        current[g] += 1
        out[meter] = g
    return out


def imbalance(window: Window, loads: Mapping[int, int]) -> int:
    """Largest minus smallest group load: 0 or 1 after a fresh placement."""
    values = [loads.get(g, 0) for g in range(window.count)]
    return max(values) - min(values)
