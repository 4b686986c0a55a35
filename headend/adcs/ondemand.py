"""On-demand reads (H05, H06): jobs from the CLI, the API or a system.

A job is a row: the CLI (another process) queues it, the service claims it
(`start_jobs`), sends an authenticated read_request and waits. The answer's
parts are stored as they arrive (source on_demand, or recovery for system
recovery reads), the result accumulates on the job, and when the last part is
in the job is done: latency (queued -> complete) is recorded, completion is
logged, and the result is delivered to the requester, whose acknowledgement
is recorded. No valid answer within ``ondemand_timeout_s`` -> logged and
retried (``ondemand_retries`` times); then the job fails and the requester and
the operator are notified with the trouble details. A meter nack that says
the read cannot be answered (not_held, bad_parameter) fails the job at once.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any

from headend.context import Ctx
from headend.errors import IllegalTransition
from headend.mdms.ingest import merge_result
from headend.mdms.routing import notify
from headend.outbox import Outbox
from headend.store.activity import Kind
from headend.store.jobs import AD_HOC
from headend.store.records import Job, ReadSpec
from protocol.codes import READ_FINAL_NACKS, ReadMode, nack_name

log = logging.getLogger(__name__)

#: Requesters inside the head-end that settle their jobs from the store (recovery: the
#: missing-day table, its exception report tells the operator; d07: the off-schedule
#: gaps): no result or trouble deliveries for their jobs, which in a mass recovery
#: would be thousands unacknowledged.
INTERNAL = frozenset({"recovery", "d07"})


def describe(spec: ReadSpec) -> str:
    if spec.mode is ReadMode.ON_DEMAND:
        return "on-demand read (since midnight)"
    if spec.mode is ReadMode.SINCE_ACK:
        return "read since the last acknowledged interval"
    return f"read of [{spec.start}, {spec.end})"


def request_read(
    ctx: Ctx, spec: ReadSpec, requester: str, now_ms: int, *, priority: int = AD_HOC
) -> int:
    """Queue a read for the service; returns the job id. Raises UnknownMeter, InvalidData.

    ``priority``: `AD_HOC` (CLI, API: the default) or `ROUTINE` (system work such as
    recovery), which the throttle starts first (`Jobs.claim`).
    """
    with ctx.db.transaction():
        job_id = ctx.jobs.enqueue(spec, requester, now_ms, priority)
        ctx.activity.log(
            now_ms,
            Kind.READ_QUEUED,
            f"job {job_id}: {describe(spec)}, what {spec.what}, for {requester}",
            spec.meter_id,
            str(job_id),
        )
    return job_id


def acknowledge(ctx: Ctx, job_id: int, now_ms: int) -> bool:
    """The requester has the result (e.g. the CLI printed it): recorded once, and the
    job's deliveries stop. False if it was acknowledged already."""
    with ctx.db.transaction():
        first = ctx.jobs.acknowledge(job_id, now_ms)
        ctx.events.acknowledge_job(job_id, now_ms)
    return first


def _attempt(ctx: Ctx, job: Job, now_ms: int, out: Outbox, why: str | None) -> None:
    mid = job.spec.meter_id
    meter = ctx.registry.get(mid)
    seq, frame = ctx.downlinks.frame(mid, "read_request", job.spec.wire(), now_ms)
    deadline = now_ms + ctx.config.ondemand_timeout_s * 1000
    try:
        ctx.jobs.sent(job.job_id, seq, now_ms, deadline)
    except IllegalTransition:
        return  # answered or closed meanwhile (another worker): nothing to send
    n = job.attempts + 1
    if why is None:
        text = f"job {job.job_id}: read_request seq {seq} via {meter.transport or 'mqtt'}"
        ctx.activity.log(now_ms, Kind.READ_SENT, text, mid, str(job.job_id))
    else:
        text = f"job {job.job_id}: {why}; retry as seq {seq} (attempt {n})"
        ctx.activity.log(now_ms, Kind.READ_RETRY, text, mid, str(job.job_id))
    log.debug("meter %s: %s", mid, text)
    # undelivered when the answer's time is up, the request is dropped by the broker: a
    # meter back after an outage is not sent a pile of requests nobody waits for
    expiry = math.ceil(ctx.config.ondemand_timeout_s / ctx.config.speed)
    out.send(mid, frame, meter.transport, expiry)


def start_jobs(ctx: Ctx, now_ms: int) -> Outbox:
    """Claim queued jobs for this worker and send their first read_request."""
    out = Outbox()
    cfg = ctx.config
    for job in ctx.jobs.claim(
        cfg.worker,
        now_ms,
        max_in_flight=cfg.read_max_in_flight,
        rate_per_s=cfg.read_rate_per_s,
        # the broker and the head-end feel wall-clock seconds (a simulated clock runs faster)
        second_ms=max(1000, round(1000 * cfg.speed)),
    ):
        log.debug("meter %s: job %s claimed by %s", job.spec.meter_id, job.job_id, job.worker)
        with ctx.db.transaction():
            _attempt(ctx, job, now_ms, out, None)
    return out


