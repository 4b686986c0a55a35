"""The construct side of the wire protocol: CRC, vectors, round trips, bad input."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from protocol import blocks
from protocol.auth import download_mac, frame_mac, verify_frame
from protocol.crc import CHECK_VALUE, CRC_NAME, crc16
from protocol.errors import ERRORS, BadLength, BadMac, ProtocolError, Replay
from protocol.frame import decode, decode_reference, encode
from protocol.vectors import from_json, load
from protocol.vectors.__main__ import generate
from tests.support.strategies import message

KEY = bytes(range(32))


def test_crc_named_algorithm_check_value() -> None:
    assert CRC_NAME == "x-25"
    assert crc16(b"123456789") == CHECK_VALUE == 0x906E


def test_vectors_are_not_stale() -> None:
    from protocol.vectors import DIR

    for name, text in generate().items():
        assert (DIR / name).read_text(encoding="utf-8") == text, f"{name} stale: run `make vectors`"


@pytest.mark.parametrize("row", load("frames.jsonl"), ids=lambda r: r["name"])
def test_frame_vectors_both_decode_paths_and_encode(row: dict[str, Any]) -> None:
    raw = bytes.fromhex(row["hex"])
    if "error" in row and "key" in row:  # well formed, refused by the receiver holding the key
        for dec in (decode, decode_reference):
            dec(raw)
            with pytest.raises(ERRORS[row["error"]]):
                verify_frame(raw, bytes.fromhex(row["key"]), row.get("last_counter"))
        return
    if "error" in row:
        for dec in (decode, decode_reference):
            with pytest.raises(ERRORS[row["error"]]):
                dec(raw)
        return
    fields = from_json(row["fields"])
    assert decode(raw) == fields
    assert decode_reference(raw) == fields
    key = bytes.fromhex(row["key"]) if "key" in row else None
    assert encode(fields, key=key) == raw


@pytest.mark.parametrize("row", load("blocks.jsonl"), ids=lambda r: r["name"])
def test_block_vectors(row: dict[str, Any]) -> None:
    assert blocks.encode_channel(row["values"]).hex() == row["hex"]
    assert blocks.decode_channel(bytes.fromhex(row["hex"]), len(row["values"])) == row["values"]


def _encode_or_reject(fields: dict[str, Any]) -> bytes:
    try:
        return encode(fields, key=KEY)
    except BadLength:
        assume(False)  # generated sections can exceed MAX_PAYLOAD; that path has its own test
        raise


@given(message())
def test_every_message_round_trips_on_both_decode_paths(fields: dict[str, Any]) -> None:
    raw = _encode_or_reject(fields)
    got = decode(raw)
    assert got == decode_reference(raw)
    if fields["auth"] is not None:
        assert got["auth"]["counter"] == fields["auth"]["counter"]
        fields = dict(fields, auth=got["auth"])
    assert got == fields
    assert encode(got, key=KEY) == raw


@given(message(), st.data())
def test_mutated_frames_fast_path_agrees_with_schema(fields: dict[str, Any], data: Any) -> None:
    raw = bytearray(_encode_or_reject(fields))
    kind = data.draw(st.sampled_from(["flip", "truncate", "insert", "recrc_flip"]))
    i = data.draw(st.integers(0, len(raw) - 1))
    if kind == "flip":
        raw[i] ^= 1 << data.draw(st.integers(0, 7))
    elif kind == "truncate":
        del raw[i:]
    elif kind == "insert":
        raw[i:i] = data.draw(st.binary(min_size=1, max_size=4))
    else:  # corrupt the body but keep the CRC right: reaches the body parsers
        j = data.draw(st.integers(15, max(15, len(raw) - 3)))
        raw[j] ^= data.draw(st.integers(1, 255))
        raw[-2:] = crc16(bytes(raw[:-2])).to_bytes(2, "big")
    outcomes = []
    for dec in (decode, decode_reference):
        try:
            outcomes.append(dec(bytes(raw)))
        except ProtocolError as e:
            outcomes.append(type(e).__name__)
    assert outcomes[0] == outcomes[1]


@given(st.binary(max_size=300))
def test_random_bytes_give_a_message_or_a_protocol_error(raw: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        decode(raw)


def test_encode_rejects_bad_fields_with_protocol_errors() -> None:
    base = {"type": "nack", "seq": 1, "meter_id": 1, "timestamp": 0, "auth": None}
    bad = [
        dict(base, body={"nacked_type": 256, "nacked_seq": 0, "reason": 0}),
        dict(base, body={"nacked_type": 1}),
        dict(base, type="no_such_type", body={}),
        dict(base, seq=-1, body={"nacked_type": 1, "nacked_seq": 0, "reason": 0}),
        dict(
            base,
            auth={"counter": 1, "mac": b""},
            body={"nacked_type": 1, "nacked_seq": 0, "reason": 0},
        ),
        dict(
            base,
            type="read_response",
            body={
                "request_seq": 0,
                "kind": 0,
                "part": 0,
                "parts": 1,
                "sections": [
                    {
                        "tag": "intervals",
                        "body": {"start": 0, "interval_s": 900, "flags": [0, 0], "channels": [[1]]},
                    }
                ],
            },
        ),
        dict(
            base,
            type="read_response",
            body={
                "request_seq": 0,
                "kind": 0,
                "part": 0,
                "parts": 1,
                "sections": [
                    {
                        "tag": "intervals",
                        "body": {
                            "start": 0,
                            "interval_s": 900,
                            "flags": [0],
                            "channels": [[2**31]],
                        },
                    }
                ],
            },
        ),
    ]
    for fields in bad:
        with pytest.raises(ProtocolError):
            encode(fields)


def test_oversized_payload_is_refused_when_built() -> None:
    block = {
        "start": 0,
        "interval_s": 300,
        "flags": [0] * 2000,
        "channels": [[2**31 - 1, 0] * 1000] * 4,
    }
    fields = {
        "type": "read_response",
        "seq": 1,
        "meter_id": 1,
        "timestamp": 0,
        "auth": None,
        "body": {
            "request_seq": 0,
            "kind": 0,
            "part": 0,
            "parts": 1,
            "sections": [{"tag": "intervals", "body": block}],
        },
    }
    with pytest.raises(BadLength):
        encode(fields)


def test_m20_authenticated_frame_verifies_and_guards_replay() -> None:
    fields = {
        "type": "time_set",
        "seq": 3,
        "meter_id": 1001,
        "timestamp": 100,
        "auth": {"counter": 10, "mac": b""},
        "body": {"utc_ms": 5},
    }
    raw = encode(fields, key=KEY)
    assert verify_frame(raw, KEY, last_counter=9) == 10
    with pytest.raises(Replay):
        verify_frame(raw, KEY, last_counter=10)
    with pytest.raises(BadMac):
        verify_frame(raw, bytes(32), last_counter=0)
    tampered = bytearray(raw)
    tampered[-3] ^= 1  # inside the MAC; CRC would catch it on decode, the MAC must too
    with pytest.raises(BadMac):
        verify_frame(bytes(tampered), KEY, last_counter=0)
    unsigned = encode(dict(fields, auth=None))
    with pytest.raises(BadMac):
        verify_frame(unsigned, KEY, last_counter=0)


def test_m20_mac_is_truncated_hmac_sha256_over_header_payload_counter() -> None:
    signed = b"header and payload"
    want = hmac.new(KEY, signed + (7).to_bytes(4, "big"), hashlib.sha256).digest()[:16]
    assert frame_mac(KEY, signed, 7) == want
    nonce = bytes(16)
    assert (
        download_mac(KEY, nonce, 42) == hmac.new(KEY, nonce + b"\x00\x2a", hashlib.sha256).digest()
    )
