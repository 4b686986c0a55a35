"""Event routing (D09, N03): every event stored, routed by code, re-sent until acked.

Routes map an event code (0 = every code) to recipients. A recipient ``r`` is
an MQTT topic ``<notify_topic>/r``: it gets one JSON message per delivery and
acknowledges by publishing ``{"delivery": <id>}`` to ``<notify_topic>/r/ack``
(or an operator runs ``headend events ack <id>``). An unacknowledged delivery
is re-sent every ``notify_retry_s`` until ``notify_max_attempts``. Deliveries
are created in the same transaction as the events, once per (event,
recipient), so a re-pushed event is never routed twice.

The same deliveries carry on-demand read results to their requester and
trouble notices to the operator (H05, H06).
"""

from __future__ import annotations

import json
from typing import Any

from headend.context import Ctx
from headend.errors import InvalidData
from headend.mdms.ingest import iso
from headend.outbox import Outbox
from headend.store import EventRecord
from headend.store.activity import Kind
from headend.store.records import check_recipient
from protocol.codes import event_name


def store_events(ctx: Ctx, meter_id: int, events: list[EventRecord], now_ms: int) -> list[int]:
    """Store events (inside the caller's transaction) and route the new ones.

    Returns the codes of the events that were new (a repeat is stored once).
    """
    if not events:
        return []
    keys = [(e.time, e.code, e.data) for e in events]
    before = ctx.events.ids(meter_id, keys)
    ctx.readings.ingest(events=events)
    ids = ctx.events.ids(meter_id, keys)
    fresh = {k: ids[k] for k in keys if k not in before and k in ids}
    if not fresh:
        return []
    routes = ctx.events.routes()
    sent_to: set[str] = set()
    for (t, code, data), eid in sorted(fresh.items()):
        payload = json.dumps(
            {
                "kind": "event",
                "meter": meter_id,
                "event_id": eid,
                "code": code,
                "name": event_name(code),
                "time": iso(t),
                "data": data,
                "received_at": iso(now_ms // 1000),
            },
            separators=(",", ":"),
        )
        for r in routes:
            if r.code in (0, code):
                ctx.events.add_delivery(r.recipient, "event", payload, now_ms, event_id=eid)
                sent_to.add(r.recipient)
    names = ", ".join(f"{event_name(c)}@{iso(t)}" for (t, c, _), _ in sorted(fresh.items()))
    ctx.activity.log(
        now_ms,
        Kind.EVENT_STORED,
        f"{len(fresh)} new event(s): {names}; routed to "
        f"{', '.join(sorted(sent_to)) if sent_to else 'no recipient (no route)'}",
        meter_id,
    )
    return [c for (_, c, _) in fresh]


def notify(
    ctx: Ctx,
    recipient: str,
    kind: str,
    body: dict[str, Any],
    now_ms: int,
    job_id: int | None = None,
) -> int | None:
    """Queue a message (a read result, a trouble notice) for a recipient."""
    payload = json.dumps({"kind": kind, **body}, separators=(",", ":"))
    return ctx.events.add_delivery(recipient, kind, payload, now_ms, job_id=job_id)


def send_due(ctx: Ctx, now_ms: int) -> Outbox:
    """Publish every delivery that is due (first send or re-send)."""
    out = Outbox()
    cfg = ctx.config
    for d in ctx.events.due(now_ms):
        topic = ctx.notify_topic(d.recipient)
        message = {
            **json.loads(d.payload),
            "delivery": d.delivery_id,
            "attempt": d.attempts + 1,
            "ack_topic": f"{topic}/ack",
        }
        last = d.attempts + 1 >= cfg.notify_max_attempts
        with ctx.db.transaction():
            ctx.events.sent(d.delivery_id, now_ms, now_ms + cfg.notify_retry_s * 1000, last)
            if last:
                ctx.activity.log(
                    now_ms,
                    Kind.DELIVERY_EXPIRED,
                    f"delivery {d.delivery_id} ({d.kind}) to {d.recipient}: sent "
                    f"{d.attempts + 1} times without an ack; giving up",
                    _meter_of(d.payload),
                )
        out.publish(topic, json.dumps(message, separators=(",", ":")).encode())
    return out


def parse_ack(payload: bytes) -> int:
    """The delivery id of an ack: ``{"delivery": id}`` or a bare id. Raises InvalidData."""
    try:
        obj = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidData(f"ack: expected JSON, got {payload[:40]!r}") from e
    did = obj.get("delivery") if isinstance(obj, dict) else obj
    if type(did) is not int or did <= 0:
        raise InvalidData(f"ack: expected {{'delivery': <id>}}, got {obj!r}")
    return did


def acknowledge(ctx: Ctx, delivery_id: int, by: str | None, now_ms: int) -> bool:
    """Record a recipient's ack (``by``: the recipient the ack came from, None = operator CLI).

    Raises InvalidData if the ack names another recipient's delivery.
    """
    if by is not None:
        check_recipient(by)
        mine = ctx.events.get(delivery_id)
        if mine is not None and mine.recipient != by:
            raise InvalidData(
                f"ack of delivery {delivery_id} from {by!r}: it was sent to {mine.recipient!r}"
            )
    with ctx.db.transaction():
        d = ctx.events.acknowledge(delivery_id, now_ms)
        if d is None:
            return False
        if d.job_id is not None:  # a read's result: the job records its requester's ack
            ctx.jobs.acknowledge(d.job_id, now_ms)
        routed = (d.sent_ms or now_ms) - d.created_ms
        ctx.activity.log(
            now_ms,
            Kind.DELIVERY_ACKED if d.job_id is None else Kind.READ_ACKED,
            f"delivery {d.delivery_id} ({d.kind}) acknowledged by {d.recipient}"
            f"{' (via CLI)' if by is None else ''}: sent {routed / 1000:.1f} s after receipt, "
            f"acked {(now_ms - d.created_ms) / 1000:.1f} s after receipt, {d.attempts} send(s)",
            _meter_of(d.payload),
            str(d.job_id) if d.job_id is not None else str(d.event_id),
        )
    return True


def _meter_of(payload: str) -> int | None:
    m = json.loads(payload).get("meter")
    return m if isinstance(m, int) else None
