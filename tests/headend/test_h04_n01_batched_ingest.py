"""N01/H04: uplinks that wait for the database are handled together, one commit.

`Core.on_uplinks` takes several frames in one transaction, each in a savepoint
of its own: a refused frame undoes only its own writes, the others are kept;
every frame gets the answers it would get alone, sent after the one commit.
"""

from __future__ import annotations

import pytest

from headend.context import Ctx
from headend.core import Core
from headend.errors import StoreError
from headend.store import SqlStore
from headend.transport.base import Uplink
from tests.headend.conftest import ctx_of, open_at
from tests.support.signed import T0, SimMeter, frames_to

pytestmark = pytest.mark.req("N01", "H04")


def test_n01_h04_a_batch_registers_each_meter_and_refuses_only_the_bad_frame(
    backend: str, store_at: list[SqlStore]
) -> None:
    store = open_at(backend, store_at)
    core = Core(ctx_of(store))
    a, b, forger = SimMeter(2001), SimMeter(2002), SimMeter(2003, master=b"\1" * 32)
    batch = [
        (Uplink(m.meter_id, m.frame("register", m.register_body()), "mqtt"), T0 * 1000 + i)
        for i, m in enumerate((a, forger, b))
    ]
    outs = core.on_uplinks(batch)
    assert [o is not None for o in outs] == [True, True, True]
    answers = [
        [m.take(f) for f in (frames_to(out, m.meter_id) if out is not None else [])]
        for m, out in zip((a, forger, b), outs, strict=True)
    ]
    # each meter its own answer; the forged frame (a bad MAC) refused, nothing answered
    assert [[f["type"] for f in fs if f] for fs in answers] == [
        ["register_ack"],
        [],
        ["register_ack"],
    ]
    assert Ctx.build(core.ctx.config, store).registry.ids() == [2001, 2002]


def test_n01_h04_savepoint_undoes_only_its_own_writes(
    backend: str, store_at: list[SqlStore]
) -> None:
    db = open_at(backend, store_at).db
    with db.transaction():
        db.execute("CREATE TABLE sp_probe (k INTEGER PRIMARY KEY)")
    with db.transaction():
        db.execute("INSERT INTO sp_probe (k) VALUES (1)")
        with pytest.raises(StoreError), db.savepoint():
            db.execute("INSERT INTO sp_probe (k) VALUES (2)")
            db.execute("INSERT INTO sp_probe (k) VALUES (1)")  # a duplicate: this one fails
        with db.savepoint():
            db.execute("INSERT INTO sp_probe (k) VALUES (3)")
    assert [tuple(r) for r in db.query("SELECT k FROM sp_probe ORDER BY k")] == [(1,), (3,)]
