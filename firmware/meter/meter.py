# The meter's application core: sans-IO, handed the time and the energy.
#
#   m = Meter(store, ident, rand=..., set_clock=...)   # store: a Store, not mounted
#   m.boot(now)                      # recover everything from flash alone
#   m.add(counts)                    # energy drained from the pulse counters
#   frames = m.tick(now, online)     # close intervals, emit what is due
#   frames = m.receive(raw, now)     # one downlink frame -> replies
#
# Owns the Recorder, Store, Schedules, EventLog and SyncState and speaks the
# SPEC conversations with wire.encode/decode: the uplinks here, what each
# downlink does in downlink.py. It never reads a clock: the app
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
import sys

from meter import clock, events, recorder, schedules
from meter import timeutil as tu

_FW_VERSION = const("ami-fw 0.3.0")

# Cold modules: the downlink conversations, the wire codec and its errors,
# authentication and read building work only while a frame goes in or out,
# a few times a day. They run from flash; their function objects take heap
# only while in use: cold() imports one, the app calls drop_cold() when the
# meter is idle (firmware README, "Heap").
_COLD = const(
    ("downlink", "reads", "wire", "auth", "blocks", "ivblock", "crc", "hdlc", "errors", "optical")
)
_KIND_SCHEDULED = const(0)  # read_response kind (SPEC)


def cold(name):
    """The cold module meter.<name>, imported if it is not loaded."""
    m = sys.modules.get("meter." + name)
    if m is None:
        __import__("meter." + name)
        m = sys.modules["meter." + name]
    return m


def drop_cold():
    """Forget the cold modules (a later cold() imports them again)."""
    pkg = sys.modules.get("meter")
    for name in _COLD:
        if sys.modules.pop("meter." + name, None) is not None and hasattr(pkg, name):
            delattr(pkg, name)


# config/state keys in the store's config log
_K_CONFIG = const(1)  # interval, offset, push mask, multiplier, registered, pending interval
_K_SCHEDULES = const(2)  # Schedules.to_bytes()
_K_COUNTER = const(3)  # last accepted downlink auth counter
_K_EVENT_ACK = const(4)  # seq of the newest acknowledged pushed event
_K_UP_CEILING = const(5)  # no uplink counter above it has been used
_K_KEY = const(6)  # version u16, key, previous key while a rotation is unconfirmed
_CEILING_STEP = const(64)  # uplink counters per ceiling write (SPEC)
_U32 = const(0xFFFFFFFF)
_CONFIG_FMT = const(">HhIHBH")

_WINDOW = const(2)  # read parts in flight, unacknowledged, per read
_READ_ATTEMPTS = const(4)  # sends of a part before the read counts as failed (M15)
_ON_DEMAND_SLOT = const(255)  # read_failed data for a read that is not a slot's
_REGISTER_CAP_S = const(3600)
_DAY = const(86400)

# default channels: (kind, unit, multiplier, scaler)
_CHANNELS = const(
    (
        (1, 1, 1, 0),  # active import, Wh
        (2, 1, 1, 0),  # active export, Wh
        (3, 2, 1, 0),  # reactive import, varh
        (4, 2, 1, 0),  # reactive export, varh
    )
)


def Ident(
    meter_id,
    key,
    interval_s=900,
    utc_offset_min=0,
    push_mask=events.DEFAULT_PUSH_MASK,
    meter_multiplier=1,
    read_offset_s=schedules.DEFAULT_READ_OFFSET_S,
    channels=_CHANNELS,
    fw_version=_FW_VERSION,
):
    """What the meter is: id, key, defaults for a fresh install, checked; a
    tuple in this order for Meter() (a class would cost 0.5 KB of heap)."""
    tu.check_interval(interval_s)
    tu.check_utc_offset(utc_offset_min * 60)
    events.check_push_mask(push_mask)
    return (
        meter_id,
        key,
        interval_s,
        utc_offset_min,
        push_mask,
        meter_multiplier,
        read_offset_s,
        channels,
        fw_version,
    )


