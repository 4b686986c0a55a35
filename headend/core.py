"""The head-end's logic without I/O: an uplink (or a tick) in, an `Outbox` out.

`Core.on_uplink` checks a frame (decodes, meter id of the link against the
frame's, direction, MAC and counter when signed), then handles it in ONE
database transaction: registration, data, events, schedule and read answers.
Anything wrong with the input is logged with the reason in the activity log
and changes nothing else (the transaction rolls back, the log line is written
on its own); database failures (`StoreError`) propagate so the service can
reconnect and retry the frame. `Core.tick` runs the timed work. The service
runs every Core call on one database thread and sends the Outbox after the
call returned, that is after the commit.
"""

from __future__ import annotations

import logging
from typing import Any

from headend.adcs import ondemand, registry, scheduling, timesync
from headend.brokerconf import payload_limit
from headend.context import Ctx
from headend.errors import InvalidData, UnknownMeter
from headend.keys import meter_key
from headend.mdms import ingest, routing
from headend.outbox import Outbox
from headend.store import EventRecord, Meter, Source
from headend.store.activity import Kind
from headend.transport.base import Uplink
from protocol.auth import verify_frame
from protocol.codes import Event, Nack, ReadKind, nack_name, read_kind_name
from protocol.errors import ProtocolError
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
    }
)


class Rejected(InvalidData):
    """An uplink that is refused before it is handled (kind = activity kind)."""

    def __init__(self, kind: Kind, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind


class Core:
    """Args: ctx: config, store, the store's tables and downlink framing (see `Ctx`)."""

    def __init__(self, ctx: Ctx) -> None:
        self.ctx = ctx
        self.next_assignment_ms: int | None = None
        self._uplink_counter: dict[int, int] = {}  # last MAC counter of signed uplinks
        self.rejected = 0

    # -- uplinks -----------------------------------------------------------------------------

    def check(self, up: Uplink) -> dict[str, Any]:
        """Decode and vet an uplink. Raises Rejected with the reason."""
        try:
            fields = decode(up.frame)
        except ProtocolError as e:
            raise Rejected(
                Kind.BAD_FRAME, f"{type(e).__name__}: {e} ({len(up.frame)} bytes)"
            ) from e
        mid = fields["meter_id"]
        if mid != up.meter_id:
            raise Rejected(
                Kind.REJECTED, f"link says meter {up.meter_id}, frame says meter {mid}: dropped"
            )
        if fields["type"] not in UPLINK_TYPES:
            raise Rejected(Kind.REJECTED, f"{fields['type']} is not a meter uplink: dropped")
        if fields["auth"] is not None:  # meters sign nothing today; if they do, check it
            key = meter_key(bytes.fromhex(self.ctx.config.master_key), mid)
            try:
                counter = verify_frame(up.frame, key, self._uplink_counter.get(mid, 0))
            except ProtocolError as e:
                raise Rejected(Kind.REJECTED, f"{type(e).__name__}: {e}: dropped") from e
            self._uplink_counter[mid] = counter
        return fields

    def on_uplink(self, up: Uplink, now_ms: int) -> Outbox:
        """Handle one uplink; the returned frames go out after the commit."""
        ctx = self.ctx
        try:
            fields = self.check(up)
        except Rejected as e:
            self._reject(up, None, e.kind, str(e), now_ms)
            return Outbox()
        mid = fields["meter_id"]
        _log.debug(
            "meter %s: %s seq %s, %d bytes via %s",
            mid,
            fields["type"],
            fields["seq"],
            len(up.frame),
            up.transport,
        )
        try:
            with ctx.db.transaction():
                return self._handle(up, fields, now_ms)
        except UnknownMeter:
            self._reject(up, fields, Kind.UNKNOWN_METER, "meter is not registered", now_ms)
            out = Outbox()
            body = {
                "nacked_type": MESSAGE_TYPES[fields["type"]],
                "nacked_seq": fields["seq"],
                "reason": int(Nack.NOT_REGISTERED),
            }
            out.send(mid, ctx.downlinks.reply(mid, "nack", body, now_ms), up.transport)
            return out
        except InvalidData as e:
            self._reject(up, fields, Kind.REJECTED, str(e), now_ms)
            if fields["type"] == "register":
                return registry.reject(ctx, mid, up.transport, now_ms)
            return Outbox()

    def _reject(
        self, up: Uplink, fields: dict[str, Any] | None, kind: Kind, reason: str, now_ms: int
    ) -> None:
        self.rejected += 1
        what = f"{fields['type']} seq {fields['seq']}" if fields else "frame"
        text = f"{what} via {up.transport}: {reason}"
        _log.warning("meter %s: %s", up.meter_id, text)
        self.ctx.activity.log(now_ms, kind, text, up.meter_id)

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
        if mtype == "time_sync_request":  # normally answered on the loop (see Service)
            out = Outbox()
            frame = timesync.answer(ctx.downlinks, fields, now_ms, lambda: now_ms)
            out.send(meter.meter_id, frame, up.transport)
            return out
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
            self.rejected += 1
            self.ctx.activity.log(now_ms, Kind.REJECTED, f"notification ack on {topic}: {e}")

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
        return out
