"""H05, N03: a read result too big for one MQTT message reaches its requester in parts.

The broker refuses packets over 8 KiB (SPEC "MQTT"); a 45-day on-demand read
is about 40 times that. The result is split when it is queued, one delivery
per part, each fitting, each acked on its own; the recipient joins them by job
and part; a re-send is the same delivery again. Checked on the store, then end
to end: the service publishing through the real mosquitto with the generated
secure configuration to a recipient logged in as itself.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from headend.adcs import ondemand
from headend.brokerconf import payload_limit
from headend.clock import Clock
from headend.config import Config
from headend.context import Ctx
from headend.core import Core
from headend.mdms import ingest, routing
from headend.store import (
    BlockIngest,
    EventRecord,
    IntervalBlock,
    MidnightRegister,
    Source,
    open_store,
)
from headend.store.activity import Kind
from headend.store.records import DeliveryState, ReadSpec
from hil.broker import Broker, find_mosquitto, running_broker
from hil.wait import wait_until
from tests.conftest import missing
from tests.support.mqttpeer import Peer
from tests.support.service import make_config, running_service
from tests.support.signed import T0, SimMeter, deliver

pytestmark = pytest.mark.req("H05", "N03")

DAYS = 45
METER = 901
KEY = secrets.token_hex(32)
WORKER = "headend"
RECIPIENT = "billing"


def registered_ctx(url: str) -> Ctx:
    """A store with meter METER registered (through a signed register, as a meter does)."""
    core = Core(Ctx.build(Config(master_key=KEY), open_store(url)))
    m = SimMeter(METER, master=bytes.fromhex(KEY))
    deliver(core, METER, m.frame("register", m.register_body()))
    core.ctx.registry.get(METER)  # UnknownMeter if the register was refused
    return core.ctx


def big_result(ctx: Ctx, job_id: int, now_ms: int) -> dict[str, Any]:
    """45 days of 15-minute intervals, their midnight registers and 300 events, as the
    job's one part; returns the result as the job holds it."""
    meter = ctx.registry.get(METER)
    start = T0 - DAYS * 86_400
    secs = ingest.Sections(
        blocks=[
            BlockIngest(
                METER,
                IntervalBlock(start + d * 86_400, 900, (0,) * 96, (tuple(range(96)),) * 2),
                Source.ON_DEMAND,
                T0,
            )
            for d in range(DAYS)
        ],
        midnights=[
            MidnightRegister(METER, start + d * 86_400, (d, d), Source.ON_DEMAND, T0)
            for d in range(DAYS)
        ],
        events=[
            EventRecord(METER, 11, start + i * 3600, i, Source.ON_DEMAND, T0) for i in range(300)
        ],
    )
    data = ingest.engineering(meter, secs, Source.ON_DEMAND)
    with ctx.db.transaction():
        job = ctx.jobs.get(job_id)
        ondemand.on_part(ctx, job, {"part": 1, "parts": 1}, data, now_ms)
    return data


def queued_job(ctx: Ctx, now_ms: int) -> int:
    """A job sent by another worker (so the service under test leaves it alone)."""
    job_id = ondemand.request_read(ctx, ReadSpec(METER), RECIPIENT, now_ms)
    (job,) = ctx.jobs.claim("elsewhere", now_ms)
    ctx.jobs.sent(job.job_id, 1, now_ms, now_ms + 10**9)
    return job_id


def joined(messages: list[dict[str, Any]]) -> dict[str, Any]:
    """What a recipient does: the parts of one job, by part number, into one result."""
    by_part = {m["part"]: m for m in messages}
    (parts,) = {m["parts"] for m in messages}
    assert sorted(by_part) == list(range(1, parts + 1))
    first = by_part[1]["data"]
    whole = {k: v for k, v in first.items() if k not in routing.SPLIT}
    for key in routing.SPLIT:
        whole[key] = [x for n in range(1, parts + 1) for x in by_part[n]["data"].get(key, [])]
    return whole


