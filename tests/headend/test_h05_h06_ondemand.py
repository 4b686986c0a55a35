"""H05, H06, N02: on-demand reads through jobs, on the running service.

Simulated time at 600x: the 4-minute answer timeout is 0.4 s of real time.
N02 is about measuring: latency is recorded per read (the figure is for
benches, never asserted against a clock here).
"""

from __future__ import annotations

import asyncio
import json

from headend.adcs import ondemand
from headend.clock import Clock
from headend.context import Ctx
from headend.store import Source, SqlStore
from headend.store.records import JobState, ReadSpec
from tests.headend.conftest import ctx_of, open_at
from tests.support.broker import Broker
from tests.support.fakemeter import FakeMeter, MqttLink, value
from tests.support.service import Subscriber, eventually, make_config, running_service


def _done(ctx: Ctx, job_id: int) -> bool:
    return ctx.jobs.get(job_id).state in (JobState.DONE, JobState.FAILED)


def test_h05_read_returns_data_to_requester_stores_it_and_records_the_ack(
    mqtt_broker: Broker, backend: str, store_at: list[SqlStore]
) -> None:
    cfg = make_config(mqtt_broker.url, backend, worker="h05")
    clock = Clock(cfg.speed, cfg.clock_start)

    async def main() -> None:
        async with (
            running_service(cfg, clock),
            Subscriber(mqtt_broker.host, mqtt_broker.port, ("ami/v1/notify/billing",)) as billing,
        ):
            m = FakeMeter(801, MqttLink(mqtt_broker.host, mqtt_broker.port, 801), clock, parts=3)
            await m.start()
            await m.register()
            store = open_at(backend, store_at)
            ctx = ctx_of(store)
            job_id = ondemand.request_read(ctx, ReadSpec(801), "billing", 0)
            await eventually(lambda: _done(ctx, job_id), 10, "job done")
            job = ctx.jobs.get(job_id)
            assert job.state is JobState.DONE and job.attempts == 1
            assert job.parts == 3 and job.parts_seen == (1, 2, 3)  # a multi-part answer
            # N02: measured per read, from the send (created_ms is set then) to the last part
            assert job.created_ms > 0 and job.latency_ms == (job.done_ms or 0) - job.created_ms
            assert 0 < job.latency_ms < cfg.ondemand_timeout_s * 1000  # one attempt
            result = json.loads(job.result or "")
            midnight = int(clock.now()) // 86400 * 86400
            n = (int(clock.now()) - midnight) // 900
            assert [iv["start"] for iv in result["intervals"]][:1] == ["2024-04-01T00:00:00Z"]
            assert len(result["intervals"]) == n and "registers" in result and "clock" in result
            stored = store.intervals(801, 1, midnight, midnight + 86400)
            assert len(stored) == n and {iv.source for iv in stored} == {Source.ON_DEMAND}
            assert stored[0].value == value(1, midnight, 900)
            # the result went to the requester, who acknowledges it over MQTT
            # (re-sent every notify_retry_s, 0.1 s here, until acknowledged: the same delivery)
            msg, *again = await eventually(lambda: billing.json(), 10, "result delivered")
            assert all(a["delivery"] == msg["delivery"] for a in again)
            assert msg["kind"] == "read" and msg["job"] == job_id and msg["state"] == "done"
            assert len(msg["data"]["intervals"]) == n
            await billing.publish(
                msg["ack_topic"], json.dumps({"delivery": msg["delivery"]}).encode()
            )
            await eventually(lambda: ctx.jobs.get(job_id).requester_ack_ms is not None, 10, "ack")
            kinds = [a.kind for a in ctx.activity.lines(801) if a.ref == str(job_id)]
            assert kinds[:2] == ["read_queued", "read_sent"]
            assert kinds[-2:] == ["read_done", "read_acked_by_requester"]
            await m.stop()

    asyncio.run(main())


def test_h06_no_answer_in_4_minutes_is_retried_once_and_then_succeeds(
    mqtt_broker: Broker, sqlite_url: str, store_at: list[SqlStore]
) -> None:
    cfg = make_config(mqtt_broker.url, sqlite_url, worker="h06a")
    clock = Clock(cfg.speed, cfg.clock_start)

    async def main() -> None:
        async with running_service(cfg, clock):
            m = FakeMeter(
                802, MqttLink(mqtt_broker.host, mqtt_broker.port, 802), clock, ignore_reads=1
            )
            await m.start()
            await m.register()
            ctx = ctx_of(open_at(sqlite_url, store_at))
            job_id = ondemand.request_read(ctx, ReadSpec(802), "cli", 0)
            await eventually(lambda: _done(ctx, job_id), 10, "job done")
            job = ctx.jobs.get(job_id)
            assert (job.state, job.attempts, len(job.seqs)) == (JobState.DONE, 2, 2)
            assert job.latency_ms is not None and job.latency_ms >= cfg.ondemand_timeout_s * 1000
            (retry,) = ctx.activity.lines(802, ["read_retry"])
            assert "no valid answer within 240 s" in retry.detail
            await m.stop()

    asyncio.run(main())


