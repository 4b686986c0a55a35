"""N01: the per-uplink fast paths build exactly what the reference paths build.

A signed ack by `struct` equals the construct schema's frame, byte for byte;
the real-time JSON built from pre-formatted intervals equals
``to_json_parts(engineering(...))`` for every scale, section and part limit.
"""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

import protocol.frame as frame_mod
from headend.mdms import ingest
from headend.store import Channel, Meter, Source
from protocol.errors import ProtocolError
from protocol.frame import decode, encode

pytestmark = pytest.mark.req("N01")

KEY = bytes(range(32))


def _schema_encode(fields: dict[str, object], monkeypatch: pytest.MonkeyPatch) -> bytes:
    with monkeypatch.context() as m:
        m.setattr(frame_mod, "_encode_small", lambda *a: None)
        return encode(fields, key=KEY)


SMALL = {
    "read_ack": lambda r: {"acked_seq": r.randrange(1 << 16), "upto": r.randrange(1 << 32)},
    "event_ack": lambda r: {"acked_seq": r.randrange(1 << 16)},
    "register_ack": lambda r: {"status": r.randrange(256)},
    "schedule_ack": lambda r: {"acked_seq": r.randrange(1 << 16), "status": r.randrange(256)},
    "nack": lambda r: {
        "nacked_type": r.randrange(256),
        "nacked_seq": r.randrange(1 << 16),
        "reason": r.randrange(256),
    },
}


def test_n01_fast_ack_encoding_equals_the_schema(monkeypatch: pytest.MonkeyPatch) -> None:
    r = random.Random(14)
    for mtype, body in SMALL.items():
        for _ in range(40):
            fields = {
                "type": mtype,
                "seq": r.randrange(1 << 16),
                "meter_id": r.randrange(1 << 32),
                "timestamp": r.randrange(1 << 32),
                "auth": {"counter": r.randrange(1 << 32), "mac": b""},
                "body": body(r),
            }
            raw = encode(fields, key=KEY)
            assert raw == _schema_encode(fields, monkeypatch)
            assert decode(raw)["body"] == fields["body"]


def test_n01_fast_ack_encoding_leaves_bad_input_to_the_schema() -> None:
    good = {"type": "read_ack", "seq": 1, "meter_id": 7, "timestamp": 0}
    for body in (
        {"acked_seq": 1 << 16, "upto": 0},
        {"acked_seq": 1},
        {"acked_seq": "1", "upto": 0},
    ):
        fields = {**good, "auth": {"counter": 1, "mac": b""}, "body": body}
        with pytest.raises(ProtocolError):
            encode(fields, key=KEY)


def _meter(scalers: tuple[int, ...], mult: int) -> Meter:
    """Channel multipliers 1, 2, ...; with ``mult`` 0 all 1 (and the meter's 1): raw
    values are their engineering values."""
    chans = [Channel(1 + i % 4, 1 + i % 2, 1 + i if mult else 1, s) for i, s in enumerate(scalers)]
    mult = mult or 1
    return Meter(
        meter_id=4242,
        fw_version="t",
        interval_s=900,
        utc_offset_min=0,
        meter_multiplier=mult,
        channels=tuple(chans),
        registered_at=0,
    )


@pytest.mark.parametrize(
    ("scalers", "mult", "limit"),
    [
        ((0, 0, 0, 0), 0, 8000),  # raw values as they are (the common case: a template)
        ((0, 0, 0, 0), 0, 700),
        ((0, 0, 0, 0), 0, 3000),  # a day in quarters
        ((0, 0, 0, 0), 1, 8000),
        ((-3, 0, 2, -1), 3, 8000),
        ((0, 0), 1, 700),
        ((1,), 7, 100_000),
    ],
)
def test_n01_realtime_json_equals_the_reference(
    scalers: tuple[int, ...], mult: int, limit: int
) -> None:
    r = random.Random(len(scalers) * limit)
    meter = _meter(scalers, mult)
    day = 1_711_929_600
    n = len(scalers)
    block = {
        "start": day,
        "interval_s": 900,
        "flags": [r.choice((0, 0, 1, 4)) for _ in range(96)],
        "channels": [[r.randrange(0, 5000) for _ in range(96)] for _ in range(n)],
    }
    raw = [
        {"tag": "intervals", "body": block},
        {"tag": "midnight", "body": {"day": day + 86400, "values": [123456] * n}},
        {"tag": "events", "body": [{"code": 1, "time": day + 60, "data": 9}]},
        {"tag": "registers", "body": {"at": day + 90000, "values": [7] * n}},
        {"tag": "clock", "body": {"time": day + 90001}},
    ]
    short = {"flags": block["flags"][:5], "channels": [c[:5] for c in block["channels"]]}
    two = [*raw, {"tag": "intervals", "body": {**block, **short, "start": day + 86400}}]
    for sections, source in itertools.product((raw, raw[1:], raw[:1], two), Source):
        secs = ingest.sections(meter, sections, source, day)
        want = ingest.to_json_parts(ingest.engineering(meter, secs, source), limit)
        assert ingest.realtime_parts(meter, secs, source, limit) == want


def test_n01_the_service_collects_cycles_less_often_and_never_what_it_started_with() -> None:
    import gc

    from headend.service import GC_THRESHOLDS, tune_gc

    before = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_threshold() == GC_THRESHOLDS and GC_THRESHOLDS[0] > before[0]
        assert gc.get_freeze_count() > 0  # what existed is out of every collection
        cycle: list[object] = []
        cycle.append(cycle)
        del cycle
        assert gc.collect() >= 1  # a cycle is still collected, only later
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


@given(st.integers(min_value=0, max_value=2**32 - 1))
def test_n01_iso_times_equal_datetimes(t: int) -> None:
    ingest.iso.cache_clear()
    want = datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert ingest.iso(t) == want and ingest.iso(t) == want  # formatted, then cached
