"""H04, D01, N04 on the running service: scheduled reads into the store, acked
after the commit, published in engineering units; bad input and outages.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from decimal import Decimal

import psycopg
import pytest

from headend.clock import Clock
from headend.store import Source, SqlStore
from protocol.frame import decode, encode
from tests.headend.conftest import ctx_of, open_at
from tests.support.broker import Broker
from tests.support.fakemeter import DAY, FakeMeter, MqttLink, value
from tests.support.service import (
    T0,
    Subscriber,
    eventually,
    make_config,
    running_service,
)

DAY1 = T0 - DAY  # 2024-03-31, the day before the service's clock


def test_h04_n04_scheduled_read_stored_translated_acked_and_published_on_receipt(
    mqtt_broker: Broker, backend: str, store_at: list[SqlStore]
) -> None:
    # poll_s huge: the ticker runs once at start, so anything below happens on receipt (N04)
    cfg = make_config(mqtt_broker.url, backend, poll_s=1000, worker="h04")
    clock = Clock(cfg.speed, cfg.clock_start)

    async def main() -> None:
        async with (
            running_service(cfg, clock),
            Subscriber(mqtt_broker.host, mqtt_broker.port, ("ami/v1/data/+",)) as rt,
        ):
            m = FakeMeter(
                401,
                MqttLink(mqtt_broker.host, mqtt_broker.port, 401),
                clock,
                meter_multiplier=3,
                channel_multiplier=2,
                scaler=-1,
            )
            await m.start()
            await m.register()
            ack = await m.daily_read(DAY1, events=[{"code": 1, "time": DAY1 + 60, "data": 0}])
            assert ack["body"]["upto"] == DAY1 + DAY  # end of the last interval received
            store = open_at(backend, store_at)
            got = store.intervals(401, 0, DAY1, DAY1 + DAY)
            starts = range(DAY1, DAY1 + DAY, 900)
            assert [(iv.start, iv.value) for iv in got] == [(t, value(0, t, 900)) for t in starts]
            assert {iv.source for iv in got} == {Source.SCHEDULED}
            (mid,) = store.midnight_registers(401, DAY1, DAY1 + 2 * DAY)
            assert mid.day == DAY1 + DAY and mid.values == tuple(m.register_values(DAY1 + DAY))
            assert [(e.code, e.time) for e in store.events(401, DAY1, T0)] == [(1, DAY1 + 60)]
            # a day of intervals is over the broker's 8 KiB packet limit: in parts that fit
            msgs = await eventually(
                lambda: (
                    (m := rt.json("ami/v1/data/401"))
                    and sum(len(x["intervals"]) for x in m) == 96
                    and m
                ),
                10,
                "real-time",
            )
            for msg in msgs:
                assert msg["meter"] == 401 and msg["source"] == "scheduled"
                assert [c["unit"] for c in msg["channels"]] == ["Wh", "Wh", "varh", "varh"]
            assert all(len(json.dumps(m, separators=(",", ":"))) < 8192 for m in msgs)
            first = msgs[0]["intervals"][0]
            assert first["start"] == "2024-03-31T00:00:00Z"
            # raw x channel multiplier 2 x 10^-1 x meter multiplier 3, exact
            raw = [value(c, DAY1, 900) for c in range(4)]
            assert [Decimal(v) for v in first["values"]] == [Decimal(r * 6) / 10 for r in raw]
            # the meter repeats the frame (its ack was lost): stored once, nothing re-published
            before = store.stats()
            await m.daily_read(DAY1, events=[{"code": 1, "time": DAY1 + 60, "data": 0}])
            after = store.stats()
            assert (
                (after.intervals, after.midnight_registers, after.events)
                == (
                    before.intervals,
                    before.midnight_registers,
                    before.events,
                )
                == (96, 1, 1)
            )
            # the day before, read after it: its publication follows any the repeat made
            await m.daily_read(DAY1 - DAY)
            n = len(msgs)
            await eventually(
                lambda: sum(len(x["intervals"]) for x in rt.json("ami/v1/data/401")[n:]) == 96,
                10,
                "the day before published",
            )
            days = [msg["intervals"][0]["start"][:10] for msg in rt.json("ami/v1/data/401")]
            assert days == ["2024-03-31"] * n + ["2024-03-30"] * n  # the repeat: none
            await m.stop()

    asyncio.run(main())


def test_h04_realtime_off_stores_and_acks_but_publishes_nothing(
    mqtt_broker: Broker, sqlite_url: str, store_at: list[SqlStore]
) -> None:
    """``realtime = false`` (a site without real-time subscribers): collection as
    before, no real-time message."""
    cfg = make_config(mqtt_broker.url, sqlite_url, poll_s=1000, worker="h04off", realtime=False)
    clock = Clock(cfg.speed, cfg.clock_start)

    async def main() -> None:
        # one subscriber of both topics: the worker sends a read's real-time parts
        # before the next read's ack, over one connection, so they would reach it first
        topics = ("ami/v1/data/+", "ami/v1/403/down")
        async with (
            running_service(cfg, clock),
            Subscriber(mqtt_broker.host, mqtt_broker.port, topics) as rt,
        ):
            m = FakeMeter(403, MqttLink(mqtt_broker.host, mqtt_broker.port, 403), clock)
            await m.start()
            await m.register()
            await m.daily_read(DAY1 - DAY)
            await m.daily_read(DAY1)
            await eventually(
                lambda: (
                    [decode(p)["type"] for t, p in rt.got if t.endswith("/down")].count("read_ack")
                    == 2
                ),
                10,
                "the second read's ack",
            )
            store = open_at(sqlite_url, store_at)
            assert len(store.intervals(403, 0, DAY1 - DAY, DAY1 + DAY)) == 2 * 96
            assert rt.json("ami/v1/data/") == []
            await m.stop()

    asyncio.run(main())


def test_d01_bad_input_is_logged_and_changes_nothing(
    mqtt_broker: Broker, sqlite_url: str, store_at: list[SqlStore]
) -> None:
    cfg = make_config(mqtt_broker.url, sqlite_url, worker="d01bad")
    clock = Clock(cfg.speed, cfg.clock_start)

    async def main() -> None:
        async with (
            running_service(cfg, clock) as svc,
            Subscriber(mqtt_broker.host, mqtt_broker.port, ()) as evil,
        ):
            good = FakeMeter(501, MqttLink(mqtt_broker.host, mqtt_broker.port, 501), clock)
            stranger = FakeMeter(502, MqttLink(mqtt_broker.host, mqtt_broker.port, 502), clock)
            for m in (good, stranger):
                await m.start()
            await good.register()
            store = open_at(sqlite_url, store_at)
            ctx = ctx_of(store)
            before = store.stats()
            _, frame = good.frame("event", {"events": [{"code": 11, "time": T0, "data": 0}]})
            await evil.publish("ami/v1/501/up", b"\x01\x02garbage")  # undecodable
            await evil.publish("ami/v1/501/up", frame[:-1] + bytes([frame[-1] ^ 1]))  # bad CRC
            await evil.publish("ami/v1/503/up", frame)  # topic says 503, frame says 501
            await evil.publish("ami/v1/notameter/up", frame)  # no meter in the topic
            forged = encode(
                {
                    "type": "schedule_set",
                    "seq": 9,
                    "meter_id": 501,
                    "timestamp": T0,
                    "auth": None,
                    "body": {"slots": []},
                }
            )
            await evil.publish("ami/v1/501/up", forged)  # a downlink type sent up
            signed = encode(
                {
                    "type": "event",
                    "seq": 10,
                    "meter_id": 501,
                    "timestamp": T0,
                    "auth": {"counter": 5, "mac": b""},
                    "body": {"events": [{"code": 11, "time": T0, "data": 1}]},
                },
                key=b"\x55" * 32,  # not the meter's key
            )
            await evil.publish("ami/v1/501/up", signed)
            unsigned = encode(
                {
                    "type": "event",
                    "seq": 12,
                    "meter_id": 501,
                    "timestamp": T0,
                    "auth": None,
                    "body": {"events": [{"code": 11, "time": T0, "data": 3}]},
                }
            )
            await evil.publish("ami/v1/501/up", unsigned)  # M20: unsigned uplinks are refused
            # an unregistered meter's data: logged, nacked "not registered", not stored
            await stranger.send("event", {"events": [{"code": 11, "time": T0, "data": 2}]})
            nack = await eventually(
                lambda: [f for f in stranger.received if f["type"] == "nack"], 10, "nack 10"
            )
            assert nack[0]["body"]["reason"] == 10
            kinds = await eventually(
                lambda: (
                    len(ctx.activity.lines(kinds=["bad_frame", "rejected", "unknown_meter"])) >= 6
                    and [
                        a.kind
                        for a in ctx.activity.lines(
                            kinds=["bad_frame", "rejected", "unknown_meter"]
                        )
                    ]
                ),
                10,
                "every bad input logged",
            )
            assert kinds.count("bad_frame") == 2 and kinds.count("unknown_meter") == 1
            details = " | ".join(
                a.detail for a in ctx.activity.lines(kinds=["bad_frame", "rejected"])
            )
            for reason in ("BadCrc", "frame says meter 501", "not a meter uplink", "BadMac"):
                assert reason in details
            # counted per reason: ONE row for the two frames with no valid MAC
            (bad_mac,) = [a for a in ctx.activity.lines(kinds=["rejected"]) if "BadMac" in a.detail]
            assert bad_mac.detail.startswith("2 frame(s) refused") and bad_mac.meter_id == 501
            assert svc.mqtt.dropped >= 1
            assert store.stats() == before  # nothing stored from any of it
            # and the service carries on
            await good.push_events([{"code": 11, "time": T0, "data": 7}])
            assert [e.data for e in store.events(501, T0, T0 + 1)] == [7]
            # a correctly signed uplink is taken once; the same bytes again are a replay
            signed_ok = encode(
                {
                    "type": "event",
                    "seq": 11,
                    "meter_id": 501,
                    "timestamp": T0,
                    "auth": {"counter": 1 << 30, "mac": b""},  # newer than any the meter sent
                    "body": {"events": [{"code": 11, "time": T0, "data": 8}]},
                },
                key=good.key,
            )
            await evil.publish("ami/v1/501/up", signed_ok)
            await eventually(lambda: len(store.events(501, T0, T0 + 1)) == 2, 10, "signed taken")
            await evil.publish("ami/v1/501/up", signed_ok)
            await eventually(
                lambda: any("Replay" in a.detail for a in ctx.activity.lines(kinds=["rejected"])),
                10,
                "replay logged",
            )
            for m in (good, stranger):
                await m.stop()

    asyncio.run(main())


def test_d01_broker_outage_loses_nothing_and_doubles_nothing(
    mqtt_broker_private: Broker, sqlite_url: str, store_at: list[SqlStore]
) -> None:
    broker = mqtt_broker_private
    cfg = make_config(broker.url, sqlite_url, worker="d01mqtt")
    clock = Clock(cfg.speed, cfg.clock_start)

    async def main() -> None:
        async with running_service(cfg, clock) as svc:
            m = FakeMeter(601, MqttLink(broker.host, broker.port, 601), clock)
            await m.start()
            await m.register()
            await m.daily_read(DAY1 - DAY)
            broker.stop()  # outage: both ends lose the broker
            send = asyncio.create_task(
                m.daily_read(DAY1, events=[{"code": 2, "time": DAY1, "data": 0}])
            )
            await eventually(
                lambda: not (svc.mqtt.connected.is_set() or m.link.connected.is_set()),
                10,
                "both ends lost the broker",
            )
            broker.start()
            await asyncio.wait_for(send, 30)  # acked once the link is back
            await m.daily_read(DAY1)  # a repeat after the outage
            store = open_at(sqlite_url, store_at)
            st = store.stats()
            assert (st.meter_days, st.intervals, st.midnight_registers) == (2, 192, 2)
            assert svc.mqtt.reconnects >= 1
            await m.stop()

    asyncio.run(main())


def _hold_database(url: str, schema_url: str) -> tuple[object, str]:
    """Start an outage: lock the SQLite file, or kill the service's PostgreSQL session."""
    if url.startswith("sqlite:///"):
        conn = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
        conn.execute("BEGIN EXCLUSIVE")
        return conn, "sqlite"
    with psycopg.connect(url.split("?")[0], autocommit=True) as c:
        c.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = 'headend-outage-test'"
        )
    return None, "postgres"


