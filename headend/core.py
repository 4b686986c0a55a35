"""The head-end's logic without I/O: an uplink (or a tick) in, an `Outbox` out.

`Core.on_uplink` checks a frame (decodes it, meter id of the link against the
frame's, direction), then in ONE database transaction verifies it (MAC under
the meter's key, or the pending key during a rotation; the counter taken into
the store's replay window, which refuses a replay) and handles it:
registration, data, events, schedule, read and key answers. Nothing is read from the frame's
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

import collections
import functools
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from headend.adcs import (
    offschedule,
    ondemand,
    rebalance,
    recovery,
    registry,
    rotation,
    scheduling,
    timesync,
    trouble,
)
from headend.adcs.exports import RoutineExports
from headend.adcs.timed import TimedJob, Timer
from headend.brokerconf import payload_limit
from headend.context import Ctx
from headend.errors import InvalidData, StoreError, UnknownMeter
from headend.mdms import ingest, routing
from headend.outbox import Outbox
from headend.rejections import Rejections
from headend.store import EventRecord, Meter, Source
from headend.store.activity import Kind
from headend.store.auth import AuthRow
from headend.store.lifecycles import KeyState
from headend.store.records import Job, Route
from headend.store.registry import Layout, layouts
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


class _Undo(Exception):
    """A frame of a batch's first try (no savepoints) has writes to undo: the batch is
    handled again, a savepoint per frame."""


@dataclass(frozen=True, slots=True)
class _Read:
    """A read answer taken apart, waiting for its data's store results (`Core._stored`)."""

    meter: Meter
    up: Uplink
    fields: dict[str, Any]
    secs: ingest.Sections
    source: Source
    layout: Layout | None
    now_ms: int
    version: int  # the key version its ack is signed under
    out: Outbox  # its answers: the ack in it already, or added with the batch's others


#: The daily and weekly jobs, each run once per period across workers.
TIMED_JOBS = (
    TimedJob("trouble", lambda c: c.trouble_at, lambda c: 1, trouble.run),
    TimedJob(
        "rebalance", lambda c: c.rebalance_at, lambda c: c.rebalance_every_days, rebalance.run
    ),
)


