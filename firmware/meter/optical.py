# The optical port (M18, M20, N06; SPEC "Optical port"): IEC 62056-21 mode C
# (sign-on, identification, option select, data readout with its BCC) and
# mode E's switch to binary mode, where the probe's download runs in this
# protocol's frames: download_open -> download_challenge (16 random bytes)
# -> download_auth (HMAC(K_op, nonce || operator)) -> event 9 and the
# download_data parts back to back (clock, registers, every interval,
# midnight read and event held, schedules, config). K_op =
# auth.probe_key(meter key, operator): the meter key never crosses the link;
# every frame the meter sends here is signed with K_op and a fresh uplink
# counter. Every refused attempt is a nack and event 10; three wrong answers
# in a row lock the port for 300 s (answered nack busy), the lock and the
# count a config record, so a reboot keeps them. A nonce answers once.
#
# Sans-IO and cold (meter.cold): the app hands in the bytes read, a ms tick
# (the timeouts) and the meter's time, and gets back what to write and at
# which baud rate. A link's state is one small list the app keeps (new()):
# nothing of this module is on the heap while the port is idle, and a
# dropped link leaves nothing behind but the events. A download part is
# built from flash when it is sent (reads.frame), never the whole download
# in RAM, so the app lets the tick task run between parts. One module, few
# names: every identifier costs heap for good (firmware README, "Heap").
import struct

from meter import timeutil as tu
from meter.meter import cold

try:
    from micropython import const
except ImportError:

    def const(x):
        return x


# link states and IEC events: state x event -> next state (rows: idle,
# identification sent, binary mode; columns: a sign-on for this meter, an
# option select for the readout, one for binary mode, anything else: another
# address, bad bytes, a timeout). A sign-on while the option select is
# awaited starts afresh; a readout ends idle (the app returns to 300 baud).
_IDLE = const(0)  # waiting for a sign-on, 300 baud 7E1
_OPTION = const(1)
_BINARY = const(2)  # HDLC frames until the link is idle 5 s
_SIGN_ON = const(0)
_READOUT = const(1)
_BINARY_SEL = const(2)
_OTHER = const(3)
_NEXT_STATE = const(((1, 0, 0, 0), (1, 0, 2, 0), (2, 2, 2, 0)))

_MAX_MSG = const(40)  # "/?" + 32 address digits + "!\r\n" and some
_CHAR_MS = const(1500)  # inter-character timeout, and for the option select
_BINARY_IDLE_MS = const(5000)
_TICKS = const(0x3FFFFFFF)  # the ms tick wraps (time.ticks_ms)
_DAY = const(86400)

_K_LOCK = const(7)  # config log key: locked until u32, wrong answers in a row u8
_LOCK_FMT = const(">IB")
_MAX_FAILS = const(3)
_LOCK_S = const(300)
_DOWNLOAD_GRANTED = const(9)  # event codes (SPEC)
_DOWNLOAD_DENIED = const(10)
_NACK_AUTH_FAILED = const(3)  # nack reasons (SPEC)
_NACK_REPLAY = const(4)
_NACK_BUSY = const(6)
_NACK_BAD_PARAMETER = const(7)
_EVENTS_PER_PART = const(200)  # as reads.py
_MAX_PARTS = const(255)
_WHAT_ALL = const(15)
_U32 = const(0xFFFFFFFF)

# the link's list: IEC dialogue, then the binary mode's challenge and download
_STATE = const(0)
_HELD = const(1)  # bytes of the message so far
_LAST = const(2)  # ms tick of the last byte (or of the last reply written)
_BUF = const(3)
_NONCE = const(4)  # the challenge's nonce until a download_auth uses it
_OP = const(5)  # its operator
_KOP = const(6)  # the granted operator's K_op
_PART = const(7)  # next part to send; -1: no download in progress
_PARTS = const(8)
_NIV = const(9)  # interval parts, first
_A = const(10)  # start of the next interval part
_END = const(11)  # end of the last interval held
_STEP = const(12)  # span of an interval part
_EV = const(13)  # seq of the oldest event held (0: none)
_HI = const(14)  # newest event seq in the download


def new():
    """A link's state: idle, nothing outstanding (the constants above)."""
    return [_IDLE, 0, 0, bytearray(_MAX_MSG), None, 0, None, -1, 0, 0, 0, 0, 0, 0, 0]


