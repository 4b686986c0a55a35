# The meter's own codec of protocol v1 (construct does not run on MicroPython).
# Frames <-> canonical fields, byte-identical to protocol/frame.py; locked
# together by the golden vectors in protocol/vectors/. SPEC.md is normative.
import struct

from meter import auth, blocks
from meter.crc import crc16
from meter.errors import (
    BadCrc,
    BadLength,
    BadMac,
    MalformedFrame,
    MalformedPayload,
    OverlongFrame,
    ProtocolError,
    Replay,
    TruncatedFrame,
    UnknownMessageType,
    UnsupportedVersion,
)

try:
    from micropython import const
except ImportError:

    def const(x):
        return x


_VERSION = const(1)
HEADER_LEN = const(15)
_CRC_LEN = const(2)
_AUTH_LEN = const(20)  # counter u32 + mac[16]
MAX_PAYLOAD = const(4096)
MAX_FRAME = const(4133)  # HEADER_LEN + MAX_PAYLOAD + _AUTH_LEN + _CRC_LEN
_FLAG_AUTH = const(0x01)
_HEADER = const(">BBBHIIH")

# The schema as text (one str each, read in place from flash; a table of
# tuples and dicts would cost ~8 KB of heap). A message is "name field:T ...",
# the type code is its 1-based position in _MSGS; a section "name field:T ..."
# or "name =T" (a bare body), its tag the position in _SECS. T is a letter of
# _KINDS (B H I Q b h i: big-endian ints as struct; V varint; S str u8-length;
# K interval block; X sections), "[T" a u8-counted list, "{T" a varint-counted
# one, n / m 16 / 32 raw bytes, or a struct of _SUBS (C channel, T config item,
# O schedule slot, E event). Compiled per call into the tuples below.
_MSGS = const(
    "register fw_version:S interval_s:H capacity_days:H utc_offset_min:h"
    " meter_multiplier:H channels:[C|"
    "register_ack status:B|"
    "config_set items:[T|"
    "config_ack acked_seq:H status:B|"
    "schedule_set slots:[O|"
    "schedule_ack acked_seq:H status:B|"
    "read_request mode:B start:I end:I what:B|"
    "read_response request_seq:H kind:B part:B parts:B sections:X|"
    "read_ack acked_seq:H upto:I|"
    "event events:[E|"
    "event_ack acked_seq:H|"
    "time_sync_request t1_ms:Q|"
    "time_sync_response t1_ms:Q t2_ms:Q t3_ms:Q|"
    "time_set utc_ms:Q|"
    "download_open operator:H|"
    "download_challenge nonce:n|"
    "download_auth operator:H mac:m|"
    "download_data part:B parts:B sections:X|"
    "nack nacked_type:B nacked_seq:H reason:B|"
    "key_set version:H wrapped:m|"
    "key_ack acked_seq:H version:H status:B"
)
_SECS = const(
    "clock time:I|registers at:I values:[V|midnight day:I values:[V|intervals =K|"
    "events ={E|schedules =[O|config =[T"
)
_SUBS = const(
    "C kind:B unit:B multiplier:H scaler:b|T key:B value:i|"
    "O slot:B action:B start:I end:I period_s:I offset_s:I what:B|E code:B time:I data:I"
)
_KINDS = const("BHIQbhiVSKX")
_NMSGS = const(21)
_NSECS = const(7)
# the only frames that go without the auth trailer (SPEC "Authentication"):
# the optical probe's, authenticated by the download challenge
UNSIGNED = ("download_open", "download_auth")

# Compiled field kinds: an int (the index in _KINDS), or a tuple
# (_STRUCT, [(name, type), ...]), (_LIST8, item), (_LISTV, item), (_BYTES, n).
_U8 = const(0)
_U16 = const(1)
_U32 = const(2)
_U64 = const(3)
_I32 = const(6)
_VAR = const(7)
_STR = const(8)
_BLOCK = const(9)
_SECTIONS = const(10)
_STRUCT = const(11)
_LIST8 = const(12)
_LISTV = const(13)
_BYTES = const(14)
_FMT = const((">B", ">H", ">I", ">Q", ">b", ">h", ">i"))  # by int kind; size 1 << (k & 3)


