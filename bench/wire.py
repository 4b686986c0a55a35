"""Wire-size and codec-speed benchmark on the reference profile.

`python -m bench wire` (the reference profile in data/, or --csv FILE) prints one
JSON line. A meter-day is one read_response frame with the day's 96 × 4
interval values and flags, the 4 midnight registers, meter id and timestamp,
signed (SPEC "Authentication": counter and MAC), CRC'd and HDLC-framed as on
the serial line (the bigger of the two links: an MQTT message is the frame
without the 2 flag bytes and stuffing). `signature_bytes_per_meter_day` is what
signing adds to that frame, `..._with_ack` also the head-end's signed read_ack.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench.cli import refuse
from hil.loadprofile import DEFAULT_CSV, ProfileError, load_days
from protocol.frame import decode, encode
from protocol.hdlc import stuff

DLMS_AXDR_BYTES_PER_DAY = 3720  # data/README.md, same content in A-XDR
KEY = bytes(range(32))  # any key: the MAC's size does not depend on it
BITS_PER_BYTE_8N1 = 10


def noisy(values: list[list[int]], rng: random.Random) -> list[list[int]]:
    """A single real meter is spikier than the averaged H0 curve: ±30 % white
    noise on every interval plus appliance bursts (kettle, oven, washing
    machine: +50…500 Wh) in about 8 % of import intervals."""
    out = []
    for ch, series in enumerate(values):
        new = []
        for v in series:
            x = int(v * rng.uniform(0.7, 1.3))
            if ch == 0 and rng.random() < 0.08:
                x += rng.randint(50, 500)
            new.append(max(0, x))
        out.append(new)
    return out


def meter_day_fields(
    meter: int, day_start: int, values: list[list[int]], registers: list[int]
) -> dict[str, Any]:
    """The default daily read of one meter-day, as canonical fields."""
    return {
        "type": "read_response",
        "seq": 1,
        "meter_id": meter,
        "timestamp": day_start + 86400 + 3 * 3600,
        "auth": None,
        "body": {
            "request_seq": 0,
            "kind": 0,
            "part": 0,
            "parts": 1,
            "sections": [
                {"tag": "midnight", "body": {"day": day_start + 86400, "values": registers}},
                {
                    "tag": "intervals",
                    "body": {
                        "start": day_start,
                        "interval_s": 86400 // len(values[0]),
                        "flags": [0] * len(values[0]),
                        "channels": values,
                    },
                },
            ],
        },
    }


def _frames(
    days: list[tuple[int, list[list[int]]]], meter: int, signed: bool = True
) -> list[tuple[dict[str, Any], bytes]]:
    registers = [12_345_678, 2_345_678, 4_567_890, 345_678]  # a few years in service
    out = []
    for i, (start, values) in enumerate(days):
        registers = [r + sum(v) for r, v in zip(registers, values, strict=True)]
        fields = meter_day_fields(meter, start, values, registers)
        if signed:  # the day's uplink counter: a few hundred frames a day
            fields["auth"] = {"counter": 300 * i + 17, "mac": b""}
        out.append((fields, encode(fields, KEY)))
    return out


def _read_ack(counter: int | None) -> bytes:
    """The head-end's answer to a meter-day (signed, or not: counter None)."""
    a = None if counter is None else {"counter": counter, "mac": b""}
    body = {"acked_seq": 1, "upto": 1772323200}
    f = {"type": "read_ack", "seq": 9, "meter_id": 1001, "timestamp": 1772323200}
    return stuff(encode(dict(f, auth=a, body=body), KEY))


def _median_us(fn: Any, arg: Any, repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        t = time.perf_counter_ns()
        fn(arg)
        samples.append((time.perf_counter_ns() - t) / 1000)
    return statistics.median(samples)


def run(csv_path: Path, repeat: int = 20) -> dict[str, Any]:
    """Measure; return the figures."""
    days = load_days(csv_path)
    frames = _frames(days, meter=1001)
    roundtrip_ok = all(
        decode(raw) == dict(f, version=1, auth=decode(raw)["auth"]) for f, raw in frames
    )
    wire = [len(stuff(raw)) for _, raw in frames]
    unsigned = [len(stuff(raw)) for _, raw in _frames(days, 1001, signed=False)]
    sig = (sum(wire) - sum(unsigned)) / len(wire)
    ack_sig = len(_read_ack(1772323200)) - len(_read_ack(None))
    rng = random.Random(7)
    noisy_wire = [
        len(stuff(raw)) for _, raw in _frames([(s, noisy(v, rng)) for s, v in days], 1001)
    ]
    total = sum(wire)
    per_day = total / len(wire)
    noisy_per_day = sum(noisy_wire) / len(noisy_wire)
    enc = [_median_us(lambda f: encode(f, KEY), f, repeat) for f, _ in frames]
    dec = [_median_us(decode, raw, repeat) for _, raw in frames]
    return {
        "csv": str(csv_path),
        "days": len(days),
        "bytes_per_meter_day": round(per_day, 1),
        "signature_bytes_per_meter_day": round(sig, 1),
        "signature_bytes_per_meter_day_with_ack": round(sig + ack_sig, 1),
        "max_bytes_per_meter_day": max(wire),
        "mqtt_bytes_per_meter_day": round(sum(len(r) for _, r in frames) / len(frames), 1),
        "dlms_axdr_ratio": round(DLMS_AXDR_BYTES_PER_DAY / per_day, 2),
        "bytes_45_days": total,
        "seconds_45_days_at_9600": round(total * BITS_PER_BYTE_8N1 / 9600, 2),
        "seconds_45_days_at_19200": round(total * BITS_PER_BYTE_8N1 / 19200, 2),
        "encode_us": round(statistics.median(enc), 1),
        "decode_us": round(statistics.median(dec), 1),
        "noisy_bytes_per_meter_day": round(noisy_per_day, 1),
        "noisy_size_ratio": round(noisy_per_day / per_day, 3),
        "roundtrip_ok": roundtrip_ok,
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench wire", description=__doc__)
    parser.add_argument(
        "--csv", type=Path, default=DEFAULT_CSV, help="load profile (default: %(default)s)"
    )
    parser.add_argument("--repeat", type=int, default=20, help="timing repetitions per meter-day")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be >= 1")
    try:
        out = run(args.csv, args.repeat)
    except ProfileError as e:
        return refuse(e)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
