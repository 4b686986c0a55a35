"""M20, T02: every uplink verified before anything acts on it, every downlink signed.

Driven through `Core.on_uplink` on a real store (SQLite, and PostgreSQL where
the backend matters: the uplink counter is one conditional UPDATE shared by
workers). `SimMeter` (tests/support/signed.py) is the meter's side.
"""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from headend.config import Config
from headend.context import Ctx
from headend.core import UPLINK_TYPES, Core
from headend.store import SqlStore, open_store
from headend.transport.base import Uplink
from protocol.frame import decode, encode
from tests.headend.conftest import open_at
from tests.support.signed import T0, SimMeter, deliver, frames_to
from tests.support.strategies import message

pytestmark = pytest.mark.req("M20", "T02")

DAY = 86_400


def core_at(url: str, opened: list[SqlStore], **cfg: Any) -> Core:
    return Core(Ctx.build(Config(**cfg), open_at(url, opened)))


def registered(core: Core, m: SimMeter) -> None:
    out = deliver(core, m.meter_id, m.frame("register", m.register_body()))
    (ack,) = frames_to(out, m.meter_id)
    assert m.take(ack) is not None and decode(ack)["body"]["status"] == 0


def with_meter(url: str, opened: list[SqlStore], meter_id: int) -> tuple[Core, SimMeter]:
    core, m = core_at(url, opened), SimMeter(meter_id)
    registered(core, m)
    return core, m


def scheduled_read(start: int, n: int) -> dict[str, Any]:
    block = {"start": start, "interval_s": 900, "flags": [0] * n, "channels": [[1] * n] * 2}
    body: dict[str, Any] = {"request_seq": 0, "kind": 0, "part": 1, "parts": 1}
    body["sections"] = [{"tag": "intervals", "body": block}]
    return body


def event(m: SimMeter, data: int) -> bytes:
    return m.frame("event", {"events": [{"code": 11, "time": T0, "data": data}]})


def test_m20_replay_refused_after_restart_and_by_a_second_worker(
    backend: str, store_at: list[SqlStore]
) -> None:
    one, two = core_at(backend, store_at), core_at(backend, store_at)
    m = SimMeter(701)
    registered(one, m)
    raw = event(m, 1)
    first, second = deliver(one, 701, raw), deliver(two, 701, raw)  # two workers, one frame
    assert [len(first.downlinks), len(second.downlinks)] == [1, 0]
    assert two.rejections.pending() == 1
    one.ctx.store.close()
    again = core_at(backend, store_at)  # the head-end restarted
    assert not deliver(again, 701, raw)  # the captured frame, replayed: refused, unanswered
    assert again.rejections.pending() == 1
    assert [e.data for e in again.ctx.store.events(701, T0, T0 + 1)] == [1]
    # the meter's next frame (a greater counter) is taken
    assert frames_to(deliver(again, 701, event(m, 2)), 701)
    assert m.refused == []


def test_m20_unsigned_forged_and_unknown_leave_no_state_and_get_no_answer(
    sqlite_url: str, store_at: list[SqlStore]
) -> None:
    core, m = with_meter(sqlite_url, store_at, 702)
    body = {"events": [{"code": 11, "time": T0, "data": 5}]}
    fields = {"type": "event", "seq": 9, "meter_id": 702, "timestamp": T0, "body": body}
    unsigned = encode({**fields, "auth": None})
    forged = encode({**fields, "auth": {"counter": 99, "mac": b""}}, key=b"\x55" * 32)
    for n in range(500):  # junk under made-up meter ids too
        mid = 10_000 + n
        auth = {"counter": 1, "mac": b""}
        stranger = encode({**fields, "meter_id": mid, "auth": auth}, b"x" * 32)
        assert not deliver(core, mid, stranger)
    assert not deliver(core, 702, unsigned) and not deliver(core, 702, forged)
    db = core.ctx.db
    assert db.query("SELECT meter_id FROM meter_auth") == [(702,)]  # no row for a stranger
    assert core.ctx.store.events(702, T0, T0 + 1) == []
    assert core.ctx.activity.lines(kinds=["rejected", "bad_frame"]) == []  # nothing per frame
    # written once a minute: one row per reason, however many frames
    core.tick(T0 * 1000 + 61_000)
    rows = core.ctx.activity.lines(kinds=["rejected"])
    assert len(rows) == 1 and rows[0].detail.startswith("502 frame(s) refused")
    assert "BadMac" in rows[0].detail


