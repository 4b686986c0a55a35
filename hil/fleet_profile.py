"""What each fleet meter is: its load, its clock and its failure profile.

The load is the reference CSV (15-minute rows of Wh/varh, four channels,
repeating), scaled per meter and shifted by a whole number of days so
neighbours do not move in step. A failure profile says how the meter's link
and clock misbehave; a `--profile-mix` string draws profiles for a fleet from
a seed, so the same arguments give the same fleet. Integers only, as on the
meter: energy is Wh with the remainder carried, times are UTC seconds.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hil import loadprofile
from hil.loadprofile import DEFAULT_CSV
from hil.loadprofile import ProfileError as ProfileError  # one error: a bad CSV, mix or plan

DAY = 86_400
PROFILE_STEP = 900  # the CSV's interval
PROFILES = ("normal", "offline", "intermittent", "slow", "skew")
DEFAULT_MIX = "normal=0.80,offline=0.04,intermittent=0.08,slow=0.05,skew=0.03"


class LoadProfile:
    """The reference CSV as integer rows; `energy(t0, t1, scale_pct, frac)` drains it."""

    def __init__(self, path: Path = DEFAULT_CSV) -> None:
        p = loadprofile.read(path)
        if p.step != PROFILE_STEP:
            raise ProfileError(f"{path}: rows {p.step} s apart; the fleet needs {PROFILE_STEP} s")
        self.path = p.path
        self.t0 = p.t0
        self.rows = p.rows

    def row(self, t: int) -> tuple[int, int, int, int]:
        return self.rows[((t - self.t0) // PROFILE_STEP) % len(self.rows)]

    def energy(self, t0: int, t1: int, scale_pct: int, frac: list[int]) -> list[int]:
        """Whole Wh per channel in true time [t0, t1); `frac` carries the remainders."""
        out = [0, 0, 0, 0]
        unit = PROFILE_STEP * 100
        t = t0
        while t < t1:
            end = min(t1, t - (t - self.t0) % PROFILE_STEP + PROFILE_STEP)
            row = self.row(t)
            dt = end - t
            for i in range(4):
                frac[i] += row[i] * scale_pct * dt
                whole = frac[i] // unit
                frac[i] -= whole * unit
                out[i] += whole
            t = end
        return out


@dataclass(frozen=True)
class Outage:
    """The link is down in true time [start, end); ``mute``: it stays up and the meter
    believes it sends, but its uplinks are lost on the way (a one-way failure: each read
    is tried and fails, M15, as no ack comes)."""

    start: int
    end: int
    mute: bool = False

    def __post_init__(self) -> None:
        if self.end <= self.start:
            raise ProfileError(f"outage must end after it starts: {self.start}..{self.end}")

    def holds(self, t: float) -> bool:
        """True time t is in it."""
        return self.start <= t < self.end


@dataclass(frozen=True)
class MeterPlan:
    """One fleet meter: identity, load, clock and failure profile.

    Attributes:
        meter_id: u32, topics ami/v1/<id>/up|down.
        profile: one of PROFILES (what kind of trouble it has).
        scale_pct: percent of the reference load.
        shift_days: the load profile is read this many days later.
        skew_s: RTC error at the start (meter time = true time + skew).
        drift_ppm: RTC drift from then on.
        latency_s: simulated one-way link latency (each frame, each way).
        outages: link down in these true-time spans.
    """

    meter_id: int
    profile: str = "normal"
    scale_pct: int = 100
    shift_days: int = 0
    skew_s: int = 0
    drift_ppm: int = 0
    latency_s: float = 0.0
    outages: tuple[Outage, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.profile not in PROFILES:
            raise ProfileError(f"profile: expected one of {PROFILES}, got {self.profile!r}")
        if not 0 < self.meter_id < 2**32:
            raise ProfileError(f"meter_id out of range: {self.meter_id}")
        if self.scale_pct <= 0 or self.latency_s < 0:
            raise ProfileError("scale_pct must be > 0 and latency_s >= 0")

    def online(self, t: float) -> bool:
        """The link is up at true time t (it may be mute: `muted`)."""
        return not any(o.holds(t) and not o.mute for o in self.outages)

    def muted(self, t: float) -> bool:
        """Uplinks sent at true time t are lost (the link is up: the meter cannot tell)."""
        return any(o.holds(t) and o.mute for o in self.outages)


def parse_mix(text: str) -> dict[str, float]:
    """``normal=0.8,offline=0.1,...`` -> weights (need not sum to 1)."""
    mix: dict[str, float] = {}
    for item in text.split(","):
        if not item.strip():
            continue
        name, _, w = item.partition("=")
        name = name.strip()
        if name not in PROFILES:
            raise ProfileError(f"--profile-mix: unknown profile {name!r}; known: {PROFILES}")
        try:
            mix[name] = float(w)
        except ValueError as e:
            raise ProfileError(f"--profile-mix: {name} needs a weight, got {w!r}") from e
        if mix[name] < 0:
            raise ProfileError(f"--profile-mix: negative weight for {name}")
    if not mix or sum(mix.values()) <= 0:
        raise ProfileError(f"--profile-mix: no positive weight in {text!r}")
    return mix


def _counts(n: int, mix: dict[str, float]) -> dict[str, int]:
    """Largest-remainder split of n meters by weight (exact, deterministic)."""
    total = sum(mix.values())
    exact = {k: n * w / total for k, w in mix.items()}
    got = {k: int(v) for k, v in exact.items()}
    rest = n - sum(got.values())
    for k in sorted(exact, key=lambda k: (got[k] - exact[k], k))[:rest]:
        got[k] += 1
    return got


def plan_fleet(
    n: int,
    first_id: int,
    mix: dict[str, float],
    seed: int,
    install: int,
    day1: int,
    days: int,
    end: int,
) -> list[MeterPlan]:
    """N meter plans: profiles split by weight and assigned by a seeded shuffle.

    install: true time the meters boot; day1: start of the first full day;
    end: the end of the run. Offline meters lose one whole day's link
    (00:00-24:00 UTC of a day in day 2 .. days + 1, so a nightly read is
    missed); intermittent ones flap (down 5-90 min, up 1-8 h); slow ones
    have 0.5-3 s latency each way; skewed ones start 25-300 s off with a
    drift of up to 60 ppm.
    """
    rng = random.Random(seed)
    counts = _counts(n, mix)
    kinds = [k for k in PROFILES for _ in range(counts.get(k, 0))]
    rng.shuffle(kinds)
    plans = []
    for i, kind in enumerate(kinds):
        mid = first_id + i
        kw: dict[str, object] = {
            "scale_pct": rng.randint(40, 250),
            "shift_days": rng.randrange(45),
            "skew_s": rng.randint(-5, 5),
        }
        if kind == "offline":
            d = day1 + DAY * rng.randint(1, days)
            kw["outages"] = (Outage(d, d + DAY),)
        elif kind == "intermittent":
            spans = []
            t = install + rng.randint(3600, 8 * 3600)
            while t < end:
                down = rng.randint(300, 90 * 60)
                spans.append(Outage(t, t + down))
                t += down + rng.randint(3600, 8 * 3600)
            kw["outages"] = tuple(spans)
        elif kind == "slow":
            kw["latency_s"] = rng.uniform(0.5, 3.0)
        elif kind == "skew":
            kw["skew_s"] = rng.choice((-1, 1)) * rng.randint(25, 300)
            kw["drift_ppm"] = rng.randint(-60, 60)
        plans.append(MeterPlan(mid, kind, **kw))  # type: ignore[arg-type]
    return plans


def describe(plans: Sequence[MeterPlan]) -> dict[str, int]:
    """How many meters of each profile."""
    out = dict.fromkeys(PROFILES, 0)
    for p in plans:
        out[p.profile] += 1
    return out