def _entry(table, i):
    """Entry i (0-based) of a "|"-separated table, or None."""
    p = 0
    while i:
        p = table.find("|", p) + 1
        if not p:
            return None
        i -= 1
    q = table.find("|", p)
    return table[p:q] if q >= 0 else table[p:]


def _find(table, name):
    """1-based position of the entry called `name`, or 0."""
    if " " in name:
        return 0
    key = name + " "
    p = 0
    i = 1
    while True:
        if table.startswith(key, p):
            return i
        p = table.find("|", p) + 1
        if not p:
            return 0
        i += 1


def _compile(t):
    c = t[0]
    if c == "[":
        return (_LIST8, _compile(t[1:]))
    if c == "{":
        return (_LISTV, _compile(t[1:]))
    if c == "n" or c == "m":
        return (_BYTES, 16 if c == "n" else 32)
    k = _KINDS.find(c)
    if k >= 0:
        return k
    return _struct(_entry(_SUBS, "CTOE".find(c)))[1]


def _struct(entry):
    """(name, compiled body) of a table entry "name field:T ..." / "name =T"."""
    parts = entry.split(" ")
    if parts[1][0] == "=":
        return parts[0], _compile(parts[1][1:])
    fields = []
    for f in parts[1:]:
        n, t = f.split(":")
        fields.append((n, _compile(t)))
    return parts[0], (_STRUCT, fields)


def _ivblock():
    # whole interval blocks: only host-side frames carry them through here (the
    # meter writes its own in reads.py), so the meter never loads the module
    from meter import ivblock

    return ivblock


def type_code(name):
    """The type byte of a message name, or None."""
    return _find(_MSGS, name) or None if type(name) is str else None


def __getattr__(attr):
    # the tables as dicts, built on demand for host tools and tests (not kept)
    if attr == "MESSAGE_TYPES":  # name -> type code
        return {_struct(_entry(_MSGS, i))[0]: i + 1 for i in range(_NMSGS)}
    if attr == "MESSAGES":
        return {i + 1: _struct(_entry(_MSGS, i)) for i in range(_NMSGS)}
    if attr == "SECTIONS":
        return {i + 1: _struct(_entry(_SECS, i)) for i in range(_NSECS)}
    raise AttributeError(attr)


# Anything a body parser may raise on bad input; re-raised as MalformedPayload.
_STRUCT_ERROR = getattr(struct, "error", ValueError)
_BAD_INPUT = (
    _STRUCT_ERROR,
    IndexError,
    ValueError,
    UnicodeError,
    TypeError,
    KeyError,
    OverflowError,
)


# -- decoding ----------------------------------------------------------------


def _check_utf8(b):
    # MicroPython's decoder accepts overlong forms, surrogates and > U+10FFFF;
    # CPython (and so the construct side) rejects them: check strictly here.
    i = 0
    n = len(b)
    while i < n:
        c = b[i]
        if c < 0x80:
            i += 1
            continue
        if 0xC2 <= c <= 0xDF:
            k, lo, hi = 1, 0x80, 0xBF
        elif 0xE0 <= c <= 0xEF:
            k = 2
            lo = 0xA0 if c == 0xE0 else 0x80
            hi = 0x9F if c == 0xED else 0xBF
        elif 0xF0 <= c <= 0xF4:
            k = 3
            lo = 0x90 if c == 0xF0 else 0x80
            hi = 0x8F if c == 0xF4 else 0xBF
        else:
            raise MalformedPayload("invalid UTF-8", "a lead byte", "0x%02x at %d" % (c, i))
        if i + k >= n:
            raise MalformedPayload("truncated UTF-8", "%d continuation bytes" % k, "end")
        c = b[i + 1]
        if c < lo or c > hi:
            raise MalformedPayload(
                "invalid UTF-8", "continuation byte", "0x%02x at %d" % (c, i + 1)
            )
        for j in range(i + 2, i + k + 1):
            if b[j] & 0xC0 != 0x80:
                raise MalformedPayload(
                    "invalid UTF-8", "continuation byte", "0x%02x at %d" % (b[j], j)
                )
        i += k + 1


