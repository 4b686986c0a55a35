# CRC-16/X-25 and HMAC-SHA256 of the firmware codec: published check values
# and RFC 4231 vectors, then the frame MAC and replay guard.
from meter import auth, wire
from meter.crc import crc16
from meter.errors import BadMac, MalformedPayload, Replay

MPY_SKIP_TESTS = {
    "test_crc_matches_crcmod": "crcmod is CPython-only",
    "test_hmac_matches_stdlib_hmac": "no hmac module on MicroPython",
}

KEY = bytes(range(32))


def _raises(cls, fn, *args, **kw):
    try:
        fn(*args, **kw)
    except cls as e:
        return e
    raise AssertionError(f"expected {cls.__name__}")


def test_crc_check_value_x25_123456789():
    assert crc16(b"123456789") == 0x906E  # the catalogue's check value


def test_crc_of_nothing_is_zero():
    assert crc16(b"") == 0


def test_crc_incremental_over_memoryview_slices():
    data = bytes(range(256)) * 3
    whole = crc16(data)
    mv = memoryview(data)
    for cut in (0, 1, 7, 255, 256, 500, len(data)):
        assert crc16(mv[cut:], crc16(mv[:cut])) == whole
    c = 0
    for i in range(0, len(data), 13):
        c = crc16(mv[i : i + 13], c)
    assert c == whole


