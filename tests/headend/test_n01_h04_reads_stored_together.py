"""N01/H04/D01: a batch's scheduled reads are stored together, as if one by one.

In a batch's first try, the read answers of meters with one frame in it are
stored with one statement per table at its end (`Core._store_reads`), not a
few statements per frame. What a meter sees and what is stored must not
depend on it: the same rows, answers, real-time publications and activity
lines as the same frames handled one by one (`Core.on_uplink`), a repeated
frame still "0 new" and unpublished, and a frame the store refuses refused
alone, the batch's others stored and acknowledged.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

import pytest

from headend.core import Core
from headend.outbox import Outbox
from headend.store import SqlStore
from headend.store.base import DAY_S
from headend.store.readings import Readings
from headend.transport.base import Uplink
from protocol.codes import Event
from protocol.frame import decode
from tests.headend.conftest import ctx_of, open_at
from tests.support.signed import T0, SimMeter

pytestmark = pytest.mark.req("N01", "H04", "D01")

DAY = T0 - DAY_S
N = 6  # meters in each group


def _read_body(k: int, channels: int = 2) -> dict[str, Any]:
    """Meter k's day: its own values, midnight registers, one event."""
    block = {
        "start": DAY,
        "interval_s": 900,
        "flags": [0] * 96,
        "channels": [[(i * 7 + k * 3 + c) % 50 for i in range(96)] for c in range(channels)],
    }
    event = {"code": int(Event.POWER_UP), "time": DAY + 3600 + k, "data": k}
    sections = [
        {"tag": "intervals", "body": block},
        {"tag": "midnight", "body": {"day": DAY + DAY_S, "values": [480 + k] * channels}},
        {"tag": "events", "body": [event]},
    ]
    return {"request_seq": 0, "kind": 0, "part": 1, "parts": 1, "sections": sections}


def _registered(core: Core, meters: list[SimMeter]) -> None:
    regs = [
        (Uplink(m.meter_id, m.frame("register", m.register_body(), DAY), "mqtt"), T0 * 1000)
        for m in meters
    ]
    assert all(o is not None and o.downlinks for o in core.on_uplinks(regs))


def _seen(core: Core, m: SimMeter, out: Outbox | None) -> dict[str, Any]:
    """What one meter got and what is stored of it, with its id taken out."""
    assert out is not None
    acks = [decode(d.wire())["body"] for d in out.downlinks if d.meter_id == m.meter_id]
    pubs = [p.payload.replace(str(m.meter_id).encode(), b"M") for p in out.publishes]
    db = core.ctx.db
    rows = db.query(
        "SELECT day, n_present, vals, flags, srcs FROM interval_day WHERE meter_id = ?",
        (m.meter_id,),
    )
    mids = db.query(
        "SELECT day, channel, value FROM midnight_register WHERE meter_id = ? ORDER BY channel",
        (m.meter_id,),
    )
    events = db.query("SELECT time, code, data FROM meter_event WHERE meter_id = ?", (m.meter_id,))
    links = db.query(
        "SELECT transport, first_seen_ms, last_seen_ms, frames FROM meter_link WHERE meter_id = ?",
        (m.meter_id,),
    )
    arrivals = db.query("SELECT day, at_s FROM read_arrival WHERE meter_id = ?", (m.meter_id,))
    lines = sorted(
        re.sub(r"seq \d+", "seq S", a.detail)
        for a in core.ctx.activity.lines(meter_id=m.meter_id, kinds=("data_stored", "event_stored"))
    )
    return {
        "acks": [(a["acked_seq"] > 0, a["upto"]) for a in acks],
        "publishes": pubs,
        "rows": [tuple(bytes(x) if isinstance(x, memoryview) else x for x in r) for r in rows],
        "midnights": [tuple(r) for r in mids],
        "events": [tuple(r) for r in events],
        "links": [tuple(r) for r in links],
        "arrivals": [tuple(r) for r in arrivals],
        "lines": lines,
    }


