# The meter's application core: sans-IO, handed the time and the energy.
#
#   m = Meter(store, ident, rand=..., set_clock=...)   # store: a Store, not mounted
#   m.boot(now)                      # recover everything from flash alone
#   m.add(counts)                    # energy drained from the pulse counters
#   frames = m.tick(now, online)     # close intervals, emit what is due
#   frames = m.receive(raw, now)     # one downlink frame -> replies
#
# Owns the Recorder, Store, Schedules, EventLog and SyncState and speaks the
# SPEC conversations with wire.encode/decode. It never reads a clock: the app
# hands `now` (int UTC s; `now_ms` optional for time sync) and steps the RTC
# through the set_clock(utc_s) callback. Everything that must survive a power
# cut is on flash before the call that changed it returns; nothing is written
# that has not changed. Behaviour, limits and timing: METER.md.

try:
    from micropython import const
except ImportError:

    def const(x):
        return x


import struct

from meter import auth, clock, events, reads, recorder, schedules, wire
from meter import timeutil as tu
from meter.errors import BadCrc, BadMac, ProtocolError, Replay, UnknownMessageType
from meter.errors import UnsupportedVersion

FW_VERSION = "ami-fw 0.3.0"

# config/state keys in the store's config log
K_CONFIG = const(1)  # interval, offset, push mask, multiplier, registered, pending interval
K_SCHEDULES = const(2)  # Schedules.to_bytes()
K_COUNTER = const(3)  # last accepted auth counter
K_EVENT_ACK = const(4)  # seq of the newest acknowledged pushed event
_CONFIG_FMT = ">HhIHBH"

# config_set keys (SPEC)
CFG_INTERVAL = const(1)
CFG_UTC_OFFSET = const(2)
CFG_PUSH_MASK = const(3)
CFG_MULTIPLIER = const(4)
CFG_RESET_REGISTRATION = const(5)

# nack reasons (SPEC)
NACK_BAD_CRC = const(1)
NACK_UNKNOWN_TYPE = const(2)
NACK_AUTH_FAILED = const(3)
NACK_REPLAY = const(4)
NACK_NOT_HELD = const(5)
NACK_BUSY = const(6)
NACK_BAD_PARAMETER = const(7)
NACK_UNSUPPORTED_VERSION = const(8)
NACK_MALFORMED = const(9)
NACK_NOT_REGISTERED = const(10)

WINDOW = const(2)  # read parts in flight, unacknowledged, per read
READ_ATTEMPTS = const(4)  # sends of a part before the read counts as failed (M15)
MAX_READS = const(6)  # reads in progress at once (4 slots + on-demand)
ON_DEMAND_SLOT = const(255)  # read_failed data for a read that is not a slot's
REGISTER_CAP_S = const(3600)
_DAY = const(86400)

# default channels: (kind, unit, multiplier, scaler)
CHANNELS = (
    (1, 1, 1, 0),  # active import, Wh
    (2, 1, 1, 0),  # active export, Wh
    (3, 2, 1, 0),  # reactive import, varh
    (4, 2, 1, 0),  # reactive export, varh
)


class Ident:
    """What the meter is: id, key, defaults for a fresh install."""

    def __init__(
        self,
        meter_id,
        key,
        interval_s=900,
        utc_offset_min=0,
        push_mask=events.DEFAULT_PUSH_MASK,
        meter_multiplier=1,
        read_offset_s=schedules.DEFAULT_READ_OFFSET_S,
        channels=CHANNELS,
        fw_version=FW_VERSION,
    ):
        self.meter_id = meter_id
        self.key = key
        self.interval_s = tu.check_interval(interval_s)
        self.utc_offset_min = utc_offset_min
        tu.check_utc_offset(utc_offset_min * 60)
        self.push_mask = events.check_push_mask(push_mask)
        self.meter_multiplier = meter_multiplier
        self.read_offset_s = read_offset_s
        self.channels = channels
        self.fw_version = fw_version


