"""The normative construct schema of every byte on the wire (protocol v1).

`Frame` is the whole frame; `BODIES` maps each message type to its body.
SPEC.md says the same in words for the meter's struct codec. Decoding with
typed errors and encoding with MACs live in `protocol.frame`.
"""

from __future__ import annotations

from typing import Any

from construct import (
    Adapter,
    Array,
    Bytes,
    Checksum,
    Construct,
    Container,
    Enum,
    Error,
    FocusedSeq,
    GreedyBytes,
    If,
    Int8sb,
    Int8ub,
    Int16sb,
    Int16ub,
    Int32sb,
    Int32ub,
    Int64ub,
    PascalString,
    Prefixed,
    PrefixedArray,
    RawCopy,
    Rebuild,
    Struct,
    Switch,
    Terminated,
    this,
)
from construct.core import ConstructError, stream_read, stream_write

from protocol import blocks
from protocol.crc import crc16

VERSION = 1
HEADER_LEN = 15
CRC_LEN = 2
AUTH_LEN = 4 + 16
MAX_PAYLOAD = 4096
MAX_FRAME = HEADER_LEN + MAX_PAYLOAD + AUTH_LEN + CRC_LEN
FLAG_AUTH = 0x01

MESSAGE_TYPES: dict[str, int] = {
    "register": 0x01,
    "register_ack": 0x02,
    "config_set": 0x03,
    "config_ack": 0x04,
    "schedule_set": 0x05,
    "schedule_ack": 0x06,
    "read_request": 0x07,
    "read_response": 0x08,
    "read_ack": 0x09,
    "event": 0x0A,
    "event_ack": 0x0B,
    "time_sync_request": 0x0C,
    "time_sync_response": 0x0D,
    "time_set": 0x0E,
    "download_open": 0x0F,
    "download_challenge": 0x10,
    "download_auth": 0x11,
    "download_data": 0x12,
    "nack": 0x13,
    "key_set": 0x14,
    "key_ack": 0x15,
}
TYPE_NAMES = {code: name for name, code in MESSAGE_TYPES.items()}

SECTION_TAGS: dict[str, int] = {
    "clock": 1,
    "registers": 2,
    "midnight": 3,
    "intervals": 4,
    "events": 5,
    "schedules": 6,
    "config": 7,
}


class TypedAdapter(Adapter):  # type: ignore[misc]
    """construct's Adapter, typed for mypy."""


class StrictVarInt(Construct):  # type: ignore[misc]
    """Unsigned LEB128 that rejects non-minimal encodings and more than 10 bytes."""

    def _parse(self, stream: Any, context: Any, path: str) -> int:
        value = 0
        for i in range(10):
            b = stream_read(stream, 1, path)[0]
            value |= (b & 0x7F) << (7 * i)
            if not b & 0x80:
                if b == 0 and i > 0:
                    raise ConstructError(f"non-minimal varint at {path}", path=path)
                if value >= 1 << 64:
                    raise ConstructError(f"varint over 64 bits at {path}", path=path)
                return int(value)
        raise ConstructError(f"varint longer than 10 bytes at {path}", path=path)

    def _build(self, obj: Any, stream: Any, context: Any, path: str) -> int:
        if not isinstance(obj, int) or not 0 <= obj < 1 << 64:
            raise ConstructError(f"varint needs 0 <= n < 2**64, got {obj!r}", path=path)
        out = bytearray()
        n = obj
        while True:
            if n < 0x80:
                out.append(n)
                break
            out.append((n & 0x7F) | 0x80)
            n >>= 7
        stream_write(stream, bytes(out), len(out), path)
        return obj

    def _sizeof(self, context: Any, path: str) -> int:
        from construct import SizeofError

        raise SizeofError(path=path)


VarInt = StrictVarInt()

Channel = Struct(
    "kind" / Int8ub,
    "unit" / Int8ub,
    "multiplier" / Int16ub,
    "scaler" / Int8sb,
)

ConfigItem = Struct("key" / Int8ub, "value" / Int32sb)

Slot = Struct(
    "slot" / Int8ub,
    "action" / Int8ub,
    "start" / Int32ub,
    "end" / Int32ub,
    "period_s" / Int32ub,
    "offset_s" / Int32ub,
    "what" / Int8ub,
)

Event = Struct("code" / Int8ub, "time" / Int32ub, "data" / Int32ub)


class _ChannelStream(TypedAdapter):
    """One channel's bit stream (length-prefixed) ⇄ its list of interval values."""

    def _decode(self, obj: bytes, context: Any, path: str) -> list[int]:
        return blocks.decode_channel(obj, context.count)

    def _encode(self, obj: list[int], context: Any, path: str) -> bytes:
        return blocks.encode_channel(obj)


_RawIntervalBlock = Struct(
    "start" / Int32ub,
    "interval_s" / Int16ub,
    "count" / Int16ub,
    "nch" / Int8ub,
    "runs" / PrefixedArray(VarInt, Struct("run" / VarInt, "flags" / Int8ub)),
    "channels" / Array(this.nch, _ChannelStream(Prefixed(VarInt, GreedyBytes))),
)


