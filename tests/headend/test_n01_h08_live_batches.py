"""N01/H08: a batch of uplinks is acknowledged only after its commit.

The service's batch (many uplinks, one transaction) meets a database failure
in its middle: nothing of that batch is acknowledged then; the service
reconnects, handles the whole batch again, and every uplink is acknowledged
once, after that commit, its data stored once.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from typing import Any

import pytest

from headend.service import Service
from headend.store import SqlStore, open_store
from headend.store.base import DAY_S
from headend.transport.base import Uplink
from headend.transport.mqtt import Message
from protocol.frame import decode
from tests.support.service import make_config
from tests.support.signed import SimMeter

pytestmark = pytest.mark.req("N01", "H08")


class FailOnce:
    """Opens real stores; the first one fails on the Nth statement that starts with
    ``prefix``."""

    def __init__(self, url: str, prefix: str, nth: int, sent: list[tuple[int, bytes]]) -> None:
        self.url, self.prefix, self.nth, self.sent = url, prefix, nth, sent
        self.failed_with_sent: list[tuple[int, bytes]] | None = None
        self.opened = 0

    def __call__(self, _url: str) -> SqlStore:
        store = open_store(self.url)
        self.opened += 1
        if self.opened == 1:
            store.db._conn = _Failing(store.db._conn, self)  # type: ignore[attr-defined]  # noqa: SLF001
        return store


class _Failing:
    """A sqlite3 connection that fails the plan's Nth statement (a disk error)."""

    def __init__(self, conn: sqlite3.Connection, plan: FailOnce) -> None:
        self._conn, self._plan, self._seen = conn, plan, 0

    def execute(self, sql: str, params: Any = ()) -> sqlite3.Cursor:
        if sql.lstrip().startswith(self._plan.prefix):
            self._seen += 1
            if self._seen == self._plan.nth and self._plan.failed_with_sent is None:
                self._plan.failed_with_sent = list(self._plan.sent)
                raise sqlite3.OperationalError("disk I/O error (injected)")
        return self._conn.execute(sql, params)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


def _read_body(day: int) -> dict[str, Any]:
    block = {"start": day, "interval_s": 900, "flags": [0] * 96, "channels": [[5] * 96] * 2}
    sections = [
        {"tag": "intervals", "body": block},
        {"tag": "midnight", "body": {"day": day + DAY_S, "values": [480, 480]}},
    ]
    return {"request_seq": 0, "kind": 0, "part": 1, "parts": 1, "sections": sections}


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    ("prefix", "nth", "days"),
    [
        # two reads per meter: each frame moves its replay window alone; the 3rd fails
        ("UPDATE meter_auth", 3, 2),
        # one read per meter: the batch's reads stored together at its end, their
        # replay windows, their acks' counters and their data one statement each
        ("WITH v (m, hi, win", 1, 1),
        ("INSERT INTO auth_counter", 7, 1),  # (the 6 before: the registrations' acks)
        ("INSERT INTO interval_day", 1, 1),
    ],
)
def test_n01_h08_database_failure_mid_batch_acks_nothing_of_it(
    tmp_path: object, prefix: str, nth: int, days: int
) -> None:
    asyncio.run(_failure_mid_batch(str(tmp_path), prefix, nth, days))


async def _failure_mid_batch(tmp_path: str, prefix: str, nth: int, days: int) -> None:
    url = f"sqlite:///{tmp_path}/headend.db"
    now = int(time.time())
    cfg = make_config("mqtt://127.0.0.1:1", url, speed=1.0, clock_start=now, poll_s=3600)
    sent: list[tuple[int, bytes]] = []
    opener = FailOnce(url, prefix, nth, sent)
    svc = Service(cfg, opener=opener)

    async def publish_many(msgs: list[Message]) -> list[None]:
        sent.extend(
            (int(m.topic.split("/")[2]), m.payload) for m in msgs if m.topic.endswith("/down")
        )
        return [None] * len(msgs)

    svc.mqtt.publish_many = publish_many  # type: ignore[method-assign]
    meters = [SimMeter(3000 + i, master=bytes.fromhex(cfg.master_key)) for i in range(6)]
    day = now // DAY_S * DAY_S - DAY_S
    try:
        regs = [
            Uplink(m.meter_id, m.frame("register", m.register_body(), day), "mqtt") for m in meters
        ]
        await asyncio.gather(*(svc.deliver(u) for u in regs))
        assert len(sent) == len(meters) and opener.opened == 1
        sent.clear()
        first = day - (days - 1) * DAY_S
        reads = [
            Uplink(m.meter_id, m.frame("read_response", _read_body(d), d + DAY_S), "mqtt")
            for m in meters
            for d in range(first, day + 1, DAY_S)
        ]
        await asyncio.wait_for(asyncio.gather(*(svc.deliver(u) for u in reads)), 15)
    finally:
        await svc._on_db(svc._close)  # noqa: SLF001 - the service was never run()
        svc._db_thread.shutdown(wait=True)  # noqa: SLF001
    # the failure came inside the batch, before anything of it went out
    assert opener.failed_with_sent == []
    assert svc.db_failures == 1 and opener.opened == 2
    acks = [decode(f) for _, f in sent]
    assert sorted((a["meter_id"], a["type"]) for a in acks) == [
        (m.meter_id, "read_ack") for m in meters for _ in range(days)
    ]
    check = open_store(url)
    try:
        rows = check.db.query("SELECT meter_id, n_present FROM interval_day ORDER BY meter_id, day")
    finally:
        check.close()
    assert [tuple(r) for r in rows] == [(m.meter_id, 96) for m in meters for _ in range(days)]