class _Reader:
    def __init__(self, buf, pos, end):
        self.buf = buf
        self.pos = pos
        self.end = end

    def take(self, n, what):
        p = self.pos
        if n > self.end - p:
            raise MalformedPayload(
                "%s truncated" % what, "need %d bytes" % n, "%d bytes left" % (self.end - p)
            )
        self.pos = p + n
        return p

    def read(self, t, what):
        if type(t) is int:
            if t <= _I32:
                p = self.take(1 << (t & 3), what)
                return struct.unpack_from(_FMT[t], self.buf, p)[0]
            if t == _VAR:
                v, self.pos = blocks.decode_varint(self.buf, self.pos, self.end)
                return v
            if t == _STR:
                n = self.buf[self.take(1, what)]
                p = self.take(n, what)
                raw = self.buf[p : p + n]
                _check_utf8(raw)
                return str(bytes(raw), "utf-8")
            if t == _SECTIONS:
                return [self.section() for _ in range(self.buf[self.take(1, what)])]
            v = _ivblock().decode_block(self.buf[self.pos : self.end])  # _BLOCK fills its section
            self.pos = self.end
            return v
        k = t[0]
        if k == _STRUCT:
            d = {}
            for name, ft in t[1]:
                d[name] = self.read(ft, name)
            return d
        if k == _LIST8:
            n = self.buf[self.take(1, what)]
        elif k == _LISTV:
            n, self.pos = blocks.decode_varint(self.buf, self.pos, self.end)
            if n > self.end - self.pos:  # every item is at least a byte: bound the loop
                raise MalformedPayload(
                    "count of %s" % what, "no more than %d" % (self.end - self.pos), n
                )
        else:  # _BYTES
            p = self.take(t[1], what)
            return bytes(self.buf[p : p + t[1]])
        item = t[1]
        return [self.read(item, what) for _ in range(n)]

    def section(self):
        tag = self.buf[self.take(1, "section tag")]
        n, pos = blocks.decode_varint(self.buf, self.pos, self.end)
        if n > self.end - pos:
            raise MalformedPayload(
                "section truncated", "need %d bytes" % n, "%d bytes left" % (self.end - pos)
            )
        if not 1 <= tag <= _NSECS:
            raise MalformedPayload("unknown section tag", "a tag of 1..7", tag)
        name, body_type = _struct(_entry(_SECS, tag - 1))
        sub = _Reader(self.buf, pos, pos + n)
        body = sub.read(body_type, name)
        if sub.pos != sub.end:
            raise MalformedPayload("bytes left in %s section" % name, n, sub.pos - pos)
        self.pos = pos + n
        return {"tag": name, "body": body}


def frame_length(data):
    """Total length the header of data announces; checks 1-3 of SPEC's order."""
    n = len(data)
    if n < HEADER_LEN + _CRC_LEN:
        raise TruncatedFrame("frame shorter than header and CRC", "at least 17 bytes", n)
    if data[0] != _VERSION:
        raise UnsupportedVersion("unsupported protocol version", _VERSION, data[0])
    plen = (data[13] << 8) | data[14]
    if plen > MAX_PAYLOAD:
        raise BadLength("payload length over maximum", "no more than %d" % MAX_PAYLOAD, plen)
    return HEADER_LEN + plen + (_AUTH_LEN if data[2] & _FLAG_AUTH else 0) + _CRC_LEN