class _IntervalBlock(TypedAdapter):
    """The canonical block {start, interval_s, flags, channels} ⇄ its wire struct."""

    def _decode(self, obj: Any, context: Any, path: str) -> dict[str, Any]:
        if obj.count < 1:
            raise ConstructError("interval block with no intervals", path=path)
        runs = [(r.run, r.flags) for r in obj.runs]
        return {
            "start": obj.start,
            "interval_s": obj.interval_s,
            "flags": blocks.decode_runs(runs, obj.count),
            "channels": [list(ch) for ch in obj.channels],
        }

    def _encode(self, obj: Any, context: Any, path: str) -> Container:
        flags = list(obj["flags"])
        channels = [list(ch) for ch in obj["channels"]]
        count = len(flags)
        if not 1 <= count <= 0xFFFF or any(len(ch) != count for ch in channels):
            raise ConstructError(
                f"block needs 1..65535 intervals and every channel of length {count}", path=path
            )
        return Container(
            start=obj["start"],
            interval_s=obj["interval_s"],
            count=count,
            nch=len(channels),
            runs=[Container(run=r, flags=f) for r, f in blocks.encode_runs(flags)],
            channels=channels,
        )


IntervalBlock = _IntervalBlock(_RawIntervalBlock)

Registers = Struct("at" / Int32ub, "values" / PrefixedArray(Int8ub, VarInt))
Midnight = Struct("day" / Int32ub, "values" / PrefixedArray(Int8ub, VarInt))

SECTION_BODIES = {
    "clock": Struct("time" / Int32ub),
    "registers": Registers,
    "midnight": Midnight,
    "intervals": IntervalBlock,
    "events": PrefixedArray(VarInt, Event),
    "schedules": PrefixedArray(Int8ub, Slot),
    "config": PrefixedArray(Int8ub, ConfigItem),
}

Section = Struct(
    "tag" / Enum(Int8ub, **SECTION_TAGS),
    "body"
    / Prefixed(
        VarInt,
        FocusedSeq(
            "value",
            "value" / Switch(this._.tag, SECTION_BODIES, default=Error),
            Terminated,
        ),
    ),
)

Sections = PrefixedArray(Int8ub, Section)

BODIES: dict[str, Any] = {
    "register": Struct(
        "fw_version" / PascalString(Int8ub, "utf8"),
        "interval_s" / Int16ub,
        "capacity_days" / Int16ub,
        "utc_offset_min" / Int16sb,
        "meter_multiplier" / Int16ub,
        "channels" / PrefixedArray(Int8ub, Channel),
    ),
    "register_ack": Struct("status" / Int8ub),
    "config_set": Struct("items" / PrefixedArray(Int8ub, ConfigItem)),
    "config_ack": Struct("acked_seq" / Int16ub, "status" / Int8ub),
    "schedule_set": Struct("slots" / PrefixedArray(Int8ub, Slot)),
    "schedule_ack": Struct("acked_seq" / Int16ub, "status" / Int8ub),
    "read_request": Struct("mode" / Int8ub, "start" / Int32ub, "end" / Int32ub, "what" / Int8ub),
    "read_response": Struct(
        "request_seq" / Int16ub,
        "kind" / Int8ub,
        "part" / Int8ub,
        "parts" / Int8ub,
        "sections" / Sections,
    ),
    "read_ack": Struct("acked_seq" / Int16ub, "upto" / Int32ub),
    "event": Struct("events" / PrefixedArray(Int8ub, Event)),
    "event_ack": Struct("acked_seq" / Int16ub),
    "time_sync_request": Struct("t1_ms" / Int64ub),
    "time_sync_response": Struct("t1_ms" / Int64ub, "t2_ms" / Int64ub, "t3_ms" / Int64ub),
    "time_set": Struct("utc_ms" / Int64ub),
    "download_open": Struct("operator" / Int16ub),
    "download_challenge": Struct("nonce" / Bytes(16)),
    "download_auth": Struct("operator" / Int16ub, "mac" / Bytes(32)),
    "download_data": Struct("part" / Int8ub, "parts" / Int8ub, "sections" / Sections),
    "nack": Struct("nacked_type" / Int8ub, "nacked_seq" / Int16ub, "reason" / Int8ub),
    "key_set": Struct("version" / Int16ub, "wrapped" / Bytes(32)),
    "key_ack": Struct("acked_seq" / Int16ub, "version" / Int16ub, "status" / Int8ub),
}

Signed = Struct(
    "version" / Int8ub,
    "type" / Enum(Int8ub, **MESSAGE_TYPES),
    "flags" / Rebuild(Int8ub, lambda this: FLAG_AUTH if this.auth is not None else 0),
    "seq" / Int16ub,
    "meter_id" / Int32ub,
    "timestamp" / Int32ub,
    "body"
    / Prefixed(
        Int16ub,
        FocusedSeq("value", "value" / Switch(this._.type, BODIES, default=Error), Terminated),
    ),
    "auth" / If(this.flags & FLAG_AUTH, Struct("counter" / Int32ub, "mac" / Bytes(16))),
)

Frame = Struct(
    "signed" / RawCopy(Signed),
    "crc" / Checksum(Int16ub, crc16, this.signed.data),
    Terminated,
)
