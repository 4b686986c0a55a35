"""The live path's database thread alone: `Core.on_uplinks` without a broker.

    python -m bench live-core --meters 1000 --days 2 [--batch 250] [--profile 25]

What `headend serve` does per uplink on its database thread (decode, verify,
store, answer, real-time payload; the collector tuned as there, `tune_gc`), on
a fresh SQLite store in a temporary folder, with the same signed frames as
`bench live` (`bench.loadgen`): N
meters register, then D days of read answers go through in batches of
``--batch`` (the service's `MAX_BATCH`). No broker, no other process: the
figure that moves least on a shared machine. ``--profile N``: cProfile's top
N entries (internal time) on stderr.

Figures: us_per_frame (wall and CPU of this process over the reads),
statements_per_frame (SQL statements sent to SQLite over the reads, batch
statements included), frames. Progress on stderr; ONE JSON line last on stdout.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import sys
import tempfile
import time
from typing import Any

from bench.cli import refuse
from bench.live import day_list
from bench.loadgen import FIRST_ID, Meter, day_bodies, profile, register_body
from headend.config import Config
from headend.context import Ctx
from headend.core import Core
from headend.errors import HeadendError
from headend.keys import meter_key
from headend.service import MAX_BATCH, tune_gc
from headend.store import open_store
from headend.store.base import DAY_S
from headend.transport.base import Uplink


def run(meters: int, days: int, batch: int, top: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="live-core-") as tmp:
        url = f"sqlite:///{tmp}/headend.db"
        cfg = Config(database=url)
        store = open_store(url)
        try:
            core = Core(Ctx.build(cfg, store))
            master = bytes.fromhex(cfg.master_key)
            ms = [Meter(FIRST_ID + i, meter_key(master, FIRST_ID + i)) for i in range(meters)]
            dl = day_list(days)
            now = int(time.time())
            regs = [
                Uplink(m.meter_id, m.sign("register", register_body(), now), "mqtt") for m in ms
            ]
            _handle(core, regs, now * 1000, batch)
            reads = [
                Uplink(ms[i].meter_id, ms[i].sign("read_response", body, day + DAY_S), "mqtt")
                for i, day, body in day_bodies(meters, dl, profile())
            ]
            print(f"live-core: {len(reads)} read answers signed", file=sys.stderr, flush=True)
            tune_gc()  # as `headend serve` runs, once built
            statements = [0]
            store.db._conn.set_trace_callback(  # type: ignore[attr-defined]  # noqa: SLF001
                lambda _sql: statements.__setitem__(0, statements[0] + 1)
            )
            prof = cProfile.Profile() if top else None
            wall, cpu = time.perf_counter(), time.process_time()
            if prof is not None:
                prof.enable()
            answered = _handle(core, reads, now * 1000, batch)
            if prof is not None:
                prof.disable()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        finally:
            store.close()
    if prof is not None:
        text = io.StringIO()
        pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(top)
        print(text.getvalue(), file=sys.stderr)
    n = len(reads)
    return {
        "frames": n,
        "answered": answered,
        "us_per_frame_wall": round(wall / n * 1e6, 1),
        "us_per_frame_cpu": round(cpu / n * 1e6, 1),
        "statements_per_frame": round(statements[0] / n, 2),
        "batch": batch,
        "profiled": bool(top),
        "meters": meters,
        "days": days,
        "loadavg_1m": round(os.getloadavg()[0], 2),  # the machine is shared: say how busy
    }


def _handle(core: Core, ups: list[Uplink], now_ms: int, batch: int) -> int:
    """Hand the uplinks over in batches; how many got an answer."""
    answered = 0
    for i in range(0, len(ups), batch):
        outs = core.on_uplinks([(up, now_ms) for up in ups[i : i + batch]])
        answered += sum(1 for o in outs if o is not None and o.downlinks)
    return answered


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench live-core", description=__doc__)
    ap.add_argument("--meters", type=int, default=1000)
    ap.add_argument("--days", type=int, default=2)
    ap.add_argument("--batch", type=int, default=MAX_BATCH, help="uplinks per transaction")
    ap.add_argument("--profile", type=int, default=0, help="print cProfile's top N entries")
    args = ap.parse_args(argv)
    if args.meters < 1 or args.days < 1 or args.batch < 1:
        return refuse("--meters, --days and --batch must be at least 1")
    try:
        out = run(args.meters, args.days, args.batch, args.profile)
    except (HeadendError, OSError) as e:
        return refuse(e)
    print(json.dumps(out))
    return 0
