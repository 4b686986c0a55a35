"""`make demo` until the full rig exists: one meter, end to end, on real parts.

Starts a private mosquitto, runs the meter's codec and MQTT client on the real
MicroPython binary to send 45 days of the reference profile as daily reads,
receives them in the head-end's MQTT transport (shared subscription), decodes
them with the normative schema, stores them in a fresh SQLite store, acks each
day back to the meter, and prints what happened. Leaves nothing running.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.profile import DEFAULT_CSV
from headend.store import (
    BlockIngest,
    Channel,
    IntervalBlock,
    Meter,
    MidnightRegister,
    Source,
    open_store,
)
from headend.transport.base import Uplink
from headend.transport.mqtt import MqttTransport
from hil.broker import running_broker
from protocol.errors import ProtocolError
from protocol.frame import decode, encode

ROOT = Path(__file__).resolve().parents[1]
METER = 1001


def _micropython() -> str:
    here = Path(sys.executable).parent / "micropython"
    return str(here) if here.exists() else "micropython"


async def _run(host: str, port: int, db: Path, csv: Path) -> dict[str, Any]:
    store = open_store(f"sqlite:///{db}")
    transport = MqttTransport(host, port, client_id="demo-headend")
    seq = 0
    counts = {"frames": 0, "bytes": 0, "bad": 0, "days": 0}

    async def deliver(up: Uplink) -> None:
        nonlocal seq
        counts["frames"] += 1
        counts["bytes"] += len(up.frame)
        try:
            f = decode(up.frame)
        except ProtocolError as e:
            counts["bad"] += 1
            print(f"  rejected a frame: {e}", file=sys.stderr)
            return
        seq += 1
        head = {"seq": seq, "meter_id": up.meter_id, "timestamp": int(time.time()), "auth": None}
        if f["type"] == "register":
            b = f["body"]
            store.register_meter(
                Meter(
                    meter_id=up.meter_id,
                    fw_version=b["fw_version"],
                    interval_s=b["interval_s"],
                    utc_offset_min=b["utc_offset_min"],
                    meter_multiplier=b["meter_multiplier"],
                    channels=tuple(
                        Channel(c["kind"], c["unit"], c["multiplier"], c["scaler"])
                        for c in b["channels"]
                    ),
                    registered_at=f["timestamp"],
                    capacity_days=b["capacity_days"],
                )
            )
            reply = dict(head, type="register_ack", body={"status": 0})
        elif f["type"] == "read_response":
            blocks, mids = [], []
            upto = 0
            for s in f["body"]["sections"]:
                if s["tag"] == "intervals":
                    blk = IntervalBlock.from_canonical(s["body"])
                    blocks.append(BlockIngest(up.meter_id, blk, Source.SCHEDULED, f["timestamp"]))
                    upto = max(upto, blk.end)
                elif s["tag"] == "midnight":
                    mids.append(
                        MidnightRegister(
                            up.meter_id,
                            s["body"]["day"],
                            tuple(s["body"]["values"]),
                            Source.SCHEDULED,
                            f["timestamp"],
                        )
                    )
            store.ingest(blocks=blocks, midnights=mids)  # committed before the ack below
            counts["days"] += 1
            reply = dict(head, type="read_ack", body={"acked_seq": f["seq"], "upto": upto})
        else:
            return
        await transport.send(up.meter_id, encode(reply))

    task = asyncio.create_task(transport.run(deliver))
    await asyncio.wait_for(transport.connected.wait(), 10)
    print(f"head-end subscribed to $share/headend/ami/v1/+/up on {host}:{port}")
    print("meter: MicroPython binary running firmware/meter/wire.py + firmware/link/mqtt.py")
    proc = await asyncio.create_subprocess_exec(
        _micropython(),
        "-X",
        "heapsize=2M",
        str(ROOT / "hil" / "mpy" / "demo_meter.py"),
        host,
        str(port),
        str(METER),
        str(csv),
        env={"MICROPYPATH": f"{ROOT / 'firmware'}:.frozen"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    task.cancel()
    if proc.returncode != 0:
        raise RuntimeError(f"meter failed:\n{err.decode()}")
    sent = out.decode().split()
    days_sent, acked = int(sent[1]), int(sent[3])
    first, last = 1711929600, 1711929600 + 45 * 86400
    cov = store.coverage(METER, first, last)
    stored = sum(c.present for c in cov)
    result = {
        "meter_days_sent": days_sent,
        "meter_days_acked_by_headend": acked,
        "meter_days_complete_in_store": sum(1 for c in cov if c.complete),
        "intervals_stored": stored,
        "wire_bytes": counts["bytes"],
        "bad_frames": counts["bad"],
    }
    store.close()
    return result


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m hil demo", description=__doc__)
    parser.add_argument("--csv", type=Path, default=DEFAULT_CSV, help="load profile CSV")
    parser.add_argument(
        "--keep", action="store_true", help="keep the SQLite file and print its path"
    )
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="ami-demo-"))
    db = tmp / "headend.sqlite"
    print("starting a private mosquitto broker ...")
    with running_broker() as broker:
        result = asyncio.run(_run(broker.host, broker.port, db, args.csv))
    print(
        f"\n{result['meter_days_sent']} meter-days sent by the meter over MQTT, "
        f"{result['meter_days_acked_by_headend']} acknowledged by the head-end after storing; "
        f"{result['meter_days_complete_in_store']} complete days "
        f"({result['intervals_stored']} intervals x 4 channels) in the store; "
        f"{result['wire_bytes'] / max(1, result['meter_days_sent']):.0f} bytes per meter-day"
        " on the wire."
    )
    if args.keep:
        print(f"kept: {db}")
    else:
        for p in tmp.iterdir():
            p.unlink()
        tmp.rmdir()
    print(json.dumps(result))
    ok = result["meter_days_complete_in_store"] == result["meter_days_sent"] > 0
    return 0 if ok else 1