@pytest.mark.parametrize("_", [0])
def test_d01_database_outage_is_survived(
    mqtt_broker: Broker, backend: str, store_at: list[SqlStore], _: int
) -> None:
    url = backend + ("&application_name=headend-outage-test" if "?" in backend else "")
    cfg = make_config(mqtt_broker.url, url, worker="d01db")
    clock = Clock(cfg.speed, cfg.clock_start)

    async def main() -> None:
        async with running_service(cfg, clock) as svc:
            m = FakeMeter(701, MqttLink(mqtt_broker.host, mqtt_broker.port, 701), clock)
            await m.start()
            await m.register()
            await m.daily_read(DAY1 - DAY)
            held, kind = _hold_database(url, backend)
            tries = m.tries
            send = asyncio.create_task(m.daily_read(DAY1))
            if kind == "sqlite":
                # a retry period went by unacked: the meter sent its read again
                await eventually(lambda: m.tries >= tries + 2, 10, "the meter sent it again")
                assert not send.done()  # nothing acked while the database cannot commit
                held.rollback()  # type: ignore[attr-defined]
                held.close()  # type: ignore[attr-defined]
            await asyncio.wait_for(send, 30)
            store = open_at(backend, store_at)
            st = store.stats()
            assert (st.meter_days, st.intervals) == (2, 192)
            if kind == "postgres":
                assert svc.db_failures >= 1  # the killed connection was replaced
            await m.stop()

    asyncio.run(main())
