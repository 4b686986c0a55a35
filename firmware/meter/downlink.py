# The SPEC's downlink conversations: what the meter does with each frame the
# head-end sends (register_ack, config_set, schedule_set, read_request,
# read_ack, event_ack, time_sync_response, time_set, key_set, nack) and which
# frames it answers with. Functions of the core `m` (meter.Meter), which keeps
# the state; a cold module (meter.cold): loaded while a frame is handled.
#
# Every downlink is verified (SPEC "Authentication"): the MAC under the
# current key (or the previous one while a key rotation is unconfirmed), the
# counter above the last accepted, then every field of the body; only then is
# the counter persisted (a cut after it can never let a replay in) and the
# frame acted on. Refused input (a bad MAC, a replay, a frame that does not
# decode) is nacked, and an auth failure logged as event 13, at most once a
# minute. Anything the meter cannot do is nacked with its reason (M16).
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
_REFUSE_EVERY_S = const(60)  # refused input is answered at most once a minute
_U32 = const(0xFFFFFFFF)

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
            _refuse(m, out, raw[1], struct.unpack_from(">H", raw, 3)[0], reason, now)
        return out
    if f["meter_id"] != m.meter_id:
        return out  # another meter's frame (a shared serial line)
    mtype = f["type"]
    seq = f["seq"]
    body = f["body"]
    code = wire.type_code(mtype)
    if mtype in wire.UNSIGNED:
        # the probe's frames: only on the optical port (optical.py), never here
        _refuse(m, out, code, seq, _NACK_UNKNOWN_TYPE, now)
        return out
    # the MAC under the current key, or the previous one while a rotation is
    # unconfirmed; then the counter
    A = cold("auth")
    key = m.key
    try:
        try:
            counter = A.verify_frame(raw, key, m.last_counter)
        except E.BadMac:
            if m.old_key is None:
                raise
            key = m.old_key
            counter = A.verify_frame(raw, key, m.last_counter)
    except (E.BadMac, E.Replay) as e:
        reason = _NACK_REPLAY if isinstance(e, E.Replay) else _NACK_AUTH_FAILED
        _refuse(m, out, code, seq, reason, now, True)
        return out
    # every field checked before anything is persisted: a bad one changes nothing
    reason, ready = _check(m, mtype, body, now, key)
    if reason:
        if mtype == "time_set":
            m.nack(out, code, seq, reason, now)
        else:  # config_set, schedule_set, key_set: their ack says why
            _ack(m, out, mtype, seq, reason, now)
        return out
    # then the counter (a cut after it can never let a replay in), then act
    m.last_counter = counter
    m.store.put_config(_K_COUNTER, struct.pack(">I", counter))
    if key is m.key and m.old_key is not None:
        m.old_key = None  # the first downlink under the new key: rotation confirmed
        m.save_key()
    ev = m.ev
    if mtype == "register_ack":
        if body["status"] == 0 and not m.registered:
            m.registered = True
            m.reg_attempt = 0
            m.save_config()
    elif mtype == "config_set":
        for it in body["items"]:
            _config(m, it["key"], it["value"], now, True)
        m.save_config()
        _ack(m, out, mtype, seq, 0, now)
    elif mtype == "schedule_set":
        m.sched = ready
        m.save_schedules()
        for s in body["slots"]:
            ev.log(events.SCHEDULE_CHANGED, now, s["slot"])
        _ack(m, out, mtype, seq, 0, now)
    elif mtype == "key_set":
        if body["version"] != m.key_version:
            # the new key and version in one record, the old key kept with them
            # until the first downlink under the new one
            m.old_key = key
            m.key = ready
            m.key_version = body["version"]
            m.save_key()
        _ack(m, out, mtype, seq, 0, now)  # signed with the new key
    elif mtype == "read_request":
        _read_request(m, seq, ready, now, out)
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
        m.step_clock(now, ready)
        m.sync.time_set(ready)
    elif mtype == "nack":
        if body["reason"] == _NACK_NOT_REGISTERED and m.registered:
            m.registered = False
            m.reg_next = 0
            m.save_config()
    else:  # an uplink type sent to the meter
        m.nack(out, code, seq, _NACK_UNKNOWN_TYPE, now)
    return out


