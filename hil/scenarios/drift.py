"""drift: RTC drift of a few s/day, one 60 s and one 300 s jump (M06-M09, H10).

Three boards boot at 23:44:30 (day 0), in the last quarter hour of the day,
so their first clock validation falls in [23:46, 23:59] (M06: a random
instant of the day after boot, >= 60 s from an interval boundary):

  A (id+0) drift +58 ppm (5 s/day), no jump: validations find <= 20 s, nothing is stepped;
  B (id+1) drift -58 ppm, its RTC jumped +60 s before the first validation:
    stepped automatically and logged (event 3 clock_adjusted, data = old time) (M07, M09);
  C (id+2) drift +58 ppm, its RTC jumped +300 s: event 4 clock_out_of_sync pushed,
    NO automatic step (M08); the head-end logs it and sends an authenticated
    time_set (H10), which the meter applies and logs (event 3).

Then the boards run D more days (daily validations at random instants, as in
the field; the drift accumulates). At the end the head-end reads everything
since day 0 and the flash is compared with it: no interval lost (no hole on
the grid, none missing at the head-end), none doubled, and every board
counted energy (``boards_without_energy`` 0).

The sniffer sees every time_sync_request/response: the reported
``offset_s`` is head-end time at receipt minus meter time at send (one-way
delay included, < 1 s at 200x). Defaults: 2 more days, 200x (time sync needs
a real round trip × speed well under the meter's 4 s limit: hil/README.md).
"""

from __future__ import annotations

from typing import Any

from headend.api import Kind
from hil.rig import Rig
from hil.scenarios.common import DAY, T0, Options, Progress, collect, compare, counted

PPM = 58  # 5 s/day
JUMPS = (0, 60, 300)
DRIFTS = (PPM, -PPM, PPM)
MARGIN_S = 60  # M06: never within 60 s of an interval boundary


async def run(opts: Options) -> dict[str, Any]:
    days = float(opts.pick("days", 2))
    speed = int(opts.pick("speed", 200))
    start = T0 + DAY - 930  # day 0, 23:44:30
    end = T0 + DAY + int(days * DAY) + 600

    def board(i: int) -> dict[str, Any]:
        return {
            **opts.board,
            "drift_ppm": DRIFTS[i],
            "rtc_offset_s": JUMPS[i],
            "push_mask": 0x2836 | 0x08,
        }

    async with Rig(
        boards=3,
        speed=speed,
        sim_start=start,
        board_options=board,
        keep=opts.keep,
        insecure=opts.insecure,
        say=opts.say,
    ) as rig:
        p = Progress(rig, opts.say)
        a, b, c = rig.meter_ids
        p(
            f"drift: A={a} {PPM:+d} ppm; B={b} {-PPM:+d} ppm, RTC +60 s; "
            f"C={c} +{PPM} ppm, RTC +300 s"
        )
        first_window = T0 + DAY + 300
        await rig.until(first_window)
        p("first validations done (day 0, 23:46-23:59)")
        day = first_window
        while day + DAY <= end:
            day += DAY
            await rig.until(day)
            p(f"day {int((day - T0) // DAY) - 1} done")
        await rig.until(end)
        slow = 50 if speed > 50 else speed
        if slow != speed:
            await rig.set_speed(slow)
        reads = [await collect(rig, m, start, timeout=300) for m in rig.meter_ids]
        until = int(rig.now())
        assert rig.sniffer is not None
        seen = rig.sniffer
        time_sets = {m: len(seen.of("time_set", m)) for m in rig.meter_ids}
        logged = {
            m: len(await rig.activity(m, [Kind.TIME_SET])) for m in rig.meter_ids
        }  # head-end log of each time_set it sent
        validations = []
        near_boundary = 0
        for req in seen.of("time_sync_request"):
            t1 = req.fields["body"]["t1_ms"]
            resp = [
                r
                for r in seen.of("time_sync_response", req.meter_id)
                if r.fields["body"]["t1_ms"] == t1
            ]
            r0 = resp[0].fields["body"] if resp else None
            off = None if r0 is None else round((r0["t2_ms"] - t1) / 1000, 1)
            pos = (t1 // 1000) % 900
            if not MARGIN_S <= pos <= 900 - MARGIN_S:
                near_boundary += 1
            validations.append({"meter": req.meter_id, "t1": t1 // 1000, "offset_s": off})
        for m in rig.meter_ids:
            await rig.board(m).power_cut()
        imgs = {m: rig.board(m).read_flash() for m in rig.meter_ids}
        ev = {m: {code: imgs[m].event_codes(code) for code in (3, 4, 5)} for m in rig.meter_ids}
        held4 = [e for e in await rig.call(lambda he: he.events(c, start, until)) if e.code == 4]
        lost = doubled = corrupt = energy = silent = 0
        for m in rig.meter_ids:
            cmp_ = await compare(rig, rig.board(m), start, until)
            energy += cmp_["energy_wh"]
            silent += not counted(cmp_)
            lost += cmp_["gaps"] + cmp_["headend_missing"]
            doubled += cmp_["doubled"]
            corrupt += cmp_["corrupt_records"]
        a_offs = [
            v["offset_s"] for v in validations if v["meter"] == a and v["offset_s"] is not None
        ]
        # C: the one event 3 must come from the time_set, after event 4 (no automatic step)
        c3, c4 = ev[c][3], ev[c][4]
        c_auto_step = sum(1 for s3 in c3 if not c4 or s3[0] < c4[0][0])
        b3 = ev[b][3]
        out: dict[str, Any] = {
            "scenario": "drift",
            "days": days,
            "speed": speed,
            "validations": len(validations),
            "validations_near_boundary": near_boundary,
            "a_offsets_s": a_offs,
            "a_steps": len(ev[a][3]) + len(ev[a][4]),
            "b_steps_logged": len(b3),
            "b_step_from_s": b3[0][2] if b3 else None,
            "b_out_of_sync_events": len(ev[b][4]),
            "c_out_of_sync_events": len(c4),
            "c_out_of_sync_offset_s": c4[0][2] if c4 else None,
            "c_out_of_sync_at_headend": len(held4),
            "c_automatic_steps": c_auto_step,
            "c_time_set_sent": time_sets[c],
            "c_time_set_logged": logged[c],
            "c_steps_logged": len(c3),
            "sync_failed_events": sum(len(ev[m][5]) for m in rig.meter_ids),
            "lost_intervals": lost,
            "doubled_intervals": doubled,
            "corrupt_records": corrupt,
            "final_reads_ok": all(r["ok"] for r in reads),
            "energy_wh": energy,
            "boards_without_energy": silent,
        }
        out["ok"] = bool(
            out["validations"] >= 3
            and near_boundary == 0
            and out["a_steps"] == 0
            and len(b3) == 1
            and not ev[b][4]
            and len(c4) == 1
            and 290 <= (out["c_out_of_sync_offset_s"] or 0) <= 310
            and len(held4) == 1
            and c_auto_step == 0
            and time_sets[c] >= 1
            and logged[c] >= 1
            and len(c3) == 1
            and lost == doubled == corrupt == silent == 0
            and out["final_reads_ok"]
        )
        return out
