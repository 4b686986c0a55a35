# Frames of the firmware codec: every message type both ways, every decode
# error in SPEC.md's order, encode input validation, a mutation fuzz, and the
# golden vectors shared with the construct side (protocol/vectors/*.jsonl).
import json

from meter import auth, blocks, hdlc, ivblock, wire
from meter.crc import crc16
from meter.errors import (
    BadCrc,
    BadLength,
    MalformedFrame,
    MalformedPayload,
    OverlongFrame,
    ProtocolError,
    TruncatedFrame,
    UnknownMessageType,
    UnsupportedVersion,
)

KEY = bytes(range(100, 132))
NONCE = bytes(range(16))
_DIR = __file__.rsplit("/", 1)[0] if "/" in __file__ else "."
VECTORS = _DIR + "/../../protocol/vectors/"


def _raises(cls, fn, *args):
    try:
        fn(*args)
    except cls as e:
        if type(e) is not cls:
            raise AssertionError(f"expected {cls.__name__}, got {e!r}") from e
        return e
    raise AssertionError(f"expected {cls.__name__}")


SLOT = {
    "slot": 0,
    "action": 0,
    "start": 1700000000,
    "end": 0,
    "period_s": 86400,
    "offset_s": 3600,
    "what": 15,
}
EVENTS = [
    {"code": 1, "time": 1700000000, "data": 0},
    {"code": 4, "time": 1700000100, "data": 0xFFFFFFFF},
]
BLOCK = {
    "start": 1699920000,
    "interval_s": 900,
    "flags": [0] * 40 + [1, 3] + [0] * 54,
    "channels": [[(i * 37) % 101 for i in range(96)], [1000 + i for i in range(96)]],
}
SECTIONS = [
    {"tag": "clock", "body": {"time": 1700000000}},
    {"tag": "registers", "body": {"at": 1700000000, "values": [0, 127, 128, (1 << 64) - 1]}},
    {"tag": "midnight", "body": {"day": 1699920000, "values": [123456789, 0]}},
    {"tag": "intervals", "body": BLOCK},
    {"tag": "events", "body": EVENTS},
    {"tag": "schedules", "body": [SLOT, dict(SLOT, slot=3, action=1)]},
    {"tag": "config", "body": [{"key": 1, "value": 900}, {"key": 2, "value": -0x80000000}]},
]

BODIES = {
    "register": {
        "fw_version": "1.2.3-\u00e9\u20ac",
        "interval_s": 900,
        "capacity_days": 45,
        "utc_offset_min": -300,
        "meter_multiplier": 1,
        "channels": [
            {"kind": 1, "unit": 1, "multiplier": 1, "scaler": -3},
            {"kind": 3, "unit": 2, "multiplier": 65535, "scaler": 127},
        ],
    },
    "register_ack": {"status": 0},
    "config_set": {"items": [{"key": 1, "value": 900}, {"key": 5, "value": -1}]},
    "config_ack": {"acked_seq": 65535, "status": 7},
    "schedule_set": {"slots": [SLOT, dict(SLOT, slot=1, period_s=3600, end=1800000000)]},
    "schedule_ack": {"acked_seq": 3, "status": 0},
    "read_request": {"mode": 2, "start": 1699920000, "end": 1700006400, "what": 15},
    "read_response": {"request_seq": 12, "kind": 1, "part": 1, "parts": 1, "sections": SECTIONS},
    "read_ack": {"acked_seq": 12, "upto": 1700006400},
    "event": {"events": EVENTS},
    "event_ack": {"acked_seq": 0},
    "time_sync_request": {"t1_ms": 1700000000123},
    "time_sync_response": {"t1_ms": 1, "t2_ms": 1 << 40, "t3_ms": (1 << 64) - 1},
    "time_set": {"utc_ms": 1700000000999},
    "download_open": {"operator": 42},
    "download_challenge": {"nonce": NONCE},
    "download_auth": {"operator": 42, "mac": auth.download_mac(KEY, NONCE, 42)},
    "download_data": {"part": 2, "parts": 3, "sections": SECTIONS[3:]},
    "nack": {"nacked_type": 3, "nacked_seq": 9, "reason": 4},
    "key_set": {"version": 65535, "wrapped": bytes(range(1, 33))},
    "key_ack": {"acked_seq": 7, "version": 1, "status": 0},
}


