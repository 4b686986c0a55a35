"""The head-end's logic without I/O: an uplink (or a tick) in, an `Outbox` out.

`Core.on_uplink` checks a frame (decodes it, meter id of the link against the
frame's, direction), then in ONE database transaction verifies it (MAC under
the meter's key, or the pending key during a rotation; the counter advanced
in the store, which refuses a replay) and handles it: registration, data,
events, schedule, read and key answers. Nothing is read from the frame's
body, stored or answered before it verified. A refused frame changes nothing
(the transaction rolls back) and costs a counter: refusals are counted per
reason and written once a minute (`Rejections`), never a row per frame, and
no answer goes to an unverified frame (it would be a signing oracle).
Database failures (`StoreError`) propagate so the service can reconnect and
retry the frame. `Core.tick` runs the timed work. The service runs every Core
call on one database thread and sends the Outbox after the call returned,
that is after the commit.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from headend.adcs import ondemand, registry, rotation, scheduling, timesync
from headend.brokerconf import payload_limit
from headend.context import Ctx
from headend.errors import InvalidData, UnknownMeter
from headend.mdms import ingest, routing
from headend.outbox import Outbox
from headend.rejections import Rejections
from headend.store import EventRecord, Meter, Source
from headend.store.activity import Kind
from headend.store.lifecycles import KeyState
from headend.transport.base import Uplink
from protocol.auth import verify_frame
from protocol.codes import Event, Nack, ReadKind, nack_name, read_kind_name
from protocol.errors import BadMac, ProtocolError
from protocol.frame import decode
from protocol.schema import MESSAGE_TYPES

_log = logging.getLogger(__name__)

UPLINK_TYPES = frozenset(
    {
        "register",
        "config_ack",
        "schedule_ack",
        "read_response",
        "event",
        "time_sync_request",
        "nack",
        "key_ack",
    }
)


class Rejected(InvalidData):
    """An uplink that is refused before it is handled.

    ``kind``: activity kind; ``reason``: the short key it is counted under.
    """

    def __init__(self, kind: Kind, reason: str, text: str) -> None:
        super().__init__(text)
        self.kind = kind
        self.reason = reason


class Core:
    """Args: ctx: config, store, the store's tables and downlink framing (see `Ctx`)."""

    def __init__(self, ctx: Ctx) -> None:
        self.ctx = ctx
        self.next_assignment_ms: int | None = None
        self.rejections = Rejections()

    @property
    def rejected(self) -> int:
        """Uplinks (and notification acks) refused since start."""
        return self.rejections.total

    # -- uplinks -----------------------------------------------------------------------------

    def check(self, up: Uplink) -> dict[str, Any]:
        """Decode and vet an uplink (no store, no key). Raises Rejected with the reason."""
        try:
            fields = decode(up.frame)
        except ProtocolError as e:
            raise Rejected(
                Kind.BAD_FRAME,
                type(e).__name__,
                f"{type(e).__name__}: {e} ({len(up.frame)} bytes)",
            ) from e
        mid = fields["meter_id"]
        if mid != up.meter_id:
            raise Rejected(
                Kind.REJECTED,
                "meter id mismatch",
                f"link says meter {up.meter_id}, frame says meter {mid}: dropped",
            )
        if fields["type"] not in UPLINK_TYPES:
            raise Rejected(
                Kind.REJECTED, "not an uplink", f"{fields['type']} is not a meter uplink: dropped"
            )
        return fields

    def verify(self, up: Uplink, fields: dict[str, Any], now_ms: int) -> None:
        """MAC under the meter's key (or the pending one), counter advanced in the store.

        Call it inside the uplink's transaction. Raises Rejected (BadMac, Replay).
        """
        ctx = self.ctx
        mid = fields["meter_id"]
        st = ctx.auth.get(mid)
        version = st.key_version if st is not None else 0
        pending = st.pending_version if st is not None and st.state is KeyState.SENT else None
        try:
            try:
                counter = verify_frame(up.frame, ctx.downlinks.key(mid, version))
                new_key = False
            except BadMac:
                if pending is None or fields["auth"] is None:
                    raise
                counter = verify_frame(up.frame, ctx.downlinks.key(mid, pending))
                new_key = True
        except ProtocolError as e:
            name = type(e).__name__
            raise Rejected(Kind.REJECTED, name, f"{name}: {e}: dropped") from e
        if not ctx.auth.accept_uplink(mid, counter, now_ms):
            raise Rejected(
                Kind.REJECTED,
                "Replay",
                f"Replay: counter {counter} not newer than the last accepted: dropped",
            )
        if new_key:
            rotation.confirmed(ctx, mid, f"{fields['type']} seq {fields['seq']}", now_ms)

    def on_uplink(self, up: Uplink, now_ms: int, clock: Callable[[], int] | None = None) -> Outbox:
        """Handle one uplink; the returned frames go out after the commit.

        ``clock`` gives t3 of a time-sync answer (default: ``now_ms``). Never raises
        for bad input: every refusal is typed and counted.
        """
        ctx = self.ctx
        fields: dict[str, Any] | None = None
        try:
            fields = self.check(up)
            _log.debug(
                "meter %s: %s seq %s, %d bytes via %s",
                fields["meter_id"],
                fields["type"],
                fields["seq"],
                len(up.frame),
                up.transport,
            )
            with ctx.db.transaction():
                self.verify(up, fields, now_ms)
                if fields["type"] != "time_sync_request":
                    return self._handle(up, fields, now_ms)
                prepared = timesync.prepare(ctx, fields, now_ms)
            # committed: t3 from here on (the store's fsync is not in the meter's delay)
            out = Outbox()
            t3 = clock or (lambda: now_ms)
            frame = timesync.answer(ctx.downlinks, fields, now_ms, t3, prepared)
            out.send(fields["meter_id"], frame, up.transport)
            return out
        except Rejected as e:
            self._reject(up, fields, e.kind, e.reason, str(e), now_ms)
            return Outbox()
        except UnknownMeter:
            assert fields is not None  # raised only after check
            mid = fields["meter_id"]
            self._reject(up, fields, Kind.UNKNOWN_METER, "not registered", "not registered", now_ms)
            out = Outbox()
            body = {
                "nacked_type": MESSAGE_TYPES[fields["type"]],
                "nacked_seq": fields["seq"],
                "reason": int(Nack.NOT_REGISTERED),
            }
            out.send(mid, ctx.downlinks.reply(mid, "nack", body, now_ms), up.transport)
            return out
        except (InvalidData, ProtocolError) as e:
            # verified, but the content cannot be taken (or its answer cannot be built)
            reason = type(e).__name__
            self._reject(up, fields, Kind.REJECTED, reason, f"{reason}: {e}", now_ms)
            if fields is not None and fields["type"] == "register":
                return registry.reject(ctx, fields["meter_id"], up.transport, now_ms)
            return Outbox()

    def _reject(
        self,
        up: Uplink,
        fields: dict[str, Any] | None,
        kind: Kind,
        reason: str,
        text: str,
        now_ms: int,
    ) -> None:
        what = f"{fields['type']} seq {fields['seq']}" if fields else "frame"
        _log.debug("meter %s: %s via %s refused: %s", up.meter_id, what, up.transport, text)
        self.rejections.add(kind, reason, up.meter_id, f"{what} via {up.transport}: {text}", now_ms)

    def _handle(self, up: Uplink, fields: dict[str, Any], now_ms: int) -> Outbox:
        ctx = self.ctx
        mtype = fields["type"]
        if mtype == "register":
            return registry.on_register(ctx, fields, up.transport, now_ms)
        meter = ctx.registry.get(fields["meter_id"])
        before = ctx.registry.link_seen(meter.meter_id, up.transport, now_ms)
        if before is not None:
            ctx.activity.log(
                now_ms,
                Kind.LINK_CHANGED,
                f"now heard on {up.transport} (was {before or 'none'}); downlinks follow",
                meter.meter_id,
            )
            meter = ctx.registry.get(meter.meter_id)
        body = fields["body"]
        if mtype == "read_response":
            return self._read(meter, up, fields, now_ms)
        if mtype == "event":
            return self._events(meter, up, fields, now_ms)
        if mtype == "schedule_ack":
            scheduling.on_answer(ctx, meter.meter_id, body["acked_seq"], body["status"], now_ms)
            return Outbox()
        if mtype == "nack":
            return self._nack(meter, body, now_ms)
        if mtype == "key_ack":
            return self._key_ack(meter, body, now_ms)
        ctx.activity.log(
            now_ms, Kind.REJECTED, f"{mtype}: nothing asked for it: ignored", meter.meter_id
        )
        return Outbox()

    def _read(self, meter: Meter, up: Uplink, fields: dict[str, Any], now_ms: int) -> Outbox:
        ctx = self.ctx
        b = fields["body"]
        mid = meter.meter_id
        job = ctx.jobs.for_reply(mid, b["request_seq"]) if b["request_seq"] else None
        if b["kind"] == ReadKind.SCHEDULED:
            source = Source.SCHEDULED
        else:
            source = job.spec.source if job is not None else Source.ON_DEMAND
        secs = ingest.sections(meter, b["sections"], source, now_ms // 1000)
        res = ctx.readings.ingest(blocks=secs.blocks, midnights=secs.midnights)
        fresh = routing.store_events(ctx, mid, secs.events, now_ms)
        data = ingest.engineering(meter, secs, source)
        n_iv = sum(x.block.count for x in secs.blocks)
        ctx.activity.log(
            now_ms,
            Kind.DATA_STORED,
            f"read_response seq {fields['seq']} ({read_kind_name(b['kind'])}, "
            f"part {b['part']}/{b['parts']}, source {source.name.lower()}): {n_iv} intervals "
            f"({res.intervals_written} new), {len(secs.midnights)} midnight registers "
            f"({res.midnights_written} new), {len(secs.events)} events ({len(fresh)} new)"
            + (f"; job {job.job_id}" if job is not None else ""),
            mid,
            str(job.job_id) if job is not None else None,
        )
        if job is not None:
            ondemand.on_part(ctx, job, b, data, now_ms)
        out = Outbox()
        if job is not None:
            out.extend(routing.send_due(ctx, now_ms))  # the result to its requester, now
        ack = {"acked_seq": fields["seq"], "upto": secs.upto}
        out.send(mid, ctx.downlinks.reply(mid, "read_ack", ack, now_ms), up.transport)
        # Real-time subscribers get what is new (a repeated frame publishes nothing).
        if res.intervals_written or res.midnights_written or secs.registers:
            topic = ctx.config.realtime_topic.format(meter=mid)
            for part in ingest.to_json_parts(data, payload_limit(topic)):
                out.publish(topic, part)
        self._after_events(meter, secs.events, fresh, up, now_ms, out)
        return out

    def _events(self, meter: Meter, up: Uplink, fields: dict[str, Any], now_ms: int) -> Outbox:
        ctx = self.ctx
        mid = meter.meter_id
        events = [
            EventRecord(mid, e["code"], e["time"], e["data"], Source.SCHEDULED, now_ms // 1000)
            for e in fields["body"]["events"]
        ]
        fresh = routing.store_events(ctx, mid, events, now_ms)
        out = Outbox()
        ack = {"acked_seq": fields["seq"]}
        out.send(mid, ctx.downlinks.reply(mid, "event_ack", ack, now_ms), up.transport)
        self._after_events(meter, events, fresh, up, now_ms, out)
        return out

    def _after_events(
        self,
        meter: Meter,
        events: list[EventRecord],
        fresh: list[int],
        up: Uplink,
        now_ms: int,
        out: Outbox,
    ) -> None:
        if Event.CLOCK_OUT_OF_SYNC in fresh:
            off = max(e.data for e in events if e.code == Event.CLOCK_OUT_OF_SYNC)
            out.extend(timesync.set_time(self.ctx, meter.meter_id, off, up.transport, now_ms))
        if fresh:
            out.extend(routing.send_due(self.ctx, now_ms))  # route now, not at the next tick

    def _nack(self, meter: Meter, body: dict[str, Any], now_ms: int) -> Outbox:
        ctx = self.ctx
        mid = meter.meter_id
        ntype, seq, reason = body["nacked_type"], body["nacked_seq"], body["reason"]
        if ntype == MESSAGE_TYPES["schedule_set"]:
            scheduling.on_answer(ctx, mid, seq, reason or 255, now_ms)
            return Outbox()
        if ntype == MESSAGE_TYPES["read_request"]:
            job = ctx.jobs.for_reply(mid, seq)
            if job is not None:
                out = ondemand.on_nack(ctx, job, reason, now_ms)
                out.extend(routing.send_due(ctx, now_ms))
                return out
        name = {v: k for k, v in MESSAGE_TYPES.items()}.get(ntype, str(ntype))
        ctx.activity.log(
            now_ms,
            Kind.REJECTED,
            f"meter nacked our {name} seq {seq}: {nack_name(reason)}",
            mid,
        )
        return Outbox()

    def _key_ack(self, meter: Meter, body: dict[str, Any], now_ms: int) -> Outbox:
        # a good key_ack verified under the new key and confirmed the rotation in verify()
        text = f"key_ack seq {body['acked_seq']}: meter holds key version {body['version']}"
        if body["status"]:
            text += f", refused: {nack_name(body['status'])}"
        self.ctx.activity.log(now_ms, Kind.KEY_ROTATION, text, meter.meter_id)
        return Outbox()

    # -- notification acks -------------------------------------------------------------------

    def on_notify_ack(self, topic: str, payload: bytes, now_ms: int) -> None:
        """``<notify_topic>/<recipient>/ack`` carrying ``{"delivery": id}``."""
        prefix = self.ctx.config.notify_topic + "/"
        recipient = topic.removeprefix(prefix).removesuffix("/ack")
        try:
            if not topic.startswith(prefix) or not topic.endswith("/ack") or "/" in recipient:
                raise InvalidData(f"not an ack topic: {topic}")
            did = routing.parse_ack(payload)
            if not routing.acknowledge(self.ctx, did, recipient, now_ms):
                _log.info("ack of delivery %s from %s: already acked or unknown", did, recipient)
        except InvalidData as e:
            self.rejections.add(
                Kind.REJECTED, "notification ack", None, f"notification ack on {topic}: {e}", now_ms
            )

    # -- timed work --------------------------------------------------------------------------

    def tick(self, now_ms: int) -> Outbox:
        """Evening assignment when due, schedules, jobs, timeouts, deliveries."""
        ctx = self.ctx
        out = Outbox()
        if self.next_assignment_ms is None:
            self.next_assignment_ms = scheduling.next_assignment(ctx.config, now_ms)
        if now_ms >= self.next_assignment_ms:
            placed = scheduling.assign(ctx, now_ms)
            _log.info("evening assignment: %d meter(s) placed in read groups", len(placed))
            self.next_assignment_ms = scheduling.next_assignment(ctx.config, now_ms)
        out.extend(scheduling.send_pending(ctx, now_ms))
        out.extend(scheduling.check_acks(ctx, now_ms))
        out.extend(ondemand.start_jobs(ctx, now_ms))
        out.extend(ondemand.expire(ctx, now_ms))
        out.extend(routing.send_due(ctx, now_ms))
        out.extend(rotation.send_due(ctx, now_ms))
        self.rejections.flush(ctx.activity, now_ms)
        return out
