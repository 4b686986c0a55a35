"""What the scenarios share: options, progress, and flash-vs-head-end comparisons."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from headend.api import JobState
from hil.board import FlashImage, VirtualBoard
from hil.rig import Rig

DAY = 86_400
T0 = 1772323200  # 2026-03-01T00:00:00Z (a Sunday), midnight UTC: the scenarios' day 0


@dataclass
class Options:
    """Knobs of a scenario run; None = the scenario's own default (its docstring)."""

    days: float | None = None
    speed: int | None = None
    boards: int | None = None
    cuts: int | None = None
    reads: int | None = None
    latency_s: float | None = None
    outage_days: float | None = None
    meters: int | None = None
    offline_pct: float | None = None
    days_offline: tuple[int, ...] | None = None
    meters_per_conn: int | None = None
    idle_speed: int | None = None
    seed: int = 1
    keep: bool = False
    insecure: bool = False  # plain, anonymous MQTT (else TLS, logins, ACLs)
    board: dict[str, Any] = field(default_factory=dict)  # extra BoardSpec fields of every board
    say: Callable[[str], None] = field(default=lambda s: print(s, file=sys.stderr, flush=True))

    def pick(self, name: str, default: Any) -> Any:
        v = getattr(self, name)
        return default if v is None else v


def when(t: float) -> str:
    return datetime.fromtimestamp(int(t), UTC).strftime("%Y-%m-%d %H:%M")


class Progress:
    """Prints "[real s] sim time  text" lines."""

    def __init__(self, rig: Rig | None, say: Callable[[str], None]) -> None:
        self.rig = rig
        self.say = say
        self.t0 = time.monotonic()

    def __call__(self, text: str) -> None:
        sim = f"{when(self.rig.now())}  " if self.rig is not None and self.rig.service else ""
        self.say(f"[{time.monotonic() - self.t0:6.1f} s] {sim}{text}")


async def collect(rig: Rig, meter_id: int, start: int, timeout: float = 120.0) -> dict[str, Any]:
    """A period read [start, last complete interval) through a head-end job, waited for."""
    end = int(rig.now()) + 1
    job = await rig.read(meter_id, timeout=timeout, mode=0, start=start, end=end)
    return {
        "state": str(job.state),
        "parts": job.parts,
        "attempts": job.attempts,
        "ok": job.state is JobState.DONE,
    }


async def compare(rig: Rig, board: VirtualBoard, since: int, until: int) -> dict[str, int]:
    """The board's flash (a snapshot) against the head-end's store: `compare_image`."""
    return await compare_image(rig, board.meter_id, board.read_flash(), since, until)


async def compare_image(
    rig: Rig, meter_id: int, img: FlashImage, since: int, until: int
) -> dict[str, int]:
    """A meter's flash image against the head-end's store, for intervals in [since, until).

    Returns counts: on_flash, headend_missing (on flash, not held), value_mismatch
    (channel 0 differs), headend_extra (held, not on flash), doubled (a start twice
    on flash), gaps (grid slots with no record on flash), corrupt_records, and
    the energy on flash: energy_wh (channel 0, Wh) and nonzero_intervals (any
    channel > 0). A board that counts nothing matches the head-end perfectly:
    `counted` tells it apart.
    """
    flash = [iv for iv in img.intervals if since <= iv[0] < until]
    held = await rig.stored_intervals(meter_id, since, until)
    starts = {iv[0] for iv in flash}
    missing = [iv for iv in flash if iv[0] not in held]
    mismatch = [iv for iv in flash if iv[0] in held and held[iv[0]].value != iv[3][0]]
    first = min(starts) if starts else since
    last = max(starts) if starts else since
    return {
        "on_flash": len(flash),
        "headend_missing": len(missing),
        "value_mismatch": len(mismatch),
        "headend_extra": len(set(held) - starts),
        "doubled": img.doubled(),
        "gaps": len(img.gaps(first, last)),
        "corrupt_records": img.corrupt_records,
        "energy_wh": sum(iv[3][0] for iv in flash),
        "nonzero_intervals": sum(1 for iv in flash if any(iv[3])),
    }


def counted(cmp_: dict[str, int]) -> bool:
    """The board recorded energy (a `compare` result): all-zero intervals prove nothing."""
    return cmp_["nonzero_intervals"] > 0