def test_m20_every_downlink_is_signed_and_t3_follows_the_counter(
    sqlite_url: str, store_at: list[SqlStore]
) -> None:
    core, m = with_meter(sqlite_url, store_at, 703)
    db = core.ctx.db
    counters: list[int] = []

    def clock() -> int:  # t3: the counter for this answer is already taken
        row = db.query("SELECT counter FROM auth_counter WHERE meter_id = 703")[0]
        counters.append(int(row[0]))
        return T0 * 1000 + 5

    req = m.frame("time_sync_request", {"t1_ms": T0 * 1000 - 10})
    out = core.on_uplink(Uplink(703, req, "mqtt"), T0 * 1000, clock)
    (resp,) = frames_to(out, 703)
    fields = m.take(resp)
    assert fields is not None and fields["body"]["t3_ms"] == T0 * 1000 + 5
    assert counters == [fields["auth"]["counter"]]
    read = scheduled_read(T0 - DAY, 96)
    answers = [
        *frames_to(deliver(core, 703, m.frame("read_response", read)), 703),
        *frames_to(deliver(core, 703, event(m, 3)), 703),
        *frames_to(deliver(core, 704, SimMeter(704).frame("event", {"events": []})), 704),
    ]
    taken = [m.take(a) if decode(a)["meter_id"] == 703 else SimMeter(704).take(a) for a in answers]
    assert [f["type"] for f in taken if f] == ["read_ack", "event_ack", "nack"]
    assert m.refused == []


def test_m20_a_block_ending_after_2_32_s_is_a_counted_refusal(
    sqlite_url: str, store_at: list[SqlStore]
) -> None:
    core, m = with_meter(sqlite_url, store_at, 705)
    body = scheduled_read((2**32 // 900 - 2) * 900, 4)  # ends after 2**32 - 1
    before = core.ctx.store.stats()
    assert not deliver(core, 705, m.frame("read_response", body))  # no read_ack, no traceback
    assert core.ctx.store.stats() == before
    assert core.rejections.pending() == 1


FUZZ = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module")
def fuzz_core(tmp_path_factory: pytest.TempPathFactory) -> Any:
    store = open_store(f"sqlite:///{tmp_path_factory.mktemp('fuzz')}/h.db")
    core = Core(Ctx.build(Config(), store))
    m = SimMeter(706)
    registered(core, m)
    yield core, m
    store.close()


@FUZZ
@given(raw=st.binary(max_size=300))
def test_m20_arbitrary_bytes_never_raise(fuzz_core: Any, raw: bytes) -> None:
    core, _ = fuzz_core
    core.on_uplink(Uplink(706, raw, "mqtt"), T0 * 1000)
    if len(raw) > 9:  # also with a header naming the registered meter
        core.on_uplink(Uplink(706, raw[:5] + struct.pack(">I", 706) + raw[9:], "mqtt"), T0 * 1000)


@FUZZ
@given(fields=message(types=tuple(sorted(UPLINK_TYPES))))
def test_m20_arbitrary_signed_bodies_never_raise(fuzz_core: Any, fields: dict[str, Any]) -> None:
    core, m = fuzz_core
    m.counter += 1
    fields = {**fields, "meter_id": 706, "auth": {"counter": m.counter, "mac": b""}}
    try:
        raw = encode(fields, key=m.key)
    except Exception:  # noqa: BLE001  (a body the codec cannot build is not the point)
        return
    out = core.on_uplink(Uplink(706, raw, "mqtt"), T0 * 1000)
    for d in out.downlinks:  # whatever it answers, it signed
        assert decode(d.wire())["auth"] is not None


def test_m20_event_dedupe_cost_does_not_grow_with_stored_events(
    sqlite_url: str, store_at: list[SqlStore]
) -> None:
    core = core_at(sqlite_url, store_at)
    few, many = SimMeter(711), SimMeter(712)
    for m in (few, many):
        registered(core, m)
    db = core.ctx.db
    with db.transaction():
        for mid, n in ((711, 10), (712, 100_000)):
            db.executemany(
                "INSERT INTO meter_event (meter_id, time, code, data, seq, source, received_at) "
                "VALUES (?, ?, 1, 0, NULL, 1, 0)",
                [(mid, T0 - DAY + i) for i in range(n)],
            )
    conn = db._conn  # type: ignore[attr-defined]  # SQLite's VM steps: a deterministic cost
    steps: dict[int, int] = {}
    spread = [{"code": 11, "time": t, "data": 1} for t in (0, T0 - DAY + 5, 2**32 - 1)]

    def tally(mid: int) -> int:
        steps[mid] = steps.get(mid, 0) + 1
        return 0

    for m in (few, many):
        raw = m.frame("event", {"events": spread})
        conn.set_progress_handler(lambda mid=m.meter_id: tally(mid), 100)
        assert frames_to(deliver(core, m.meter_id, raw), m.meter_id)  # acked
        conn.set_progress_handler(None, 0)
    assert len(core.ctx.store.events(712, 0, 2**32)) == 100_003
    assert steps[712] < 2 * steps[711] + 50, steps  # a scan of 100k rows would be ~1000x