def _fields(name, body=None, auth_=None, seq=1):
    return {
        "version": 1,
        "type": name,
        "seq": seq,
        "meter_id": 4000000001,
        "timestamp": 1700000000,
        "auth": auth_,
        "body": BODIES[name] if body is None else body,
    }


def _with_crc(b):
    b = bytearray(b)
    b.extend(crc16(b).to_bytes(2, "big"))
    return bytes(b)


def _raw(code, payload, flags=0, version=1, plen=None, trailer=b""):
    """A frame by hand: header, payload, auth trailer, correct CRC."""
    if plen is None:
        plen = len(payload)
    head = bytes([version, code, flags, 0, 1, 0, 0, 0, 7, 0x65, 0x53, 0xF1, 0x00])
    return _with_crc(head + plen.to_bytes(2, "big") + payload + trailer)


def test_every_message_type_round_trips():
    assert sorted(BODIES) == sorted(wire.MESSAGE_TYPES)
    for name in BODIES:
        f = _fields(name)
        raw = wire.encode(f)
        assert raw[1] == wire.MESSAGE_TYPES[name]
        assert wire.decode(raw) == f, name
        assert wire.encode(wire.decode(raw)) == raw


def test_every_message_type_round_trips_signed():
    for name in BODIES:
        f = _fields(name, auth_={"counter": 77, "mac": b"ignored"})
        raw = wire.encode(f, KEY)
        got = wire.decode(raw, KEY, 76)
        assert got["auth"]["counter"] == 77
        assert got["auth"]["mac"] == auth.frame_mac(KEY, raw[: len(raw) - 22], 77)
        f["auth"] = got["auth"]
        assert got == f
        assert wire.encode(got, KEY) == raw


def test_decode_accepts_bytearray_and_memoryview():
    raw = wire.encode(_fields("nack"))
    assert wire.decode(bytearray(raw)) == wire.decode(memoryview(b"xx" + raw)[2:])


def test_header_layout_and_crc_big_endian():
    raw = wire.encode(_fields("event_ack", seq=0x1234))
    assert raw.hex() == "010b001234ee6b28016553f10000020000" + raw[-2:].hex()
    assert int.from_bytes(raw[-2:], "big") == crc16(raw[:-2])
    assert len(raw) == 17 + 2


def test_each_section_kind_round_trips_alone():
    for s in SECTIONS:
        body = dict(BODIES["download_data"], sections=[s])
        f = _fields("download_data", body)
        assert wire.decode(wire.encode(f)) == f


def test_section_wire_layout():
    body = {"part": 1, "parts": 1, "sections": [{"tag": "clock", "body": {"time": 1}}]}
    raw = wire.encode(_fields("download_data", body))
    assert raw[15:-2].hex() == "010101010400000001"


def test_empty_lists_round_trip():
    for name, body in (
        ("event", {"events": []}),
        ("config_set", {"items": []}),
        ("read_response", dict(BODIES["read_response"], sections=[])),
        ("download_data", dict(BODIES["download_data"], sections=[{"tag": "events", "body": []}])),
        ("register", dict(BODIES["register"], fw_version="", channels=[])),
    ):
        f = _fields(name, body)
        assert wire.decode(wire.encode(f)) == f


def test_limits_round_trip():
    body = {"items": [{"key": 255, "value": 0x7FFFFFFF}] * 255}
    f = _fields("config_set", body, seq=65535)
    f["meter_id"] = f["timestamp"] = 0xFFFFFFFF
    assert wire.decode(wire.encode(f)) == f
    f = _fields("register", dict(BODIES["register"], fw_version="v" * 255))
    assert wire.decode(wire.encode(f)) == f


def _registers_body(sizes):
    secs = [{"tag": "registers", "body": {"at": 0, "values": [0] * k}} for k in sizes]
    return {"part": 1, "parts": 1, "sections": secs}


def test_max_payload_is_4096():
    # 3 + 15 sections of 263 bytes + one of 148 = 4096 payload bytes
    body = _registers_body([255] * 15 + [140])
    raw = wire.encode(_fields("download_data", body))
    assert len(raw) == 17 + 4096
    assert wire.decode(raw)["body"] == body
    body = _registers_body([255] * 15 + [141])
    _raises(BadLength, wire.encode, _fields("download_data", body))


