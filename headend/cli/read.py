"""`headend read ID`: an on-demand read: queue it, wait for the service, print the data (H05)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from headend.api import Config, Job, JobState, ReadMode, ReadSpec
from headend.cli.common import (
    FAILED,
    OK,
    Progress,
    Sub,
    Usage,
    add_command,
    emit,
    now_ms,
    open_headend,
    parse_time,
    table,
    zone,
)
from protocol.codes import WHAT_ALL, What


def add(sub: Sub, common: argparse.ArgumentParser) -> None:
    p = add_command(
        sub, common, "read", "on-demand read: queue it, wait for the service to answer, print it"
    )
    p.add_argument("meter", type=int)
    p.add_argument("--start", help="period read from (ISO date/time in --tz, or UTC s)")
    p.add_argument("--end", help="period read until (exclusive)")
    p.add_argument("--since-ack", action="store_true", help="everything since the last acked read")
    p.add_argument(
        "--what",
        type=int,
        default=WHAT_ALL,
        help="bits: " + ", ".join(f"{int(w)} {(w.name or '').lower()}" for w in What),
    )
    p.add_argument("--requester", default="cli", help="who asks (gets the result; default cli)")
    p.add_argument("--tz", help="time zone of --start/--end (default: report_tz)")
    p.add_argument(
        "--timeout", type=float, metavar="S", help="give up waiting after S real seconds"
    )
    p.add_argument("--no-wait", action="store_true", help="queue the job and exit")
    p.set_defaults(run=run)


def _spec(args: argparse.Namespace, cfg: Config) -> ReadSpec:
    tz = zone(args.tz or cfg.report_tz)
    if args.start or args.end:
        if not (args.start and args.end):
            raise Usage("a period read needs both --start and --end")
        start, end = parse_time(args.start, tz), parse_time(args.end, tz)
        return ReadSpec(args.meter, ReadMode.PERIOD, start, end, args.what)
    mode = ReadMode.SINCE_ACK if args.since_ack else ReadMode.ON_DEMAND
    return ReadSpec(args.meter, mode, what=args.what)


def not_yet(job: Job, waited: float) -> str:
    """Why a job is not closed after ``waited`` s, and what to check."""
    if job.state is JobState.QUEUED:
        return (
            f"job {job.job_id}: still queued after {waited:.0f} s: no service has picked it up "
            "(is `headend serve` running against this database?)"
        )
    return (
        f"job {job.job_id}: sent to meter {job.spec.meter_id} (attempt {job.attempts}, "
        f"state {job.state.value}), but the meter has not answered yet after {waited:.0f} s; "
        f"the service keeps trying (`headend log --meter {job.spec.meter_id}` shows how it goes)"
    )


def run(args: argparse.Namespace, cfg: Config) -> int:
    spec = _spec(args, cfg)
    # A simulated service clock cannot be known here: created 0 = stamped when claimed.
    created = now_ms() if cfg.speed == 1 and cfg.clock_start == 0 else 0
    with open_headend(cfg) as he:
        job_id = he.request_read(spec, args.requester, created)
        if args.no_wait:
            emit(args, {"job": job_id, "state": "queued"}, lambda: f"job {job_id} queued")
            return OK
        budget = args.timeout
        if budget is None:  # every attempt's timeout, in real seconds, plus slack
            budget = cfg.ondemand_timeout_s * (cfg.ondemand_retries + 1) / cfg.speed + 30
        progress = Progress(f"read meter {args.meter} (job {job_id})")
        job = he.wait_job(
            job_id,
            budget,
            waiting=lambda j, t: progress.note(f"{j.state.value}, attempt {j.attempts}, {t:.0f} s"),
        )
        progress.done()
        if not job.closed:
            print(f"headend read: {not_yet(job, budget)}", file=sys.stderr)
            return FAILED
        he.acknowledge_job(job_id, now_ms() if created else (job.done_ms or 0))
    if job.state is JobState.FAILED:
        emit(
            args,
            {"job": job_id, "state": "failed", "trouble": job.trouble},
            lambda: f"job {job_id} failed: {job.trouble}",
        )
        return FAILED
    result = json.loads(job.result or "{}")
    emit(
        args,
        {"job": job_id, "state": "done", "latency_ms": job.latency_ms, "data": result},
        lambda: _human(result) + f"\njob {job_id} done in {(job.latency_ms or 0) / 1000:.1f} s",
    )
    return OK


def _human(result: dict[str, Any]) -> str:
    chans = [f"{c['kind']} {c['unit']}" for c in result.get("channels", [])]
    out = [f"meter {result.get('meter')}  source {result.get('source')}"]
    if "clock" in result:
        out.append(f"meter clock  {result['clock']}")
    if "registers" in result:
        regs = result["registers"]
        out.append(
            f"registers at {regs['at']}: "
            + ", ".join(f"{n} = {v}" for n, v in zip(chans, regs["values"], strict=False))
        )
    ivs = result.get("intervals", [])
    if ivs:
        out.append("")
        out.append(
            table(
                ["start", *chans, "flags"],
                [[iv["start"], *iv["values"], iv["flags"]] for iv in ivs],
            )
        )
    out.append(f"{len(ivs)} interval(s), {len(result.get('events', []))} event(s)")
    return "\n".join(out)
