"""Key rotation (M20): a meter moves to its next key version, confirmed by itself.

`headend keys rotate METER` queues the rotation (`MeterAuth.rotate`, the
`KEY` lifecycle). The service sends `key_set` (the new version's key wrapped
under the current key, in a frame signed with the current key) and repeats it
every ``key_retry_s`` until an uplink verifies under the new key (the meter's
`key_ack` is signed with it); then the new key is the key, both ways. Until
then uplinks under either key are taken. Every step is a row change in the
store, so a head-end that stops at any point resumes where it was.
"""

from __future__ import annotations

import logging

from headend.context import Ctx
from headend.errors import IllegalTransition, InvalidData
from headend.outbox import Outbox
from headend.store.activity import Kind
from protocol.auth import wrap_key

log = logging.getLogger(__name__)


def request(ctx: Ctx, meter_id: int, now_ms: int) -> int:
    """Queue a rotation; returns the new version. Raises UnknownMeter, InvalidData."""
    with ctx.db.transaction():
        try:
            version = ctx.auth.rotate(meter_id, now_ms)
        except IllegalTransition:
            st = ctx.auth.get(meter_id)
            to = st.pending_version if st is not None else "?"
            raise InvalidData(
                f"meter {meter_id}: a rotation to key version {to} is under way; "
                "it ends when the meter answers"
            ) from None
        ctx.activity.log(
            now_ms,
            Kind.KEY_ROTATION,
            f"key rotation to version {version} queued; key_set follows until the meter answers",
            meter_id,
        )
    return version


def send_due(ctx: Ctx, now_ms: int) -> Outbox:
    """Send the key_set of every queued rotation and repeat the unanswered ones."""
    out = Outbox()
    for st in ctx.auth.due(now_ms, ctx.config.key_retry_s * 1000):
        mid, new = st.meter_id, st.pending_version
        if new is None:
            continue
        with ctx.db.transaction():
            meter = ctx.registry.get(mid)
            old_key = ctx.downlinks.key(mid, st.key_version)
            wrapped = wrap_key(old_key, ctx.downlinks.key(mid, new), new)
            seq, frame = ctx.downlinks.frame(
                mid, "key_set", {"version": new, "wrapped": wrapped}, now_ms
            )
            try:
                ctx.auth.sent(mid, seq, now_ms)
            except IllegalTransition:
                continue  # confirmed or sent by another worker meanwhile
            text = f"key_set version {new} seq {seq} (attempt {st.attempts + 1})"
            ctx.activity.log(now_ms, Kind.KEY_SENT, text, mid)
        log.info("meter %s: %s", mid, text)
        out.send(mid, frame, meter.transport)
    return out


def confirmed(ctx: Ctx, meter_id: int, how: str, now_ms: int) -> None:
    """An uplink verified under the pending key (inside the uplink's transaction)."""
    version = ctx.auth.confirm(meter_id, now_ms)
    text = f"key version {version} confirmed by {how}; the old key is no longer accepted"
    log.info("meter %s: %s", meter_id, text)
    ctx.activity.log(now_ms, Kind.KEY_CONFIRMED, text, meter_id)
