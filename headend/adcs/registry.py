"""Registration (M17, H01): a registering meter is stored and joins *unscheduled*.

The meter repeats `register` until it gets a `register_ack`, so registering
is idempotent: a repeat updates the registration and keeps the meter's read
group. A meter that re-registers while in a read group gets its default
schedule again (a reset meter may have lost it). A registration cannot change
a registered meter's channel layout: such a register is held (`Layouts`),
logged and answered with a refusing register_ack until an operator accepts it
(`accept_layout`, ``headend meters accept-layout``).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from headend.context import Ctx
from headend.errors import InvalidData, UnknownMeter
from headend.outbox import Outbox
from headend.store import Channel, Meter
from headend.store.activity import Kind
from headend.store.records import ScheduleSpec
from protocol.codes import RegisterStatus

log = logging.getLogger(__name__)


def meter_from_register(fields: dict[str, Any], transport: str, now_ms: int) -> Meter:
    """The `Meter` a register frame describes. Raises InvalidData."""
    b = fields["body"]
    try:
        channels = tuple(
            Channel(c["kind"], c["unit"], c["multiplier"], c["scaler"]) for c in b["channels"]
        )
        return Meter(
            meter_id=fields["meter_id"],
            fw_version=b["fw_version"],
            interval_s=b["interval_s"],
            utc_offset_min=b["utc_offset_min"],
            meter_multiplier=b["meter_multiplier"],
            channels=channels,
            registered_at=now_ms // 1000,
            capacity_days=b["capacity_days"],
            transport=transport,
        )
    except (KeyError, TypeError) as e:
        raise InvalidData(f"register body: {e!r}") from e


def on_register(ctx: Ctx, fields: dict[str, Any], transport: str, now_ms: int) -> Outbox:
    """Store the registration, join the unscheduled group, and ack it.

    Raises:
        InvalidData: the registration is not acceptable (the caller logs it
            and answers `register_ack` status 1).
    """
    meter = meter_from_register(fields, transport, now_ms)
    mid = meter.meter_id
    try:
        old: Meter | None = ctx.registry.get(mid)
    except UnknownMeter:
        old = None
    if old is not None and old.channels != meter.channels:
        return _hold(ctx, old, meter, fields["body"], transport, now_ms)
    return _apply(ctx, old, meter, transport, now_ms)


def _layout(m: Meter) -> str:
    return ", ".join(
        f"{c.kind.name.lower()} {c.unit.symbol} x{c.multiplier}e{c.scaler}" for c in m.channels
    )


def _hold(
    ctx: Ctx, old: Meter, new: Meter, body: dict[str, Any], transport: str, now_ms: int
) -> Outbox:
    mid = old.meter_id
    if ctx.layouts.hold(mid, body, transport, now_ms):  # a repeat is logged once
        text = (
            f"register via {transport} would change the channel layout from "
            f"[{_layout(old)}] to [{_layout(new)}]: held, refused until an operator runs "
            f"`headend meters accept-layout {mid}`"
        )
        log.warning("meter %s: %s", mid, text)
        ctx.activity.log(now_ms, Kind.LAYOUT_HELD, text, mid)
    return reject(ctx, mid, transport, now_ms)


def accept_layout(ctx: Ctx, meter_id: int, now_ms: int) -> Meter:
    """Apply the registration held for a meter (the operator's command).

    Raises UnknownMeter, InvalidData (nothing held).
    """
    with ctx.db.transaction():
        old = ctx.registry.get(meter_id)
        held = ctx.layouts.get(meter_id)
        if held is None:
            raise InvalidData(f"meter {meter_id}: no registration is waiting for acceptance")
        body, transport, _ = held
        fields = {"meter_id": meter_id, "body": body}
        meter = meter_from_register(fields, transport or old.transport or "mqtt", now_ms)
        meter = dataclasses.replace(meter, read_group=old.read_group)
        ctx.registry.register(meter)
        ctx.layouts.drop(meter_id)
        ctx.activity.log(
            now_ms,
            Kind.LAYOUT_ACCEPTED,
            f"operator accepted the channel layout [{_layout(meter)}] (was [{_layout(old)}]); "
            "the meter's next register is acknowledged",
            meter_id,
        )
    return meter


def _apply(ctx: Ctx, old: Meter | None, meter: Meter, transport: str, now_ms: int) -> Outbox:
    mid = meter.meter_id
    if old is not None:  # keep what the ADCS decided; the meter describes only itself
        meter = dataclasses.replace(meter, read_group=old.read_group)
    ctx.registry.register(meter)
    ctx.registry.link_seen(mid, transport, now_ms)
    joined = ctx.registry.join_unscheduled(mid, now_ms)
    grp, offset = ctx.registry.group_of(mid)
    chans = _layout(meter)
    what = "registered" if old is None else "re-registered"
    where = "unscheduled" if grp is None else f"read group {ctx.window.label(grp)}"
    log.info("meter %s %s via %s (fw %s, %s)", mid, what, transport, meter.fw_version, where)
    ctx.activity.log(
        now_ms,
        Kind.REGISTERED,
        f"{what} fw {meter.fw_version}, {meter.interval_s} s intervals, "
        f"UTC{meter.utc_offset_min:+d} min, meter x{meter.meter_multiplier}, "
        f"{len(meter.channels)} channels ({chans}), {meter.capacity_days} days, "
        f"via {transport}; {where}",
        mid,
    )
    if grp is not None and offset is not None and not joined and old is not None:
        ctx.schedules.put(ScheduleSpec(mid, 0, offset_s=offset), "system:re-registration", now_ms)
    out = Outbox()
    out.send(
        mid,
        ctx.downlinks.reply(mid, "register_ack", {"status": int(RegisterStatus.ACCEPTED)}, now_ms),
        transport,
    )
    return out


def reject(ctx: Ctx, meter_id: int, transport: str, now_ms: int) -> Outbox:
    """A `register_ack` that refuses the registration."""
    out = Outbox()
    out.send(
        meter_id,
        ctx.downlinks.reply(
            meter_id, "register_ack", {"status": int(RegisterStatus.REJECTED)}, now_ms
        ),
        transport,
    )
    return out