def test_exactly_4096_payload_decodes_and_4097_is_bad_length():
    payload = b"\x00" + b"\x00" * 4095  # event with 0 events, then trailing bytes
    raw = _raw(0x0A, payload)
    _raises(MalformedPayload, wire.decode, raw)  # length fine, body has leftovers
    _raises(BadLength, wire.decode, _raw(0x0A, payload + b"\x00"))
    _raises(BadLength, wire.decode, _raw(0x0A, b"\x00", plen=0xFFFF))


# -- decode errors, in SPEC.md's order ---------------------------------------


def test_frame_length_reads_the_header():
    raw = wire.encode(_fields("register"))
    assert wire.frame_length(raw[:17]) == len(raw)
    signed = wire.encode(_fields("time_set", auth_={"counter": 1, "mac": b""}), KEY)
    assert wire.frame_length(signed) == 17 + 8 + 20 == len(signed)


def test_truncated_below_17_bytes():
    raw = wire.encode(_fields("event_ack"))
    for n in range(17):
        _raises(TruncatedFrame, wire.decode, raw[:n])


def test_truncated_is_checked_before_version():
    _raises(TruncatedFrame, wire.decode, b"\x02" * 16)


def test_bad_version():
    for v in (0, 2, 0xFF):
        _raises(UnsupportedVersion, wire.decode, _raw(0x0B, b"\x00\x01", version=v))
    # version is checked before the payload length and the CRC
    _raises(UnsupportedVersion, wire.decode, bytes([2]) + bytes(13) + b"\xff\xff" + bytes(5))


def test_bad_length_before_truncation():
    raw = _raw(0x0B, b"\x00\x01", plen=4097)
    _raises(BadLength, wire.decode, raw)


def test_truncated_against_stated_length():
    raw = wire.encode(_fields("register"))
    for cut in (1, 2, 10, len(raw) - 17):
        _raises(TruncatedFrame, wire.decode, raw[:-cut])
    signed = wire.encode(_fields("config_set", auth_={"counter": 1, "mac": b""}), KEY)
    _raises(TruncatedFrame, wire.decode, signed[:-20])  # AUTH flag set, trailer missing


def test_overlong():
    raw = wire.encode(_fields("nack"))
    _raises(OverlongFrame, wire.decode, raw + b"\x00")
    _raises(OverlongFrame, wire.decode, _with_crc(raw[:-2] + b"\x00"))
    # a frame without AUTH carrying an auth trailer is overlong
    signed = bytearray(wire.encode(_fields("config_set", auth_={"counter": 1, "mac": b""}), KEY))
    signed[2] = 0
    _raises(OverlongFrame, wire.decode, _with_crc(signed[:-2]))


def test_bad_crc():
    raw = wire.encode(_fields("read_request"))
    for i in (0 + 3, 10, len(raw) - 3, len(raw) - 2, len(raw) - 1):
        bad = bytearray(raw)
        bad[i] ^= 0x01
        _raises(BadCrc, wire.decode, bad)


def test_crc_checked_before_type_and_flags():
    raw = bytearray(_raw(0x7F, b"", flags=0x80))
    raw[-1] ^= 1
    _raises(BadCrc, wire.decode, raw)


def test_unknown_type():
    for code in (0x00, 0x16, 0x7F, 0xFF):
        _raises(UnknownMessageType, wire.decode, _raw(code, b""))
    # type is checked before the reserved flags
    _raises(UnknownMessageType, wire.decode, _raw(0x16, b"", flags=0x02))


def test_reserved_flags():
    for flags in (0x02, 0x80, 0xFE):
        _raises(MalformedFrame, wire.decode, _raw(0x0B, b"\x00\x01", flags=flags))
    # AUTH with a reserved bit: the trailer counts toward the length, then flags fail
    _raises(MalformedFrame, wire.decode, _raw(0x0B, b"\x00\x01", flags=0x03, trailer=bytes(20)))


def test_flags_checked_before_body():
    _raises(MalformedFrame, wire.decode, _raw(0x0B, b"", flags=0x40))


