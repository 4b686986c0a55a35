"""The cases behind the golden vectors: every message type, edge values, negatives.

Deterministic (seeded) so `make vectors` is byte-stable.
"""

from __future__ import annotations

import random
import struct
from typing import Any

from protocol.auth import download_mac, meter_key, probe_key, verify_frame, wrap_key
from protocol.blocks import encode_channel
from protocol.crc import crc16
from protocol.errors import ProtocolError
from protocol.frame import decode, encode
from protocol.hdlc import Deframer, stuff
from protocol.vectors import to_json

KEY = bytes(range(32))
# key_set's body: version 1 of meter 1001's key under the all-KEY master, wrapped under KEY
_WRAPPED = wrap_key(KEY, meter_key(KEY, 1001, 1), 1)
T0 = 1711929600  # 2024-04-01T00:00:00Z, the reference profile's first interval
U32 = 0xFFFFFFFF

_CHANNELS = [
    {"kind": 1, "unit": 1, "multiplier": 1, "scaler": 0},
    {"kind": 2, "unit": 1, "multiplier": 1, "scaler": 0},
    {"kind": 3, "unit": 2, "multiplier": 1, "scaler": 0},
    {"kind": 4, "unit": 2, "multiplier": 10, "scaler": -1},
]
_SLOT = {
    "slot": 1,
    "action": 0,
    "start": T0,
    "end": 0,
    "period_s": 3600,
    "offset_s": 120,
    "what": 15,
}


def _msg(
    mtype: str, body: Any, seq: int = 1, meter: int = 1001, auth: int | None = None
) -> dict[str, Any]:
    return {
        "version": 1,
        "type": mtype,
        "seq": seq,
        "meter_id": meter,
        "timestamp": T0 + 3600,
        "auth": None if auth is None else {"counter": auth, "mac": b""},
        "body": body,
    }


def _block(rng: random.Random, n: int, interval_s: int, scale: int) -> dict[str, Any]:
    flags = [0] * n
    for i in rng.sample(range(n), k=min(3, n)):
        flags[i] = rng.choice([1, 2, 4, 8, 16, 5, 0x1F])
    channels = [[rng.randint(0, scale) for _ in range(n)] for _ in range(4)]
    return {"start": T0, "interval_s": interval_s, "flags": flags, "channels": channels}


