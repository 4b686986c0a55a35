"""Read responses into the store (H04, D01), and their engineering-unit JSON.

A read_response's sections become store items: interval blocks, midnight
registers, events; the current registers and the meter clock go only to the
requester and real-time subscribers (the store keeps the midnight ones). The
JSON gives exact decimal strings in the channel's unit (raw x channel
multiplier x 10^scaler x meter multiplier), never floats.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

from headend.errors import InvalidData
from headend.store import (
    BlockIngest,
    Channel,
    EventRecord,
    IntervalBlock,
    Meter,
    MidnightRegister,
    Source,
)
from protocol.codes import event_name


@functools.lru_cache(maxsize=8192)
def iso(t: int) -> str:
    """UTC seconds as ISO 8601 with a Z (cached: every meter's intervals share their
    boundaries, so a night's reads format the same few hundred instants; `time.gmtime`
    formats the rest, events' times, in ~0.9 µs, `datetime` in ~2.2)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


@dataclass
class Sections:
    """The store items and extras of one frame's sections."""

    blocks: list[BlockIngest] = field(default_factory=list)
    midnights: list[MidnightRegister] = field(default_factory=list)
    events: list[EventRecord] = field(default_factory=list)
    registers: tuple[int, tuple[int, ...]] | None = None  # (at, values)
    clock: int | None = None

    @property
    def upto(self) -> int:
        """End of the last interval carried (what a read_ack acknowledges); 0 if none."""
        return max((b.block.end for b in self.blocks), default=0)


def sections(
    meter: Meter,
    raw: list[dict[str, Any]],
    source: Source,
    received_s: int,
    decoded: bool = False,
) -> Sections:
    """Items of a frame's sections for ``meter``. Raises InvalidData on any bad one.

    ``decoded``: ``raw`` is what `protocol.frame.decode` returned, whose unpacker
    checked every interval's flags and values (`IntervalBlock.from_decoded`).
    """
    out = Sections()
    mid = meter.meter_id
    block = IntervalBlock.from_decoded if decoded else IntervalBlock.from_canonical
    for n, sec in enumerate(raw):
        tag = sec.get("tag") if isinstance(sec, dict) else None
        try:
            body = sec["body"]
            if tag == "intervals":
                out.blocks.append(BlockIngest(mid, block(body), source, received_s))
            elif tag == "midnight":
                out.midnights.append(
                    MidnightRegister(mid, body["day"], tuple(body["values"]), source, received_s)
                )
            elif tag == "events":
                out.events += [
                    EventRecord(mid, e["code"], e["time"], e["data"], source, received_s)
                    for e in body
                ]
            elif tag == "registers":
                values = tuple(body["values"])
                if len(values) != len(meter.channels):
                    raise InvalidData(
                        f"registers: expected {len(meter.channels)} values, got {len(values)}"
                    )
                out.registers = (int(body["at"]), values)
            elif tag == "clock":
                out.clock = int(body["time"])
            # schedules / config sections (downloads) hold nothing the MDMS stores
        except (KeyError, TypeError) as e:
            raise InvalidData(f"section {n} ({tag}): {e!r}") from e
    return out


def _channels(meter: Meter) -> list[dict[str, Any]]:
    return _channels_of(meter.channels)


def _channels_of(channels: Sequence[Channel]) -> list[dict[str, Any]]:
    return [
        {"index": i, "kind": c.kind.name.lower(), "unit": c.unit.symbol}
        for i, c in enumerate(channels)
    ]


def _column(meter: Meter, c: int, values: Sequence[int]) -> list[str]:
    """A channel's raw values as exact engineering strings, the common scales fast."""
    sc = meter.scale(c)
    if sc.scaler == 0:
        f = sc.factor
        return list(map(str, values)) if f == 1 else [str(v * f) for v in values]
    return [str(sc.engineering(v)) for v in values]


def _eng(meter: Meter, values: tuple[int, ...] | list[int]) -> list[str]:
    return [_column(meter, c, (v,))[0] for c, v in enumerate(values)]


def engineering(meter: Meter, secs: Sections, source: Source) -> dict[str, Any]:
    """The frame's data in engineering units, as a JSON-ready dict."""
    intervals = []
    for b in secs.blocks:
        blk = b.block
        cols = [_column(meter, c, ch) for c, ch in enumerate(blk.channels)]
        for i in range(blk.count):
            start = blk.start + i * blk.interval_s
            intervals.append(
                {
                    "start": iso(start),
                    "end": iso(start + blk.interval_s),
                    "flags": blk.flags[i],
                    "values": [col[i] for col in cols],
                }
            )
    return {
        "meter": meter.meter_id,
        "source": source.name.lower(),
        "channels": _channels(meter),
        "intervals": intervals,
        **_tail(meter, secs),
    }


def _tail(meter: Meter, secs: Sections) -> dict[str, Any]:
    """What follows the intervals in `engineering`'s dict (the same keys, in order)."""
    out: dict[str, Any] = {
        "midnight": [{"day": iso(m.day), "values": _eng(meter, m.values)} for m in secs.midnights],
        "events": [
            {
                "time": iso(e.time),
                "code": e.code,
                "name": event_name(e.code),
                "data": e.data,
            }
            for e in secs.events
        ],
    }
    if secs.registers is not None:
        at, values = secs.registers
        out["registers"] = {"at": iso(at), "values": _eng(meter, values)}
    if secs.clock is not None:
        out["clock"] = iso(secs.clock)
    return out


def merge_result(previous: str | None, part: dict[str, Any]) -> str:
    """A job's accumulated result JSON with one more part's data added."""
    if not previous:
        return json.dumps(part, separators=(",", ":"))
    acc = json.loads(previous)
    for key in ("intervals", "midnight", "events"):
        acc[key] = acc.get(key, []) + part.get(key, [])
    acc["intervals"].sort(key=lambda iv: iv["start"])
    for key in ("registers", "clock"):
        if key in part:
            acc[key] = part[key]
    return json.dumps(acc, separators=(",", ":"))


def to_json(data: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON of an `engineering` dict (what real-time subscribers get)."""
    return json.dumps(data, separators=(",", ":")).encode()


def to_json_parts(data: dict[str, Any], limit: int) -> list[bytes]:
    """`to_json` in messages of at most ``limit`` bytes where it can: the intervals
    split in halves (a day of them is over the broker's 8 KiB packet limit). Each
    part keeps meter, source and channels; the rest rides with the first."""
    whole = to_json(data)
    ivs = data.get("intervals", [])
    if len(whole) <= limit or len(ivs) < 2:
        return [whole]
    half = len(ivs) // 2
    head = {**data, "intervals": ivs[:half]}
    tail: dict[str, Any] = {k: data[k] for k in ("meter", "source", "channels") if k in data}
    tail["intervals"] = ivs[half:]
    return to_json_parts(head, limit) + to_json_parts(tail, limit)


def realtime_parts(meter: Meter, secs: Sections, source: Source, limit: int) -> list[bytes]:
    """``to_json_parts(engineering(meter, secs, source), limit)``, built faster.

    Every scheduled read is published, so this runs once per uplink: the
    intervals are formatted as bytes once, by one C-level ``%`` of a cached
    template per block (their JSON is fixed: ASCII times and decimal strings need
    no escaping), and the parts are cut by counting their lengths, instead of
    building dicts and encoding the whole and each half. Tests prove the bytes equal.
    """
    # `engineering`'s JSON around its intervals: the channels' text is the same for
    # every meter of a model (cached by them), the tail is this frame's
    prefix = f'{{"meter":{meter.meter_id},"source":"{source.name.lower()}",{_head(meter.channels)}'
    suffix = b"," + to_json(_tail(meter, secs))[1:]
    blocks = [(b.block, *_cells(meter, b.block)) for b in secs.blocks]
    return _Parts(blocks, prefix.encode(), limit).cut(
        0, sum(b.count for b, _, _ in blocks), suffix, None
    )


def _cells(meter: Meter, blk: IntervalBlock) -> tuple[Sequence[Sequence[int | bytes]], str]:
    """A block's channels as what their JSON strings hold, and each one's ``%`` code:
    exact ints (``d``) where the scaler is 0 (raw values, or raw x an int factor: the
    common scales), else the engineering decimal as ASCII (``s``)."""
    cols: list[Sequence[int | bytes]] = []
    codes = []
    for c, ch in enumerate(blk.channels):
        sc = meter.scale(c)
        if sc.scaler == 0:
            f = sc.factor
            cols.append(ch if f == 1 else [v * f for v in ch])
            codes.append("d")
        else:
            cols.append([str(sc.engineering(v)).encode() for v in ch])
            codes.append("s")
    return cols, "".join(codes)


def _fill(
    blk: IntervalBlock, cols: Sequence[Sequence[int | bytes]], codes: str, lo: int, hi: int
) -> bytes:
    """Intervals ``lo:hi`` of a block as JSON objects between commas: one C-level
    format of a cached template (flags and raw values are exact ints, IntervalBlock
    checks; ``bytes % ints`` formats them ~40 % faster than ``str %``)."""
    step = blk.interval_s
    values = zip(blk.flags[lo:hi], *(c[lo:hi] for c in cols), strict=True)
    template = _template(blk.start + lo * step, step, hi - lo, codes)
    return template % tuple(chain.from_iterable(values))


class _Parts:
    """`to_json_parts`' halving on the frame's intervals (counted across its blocks),
    each half formatted as it is cut: the tail part keeps only meter, source and
    channels (the prefix, closed by ``}``)."""

    def __init__(
        self,
        blocks: list[tuple[IntervalBlock, Sequence[Sequence[int | bytes]], str]],
        prefix: bytes,
        limit: int,
    ) -> None:
        self.blocks, self.prefix, self.limit = blocks, prefix, limit

    def _text(self, lo: int, hi: int) -> bytes:
        """Intervals ``lo:hi`` of all the blocks together."""
        texts, off = [], 0
        for blk, cols, codes in self.blocks:
            a, b = max(lo - off, 0), min(hi - off, blk.count)
            if a < b:
                texts.append(_fill(blk, cols, codes, a, b))
            off += blk.count
        return b",".join(texts)

    def cut(self, lo: int, hi: int, suffix: bytes, text: bytes | None) -> list[bytes]:
        """Parts of intervals ``lo:hi`` (``text``: their JSON, if made already)."""
        halves: tuple[bytes, bytes] | None = None
        mid = lo + (hi - lo) // 2
        if text is None:
            if hi - lo < 2:
                text = self._text(lo, hi)
            else:  # the halves first: over the limit they are the parts, made once
                halves = (self._text(lo, mid), self._text(mid, hi))
                text = b",".join(halves)
        if len(self.prefix) + len(_EMPTY_INTERVALS) + len(text) + len(suffix) <= self.limit or (
            hi - lo < 2
        ):
            return [b"".join((self.prefix, b'"intervals":[', text, b"]", suffix))]
        first, second = halves or (None, None)
        return self.cut(lo, mid, suffix, first) + self.cut(mid, hi, b"}", second)


_EMPTY_INTERVALS = b'"intervals":[]'


@functools.lru_cache(maxsize=256)
def _head(channels: tuple[Channel, ...]) -> str:
    """``"channels":[...],`` of a meter with these channels (a fleet has few kinds)."""
    return to_json({"channels": _channels_of(channels)}).decode()[1:-1] + ","


@functools.lru_cache(maxsize=256)
def _template(start: int, step: int, count: int, codes: str) -> bytes:
    """The JSON of a block's intervals between commas, the flags left as ``%d`` and each
    channel's values as its code (`_cells`) (a night's meters send the same few block
    shapes: made once for them all)."""
    times = _bounds(start, step, count)
    vals = '","'.join(f"%{c}" for c in codes)
    return ",".join(
        f'{{"start":"{a}","end":"{b}","flags":%d,"values":["{vals}"]}}'
        for a, b in zip(times, times[1:], strict=False)
    ).encode()


@functools.lru_cache(maxsize=256)
def _bounds(start: int, step: int, count: int) -> tuple[str, ...]:
    """The ISO times of a block's interval starts and its last end (the meters of a
    night send the same few blocks' bounds: formatted once for them all)."""
    return tuple(iso(start + i * step) for i in range(count + 1))
