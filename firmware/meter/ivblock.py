# Whole IntervalBlocks as dicts, both ways, and single channel streams
# (SPEC.md "IntervalBlock"): wire.py's block field, for the tests, hil and
# host tools. The meter writes its blocks with blocks.put_channel (reads.py)
# and never decodes one, so it never imports this module. Values are
# unpacked straight from the buffer (no lookup tables).
import struct

from meter.blocks import MAX_VALUE, decode_varint, encode_varint, put_channel
from meter.errors import MalformedPayload

try:
    from micropython import const
except ImportError:

    def const(x):
        return x


# the stream's geometry, as in blocks.py (private consts are not importable)
_GROUP = const(32)
_WIDTHS = const((0, 1, 2, 4, 8, 16, 32))  # by width code
_MAX_BASE_BYTES = const(5)  # a FOR base is < 2**31
_FLAG_BITS = const(0x1F)  # power_failed, clock_adjusted, partial, recovered, invalid


def unzigzag(z):
    """Inverse of zigzag."""
    return z >> 1 if not z & 1 else -((z + 1) >> 1)


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