def _positive() -> list[tuple[str, dict[str, Any]]]:
    rng = random.Random(20241126)
    day = _block(rng, 96, 900, 400)
    smooth = [40 + (i % 24) for i in range(96)]
    day_smooth = {"start": T0, "interval_s": 900, "flags": [0] * 96, "channels": [smooth] * 4}
    events = [{"code": c, "time": T0 + c * 60, "data": c * 7} for c in range(1, 17)]
    sections = [
        {"tag": "clock", "body": {"time": T0 + 86400}},
        {"tag": "registers", "body": {"at": T0 + 86400, "values": [123456789, 0, 2**40, 1]}},
        {"tag": "midnight", "body": {"day": T0 + 86400, "values": [123450000, 0, 99, 2**63]}},
        {"tag": "intervals", "body": day},
        {"tag": "events", "body": events[:4]},
    ]
    return [
        (
            "register",
            _msg(
                "register",
                {
                    "fw_version": "1.0.0-ami",
                    "interval_s": 900,
                    "capacity_days": 45,
                    "utc_offset_min": -300,
                    "meter_multiplier": 1,
                    "channels": _CHANNELS,
                },
                seq=0,
            ),
        ),
        (
            "register_utf8_no_channels",
            _msg(
                "register",
                {
                    "fw_version": "v2 \u00e9",
                    "interval_s": 300,
                    "capacity_days": 45,
                    "utc_offset_min": 60,
                    "meter_multiplier": 40,
                    "channels": [],
                },
            ),
        ),
        ("register_ack", _msg("register_ack", {"status": 0})),
        (
            "config_set_auth",
            _msg(
                "config_set",
                {
                    "items": [
                        {"key": 1, "value": 300},
                        {"key": 2, "value": -60},
                        {"key": 3, "value": -1},
                    ]
                },
                auth=1,
            ),
        ),
        ("config_ack", _msg("config_ack", {"acked_seq": 65535, "status": 0})),
        (
            "schedule_set_auth",
            _msg(
                "schedule_set",
                {
                    "slots": [
                        dict(_SLOT, slot=0, period_s=86400, offset_s=3 * 3600 + 20 * 60),
                        _SLOT,
                        dict(_SLOT, slot=3, action=1, start=0, period_s=0, offset_s=0, what=0),
                    ]
                },
                auth=2,
            ),
        ),
        ("schedule_ack", _msg("schedule_ack", {"acked_seq": 7, "status": 7})),
        (
            "read_request_period",
            _msg(
                "read_request", {"mode": 0, "start": T0, "end": T0 + 45 * 86400, "what": 15}, auth=3
            ),
        ),
        (
            "read_request_since_ack",
            _msg("read_request", {"mode": 1, "start": 0, "end": 0, "what": 1}, auth=U32),
        ),
        (
            "read_response_day",
            _msg(
                "read_response",
                {"request_seq": 0, "kind": 0, "part": 0, "parts": 1, "sections": sections},
            ),
        ),
        (
            "read_response_smooth_day",
            _msg(
                "read_response",
                {
                    "request_seq": 9,
                    "kind": 1,
                    "part": 1,
                    "parts": 2,
                    "sections": [{"tag": "intervals", "body": day_smooth}],
                },
            ),
        ),
        (
            "read_response_5min_day",
            _msg(
                "read_response",
                {
                    "request_seq": 0,
                    "kind": 2,
                    "part": 0,
                    "parts": 1,
                    "sections": [{"tag": "intervals", "body": _block(rng, 288, 300, 60000)}],
                },
            ),
        ),
        (
            "read_response_single_interval",
            _msg(
                "read_response",
                {
                    "request_seq": 0,
                    "kind": 0,
                    "part": 0,
                    "parts": 1,
                    "sections": [
                        {
                            "tag": "intervals",
                            "body": {
                                "start": T0,
                                "interval_s": 3600,
                                "flags": [16],
                                "channels": [[0], [2**31 - 1]],
                            },
                        },
                        {
                            "tag": "intervals",
                            "body": {
                                "start": T0,
                                "interval_s": 600,
                                "flags": [0, 0],
                                "channels": [],
                            },
                        },
                    ],
                },
            ),
        ),
        (
            "read_response_empty",
            _msg(
                "read_response",
                {"request_seq": 0, "kind": 0, "part": 0, "parts": 0, "sections": []},
            ),
        ),
        ("read_ack", _msg("read_ack", {"acked_seq": 300, "upto": T0 + 86400})),
        ("event", _msg("event", {"events": events})),
        ("event_empty", _msg("event", {"events": []})),
        ("event_ack", _msg("event_ack", {"acked_seq": 12})),
        ("time_sync_request", _msg("time_sync_request", {"t1_ms": T0 * 1000 + 17})),
        (
            "time_sync_response",
            _msg(
                "time_sync_response",
                {"t1_ms": T0 * 1000 + 17, "t2_ms": T0 * 1000 + 140, "t3_ms": 2**64 - 1},
            ),
        ),
        ("time_set_auth", _msg("time_set", {"utc_ms": T0 * 1000 + 500}, auth=77)),
        ("download_open", _msg("download_open", {"operator": 42}, meter=0)),
        ("download_challenge", _msg("download_challenge", {"nonce": bytes(range(100, 116))})),
        ("download_auth", _msg("download_auth", {"operator": 42, "mac": bytes(range(32))})),
        (
            "download_data",
            _msg(
                "download_data",
                {
                    "part": 3,
                    "parts": 45,
                    "sections": [
                        {"tag": "schedules", "body": [_SLOT]},
                        {"tag": "config", "body": [{"key": 1, "value": 900}]},
                        {"tag": "events", "body": []},
                        {"tag": "intervals", "body": day},
                    ],
                },
            ),
        ),
        ("nack", _msg("nack", {"nacked_type": 7, "nacked_seq": 5, "reason": 5})),
        ("max_ids", _msg("register_ack", {"status": 255}, seq=65535, meter=U32)),
        # issue 11: every frame signed (SPEC "Authentication"), key rotation
        ("key_set", _msg("key_set", {"version": 1, "wrapped": _WRAPPED}, auth=T0 + 7)),
        ("key_ack", _msg("key_ack", {"acked_seq": 9, "version": 1, "status": 0}, auth=65)),
        ("key_ack_refused", _msg("key_ack", {"acked_seq": 9, "version": 0, "status": 7}, auth=66)),
        (
            "register_signed",
            _msg(
                "register",
                {
                    "fw_version": "ami-fw 0.4.0",
                    "interval_s": 900,
                    "capacity_days": 136,
                    "utc_offset_min": 0,
                    "meter_multiplier": 1,
                    "channels": _CHANNELS,
                },
                auth=1,
            ),
        ),
        (
            "read_response_signed",
            _msg(
                "read_response",
                {"request_seq": 0, "kind": 0, "part": 0, "parts": 1, "sections": sections},
                auth=2,
            ),
        ),
        ("event_signed", _msg("event", {"events": events[:3]}, auth=3)),
        ("time_sync_request_signed", _msg("time_sync_request", {"t1_ms": T0 * 1000}, auth=4)),
        ("nack_signed", _msg("nack", {"nacked_type": 3, "nacked_seq": 7, "reason": 4}, auth=U32)),
        ("read_ack_signed", _msg("read_ack", {"acked_seq": 2, "upto": T0}, auth=T0 + 1)),
        ("event_ack_signed", _msg("event_ack", {"acked_seq": 3}, auth=T0 + 2)),
        ("register_ack_signed", _msg("register_ack", {"status": 0}, auth=T0 + 3)),
        (
            "time_sync_response_signed",
            _msg(
                "time_sync_response",
                {"t1_ms": T0 * 1000, "t2_ms": T0 * 1000 + 40, "t3_ms": T0 * 1000 + 45},
                auth=T0 + 4,
            ),
        ),
    ]