def on_part(ctx: Ctx, job: Job, body: dict[str, Any], data: dict[str, Any], now_ms: int) -> None:
    """One part of the job's answer is stored (inside the ingest transaction)."""
    parts = max(int(body["parts"]), 1)
    if int(body["part"]) in job.parts_seen:
        return  # a repeated part (QoS 1 redelivery, a meter repeat): stored once, counted once
    try:
        # an internal requester reads the store, not the job's result: none is accumulated
        result = "{}" if job.requester in INTERNAL else merge_result(job.result, data)
        job = ctx.jobs.part(job.job_id, int(body["part"]), parts, result)
        if len(job.parts_seen) < parts:
            return
        ctx.jobs.complete(job.job_id, now_ms)
    except IllegalTransition:
        return  # failed meanwhile by its worker's timeout: the data is stored all the same
    latency = now_ms - job.created_ms
    log.info("meter %s: job %s done in %.1f s", job.spec.meter_id, job.job_id, latency / 1000)
    ctx.activity.log(
        now_ms,
        Kind.READ_DONE,
        f"job {job.job_id}: complete in {latency / 1000:.1f} s ({parts} part(s), "
        f"attempt {job.attempts}); data stored as {job.spec.source.name.lower()}",
        job.spec.meter_id,
        str(job.job_id),
    )
    if job.requester in INTERNAL:
        return
    notify(
        ctx,
        job.requester,
        "read",
        {
            "job": job.job_id,
            "state": "done",
            "meter": job.spec.meter_id,
            "latency_ms": latency,
            "data": json.loads(job.result or "{}"),
        },
        now_ms,
        job_id=job.job_id,
    )


def _fail(ctx: Ctx, job: Job, trouble: str, now_ms: int) -> None:
    try:
        ctx.jobs.fail(job.job_id, now_ms, trouble)
    except IllegalTransition:
        return  # completed meanwhile (a late answer on another worker)
    mid = job.spec.meter_id
    log.info("meter %s: job %s failed: %s", mid, job.job_id, trouble)
    ctx.activity.log(now_ms, Kind.READ_FAILED, f"job {job.job_id}: {trouble}", mid, str(job.job_id))
    if job.requester in INTERNAL:
        return
    body = {"job": job.job_id, "state": "failed", "meter": mid, "trouble": trouble}
    notify(ctx, job.requester, "read", body, now_ms, job_id=job.job_id)
    if ctx.config.operator != job.requester:
        notify(ctx, ctx.config.operator, "trouble", {**body, "requester": job.requester}, now_ms)


def _trouble(ctx: Ctx, job: Job, last: str) -> str:
    meter = ctx.registry.get(job.spec.meter_id)
    links = ctx.registry.links(meter.meter_id)
    heard = max((ls for _, _, _, ls, _ in links), default=None)
    seen = f"last heard {heard // 1000} (UTC s)" if heard is not None else "never heard"
    return (
        f"meter {meter.meter_id}: {last}; {describe(job.spec)} sent {job.attempts} time(s) "
        f"(seqs {', '.join(map(str, job.seqs))}), {ctx.config.ondemand_timeout_s} s allowed "
        f"each; link {meter.transport or 'none'}, {seen}"
    )


def on_nack(ctx: Ctx, job: Job, reason: int, now_ms: int) -> Outbox:
    """The meter refused the read_request."""
    out = Outbox()
    why = f"meter nack {nack_name(reason)}"
    with ctx.db.transaction():
        if reason in READ_FINAL_NACKS or job.attempts > ctx.config.ondemand_retries:
            _fail(ctx, job, _trouble(ctx, job, why), now_ms)
        else:
            _attempt(ctx, job, now_ms, out, why)
    return out


def expire(ctx: Ctx, now_ms: int) -> Outbox:
    """H06: retry a job with no valid answer in time, or fail it and notify."""
    out = Outbox()
    timeout = ctx.config.ondemand_timeout_s
    for job in ctx.jobs.overdue(ctx.config.worker, now_ms, ctx.config.lease_s * 1000):
        with ctx.db.transaction():
            why = f"no valid answer within {timeout} s"
            if job.parts_seen:
                why += f" (got parts {sorted(job.parts_seen)} of {job.parts})"
            if job.attempts <= ctx.config.ondemand_retries:
                _attempt(ctx, job, now_ms, out, why)
            else:
                _fail(ctx, job, _trouble(ctx, job, why), now_ms)
    return out
