"""outage: the meter's link is down for D days, then everything is backfilled (M15, D01).

Day 0 runs normally (registration, the evening assignment, the first daily
read). On day 1 at 03:00 the board's MQTT link goes down (control port
``link down``: the firmware drops the connection and keeps it down) for
``outage_days``; meanwhile the meter keeps recording, its scheduled reads
cannot be sent and, at the next occurrence, count as failed (event 7, M15).
When the link returns the pending read covers everything since the last
acknowledged one, and the pushed events follow.

Checks: the head-end holds every interval on flash up to the last midnight
before the link returned (``headend_missing`` 0, every day complete), the
meter has nothing left to send (``pending_events`` 0, no read in progress),
every board counted energy (``boards_without_energy`` 0).
``backfill_s`` is the real time from link-up until the head-end was complete.
Defaults: outage 3 days, 3000x, 1 board.
"""

from __future__ import annotations

import time
from typing import Any

from hil.rig import Rig
from hil.scenarios.common import DAY, T0, Options, Progress, compare, counted


async def run(opts: Options) -> dict[str, Any]:
    outage = float(opts.pick("outage_days", opts.days if opts.days is not None else 3))
    speed = int(opts.pick("speed", 3000))
    nboards = int(opts.pick("boards", 1))
    down_at = T0 + DAY + 3 * 3600
    up_at = down_at + int(outage * DAY)
    complete_until = (up_at - 3 * 3600) // DAY * DAY  # the last midnight before the link returned
    async with Rig(
        boards=nboards,
        speed=speed,
        sim_start=T0 - 7200,
        board_options=opts.board,
        keep=opts.keep,
        insecure=opts.insecure,
        say=opts.say,
    ) as rig:
        p = Progress(rig, opts.say)
        p(f"outage: link down day 1 03:00 for {outage:g} days, {speed}x")
        await rig.until(down_at)
        for b in rig.board_list:
            await b.link(False)
        p("link down")
        before = {m: len(await rig.stored_intervals(m, T0, up_at)) for m in rig.meter_ids}
        await rig.until(up_at)
        held_during = {m: len(await rig.stored_intervals(m, T0, up_at)) for m in rig.meter_ids}
        for b in rig.board_list:
            await b.link(True)
        t_up = time.monotonic()
        p("link up again: backfill")

        async def complete() -> bool:
            for m in rig.meter_ids:
                cov = await rig.coverage(m, T0, complete_until)
                if not cov or not all(c.complete for c in cov):
                    return False
            return True

        done = True
        try:
            await rig.eventually(complete, 120, "head-end complete", every=0.1)
        except Exception as e:  # reported as a figure, not raised
            p(f"not complete: {e}")
            done = False
        backfill_s = time.monotonic() - t_up
        sim_backfill = backfill_s * rig.clock.speed
        p(f"backfilled in {backfill_s:.1f} s real ({sim_backfill / 60:.0f} simulated minutes)")
        await rig.until(rig.now() + 2 * 3600)  # let event pushes and acks settle
        sts = {b.meter_id: await b.status() for b in rig.board_list}
        for b in rig.board_list:
            await b.power_cut()
        missing = gaps = doubled = corrupt = energy = silent = 0
        read_failed = 0
        days = 0
        for b in rig.board_list:
            cmp_ = await compare(rig, b, T0, complete_until)
            missing += cmp_["headend_missing"] + cmp_["value_mismatch"]
            gaps += cmp_["gaps"]
            doubled += cmp_["doubled"]
            corrupt += cmp_["corrupt_records"]
            energy += cmp_["energy_wh"]
            silent += not counted(cmp_)
            read_failed += len(b.read_flash().event_codes(7))
            cov = await rig.coverage(b.meter_id, T0, complete_until)
            days += sum(1 for c in cov if c.complete)
        out: dict[str, Any] = {
            "scenario": "outage",
            "outage_days": outage,
            "speed": speed,
            "boards": nboards,
            "intervals_held_at_link_down": sum(before.values()),
            "intervals_held_at_link_up": sum(held_during.values()),
            "days_expected": nboards * (complete_until - T0) // DAY,
            "days_complete": days,
            "headend_missing": missing,
            "gaps_on_flash": gaps,
            "doubled_intervals": doubled,
            "corrupt_records": corrupt,
            "read_failed_events": read_failed,
            "pending_events": sum(s["pending_events"] for s in sts.values()),
            "reads_in_progress": sum(s["reads"] for s in sts.values()),
            "backfill_s": round(backfill_s, 2),
            "energy_wh": energy,
            "boards_without_energy": silent,
        }
        out["ok"] = bool(
            done
            and out["days_complete"] == out["days_expected"]
            and missing == gaps == doubled == corrupt == silent == 0
            and out["pending_events"] == 0
            and out["reads_in_progress"] == 0
            and out["intervals_held_at_link_up"] == out["intervals_held_at_link_down"]
        )
        return out
