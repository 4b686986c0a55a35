# Serial framing of the firmware codec: stuffing, incremental deframing,
# resynchronisation after noise, bounded buffer.
from meter import hdlc, wire
from meter.errors import BadCrc, FramingError, ProtocolError


def _raises(cls, fn, *args):
    try:
        fn(*args)
    except cls as e:
        return e
    raise AssertionError(f"expected {cls.__name__}")


def _feed_chunks(stream, size):
    d = hdlc.Deframer()
    frames = []
    for i in range(0, len(stream), size):
        frames.extend(d.feed(stream[i : i + size]))
    return frames, d.errors


def _frame(seq):
    return wire.encode(
        {
            "type": "event_ack",
            "seq": seq,
            "meter_id": 0x7E7D7E7D,  # header bytes that need stuffing
            "timestamp": 1700000000,
            "body": {"acked_seq": 0x7D7E},
        }
    )


def test_frame_stuffs_flag_and_escape():
    assert hdlc.frame(b"\x01\x7e\x02\x7d\x03") == bytes.fromhex("7e017d5e027d5d037e")
    assert hdlc.frame(b"\x7e") == bytes.fromhex("7e7d5e7e")
    assert hdlc.frame(b"\x20\x5e\x5d") == bytes.fromhex("7e205e5d7e")


def test_frame_rejects_empty_and_oversize():
    _raises(FramingError, hdlc.frame, b"")
    _raises(FramingError, hdlc.frame, bytes(hdlc.MAX_FRAME + 1))
    assert len(hdlc.frame(bytes(hdlc.MAX_FRAME))) == hdlc.MAX_FRAME + 2


def test_deframe_round_trip_any_chunking():
    frames = [_frame(i) for i in range(3)] + [bytes(range(256))]
    stream = b"".join(hdlc.frame(f) for f in frames)
    for size in (1, 2, 3, 7, 64, len(stream)):
        assert _feed_chunks(stream, size) == (frames, 0)
    for f in frames[:3]:
        assert hdlc.Deframer().feed(hdlc.frame(f)) == [f]


def test_shared_flags_and_back_to_back_flags_are_ignored():
    a, b = _frame(1), _frame(2)
    body_a = hdlc.frame(a)[1:-1]
    body_b = hdlc.frame(b)[1:-1]
    stream = b"\x7e\x7e\x7e" + body_a + b"\x7e" + body_b + b"\x7e\x7e"
    assert _feed_chunks(stream, 1) == ([a, b], 0)


def test_noise_before_first_flag_is_discarded_uncounted():
    a = _frame(1)
    stream = b"\x01\x7d\x02garbage" + hdlc.frame(a)
    assert _feed_chunks(stream, 1) == ([a], 0)


def test_resync_after_noise_loses_only_touched_frame():
    a, b, c = _frame(1), _frame(2), _frame(3)
    hit = bytearray(hdlc.frame(b))
    hit[5] ^= 0x10  # noise inside b: still a frame, but its CRC fails
    stream = hdlc.frame(a) + bytes(hit) + b"\xff\x00noise" + hdlc.frame(c)
    d = hdlc.Deframer()
    got = []
    for i in range(len(stream)):
        got.extend(d.feed(stream[i : i + 1]))
    ok = []
    bad = []
    for f in got:
        try:
            ok.append(wire.decode(f))
        except ProtocolError as e:
            bad.append(e)
    assert [m["seq"] for m in ok] == [1, 3]
    assert len(bad) == 2  # the hit frame and the noise between flags
    assert isinstance(bad[0], BadCrc)


def test_bad_escape_drops_frame_and_counts():
    a = _frame(1)
    # 7D 41 is not an escape of 7E/7D; 7D then a flag aborts
    stream = b"\x7e\x01\x7d\x41\x02\x7e" + hdlc.frame(a) + b"\x03\x7d\x7e" + hdlc.frame(a)
    for size in (1, 4, len(stream)):
        assert _feed_chunks(stream, size) == ([a, a], 2)


def test_overlong_frame_dropped_then_resync():
    a = _frame(1)
    long = b"\x7e" + bytes(hdlc.MAX_FRAME + 1) + b"\x7e"
    stream = long + hdlc.frame(a)
    for size in (1, 100, len(stream)):
        assert _feed_chunks(stream, size) == ([a], 1)


def test_max_size_frame_passes_and_escapes_count_once():
    big = b"\x7e" * hdlc.MAX_FRAME  # each byte stuffed to two on the line
    assert _feed_chunks(hdlc.frame(big), 1000) == ([big], 0)


def test_unterminated_bad_frame_counts_at_next_flag():
    d = hdlc.Deframer(max_frame=4)
    assert d.feed(b"\x7e\x01\x02\x03\x04\x05") == []
    assert d.errors == 0
    assert d.feed(b"\x7e\x01\x7e") == [b"\x01"]
    assert d.errors == 1


def test_buffer_is_bounded():
    d = hdlc.Deframer(max_frame=8)
    assert d.feed(b"\x7e" + b"\x11" * 10000 + b"\x7e") == []
    assert d.errors == 1
    assert len(d._buf) == 8


def test_reset_forgets_partial_frame():
    d = hdlc.Deframer()
    d.feed(b"\x7e\x01\x02")
    d.reset()
    assert d.feed(b"\x03\x7e\x04\x7e") == [b"\x04"]
    assert d.errors == 0