def _recrc(raw: bytes) -> bytes:
    body = raw[:-2]
    return body + struct.pack(">H", crc16(body))


def _negative(good: bytes, authed: bytes) -> list[tuple[str, bytes]]:
    hdr = bytes.fromhex("01020000010000 03e9 00000000 0001".replace(" ", ""))
    return [
        ("empty", b""),
        ("short_header", good[:10]),
        ("header_only_no_crc", good[:15]),
        ("truncated_payload", good[:-3]),
        ("overlong_trailing_byte", good + b"\x00"),
        ("bad_crc", good[:-1] + bytes([good[-1] ^ 1])),
        ("payload_bit_flip", good[:16] + bytes([good[16] ^ 0x10]) + good[17:]),
        ("version_0", _recrc(b"\x00" + good[1:])),
        ("version_2", _recrc(b"\x02" + good[1:])),
        ("unknown_type_0", _recrc(good[:1] + b"\x00" + good[2:])),
        ("unknown_type_ff", _recrc(good[:1] + b"\xff" + good[2:])),
        ("reserved_flag", _recrc(good[:2] + b"\x02" + good[3:])),
        ("payload_len_over_max", _recrc(good[:13] + b"\x10\x01" + good[15:])),
        ("payload_len_too_small", _recrc(good[:13] + b"\x00\x00" + good[15:])),
        ("register_ack_extra_byte", _recrc(hdr[:13] + b"\x00\x02" + b"\x00\x00" + b"\x00\x00")),
        ("register_ack_no_body", _recrc(hdr[:13] + b"\x00\x00" + b"\x00\x00")),
        ("auth_flag_without_trailer", _recrc(good[:2] + b"\x01" + good[3:])),
        ("auth_truncated", authed[:-5]),
        (
            "section_bad_tag",
            _recrc(_frame_with_payload(8, b"\x00\x00\x00\x00\x01\x01" + b"\x09\x00")),
        ),
        (
            "section_length_overrun",
            _recrc(_frame_with_payload(8, b"\x00\x00\x00\x00\x01\x01\x01\x09\x00\x00\x00\x00")),
        ),
        (
            "section_nonminimal_varint",
            _recrc(
                _frame_with_payload(
                    8, b"\x00\x00\x00\x00\x01\x01\x01\x84\x00" + b"\x00\x00\x00\x00"
                )
            ),
        ),
        (
            "section_trailing_bytes",
            _recrc(_frame_with_payload(8, b"\x00\x00\x00\x00\x01\x01\x01\x05\x00\x00\x00\x00\x00")),
        ),
        ("block_zero_count", _block_frame(0, 0, b"\x00", b"")),
        ("block_runs_short", _block_frame(2, 0, b"\x01\x01\x00", b"")),
        ("block_runs_adjacent_equal", _block_frame(2, 0, b"\x02\x01\x00\x01\x00", b"")),
        ("block_reserved_flag", _block_frame(1, 0, b"\x01\x01\x20", b"")),
        ("block_bad_width_code", _block_frame(1, 1, b"\x01\x01\x00", b"\x01\x07")),
        ("block_reserved_header_bits", _block_frame(1, 1, b"\x01\x01\x00", b"\x01\x10")),
        ("block_stream_short", _block_frame(16, 1, b"\x01\x10\x00", b"\x01\x04")),
        ("block_stream_long", _block_frame(1, 1, b"\x01\x01\x00", b"\x02\x80\x00")),
        ("block_nonzero_padding", _block_frame(1, 1, b"\x01\x01\x00", b"\x02\x81\x01")),
        ("block_nonminimal_base", _block_frame(1, 1, b"\x01\x01\x00", b"\x03\x00\x80\x00")),
        ("block_delta_negative", _block_frame(1, 1, b"\x01\x01\x00", b"\x02\x81\x80")),
        (
            "block_value_over_2_31",
            _block_frame(1, 1, b"\x01\x01\x00", b"\x06\x00\x80\x80\x80\x80\x08"),
        ),
        ("register_bad_utf8", _recrc(_frame_with_payload(1, b"\x01\xff" + b"\x00" * 9))),
        ("event_count_overrun", _recrc(_frame_with_payload(10, b"\x02" + b"\x00" * 9))),
        ("nack_short", _recrc(_frame_with_payload(0x13, b"\x07\x00"))),
        ("time_set_short", _recrc(_frame_with_payload(0x0E, b"\x00" * 7))),
    ]


