# Runs on the MicroPython binary: the meter's own codec encodes 45 days of the
# reference profile as daily read_response frames and the meter's MQTT client
# sends them; it waits for the head-end's read_ack of every day.
# argv: host port meter_id csv_path
import asyncio
import sys

from link.mqtt import Client
from meter import wire

HOST, PORT, METER, CSV = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
UP = "ami/v1/%d/up" % METER
DOWN = "ami/v1/%d/down" % METER


def days(path):
    """Yield (day_start, [4 channels of 96 values]) from the CSV, a day at a time."""
    with open(path) as f:
        f.readline()
        chans = [[], [], [], []]
        start = None
        for line in f:
            parts = line.strip().split(",")
            if start is None:
                start = parts[0]
            for i in range(4):
                chans[i].append(int(parts[i + 1]))
            if len(chans[0]) == 96:
                yield start, chans
                chans = [[], [], [], []]
                start = None


def utc(iso):
    # 2024-04-01T00:00:00Z -> UTC seconds, integers only (days from civil)
    y, m, d = int(iso[0:4]), int(iso[5:7]), int(iso[8:10])
    y -= m <= 2
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return (era * 146097 + doe - 719468) * 86400


acked = {}


async def on_down(topic, payload):
    f = wire.decode(payload)
    if f["type"] == "read_ack":
        acked[f["body"]["acked_seq"]] = f["body"]["upto"]
    elif f["type"] == "register_ack":
        acked[0] = 0


async def main():
    c = Client("demo-meter-%d" % METER, HOST, PORT, subscriptions=(DOWN,), handler=on_down)
    task = asyncio.create_task(c.run())
    await c.connected.wait()
    await asyncio.sleep_ms(300)
    reg = {
        "type": "register",
        "seq": 0,
        "meter_id": METER,
        "timestamp": 1711929600,
        "auth": None,
        "body": {
            "fw_version": "demo",
            "interval_s": 900,
            "capacity_days": 45,
            "utc_offset_min": 0,
            "meter_multiplier": 1,
            "channels": [
                {"kind": k, "unit": 1 if k < 3 else 2, "multiplier": 1, "scaler": 0}
                for k in (1, 2, 3, 4)
            ],
        },
    }
    await c.publish(UP, wire.encode(reg))
    regs = [12345678, 2345678, 4567890, 345678]
    seq = 0
    total = 0
    for start, chans in days(CSV):
        seq += 1
        day = utc(start)
        regs = [r + sum(v) for r, v in zip(regs, chans)]
        fields = {
            "type": "read_response",
            "seq": seq,
            "meter_id": METER,
            "timestamp": day + 86400 + 3600,
            "auth": None,
            "body": {
                "request_seq": 0,
                "kind": 0,
                "part": 0,
                "parts": 1,
                "sections": [
                    {"tag": "midnight", "body": {"day": day + 86400, "values": regs}},
                    {
                        "tag": "intervals",
                        "body": {
                            "start": day,
                            "interval_s": 900,
                            "flags": [0] * 96,
                            "channels": chans,
                        },
                    },
                ],
            },
        }
        raw = wire.encode(fields)
        total += len(raw)
        await c.publish(UP, raw)
    for _ in range(600):
        if len([k for k in acked if k]) >= seq:
            break
        await asyncio.sleep_ms(50)
    print("SENT", seq, total, len([k for k in acked if k]))
    await c.stop()
    task.cancel()


asyncio.run(main())
