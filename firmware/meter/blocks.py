# Interval blocks: varints, zigzag, status-flag runs and the per-channel
# streams (byte-aligned FOR/DELTA groups of 32 at power-of-two widths).
# SPEC.md "IntervalBlock" is normative. Values are unpacked straight from the
# buffer (no lookup tables: they would cost heap the meter does not have).
import struct

from meter.errors import MalformedPayload

try:
    from micropython import const
except ImportError:

    def const(x):
        return x


_GROUP = const(32)
MAX_VALUE = const(0x7FFFFFFF)  # values are 0 <= v < 2**31
_WIDTHS = const((0, 1, 2, 4, 8, 16, 32))  # by width code
_MAX_BASE_BYTES = const(5)  # a FOR base is < 2**31
_FLAG_BITS = const(0x1F)  # power_failed, clock_adjusted, partial, recovered, invalid
_MAX_VARINT_BYTES = const(10)

POWER_FAILED = const(0x01)
CLOCK_ADJUSTED = const(0x02)
PARTIAL = const(0x04)
RECOVERED = const(0x08)
INVALID = const(0x10)

_VARINT_LIMIT = const(1 << 64)  # the construct side caps varints at 64 bits


def bitlen(x):
    """Bit length of x >= 0 (int.bit_length is missing on some MicroPython ports)."""
    n = 0
    while x >= 0x10000:
        x >>= 16
        n += 16
    while x:
        x >>= 1
        n += 1
    return n


def zigzag(d):
    """Signed difference -> unsigned (0, -1, 1, -2 -> 0, 1, 2, 3)."""
    return d << 1 if d >= 0 else ((-d) << 1) - 1


def unzigzag(z):
    """Inverse of zigzag."""
    return z >> 1 if not z & 1 else -((z + 1) >> 1)


# -- varint (unsigned LEB128) ------------------------------------------------


def encode_varint(v, out=None):
    """Append the minimal LEB128 of 0 <= v < 2**64 to out (a bytearray); return out."""
    if type(v) is not int or v < 0 or v >= _VARINT_LIMIT:
        raise MalformedPayload("varint out of range", "0 <= n < 2**64", v)
    if out is None:
        out = bytearray()
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return out


def decode_varint(buf, pos=0, end=None, maxlen=_MAX_VARINT_BYTES):
    """Read a varint from buf[pos:end]; return (value, next pos).

    Rejects a non-minimal encoding (a last byte of 0 after the first), more than
    maxlen bytes (10), a value of 2**64 or more, and running off the end.
    """
    if end is None:
        end = len(buf)
    v = 0
    shift = 0
    start = pos
    while True:
        if pos >= end:
            raise MalformedPayload(
                "varint runs off the end", "another byte", "end of data at %d" % pos
            )
        b = buf[pos]
        pos += 1
        v |= (b & 0x7F) << shift
        if not b & 0x80:
            if b == 0 and pos - start > 1:
                raise MalformedPayload("non-minimal varint", "no trailing 00 byte", pos - start)
            if v >= _VARINT_LIMIT:
                raise MalformedPayload("varint over 64 bits", "a value < 2**64", v)
            return v, pos
        if pos - start >= maxlen:
            raise MalformedPayload("varint too long", "<= %d bytes" % maxlen, "a longer varint")
        shift += 7


# -- status flags, run-length coded ------------------------------------------


def _check_flags(f):
    if type(f) is not int or f < 0 or f & ~_FLAG_BITS:
        raise MalformedPayload("status flags use reserved bits", "only bits of 0x1f", f)


def encode_runs(flags):
    """Per-interval flags -> maximal [(run, flags), ...] (adjacent runs differ)."""
    runs = []
    last = -1
    n = 0
    for f in flags:
        _check_flags(f)
        if f == last:
            n += 1
        else:
            if n:
                runs.append((n, last))
            last = f
            n = 1
    if n:
        runs.append((n, last))
    return runs


def decode_runs(runs, count):
    """[(run, flags), ...] -> count per-interval flags; rejects non-canonical runs."""
    out = [0] * count
    i = 0
    last = -1
    for run, f in runs:
        if run < 1 or f == last:
            raise MalformedPayload("flag runs not canonical", "run >= 1, adjacent differ", (run, f))
        _check_flags(f)
        if i + run > count:
            raise MalformedPayload("flag runs exceed interval count", count, i + run)
        for j in range(i, i + run):
            out[j] = f
        i += run
        last = f
    if i != count:
        raise MalformedPayload("flag runs do not cover the intervals", count, i)
    return out