def _refused(rows: list[dict[str, Any]]) -> list[tuple[str, bytes, int | None]]:
    """Frames a receiver holding KEY refuses: (name, raw, last accepted counter).

    Unsigned downlinks (every type but download_open/download_auth must be
    signed), a MAC under another key, a MAC that does not cover a changed
    byte, and a replayed counter."""
    by = {r["name"]: bytes.fromhex(r["hex"]) for r in rows}
    other = meter_key(KEY, 1001, 2)
    key_set = _msg("key_set", {"version": 1, "wrapped": _WRAPPED}, auth=T0 + 7)
    signed = by["read_ack_signed"]
    return [
        (
            "unsigned_config_set",
            encode(_msg("config_set", {"items": [{"key": 4, "value": 1000}]})),
            None,
        ),
        ("unsigned_register_ack", by["register_ack"], None),
        ("unsigned_read_ack", encode(_msg("read_ack", {"acked_seq": 2, "upto": T0})), None),
        ("unsigned_event_ack", encode(_msg("event_ack", {"acked_seq": 3})), None),
        ("unsigned_time_set", encode(_msg("time_set", {"utc_ms": T0 * 1000})), None),
        ("unsigned_key_set", encode(dict(key_set, auth=None)), None),
        ("key_set_other_key", encode(key_set, key=other), None),
        (
            "mac_not_covering_change",
            _recrc(signed[:9] + b"\x00" + signed[10:-2] + b"\x00\x00"),
            None,
        ),
        ("replayed_counter", signed, T0 + 1),
        ("older_counter", signed, T0 + 5),
    ]


def _block_frame(count: int, nch: int, runs: bytes, channels: bytes) -> bytes:
    body = struct.pack(">IHHB", T0, 900, count, nch) + runs + channels
    payload = b"\x00\x00\x00\x00\x01\x01\x04" + bytes([len(body)]) + body
    return _recrc(_frame_with_payload(8, payload))


def _frame_with_payload(mtype: int, payload: bytes) -> bytes:
    head = struct.pack(">BBBHIIH", 1, mtype, 0, 1, 1001, T0, len(payload))
    return head + payload + b"\x00\x00"


