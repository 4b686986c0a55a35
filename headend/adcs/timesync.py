"""Time service (H10): the head-end is the official time for meter clocks.

A meter's `time_sync_request` (t1) is answered with t1, t2 (when it arrived)
and t3 (when the answer leaves) from the head-end `Clock`; the meter takes t4
and works out offset and delay itself (SPEC "Conversations"). The answer is
signed like every downlink: its counter (and seq, key) come from the request's
transaction (`prepare`); the frame is built as the service sends it
(`answer`), so t3 is taken then, just before the MAC. t2 is the request's
arrival at the link, before any queue. What the head-end spends between the
two (queue, store, its fsync, frames sent before it) is not in the delay the
meter measures. A meter that reports its clock more than
120 s off (event 4 clock_out_of_sync) gets a `time_set`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from headend.context import Ctx
from headend.downlink import sign
from headend.outbox import Outbox
from headend.store.activity import Kind


def prepare(ctx: Ctx, fields: dict[str, Any], t2_ms: int) -> tuple[int, bytes, int]:
    """(counter, key, seq) of the answer, inside the request's transaction (UnknownMeter)."""
    mid = fields["meter_id"]
    ctx.registry.get(mid)
    dl = ctx.downlinks
    return dl.counter(mid, t2_ms), dl.current_key(mid), dl.next_seq(mid)


def answer(
    fields: dict[str, Any],
    t2_ms: int,
    now_ms: Callable[[], int],
    prepared: tuple[int, bytes, int],
) -> bytes:
    """The signed `time_sync_response`, t3 read now, just before the MAC: pure (no store),
    so the service calls it as the frame leaves (`Outbox.send_built`)."""
    counter, key, seq = prepared
    t3 = now_ms()
    body = {"t1_ms": fields["body"]["t1_ms"], "t2_ms": t2_ms, "t3_ms": t3}
    return sign(fields["meter_id"], seq, "time_sync_response", body, t3, counter, key)


def set_time(ctx: Ctx, meter_id: int, off_s: int, transport: str | None, now_ms: int) -> Outbox:
    """A `time_set` to the head-end's time, logged."""
    out = Outbox()
    seq, frame = ctx.downlinks.frame(meter_id, "time_set", {"utc_ms": now_ms}, now_ms)
    ctx.activity.log(
        now_ms,
        Kind.TIME_SET,
        f"meter reported its clock {off_s} s off (event 4): time_set seq {seq} to {now_ms} ms",
        meter_id,
    )
    out.send(meter_id, frame, transport)
    return out