# -- channel stream ----------------------------------------------------------------


def _code_for(bits):
    # smallest width code whose width holds a value of this bit length
    c = 0
    while _WIDTHS[c] < bits:
        c += 1
    return c


def put_varint(buf, p, v):
    """Write the minimal LEB128 of v >= 0 at buf[p] (buf None: only count); next p."""
    while v >= 0x80:
        if buf is not None:
            buf[p] = (v & 0x7F) | 0x80
        p += 1
        v >>= 7
    if buf is not None:
        buf[p] = v
    return p + 1


def _pack(buf, p, values, g, n, w, ref, delta):
    # values[g:g+n] as v - ref (FOR) or zigzag(v - prev) (DELTA), w bits each
    if w == 0:
        return p
    if buf is None:
        return p + ((n * w + 7) >> 3)
    acc = 0
    nb = 0
    q = ref
    for i in range(g, g + n):
        v = values[i]
        if delta:
            x = zigzag(v - q)
            q = v
        else:
            x = v - ref
        if w >= 8:
            if w == 32:
                buf[p] = x >> 24
                buf[p + 1] = (x >> 16) & 0xFF
                p += 2
            if w >= 16:
                buf[p] = (x >> 8) & 0xFF
                p += 1
            buf[p] = x & 0xFF
            p += 1
        else:
            acc = (acc << w) | x
            nb += w
            if nb == 8:  # 8 is a multiple of 1, 2 and 4
                buf[p] = acc
                p += 1
                acc = 0
                nb = 0
    if nb:
        buf[p] = acc << (8 - nb)  # unused low bits are 0
        p += 1
    return p


def put_channel(buf, p, values, off, total):
    """Write the canonical stream of values[off:off+total] at buf[p] (buf None:
    only count, and check the values); return the next position."""
    prev = 0
    end = off + total
    for g in range(off, end, _GROUP):
        n = end - g if end - g < _GROUP else _GROUP
        lo = hi = values[g]
        zmax = 0
        q = prev
        for i in range(g, g + n):
            v = values[i]
            if type(v) is not int or v < 0 or v > MAX_VALUE:
                raise MalformedPayload("interval value out of range", "0 <= v < 2**31", v)
            if v < lo:
                lo = v
            if v > hi:
                hi = v
            z = zigzag(v - q)
            if z > zmax:
                zmax = z
            q = v
        cf = _code_for(bitlen(hi - lo))
        cd = _code_for(bitlen(zmax))
        wf = _WIDTHS[cf]
        wd = _WIDTHS[cd]
        # DELTA only if smaller
        if (n * wd + 7) >> 3 < put_varint(None, 0, lo) + ((n * wf + 7) >> 3):
            if buf is not None:
                buf[p] = 0x80 | cd
            p = _pack(buf, p + 1, values, g, n, wd, prev, True)
        else:
            if buf is not None:
                buf[p] = cf
            p = _pack(buf, put_varint(buf, p + 1, lo), values, g, n, wf, lo, False)
        prev = values[g + n - 1]
    return p


def encode_channel(values):
    """One channel's interval values -> its canonical stream (bytearray)."""
    n = len(values)
    out = bytearray(put_channel(None, 0, values, 0, n))
    put_channel(out, 0, values, 0, n)
    return out


