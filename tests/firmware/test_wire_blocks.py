# Interval-block pieces of the firmware codec: varint, zigzag, flag runs and
# the FOR/DELTA channel bit streams (canonical choice, non-canonical decode).
from meter import blocks, ivblock
from meter.errors import MalformedPayload, ProtocolError


def _raises(cls, fn, *args):
    try:
        fn(*args)
    except cls as e:
        return e
    raise AssertionError(f"expected {cls.__name__}")


def _rand_values(seed, n, spread):
    x = seed
    out = []
    v = spread // 2
    for _ in range(n):
        x = (x * 1103515245 + 12345) & 0x7FFFFFFF
        v = (v + (x >> 8) % (2 * spread + 1) - spread) % (blocks.MAX_VALUE + 1)
        out.append(v)
    return out


def test_bitlen_matches_definition():
    assert blocks.bitlen(0) == 0
    assert blocks.bitlen(1) == 1
    assert blocks.bitlen(255) == 8
    assert blocks.bitlen(256) == 9
    assert blocks.bitlen(0xFFFF) == 16
    assert blocks.bitlen(0x10000) == 17
    assert blocks.bitlen(0xFFFFFFFF) == 32
    assert blocks.bitlen(1 << 40) == 41


def test_zigzag_maps_and_inverts():
    assert [blocks.zigzag(d) for d in (0, -1, 1, -2, 2)] == [0, 1, 2, 3, 4]
    for d in (0, 1, -1, 1000, -1000, (1 << 31) - 1, -((1 << 31) - 1)):
        assert ivblock.unzigzag(blocks.zigzag(d)) == d
    assert blocks.zigzag(-((1 << 31) - 1)) == (1 << 32) - 3