def test_n01_h04_d01_reads_stored_together_equal_reads_stored_one_by_one(
    backend: str, store_at: list[SqlStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    core = Core(ctx_of(open_at(backend, store_at)))
    blocks_per_call: list[int] = []  # what each store call took: the batch's, or one frame's
    real = Readings.ingest_by_meter

    def counted(self: Readings, *args: Any, **kw: Any) -> Any:
        blocks_per_call.append(len(kw.get("blocks", args[0] if args else ())))
        return real(self, *args, **kw)

    monkeypatch.setattr(Readings, "ingest_by_meter", counted)
    together = [SimMeter(4001 + k) for k in range(N)]
    alone = [SimMeter(5001 + k) for k in range(N)]
    _registered(core, together + alone)
    now = T0 * 1000 + 5000
    for attempt in ("first", "repeat"):  # a repeat stores nothing new, publishes nothing
        batch = [
            (Uplink(m.meter_id, m.frame("read_response", _read_body(k), T0), "mqtt"), now)
            for k, m in enumerate(together)
        ]
        blocks_per_call.clear()
        outs = core.on_uplinks(batch)
        assert blocks_per_call == [N], "the batch's reads in one store call"
        ones = [
            core.on_uplink(
                Uplink(m.meter_id, m.frame("read_response", _read_body(k), T0), "mqtt"), now
            )
            for k, m in enumerate(alone)
        ]
        assert blocks_per_call == [N] + [1] * N
        for k in range(N):
            got, want = _seen(core, together[k], outs[k]), _seen(core, alone[k], ones[k])
            assert got == want, (attempt, k)
            # the ack signed with the batch's counter: the meter takes it (MAC, counter)
            assert [together[k].take(d.wire()) is not None for d in outs[k].downlinks] == [True]  # type: ignore[union-attr]
            assert len(got["acks"]) == 1 and got["acks"][0][1] == DAY + DAY_S
            assert len(got["rows"]) == 1 and got["rows"][0][1] == 96
            # the register and every read counted on the link; the day's first read kept
            assert got["links"] == [("mqtt", T0 * 1000, now, 2 if attempt == "first" else 3)]
            assert len(got["arrivals"]) == 1
            if attempt == "first":
                assert len(got["publishes"]) >= 1 and len(got["events"]) == 1
                assert any("96 intervals (96 new)" in x for x in got["lines"]), got["lines"]
            else:
                assert got["publishes"] == [], "a repeat publishes nothing"


def test_n01_h04_a_read_the_store_refuses_is_refused_alone_the_batch_stored(
    backend: str, store_at: list[SqlStore]
) -> None:
    core = Core(ctx_of(open_at(backend, store_at)))
    meters = [SimMeter(6001 + k) for k in range(N)]
    _registered(core, meters)
    bad = 3  # its block has 3 channels; the meter registered 2: the store refuses it
    batch = [
        (
            Uplink(
                m.meter_id,
                m.frame("read_response", _read_body(k, 3 if k == bad else 2), T0),
                "mqtt",
            ),
            T0 * 1000 + 5000,
        )
        for k, m in enumerate(meters)
    ]
    outs = core.on_uplinks(batch)
    for k, m in enumerate(meters):
        seen = _seen(core, m, outs[k])
        if k == bad:  # refused: no ack, nothing stored, its ack's counter not spent
            assert seen["acks"] == [] and seen["rows"] == [] and seen["events"] == []
        else:
            assert len(seen["acks"]) == 1 and len(seen["rows"]) == 1 and seen["events"]
    assert core.rejected == 1
    # the next good frame of the refused meter is taken (its counters were not spent)
    m = meters[bad]
    again = core.on_uplinks(
        [(Uplink(m.meter_id, m.frame("read_response", _read_body(bad), T0), "mqtt"), T0 * 1000)]
    )
    assert [m.take(d.wire()) is not None for d in again[0].downlinks] == [True]  # type: ignore[union-attr]
    assert m.refused == []


def test_n01_h04_a_frame_another_worker_took_meanwhile_is_stored_and_acked_once(
    pg_schema: Any, store_at: list[SqlStore]
) -> None:
    """Two workers on PostgreSQL (MQTT 5 shared subscriptions can hand one frame to
    both): worker B takes a frame after worker A's batch read its replay window and
    before A moved it. A's compare-and-set finds the window changed, A handles its
    batch again frame by frame and refuses that frame as a replay."""
    dsn, schema = pg_schema
    url = f"{dsn}?options={quote(f'-c search_path={schema}')}"
    a, b = Core(ctx_of(open_at(url, store_at))), Core(ctx_of(open_at(url, store_at)))
    meters = [SimMeter(7001 + k) for k in range(N)]
    _registered(a, meters)
    now = T0 * 1000 + 5000
    frames = [
        Uplink(m.meter_id, m.frame("read_response", _read_body(k), T0), "mqtt")
        for k, m in enumerate(meters)
    ]
    raced = 2
    b_outs: list[Outbox | None] = []
    real = a.ctx.auth.accept_many

    def after_b(rows: list[tuple[int, int, int, int, int]]) -> bool:
        if not b_outs:  # B commits the same frame on its own connection, in between
            b_outs.extend(b.on_uplinks([(frames[raced], now)]))
        return real(rows)

    a.ctx.auth.accept_many = after_b  # type: ignore[method-assign]
    outs = a.on_uplinks([(f, now) for f in frames])
    assert len(b_outs) == 1 and b_outs[0] is not None
    for k, m in enumerate(meters):
        got = _seen(a, m, b_outs[0] if k == raced else outs[k])
        assert len(got["acks"]) == 1, k  # the raced frame: B's ack alone
        assert len(got["rows"]) == 1 and got["rows"][0][1] == 96
        assert len(got["events"]) == 1
        assert sum("96 intervals (96 new)" in x for x in got["lines"]) == 1, got["lines"]
        assert got["links"][0][3] == 2  # the register and one read, not two
    assert outs[raced] is not None and outs[raced].downlinks == [], "A acks nothing of it"
    assert a.rejected == 1 and b.rejected == 0
    for k, m in enumerate(meters):
        out = b_outs[0] if k == raced else outs[k]
        assert [m.take(d.wire()) is not None for d in out.downlinks] == [True]  # type: ignore[union-attr]
