"""powercut: D simulated days with K random power cuts (M02, M05).

Each cut takes the board's power away without warning at a random instant
(a virtual board: kill -9 of the interpreter, RAM lost) and powers it up
again after a random off time (0-30 simulated minutes; a real boot adds its
own). Before each cut the board says which interval it last closed. At the
end the board is slowed down, the head-end reads everything since day 0
through an on-demand period read, and the board's flash is decoded (a virtual
board: cut once more, then the firmware's own Store).

Checks: every interval reported closed before a cut is held by the head-end
and on flash, and neither has a hole on the interval grid
(``lost_closed_intervals`` 0), no record fails its check
(``corrupt_records`` 0), no interval is doubled, the head-end holds every
interval on flash with the same value (``headend_missing`` 0), and every
board counted energy (``boards_without_energy`` 0: all-zero intervals would
match the head-end and prove nothing).
Defaults: 45 days, 200 cuts, 5000x, 1 board.

`cut_at()` and `verify()` are the scenario for any `hil.anyboard.Board`:
`python -m hil run powercut` runs them on a real board (resets through its
console line, every ``--gap`` seconds; no flash to decode).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

from hil.anyboard import Board
from hil.rig import Rig
from hil.scenarios.common import DAY, T0, Options, Progress, collect, compare_image, counted

SLOW = 20  # speed of the final collection (the meter re-sends parts after 15-30 simulated s)

Plan = list[tuple[float, int, float]]  # (simulated instant, board index, off time s)


def random_plan(start: float, end: float, cuts: int, boards: int, seed: int) -> Plan:
    """``cuts`` cuts at random instants of [start + 30 min, end - 30 min), random boards,
    off 0 s (two in three) or up to 30 simulated minutes."""
    rnd = random.Random(seed)
    at = sorted(rnd.uniform(start + 1800, end - 1800) for _ in range(cuts))
    which = [rnd.randrange(boards) for _ in at]
    offs = [rnd.choice((0, 0, rnd.uniform(0, 1800))) for _ in at]
    return list(zip(at, which, offs, strict=True))


async def cut_at(
    rig: Rig, boards: Sequence[Board], plan: Plan, say: Callable[[str], None]
) -> list[tuple[int, int]]:
    """Cut the power as planned; (meter, last closed interval) seen before each cut."""
    closed: list[tuple[int, int]] = []
    for i, (t, b, off) in enumerate(plan):
        await rig.until(t)
        board = boards[b]
        last = await board.last_closed()
        if last is not None:
            closed.append((board.meter_id, last))
        await board.power_cut()
        if off:
            await rig.until(rig.now() + off)
        await board.power_up()
        if (i + 1) % max(1, len(plan) // 10) == 0:
            say(f"{i + 1} cuts done")
    return closed


async def verify(
    rig: Rig,
    boards: Sequence[Board],
    since: int,
    closed: list[tuple[int, int]],
    timeout: float = 300,
) -> dict[str, Any]:
    """The final period reads since ``since``, then what the head-end and the flash hold."""
    reads = [await collect(rig, b.meter_id, since, timeout=timeout) for b in boards]
    until = int(rig.now())
    lost = corrupt = missing = mismatch = doubled = on_flash = pf = held_n = energy = silent = 0
    for board in boards:
        mid = board.meter_id
        before = {s for m, s in closed if m == mid}
        held = await rig.stored_intervals(mid, since, until)
        held_n += len(held)
        lost += len(before - set(held)) + len(_holes(sorted(held)))
        img = await board.flash_at_rest()
        if img is None:
            continue
        starts = set(img.starts())
        lost += len(before - starts)
        cmp_ = await compare_image(rig, mid, img, since, until)
        lost += cmp_["gaps"]
        corrupt += cmp_["corrupt_records"]
        missing += cmp_["headend_missing"]
        mismatch += cmp_["value_mismatch"]
        doubled += cmp_["doubled"]
        on_flash += cmp_["on_flash"]
        energy += cmp_["energy_wh"]
        silent += not counted(cmp_)
        pf += sum(1 for iv in img.intervals if iv[2] & 1)
    out: dict[str, Any] = {
        "intervals_held": held_n,
        "intervals_on_flash": on_flash,
        "power_failed_intervals": pf,
        "closed_before_cut_checked": len(closed),
        "lost_closed_intervals": lost,
        "corrupt_records": corrupt,
        "doubled_intervals": doubled,
        "headend_missing": missing,
        "value_mismatch": mismatch,
        "final_read_ok": all(r["ok"] for r in reads),
        "energy_wh": energy,
        "boards_without_energy": silent,
    }
    out["ok"] = bool(
        lost == corrupt == doubled == missing == mismatch == silent == 0
        and held_n > 0
        and out["final_read_ok"]
    )
    return out


def _holes(starts: list[int]) -> list[int]:
    """Grid slots between the first and the last start (sorted) with no interval;
    the grid's step is the smallest one between two starts."""
    if len(starts) < 2:
        return []
    step = min(b - a for a, b in zip(starts, starts[1:], strict=False))
    have = set(starts)
    return [t for t in range(starts[0], starts[-1], step) if t not in have]


async def run(opts: Options) -> dict[str, Any]:
    days = float(opts.pick("days", 45))
    cuts = int(opts.pick("cuts", 200))
    speed = int(opts.pick("speed", 5000))
    nboards = int(opts.pick("boards", 1))
    end = T0 + int(days * DAY)
    plan = random_plan(T0, end, cuts, nboards, opts.seed)
    async with Rig(
        boards=nboards,
        speed=speed,
        sim_start=T0 - 3600,  # boots at 23:00 the day before: day 0 is recorded whole
        keep=opts.keep,
        insecure=opts.insecure,
        say=opts.say,
        headend={"ondemand_timeout_s": 3600},
        board_options=opts.board,
    ) as rig:
        p = Progress(rig, opts.say)
        p(f"powercut: {days:g} days, {cuts} cuts at random instants, {speed}x")
        closed = await cut_at(rig, rig.board_list, plan, p)
        await rig.until(end)
        p(f"{days:g} days done; slowing to {SLOW}x for the final collection")
        await rig.set_speed(SLOW)
        out: dict[str, Any] = {
            "scenario": "powercut",
            "days": days,
            "speed": speed,
            "boards": nboards,
        }
        found = await verify(rig, rig.board_list, T0, closed)
        p(f"final period reads ok: {found['final_read_ok']}")
        out["cuts"] = sum(b.cuts for b in rig.board_list) - nboards  # not the last one
        out.update(found)
        out["ok"] = bool(found["ok"] and out["cuts"] >= cuts and found["intervals_on_flash"] > 0)
        return out