def test_crc_detects_single_bit_flips():
    data = bytearray(b"\x01\x08\x00\x00\x01\x00\x00\x00\x07")
    good = crc16(data)
    for i in range(len(data) * 8):
        data[i // 8] ^= 1 << (i % 8)
        assert crc16(data) != good
        data[i // 8] ^= 1 << (i % 8)


def test_crc_matches_crcmod():
    import crcmod.predefined

    ref = crcmod.predefined.mkCrcFun("x-25")
    x = 1
    for n in range(0, 300, 7):
        data = bytearray()
        for _ in range(n):
            x = (x * 1103515245 + 12345) & 0x7FFFFFFF
            data.append(x >> 16 & 0xFF)
        assert crc16(data) == ref(bytes(data))


# RFC 4231 section 4, HMAC-SHA-256 outputs as published.
_LONG_DATA = (
    b"This is a test using a larger than block-size key and a larger than "
    b"block-size data. The key needs to be hashed before being used by the "
    b"HMAC algorithm."
)
RFC4231 = (
    (
        b"\x0b" * 20,
        b"Hi There",
        "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
    ),
    (
        b"Jefe",
        b"what do ya want for nothing?",
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
    ),
    (
        b"\xaa" * 20,
        b"\xdd" * 50,
        "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe",
    ),
    (
        bytes(range(1, 26)),
        b"\xcd" * 50,
        "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b",
    ),
    (
        b"\xaa" * 131,
        b"Test Using Larger Than Block-Size Key - Hash Key First",
        "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
    ),
    (
        b"\xaa" * 131,
        _LONG_DATA,
        "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2",
    ),
)


def test_hmac_rfc4231_cases_1_2_3_4_6_7():
    for key, data, want in RFC4231:
        assert auth.hmac_sha256(key, data).hex() == want


def test_hmac_rfc4231_case_5_truncated_to_128_bits():
    mac = auth.hmac_sha256(b"\x0c" * 20, b"Test With Truncation")
    assert mac[:16].hex() == "a3b6167473100ee06e0c796c2955552b"


def test_hmac_over_memoryview_and_bytearray_key():
    key, data, want = RFC4231[1]
    assert auth.hmac_sha256(bytearray(key), memoryview(b"xx" + data)[2:]).hex() == want


def test_hmac_key_of_exactly_one_block():
    # 64-byte keys are used as is, 65-byte keys are hashed first: both edges
    a = auth.hmac_sha256(b"k" * 64, b"m")
    b = auth.hmac_sha256(b"k" * 65, b"m")
    assert a != b and len(a) == len(b) == 32


def test_hmac_matches_stdlib_hmac():
    import hashlib
    import hmac

    for klen in (0, 1, 16, 32, 63, 64, 65, 200):
        key = bytes((i * 7 + 3) & 0xFF for i in range(klen))
        for msg in (b"", b"a", bytes(range(256)) * 5):
            assert auth.hmac_sha256(key, msg) == hmac.new(key, msg, hashlib.sha256).digest()


def test_compare_is_plain_equality():
    assert auth.compare(b"abc", b"abc")
    assert auth.compare(b"", b"")
    assert not auth.compare(b"abc", b"abd")
    assert not auth.compare(b"abc", b"ab")
    assert auth.compare(memoryview(b"xabc")[1:], b"abc")


def _config_set(counter=5):
    return {
        "version": 1,
        "type": "config_set",
        "seq": 9,
        "meter_id": 123456,
        "timestamp": 1700000000,
        "auth": {"counter": counter, "mac": b""},
        "body": {"items": [{"key": 1, "value": 900}]},
    }


def test_frame_mac_covers_header_payload_counter():
    frame = wire.encode(_config_set(), KEY)
    plen = (frame[13] << 8) | frame[14]
    end = 15 + plen
    assert frame[2] & 1
    signed = frame[:end]
    assert frame[end : end + 4] == b"\x00\x00\x00\x05"
    mac = auth.hmac_sha256(KEY, signed + b"\x00\x00\x00\x05")[:16]
    assert frame[end + 4 : end + 20] == mac == auth.frame_mac(KEY, signed, 5)
    assert wire.decode(frame)["auth"] == {"counter": 5, "mac": mac}


def test_verify_frame_accepts_good_mac_and_newer_counter():
    frame = wire.encode(_config_set(7), KEY)
    assert auth.verify_frame(frame, KEY) == 7
    assert auth.verify_frame(frame, KEY, 6) == 7
    assert wire.decode(frame, key=KEY, last_counter=6)["auth"]["counter"] == 7


def test_verify_frame_rejects_wrong_key_and_tampering():
    frame = wire.encode(_config_set(), KEY)
    _raises(BadMac, auth.verify_frame, frame, b"\x00" * 32)
    _raises(BadMac, wire.decode, frame, b"\x00" * 32)
    # flip a payload bit and fix up the CRC: only the MAC can tell
    bad = bytearray(frame)
    bad[16] ^= 1
    bad[-2:] = crc16(bad[:-2]).to_bytes(2, "big")
    wire.decode(bad)  # structurally fine
    _raises(BadMac, wire.decode, bad, KEY)


def test_replay_counter_not_newer():
    frame = wire.encode(_config_set(7), KEY)
    _raises(Replay, auth.verify_frame, frame, KEY, 7)
    _raises(Replay, wire.decode, frame, KEY, 8)
    _raises(Replay, wire.decode, frame, None, 7)


def test_bad_mac_is_checked_before_replay():
    frame = wire.encode(_config_set(7), KEY)
    _raises(BadMac, wire.decode, frame, b"\x01" * 32, 100)


def test_m20_every_type_but_the_probes_without_trailer_is_bad_mac_with_key():
    f = _config_set()
    f["auth"] = None
    frame = wire.encode(f)
    assert wire.decode(frame)["auth"] is None
    _raises(BadMac, wire.decode, frame, KEY)
    _raises(BadMac, auth.verify_frame, frame, KEY)
    # every frame is signed (SPEC "Authentication"): acks and uplinks too
    for name, body in (
        ("register_ack", {"status": 0}),
        ("read_ack", {"acked_seq": 1, "upto": 0}),
        ("event", {"events": []}),
        ("key_ack", {"acked_seq": 1, "version": 1, "status": 0}),
    ):
        raw = wire.encode(
            {"type": name, "seq": 1, "meter_id": 1, "timestamp": 0, "auth": None, "body": body}
        )
        _raises(BadMac, wire.decode, raw, KEY)
    # only the optical probe's download_open/download_auth go without
    raw = wire.encode(
        {
            "type": "download_open",
            "seq": 1,
            "meter_id": 1,
            "timestamp": 0,
            "auth": None,
            "body": {"operator": 7},
        }
    )
    assert wire.decode(raw, KEY)["body"] == {"operator": 7}


def test_m20_seal_signs_in_place_as_encode_does():
    f = _config_set(77)
    raw = wire.encode(f, KEY)
    n = len(raw) - 22
    buf = bytearray(raw[:n]) + bytearray(22)
    auth.seal(buf, n, KEY, 77)
    assert bytes(buf) == raw and auth.verify_frame(buf, KEY, 76) == 77
    _raises(MalformedPayload, auth.seal, buf, n, KEY, 1 << 32)


def test_m20_unwrap_key_inverts_the_wrap():
    new = bytes(range(100, 132))
    pad = auth.unwrap_key(KEY, bytes(32), 3)
    wrapped = bytes(a ^ b for a, b in zip(new, pad))
    assert auth.unwrap_key(KEY, wrapped, 3) == new
    assert auth.unwrap_key(KEY, wrapped, 4) != new  # the version is bound in
    assert auth.unwrap_key(bytes(32), wrapped, 3) != new  # only the current key unwraps


def test_encode_auth_needs_key_and_valid_counter():
    _raises(MalformedPayload, wire.encode, _config_set())
    _raises(MalformedPayload, wire.encode, _config_set(-1), KEY)
    _raises(MalformedPayload, wire.encode, _config_set(1 << 32), KEY)
    assert wire.decode(wire.encode(_config_set(0xFFFFFFFF), KEY))["auth"]["counter"] == 0xFFFFFFFF


def test_download_mac_is_full_hmac_of_nonce_and_operator():
    nonce = bytes(range(16))
    mac = auth.download_mac(KEY, nonce, 0x1234)
    assert mac == auth.hmac_sha256(KEY, nonce + b"\x12\x34")
    assert len(mac) == 32
    _raises(MalformedPayload, auth.download_mac, KEY, nonce, 0x10000)