def test_h05_45_day_result_split_into_acked_parts_that_fit(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ctx = registered_ctx(f"sqlite:///{tmp_path}/h.db")
    try:
        now = T0 * 1000
        job_id = queued_job(ctx, now)
        data = big_result(ctx, job_id, now)
        assert len(ingest.to_json(data)) > 30 * 8192  # the case: far over one packet
        topic = ctx.notify_topic(RECIPIENT)
        first = routing.send_due(ctx, now)
        sent = [(p.topic, json.loads(p.payload)) for p in first.publishes]
        assert len(sent) > 30 and {t for t, _ in sent} == {topic}
        assert all(len(p.payload) <= payload_limit(topic) for p in first.publishes)
        msgs = [m for _, m in sent]
        assert {(m["kind"], m["job"], m["meter"], m["state"]) for m in msgs} == {
            ("read", job_id, METER, "done")
        }
        assert joined(msgs) == data  # nothing lost, nothing twice, in order
        # unacked: re-sent as the same deliveries (a recipient tells a repeat by its id)
        again = routing.send_due(ctx, now + ctx.config.notify_retry_s * 1000)
        assert [json.loads(p.payload)["delivery"] for p in again.publishes] == [
            m["delivery"] for m in msgs
        ]
        # acked one by one: the job counts as acked with the last part only
        for m in msgs:
            assert ctx.jobs.get(job_id).requester_ack_ms is None
            assert routing.acknowledge(ctx, m["delivery"], RECIPIENT, now + 1)
        assert ctx.jobs.get(job_id).requester_ack_ms == now + 1
        assert not routing.send_due(ctx, now + 10**9).publishes
        # a payload that cannot fit even alone: an error, said once, never sent
        huge = {"job": job_id, "meter": METER, "data": {"events": [{"blob": "x" * 9000}]}}
        did = routing.notify(ctx, RECIPIENT, "read", huge, now)
        with caplog.at_level(logging.ERROR, logger="headend.mdms.routing"):
            assert not routing.send_due(ctx, now + 2).publishes
            assert not routing.send_due(ctx, now + 10**10).publishes
        (err,) = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert "over the broker's limit" in err and "not sent" in err
        d = ctx.events.get(did or 0)
        assert d is not None and d.state is DeliveryState.EXPIRED and d.attempts == 1
        assert any(
            a.kind == Kind.DELIVERY_EXPIRED and "not sent" in a.detail
            for a in ctx.activity.lines(METER)
        )
    finally:
        ctx.store.close()


@pytest.fixture(scope="module")
def secure_broker() -> Iterator[Broker]:
    if find_mosquitto() is None:
        missing("mosquitto not installed: run `make setup` (or apt-get install mosquitto)")
    with running_broker(
        master=bytes.fromhex(KEY), meters=(METER,), workers=(WORKER,), recipients=(RECIPIENT,)
    ) as b:
        yield b


@pytest.mark.timeout(90)
def test_h05_45_day_result_reaches_a_real_recipient_through_the_secure_broker(
    secure_broker: Broker, tmp_path: Path
) -> None:
    b = secure_broker
    url = f"sqlite:///{tmp_path}/h.db"
    cfg = make_config(
        b.url_for(WORKER),
        url,
        worker=WORKER,
        mqtt_ca_file=str(b.ca),
        master_key=KEY,
        notify_retry_s=3600,  # a re-send within the test would be a lost part
    )
    clock = Clock(cfg.speed, cfg.clock_start)
    ctx = registered_ctx(url)
    recipient = Peer(b.host, b.port, RECIPIENT, b.password(RECIPIENT), b.ca).connect()
    topic = f"{cfg.notify_topic}/{RECIPIENT}"
    try:
        assert recipient.accepted
        recipient.subscribe(topic)
        job_id = queued_job(ctx, clock.now_ms())
        data = big_result(ctx, job_id, clock.now_ms())
        n = len(ctx.events.deliveries(job_id=job_id))
        assert n > 30

        async def main() -> list[dict[str, Any]]:
            async with running_service(cfg, clock):
                await wait_until(
                    lambda: len(recipient.payloads(topic)) >= n, 30, "every part at the recipient"
                )
                msgs = [json.loads(p) for p in recipient.payloads(topic)]
                for m in msgs:
                    ack = json.dumps({"delivery": m["delivery"]}).encode()
                    await asyncio.to_thread(recipient.publish, m["ack_topic"], ack)
                await wait_until(
                    lambda: ctx.jobs.get(job_id).requester_ack_ms is not None, 30, "job acked"
                )
                return msgs

        msgs = asyncio.run(main())
        assert len(msgs) == n and joined(msgs) == data
        states = [(d.state, d.attempts) for d in ctx.events.deliveries(job_id=job_id)]
        assert states == [(DeliveryState.ACKED, 1)] * n  # each sent once, acked, none expired
    finally:
        recipient.close()
        ctx.store.close()