def test_trailing_payload_bytes():
    _raises(MalformedPayload, wire.decode, _raw(0x0B, b"\x00\x01\x00"))
    _raises(MalformedPayload, wire.decode, _raw(0x02, b"\x00\x00"))


def test_short_payloads():
    for name in BODIES:
        raw = wire.encode(_fields(name))
        payload = raw[15:-2]
        for n in range(len(payload)):
            if n == len(payload) - 1 or n < 40:
                _raises(MalformedPayload, wire.decode, _raw(raw[1], payload[:n]))


def test_payload_non_minimal_varint():
    # registers section whose value 5 is written 85 00
    body = bytes.fromhex("010101020700000000018500")
    _raises(MalformedPayload, wire.decode, _raw(0x12, body))
    ok = bytes.fromhex("0101010206000000000105")
    assert wire.decode(_raw(0x12, ok))["body"]["sections"][0]["body"]["values"] == [5]
    # non-minimal section length
    body = bytes.fromhex("01010101840000000000")
    _raises(MalformedPayload, wire.decode, _raw(0x12, body))


def test_section_length_must_match_body():
    # clock section claiming 5 bytes for a 4-byte body, and 3 for it
    _raises(MalformedPayload, wire.decode, _raw(0x12, bytes.fromhex("01010101050000000000")))
    _raises(MalformedPayload, wire.decode, _raw(0x12, bytes.fromhex("0101010103000000")))
    _raises(MalformedPayload, wire.decode, _raw(0x12, bytes.fromhex("010101010900000000")))


def test_unknown_section_tag():
    for tag in (0, 8, 0xFF):
        body = bytes([1, 1, 1, tag, 4]) + bytes(4)
        _raises(MalformedPayload, wire.decode, _raw(0x12, body))


def _block_frame(block_bytes):
    n = len(block_bytes)
    return _raw(0x12, bytes([1, 1, 1, 4]) + bytes(blocks.encode_varint(n)) + block_bytes)


def test_block_bad_widths_and_runs_in_a_frame():
    # one value 0, one channel: stream 80 (DELTA, width 0)
    ok = bytes.fromhex("0000000103840001010101000180")
    assert wire.decode(_block_frame(ok))["body"]["sections"][0]["body"] == {
        "start": 1,
        "interval_s": 900,
        "flags": [0],
        "channels": [[0]],
    }
    head = "000000010384000101010100"
    bads = [
        head + "0100",  # FOR: base varint missing
        head + "0187",  # DELTA width code 7
        head + "050700000000",  # FOR width code 7
        head + "028000",  # stream one byte too long
        head + "028140",  # width 1: padding not zero
        head + "018000",  # bytes after the block
        head + "03008000",  # non-minimal base
        head + "028180",  # delta below zero
        "0000000103840001010102000180",  # runs sum 2 != 1
        "00000001038400020102010001000180",  # equal adjacent runs
        "0000000103840001010101400180",  # reserved flag bit
        "00000001038400000000",  # count 0
        "000000010384000101010100810080",  # non-minimal length
        "000000010384000101010100",  # channel missing
    ]
    for h in bads:
        _raises(MalformedPayload, wire.decode, _block_frame(bytes.fromhex(h)))


def test_invalid_utf8_fw_version():
    good = wire.encode(_fields("register"))
    payload = bytearray(good[15:-2])
    for bad in (
        b"\xc0\x80",
        b"\xed\xa0\x80",
        b"\xf4\x90\x80\x80",
        b"\xe0\x80\x80",
        b"\xff",
        b"a\xc3",
    ):
        p = bytes([len(bad)]) + bad + payload[1 + payload[0] :]
        _raises(MalformedPayload, wire.decode, _raw(0x01, p))
    for ok in (
        b"\xc2\x80",
        b"\xed\x9f\xbf",
        b"\xf4\x8f\xbf\xbf",
        b"\xe0\xa0\x80",
        b"\xf0\x90\x80\x80",
    ):
        p = bytes([len(ok)]) + ok + payload[1 + payload[0] :]
        assert wire.decode(_raw(0x01, p))["body"]["fw_version"].encode() == ok


