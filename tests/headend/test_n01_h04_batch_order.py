"""N01/H04/M20: a batch of uplinks is handled in meter order, each frame checked alone.

`Core.on_uplinks` handles a batch's frames sorted by meter id (stable: a meter's
own frames keep their order), so workers sharing PostgreSQL take the meters'
rows in one order; the answers still come back in the batch's order. The
batch reads its meters' auth rows and registrations once: a meter's second
frame in the batch is still checked against what its first one wrote (a
replay inside the batch is refused, a forged frame does not spoil the next).
A batch runs first without savepoints; a frame with writes to undo makes it
run again with one per frame: its lines and refusals are kept once.
"""

from __future__ import annotations

from typing import Any

import pytest

from headend.core import Core
from headend.store import SqlStore
from headend.store.base import DAY_S
from headend.transport.base import Uplink
from protocol.frame import decode
from tests.headend.conftest import ctx_of, open_at
from tests.support.signed import T0, SimMeter, frames_to

pytestmark = pytest.mark.req("N01", "H04", "M20")


def _registered(core: Core, *meters: SimMeter) -> None:
    regs = [
        (Uplink(m.meter_id, m.frame("register", m.register_body()), "mqtt"), T0 * 1000)
        for m in meters
    ]
    assert all(o is not None and o.downlinks for o in core.on_uplinks(regs))


def _event(m: SimMeter, at: int) -> Uplink:
    body: dict[str, Any] = {"events": [{"code": 2, "time": at, "data": 0}]}
    return Uplink(m.meter_id, m.frame("event", body, T0), "mqtt")


def _answers(outs: list[Any], ups: list[Uplink]) -> list[list[str]]:
    return [
        [decode(f)["type"] for f in frames_to(out, up.meter_id)] if out is not None else []
        for out, up in zip(outs, ups, strict=True)
    ]


def test_n01_h04_batch_handled_in_meter_order_answered_in_its_own(
    backend: str, store_at: list[SqlStore]
) -> None:
    core = Core(ctx_of(open_at(backend, store_at)))
    c, a, b = SimMeter(3003), SimMeter(3001), SimMeter(3002)
    _registered(core, c, a, b)
    ups = [_event(c, T0 - 900), _event(a, T0 - 800), _event(c, T0 - 700), _event(b, T0 - 600)]
    outs = core.on_uplinks([(up, T0 * 1000 + 1) for up in ups])
    assert _answers(outs, ups) == [["event_ack"]] * 4
    # handled (logged) by meter id; meter 3003's two frames in their own order
    stored = core.ctx.activity.lines(kinds=["event_stored"])
    assert [(x.meter_id, x.detail.split("@")[1][:19]) for x in stored] == [
        (3001, "2024-03-31T23:46:40"),
        (3002, "2024-03-31T23:50:00"),
        (3003, "2024-03-31T23:45:00"),
        (3003, "2024-03-31T23:48:20"),
    ]


def test_m20_n01_a_meters_frames_in_one_batch_each_meet_the_replay_window(
    backend: str, store_at: list[SqlStore]
) -> None:
    core = Core(ctx_of(open_at(backend, store_at)))
    m = SimMeter(3101)
    forger = SimMeter(3101, master=b"\1" * 32, counter=100)
    _registered(core, m)
    old = _event(m, T0 - 900)
    assert _answers(core.on_uplinks([(old, T0 * 1000)]), [old]) == [["event_ack"]]
    good = _event(m, T0 - 800)
    ups = [old, _event(forger, T0 - 850), good, good, _event(m, T0 - 700)]
    outs = core.on_uplinks([(up, T0 * 1000 + 1) for up in ups])
    # a replay of an earlier batch's frame, a forgery, then a good frame and its replay
    assert _answers(outs, ups) == [[], [], ["event_ack"], [], ["event_ack"]]
    assert core.rejections.total == 3


def test_n01_h04_a_batchs_activity_lines_one_write_a_refused_frames_undone(
    backend: str, store_at: list[SqlStore]
) -> None:
    core = Core(ctx_of(open_at(backend, store_at)))
    m, forger = SimMeter(3201), SimMeter(3202, master=b"\1" * 32)
    _registered(core, m)
    day = (T0 // DAY_S - 1) * DAY_S
    block = {"start": day, "interval_s": 900, "flags": [0] * 96, "channels": [[5] * 96] * 3}
    body = {"request_seq": 0, "kind": 0, "part": 1, "parts": 1, "sections": []}
    body["sections"] = [{"tag": "intervals", "body": block}]
    # heard on another link (a line logged), then refused: 3 channels for a 2-channel meter
    bad = Uplink(m.meter_id, m.frame("read_response", body, T0), "serial0")
    ups = [_event(m, T0 - 500), bad, _event(forger, T0 - 400)]
    outs = core.on_uplinks([(up, T0 * 1000 + 1) for up in ups])
    assert _answers(outs, ups) == [["event_ack"], [], []]
    lines = core.ctx.activity.lines(since_ms=T0 * 1000 + 1)
    assert [(x.meter_id, x.kind) for x in lines] == [(3201, "event_stored")]
    assert core.ctx.registry.get(m.meter_id).transport == "mqtt"
    # the refused read made the batch run again, a savepoint per frame: counted once
    assert core.rejections.total == 2


def test_n01_h04_a_frame_failing_on_a_bug_fails_alone_its_writes_undone(
    backend: str, store_at: list[SqlStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    core = Core(ctx_of(open_at(backend, store_at)))
    a, x, b = SimMeter(3301), SimMeter(3302), SimMeter(3303)
    _registered(core, a, x, b)
    seen = core.ctx.registry.link_seen

    def buggy(meter_id: int, *args: Any, **kw: Any) -> str | None:
        if meter_id == x.meter_id:  # after its counter was taken: there is a write to undo
            raise RuntimeError("a bug")
        return seen(meter_id, *args, **kw)

    monkeypatch.setattr(core.ctx.registry, "link_seen", buggy)
    ups = [_event(a, T0 - 300), _event(x, T0 - 300), _event(b, T0 - 300)]
    outs = core.on_uplinks([(up, T0 * 1000 + 1) for up in ups])
    assert outs[1] is None and _answers(outs, ups) == [["event_ack"], [], ["event_ack"]]
    monkeypatch.setattr(core.ctx.registry, "link_seen", seen)
    # its counter was not kept: the meter's repeat of that very frame is taken
    assert _answers(core.on_uplinks([(ups[1], T0 * 1000 + 2)]), ups[1:2]) == [["event_ack"]]
