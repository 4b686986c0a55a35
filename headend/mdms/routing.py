"""Event routing (D09, N03): every event stored, routed by code, re-sent until acked.

Routes map an event code (0 = every code) to recipients. A recipient ``r`` is
an MQTT topic ``<notify_topic>/r``: it gets one JSON message per delivery and
acknowledges by publishing ``{"delivery": <id>}`` to ``<notify_topic>/r/ack``
(or an operator runs ``headend events ack <id>``). An unacknowledged delivery
is re-sent every ``notify_retry_s`` until ``notify_max_attempts``. Deliveries
are created in the same transaction as the events, once per (event,
recipient), so a re-pushed event is never routed twice.

The same deliveries carry on-demand read results to their requester and
trouble notices to the operator (H05, H06). Every message fits the broker's
packet limit (a bigger one would never arrive: the broker refuses it): a
result too big for one is split when it is queued into parts, one delivery
each, sent and acked on its own. Each says ``part`` and ``parts`` (1 of 1 when
whole) and carries the job and the meter; its ``data`` holds every key of the
result, with a run of the intervals, midnight registers and events, in order.
The recipient joins the parts of a job in part order; a re-sent part keeps
its delivery id, so it is told from a new one. The job counts as acknowledged
when its requester acked every part.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from typing import Any

from headend.brokerconf import payload_limit
from headend.context import Ctx
from headend.errors import InvalidData
from headend.mdms.ingest import iso
from headend.outbox import Outbox
from headend.store import EventRecord
from headend.store.activity import Kind
from headend.store.records import Route, check_recipient
from protocol.codes import event_name

log = logging.getLogger(__name__)

#: the lists of a result's ``data`` that a split spreads over its parts
SPLIT = ("intervals", "midnight", "events")
#: what `send_due` adds to a stored payload, at its longest (the topic aside)
_ENVELOPE = len(',"delivery":9223372036854775807,"attempt":2147483647,"ack_topic":"/ack"')
#: `part` and `parts` in a payload, at their longest
_PART_KEYS = len(',"part":999999,"parts":999999')


def store_events(
    ctx: Ctx,
    meter_id: int,
    events: list[EventRecord],
    now_ms: int,
    routes: Callable[[], Sequence[Route]] | None = None,
) -> list[int]:
    """Store events (inside the caller's transaction) and route the new ones.

    Returns the codes of the events that were new (a repeat is stored once).
    ``routes``: gives the routes (a batch of uplinks reads them once); default: read.
    """
    if not events:
        return []
    # the insert says which are new (a repeat inserts nothing); the meter is registered:
    # every caller holds its `Meter`
    new = ctx.readings.add_events(events)
    fresh = {(t, c, d): eid for (_, t, c, d), eid in new.items()}
    return route_new(ctx, meter_id, fresh, now_ms, routes)


def route_new(
    ctx: Ctx,
    meter_id: int,
    fresh: dict[tuple[int, int, int], int],
    now_ms: int,
    routes: Callable[[], Sequence[Route]] | None = None,
) -> list[int]:
    """Route and log a meter's events just stored ((time, code, data) -> event_id, from
    `Readings.add_events`; several uplinks' events may be stored in one insert).
    Returns their codes."""
    if not fresh:
        return []
    now_routes = routes() if routes is not None else ctx.events.routes()
    sent_to: set[str] = set()
    for (t, code, data), eid in sorted(fresh.items()):
        to = [r.recipient for r in now_routes if r.code in (0, code)]
        if not to:  # no route wants it: no payload to build
            continue
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
        for recipient in to:
            ctx.events.add_delivery(recipient, "event", payload, now_ms, event_id=eid)
            sent_to.add(recipient)
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
    """Queue a message (a read result, a trouble notice) for a recipient, in as many
    parts (deliveries) as the broker's packet limit asks for. Returns the first's id."""
    topic = ctx.notify_topic(recipient)
    room = payload_limit(topic) - len(topic) - _ENVELOPE - _PART_KEYS
    parts = split({"kind": kind, **body}, room)
    ids = [
        ctx.events.add_delivery(
            recipient,
            kind,
            _compact({**part, "part": n, "parts": len(parts)}),
            now_ms,
            job_id=job_id,
        )
        for n, part in enumerate(parts, 1)
    ]
    return ids[0]


def _compact(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


def split(message: dict[str, Any], room: int) -> list[dict[str, Any]]:
    """``message`` as messages of at most ``room`` bytes of compact JSON where it can:
    the `SPLIT` lists of its ``data`` spread over them in order, greedily, every other
    key in each. An item too big alone makes a part too big (`send_due` says so)."""
    data = message.get("data")
    if len(_compact(message)) <= room or not isinstance(data, dict):
        return [message]
    empty = {**message, "data": {**data, **{k: [] for k in SPLIT if k in data}}}
    free = room - len(_compact(empty))
    parts: list[dict[str, list[Any]]] = []
    runs: dict[str, list[Any]] = {}
    used = 0
    for key in SPLIT:
        for item in data.get(key, ()):
            size = len(_compact(item)) + 1  # its comma
            if used and used + size > free:
                parts.append(runs)
                runs, used = {}, 0
            runs.setdefault(key, []).append(item)
            used += size
    parts.append(runs)
    return [{**empty, "data": {**empty["data"], **runs}} for runs in parts]


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
        raw = _compact(message).encode()
        fits = len(raw) <= payload_limit(topic)
        last = d.attempts + 1 >= cfg.notify_max_attempts or not fits
        with ctx.db.transaction():
            ctx.events.sent(d.delivery_id, now_ms, now_ms + cfg.notify_retry_s * 1000, last)
            if not fits:  # the broker would refuse it every time: said, not re-sent
                text = (
                    f"delivery {d.delivery_id} ({d.kind}) to {d.recipient}: {len(raw)} bytes, "
                    f"over the broker's limit of {payload_limit(topic)} on {topic}; not sent"
                )
                log.error("%s", text)
                ctx.activity.log(now_ms, Kind.DELIVERY_EXPIRED, text, _meter_of(d.payload))
                continue
            if last:
                ctx.activity.log(
                    now_ms,
                    Kind.DELIVERY_EXPIRED,
                    f"delivery {d.delivery_id} ({d.kind}) to {d.recipient}: sent "
                    f"{d.attempts + 1} times without an ack; giving up",
                    _meter_of(d.payload),
                )
        out.publish(topic, raw)
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
        if d.job_id is not None and not ctx.events.open_of_job(d.job_id):
            ctx.jobs.acknowledge(d.job_id, now_ms)  # the requester has every part
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
