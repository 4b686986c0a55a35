"""Interval-block compression: per-channel groups and run-length flags.

A channel's values go in byte-aligned groups of 32. A group is either
frame-of-reference (base = group minimum, then each value minus base) or
delta (zigzag of the difference from the previous value), whichever is
strictly smaller, packed at a width of 0, 1, 2, 4, 8, 16 or 32 bits.
Frame-of-reference bounds the size by the values' spread, so noisy meters
cost little more than smooth ones; delta wins on smooth load. Power-of-two
widths and byte-aligned groups let both the meter and the head-end unpack a
group with table look-ups and `struct` instead of bit loops. SPEC.md
"IntervalBlock" is the normative text.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from itertools import accumulate, chain

from protocol.codes import FLAG_BITS
from protocol.errors import MalformedPayload

GROUP = 32
MAX_VALUE = (1 << 31) - 1
WIDTHS = (0, 1, 2, 4, 8, 16, 32)
MODE_DELTA = 0x80

# width code for every bit length 0..32: the smallest width that holds it
_CODE_FOR_BITS = [next(c for c, w in enumerate(WIDTHS) if w >= b) for b in range(33)]
# one byte → its values, for the sub-byte widths
_UNPACK = {
    w: [tuple((b >> (8 - w * (i + 1))) & ((1 << w) - 1) for i in range(8 // w)) for b in range(256)]
    for w in (1, 2, 4)
}
_UNZIGZAG8 = [(z >> 1) ^ -(z & 1) for z in range(256)]
# one byte -> its signed differences, for the sub-byte widths of a delta group (zero
# stays zero: its padding is checked on these as on the raw values)
_UNPACK_DELTA = {w: [tuple(map(_UNZIGZAG8.__getitem__, t)) for t in _UNPACK[w]] for w in _UNPACK}


def zigzag(d: int) -> int:
    """Map a signed difference to an unsigned int (0, -1, 1, -2 → 0, 1, 2, 3)."""
    return d << 1 if d >= 0 else ((-d) << 1) - 1


def unzigzag(z: int) -> int:
    """Inverse of `zigzag`."""
    return (z >> 1) ^ -(z & 1)


def varint(n: int) -> bytes:
    """Unsigned LEB128."""
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _pack(values: Sequence[int], width: int) -> bytes:
    if width == 0:
        return b""
    if width >= 8:
        return struct.pack(f">{len(values)}{'BHI'[width // 16]}", *values)
    acc = 0
    for v in values:
        acc = (acc << width) | v
    nbits = len(values) * width
    pad = -nbits % 8
    return (acc << pad).to_bytes((nbits + pad) // 8, "big")


def encode_channel(values: Sequence[int]) -> bytes:
    """Pack one channel's interval values into its canonical stream."""
    out = bytearray()
    prev = 0
    for g in range(0, len(values), GROUP):
        group = values[g : g + GROUP]
        lo = min(group)
        hi = max(group)
        if lo < 0 or hi > MAX_VALUE:
            raise MalformedPayload("interval value out of range", f"0..{MAX_VALUE}", (lo, hi))
        n = len(group)
        zz = [zigzag(v - p) for v, p in zip(group, [prev, *group[:-1]], strict=True)]
        cf = _CODE_FOR_BITS[(hi - lo).bit_length()]
        cd = _CODE_FOR_BITS[max(zz).bit_length()]
        base = varint(lo)
        if (n * WIDTHS[cd] + 7) // 8 < len(base) + (n * WIDTHS[cf] + 7) // 8:
            out.append(MODE_DELTA | cd)
            out += _pack(zz, WIDTHS[cd])
        else:
            out.append(cf)
            out += base
            out += _pack([v - lo for v in group], WIDTHS[cf])
        prev = group[-1]
    return bytes(out)


def read_varint(data: bytes, pos: int, max_bytes: int = 10) -> tuple[int, int]:
    """(value, next position) of a strict LEB128 varint at `pos` (minimal, < 2**64)."""
    value = 0
    for i in range(max_bytes):
        if pos >= len(data):
            raise MalformedPayload("varint truncated", "a varint byte", "end of data")
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << (7 * i)
        if not b & 0x80:
            if b == 0 and i:
                raise MalformedPayload("non-minimal varint", "minimal LEB128", "trailing 0x00")
            if value >= 1 << 64:
                raise MalformedPayload("varint over 64 bits", "< 2**64", value)
            return value, pos
    raise MalformedPayload("varint too long", f"<= {max_bytes} bytes", "more")


