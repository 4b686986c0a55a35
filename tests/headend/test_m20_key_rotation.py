"""M20: key rotation against its table, through power cuts of the head-end.

The `KEY` lifecycle (`headend.store.lifecycles`) is the model. Hypothesis
drives a head-end `Core` on a real SQLite file and a signing meter
(`SimMeter`): the operator asks for rotations, ticks send key_set (or the
network loses it), the meter answers or sends data, and the head-end loses
power (the store is closed and a new Core opens the same file). After every
step the store holds the state the table predicts, the meter's data is never
refused, and the meter took every downlink it got (all signed, under its
current or previous key).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from headend.adcs import rotation
from headend.config import Config
from headend.context import Ctx
from headend.core import Core
from headend.errors import InvalidData
from headend.store import open_store
from headend.store.lifecycles import KEY, KeyEvent, KeyState
from headend.transport.base import Uplink
from protocol.frame import decode
from tests.support.signed import T0, SimMeter, deliver, frames_to

pytestmark = pytest.mark.req("M20")

MID = 801
RETRY_S = 60


class Rotation(RuleBasedStateMachine):
    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url
        self.cfg = Config(key_retry_s=RETRY_S)
        self.core = Core(Ctx.build(self.cfg, open_store(url)))
        self.meter = SimMeter(MID)
        self.now_ms = T0 * 1000
        self.state = KeyState.CURRENT  # the model
        self.version = 0
        self.key_sets: list[dict[str, Any]] = []  # key_sets the meter took, not yet answered
        with self.core.ctx.db.transaction():
            self.core.ctx.db.execute("DELETE FROM meter_auth")
            self.core.ctx.db.execute("DELETE FROM pending_layout")
        out = deliver(self.core, MID, self.meter.frame("register", self.meter.register_body()))
        self._take(out)

    def _take(self, out: Any) -> list[dict[str, Any]]:
        got = [self.meter.take(f) for f in frames_to(out, MID)]
        return [f for f in got if f is not None]

    def _uplink(self, raw: bytes) -> Any:
        self.now_ms += 1000
        return self.core.on_uplink(Uplink(MID, raw, "mqtt"), self.now_ms)

    def _fire(self, event: KeyEvent) -> None:
        self.state = KEY.next(self.state, event)

    @rule()
    def operator_rotates(self) -> None:
        if self.state is KeyState.CURRENT:
            v = rotation.request(self.core.ctx, MID, self.now_ms)
            assert v == self.version + 1
            self._fire(KeyEvent.ROTATE)
        else:
            with pytest.raises(InvalidData, match="under way"):
                rotation.request(self.core.ctx, MID, self.now_ms)

    @rule(lost=st.booleans())
    def tick(self, lost: bool) -> None:
        self.now_ms += (RETRY_S + 1) * 1000
        out = self.core.tick(self.now_ms)
        sets = [d for d in out.downlinks if d.frame[1] == 0x14]
        if self.state in (KeyState.QUEUED, KeyState.SENT):
            assert len(sets) == 1  # sent, or repeated after key_retry_s
            self._fire(KeyEvent.SEND)
        else:
            assert sets == []
        if not lost:
            self.key_sets += [f for f in self._take(out) if f["type"] == "key_set"]

    @precondition(lambda self: self.key_sets)
    @rule()
    def meter_answers(self) -> None:
        ks = self.key_sets.pop(0)
        out = self._uplink(self.meter.key_ack(ks))
        assert self.core.rejections.pending() == 0  # the key_ack was taken
        self._take(out)
        if self.state is KeyState.SENT and self.meter.version > self.version:
            self._fire(KeyEvent.CONFIRM)
            self.version = self.meter.version

    @rule()
    def meter_sends_data(self) -> None:
        ev = {"events": [{"code": 11, "time": T0, "data": self.meter.counter}]}
        out = self._uplink(self.meter.frame("event", ev))
        assert [decode(f)["type"] for f in frames_to(out, MID)] == ["event_ack"]
        self._take(out)
        if self.state is KeyState.SENT and self.meter.version > self.version:
            self._fire(KeyEvent.CONFIRM)  # any uplink under the new key confirms it
            self.version = self.meter.version

    @rule()
    def head_end_power_cut(self) -> None:
        self.core.ctx.store.close()
        self.core = Core(Ctx.build(self.cfg, open_store(self.url)))

    @invariant()
    def store_matches_the_table(self) -> None:
        st = self.core.ctx.auth.get(MID)
        assert st is not None
        assert (st.state, st.key_version) == (self.state, self.version)
        if self.state is not KeyState.CURRENT:
            assert st.pending_version == self.version + 1
        assert self.meter.version in (self.version, self.version + 1)
        assert self.meter.refused == [] and self.core.rejections.pending() == 0

    def teardown(self) -> None:
        self.core.ctx.store.close()


def test_m20_key_rotation_follows_its_table_through_power_cuts(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/h.db"
    run_state_machine_as_test(
        lambda: Rotation(url),
        settings=settings(max_examples=40, stateful_step_count=25, deadline=None),
    )
