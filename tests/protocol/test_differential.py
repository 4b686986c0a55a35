"""The meter's struct codec and the construct schema agree, byte for byte.

Messages built by one side decode to the same fields on the other, both ways,
on CPython; then a generated batch is decoded and re-encoded by the meter's
codec on the real MicroPython binary.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from protocol import blocks as schema_blocks
from protocol.errors import BadLength, ProtocolError
from protocol.frame import decode, decode_reference, encode
from protocol.vectors import from_json
from tests.support.mpy import run_mpy
from tests.support.strategies import message

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "firmware"))
from meter import errors as fw_errors  # noqa: E402
from meter import ivblock as fw_ivblock  # noqa: E402
from meter import wire  # noqa: E402

KEY = bytes(range(32))


def _build(fields: dict[str, Any]) -> bytes:
    try:
        return encode(fields, key=KEY)
    except BadLength:
        assume(False)
        raise


@given(message())
def test_schema_built_frames_decode_identically_on_the_meter(fields: dict[str, Any]) -> None:
    raw = _build(fields)
    assert wire.decode(raw) == decode_reference(raw)


@given(message())
def test_meter_built_frames_are_byte_identical_and_decode_on_the_schema(
    fields: dict[str, Any],
) -> None:
    raw = _build(fields)
    assert wire.encode(fields, key=KEY) == raw
    assert decode_reference(wire.encode(decode(raw), key=KEY)) == decode(raw)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(message(), st.data())
def test_bad_input_gives_the_same_error_class_on_both(fields: dict[str, Any], data: Any) -> None:
    raw = bytearray(_build(fields))
    i = data.draw(st.integers(0, len(raw) - 1))
    if data.draw(st.booleans()):
        raw[i] ^= 1 << data.draw(st.integers(0, 7))
    else:
        del raw[i:]
    outcomes: list[Any] = []
    for dec, root in ((decode, ProtocolError), (wire.decode, fw_errors.ProtocolError)):
        try:
            outcomes.append(dec(bytes(raw)))
        except root as e:
            outcomes.append(type(e).__name__)
    assert outcomes[0] == outcomes[1]


@given(
    st.lists(st.integers(0, 2**31 - 1), min_size=1, max_size=300),
    st.sampled_from([1, 7, 300, 70000, 2**31 - 1]),
)
def test_channel_streams_are_identical(values: list[int], cap: int) -> None:
    values = [v % (cap + 1) for v in values]
    stream = schema_blocks.encode_channel(values)
    assert fw_ivblock.encode_channel(values) == stream
    assert fw_ivblock.decode_channel(stream, len(values)) == values
    assert schema_blocks.decode_channel(stream, len(values)) == values


@given(
    st.lists(st.integers(0, 2**31 - 1), min_size=1, max_size=100),
    st.sampled_from([1, 3, 15, 255, 70000]),
    st.data(),
)
def test_mutated_channel_streams_decode_alike_on_head_end_and_meter(
    values: list[int], cap: int, data: Any
) -> None:
    """The head-end's unpacker (its table paths per width and mode) and the meter's
    give the same values, or both refuse, for a valid stream with a byte changed
    (a width code, a mode bit, a padding bit, a difference)."""
    values = [v % (cap + 1) for v in values]
    stream = bytearray(schema_blocks.encode_channel(values))
    i = data.draw(st.integers(0, len(stream) - 1))
    stream[i] ^= data.draw(st.integers(1, 255))
    outcomes: list[Any] = []
    for decode_channel in (schema_blocks.decode_channel, fw_ivblock.decode_channel):
        try:
            outcomes.append(decode_channel(bytes(stream), len(values)))
        except (ProtocolError, fw_errors.ProtocolError):
            outcomes.append("refused")
    assert outcomes[0] == outcomes[1]


def test_generated_batch_decodes_and_reencodes_on_micropython(tmp_path: Path) -> None:
    frames: list[tuple[bytes, dict[str, Any]]] = []

    @settings(max_examples=200, database=None, suppress_health_check=list(HealthCheck))
    @given(message())
    def collect(fields: dict[str, Any]) -> None:
        try:
            raw = encode(fields, key=KEY)
        except BadLength:
            return
        frames.append((raw, decode(raw)))

    collect()  # hypothesis generates the batch; MicroPython judges it below
    assert len(frames) >= 100
    batch = tmp_path / "batch.txt"
    batch.write_text("".join(raw.hex() + "\n" for raw, _ in frames), encoding="utf-8")
    code = f"""
import json
from meter import wire
KEY = bytes(range(32))
def js(o):
    if isinstance(o, (bytes, bytearray)):
        return bytes(o).hex()
    if isinstance(o, dict):
        return {{k: js(v) for k, v in o.items()}}
    if isinstance(o, list):
        return [js(v) for v in o]
    return o
with open({str(batch)!r}) as f:
    for line in f:
        raw = bytes.fromhex(line.strip())
        fields = wire.decode(raw)
        print(json.dumps({{"same": wire.encode(fields, key=KEY) == raw, "fields": js(fields)}}))
"""
    out = run_mpy(code, heapsize="4M", timeout=300).splitlines()
    assert len(out) == len(frames)
    for line, (_raw, want) in zip(out, frames, strict=True):
        row = json.loads(line)
        assert row["same"], want["type"]
        assert from_json(row["fields"]) == want