def test_events_count_larger_than_payload():
    body = bytes([1, 1, 1, 5, 10]) + bytes(blocks.encode_varint(1 << 40)) + bytes(4)
    _raises(MalformedPayload, wire.decode, _raw(0x12, body))


def test_fuzz_decode_raises_only_protocol_errors():
    seeds = [wire.encode(_fields(n)) for n in ("register", "read_response", "config_set", "event")]
    seeds.append(wire.encode(_fields("schedule_set", auth_={"counter": 3, "mac": b""}), KEY))
    x = 12345
    outcomes = {}
    for i in range(1500):
        src = seeds[i % len(seeds)]
        b = bytearray(src)
        x = (x * 1103515245 + 12345) & 0x7FFFFFFF
        for _ in range(1 + x % 4):
            x = (x * 1103515245 + 12345) & 0x7FFFFFFF
            pos = x % len(b)
            x = (x * 1103515245 + 12345) & 0x7FFFFFFF
            op = x % 3
            if op == 0:
                b[pos] = x >> 8 & 0xFF
            elif op == 1 and len(b) > 18 and pos > 15:
                b[pos : pos + 1] = b""
            else:
                b[pos:pos] = bytes([x >> 16 & 0xFF])
        if x & 1:  # keep the header consistent so the body parsers get exercised
            b[0] = 1
            b[1] = src[1]
            b[2] = src[2]
            plen = len(b) - 17 - (20 if b[2] & 1 else 0)
            if 0 <= plen <= 4096:
                b[13:15] = plen.to_bytes(2, "big")
            b = bytearray(_with_crc(b[:-2]))
        try:
            wire.decode(bytes(b), KEY if x & 2 else None, 1 if x & 4 else None)
            name = "ok"
        except ProtocolError as e:
            name = type(e).__name__
        outcomes[name] = outcomes.get(name, 0) + 1
    assert outcomes.get("MalformedPayload", 0) > 50, outcomes


def test_decode_rejects_non_bytes_with_type_error():
    # not line noise but a caller's bug: TypeError, not a ProtocolError
    _raises(TypeError, wire.decode, "01" * 20)
    _raises(TypeError, wire.decode, None)


# -- encode validation -----------------------------------------------------------


def test_encode_rejects_out_of_range_and_wrong_types():
    bads = [
        ("event_ack", {"acked_seq": 65536}),
        ("event_ack", {"acked_seq": -1}),
        ("event_ack", {"acked_seq": 1.0}),
        ("event_ack", {"acked_seq": True}),
        ("event_ack", {"acked_seq": "1"}),
        ("event_ack", {}),
        ("event_ack", []),
        ("register", dict(BODIES["register"], utc_offset_min=32768)),
        ("register", dict(BODIES["register"], fw_version="v" * 256)),
        ("register", dict(BODIES["register"], fw_version=b"1.0")),
        ("register", dict(BODIES["register"], channels=[{"kind": 1}])),
        ("register", dict(BODIES["register"], channels=[BODIES["register"]["channels"][0]] * 256)),
        ("register", dict(BODIES["register"], channels={"kind": 1})),
        ("config_set", {"items": [{"key": 1, "value": 1 << 31}]}),
        ("time_set", {"utc_ms": 1 << 64}),
        ("download_challenge", {"nonce": bytes(15)}),
        ("download_challenge", {"nonce": "00" * 16}),
        ("download_auth", {"operator": 1, "mac": bytes(16)}),
        ("read_response", dict(BODIES["read_response"], sections=[{"tag": "nope", "body": {}}])),
        ("read_response", dict(BODIES["read_response"], sections=[{"tag": "clock"}])),
        ("read_response", dict(BODIES["read_response"], sections=[SECTIONS[0]] * 256)),
        (
            "read_response",
            dict(
                BODIES["read_response"],
                sections=[{"tag": "registers", "body": {"at": 0, "values": [-1]}}],
            ),
        ),
        (
            "read_response",
            dict(BODIES["read_response"], sections=[{"tag": "intervals", "body": {}}]),
        ),
        (
            "read_response",
            dict(
                BODIES["read_response"],
                sections=[{"tag": "intervals", "body": dict(BLOCK, flags=[])}],
            ),
        ),
    ]
    for name, body in bads:
        try:
            wire.encode(_fields(name, body))
        except ProtocolError as e:
            assert type(e) is MalformedPayload, (name, body, e)
        else:
            raise AssertionError(f"encoded {name} {body!r}")