def _refuse(m, out, code, seq, reason, now, auth=False):
    """Answer refused input (nack; auth failures also event 13) at most once a
    minute: a flood costs no flash writes and no signed answers."""
    last = m.refused_at
    if last is not None and last <= now < last + _REFUSE_EVERY_S:
        return
    m.refused_at = now
    if auth:
        m.ev.log(events.AUTH_FAILED, now, code)
    m.nack(out, code, seq, reason, now)


def _ack(m, out, mtype, seq, status, now):
    # the reply of config_set, schedule_set or key_set
    if mtype == "key_set":
        body = {"acked_seq": seq, "version": m.key_version, "status": status}
        m.frame(out, "key_ack", body, now)
    else:
        name = "config_ack" if mtype == "config_set" else "schedule_ack"
        m.frame(out, name, {"acked_seq": seq, "status": status}, now)


def _check(m, mtype, body, now, key):
    """Check every field of a verified downlink before anything is persisted.

    Returns (nack reason, None): nothing may change; or (0, what acting
    needs): the new Schedules, the unwrapped key, the new time, the read's period.
    """
    if mtype == "config_set":
        for it in body["items"]:
            if not _config(m, it["key"], it["value"], now, False):
                return _NACK_BAD_PARAMETER, None
    elif mtype == "schedule_set":
        sch = schedules.Schedules.from_bytes(m.sched.to_bytes(), m.interval_s, m.utc_offset_s)
        try:
            for s in body["slots"]:
                sch.apply(s, now)
        except schedules.ScheduleError:
            return _NACK_BAD_PARAMETER, None
        return 0, sch
    elif mtype == "key_set":
        v = body["version"]
        if v < m.key_version:
            return _NACK_BAD_PARAMETER, None
        if v > m.key_version:
            return 0, cold("auth").unwrap_key(key, body["wrapped"], v)
    elif mtype == "time_set":
        t = body["utc_ms"] // 1000
        # a u32 of seconds on every record and frame: 2**32 s on is unrecordable
        return (0, t) if t <= _U32 else (_NACK_BAD_PARAMETER, None)
    elif mtype == "read_request":
        return 0, _request(m, body, now)
    return 0, None


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


def _request(m, body, now):
    """(start, end, what, kind, reason) of a read_request: its period and
    response kind, or a nack reason."""
    mode = body["mode"]
    what = body["what"] & schedules.WHAT_ALL or schedules.WHAT_ALL
    kind = _KIND_ON_DEMAND if mode == schedules.MODE_ON_DEMAND else _KIND_PERIOD
    held = None  # start of the oldest interval held
    for r in m.store.intervals():
        held = r[0]
        break
    acked = 0
    for a in m.sched.acked_end:
        if a > acked:
            acked = a
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
        return (0, 0, what, kind, _NACK_NOT_HELD)
    except schedules.ScheduleError:
        return (0, 0, what, kind, _NACK_BAD_PARAMETER)
    return (start, end, what, kind, 0)


def _read_request(m, seq, req, now, out):
    # a request it cannot answer is an authentic one: refused with a nack and
    # event 14 after the counter is persisted
    start, end, what, kind, reason = req
    if not reason and len(m.reads) >= _MAX_READS:
        reason = _NACK_BUSY
    if not reason:
        try:
            rd = m.start_read(_ON_DEMAND_SLOT, start, end, what, now, kind, seq)
        except cold("reads").ReadError:
            reason = _NACK_BAD_PARAMETER
    if reason:
        m.ev.log(events.READ_UNANSWERABLE, now, reason)
        m.nack(out, 0x07, seq, reason, now)
        return
    m.send_read(rd, now, out)  # answer at once (H05: within seconds)