def test_varint_round_trip_and_minimal():
    cases = (
        (0, "00"),
        (1, "01"),
        (127, "7f"),
        (128, "8001"),
        (300, "ac02"),
        (16383, "ff7f"),
        (16384, "808001"),
        ((1 << 64) - 1, "ffffffffffffffffff01"),
    )
    for v, h in cases:
        assert bytes(blocks.encode_varint(v)).hex() == h
        assert blocks.decode_varint(bytes.fromhex(h)) == (v, len(h) // 2)


def test_varint_decode_at_offset_and_bounded_by_end():
    buf = bytes.fromhex("ff8001ff")
    assert blocks.decode_varint(buf, 1) == (128, 3)
    _raises(MalformedPayload, blocks.decode_varint, buf, 1, 2)


def test_varint_rejects_non_minimal():
    for h in ("8000", "ff00", "808000", "8180808000"):
        _raises(MalformedPayload, blocks.decode_varint, bytes.fromhex(h))


def test_varint_rejects_more_than_10_bytes_and_over_64_bits():
    _raises(MalformedPayload, blocks.decode_varint, bytes.fromhex("ff" * 10 + "01"))
    _raises(MalformedPayload, blocks.decode_varint, bytes.fromhex("80" * 10))
    _raises(MalformedPayload, blocks.decode_varint, bytes.fromhex("ffffffffffffffffff02"))
    _raises(MalformedPayload, blocks.decode_varint, bytes.fromhex("80" * 9 + "7f"))


def test_varint_rejects_truncated():
    for h in ("", "80", "ffff"):
        _raises(MalformedPayload, blocks.decode_varint, bytes.fromhex(h))


def test_varint_encode_rejects_out_of_range():
    for v in (-1, 1 << 64, 1.5, "1", True, None):
        _raises(MalformedPayload, blocks.encode_varint, v)


def test_runs_encode_maximal():
    assert ivblock.encode_runs([0, 0, 0]) == [(3, 0)]
    assert ivblock.encode_runs([0, 1, 1, 0, 0x10]) == [(1, 0), (2, 1), (1, 0), (1, 0x10)]
    assert ivblock.encode_runs([]) == []


def test_runs_decode_round_trip():
    flags = [0, 0, 1, 1, 1, 0x1F, 0, 0, 0, 2]
    assert ivblock.decode_runs(ivblock.encode_runs(flags), len(flags)) == flags


def test_runs_reject_reserved_bits():
    for f in (0x20, 0x40, 0x80, 0xFF, -1, 256):
        _raises(MalformedPayload, ivblock.encode_runs, [0, f])
    _raises(MalformedPayload, ivblock.decode_runs, [(1, 0x20)], 1)


def test_runs_reject_not_summing_to_count():
    _raises(MalformedPayload, ivblock.decode_runs, [(2, 0), (1, 1)], 4)
    _raises(MalformedPayload, ivblock.decode_runs, [(2, 0), (3, 1)], 4)
    _raises(MalformedPayload, ivblock.decode_runs, [], 1)


def test_runs_reject_zero_run_and_equal_neighbours():
    _raises(MalformedPayload, ivblock.decode_runs, [(0, 0), (2, 1)], 2)
    _raises(MalformedPayload, ivblock.decode_runs, [(1, 1), (1, 1)], 2)


def test_channel_constant_group_is_for_with_zero_width():
    # FOR: header 00 (width 0), base varint 05, no value bytes; DELTA would
    # need width 4 for zigzag(5) = 10: 16 bytes
    assert bytes(ivblock.encode_channel([5] * 32)).hex() == "0005"
    # the 33rd value is its own group: DELTA width 0 (0 bytes) beats FOR (1)
    assert bytes(ivblock.encode_channel([5] * 33)).hex() == "000580"


def test_channel_ramp_is_delta():
    # zigzag deltas 0, 2, 2, ... at width 2: 8 bytes beat 1 + 32 for FOR width 8
    assert bytes(ivblock.encode_channel(list(range(32)))).hex() == "822a" + "aa" * 7


def test_channel_tie_goes_to_for():
    # n=5, base 0: FOR 1 + ceil(5*1/8) = 2 bytes, DELTA ceil(5*2/8) = 2 -> FOR
    assert bytes(ivblock.encode_channel([0, 1, 0, 1, 0])).hex() == "010050"
    # n=4: DELTA 1 byte beats FOR 1 + 1
    assert bytes(ivblock.encode_channel([0, 1, 2, 3])).hex() == "822a"


def test_channel_widths_round_up_to_powers_of_two():
    cases = (
        # spread 5 (3 bits) at width 4: FOR 2 + 2 bytes beats DELTA at 16 bits
        ([1000, 1005, 1000], "03e8070500"),
        # spread 200 at width 8: FOR 2 + 3 beats DELTA 6
        ([500, 700, 500], "04f40300c800"),
        # spread 300 at width 16: FOR 3 + 6 beats DELTA at 32 bits (12)
        ([100000, 100300, 100000], "05a08d060000012c0000"),
        # DELTA at width 32 (12 bytes) beats FOR 1 + 12
        ([0, 1 << 20, 0], "860000000000200000001fffff"),
        # width 1 packs most significant bit first; tie (3 bytes each) -> FOR
        ([0, 0, 1, 1, 1, 1, 1, 1, 1, 1], "01003fc0"),
        # DELTA at width 1 from the previous group's last value: zigzag 0,1,0,1
        ([5] * 32 + [5, 4, 4, 3], "00058150"),
    )
    for vals, h in cases:
        assert bytes(ivblock.encode_channel(vals)).hex() == h, vals
        assert ivblock.decode_channel(bytes.fromhex(h), len(vals)) == vals


def test_channel_prev_carries_across_groups():
    vals = [1000] * 32 + [1001] * 32
    # FOR base 1000 (e807) width 0, then FOR base 1001: 2 bytes beat DELTA's 8
    assert bytes(ivblock.encode_channel(vals)).hex() == "00e80700e907"
    assert ivblock.decode_channel(bytes.fromhex("00e80700e907"), 64) == vals
    # one value after the group: DELTA from prev=1000, zigzag(1) = 2 at width 2
    vals = [1000] * 32 + [1001]
    assert bytes(ivblock.encode_channel(vals)).hex() == "00e8078280"
    assert ivblock.decode_channel(bytes.fromhex("00e8078280"), 33) == vals


def test_channel_empty():
    assert bytes(ivblock.encode_channel([])) == b""
    assert ivblock.decode_channel(b"", 0) == []


def test_channel_decoder_accepts_non_canonical():
    # [5]*4 as DELTA width 4: zigzag(5)=10 then 0s
    assert ivblock.decode_channel(bytes.fromhex("83a000"), 4) == [5] * 4
    # FOR at width 8 with a base below the minimum
    assert ivblock.decode_channel(bytes.fromhex("040302020202"), 4) == [5] * 4
    # width 32 for a zero
    assert ivblock.decode_channel(bytes.fromhex("8600000000"), 1) == [0]


def test_channel_rejects_bad_width_code():
    for h in ("87", "07", "7f", "ff", "0700"):
        _raises(MalformedPayload, ivblock.decode_channel, bytes.fromhex(h + "00000000"), 1)


def test_channel_rejects_bad_base_varint():
    _raises(MalformedPayload, ivblock.decode_channel, bytes.fromhex("008000"), 1)  # non-minimal
    _raises(MalformedPayload, ivblock.decode_channel, bytes.fromhex("00808080808001"), 1)  # > 5
    _raises(MalformedPayload, ivblock.decode_channel, bytes.fromhex("0080"), 1)  # truncated


def test_channel_rejects_truncated_and_too_long():
    enc = bytes(ivblock.encode_channel(list(range(40))))
    _raises(MalformedPayload, ivblock.decode_channel, enc[:-1], 40)
    _raises(MalformedPayload, ivblock.decode_channel, enc + b"\x00", 40)
    _raises(MalformedPayload, ivblock.decode_channel, enc, 45)
    _raises(MalformedPayload, ivblock.decode_channel, enc, 39)
    _raises(MalformedPayload, ivblock.decode_channel, b"", 1)


def test_channel_short_stream_fails_before_allocating():
    # 65535 values need at least 2048 group headers (32 values each): fail without a
    # 65535 list. The good case is smaller: a 0.5 MB list on a 2 MB MicroPython heap
    # fails now and then on fragmentation alone (seen in CI).
    _raises(MalformedPayload, ivblock.decode_channel, b"\x80", 65535)
    _raises(MalformedPayload, ivblock.decode_channel, b"\x80" * 63, 2048)
    out = ivblock.decode_channel(b"\x80" * 64, 2048)
    assert len(out) == 2048 and not any(out)


def test_channel_rejects_nonzero_padding():
    assert ivblock.decode_channel(bytes.fromhex("010050"), 5) == [0, 1, 0, 1, 0]
    _raises(MalformedPayload, ivblock.decode_channel, bytes.fromhex("010051"), 5)
    assert ivblock.decode_channel(bytes.fromhex("8228"), 3) == [0, 1, 2]
    _raises(MalformedPayload, ivblock.decode_channel, bytes.fromhex("822b"), 3)


def test_channel_rejects_values_out_of_range():
    # DELTA below zero: zigzag 1 = -1 from prev 0
    _raises(MalformedPayload, ivblock.decode_channel, bytes.fromhex("8180"), 1)
    # FOR base 2^31-1 plus 1
    _raises(MalformedPayload, ivblock.decode_channel, bytes.fromhex("01ffffffff0780"), 1)
    assert ivblock.decode_channel(bytes.fromhex("01ffffffff0700"), 1) == [blocks.MAX_VALUE]
    # a base of 2^31 alone is out of range too
    _raises(MalformedPayload, ivblock.decode_channel, bytes.fromhex("008080808008"), 1)
    # DELTA up to 2^31 - 1 (zigzag 2^32 - 2) and then one more
    _raises(MalformedPayload, ivblock.decode_channel, bytes.fromhex("86fffffffe00000002"), 2)
    s = bytes.fromhex("86fffffffe00000000")
    assert ivblock.decode_channel(s, 2) == [blocks.MAX_VALUE] * 2
    for bad in (-1, blocks.MAX_VALUE + 1, 1.0, None, True):
        _raises(MalformedPayload, ivblock.encode_channel, [0, bad])


def test_channel_round_trips():
    cases = [
        [0],
        [blocks.MAX_VALUE],
        [0, blocks.MAX_VALUE, 0, blocks.MAX_VALUE],
        [blocks.MAX_VALUE] * 17,
        list(range(15)),
        list(range(16)),
        list(range(17)),
        _rand_values(1, 96, 50),
        _rand_values(2, 96, 100000),
        _rand_values(3, 33, blocks.MAX_VALUE),
        _rand_values(4, 2880, 7),
    ]
    for vals in cases:
        enc = ivblock.encode_channel(vals)
        assert ivblock.decode_channel(enc, len(vals)) == vals
        assert ivblock.decode_channel(memoryview(b"x" + enc)[1:], len(vals)) == vals


def test_block_round_trip():
    block = {
        "start": 1700000000,
        "interval_s": 900,
        "flags": [0] * 10 + [1] * 2 + [0] * 84,  # 1: power_failed (SPEC flag bit 0)
        "channels": [_rand_values(9, 96, 40), list(range(96)), [0] * 96],
    }
    enc = ivblock.encode_block(block)
    assert ivblock.decode_block(enc) == block
    assert ivblock.decode_block(memoryview(bytes(enc))) == block


def test_block_layout():
    block = {"start": 1, "interval_s": 900, "flags": [0, 0, 8], "channels": [[5, 5, 5]]}
    enc = bytes(ivblock.encode_block(block))
    ch = bytes(ivblock.encode_channel([5, 5, 5]))
    want = bytes.fromhex("0000000103840003010202000108") + bytes([len(ch)]) + ch
    assert enc == want


def test_block_no_channels():
    block = {"start": 0, "interval_s": 60, "flags": [1], "channels": []}
    assert ivblock.decode_block(ivblock.encode_block(block)) == block


def test_block_encode_validates():
    good = {"start": 1, "interval_s": 900, "flags": [0, 0], "channels": [[1, 2]]}
    bads = [
        dict(good, flags=[]),
        dict(good, flags=bytes(65536), channels=[]),  # a 64 KB stand-in: a 0.5 MB list can fail on
        # a fragmented 2 MB MicroPython heap; the count is checked before any flag is read
        dict(good, channels=[[1, 2, 3]]),
        dict(good, channels=[[1, 2]] * 256),
        dict(good, start=-1),
        dict(good, start=1 << 32),
        dict(good, interval_s=1 << 16),
        dict(good, flags=[0, 0x20]),
        {"start": 1, "interval_s": 900, "flags": [0]},
    ]
    for b in bads:
        _raises(ProtocolError, ivblock.encode_block, b)


def _block_bytes(count, nch, runs, chans):
    out = bytearray(bytes.fromhex("000000010384"))
    out.extend(count.to_bytes(2, "big"))
    out.append(nch)
    out.extend(runs)
    for c in chans:
        out.append(len(c))
        out.extend(c)
    return bytes(out)


def test_block_decode_rejects():
    ch2 = bytes(ivblock.encode_channel([1, 2]))
    ok = _block_bytes(2, 1, b"\x01\x02\x00", [ch2])
    assert ivblock.decode_block(ok)["channels"] == [[1, 2]]
    bads = [
        ok[:8],  # header truncated
        _block_bytes(0, 0, b"\x00", []),  # count 0
        _block_bytes(2, 1, b"\x01\x03\x00", [ch2]),  # runs sum 3
        _block_bytes(2, 1, b"\x02\x01\x00\x01\x00", [ch2]),  # equal neighbours
        _block_bytes(2, 1, b"\x01\x02\x20", [ch2]),  # reserved flag bit
        _block_bytes(2, 1, b"\x01\x82\x00\x00", [ch2]),  # non-minimal run varint
        _block_bytes(2, 1, b"\x01\x02", []),  # runs truncated
        _block_bytes(2, 2, b"\x01\x02\x00", [ch2]),  # second channel missing
        ok + b"\x00",  # trailing byte
        ok[:-1],  # channel truncated
    ]
    for b in bads:
        _raises(MalformedPayload, ivblock.decode_block, b)