def feed(link, data, now_ms, m, now):
    """IEC 62056-21: the bytes read at ms tick now_ms (None: none, a timeout
    check) -> (reply or None, the baud rate to write it at or to switch to,
    0: as is). m: the meter core; now: its time (UTC s). In binary mode the
    bytes are the app's (HDLC frames: receive()).

    Timeouts: a message half-received, or an identification unanswered, for
    1500 ms, and binary mode 5 s without a byte, return the link to idle; so
    does any unexpected byte. The app sets link[2] = tick after it wrote a
    reply (the timers run from there).
    """
    s = link[_STATE]
    lim = _BINARY_IDLE_MS if s == _BINARY else _CHAR_MS
    if (s or link[_HELD]) and (now_ms - link[_LAST]) & _TICKS > lim:
        link[_STATE] = _NEXT_STATE[s][_OTHER]
        link[_HELD] = 0
    if data is None:
        return None, 0
    link[_LAST] = now_ms
    out = None
    rate = 0
    buf = link[_BUF]
    for b in data:
        s = link[_STATE]
        if s == _BINARY:
            break
        n = link[_HELD]
        if not n and b != 0x2F and not (s == _OPTION and b == 0x06):  # "/", ACK
            link[_STATE] = _NEXT_STATE[s][_OTHER]  # noise before a message
            continue
        if n >= _MAX_MSG:
            link[_STATE] = _NEXT_STATE[s][_OTHER]
            link[_HELD] = 0
            continue
        buf[n] = b
        link[_HELD] = n = n + 1
        if b != 0x0A:  # LF ends a message
            continue
        link[_HELD] = 0
        ev = _OTHER
        if buf[0] == 0x2F:  # "/?" [address] "!" CR LF, the address in decimal
            if n >= 5 and buf[1] == 0x3F and buf[n - 3] == 0x21 and buf[n - 2] == 0x0D:
                a = 0
                for i in range(2, n - 3):
                    c = buf[i] - 0x30
                    if not 0 <= c <= 9:
                        a = -1
                        break
                    a = a * 10 + c
                if n == 5 or a == m.meter_id:
                    ev = _SIGN_ON
        elif s == _OPTION and n == 6 and buf[4] == 0x0D and 0x30 <= buf[2] <= 0x36:
            # ACK V Z Y CR LF: V Y "0 0" readout, "2 2" binary mode, at baud Z
            # (programming mode and the rest: no answer)
            if buf[1] == buf[3] == 0x30:
                ev = _READOUT
            elif buf[1] == buf[3] == 0x32:
                ev = _BINARY_SEL
        link[_STATE] = _NEXT_STATE[s][ev]
        if ev == _SIGN_ON:
            out = b"/AMI6\\2%d\r\n" % m.meter_id
            rate = 0
        elif ev != _OTHER:
            rate = 300 << (buf[2] - 0x30)
            out = _readout(m, now) if ev == _READOUT else None
    return out, rate


def _readout(m, now):
    # STX, the data sets, "!" CR LF ETX, BCC (XOR after STX up to ETX)
    off = m.utc_offset_s
    y, mo, d, hh, mi, ss = tu.civil(now + off)  # local standard time
    t = str(m.meter_id)
    t = "\x020.0.0(%s)\r\nC.1.0(%s)\r\n0.9.1(%02d:%02d:%02d)\r\n0.9.2(%02d%02d%02d)\r\n" % (
        t,
        t,
        hh,
        mi,
        ss,
        y % 100,
        mo,
        d,
    )
    out = bytearray(t.encode())
    _regs(out, m.channels, m.rec.totals(), None)
    last = None  # the newest midnight register read
    for r in m.store.register_reads(tu.day_start(now, off) - 2 * _DAY):
        if last is None or r[0] >= last[0]:
            last = r
    if last is not None:
        _regs(out, m.channels, last[1], last[0])
    # F.F: bit 0 clock out of sync, bit 1 not registered with a head-end
    t = (1 if m.sync.out_of_sync else 0) | (0 if m.registered else 2)
    out.extend(("F.F(%08X)\r\n0.2.0(%s)\r\n!\r\n\x03" % (t, m.fw_version)).encode())
    x = 0
    for i in range(1, len(out)):
        x ^= out[i]
    out.append(x)
    return out


def _regs(out, channels, values, day):
    # a data set per channel, its kind k: "k.8.0(00012345*Wh)", or with a
    # midnight read (day) "k.8.0*01(...)"
    for i in range(len(values)):
        if i < len(channels):
            wh = channels[i][1] == 1
            if day is None:
                f = "%d.8.0(%08d*Wh)\r\n" if wh else "%d.8.0(%08d*varh)\r\n"
            else:
                f = "%d.8.0*01(%08d*Wh)\r\n" if wh else "%d.8.0*01(%08d*varh)\r\n"
            out.extend((f % (channels[i][0], values[i])).encode())