def _unpack_sub_byte(
    data: bytes, pos: int, end: int, n: int, table: list[tuple[int, ...]]
) -> list[int]:
    vals = list(chain.from_iterable(map(table.__getitem__, data[pos:end])))
    if any(vals[n:]):
        raise MalformedPayload("non-zero padding in channel group", 0, vals[n:])
    del vals[n:]
    return vals


def decode_channel(data: bytes, count: int) -> list[int]:
    """Unpack `count` values from a channel stream that must be used exactly.

    The hot path of head-end ingest: each group is a few C-level calls
    (slice, struct, table map, accumulate); ranges are checked once at the end.

    Raises:
        MalformedPayload: a bad width code, a stream too short or too long for
            `count` values, a value out of range, or non-zero padding.
    """
    out: list[int] = []
    prev = 0
    pos = 0
    size = len(data)
    remaining = count
    while remaining > 0:
        n = GROUP if remaining >= GROUP else remaining
        remaining -= n
        if pos >= size:
            raise MalformedPayload("channel stream truncated", "group header", "end")
        head = data[pos]
        code = head & 0x7F
        if code > 6:
            raise MalformedPayload("bad group header", "width code 0..6", f"{head:#04x}")
        width = WIDTHS[code]
        delta = head & MODE_DELTA
        if delta:
            pos += 1
        else:
            base, pos = read_varint(data, pos + 1, 5)  # a base is < 2**31
        end = pos + ((n * width + 7) >> 3)
        if end > size:
            raise MalformedPayload("channel stream truncated", f"{end - pos} bytes", size - pos)
        raw: Iterable[int]
        if width == 0:  # n equal values (a flat load, an unused channel): nothing to add up
            seg = [prev if delta else base] * n
        else:
            if width < 8:  # a delta group's table gives its differences: one pass
                table = (_UNPACK_DELTA if delta else _UNPACK)[width]
                raw = _unpack_sub_byte(data, pos, end, n, table)
            elif width == 8:
                raw = data[pos:end]
                if delta:
                    raw = map(_UNZIGZAG8.__getitem__, raw)
            else:
                raw = struct.unpack_from(f">{n}{'H' if width == 16 else 'I'}", data, pos)
                if delta:
                    raw = [(z >> 1) ^ -(z & 1) for z in raw]
            if delta:  # zigzag differences from the previous value
                seg = list(accumulate(raw, initial=prev))
                del seg[0]
            else:  # frame of reference: base + each value
                seg = list(map(base.__add__, raw)) if base else list(raw)
        pos = end
        out += seg
        prev = seg[-1]
    if pos != size:
        raise MalformedPayload("channel stream too long", f"{pos} bytes", size)
    if out and (min(out) < 0 or max(out) > MAX_VALUE):
        raise MalformedPayload("value out of range", f"0..{MAX_VALUE}", (min(out), max(out)))
    return out


def encode_runs(flags: Sequence[int]) -> list[tuple[int, int]]:
    """Run-length code per-interval status flags as maximal (run, flags) pairs."""
    runs: list[tuple[int, int]] = []
    for f in flags:
        if not 0 <= f <= 0xFF or f & ~FLAG_BITS:
            raise MalformedPayload("status flags use reserved bits", f"mask {FLAG_BITS:#x}", f)
        if runs and runs[-1][1] == f:
            runs[-1] = (runs[-1][0] + 1, f)
        else:
            runs.append((1, f))
    return runs


def decode_runs(runs: Sequence[tuple[int, int]], count: int) -> list[int]:
    """Expand (run, flags) pairs to per-interval flags, checking they are canonical."""
    out: list[int] = []
    last = -1
    for run, f in runs:
        if run < 1 or f == last:
            raise MalformedPayload("flag runs not canonical", "run >= 1, adjacent differ", (run, f))
        if f & ~FLAG_BITS:
            raise MalformedPayload("status flags use reserved bits", f"mask {FLAG_BITS:#x}", f)
        if len(out) + run > count:
            raise MalformedPayload("flag runs exceed interval count", count, len(out) + run)
        out.extend([f] * run)
        last = f
    if len(out) != count:
        raise MalformedPayload("flag runs do not cover the intervals", count, len(out))
    return out