class Core:
    """Args: ctx: config, store, the store's tables and downlink framing (see `Ctx`)."""

    def __init__(self, ctx: Ctx) -> None:
        self.ctx = ctx
        self.next_assignment_ms: int | None = None
        self.next_offschedule_ms = 0
        self.timer = Timer(TIMED_JOBS)
        self.exports = RoutineExports()  # routine exports, on their own thread (D11)
        self.rejections = Rejections()
        self.recovery = recovery.Recovery()
        # inside `on_uplinks`: the latest arrival whose new events wait to be routed
        # (once for the batch, at its end); None outside a batch: route at once
        self._route_at: int | None = None
        self._batching = False
        # inside `on_uplinks`: the batch's meters' auth rows, registrations and layouts, read
        # with one query each before its first frame; each taken by its meter's first frame
        # (no frame of that meter wrote before), dropped when that frame ends
        self._auth_rows: dict[int, AuthRow] = {}
        self._meters: dict[int, Meter] = {}
        self._layouts: dict[int, Layout] = {}
        self._routes: list[Route] | None = None  # the event routes, read once a batch
        # a batch's first try, without savepoints (see `on_uplinks`); its refusals,
        # counted once it is committed
        self._fast = False
        self._refused: list[tuple[Kind, str, int | None, str, int]] | None = None
        # a fast try's scheduled reads of meters with one frame in the batch: stored
        # together at its end (`_store_reads`), their answers completed then
        self._reads: list[_Read] | None = None
        self._alone: set[int] = set()
        # their replay windows' moves, written with the reads (`MeterAuth.accept_many`)
        self._windows: dict[int, tuple[int, int, int, int, int]] = {}

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

    def verify(self, up: Uplink, fields: dict[str, Any], now_ms: int) -> int:
        """MAC under the meter's key (or the pending one), counter advanced in the store.

        Call it inside the uplink's transaction. Returns the key version in force now
        (the pending one if this frame confirmed it). Raises Rejected (BadMac, Replay).
        """
        ctx = self.ctx
        mid = fields["meter_id"]
        known = self._auth_rows.pop(mid, None)
        st = known.state if known is not None else ctx.auth.get(mid)
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
        if known is not None and known.window is not None and not new_key and self._held(fields):
            row = ctx.auth.held_accept(mid, counter, known.window)
            if row is not None:
                self._windows[mid] = row  # written with the batch's reads, compared then
            accepted = row is not None
        else:
            accepted = ctx.auth.accept_uplink(mid, counter, now_ms, known)
        if not accepted:
            raise Rejected(
                Kind.REJECTED,
                "Replay",
                f"Replay: counter {counter} already accepted or below the replay window: dropped",
            )
        if new_key:
            rotation.confirmed(ctx, mid, f"{fields['type']} seq {fields['seq']}", now_ms)
            assert pending is not None  # new_key only under the pending version
            return pending
        return version

    def _held(self, fields: dict[str, Any]) -> bool:
        """A scheduled read of a meter alone in a fast try's batch: stored with the others
        (`_store_reads`), its window moved and its ack's counter taken with theirs."""
        return (
            self._reads is not None
            and fields["type"] == "read_response"
            and fields["meter_id"] in self._alone
            and not fields["body"]["request_seq"]
        )

    def on_uplink(self, up: Uplink, now_ms: int, clock: Callable[[], int] | None = None) -> Outbox:
        """Handle one uplink; the returned frames go out after the commit.

        ``now_ms``: when the frame arrived (a time-sync answer's t2); ``clock`` gives
        t3, read when the answer is built as it is sent (default: ``now_ms``). Never
        raises for bad input: every refusal is typed and counted.
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
            # a savepoint inside `on_uplinks`' transaction: a refused frame's writes undone
            with self._undoable():
                version = self.verify(up, fields, now_ms)
                if fields["type"] != "time_sync_request":
                    return self._handle(up, fields, now_ms, version)
                prepared = timesync.prepare(ctx, fields, now_ms)
            # committed; built as it leaves, t3 then (SPEC: "when the answer leaves")
            out = Outbox()
            t3 = clock or (lambda: now_ms)
            answer = functools.partial(timesync.answer, fields, now_ms, t3, prepared)
            out.send_built(fields["meter_id"], answer, up.transport)
            return out
        except Rejected as e:
            self._reject(up, fields, e.kind, e.reason, str(e), now_ms)
            return Outbox()
        except UnknownMeter:
            assert fields is not None  # raised only after check
            self._reject(up, fields, Kind.UNKNOWN_METER, "not registered", "not registered", now_ms)
            with self._undoable():  # its own: a failure here undoes only the nack's counter
                return self._not_registered(up, fields, now_ms)
        except (InvalidData, ProtocolError) as e:
            # verified, but the content cannot be taken (or its answer cannot be built)
            reason = type(e).__name__
            self._reject(up, fields, Kind.REJECTED, reason, f"{reason}: {e}", now_ms)
            if fields is not None and fields["type"] == "register":
                with self._undoable():
                    return registry.reject(ctx, fields["meter_id"], up.transport, now_ms)
            return Outbox()

    def _not_registered(self, up: Uplink, fields: dict[str, Any], now_ms: int) -> Outbox:
        mid = fields["meter_id"]
        out = Outbox()
        body = {
            "nacked_type": MESSAGE_TYPES[fields["type"]],
            "nacked_seq": fields["seq"],
            "reason": int(Nack.NOT_REGISTERED),
        }
        out.send(mid, self.ctx.downlinks.reply(mid, "nack", body, now_ms), up.transport)
        return out

    def on_uplinks(
        self, batch: Sequence[tuple[Uplink, int]], clock: Callable[[], int] | None = None
    ) -> list[Outbox | None]:
        """Several (uplink, arrival ms) in one transaction: one commit (one fsync)
        for all, each frame handled as `on_uplink` alone would (its writes in one
        savepoint: a refused or failing frame's writes are undone, the others kept).
        The Outboxes, in the batch's order, go out after the commit, so nothing is
        acknowledged before it is stored. None: a frame that failed on a bug
        (logged). A `StoreError` undoes them all.

        Frames are handled in meter id order (stable: a meter's own frames keep
        theirs), so workers sharing PostgreSQL take the meters' rows (meter_auth,
        auth_counter) in one order and never deadlock on them. New events of the
        batch are routed once, at its end (`_route_batch`).

        First without savepoints (what a savepoint costs is a sixth of the batch):
        when a frame has something to undo (it raised after its first write), the
        whole batch is rolled back and handled again, a savepoint per frame; what
        the first try counted or logged is dropped with it. In that first try the
        read answers of meters with one frame in the batch (and no job waiting for
        them) are stored together at its end, a statement per table for all
        (`_store_reads`); their answers are completed then, before the commit. A
        store that refuses one of them fails the first try: the second stores
        each frame alone, and refuses only that one.
        """
        try:
            return self._batch(batch, clock, fast=True)
        except _Undo as e:
            _log.debug("batch of %d handled again, a savepoint per frame: %s", len(batch), e)
            return self._batch(batch, clock, fast=False)

    def _batch(
        self, batch: Sequence[tuple[Uplink, int]], clock: Callable[[], int] | None, fast: bool
    ) -> list[Outbox | None]:
        out: list[Outbox | None] = [None] * len(batch)
        self._batching, self._route_at, self._fast = True, None, fast
        self._refused, self._routes = [], None
        self._reads, self._windows = ([] if fast else None), {}
        seen = collections.Counter(up.meter_id for up, _ in batch)
        self._alone = {m for m, n in seen.items() if n == 1}
        activity = self.ctx.activity
        activity.hold()  # the batch's lines: one statement, before its commit
        try:
            with self.ctx.db.transaction():
                ids = {up.meter_id for up, _ in batch}
                self._auth_rows = self.ctx.auth.get_many(ids)
                self._meters = self.ctx.registry.get_many(ids)
                self._layouts = layouts(self.ctx.db, ids)
                for i in sorted(range(len(batch)), key=lambda i: batch[i][0].meter_id):
                    up, now_ms = batch[i]
                    try:  # on_uplink's savepoint undid the writes of a frame that raised
                        out[i] = self.on_uplink(up, now_ms, clock)
                    except (StoreError, _Undo):
                        raise
                    except Exception:  # one frame must never stop the others
                        _log.exception(
                            "meter %s: uplink via %s not handled", up.meter_id, up.transport
                        )
                    finally:  # its next frame reads what this one wrote
                        self._auth_rows.pop(up.meter_id, None)
                        self._meters.pop(up.meter_id, None)
                        self._layouts.pop(up.meter_id, None)
                if self._reads:  # (a fast try's: a failure tries again, frame by frame)
                    with self._undoable():
                        self._store_reads()
                self._route_batch(out)
                activity.write_held()
            for args in self._refused:  # counted once the batch is committed
                self.rejections.add(*args)
        finally:
            activity.drop_held()
            self._batching, self._route_at, self._fast = False, None, False
            self._refused, self._routes = None, None
            self._reads, self._alone, self._windows = None, set(), {}
            self._auth_rows, self._meters, self._layouts = {}, {}, {}
        return out

    @contextmanager
    def _undoable(self) -> Iterator[None]:
        """A savepoint (a transaction outside a batch): what its body wrote is undone if
        it raises, the activity lines it logged (held in a batch) too.

        In a batch's first try (``_fast``) no savepoint: a `Rejected` (check and
        verify refuse before any write) goes through, anything else raises `_Undo`.
        """
        if self._fast:
            try:
                yield
            except Rejected:
                raise
            except StoreError as e:  # a database failure fails the batch as it would anyway
                if not isinstance(e, UnknownMeter):
                    raise
                raise _Undo(f"{type(e).__name__}: {e}") from e
            except Exception as e:
                raise _Undo(f"{type(e).__name__}: {e}") from e
            return
        mark = self.ctx.activity.mark()
        try:
            with self.ctx.db.savepoint():
                yield
        except BaseException:
            self.ctx.activity.drop_to(mark)
            raise

    def _route_batch(self, outs: list[Outbox | None]) -> None:
        """Route the batch's new events with one look at the due deliveries (not one per
        frame); they ride with the last answered frame's Outbox, after the commit."""
        last = next((o for o in reversed(outs) if o is not None), None)
        if self._route_at is None or last is None:
            return
        try:
            with self._undoable():
                last.extend(routing.send_due(self.ctx, self._route_at))
        except StoreError:
            raise
        except Exception:  # the tick routes them: they are stored
            _log.exception("routing %d uplinks' new events failed", len(outs))

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
        args = (kind, reason, up.meter_id, f"{what} via {up.transport}: {text}", now_ms)
        if self._refused is not None:
            self._refused.append(args)
        else:
            self.rejections.add(*args)

    def _handle(self, up: Uplink, fields: dict[str, Any], now_ms: int, version: int) -> Outbox:
        ctx = self.ctx
        mtype = fields["type"]
        if mtype == "register":
            return registry.on_register(ctx, fields, up.transport, now_ms)
        meter = self._meters.pop(fields["meter_id"], None) or ctx.registry.get(fields["meter_id"])
        body = fields["body"]
        together = self._held(fields)
        before = ctx.registry.link_seen(
            meter.meter_id, up.transport, now_ms, meter, counted=not together
        )
        if before is not None:
            ctx.activity.log(
                now_ms,
                Kind.LINK_CHANGED,
                f"now heard on {up.transport} (was {before or 'none'}); downlinks follow",
                meter.meter_id,
            )
            meter = ctx.registry.get(meter.meter_id)
        if mtype == "read_response":
            return self._read(meter, up, fields, now_ms, version, together)
        if mtype == "event":
            return self._events(meter, up, fields, now_ms, version)
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

    def _read(
        self,
        meter: Meter,
        up: Uplink,
        fields: dict[str, Any],
        now_ms: int,
        version: int,
        together: bool = False,
    ) -> Outbox:
        """A read answer; ``together``: stored with the batch's others (`_store_reads`:
        its link's count, its arrival and its ack too)."""
        ctx = self.ctx
        b = fields["body"]
        mid = meter.meter_id
        job = ctx.jobs.for_reply(mid, b["request_seq"]) if b["request_seq"] else None
        if b["kind"] == ReadKind.SCHEDULED:
            source = Source.SCHEDULED
            if not together:
                ctx.arrivals.record(mid, meter.utc_offset_min, now_ms // 1000)  # H03
        else:
            source = job.spec.source if job is not None else Source.ON_DEMAND
        secs = ingest.sections(meter, b["sections"], source, now_ms // 1000, decoded=True)
        layout = self._layouts.pop(mid, None)  # read for the batch, unless a frame before wrote
        out = Outbox()
        read = _Read(meter, up, fields, secs, source, layout, now_ms, version, out)
        if together and self._reads is not None:
            self._reads.append(read)  # stored with the batch's others, before its commit
            return out
        out.send(mid, self._read_ack(read, self._counter(mid, now_ms)), up.transport)
        res = ctx.readings.ingest(
            blocks=secs.blocks,
            midnights=secs.midnights,
            known={mid: layout} if layout is not None else None,
        )
        fresh = routing.store_events(ctx, mid, secs.events, now_ms, self._batch_routes)
        self._stored(read, res.intervals_written, res.midnights_written, fresh, job)
        return out

    def _store_reads(self) -> None:
        """Store the batch's held reads with one statement per table (intervals,
        registers, events, links, arrivals; not one each per frame), then log, publish
        and route each as `_read` does."""
        reads, self._reads = self._reads or [], None
        ctx = self.ctx
        windows, self._windows = list(self._windows.values()), {}
        if not ctx.auth.accept_many(windows):  # another worker took one of these frames
            raise _Undo("a replay window changed since the batch read it")
        counters = ctx.registry.next_counters({r.meter.meter_id: r.now_ms // 1000 for r in reads})
        ctx.registry.links_seen([(r.meter.meter_id, r.up.transport, r.now_ms) for r in reads])
        ctx.arrivals.record_many(
            [
                (r.meter.meter_id, r.meter.utc_offset_min, r.now_ms // 1000)  # H03
                for r in reads
                if r.source == Source.SCHEDULED
            ]
        )
        _, per = ctx.readings.ingest_by_meter(
            blocks=[x for r in reads for x in r.secs.blocks],
            midnights=[x for r in reads for x in r.secs.midnights],
            known={r.meter.meter_id: r.layout for r in reads if r.layout is not None},
        )
        new = ctx.readings.add_events([e for r in reads for e in r.secs.events])
        by_meter: dict[int, dict[tuple[int, int, int], int]] = {}
        for (m, t, c, d), eid in new.items():
            by_meter.setdefault(m, {})[(t, c, d)] = eid
        for r in reads:
            mid = r.meter.meter_id
            r.out.send(mid, self._read_ack(r, counters[mid]), r.up.transport)
            fresh = routing.route_new(ctx, mid, by_meter.get(mid, {}), r.now_ms, self._batch_routes)
            self._stored(r, *per.get(mid, (0, 0)), fresh, None)

    def _stored(
        self, r: _Read, intervals: int, midnights: int, fresh: list[int], job: Job | None
    ) -> None:
        """A read answer's data is stored (``intervals`` and ``midnights`` of it new, the
        codes of its new events ``fresh``): its activity line, its real-time publication,
        what its events ask for."""
        ctx, secs, b, mid = self.ctx, r.secs, r.fields["body"], r.meter.meter_id
        n_iv = sum(x.block.count for x in secs.blocks)
        ctx.activity.log(
            r.now_ms,
            Kind.DATA_STORED,
            f"read_response seq {r.fields['seq']} ({read_kind_name(b['kind'])}, "
            f"part {b['part']}/{b['parts']}, source {r.source.name.lower()}): {n_iv} intervals "
            f"({intervals} new), {len(secs.midnights)} midnight registers "
            f"({midnights} new), {len(secs.events)} events ({len(fresh)} new)"
            + (f"; job {job.job_id}" if job is not None else ""),
            mid,
            str(job.job_id) if job is not None else None,
        )
        if job is not None:
            eng = ingest.engineering(r.meter, secs, r.source)
            ondemand.on_part(ctx, job, b, eng, r.now_ms)
            r.out.extend(routing.send_due(ctx, r.now_ms))  # the result to its requester, now
        # Real-time subscribers get what is new (a repeated frame publishes nothing).
        if ctx.config.realtime and (intervals or midnights or secs.registers):
            topic = ctx.config.realtime_topic.format(meter=mid)
            for part in ingest.realtime_parts(r.meter, secs, r.source, payload_limit(topic)):
                r.out.publish(topic, part)
        self._after_events(r.meter, secs.events, fresh, r.up, r.now_ms, r.out)

    def _events(
        self, meter: Meter, up: Uplink, fields: dict[str, Any], now_ms: int, version: int
    ) -> Outbox:
        ctx = self.ctx
        mid = meter.meter_id
        events = [
            EventRecord(mid, e["code"], e["time"], e["data"], Source.SCHEDULED, now_ms // 1000)
            for e in fields["body"]["events"]
        ]
        fresh = routing.store_events(ctx, mid, events, now_ms, self._batch_routes)
        out = Outbox()
        ack = {"acked_seq": fields["seq"]}
        counter = self._counter(mid, now_ms)
        out.send(mid, self._ack(mid, "event_ack", ack, now_ms, version, counter), up.transport)
        self._after_events(meter, events, fresh, up, now_ms, out)
        return out

    def _batch_routes(self) -> list[Route]:
        """The event routes: read once in a batch (each time outside one)."""
        if not self._batching:
            return self.ctx.events.routes()
        if self._routes is None:
            self._routes = self.ctx.events.routes()
        return self._routes

    def _counter(self, mid: int, now_ms: int) -> int:
        """A registered meter's next downlink counter (registration not checked again)."""
        return self.ctx.registry.next_counter(mid, now_ms // 1000, registered=True)

    def _ack(
        self, mid: int, mtype: str, body: dict[str, Any], now_ms: int, version: int, counter: int
    ) -> bytes:
        """`Downlinks.reply` for a registered meter's verified frame: signed under the key
        version the frame left in force (not read again) and ``counter``."""
        d = self.ctx.downlinks
        return d.signed(mid, mtype, body, now_ms, counter, d.key(mid, version))[1]

    def _read_ack(self, r: _Read, counter: int) -> bytes:
        """A read answer's ack: what it carried (``upto``), stored or not."""
        ack = {"acked_seq": r.fields["seq"], "upto": r.secs.upto}
        return self._ack(r.meter.meter_id, "read_ack", ack, r.now_ms, r.version, counter)

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
        if fresh and self._batching:  # routed once for the whole batch, at its end
            self._route_at = max(self._route_at or 0, now_ms)
        elif fresh:
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
        """Evening assignment when due, daily and weekly jobs, missed off-schedule reads,
        schedules, the daily check and recovery reads, jobs, timeouts, deliveries."""
        ctx = self.ctx
        out = Outbox()
        if self.next_assignment_ms is None:
            self.next_assignment_ms = scheduling.next_assignment(ctx.config, now_ms)
        if now_ms >= self.next_assignment_ms:
            placed = scheduling.assign(ctx, now_ms)
            _log.info("evening assignment: %d meter(s) placed in read groups", len(placed))
            self.next_assignment_ms = scheduling.next_assignment(ctx.config, now_ms)
        self.timer.tick(ctx, now_ms)
        self.exports.tick(ctx, now_ms)
        if now_ms >= self.next_offschedule_ms:
            out.extend(offschedule.check(ctx, now_ms))
            self.next_offschedule_ms = now_ms + offschedule.CHECK_EVERY_MS
        out.extend(scheduling.send_pending(ctx, now_ms))
        out.extend(scheduling.check_acks(ctx, now_ms))
        self.recovery.tick(ctx, now_ms)
        out.extend(ondemand.start_jobs(ctx, now_ms))
        out.extend(ondemand.expire(ctx, now_ms))
        out.extend(routing.send_due(ctx, now_ms))
        out.extend(rotation.send_due(ctx, now_ms))
        self.rejections.flush(ctx.activity, now_ms)
        return out