def receive(m, link, raw, now, now_ms=None):
    """One frame read in binary mode -> the reply frames (maybe none).

    A granted download_auth starts the download: part() gives its frames.
    Frames that do not decode are line noise (dropped); signed frames go to
    the usual conversations (downlink.py).
    """
    wire = cold("wire")
    try:
        f = wire.decode(raw)
    except cold("errors").ProtocolError:
        return []
    if f["meter_id"] != m.meter_id:
        return []
    mtype = f["type"]
    if mtype not in wire.UNSIGNED:
        return m.receive(raw, now, now_ms)
    out = []
    A = cold("auth")
    op = f["body"]["operator"]
    key = A.probe_key(m.key, op)
    nack = {"nacked_type": wire.type_code(mtype), "nacked_seq": f["seq"], "reason": _NACK_BUSY}
    link[_PART] = -1  # a probe frame ends a download in progress
    blob = m.store.get_config(_K_LOCK)
    until, fails = struct.unpack(_LOCK_FMT, blob) if blob else (0, 0)
    nonce = link[_NONCE]
    link[_NONCE] = None  # a nonce answers once, right or wrong
    if now < until:
        pass  # locked: nack busy
    elif mtype == "download_open":
        nonce = bytearray(16)
        for i in range(0, 16, 4):
            struct.pack_into(">I", nonce, i, m.rand() & _U32)
        link[_NONCE] = nonce = bytes(nonce)
        link[_OP] = op
        m.frame(out, "download_challenge", {"nonce": nonce}, now, None, key)
        return out
    elif nonce is None:
        nack["reason"] = _NACK_REPLAY
    elif op != link[_OP] or not A.compare(A.download_mac(key, nonce, op), f["body"]["mac"]):
        nack["reason"] = _NACK_AUTH_FAILED
        fails += 1
        lock = fails >= _MAX_FAILS
        m.store.put_config(
            _K_LOCK, struct.pack(_LOCK_FMT, now + _LOCK_S if lock else 0, 0 if lock else fails)
        )
    else:
        if fails:
            m.store.put_config(_K_LOCK, struct.pack(_LOCK_FMT, 0, 0))
        m.ev.log(_DOWNLOAD_GRANTED, now, op)
        # the parts: interval parts of reads.chunk_s over everything held,
        # then event parts of 200 each; counted here, built one by one
        st = m.store
        start = end = 0
        for r in st.intervals():
            start = r[0]
            break
        r = st.last_interval()
        if r is not None:
            end = r[0] + r[1]
        step = cold("reads").chunk_s(m.interval_s)
        n = 0
        a = start
        while a < end:
            a = tu.floor_to(a, step, m.utc_offset_s) + step
            n += 1
        first = 0
        for r in m.ev.since(1):
            first = r[0]
            break
        hi = st.next_event_seq() - 1
        parts = n + ((hi - first) // _EVENTS_PER_PART + 1 if first else 0) or 1
        if parts <= _MAX_PARTS:
            link[_KOP:] = [key, 0, parts, n, start, end, step, first, hi]
            return out
        nack["reason"] = _NACK_BAD_PARAMETER  # not expressible in 255 parts
    m.ev.log(_DOWNLOAD_DENIED, now, op)
    m.frame(out, "nack", nack, now, None, key)
    return out


def part(m, link, now, probe=None):
    """The next download_data frame of the download in progress, or None."""
    k = link[_PART]
    parts = link[_PARTS]
    if k < 0 or k >= parts:
        link[_PART] = -1
        link[_KOP] = None
        return None
    link[_PART] = k + 1
    niv = link[_NIV]
    if k < niv:  # reads.py's part tuples: (0, span start, span end, midnights until)
        a = link[_A]
        b = tu.floor_to(a, link[_STEP], m.utc_offset_s) + link[_STEP]
        if b > link[_END]:
            b = link[_END]
        link[_A] = b
        p = (0, a, b, b + 1 if k == niv - 1 else b)  # the last takes the midnight at its end
    elif link[_EV]:  # (1, first seq, last seq)
        a = link[_EV] + (k - niv) * _EVENTS_PER_PART
        b = a + _EVENTS_PER_PART - 1
        p = (1, a, b if b < link[_HI] else link[_HI])
    else:
        p = (0, 0, 0, 0)  # nothing held: the clock and registers
    tail = b""
    if not k:  # part 0 also holds the schedules and the config
        sl = [x for x in m.sched.slots if x is not None]
        tail = bytearray(b"\x06")  # schedules: u8 count x Slot (19 bytes), length < 128
        tail.append(1 + 19 * len(sl))
        tail.append(len(sl))
        for x in sl:
            tail.append(x.index)
            tail.append(0)  # action: set
            for v in (x.start, x.end, x.period_s, x.offset_s):
                tail.extend(struct.pack(">I", v))
            tail.append(x.what)
        tail.extend(b"\x07\x15\x04")  # config: 4 items of key u8, value i32
        for i, v in ((1, m.interval_s), (2, m.utc_offset_s // 60), (3, m.push_mask)):
            tail.append(i)
            tail.extend(struct.pack(">I", v & _U32))
        tail.append(4)
        tail.extend(struct.pack(">I", m.multiplier))
    a = m._seq = (m._seq + 1) & 0xFFFF
    m.frames_sent += 1
    return cold("reads").frame(
        a,
        m.meter_id,
        0,
        0,
        k,
        parts,
        p,
        _WHAT_ALL,
        m.store,
        m.ev,
        now,
        m.rec.totals(),
        0,
        _U32,  # every event, whatever its time
        link[_KOP],
        m.counter(),
        probe,
        (2 if not k else 0, tail),
    )