def decode(data, key=None, last_counter=None):
    """Decode one frame (bytes, bytearray or memoryview) to canonical fields.

    Checks in SPEC.md's order; any byte string gives fields or a ProtocolError
    subclass (a non-bytes argument is a TypeError). With key, also verifies
    the MAC (BadMac; a frame without a trailer is BadMac too, unless its
    type is one of UNSIGNED);
    with last_counter, rejects counter <= last_counter (Replay), after the MAC.
    """
    if type(data) not in (bytes, bytearray, memoryview):
        # a programming error, not line noise (MicroPython would view a str)
        raise TypeError("frame must be bytes, bytearray or memoryview")
    mv = memoryview(data)
    n = len(mv)
    expected = frame_length(mv)
    if n < expected:
        raise TruncatedFrame("frame shorter than its header says", expected, n)
    if n > expected:
        raise OverlongFrame("bytes after the frame's end", expected, n)
    got = (mv[n - 2] << 8) | mv[n - 1]
    want = crc16(mv[0 : n - 2])
    if got != want:
        raise BadCrc("CRC-16/X-25 mismatch", "CRC-16 0x%04x" % want, "CRC-16 0x%04x" % got)
    code = mv[1]
    if not 1 <= code <= _NMSGS:
        raise UnknownMessageType(
            "unknown message type", "one of SPEC.md's types", "type byte 0x%02x" % mv[1]
        )
    flags = mv[2]
    if flags & ~_FLAG_AUTH:
        raise MalformedFrame(
            "reserved flag bits set", "no reserved bits", "flags byte 0x%02x" % flags
        )
    name, body_type = _struct(_entry(_MSGS, code - 1))
    _, _, _, seq, meter_id, timestamp, plen = struct.unpack_from(_HEADER, mv, 0)
    end = HEADER_LEN + plen
    r = _Reader(mv, HEADER_LEN, end)
    try:
        body = r.read(body_type, name)
    except MalformedPayload:
        raise
    except _BAD_INPUT as e:
        raise MalformedPayload("%s body does not parse: %r" % (name, e))
    except MemoryError:
        # a valid uplink block can hold ~130k values: more than a meter's heap
        raise MalformedPayload("%s body does not fit in memory" % name, "<= free heap", plen)
    if r.pos != end:
        raise MalformedPayload("bytes left in %s payload" % name, plen, r.pos - HEADER_LEN)
    fauth = None
    if flags & _FLAG_AUTH:
        counter = struct.unpack_from(">I", mv, end)[0]
        fauth = {"counter": counter, "mac": bytes(mv[end + 4 : end + _AUTH_LEN])}
    if fauth is not None:
        if key is not None:
            auth.verify_frame(mv, key, last_counter)  # BadMac, then Replay
        elif last_counter is not None and fauth["counter"] <= last_counter:
            raise Replay(
                "counter not newer than the last accepted",
                "counter > %d" % last_counter,
                fauth["counter"],
            )
    elif key is not None and name not in UNSIGNED:
        raise BadMac("%s must be authenticated" % name, "the AUTH flag", "no AUTH flag")
    return {
        "version": _VERSION,
        "type": name,
        "seq": seq,
        "meter_id": meter_id,
        "timestamp": timestamp,
        "auth": fauth,
        "body": body,
    }


# -- encoding ----------------------------------------------------------------


def _write(out, t, v, what):
    if type(t) is int:
        if t <= _I32:
            bits = 8 << (t & 3)
            lo = -(1 << (bits - 1)) if t > _U64 else 0
            hi = (1 << bits) + lo - 1
            if type(v) is not int or v < lo or v > hi:
                raise MalformedPayload("%s out of range" % what, "an int in %d..%d" % (lo, hi), v)
            out.extend(struct.pack(_FMT[t], v))
        elif t == _VAR:
            blocks.encode_varint(v, out)
        elif t == _STR:
            if type(v) is not str:
                raise MalformedPayload(what, "str", type(v).__name__)
            raw = v.encode("utf-8")
            _check_utf8(raw)  # a MicroPython str can hold a lone surrogate
            if len(raw) > 0xFF:
                raise MalformedPayload("%s too long" % what, "<= 255 UTF-8 bytes", len(raw))
            out.append(len(raw))
            out.extend(raw)
        elif t == _SECTIONS:
            _count(out, v, 0xFF, what)
            for s in v:
                _section(out, s)
        else:  # _BLOCK
            _ivblock().encode_block(v, out)
        return
    k = t[0]
    if k == _STRUCT:
        fields = t[1]
        if type(v) is tuple and len(v) == len(fields):
            # the meter's compact form: the values in field order (an event as
            # (code, time, data) takes half the heap of its dict)
            for i in range(len(v)):
                _write(out, fields[i][1], v[i], fields[i][0])
            return
        if type(v) is not dict:
            raise MalformedPayload(what, "dict", type(v).__name__)
        for name, ft in fields:
            if name not in v:
                raise MalformedPayload("field missing", name, "not present")
            _write(out, ft, v[name], name)
        return
    if k == _BYTES:
        if type(v) not in (bytes, bytearray) or len(v) != t[1]:
            raise MalformedPayload(what, "exactly %d bytes" % t[1], v)
        out.extend(v)
        return
    if k == _LIST8:
        _count(out, v, 0xFF, what)
    else:
        _count(out, v, None, what)
    for item in v:
        _write(out, t[1], item, what)


