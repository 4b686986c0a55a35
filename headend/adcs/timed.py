"""Daily and weekly jobs of the service (D06, H03), each run once per period.

A job's period is due from its local time of day (``report_tz``) on the
period's first day; a worker that starts later in the period catches up at or
after the job's time of day (never before it: the daily trouble run must not
run on a night whose collection is still going on). Each
worker asks until the period's run is done: the store's `TimedRuns.claim`
gives the run to one worker under a lease (``lease_s``), the job's writes and
its result commit together, fenced by the lease (`TimedRuns.done`). A failed
run keeps its claim: the same worker asks again at its next tick, another one
once the lease expired (the worker died).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from headend.config import Config, parse_hhmm
from headend.context import Ctx
from headend.store.timed import Claim, LeaseLost

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TimedJob:
    """``run(ctx, period, now_ms) -> one-line result``; ``at`` and ``every_days`` read
    the job's setting from the config."""

    name: str
    at: Callable[[Config], str]
    every_days: Callable[[Config], int]
    run: Callable[[Ctx, int, int], str]


def due_period(tz: ZoneInfo, at: str, every_days: int, now_ms: int) -> int | None:
    """The current period (local day ordinal // ``every_days``), or None before the
    job's time of day."""
    local = datetime.fromtimestamp(now_ms / 1000, tz)
    if local.time() < parse_hhmm("at", at):
        return None
    return local.date().toordinal() // every_days


class Timer:
    """Which periods this worker saw done (in memory: a restart asks again, and the
    store's claim answers)."""

    def __init__(self, jobs: tuple[TimedJob, ...]) -> None:
        self.jobs = jobs
        self.asked: dict[str, int] = {}

    def tick(self, ctx: Ctx, now_ms: int) -> None:
        cfg = ctx.config
        for job in self.jobs:
            period = due_period(cfg.tz, job.at(cfg), job.every_days(cfg), now_ms)
            if period is None or self.asked.get(job.name) == period:
                continue
            result = run_once(ctx, job.name, period, now_ms, job.run)
            if result is not Claim.HELD:
                self.asked[job.name] = period


def run_once(
    ctx: Ctx, name: str, period: int, now_ms: int, run: Callable[[Ctx, int, int], str]
) -> Claim:
    """Run ``name`` for ``period`` if this worker gets the run: `Claim.WON` once it
    committed, `Claim.DONE` if it was (or meanwhile got) done elsewhere, `Claim.HELD`
    if another worker holds it."""
    cfg = ctx.config
    got = ctx.timed.claim(name, period, cfg.worker, now_ms, cfg.lease_s * 1000)
    if got is not Claim.WON:
        return got
    try:
        with ctx.db.transaction():
            result = run(ctx, period, now_ms)
            ctx.timed.done(name, period, cfg.worker, now_ms, result)
    except LeaseLost:
        _log.warning("%s (period %d): taken over by another worker", name, period)
        return Claim.DONE
    _log.info("%s (period %d): %s", name, period, result)
    return Claim.WON
