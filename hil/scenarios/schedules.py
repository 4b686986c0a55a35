"""schedules: an hourly non-default schedule for a day next to the default read.

Requirements: M11, M14, M15, H07.

Day 0, 19:00: the head-end sets slot 1 on every board: every hour on the
hour during day 1 (start 00:01, end 24:00, source ``hil:schedules``); the
evening assignment (20:00) puts the boards in a read group (slot 0, the
default daily read). On day 1 the link is down from 05:45 to 07:15, so the
06:00 read cannot be sent and fails at the 07:00 occurrence (event 7, M15).

Expected scheduled reads of day 1 (the sniffer sees every read_response):
  01:00 [00:00, 01:00)  the first occurrence: from midnight (M14)
  02:00..05:00          each from the previous read (M14)
  07:00 [05:00, 07:00)  everything since the last successful read (M15)
  08:00..23:00          from the previous read again
and the default read of day 1 [00:00, 24:00) on day 2 at the group's time.
Checks: every expected span arrived, no other span of day 1, the schedule
acked (head-end) and logged (event 6), the failure logged (event 7), and the
head-end holds day 1 complete. Defaults: 3000x, 1 board.
"""

from __future__ import annotations

from typing import Any

from headend.api import Headend, ScheduleSpec, ScheduleState
from hil.rig import Rig
from hil.scenarios.common import DAY, T0, Options, Progress

H = 3600
SOURCE = "hil:schedules"


def spans(rig: Rig, meter_id: int) -> set[tuple[int, int]]:
    """(start, end) of the intervals of each scheduled read_response frame (repeats once)."""
    assert rig.sniffer is not None
    out = set()
    for s in rig.sniffer.of("read_response", meter_id):
        b = s.fields["body"]
        if b["kind"] != 0:
            continue
        ivs = [x["body"] for x in b["sections"] if x["tag"] == "intervals"]
        if ivs:
            lo = min(v["start"] for v in ivs)
            hi = max(v["start"] + len(v["flags"]) * v["interval_s"] for v in ivs)
            out.add((lo, hi))
    return out


async def run(opts: Options) -> dict[str, Any]:
    speed = int(opts.pick("speed", 3000))
    nboards = int(opts.pick("boards", 1))
    day = T0 + DAY
    async with Rig(
        boards=nboards,
        speed=speed,
        sim_start=T0 + 18 * H,
        board_options=opts.board,
        keep=opts.keep,
        insecure=opts.insecure,
        say=opts.say,
    ) as rig:
        p = Progress(rig, opts.say)
        await rig.wait_registered()
        await rig.until(T0 + 19 * H)
        now_ms = rig.clock.now_ms()
        for m in rig.meter_ids:
            spec = ScheduleSpec(m, 1, period_s=H, offset_s=0, start=day + 60, end=day + DAY)

            def put(he: Headend, s: ScheduleSpec = spec) -> None:
                he.set_schedule(s, SOURCE, now_ms)

            await rig.call(put)
        p("slot 1 set: hourly on day 1; default read from the evening assignment")
        await rig.until(day + 5 * H + 45 * 60)
        for b in rig.board_list:
            await b.link(False)
        p("link down (the 06:00 read cannot be sent)")
        await rig.until(day + 7 * H + 15 * 60)
        for b in rig.board_list:
            await b.link(True)
        p("link up")

        async def day_complete() -> bool:
            for m in rig.meter_ids:
                cov = await rig.coverage(m, day, day + DAY)
                if not cov or not cov[0].complete:
                    return False
            return True

        await rig.until(day + DAY + H)
        await rig.eventually(day_complete, 60, "day 1 complete at the head-end", every=0.1)
        await rig.until(rig.now() + 2 * H)
        expected = {(day, day + H)}
        expected |= {(day + (k - 1) * H, day + k * H) for k in range(2, 6)}
        expected.add((day + 5 * H, day + 7 * H))
        expected |= {(day + (k - 1) * H, day + k * H) for k in range(8, 24)}
        daily = (day, day + DAY)
        got_all: dict[int, set[tuple[int, int]]] = {m: spans(rig, m) for m in rig.meter_ids}
        scheds = await rig.call(lambda he: he.schedules())
        for b in rig.board_list:
            await b.power_cut()
        missing = unexpected = 0
        failed_logged = changed_logged = 0
        for b in rig.board_list:
            got = {s for s in got_all[b.meter_id] if day <= s[0] < day + DAY}
            missing += len(expected - got) + (daily not in got)
            unexpected += len(got - expected - {daily})
            img = b.read_flash()
            failed_logged += sum(1 for _, t, d in img.event_codes(7) if d == 1)
            changed_logged += sum(1 for _, t, d in img.event_codes(6) if d == 1)
        acked = sum(
            1
            for s in scheds
            if s.spec.slot == 1 and s.state is ScheduleState.ACKED and s.source == SOURCE
        )
        out: dict[str, Any] = {
            "scenario": "schedules",
            "speed": speed,
            "boards": nboards,
            "hourly_reads_expected": len(expected) * nboards,
            "spans_missing": missing,
            "spans_unexpected": unexpected,
            "first_read_from_midnight": all((day, day + H) in g for g in got_all.values()),
            "catch_up_after_failure": all(
                (day + 5 * H, day + 7 * H) in g for g in got_all.values()
            ),
            "read_failed_logged": failed_logged,
            "schedule_acked": acked,
            "schedule_changed_logged": changed_logged,
            "day_complete_at_headend": True,
        }
        out["ok"] = bool(
            missing == unexpected == 0
            and failed_logged >= nboards
            and acked == nboards
            and changed_logged >= nboards
        )
        return out