def _count(out, v, limit, what):
    if type(v) not in (list, tuple):
        raise MalformedPayload(what, "list", type(v).__name__)
    if limit is None:
        blocks.encode_varint(len(v), out)
    elif len(v) > limit:
        raise MalformedPayload("too many %s" % what, "no more than %d" % limit, len(v))
    else:
        out.append(len(v))


def _section(out, s):
    if type(s) is not dict or "tag" not in s or "body" not in s:
        raise MalformedPayload("section", "{tag, body}", s)
    name = s["tag"]
    tag = _find(_SECS, name) if type(name) is str else 0
    if not tag:
        raise MalformedPayload("unknown section tag", "a section name", name)
    body = bytearray()
    _write(body, _struct(_entry(_SECS, tag - 1))[1], s["body"], name)
    out.append(tag)
    blocks.encode_varint(len(body), out)
    out.extend(body)


def encode(fields, key=None):
    """Build one frame from canonical fields.

    fields: version (default 1), type (name), seq, meter_id, timestamp,
    auth (None or {"counter": int, "mac": ignored}; default None), body.
    With auth set the frame is signed with key (required); without auth the
    key is unused. Raises UnsupportedVersion, UnknownMessageType, BadLength or
    MalformedPayload; never emits a frame the decoder would reject.
    """
    if type(fields) is not dict:
        raise MalformedPayload("fields", "dict", type(fields).__name__)
    version = fields.get("version", _VERSION)
    if version != _VERSION or type(version) is not int:
        raise UnsupportedVersion("cannot encode version", _VERSION, version)
    name = fields.get("type")
    code = type_code(name)
    if code is None:
        raise UnknownMessageType("cannot encode message type", "a type name", name)
    fauth = fields.get("auth")
    if fauth is not None:
        if key is None:
            raise MalformedPayload("authenticated frame needs a key", "key", None)
        if type(key) not in (bytes, bytearray):
            raise MalformedPayload("key", "bytes", type(key).__name__)
        if type(fauth) is not dict or "counter" not in fauth:
            raise MalformedPayload("auth", "{counter, mac}", fauth)
    out = bytearray(HEADER_LEN)
    try:
        for f, t in (("seq", _U16), ("meter_id", _U32), ("timestamp", _U32)):
            if f not in fields:
                raise MalformedPayload("field missing", f, "not present")
            _write(bytearray(), t, fields[f], f)  # range check only
        if "body" not in fields:
            raise MalformedPayload("field missing", "body", "not present")
        _write(out, _struct(_entry(_MSGS, code - 1))[1], fields["body"], name)
    except ProtocolError:
        raise
    except _BAD_INPUT as e:
        raise MalformedPayload("cannot encode %s: %r" % (name, e))
    plen = len(out) - HEADER_LEN
    if plen > MAX_PAYLOAD:
        raise BadLength("payload over maximum", "no more than %d" % MAX_PAYLOAD, plen)
    flags = _FLAG_AUTH if fauth is not None else 0
    struct.pack_into(
        _HEADER,
        out,
        0,
        _VERSION,
        code,
        flags,
        fields["seq"],
        fields["meter_id"],
        fields["timestamp"],
        plen,
    )
    n = len(out)
    if fauth is not None:
        out.extend(bytes(_AUTH_LEN + _CRC_LEN))
        auth.seal(out, n, key, fauth["counter"])  # checks the counter's range
    else:
        out.extend(struct.pack(">H", crc16(out)))
    return bytes(out)
