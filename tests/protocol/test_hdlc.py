"""Serial framing: vectors, any chunking, resynchronisation after line noise."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.errors import ProtocolError
from protocol.frame import decode, encode
from protocol.hdlc import Deframer, stuff
from protocol.schema import MAX_FRAME
from protocol.vectors import load
from tests.support.strategies import message


@pytest.mark.parametrize("row", load("hdlc.jsonl"), ids=lambda r: r["name"])
def test_hdlc_vectors(row: dict[str, Any]) -> None:
    d = Deframer()
    assert [f.hex() for f in d.feed(bytes.fromhex(row["stream"]))] == row["frames"]
    assert d.errors == row["errors"]


@given(st.lists(st.binary(min_size=1, max_size=60), min_size=1, max_size=6), st.data())
def test_any_chunking_gives_the_same_frames(frames: list[bytes], data: Any) -> None:
    stream = b"".join(stuff(f) for f in frames)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    d = Deframer()
    got: list[bytes] = []
    last = 0
    for c in [*cuts, len(stream)]:
        got += d.feed(stream[last:c])
        last = c
    assert got == frames
    assert d.errors == 0


@given(
    st.lists(message(types=("event", "read_ack", "time_sync_request")), min_size=2, max_size=5),
    st.integers(0, 3),
    st.binary(min_size=1, max_size=20),
)
def test_noise_loses_only_the_frames_it_touches(
    msgs: list[dict[str, Any]], hit: int, noise: bytes
) -> None:
    raws = [encode(m, key=bytes(32)) for m in msgs]
    hit = hit % len(raws)
    line = bytearray()
    for i, raw in enumerate(raws):
        s = bytearray(stuff(raw))
        if i == hit:  # noise lands inside this frame
            s[len(s) // 2 : len(s) // 2] = noise
        line += s
    good = []
    for f in Deframer().feed(bytes(line)):
        with contextlib.suppress(ProtocolError):  # the touched frame; others fail the test
            good.append(decode(f))
    want = [decode(r) for i, r in enumerate(raws) if i != hit]
    assert all(w in good for w in want)
    assert len(good) <= len(raws)


def test_overlong_frame_is_dropped_and_next_one_recovered() -> None:
    d = Deframer()
    frame = encode(
        {
            "type": "event_ack",
            "seq": 1,
            "meter_id": 1,
            "timestamp": 0,
            "auth": None,
            "body": {"acked_seq": 1},
        }
    )
    got = d.feed(b"\x7e" + b"\x01" * (MAX_FRAME + 10) + stuff(frame))
    assert got == [frame]
    assert d.errors == 1