def test_h06_second_failure_notifies_requester_and_operator_with_trouble(
    mqtt_broker: Broker, sqlite_url: str, store_at: list[SqlStore]
) -> None:
    cfg = make_config(mqtt_broker.url, sqlite_url, worker="h06b")
    clock = Clock(cfg.speed, cfg.clock_start)

    async def main() -> None:
        async with (
            running_service(cfg, clock),
            Subscriber(mqtt_broker.host, mqtt_broker.port, ("ami/v1/notify/#",)) as inbox,
        ):
            m = FakeMeter(
                803, MqttLink(mqtt_broker.host, mqtt_broker.port, 803), clock, ignore_reads=5
            )
            await m.start()
            await m.register()
            ctx = ctx_of(open_at(sqlite_url, store_at))
            job_id = ondemand.request_read(ctx, ReadSpec(803), "outage-desk", 0)
            await eventually(lambda: _done(ctx, job_id), 10, "job closed")
            job = ctx.jobs.get(job_id)
            assert (job.state, job.attempts) == (JobState.FAILED, 2)
            assert job.trouble is not None and "meter 803" in job.trouble
            assert "sent 2 time(s)" in job.trouble and "no valid answer" in job.trouble
            to_req = await eventually(lambda: inbox.json("ami/v1/notify/outage-desk"), 10, "req")
            to_op = await eventually(lambda: inbox.json("ami/v1/notify/operator"), 10, "operator")
            assert to_req[0]["state"] == "failed" and to_req[0]["trouble"] == job.trouble
            assert to_op[0]["kind"] == "trouble" and to_op[0]["requester"] == "outage-desk"
            kinds = [
                a.kind for a in ctx.activity.lines(803, ["read_sent", "read_retry", "read_failed"])
            ]
            assert kinds == ["read_sent", "read_retry", "read_failed"]
            await m.stop()

    asyncio.run(main())


def test_h06_meter_nack_not_held_fails_at_once(
    mqtt_broker: Broker, sqlite_url: str, store_at: list[SqlStore]
) -> None:
    cfg = make_config(mqtt_broker.url, sqlite_url, worker="h06c")
    clock = Clock(cfg.speed, cfg.clock_start)

    async def main() -> None:
        async with running_service(cfg, clock):
            m = FakeMeter(
                804, MqttLink(mqtt_broker.host, mqtt_broker.port, 804), clock, nack_reads=5
            )
            await m.start()
            await m.register()
            ctx = ctx_of(open_at(sqlite_url, store_at))
            job_id = ondemand.request_read(ctx, ReadSpec(804, 0, 1, 2), "cli", 0)
            await eventually(lambda: _done(ctx, job_id), 10, "job closed")
            job = ctx.jobs.get(job_id)
            assert (job.state, job.attempts) == (JobState.FAILED, 1)
            assert job.trouble is not None and "not_held" in job.trouble
            await m.stop()

    asyncio.run(main())


def test_n02_latency_is_recorded_for_every_read(
    mqtt_broker: Broker, sqlite_url: str, store_at: list[SqlStore]
) -> None:
    cfg = make_config(mqtt_broker.url, sqlite_url, worker="n02")
    clock = Clock(cfg.speed, cfg.clock_start)

    async def main() -> None:
        async with running_service(cfg, clock):
            meters = [
                FakeMeter(i, MqttLink(mqtt_broker.host, mqtt_broker.port, i), clock)
                for i in range(810, 815)
            ]
            for mt in meters:
                await mt.start()
            await asyncio.gather(*(mt.register() for mt in meters))
            ctx = ctx_of(open_at(sqlite_url, store_at))
            jobs = [ondemand.request_read(ctx, ReadSpec(mt.meter_id), "cli", 0) for mt in meters]
            await eventually(lambda: all(_done(ctx, j) for j in jobs), 10, "all done")
            for j in jobs:
                job = ctx.jobs.get(j)
                assert job.state is JobState.DONE
                assert job.latency_ms == (job.done_ms or 0) - job.created_ms
            for mt in meters:
                await mt.stop()

    asyncio.run(main())