class Read:
    """A read response in progress: its plan and which parts are acknowledged."""

    def __init__(self, slot, kind, request_seq, start, end, what, ev_from, ev_to, parts):
        self.slot = slot  # 0-3, or ON_DEMAND_SLOT
        self.kind = kind
        self.request_seq = request_seq
        self.start = start
        self.end = end
        self.what = what
        self.ev_from = ev_from
        self.ev_to = ev_to
        self.parts = parts
        self.next_part = 0  # first part never sent
        self.out = {}  # frame seq -> part index, sent and not acknowledged
        self.acked = 0  # parts acknowledged
        self.attempt = 0  # sends of the oldest unacknowledged part
        self.next_try = 0
        self.dead = False  # failed: dropped at the next reap

    def done(self):
        return self.dead or self.acked >= len(self.parts)


class Meter:
    """The meter core. set_clock(utc_s) steps the RTC; rand() -> u32."""

    def __init__(self, store, ident, rand=None, set_clock=None):
        self.store = store
        self.ident = ident
        self.meter_id = ident.meter_id
        self.key = ident.key
        self._rand = rand or (lambda: 0x9E3779B9)
        self._set_clock = set_clock
        self.interval_s = ident.interval_s
        self.utc_offset_s = ident.utc_offset_min * 60
        self.push_mask = ident.push_mask
        self.multiplier = ident.meter_multiplier
        self.registered = False
        self.pending_interval = 0
        self.last_counter = None
        self.rec = None
        self.sched = None
        self.ev = None
        self.sync = None
        self.reads = []
        self._seq = 0
        self._sched_next = None  # next_at list as last persisted
        self._reg_attempt = 0
        self._reg_next = 0
        self.booted = False
        self.first_boot = False
        self.frames_sent = 0

    # -- persistence -----------------------------------------------------------

    def _put_config(self):
        blob = struct.pack(
            _CONFIG_FMT,
            self.interval_s,
            self.utc_offset_s // 60,
            self.push_mask,
            self.multiplier,
            1 if self.registered else 0,
            self.pending_interval,
        )
        self.store.put_config(K_CONFIG, blob)

    def _put_schedules(self):
        self.store.put_config(K_SCHEDULES, self.sched.to_bytes())
        self._sched_next = list(self.sched.next_at)

    # -- boot ------------------------------------------------------------------

    def boot(self, now):
        """Mount the store and recover every state from flash alone (M05).

        Applies the power-up rules: the interval in progress at the cut is
        closed POWER_FAILED|PARTIAL, wholly missed ones POWER_FAILED|INVALID;
        events power_down (at the end of the newest record) and power_up;
        unacknowledged reads, pushes and registration resume.
        """
        st = self.store
        st.mount()
        cfg = st.get_config(K_CONFIG)
        self.first_boot = cfg is None
        if cfg is not None:
            iv, off_min, mask, mult, reg, pend = struct.unpack(_CONFIG_FMT, cfg)
            self.interval_s = tu.check_interval(iv)
            self.utc_offset_s = tu.check_utc_offset(off_min * 60)
            self.push_mask = events.check_push_mask(mask)
            self.multiplier = mult
            self.registered = bool(reg)
            self.pending_interval = pend if pend in tu.INTERVALS else 0
        blob = st.get_config(K_COUNTER)
        self.last_counter = struct.unpack(">I", blob)[0] if blob else None
        off = self.utc_offset_s
        blob = st.get_config(K_SCHEDULES)
        self.sched = None
        if blob:
            try:
                self.sched = schedules.Schedules.from_bytes(blob, self.interval_s, off)
            except schedules.ScheduleError:
                self.sched = None  # unreadable: back to the default read
        if self.sched is None:
            self.sched = schedules.Schedules(self.interval_s, off, self.ident.read_offset_s)
        self._sched_next = list(self.sched.next_at)
        self.ev = events.EventLog(events.StoreSink(st), self.push_mask)
        blob = st.get_config(K_EVENT_ACK)
        self.ev.resume((struct.unpack(">I", blob)[0] if blob else 0) + 1)
        self.sync = clock.SyncState(self.interval_s, off)
        self.rec = recorder.Recorder(
            self.interval_s, len(self.ident.channels), off, list(st.registers())
        )
        last = st.last_interval()
        if self.first_boot:
            self._put_config()
            self._put_schedules()
            self._store_closed(self.rec.start(now), now)
            self.ev.log(events.SELF_TEST, now, 0)
        else:
            if last is None:
                self._store_closed(self.rec.start(now, recorder.POWER_FAILED), now)
            else:
                end = last[0] + last[1]
                self.ev.log(events.POWER_DOWN, end, 0)
                mid = None
                for t, _regs in st.register_reads(tu.day_start(end, off) - _DAY):
                    if mid is None or t > mid:
                        mid = t
                self._store_closed(self.rec.power_up(now, last[0], None, 0, mid, last[1]), now)
            self.ev.log(events.POWER_UP, now, 0)
            if self.pending_interval:
                self.rec.set_interval(self.pending_interval, now)
        self.sync.plan(now, self._rand())
        self._seq = self._rand() & 0xFFFF
        # unacknowledged scheduled reads: send them again at once (M15)
        sch = self.sched
        for i in range(schedules.NSLOTS):
            if sch.slots[i] is not None and sch.sent_end[i] > sch.acked_end[i]:
                start = sch.acked_end[i] or sch.first[i]
                if start < sch.sent_end[i]:
                    self._start_read(i, start, sch.sent_end[i], sch.slots[i].what, now)
        self.booted = True

    # -- recording -------------------------------------------------------------

    def add(self, counts):
        """Energy counted since the last call (ints >= 0, one per channel)."""
        self.rec.add(counts)

    def _store_closed(self, closed, now):
        st = self.store
        if closed.new_interval:
            self._interval_changed(closed.new_interval, now)
        for r in closed:
            st.append_interval(r[0], r[1], r[2], r[3])
        while True:
            m = self.rec.midnight_due()
            if m is None:
                break
            st.append_register_read(m[0], m[1])

    def _interval_changed(self, new, now):
        # the recorder switched at a boundary: persist first (boot reads it)
        self.interval_s = new
        self.pending_interval = 0
        self._put_config()
        bad = self.sched.conflicts(new)
        for i in bad:  # set meanwhile with a period shorter than the new length
            self.sched.cancel(i, now)
            self.ev.log(events.SCHEDULE_CHANGED, now, i)
        self.sched.set_interval(new)
        self._put_schedules()
        self.sync.set_interval(new, now, self._rand())
        self.ev.log(events.INTERVAL_CHANGED, now, new)

    # -- frames ----------------------------------------------------------------

    def _frame(self, mtype, body, now):
        self._seq = (self._seq + 1) & 0xFFFF
        raw = wire.encode(
            {
                "type": mtype,
                "seq": self._seq,
                "meter_id": self.meter_id,
                "timestamp": now,
                "auth": None,
                "body": body,
            }
        )
        self.frames_sent += 1
        self.ev.message_sent(wire.MESSAGE_TYPES[mtype], now)
        return raw

    def _nack(self, out, mtype_code, seq, reason, now):
        out.append(
            self._frame(
                "nack", {"nacked_type": mtype_code, "nacked_seq": seq, "reason": reason}, now
            )
        )

    def register_body(self):
        chans = []
        for kind, unit, mult, scaler in self.ident.channels:
            chans.append({"kind": kind, "unit": unit, "multiplier": mult, "scaler": scaler})
        return {
            "fw_version": self.ident.fw_version,
            "interval_s": self.interval_s,
            "capacity_days": self.capacity_days(),
            "utc_offset_min": self.utc_offset_s // 60,
            "meter_multiplier": self.multiplier,
            "channels": chans,
        }

    def capacity_days(self):
        """Days of intervals the store keeps at the current interval length."""
        slots = self.store.capacity()[0]
        return slots // (_DAY // self.interval_s + 2)

    # -- tick ------------------------------------------------------------------

    def tick(self, now, online=True, now_ms=None):
        """Close what is due and return the uplink frames to send now.

        online: the uplink can carry frames now; while False nothing is
        sent and no attempt is counted (a due time sync counts as failed).
        """
        self._store_closed(self.rec.tick(now), now)
        out = []
        if not self.registered and online and now >= self._reg_next:
            out.append(self._frame("register", self.register_body(), now))
            self._reg_attempt += 1
            d = events.retry_delay(self._reg_attempt, self._rand())
            self._reg_next = now + (d if d < REGISTER_CAP_S else REGISTER_CAP_S)
        self._schedule_reads(now)
        self._time_sync(now, online, now_ms, out)
        if online:
            ev = self.ev
            if ev.push_due(now):
                batch = ev.batch()
                evs = [{"code": c, "time": t, "data": d} for c, t, d in batch]
                raw = self._frame("event", {"events": evs}, now)
                ev.pushed(self._seq, now, self._rand())
                out.append(raw)
            for rd in self.reads:
                self._send_read(rd, now, out)
            self._reap_reads(now)
        return out

    def _time_sync(self, now, online, now_ms, out):
        sy = self.sync
        if sy.timed_out(now):
            sy.failed(now, self._rand(), clock.FAIL_TIMEOUT)
            self.ev.log(events.SYNC_FAILED, now, clock.FAIL_TIMEOUT)
        if sy.due(now):
            if not online:
                sy.failed(now, self._rand(), clock.FAIL_TIMEOUT)
                self.ev.log(events.SYNC_FAILED, now, clock.FAIL_TIMEOUT)
                return
            t1 = now_ms if now_ms is not None else now * 1000
            out.append(self._frame("time_sync_request", {"t1_ms": t1}, now))
            sy.sent(now, t1)

    def _schedule_reads(self, now):
        sch = self.sched
        # an occurrence due while the previous read of its slot is unacknowledged:
        # that read failed (M15); the new one covers everything since the last ack
        for rd in self.reads:
            i = rd.slot
            if not rd.dead and i < schedules.NSLOTS and sch.next_at[i] and now >= sch.next_at[i]:
                self._read_failed(rd, now)
        self._reap_reads(now)
        due = sch.due(now)
        for i, start, end in due:
            slot = sch.slots[i]
            self._start_read(i, start, end, slot.what if slot else schedules.WHAT_ALL, now)
        if due or sch.next_at != self._sched_next:
            self._put_schedules()

    def _start_read(self, slot, start, end, what, now, kind=reads.KIND_SCHEDULED, req=0):
        ev_to = end if kind == reads.KIND_SCHEDULED else now + 1
        parts = reads.plan(
            start,
            end,
            what,
            self.interval_s,
            self.utc_offset_s,
            self.ev,
            start,
            ev_to,
            self.store.next_event_seq() - 1,
        )
        rd = Read(slot, kind, req, start, end, what, start, ev_to, parts)
        self.reads.append(rd)
        return rd

    def _send_part(self, rd, p, now, seq=None):
        body = {
            "request_seq": rd.request_seq,
            "kind": rd.kind,
            "part": p,
            "parts": len(rd.parts),
            "sections": reads.sections(
                rd.parts[p],
                p == 0,
                rd.what,
                self.store,
                self.ev,
                now,
                self.rec.totals(),
                rd.ev_from,
                rd.ev_to,
            ),
        }
        if seq is None:
            raw = self._frame("read_response", body, now)
            seq = self._seq
        else:  # a repeat keeps its seq: the head-end treats it as idempotent
            saved = self._seq
            self._seq = (seq - 1) & 0xFFFF
            raw = self._frame("read_response", body, now)
            self._seq = saved
        rd.out[seq] = p
        return raw

    def _send_read(self, rd, now, out):
        if rd.out and now >= rd.next_try:
            if rd.attempt >= READ_ATTEMPTS:
                self._read_failed(rd, now)
                return
            for seq in sorted(rd.out):
                out.append(self._send_part(rd, rd.out[seq], now, seq))
            rd.attempt += 1
            rd.next_try = now + events.retry_delay(rd.attempt, self._rand())
            return
        sent = False
        while len(rd.out) < WINDOW and rd.next_part < len(rd.parts):
            out.append(self._send_part(rd, rd.next_part, now))
            rd.next_part += 1
            sent = True
        if sent:
            rd.attempt = 1
            rd.next_try = now + events.retry_delay(1, self._rand())

    def _read_failed(self, rd, now):
        if rd.slot < schedules.NSLOTS:
            self.sched.send_failed(rd.slot)
            self._put_schedules()
        self.ev.log(events.READ_FAILED, now, rd.slot)
        rd.dead = True

    def _reap_reads(self, now):
        keep = []
        for rd in self.reads:
            if not rd.done():
                keep.append(rd)
        self.reads = keep

    # -- receive ---------------------------------------------------------------

    def receive(self, raw, now, now_ms=None):
        """Handle one downlink frame; return the reply frames (maybe none)."""
        out = []
        try:
            f = wire.decode(raw)
        except ProtocolError as e:
            self._bad_frame(raw, e, now, out)
            return out
        if f["meter_id"] != self.meter_id:
            return out  # another meter's frame (a shared serial line)
        mtype = f["type"]
        seq = f["seq"]
        body = f["body"]
        if mtype in wire.AUTH_REQUIRED:
            try:
                counter = auth.verify_frame(raw, self.key, self.last_counter)
            except (BadMac, Replay) as e:
                reason = NACK_REPLAY if isinstance(e, Replay) else NACK_AUTH_FAILED
                self.ev.log(events.AUTH_FAILED, now, wire.MESSAGE_TYPES[mtype])
                self._nack(out, wire.MESSAGE_TYPES[mtype], seq, reason, now)
                return out
            # persist before applying: a cut after it can never let a replay in
            self.last_counter = counter
            self.store.put_config(K_COUNTER, struct.pack(">I", counter))
        handler = _HANDLERS.get(mtype)
        if handler is None:
            self._nack(out, wire.MESSAGE_TYPES[mtype], seq, NACK_UNKNOWN_TYPE, now)
            return out
        handler(self, seq, body, now, now_ms, out)
        return out

    def _bad_frame(self, raw, e, now, out):
        # answer only a frame whose header names this meter
        if len(raw) < wire.HEADER_LEN or struct.unpack_from(">I", raw, 5)[0] != self.meter_id:
            return
        if isinstance(e, BadCrc):
            reason = NACK_BAD_CRC
        elif isinstance(e, UnknownMessageType):
            reason = NACK_UNKNOWN_TYPE
        elif isinstance(e, UnsupportedVersion):
            reason = NACK_UNSUPPORTED_VERSION
        else:
            reason = NACK_MALFORMED
        self._nack(out, raw[1], struct.unpack_from(">H", raw, 3)[0], reason, now)

    # handlers: (self, seq, body, now, now_ms, out)

    def _on_register_ack(self, seq, body, now, now_ms, out):
        if body["status"] == 0 and not self.registered:
            self.registered = True
            self._reg_attempt = 0
            self._put_config()

    def _on_config_set(self, seq, body, now, now_ms, out):
        items = body["items"]
        status = 0
        for it in items:
            if not self._config_ok(it["key"], it["value"]):
                status = NACK_BAD_PARAMETER
        if status == 0:
            for it in items:
                self._config_apply(it["key"], it["value"], now)
            self._put_config()
        out.append(self._frame("config_ack", {"acked_seq": seq, "status": status}, now))

    def _config_ok(self, key, v):
        if key == CFG_INTERVAL:
            return v in tu.INTERVALS and not self.sched.conflicts(v)
        if key == CFG_UTC_OFFSET:
            # whole hours of change keep every interval grid (and so every record) aligned
            return -840 <= v <= 840 and (v * 60 - self.utc_offset_s) % 3600 == 0
        if key == CFG_PUSH_MASK:
            return 0 <= v and not v & ~events.MASK_ALL
        if key == CFG_MULTIPLIER:
            return 1 <= v <= 0xFFFF
        return key == CFG_RESET_REGISTRATION

    def _config_apply(self, key, v, now):
        if key == CFG_INTERVAL:
            at = self.rec.set_interval(v, now)
            self.pending_interval = v if at is not None else 0
        elif key == CFG_UTC_OFFSET:
            off = v * 60
            self.utc_offset_s = off
            self.rec.utc_offset_s = off
            self.sched.utc_offset_s = off
            self.sync.utc_offset_s = off
            self.sync.plan(now, self._rand())
        elif key == CFG_PUSH_MASK:
            self.push_mask = v
            self.ev.set_push_mask(v)
        elif key == CFG_MULTIPLIER:
            self.multiplier = v
        elif key == CFG_RESET_REGISTRATION:
            self.registered = False
            self._reg_attempt = 0
            self._reg_next = 0
        self.ev.log(events.CONFIG_CHANGED, now, key)

    def _on_schedule_set(self, seq, body, now, now_ms, out):
        sch = self.sched
        saved = sch.to_bytes()
        status = 0
        try:
            for s in body["slots"]:
                sch.apply(s, now)
        except schedules.ScheduleError:
            status = NACK_BAD_PARAMETER
            self.sched = schedules.Schedules.from_bytes(saved, self.interval_s, self.utc_offset_s)
        if status == 0:
            self._put_schedules()
            for s in body["slots"]:
                self.ev.log(events.SCHEDULE_CHANGED, now, s["slot"])
        out.append(self._frame("schedule_ack", {"acked_seq": seq, "status": status}, now))

    def held_from(self):
        """Start of the oldest interval held (or None)."""
        for r in self.store.intervals():
            return r[0]
        return None

    def _on_read_request(self, seq, body, now, now_ms, out):
        mode = body["mode"]
        what = body["what"] & schedules.WHAT_ALL or schedules.WHAT_ALL
        held = self.held_from()
        acked = 0
        for a in self.sched.acked_end:
            if a > acked:
                acked = a
        reason = 0
        try:
            if held is None:
                raise schedules.NotHeld("no interval held yet")
            start, end = schedules.request_period(
                mode,
                body["start"],
                body["end"],
                now,
                self.interval_s,
                self.utc_offset_s,
                held,
                acked,
            )
        except schedules.NotHeld:
            reason = NACK_NOT_HELD
        except schedules.ScheduleError:
            reason = NACK_BAD_PARAMETER
        if not reason and len(self.reads) >= MAX_READS:
            reason = NACK_BUSY
        if reason:
            self.ev.log(events.READ_UNANSWERABLE, now, reason)
            self._nack(out, 0x07, seq, reason, now)
            return
        kind = reads.KIND_ON_DEMAND if mode == schedules.MODE_ON_DEMAND else reads.KIND_PERIOD
        try:
            rd = self._start_read(ON_DEMAND_SLOT, start, end, what, now, kind, seq)
        except reads.ReadError:
            self.ev.log(events.READ_UNANSWERABLE, now, NACK_BAD_PARAMETER)
            self._nack(out, 0x07, seq, NACK_BAD_PARAMETER, now)
            return
        self._send_read(rd, now, out)  # answer at once (H05: within seconds)

    def _on_read_ack(self, seq, body, now, now_ms, out):
        acked = body["acked_seq"]
        for rd in self.reads:
            p = rd.out.pop(acked, None)
            if p is None:
                continue
            rd.acked += 1
            rd.attempt = 1  # progress: the retry clock starts again
            rd.next_try = now + events.retry_delay(1, self._rand())
            if rd.done():
                if rd.slot < schedules.NSLOTS:
                    self.sched.acknowledged(rd.slot, rd.end, rd.start)
                    self._put_schedules()
                self._reap_reads(now)
            else:
                self._send_read(rd, now, out)  # the window moves on
            return

    def _on_event_ack(self, seq, body, now, now_ms, out):
        if self.ev.acked(body["acked_seq"]):
            self.store.put_config(K_EVENT_ACK, struct.pack(">I", self.ev.acked_upto))

    def _on_time_sync_response(self, seq, body, now, now_ms, out):
        t4 = now_ms if now_ms is not None else now * 1000
        r = self.sync.response(body["t1_ms"], body["t2_ms"], body["t3_ms"], t4, now, self._rand())
        if r is None:
            return  # not the request in flight
        decision, offset_ms, _delay = r
        if decision == clock.FAILED:
            self.ev.log(events.SYNC_FAILED, now, self.sync.last_reason)
        elif decision == clock.STEP:
            self.step_clock(now, now + (offset_ms + 500) // 1000)
        elif decision == clock.OUT_OF_SYNC:
            code, data = clock.event_for(decision, offset_ms, now)
            self.ev.log(code, now, data)

    def _on_time_set(self, seq, body, now, now_ms, out):
        new = body["utc_ms"] // 1000
        self.step_clock(now, new)
        self.sync.time_set(new)

    def _on_nack(self, seq, body, now, now_ms, out):
        if body["reason"] == NACK_NOT_REGISTERED and self.registered:
            self.registered = False
            self._reg_next = 0
            self._put_config()

    def _on_download(self, seq, body, now, now_ms, out):
        # M18 (optical download) is not part of this firmware yet
        self._nack(out, 0x0F, seq, NACK_UNKNOWN_TYPE, now)

    # -- clock -----------------------------------------------------------------

    def step_clock(self, old, new):
        """Step the clock from old to new (M07, M04): records, schedules, RTC, event 3."""
        if new == old:
            return
        self._store_closed(self.rec.tick(old), old)
        self._store_closed(self.rec.clock_step(old, new), new)
        self.sched.clock_step(old, new)
        if self._set_clock is not None:
            self._set_clock(new)
        self.ev.log(events.CLOCK_ADJUSTED, new, old)

    # -- local inputs ----------------------------------------------------------

    def tamper(self, now, data=0):
        """Cover opened / magnet detected (M10)."""
        self.ev.log(events.TAMPER, now, data)

    def status(self):
        """A small dict for the control port and the bench."""
        return {
            "meter_id": self.meter_id,
            "interval_s": self.interval_s,
            "registered": self.registered,
            "registers": list(self.rec.totals()),
            "last": self.store.last_interval(),
            "reads": len(self.reads),
            "pending_events": self.ev.pending(),
            "next_event_seq": self.store.next_event_seq(),
            "out_of_sync": self.sync.out_of_sync,
        }


_HANDLERS = {
    "register_ack": Meter._on_register_ack,
    "config_set": Meter._on_config_set,
    "schedule_set": Meter._on_schedule_set,
    "read_request": Meter._on_read_request,
    "read_ack": Meter._on_read_ack,
    "event_ack": Meter._on_event_ack,
    "time_sync_response": Meter._on_time_sync_response,
    "time_set": Meter._on_time_set,
    "nack": Meter._on_nack,
    "download_open": Meter._on_download,
    "download_auth": Meter._on_download,
}
