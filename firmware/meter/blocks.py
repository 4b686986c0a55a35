# Interval blocks, the meter's side: varints and the per-channel streams
# (byte-aligned FOR/DELTA groups of 32 at power-of-two widths), written
# straight into a frame (reads.py). SPEC.md "IntervalBlock" is normative.
# Whole blocks as dicts, both ways, are in ivblock.py: the meter never loads it.
from meter.errors import MalformedPayload

try:
    from micropython import const
except ImportError:

    def const(x):
        return x


_GROUP = const(32)
MAX_VALUE = const(0x7FFFFFFF)  # values are 0 <= v < 2**31
_WIDTHS = const((0, 1, 2, 4, 8, 16, 32))  # by width code
_MAX_VARINT_BYTES = const(10)

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
