"""Hypothesis strategies for canonical protocol fields (every message type)."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from protocol.schema import MESSAGE_TYPES

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
u64 = st.integers(0, 2**64 - 1)
i8 = st.integers(-128, 127)
i16 = st.integers(-(2**15), 2**15 - 1)
i32 = st.integers(-(2**31), 2**31 - 1)
varint = st.one_of(st.integers(0, 300), st.integers(0, 2**64 - 1))
flag_values = st.sampled_from([0, 0, 0, 1, 2, 4, 8, 16, 5, 0x1F])

channel = st.fixed_dictionaries({"kind": u8, "unit": u8, "multiplier": u16, "scaler": i8})
config_item = st.fixed_dictionaries({"key": u8, "value": i32})
slot = st.fixed_dictionaries(
    {
        "slot": u8,
        "action": u8,
        "start": u32,
        "end": u32,
        "period_s": u32,
        "offset_s": u32,
        "what": u8,
    }
)
event = st.fixed_dictionaries({"code": u8, "time": u32, "data": u32})


@st.composite
def interval_block(draw: Any, max_count: int = 120) -> dict[str, Any]:
    count = draw(st.integers(1, max_count))
    nch = draw(st.integers(0, 4))
    scale = draw(st.sampled_from([1, 15, 255, 3000, 70000, 2**31 - 1]))
    smooth = draw(st.booleans())
    channels = []
    for _ in range(nch):
        if smooth:
            start = draw(st.integers(0, scale))
            steps = draw(st.lists(st.integers(-3, 3), min_size=count, max_size=count))
            vals, v = [], start
            for s in steps:
                v = min(max(v + s, 0), 2**31 - 1)
                vals.append(v)
        else:
            vals = draw(st.lists(st.integers(0, scale), min_size=count, max_size=count))
        channels.append(vals)
    flags = draw(st.lists(flag_values, min_size=count, max_size=count))
    return {
        "start": draw(u32),
        "interval_s": draw(st.sampled_from([300, 600, 900, 1800, 3600])),
        "flags": flags,
        "channels": channels,
    }


def section() -> st.SearchStrategy[dict[str, Any]]:
    regs = st.lists(varint, max_size=6)
    return st.one_of(
        st.fixed_dictionaries(
            {"tag": st.just("clock"), "body": st.fixed_dictionaries({"time": u32})}
        ),
        st.fixed_dictionaries(
            {
                "tag": st.just("registers"),
                "body": st.fixed_dictionaries({"at": u32, "values": regs}),
            }
        ),
        st.fixed_dictionaries(
            {
                "tag": st.just("midnight"),
                "body": st.fixed_dictionaries({"day": u32, "values": regs}),
            }
        ),
        st.fixed_dictionaries({"tag": st.just("intervals"), "body": interval_block()}),
        st.fixed_dictionaries({"tag": st.just("events"), "body": st.lists(event, max_size=5)}),
        st.fixed_dictionaries({"tag": st.just("schedules"), "body": st.lists(slot, max_size=4)}),
        st.fixed_dictionaries(
            {"tag": st.just("config"), "body": st.lists(config_item, max_size=5)}
        ),
    )


sections = st.lists(section(), max_size=4)

BODIES: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "register": st.fixed_dictionaries(
        {
            "fw_version": st.text(max_size=20).filter(lambda s: len(s.encode()) < 256),
            "interval_s": u16,
            "capacity_days": u16,
            "utc_offset_min": i16,
            "meter_multiplier": u16,
            "channels": st.lists(channel, max_size=6),
        }
    ),
    "register_ack": st.fixed_dictionaries({"status": u8}),
    "config_set": st.fixed_dictionaries({"items": st.lists(config_item, max_size=6)}),
    "config_ack": st.fixed_dictionaries({"acked_seq": u16, "status": u8}),
    "schedule_set": st.fixed_dictionaries({"slots": st.lists(slot, max_size=4)}),
    "schedule_ack": st.fixed_dictionaries({"acked_seq": u16, "status": u8}),
    "read_request": st.fixed_dictionaries({"mode": u8, "start": u32, "end": u32, "what": u8}),
    "read_response": st.fixed_dictionaries(
        {"request_seq": u16, "kind": u8, "part": u8, "parts": u8, "sections": sections}
    ),
    "read_ack": st.fixed_dictionaries({"acked_seq": u16, "upto": u32}),
    "event": st.fixed_dictionaries({"events": st.lists(event, max_size=8)}),
    "event_ack": st.fixed_dictionaries({"acked_seq": u16}),
    "time_sync_request": st.fixed_dictionaries({"t1_ms": u64}),
    "time_sync_response": st.fixed_dictionaries({"t1_ms": u64, "t2_ms": u64, "t3_ms": u64}),
    "time_set": st.fixed_dictionaries({"utc_ms": u64}),
    "download_open": st.fixed_dictionaries({"operator": u16}),
    "download_challenge": st.fixed_dictionaries({"nonce": st.binary(min_size=16, max_size=16)}),
    "download_auth": st.fixed_dictionaries(
        {"operator": u16, "mac": st.binary(min_size=32, max_size=32)}
    ),
    "download_data": st.fixed_dictionaries({"part": u8, "parts": u8, "sections": sections}),
    "nack": st.fixed_dictionaries({"nacked_type": u8, "nacked_seq": u16, "reason": u8}),
    "key_set": st.fixed_dictionaries(
        {"version": u16, "wrapped": st.binary(min_size=32, max_size=32)}
    ),
    "key_ack": st.fixed_dictionaries({"acked_seq": u16, "version": u16, "status": u8}),
}
assert set(BODIES) == set(MESSAGE_TYPES)  # a new message type needs a strategy


@st.composite
def message(draw: Any, types: tuple[str, ...] = tuple(MESSAGE_TYPES)) -> dict[str, Any]:
    """Canonical fields of one message (auth: None or a counter; mac filled by encode)."""
    mtype = draw(st.sampled_from(types))
    authed = draw(st.booleans())
    return {
        "version": 1,
        "type": mtype,
        "seq": draw(u16),
        "meter_id": draw(u32),
        "timestamp": draw(u32),
        "auth": {"counter": draw(u32), "mac": b""} if authed else None,
        "body": draw(BODIES[mtype]),
    }
