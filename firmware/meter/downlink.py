# The SPEC's downlink conversations: what the meter does with each frame the
# head-end sends (register_ack, config_set, schedule_set, read_request,
# read_ack, event_ack, time_sync_response, time_set, nack) and which frames
# it answers with. Functions of the core `m` (meter.Meter), which keeps the
# state; a cold module (meter.cold): loaded while a frame is handled.
#
# A command that changes state or exposes data is applied only with a valid
# MAC (M20; auth_failed and replay are nacked and logged); the counter is
# persisted before the command is applied, so a cut can never let a replay
# in. Anything the meter cannot do is nacked with its reason (M16).
import struct

from meter import clock, events, schedules
from meter import timeutil as tu
from meter.meter import cold

try:
    from micropython import const
except ImportError:

    def const(x):
        return x


_HEADER_LEN = const(15)  # wire.HEADER_LEN
_K_COUNTER = const(3)  # config log keys, as in meter.py
_K_EVENT_ACK = const(4)
_ON_DEMAND_SLOT = const(255)  # read_failed data for a read that is not a slot's
_KIND_ON_DEMAND = const(1)  # read_response kinds (SPEC)
_KIND_PERIOD = const(2)
_MAX_READS = const(6)  # reads in progress at once (4 slots + on-demand)

# config_set keys (SPEC)
_CFG_INTERVAL = const(1)
_CFG_UTC_OFFSET = const(2)
_CFG_PUSH_MASK = const(3)
_CFG_MULTIPLIER = const(4)
_CFG_RESET_REGISTRATION = const(5)

# nack reasons (SPEC)
_NACK_BAD_CRC = const(1)
_NACK_UNKNOWN_TYPE = const(2)
_NACK_AUTH_FAILED = const(3)
_NACK_REPLAY = const(4)
_NACK_NOT_HELD = const(5)
_NACK_BUSY = const(6)
_NACK_BAD_PARAMETER = const(7)
_NACK_UNSUPPORTED_VERSION = const(8)
_NACK_MALFORMED = const(9)
_NACK_NOT_REGISTERED = const(10)