def decode_channel(data, count):
    """Unpack count values from one channel stream (any well-formed stream).

    Rejects a width code over 6, a base varint over 5 bytes or non-minimal,
    values leaving 0..2**31-1, non-zero padding bits, and a stream too short or
    too long for count values.
    """
    size = len(data)
    if size < (count + _GROUP - 1) // _GROUP:  # a header byte per group at least
        raise MalformedPayload("channel stream truncated", ">= 1 byte per group", size)
    out = [0] * count
    prev = 0
    pos = 0
    i = 0
    while i < count:
        n = count - i if count - i < _GROUP else _GROUP
        if pos >= size:
            raise MalformedPayload("channel stream truncated", "group header", "end")
        head = data[pos]
        pos += 1
        code = head & 0x7F
        if code > 6:
            raise MalformedPayload(
                "bad group header", "width code 0..6", "header byte 0x%02x" % head
            )
        w = _WIDTHS[code]
        delta = head & 0x80
        base = 0
        if not delta:
            base, pos = decode_varint(data, pos, size, _MAX_BASE_BYTES)
        nbytes = (n * w + 7) >> 3
        if nbytes > size - pos:
            raise MalformedPayload("channel stream truncated", "need %d bytes" % nbytes, size - pos)
        if 0 < w < 8 and (n * w) & 7 and data[pos + nbytes - 1] & ((1 << (8 - ((n * w) & 7))) - 1):
            raise MalformedPayload("non-zero padding in channel group", 0, data[pos + nbytes - 1])
        for j in range(n):
            if w == 0:
                x = 0
            elif w == 8:
                x = data[pos + j]
            elif w == 16:
                k = pos + 2 * j
                x = (data[k] << 8) | data[k + 1]
            elif w == 32:
                x = struct.unpack_from(">I", data, pos + 4 * j)[0]
            else:
                bit = j * w
                x = (data[pos + (bit >> 3)] >> (8 - w - (bit & 7))) & ((1 << w) - 1)
            if delta:
                prev += unzigzag(x)
            else:
                prev = base + x
            if prev < 0 or prev > MAX_VALUE:
                raise MalformedPayload("value out of range", "0 <= v < 2**31", prev)
            out[i + j] = prev
        pos += nbytes
        i += n
    if pos != size:
        raise MalformedPayload("channel stream too long", "exactly %d bytes" % pos, size)
    return out


# -- the whole block -------------------------------------------------------------


def encode_block(block, out=None):
    """Append an IntervalBlock {start, interval_s, flags, channels} to out; return out."""
    if out is None:
        out = bytearray()
    if type(block) is not dict:
        raise MalformedPayload("interval block", "dict", type(block).__name__)
    try:
        start = block["start"]
        interval_s = block["interval_s"]
        flags = block["flags"]
        channels = block["channels"]
    except KeyError as e:
        raise MalformedPayload(
            "interval block field missing", "start, interval_s, flags, channels", e
        )
    count = len(flags)
    if count < 1 or count > 0xFFFF:
        raise MalformedPayload("interval count", "1 <= n <= 65535", count)
    if len(channels) > 0xFF:
        raise MalformedPayload("channel count", "0 <= n <= 255", len(channels))
    if type(start) is not int or not 0 <= start <= 0xFFFFFFFF:
        raise MalformedPayload("block start out of range", "u32", start)
    if type(interval_s) is not int or not 0 <= interval_s <= 0xFFFF:
        raise MalformedPayload("interval_s out of range", "u16", interval_s)
    for ch in channels:
        if len(ch) != count:
            raise MalformedPayload("channel length", count, len(ch))
    out.extend(struct.pack(">IHHB", start, interval_s, count, len(channels)))
    runs = encode_runs(flags)
    encode_varint(len(runs), out)
    for run, f in runs:
        encode_varint(run, out)
        out.append(f)
    for ch in channels:
        bits = encode_channel(ch)
        encode_varint(len(bits), out)
        out.extend(bits)
    return out


def decode_block(buf):
    """Decode an IntervalBlock that fills buf exactly (a section body)."""
    end = len(buf)
    if end < 9:
        raise MalformedPayload("interval block header", "at least 9 bytes", end)
    start, interval_s, count, nch = struct.unpack_from(">IHHB", buf, 0)
    if count < 1:
        raise MalformedPayload("interval block with no intervals", "at least one", count)
    nruns, pos = decode_varint(buf, 9, end)
    if nruns > count:
        raise MalformedPayload("more flag runs than intervals", "no more than %d" % count, nruns)
    runs = []
    for _ in range(nruns):
        run, pos = decode_varint(buf, pos, end)
        if pos >= end:
            raise MalformedPayload("flag run truncated", "a flags byte", "end of data")
        runs.append((run, buf[pos]))
        pos += 1
    flags = decode_runs(runs, count)
    channels = []
    for _ in range(nch):
        n, pos = decode_varint(buf, pos, end)
        if n > end - pos:
            raise MalformedPayload("channel stream truncated", "need %d bytes" % n, end - pos)
        channels.append(decode_channel(buf[pos : pos + n], count))
        pos += n
    if pos != end:
        raise MalformedPayload("bytes left after interval block", end, pos)
    return {"start": start, "interval_s": interval_s, "flags": flags, "channels": channels}
