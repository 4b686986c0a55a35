"""Read-group balance analysis (H03), pure: arrivals in, verdicts and moves out.

A meter-day is *on time* when the first scheduled read of the day arrived
before its group's end plus ``late_s``, *late* when after, *missing* without
one. A meter is consistently late (missing) when more than half of its days
were late or missing (more late than missing days: late). A group is
*over*-committed when at least ``over_pct`` % of its meters are consistently
late or missing, *under*-committed when all of its meters met their
schedule every day (an empty 20-minute period too), else *ok*.
From each over-committed group (worst first) about ``move_pct`` % of its
meters (at least one) move to the least-loaded under-committed group with
room: the late ones first, then the on-time ones, never a missing one
(moving a silent meter changes nothing; D06 reports it).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from headend.adcs.groups import Window


class Status(enum.StrEnum):
    ON_TIME = "on_time"
    LATE = "late"
    MISSING = "missing"


class Verdict(enum.StrEnum):
    OVER = "over"
    UNDER = "under"
    OK = "ok"


@dataclass(frozen=True)
class GroupFigures:
    group: int
    meters: int
    on_time: int
    late: int
    missing: int
    verdict: Verdict


@dataclass(frozen=True)
class Move:
    meter_id: int
    from_grp: int
    to_grp: int
    why: str


@dataclass(frozen=True)
class Analysis:
    groups: list[GroupFigures]
    moves: list[Move]


@dataclass(frozen=True)
class Rules:
    late_s: int
    over_pct: int
    move_pct: int


def meter_status(
    window: Window, group: int, days: Sequence[int], seen: Mapping[int, int], late_s: int
) -> Status:
    """A meter's status over ``days`` from its arrivals (day -> s after local midnight)."""
    end = window.bounds(group)[1] + late_s
    late = missing = 0
    for d in days:
        tod = seen.get(d)
        if tod is None:
            missing += 1
        elif tod >= end:
            late += 1
    if 2 * (late + missing) <= len(days):
        return Status.ON_TIME
    return Status.LATE if late >= missing else Status.MISSING


def analyse(
    window: Window,
    rules: Rules,
    members: Mapping[int, int],
    loads: Mapping[int, int],
    days: Sequence[int],
    arrivals: Mapping[int, Mapping[int, int]],
) -> Analysis:
    """Figures per group and the moves.

    ``members``: meter -> group of the meters analysed (in their group for all of
    ``days``); ``loads``: meters per group now (all members); ``arrivals``:
    meter -> day -> arrival s after local midnight.
    """
    status = {
        mid: meter_status(window, grp, days, arrivals.get(mid, {}), rules.late_s)
        for mid, grp in members.items()
    }
    by_group: dict[int, list[int]] = {g: [] for g in range(window.count)}
    for mid in sorted(members):
        by_group[members[mid]].append(mid)
    figures: list[GroupFigures] = []
    for g, mids in by_group.items():
        counts = {s: sum(status[m] is s for m in mids) for s in Status}
        bad = counts[Status.LATE] + counts[Status.MISSING]
        if bad and bad * 100 >= rules.over_pct * len(mids):
            verdict = Verdict.OVER
        elif not bad and loads.get(g, 0) < window.capacity:
            verdict = Verdict.UNDER
        else:
            verdict = Verdict.OK
        figures.append(
            GroupFigures(
                g,
                len(mids),
                counts[Status.ON_TIME],
                counts[Status.LATE],
                counts[Status.MISSING],
                verdict,
            )
        )
    return Analysis(figures, _moves(window, rules, figures, by_group, status, loads))


def _moves(
    window: Window,
    rules: Rules,
    figures: list[GroupFigures],
    by_group: Mapping[int, list[int]],
    status: Mapping[int, Status],
    loads: Mapping[int, int],
) -> list[Move]:
    load = {g: loads.get(g, 0) for g in range(window.count)}
    under = [f.group for f in figures if f.verdict is Verdict.UNDER]
    over = sorted(
        (f for f in figures if f.verdict is Verdict.OVER),
        key=lambda f: (-(f.late + f.missing) / f.meters, f.group),
    )
    moves: list[Move] = []
    for f in over:
        want = max(1, round(f.meters * rules.move_pct / 100))
        mids = by_group[f.group]
        pick = [m for m in mids if status[m] is Status.LATE]
        pick += [m for m in mids if status[m] is Status.ON_TIME]
        for mid in pick[:want]:
            room = [g for g in under if load[g] < window.capacity]
            if not room:
                return moves
            to = min(room, key=lambda g: (load[g] / window.capacity, g))
            load[to] += 1
            load[f.group] -= 1
            why = f"group {window.label(f.group)} over-committed; meter {status[mid]}"
            moves.append(Move(mid, f.group, to, why))
    return moves