def frame_rows() -> list[dict[str, Any]]:
    """Positive then negative frame vectors."""
    rows: list[dict[str, Any]] = []
    for name, fields in _positive():
        key = KEY if fields["auth"] is not None else None
        raw = encode(fields, key=key)
        decoded = decode(raw)
        row: dict[str, Any] = {"name": name, "hex": raw.hex(), "fields": to_json(decoded)}
        if key is not None:
            row["key"] = key.hex()
        rows.append(row)
    good = bytes.fromhex(rows[0]["hex"])
    authed = bytes.fromhex(next(r["hex"] for r in rows if "key" in r))
    for name, raw in _negative(good, authed):
        try:
            decode(raw)
        except ProtocolError as e:
            rows.append({"name": "bad_" + name, "hex": raw.hex(), "error": type(e).__name__})
        else:
            raise AssertionError(f"negative vector {name} decoded")  # generator bug, not input
    for name, raw, last in _refused(rows):
        row = {"name": "refused_" + name, "hex": raw.hex(), "key": KEY.hex()}
        if last is not None:
            row["last_counter"] = last
        try:
            decode(raw)
            verify_frame(raw, KEY, last)
        except ProtocolError as e:
            rows.append(dict(row, error=type(e).__name__))
        else:
            raise AssertionError(f"refused vector {name} verified")  # generator bug, not input
    return rows


def blocks_rows() -> list[dict[str, Any]]:
    """Channel bit streams for value patterns both codecs must agree on."""
    rng = random.Random(45)
    cases: list[tuple[str, list[int]]] = [
        ("one_zero", [0]),
        ("zeros_96", [0] * 96),
        ("constant_96", [1234] * 96),
        ("ramp_96", list(range(96))),
        ("ramp_down_17", list(range(170, 0, -10))),
        ("max_values", [2**31 - 1] * 17),
        ("alternating_extremes", [0, 2**31 - 1] * 8),
        ("smooth_day", [40 + (i * 7) % 23 for i in range(96)]),
        ("noisy_day", [rng.randint(0, 3000) for _ in range(96)]),
        ("spiky", [50] * 30 + [2500] + [50] * 30),
        ("five_min_day", [rng.randint(0, 400) for _ in range(288)]),
    ]
    return [{"name": n, "values": v, "hex": encode_channel(v).hex()} for n, v in cases]


def hdlc_rows() -> list[dict[str, Any]]:
    """Line streams with noise, and the frames a deframer must recover."""
    frames = [bytes.fromhex(r["hex"]) for r in frame_rows()[:6]]
    special = bytes([0x7E, 0x7D, 0x00, 0x7E, 0x5E, 0x7D])
    cases: list[tuple[str, bytes]] = [
        ("clean", b"".join(stuff(f) for f in frames[:3])),
        ("escapes", stuff(special) + stuff(frames[0])),
        ("noise_before", b"\x13\x37\x00\xff" + stuff(frames[1])),
        ("noise_between", stuff(frames[0]) + b"\x55\xaa" + stuff(frames[2])),
        ("back_to_back_flags", b"\x7e\x7e\x7e" + stuff(frames[3]) + b"\x7e"),
        ("bad_escape", b"\x7e\x01\x7d\x00\x02\x7e" + stuff(frames[4])),
        ("aborted_by_flag", b"\x7e\x01\x02\x7d\x7e" + stuff(frames[5])),
        ("too_long", b"\x7e" + b"\x11" * 5000 + stuff(frames[0])),
    ]
    rows = []
    for name, stream in cases:
        d = Deframer()
        got = d.feed(stream)
        rows.append(
            {
                "name": name,
                "stream": stream.hex(),
                "frames": [f.hex() for f in got],
                "errors": d.errors,
            }
        )
    return rows


def key_rows() -> list[dict[str, Any]]:
    """Optical-probe keys (K_op) and download_auth MACs, for the firmware's twin."""
    rows = []
    for name, key, operator in (
        ("probe_key_op_1", KEY, 1),
        ("probe_key_op_0", KEY, 0),
        ("probe_key_op_max", meter_key(KEY, 1001, 1), 0xFFFF),
    ):
        k_op = probe_key(key, operator)
        nonce = bytes(range(0xA0, 0xB0))
        rows.append(
            {
                "name": name,
                "meter_key": key.hex(),
                "operator": operator,
                "probe_key": k_op.hex(),
                "nonce": nonce.hex(),
                "download_mac": download_mac(k_op, nonce, operator).hex(),
            }
        )
    return rows