class Meter:
    """The meter core. set_clock(utc_s) steps the RTC; rand() -> u32."""

    def __init__(self, store, ident, rand=None, set_clock=None):
        self.store = store
        (
            self.meter_id,
            self.key,  # the current key: every uplink is signed with it
            self.interval_s,
            off_min,
            self.push_mask,
            self.multiplier,
            self.read_offset_s,
            self.channels,  # (kind, unit, multiplier, scaler) each
            self.fw_version,
        ) = ident
        self.utc_offset_s = off_min * 60
        self.key_version = 0
        self.old_key = None  # accepted for downlinks while a rotation is unconfirmed
        self.up_next = 1  # the next uplink counter
        self.up_ceiling = 0  # persisted: counters up to it may have been used
        self.refused_at = None  # when refused input was last answered (once a minute)
        self.rand = rand or (lambda: 0x9E3779B9)
        self._set_clock = set_clock
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
        self.reg_attempt = 0
        self.reg_next = 0
        self.booted = False
        self.frames_sent = 0
        self.probe = None  # probe(1) while a read part is built (the bench's heap peak)

    # -- persistence -----------------------------------------------------------

    def save_config(self):
        blob = struct.pack(
            _CONFIG_FMT,
            self.interval_s,
            self.utc_offset_s // 60,
            self.push_mask,
            self.multiplier,
            1 if self.registered else 0,
            self.pending_interval,
        )
        self.store.put_config(_K_CONFIG, blob)

    def save_schedules(self):
        self.store.put_config(_K_SCHEDULES, self.sched.to_bytes())
        self._sched_next = list(self.sched.next_at)

    def save_key(self):
        # one record: a cut leaves the old or the new key, never neither or a mix
        blob = struct.pack(">H", self.key_version) + self.key
        self.store.put_config(_K_KEY, blob + self.old_key if self.old_key else blob)

    def counter(self):
        """A fresh uplink counter. The ceiling is on flash before a counter
        above the old one is used, so a restart never reuses one (SPEC)."""
        c = self.up_next
        if c > self.up_ceiling:
            if c > _U32:
                raise ValueError("counter", c)  # 2**32 frames: the key must change
            top = c + _CEILING_STEP
            top = top if top < _U32 else _U32
            self.store.put_config(_K_UP_CEILING, struct.pack(">I", top))
            self.up_ceiling = top
        self.up_next = c + 1
        return c

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
        cfg = st.get_config(_K_CONFIG)
        first_boot = cfg is None
        if cfg is not None:
            iv, off_min, mask, mult, reg, pend = struct.unpack(_CONFIG_FMT, cfg)
            self.interval_s = tu.check_interval(iv)
            self.utc_offset_s = tu.check_utc_offset(off_min * 60)
            self.push_mask = events.check_push_mask(mask)
            self.multiplier = mult
            self.registered = bool(reg)
            self.pending_interval = pend if pend in tu.INTERVALS else 0
        blob = st.get_config(_K_COUNTER)
        self.last_counter = struct.unpack(">I", blob)[0] if blob else None
        blob = st.get_config(_K_UP_CEILING)
        self.up_ceiling = struct.unpack(">I", blob)[0] if blob else 0
        self.up_next = self.up_ceiling + 1
        blob = st.get_config(_K_KEY)
        if blob:  # a rotated key (key_set) wins over the provisioned one
            self.key_version = struct.unpack_from(">H", blob)[0]
            self.key = blob[2:34]
            self.old_key = blob[34:66] if len(blob) >= 66 else None
        off = self.utc_offset_s
        blob = st.get_config(_K_SCHEDULES)
        self.sched = None
        if blob:
            try:
                self.sched = schedules.Schedules.from_bytes(blob, self.interval_s, off)
            except schedules.ScheduleError:
                self.sched = None  # unreadable: back to the default read
        if self.sched is None:
            self.sched = schedules.Schedules(self.interval_s, off, self.read_offset_s)
        self._sched_next = list(self.sched.next_at)
        self.ev = events.EventLog(st, self.push_mask)
        blob = st.get_config(_K_EVENT_ACK)
        self.ev.resume((struct.unpack(">I", blob)[0] if blob else 0) + 1)
        self.sync = clock.SyncState(self.interval_s, off)
        self.rec = recorder.Recorder(self.interval_s, len(self.channels), off, list(st.registers()))
        last = st.last_interval()
        if first_boot:
            self.save_config()
            self.save_schedules()
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
        self.sync.plan(now, self.rand())
        self._seq = self.rand() & 0xFFFF
        # unacknowledged scheduled reads: send them again at once (M15)
        sch = self.sched
        for i in range(schedules.NSLOTS):
            if sch.slots[i] is not None and sch.sent_end[i] > sch.acked_end[i]:
                start = sch.acked_end[i] or sch.first[i]
                if start < sch.sent_end[i]:
                    self.start_read(i, start, sch.sent_end[i], sch.slots[i].what, now)
        self.booted = True

    # -- recording -------------------------------------------------------------

    def add(self, counts):
        """Energy counted since the last call (ints >= 0, one per channel)."""
        self.rec.add(counts)

    def _store_closed(self, closed, now):
        st = self.store
        new = self.rec.switched
        if new:
            self.rec.switched = 0
            # the recorder switched at a boundary: persist first (boot reads it)
            self.interval_s = new
            self.pending_interval = 0
            self.save_config()
            for i in self.sched.conflicts(new):  # set meanwhile with a shorter period
                self.sched.cancel(i, now)
                self.ev.log(events.SCHEDULE_CHANGED, now, i)
            self.sched.set_interval(new)
            self.save_schedules()
            self.sync.set_interval(new, now, self.rand())
            self.ev.log(events.INTERVAL_CHANGED, now, new)
        for r in closed:
            st.append_interval(r[0], r[1], r[2], r[3])
        while True:
            m = self.rec.midnight_due()
            if m is None:
                break
            st.append_register_read(m[0], m[1])

    # -- frames ----------------------------------------------------------------

    def frame(self, out, mtype, body, now, seq=None, key=None):
        """Encode one uplink into out (a list), signed with a fresh counter;
        returns its seq: the next one, or `seq` for a repeat (the head-end
        treats a repeat as idempotent; the counter is new all the same).
        key: the meter key, or an optical probe's K_op (optical.py)."""
        if seq is None:
            seq = self._seq = (self._seq + 1) & 0xFFFF
        wire = cold("wire")
        raw = wire.encode(
            {
                "type": mtype,
                "seq": seq,
                "meter_id": self.meter_id,
                "timestamp": now,
                "auth": {"counter": self.counter()},
                "body": body,
            },
            key or self.key,
        )
        self.frames_sent += 1
        self.ev.message_sent(wire.type_code(mtype), now)
        out.append(raw)
        return seq

    def nack(self, out, code, seq, reason, now):
        body = {"nacked_type": code, "nacked_seq": seq, "reason": reason}
        self.frame(out, "nack", body, now)

    # -- tick ------------------------------------------------------------------

    def tick(self, now, online=True, now_ms=None):
        """Close what is due and return the uplink frames to send now.

        online: the uplink can carry frames now; while False nothing is
        sent and no attempt is counted (a due time sync counts as failed).
        """
        self._store_closed(self.rec.tick(now), now)
        out = []
        ev = self.ev
        if not self.registered and online and now >= self.reg_next:
            chans = []
            for kind, unit, mult, scaler in self.channels:
                chans.append({"kind": kind, "unit": unit, "multiplier": mult, "scaler": scaler})
            body = {
                "fw_version": self.fw_version,
                "interval_s": self.interval_s,
                # days of intervals the store keeps at the current interval length
                "capacity_days": self.store.capacity()[0] // (_DAY // self.interval_s + 2),
                "utc_offset_min": self.utc_offset_s // 60,
                "meter_multiplier": self.multiplier,
                "channels": chans,
            }
            self.frame(out, "register", body, now)
            self.reg_attempt += 1
            d = events.retry_delay(self.reg_attempt, self.rand())
            self.reg_next = now + (d if d < _REGISTER_CAP_S else _REGISTER_CAP_S)
        # reads: an occurrence due while the previous read of its slot is
        # unacknowledged: that read failed (M15); the new one covers everything
        # since the last ack
        sch = self.sched
        for rd in self.reads:
            i = rd.slot
            if not rd.dead and i < schedules.NSLOTS and sch.next_at[i] and now >= sch.next_at[i]:
                self._read_failed(rd, now)
        self.reap_reads()
        due = sch.due(now)
        for i, start, end in due:
            slot = sch.slots[i]
            self.start_read(i, start, end, slot.what if slot else schedules.WHAT_ALL, now)
        if due or sch.next_at != self._sched_next:
            self.save_schedules()
        # time sync
        sy = self.sync
        if sy.timed_out(now):
            sy.failed(now, self.rand(), clock.FAIL_TIMEOUT)
            ev.log(events.SYNC_FAILED, now, clock.FAIL_TIMEOUT)
        if sy.due(now):
            if not online:
                sy.failed(now, self.rand(), clock.FAIL_TIMEOUT)
                ev.log(events.SYNC_FAILED, now, clock.FAIL_TIMEOUT)
            else:
                t1 = now_ms if now_ms is not None else now * 1000
                self.frame(out, "time_sync_request", {"t1_ms": t1}, now)
                sy.sent(now, t1)
        if online:
            if ev.push_due(now):
                # (code, time, data) tuples: the wire codec's compact struct form
                batch = {"events": ev.batch()}
                ev.pushed(self.frame(out, "event", batch, now), now, self.rand())
            for rd in self.reads:
                self.send_read(rd, now, out)
            self.reap_reads()
        return out

    def start_read(self, slot, start, end, what, now, kind=_KIND_SCHEDULED, req=0):
        ev_to = end if kind == _KIND_SCHEDULED else now + 1
        parts = cold("reads").plan(
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
        rd = cold("reads").Read(slot, kind, req, start, end, what, start, ev_to, parts)
        self.reads.append(rd)
        return rd

    def send_read(self, rd, now, out):
        """Re-send the parts in flight when their retry is due, or send new ones
        while fewer than _WINDOW are in flight."""
        again = rd.out and now >= rd.next_try
        if again and rd.attempt >= _READ_ATTEMPTS:
            self._read_failed(rd, now)
            return
        todo = sorted(rd.out) if again else []
        while not again and len(rd.out) + len(todo) < _WINDOW and rd.next_part < len(rd.parts):
            todo.append(-1 - rd.next_part)  # a new part: a fresh seq
            rd.next_part += 1
        if not todo:
            return
        reads = cold("reads")
        for x in todo:
            p = rd.out[x] if x >= 0 else -1 - x
            if x < 0:  # a new part: a fresh seq (a repeat keeps its own: idempotent)
                x = self._seq = (self._seq + 1) & 0xFFFF
            # encoded straight from flash into the frame (reads.frame): a part
            # never holds its intervals or events as lists or dicts
            out.append(
                reads.frame(
                    x,
                    self.meter_id,
                    rd.request_seq,
                    rd.kind,
                    p,
                    len(rd.parts),
                    rd.parts[p],
                    rd.what,
                    self.store,
                    self.ev,
                    now,
                    self.rec.totals(),
                    rd.ev_from,
                    rd.ev_to,
                    self.key,
                    self.counter(),
                    self.probe,
                )
            )
            self.frames_sent += 1  # usage data: no message_sent event
            rd.out[x] = p
        rd.attempt = rd.attempt + 1 if again else 1
        rd.next_try = now + events.retry_delay(rd.attempt, self.rand())

    def _read_failed(self, rd, now):
        if rd.slot < schedules.NSLOTS:
            self.sched.send_failed(rd.slot)
            self.save_schedules()
        self.ev.log(events.READ_FAILED, now, rd.slot)
        rd.dead = True

    def reap_reads(self):
        self.reads = [rd for rd in self.reads if not rd.dead and rd.acked < len(rd.parts)]

    # -- receive ---------------------------------------------------------------

    def receive(self, raw, now, now_ms=None):
        """Handle one downlink frame; return the reply frames (maybe none)."""
        return cold("downlink").receive(self, raw, now, now_ms)

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
