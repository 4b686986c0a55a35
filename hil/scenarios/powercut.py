"""powercut: D simulated days with K random power cuts (M02, M05).

Each cut kills the MicroPython process without warning at a random instant
(kill -9: no handler runs, RAM is lost) and powers it up again after a
random off time (0-30 simulated minutes; a real boot adds its own). Before
each cut the board's status says which interval it last closed. At the end
the board is slowed down, the head-end reads everything since day 0 through
an on-demand period read, the board is cut one last time and its flash is
decoded with the firmware's own Store.

Checks: every interval reported closed before a cut is on flash and the
interval grid has no hole (``lost_closed_intervals`` 0), no record fails its
check (``corrupt_records`` 0), no interval is doubled, and the head-end holds
every interval on flash with the same value (``headend_missing`` 0), and
every board counted energy (``boards_without_energy`` 0: all-zero intervals
would match the head-end and prove nothing).
Defaults: 45 days, 200 cuts, 5000x, 1 board.
"""

from __future__ import annotations

import random
from typing import Any

from hil.rig import Rig
from hil.scenarios.common import DAY, T0, Options, Progress, collect, compare, counted

SLOW = 20  # speed of the final collection (the meter re-sends parts after 15-30 simulated s)


async def run(opts: Options) -> dict[str, Any]:
    days = float(opts.pick("days", 45))
    cuts = int(opts.pick("cuts", 200))
    speed = int(opts.pick("speed", 5000))
    nboards = int(opts.pick("boards", 1))
    rnd = random.Random(opts.seed)
    end = T0 + int(days * DAY)
    plan = sorted(rnd.uniform(T0 + 1800, end - 1800) for _ in range(cuts))
    board_cuts = [rnd.randrange(nboards) for _ in plan]
    offs = [rnd.choice((0, 0, rnd.uniform(0, 1800))) for _ in plan]
    closed_before_cut: list[tuple[int, int]] = []  # (meter, interval start)
    async with Rig(
        boards=nboards,
        speed=speed,
        sim_start=T0 - 3600,  # boots at 23:00 the day before: day 0 is recorded whole
        keep=opts.keep,
        say=opts.say,
        headend={"ondemand_timeout_s": 3600},
        board_options=opts.board,
    ) as rig:
        p = Progress(rig, opts.say)
        p(f"powercut: {days:g} days, {cuts} cuts at random instants, {speed}x")
        for i, (t, b, off) in enumerate(zip(plan, board_cuts, offs, strict=True)):
            await rig.until(t)
            board = rig.board_list[b]
            st = await board.status()
            if st["last"]:
                closed_before_cut.append((board.meter_id, st["last"][0]))
            await board.power_cut()
            if off:
                await rig.until(rig.now() + off)
            await board.power_up()
            if (i + 1) % max(1, cuts // 10) == 0:
                p(f"{i + 1} cuts done")
        await rig.until(end)
        p(f"{days:g} days done; slowing to {SLOW}x for the final collection")
        await rig.set_speed(SLOW)
        reads = []
        for board in rig.board_list:
            reads.append(await collect(rig, board.meter_id, T0, timeout=300))
        p(f"final period reads: {reads}")
        until = int(rig.now())
        for board in rig.board_list:
            await board.power_cut()
        out: dict[str, Any] = {
            "scenario": "powercut",
            "days": days,
            "speed": speed,
            "boards": nboards,
            "cuts": sum(b.cuts for b in rig.board_list) - nboards,
        }
        lost = corrupt = missing = mismatch = doubled = on_flash = pf = energy = silent = 0
        for board in rig.board_list:
            img = board.read_flash()
            starts = set(img.starts())
            lost += sum(1 for m, s in closed_before_cut if m == board.meter_id and s not in starts)
            cmp_ = await compare(rig, board, T0, until)
            lost += cmp_["gaps"]
            corrupt += cmp_["corrupt_records"]
            missing += cmp_["headend_missing"]
            mismatch += cmp_["value_mismatch"]
            doubled += cmp_["doubled"]
            on_flash += cmp_["on_flash"]
            energy += cmp_["energy_wh"]
            silent += not counted(cmp_)
            pf += sum(1 for iv in img.intervals if iv[2] & 1)
        out.update(
            {
                "intervals_on_flash": on_flash,
                "power_failed_intervals": pf,
                "closed_before_cut_checked": len(closed_before_cut),
                "lost_closed_intervals": lost,
                "corrupt_records": corrupt,
                "doubled_intervals": doubled,
                "headend_missing": missing,
                "value_mismatch": mismatch,
                "final_read_ok": all(r["ok"] for r in reads),
                "energy_wh": energy,
                "boards_without_energy": silent,
            }
        )
        out["ok"] = (
            out["cuts"] >= cuts
            and lost == corrupt == doubled == missing == mismatch == silent == 0
            and on_flash > 0
            and out["final_read_ok"]
        )
        return out