def receive(m, raw, now, now_ms=None):
    """Handle one downlink frame; return the reply frames (maybe none)."""
    out = []
    wire = cold("wire")
    E = cold("errors")  # the classes wire raises: loaded with it
    try:
        f = wire.decode(raw)
    except E.ProtocolError as e:
        # answer only a frame whose header names this meter
        if len(raw) >= _HEADER_LEN and struct.unpack_from(">I", raw, 5)[0] == m.meter_id:
            if isinstance(e, E.BadCrc):
                reason = _NACK_BAD_CRC
            elif isinstance(e, E.UnknownMessageType):
                reason = _NACK_UNKNOWN_TYPE
            elif isinstance(e, E.UnsupportedVersion):
                reason = _NACK_UNSUPPORTED_VERSION
            else:
                reason = _NACK_MALFORMED
            m.nack(out, raw[1], struct.unpack_from(">H", raw, 3)[0], reason, now)
        return out
    if f["meter_id"] != m.meter_id:
        return out  # another meter's frame (a shared serial line)
    mtype = f["type"]
    seq = f["seq"]
    body = f["body"]
    code = wire.type_code(mtype)
    if mtype in wire.AUTH_REQUIRED:
        try:
            counter = cold("auth").verify_frame(raw, m.key, m.last_counter)
        except (E.BadMac, E.Replay) as e:
            reason = _NACK_REPLAY if isinstance(e, E.Replay) else _NACK_AUTH_FAILED
            m.ev.log(events.AUTH_FAILED, now, code)
            m.nack(out, code, seq, reason, now)
            return out
        # persist before applying: a cut after it can never let a replay in
        m.last_counter = counter
        m.store.put_config(_K_COUNTER, struct.pack(">I", counter))
    ev = m.ev
    if mtype == "register_ack":
        if body["status"] == 0 and not m.registered:
            m.registered = True
            m.reg_attempt = 0
            m.save_config()
    elif mtype == "config_set":
        status = 0
        for it in body["items"]:
            if not _config(m, it["key"], it["value"], now, False):
                status = _NACK_BAD_PARAMETER
        if status == 0:
            for it in body["items"]:
                _config(m, it["key"], it["value"], now, True)
            m.save_config()
        m.frame(out, "config_ack", {"acked_seq": seq, "status": status}, now)
    elif mtype == "schedule_set":
        sch = m.sched
        saved = sch.to_bytes()
        status = 0
        try:
            for s in body["slots"]:
                sch.apply(s, now)
        except schedules.ScheduleError:
            status = _NACK_BAD_PARAMETER
            m.sched = schedules.Schedules.from_bytes(saved, m.interval_s, m.utc_offset_s)
        if status == 0:
            m.save_schedules()
            for s in body["slots"]:
                ev.log(events.SCHEDULE_CHANGED, now, s["slot"])
        m.frame(out, "schedule_ack", {"acked_seq": seq, "status": status}, now)
    elif mtype == "read_request":
        _read_request(m, seq, body, now, out)
    elif mtype == "read_ack":
        acked = body["acked_seq"]
        for rd in m.reads:
            p = rd.out.pop(acked, None)
            if p is None:
                continue
            rd.acked += 1
            rd.attempt = 1  # progress: the retry clock starts again
            rd.next_try = now + events.retry_delay(1, m.rand())
            if rd.dead or rd.acked >= len(rd.parts):
                if rd.slot < schedules.NSLOTS:
                    m.sched.acknowledged(rd.slot, rd.end, rd.start)
                    m.save_schedules()
                m.reap_reads()
            else:
                m.send_read(rd, now, out)  # the window moves on
            break
    elif mtype == "event_ack":
        if ev.acked(body["acked_seq"]):
            m.store.put_config(_K_EVENT_ACK, struct.pack(">I", ev.acked_upto))
    elif mtype == "time_sync_response":
        t4 = now_ms if now_ms is not None else now * 1000
        r = m.sync.response(body["t1_ms"], body["t2_ms"], body["t3_ms"], t4, now, m.rand())
        if r is None:
            return out  # not the request in flight
        decision, offset_ms, _delay = r
        if decision == clock.FAILED:
            ev.log(events.SYNC_FAILED, now, m.sync.last_reason)
        elif decision == clock.STEP:
            m.step_clock(now, now + (offset_ms + 500) // 1000)
        elif decision == clock.OUT_OF_SYNC:
            c, data = clock.event_for(decision, offset_ms, now)
            ev.log(c, now, data)
    elif mtype == "time_set":
        new = body["utc_ms"] // 1000
        m.step_clock(now, new)
        m.sync.time_set(new)
    elif mtype == "nack":
        if body["reason"] == _NACK_NOT_REGISTERED and m.registered:
            m.registered = False
            m.reg_next = 0
            m.save_config()
    elif mtype == "download_open" or mtype == "download_auth":
        # M18 (optical download) is not part of this firmware yet
        m.nack(out, 0x0F, seq, _NACK_UNKNOWN_TYPE, now)
    else:
        m.nack(out, code, seq, _NACK_UNKNOWN_TYPE, now)
    return out


def _config(m, key, v, now, apply):
    """Check one config_set item (apply False: True if valid) or apply it."""
    if key == _CFG_INTERVAL:
        if not apply:
            return v in tu.INTERVALS and not m.sched.conflicts(v)
        at = m.rec.set_interval(v, now)
        m.pending_interval = v if at is not None else 0
    elif key == _CFG_UTC_OFFSET:
        if not apply:
            # whole hours of change keep every interval grid (and record) aligned
            return -840 <= v <= 840 and (v * 60 - m.utc_offset_s) % 3600 == 0
        off = v * 60
        m.utc_offset_s = off
        m.rec.utc_offset_s = off
        m.sched.utc_offset_s = off
        m.sync.utc_offset_s = off
        m.sync.plan(now, m.rand())
    elif key == _CFG_PUSH_MASK:
        if not apply:
            return 0 <= v and not v & ~events.MASK_ALL
        m.push_mask = v
        m.ev.set_push_mask(v)
    elif key == _CFG_MULTIPLIER:
        if not apply:
            return 1 <= v <= 0xFFFF
        m.multiplier = v
    elif key == _CFG_RESET_REGISTRATION:
        if not apply:
            return True
        m.registered = False
        m.reg_attempt = 0
        m.reg_next = 0
    else:
        return False
    m.ev.log(events.CONFIG_CHANGED, now, key)
    return True


def _read_request(m, seq, body, now, out):
    mode = body["mode"]
    what = body["what"] & schedules.WHAT_ALL or schedules.WHAT_ALL
    held = None  # start of the oldest interval held
    for r in m.store.intervals():
        held = r[0]
        break
    acked = 0
    for a in m.sched.acked_end:
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
            m.interval_s,
            m.utc_offset_s,
            held,
            acked,
        )
    except schedules.NotHeld:
        reason = _NACK_NOT_HELD
    except schedules.ScheduleError:
        reason = _NACK_BAD_PARAMETER
    if not reason and len(m.reads) >= _MAX_READS:
        reason = _NACK_BUSY
    if not reason:
        kind = _KIND_ON_DEMAND if mode == schedules.MODE_ON_DEMAND else _KIND_PERIOD
        try:
            rd = m.start_read(_ON_DEMAND_SLOT, start, end, what, now, kind, seq)
        except cold("reads").ReadError:
            reason = _NACK_BAD_PARAMETER
    if reason:
        m.ev.log(events.READ_UNANSWERABLE, now, reason)
        m.nack(out, 0x07, seq, reason, now)
        return
    m.send_read(rd, now, out)  # answer at once (H05: within seconds)
