"""ondemand: N on-demand reads over a slow link (H05, N02, M13).

The boards reach the broker through a `LatencyProxy` (hil/rig.py) that
delays every byte by ``latency_s`` (+ up to half of it as jitter) in each
direction, a cellular-like link; the head-end sits next to the broker. Reads
are queued as head-end jobs (what ``headend read ID`` does), one at a time
per board, boards in parallel; each read is measured from the request (job
queued) to the stored answer (the last part committed: job done), in REAL
seconds (the job's simulated latency / speed).

The reads are `measure()`, which `python -m hil run ondemand` runs on a
real board too. Figures: ``p80_s``, ``p99_s`` against the targets 30 s and 60 s (N02);
``ok`` = every read done and both targets met. Defaults: 100 reads, 4 boards,
latency 0.25 s each way, 10x (the meter re-sends an unacknowledged part
after 15-30 simulated seconds: keep that well above the real round trip).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any

from headend.api import JobState
from hil.anyboard import Board
from hil.rig import Rig
from hil.scenarios.common import T0, Options, Progress
from hil.stats import percentile

P80_TARGET_S = 30.0
P99_TARGET_S = 60.0


async def run(opts: Options) -> dict[str, Any]:
    n = int(opts.pick("reads", 100))
    nboards = int(opts.pick("boards", 4))
    speed = int(opts.pick("speed", 10))
    latency = float(opts.pick("latency_s", 0.25))
    async with Rig(
        boards=nboards,
        speed=speed,
        sim_start=T0 + 6 * 3600 - 20,
        latency_s=latency,
        jitter_s=latency / 2,
        board_options=opts.board,
        keep=opts.keep,
        insecure=opts.insecure,
        say=opts.say,
    ) as rig:
        p = Progress(rig, opts.say)

        async def ready() -> bool:
            if await rig.registered() != set(rig.meter_ids):
                return False
            return all([await b.last_closed() is not None for b in rig.board_list])

        await rig.eventually(ready, 120, "boards registered and recording", every=0.2)
        p(f"ondemand: {n} reads, {nboards} board(s), link +{latency:.3f} s each way, {speed}x")
        out: dict[str, Any] = {"scenario": "ondemand", "boards": nboards, "speed": speed}
        out["link_delay_s"] = latency
        out.update(await measure(rig, rig.board_list, n, p))
        return out


async def measure(
    rig: Rig, boards: Sequence[Board], n: int, say: Callable[[str], None], timeout: float = 600
) -> dict[str, Any]:
    """``n`` on-demand reads through head-end jobs, one at a time per board, boards in
    parallel; the figures (latencies in real seconds) and ``ok`` against the targets."""
    lat: list[float] = []
    polled: list[float] = []
    jobs = []
    queue = list(range(n))

    async def worker(board: Board) -> None:
        while queue:
            queue.pop()
            t = time.monotonic()
            job = await rig.read(board.meter_id, timeout=timeout)
            polled.append(time.monotonic() - t)
            jobs.append(job)
            if job.latency_ms is not None:
                lat.append(job.latency_ms / 1000 / rig.clock.speed)
            if job.trouble:
                say(f"read of meter {board.meter_id}: {job.state}, trouble: {job.trouble}")
            if len(jobs) % max(1, n // 10) == 0:
                say(f"{len(jobs)} reads done")

    await asyncio.gather(*(worker(b) for b in boards))
    done = sum(1 for j in jobs if j.state is JobState.DONE)
    p80, p99 = percentile(lat, 80), percentile(lat, 99)
    out: dict[str, Any] = {
        "reads": len(jobs),
        "done": done,
        "failed": len(jobs) - done,
        "retried": sum(1 for j in jobs if j.attempts > 1),
        "p50_s": _r(percentile(lat, 50)),
        "p80_s": _r(p80),
        "p99_s": _r(p99),
        "max_s": _r(max(lat, default=None)),
        "p80_polled_s": _r(percentile(polled, 80)),
        "p80_target_s": P80_TARGET_S,
        "p99_target_s": P99_TARGET_S,
    }
    out["ok"] = bool(
        len(jobs) == n == done
        and p80 is not None
        and p99 is not None
        and p80 <= P80_TARGET_S
        and p99 <= P99_TARGET_S
    )
    return out


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 3)