def test_encode_rejects_bad_header_fields():
    for k, v in (("seq", 65536), ("meter_id", -1), ("timestamp", 1 << 32), ("seq", None)):
        f = _fields("nack")
        f[k] = v
        _raises(MalformedPayload, wire.encode, f)
    f = _fields("nack")
    del f["meter_id"]
    _raises(MalformedPayload, wire.encode, f)
    del f["body"]
    f["meter_id"] = 1
    _raises(MalformedPayload, wire.encode, f)
    _raises(MalformedPayload, wire.encode, None)


def test_encode_version_and_type():
    f = _fields("nack")
    f["version"] = 2
    _raises(UnsupportedVersion, wire.encode, f)
    del f["version"]
    assert wire.decode(wire.encode(f))["version"] == 1
    for t in ("nope", 0x13, None):
        f["type"] = t
        _raises(UnknownMessageType, wire.encode, f)
    f = _fields("nack")
    del f["auth"]
    assert wire.decode(wire.encode(f))["auth"] is None


def test_encode_key_without_auth_is_unused():
    f = _fields("nack")
    assert wire.encode(f, KEY) == wire.encode(f)


def test_encode_payload_over_4096_is_bad_length():
    body = {"events": [{"code": 1, "time": 2, "data": 3}] * 255}
    sec = [{"tag": "events", "body": body["events"]}] * 2
    _raises(
        BadLength, wire.encode, _fields("download_data", {"part": 1, "parts": 1, "sections": sec})
    )


def test_decoded_frame_carried_by_hdlc():
    raw = wire.encode(_fields("read_response"))
    assert hdlc.Deframer().feed(hdlc.frame(raw)) == [raw]


# -- golden vectors (generated by the construct side: make vectors) -------------


def _load(name):
    # missing files must fail this test: the vectors are the contract
    with open(VECTORS + name) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    assert rows, name + " is empty"
    return rows


def _from_json(obj, key=None):
    """JSON form -> canonical fields: values of keys nonce, mac and wrapped are hex."""
    if type(obj) is dict:
        return {k: _from_json(v, k) for k, v in obj.items()}
    if type(obj) is list:
        return [_from_json(v) for v in obj]
    if key in ("nonce", "mac", "wrapped") and type(obj) is str:
        return bytes.fromhex(obj)
    return obj


def test_vectors_frames():
    rows = _load("frames.jsonl")
    pos = neg = 0
    for v in rows:
        raw = bytes.fromhex(v["hex"])
        key = bytes.fromhex(v["key"]) if v.get("key") else None
        if "error" in v:
            try:
                wire.decode(raw, key, v.get("last_counter"))
            except ProtocolError as e:
                assert type(e).__name__ == v["error"], (v["name"], repr(e))
            else:
                raise AssertionError("{}: decoded, expected {}".format(v["name"], v["error"]))
            neg += 1
            continue
        fields = _from_json(v["fields"])
        got = wire.decode(raw)
        assert got == fields, (v["name"], got, fields)
        if key is not None:
            wire.decode(raw, key)  # its MAC verifies
        assert wire.encode(fields, key).hex() == v["hex"], v["name"]
        pos += 1
    assert pos and neg, (pos, neg)


def test_vectors_blocks():
    for v in _load("blocks.jsonl"):
        assert bytes(ivblock.encode_channel(v["values"])).hex() == v["hex"], v["name"]
        assert ivblock.decode_channel(bytes.fromhex(v["hex"]), len(v["values"])) == v["values"]


def test_vectors_hdlc():
    for v in _load("hdlc.jsonl"):
        stream = bytes.fromhex(v["stream"])
        want = [bytes.fromhex(h) for h in v["frames"]]
        for size in (1, 2, 3, 5, 64, max(1, len(stream))):
            d = hdlc.Deframer()
            got = []
            for i in range(0, len(stream), size):
                got.extend(d.feed(stream[i : i + size]))
            assert got == want, (v["name"], size)
            assert d.errors == v["errors"], (v["name"], size, d.errors)
