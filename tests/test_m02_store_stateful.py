"""M02/M05: the interval ring against a plain list model, with power cuts.

Rules: append, power cut at a random byte of one of the next flash operations,
reboot and recover, wrap (many appends). Invariants after every step:
  * the store yields exactly a suffix of the acknowledged records (nothing
    corrupted, nothing reordered, only the oldest ever dropped);
  * that suffix is at least as long as the ring's guaranteed capacity allows;
  * registers equal the sum of every acknowledged interval.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "firmware"))

import pytest  # noqa: E402
from hal.norflash import NORFlash, PowerCut  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.stateful import (  # noqa: E402
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
)
from meter import store  # noqa: E402

pytestmark = pytest.mark.req("M02", "M05")

BS = 1024
BLOCKS = 12
LAYOUT = (4, 4, 3)  # interval, event, config blocks: 3 x 61 slots kept at least
T0 = 1767225600

values = st.tuples(*[st.integers(0, 70000) | st.integers(0, 300)] * 4)
NOMINAL = (300, 600, 900, 1800, 3600)  # lengths a compact (1-slot) record holds (STORE.md)
lengths = st.sampled_from(NOMINAL) | st.integers(1, 4000)
flags = st.integers(0, 31) | st.integers(0, 255)


def _slots(rec):
    _, ilen, fl, vals = rec
    small = ilen in NOMINAL and fl < 32 and max(vals) <= 0xFFFF
    return 1 if small else 2


class IntervalRing(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.flash = NORFlash(BS, BLOCKS, partial=True)
        self.store = self._mount()
        self.model = []  # acknowledged records, oldest first
        self.cost = []  # worst-case slots each record (and waste before it) takes
        self.waste = 0  # worst-case slots wasted by torn writes since the last ack
        self.pending = None  # record in flight when the power died
        self.t = T0
        self.regs = [0, 0, 0, 0]

    def _mount(self):
        return store.Store(self.flash, 0, *LAYOUT).mount()

    def _next(self, ilen, fl, vals):
        rec = (self.t, ilen, fl, vals)
        self.t += ilen
        return rec

    def _ack(self, rec):
        self.model.append(rec)
        n = _slots(rec)
        self.cost.append(n + (n - 1) + self.waste)  # + end-of-block padding
        self.waste = 0
        for i in range(4):
            self.regs[i] += rec[3][i]

    @property
    def dead(self):
        return self.flash.dead

    @precondition(lambda self: not self.dead)
    @rule(ilen=lengths, fl=flags, vals=values)
    def append(self, ilen, fl, vals):
        rec = self._next(ilen, fl, vals)
        self.store.append_interval(*rec)
        self._ack(rec)

    @precondition(lambda self: not self.dead)
    @rule(
        ilen=lengths,
        fl=flags,
        vals=values,
        op=st.integers(0, 3),
        at=st.integers(0, 40),
        seed=st.integers(1, 2**31 - 1),
    )
    def power_cut(self, ilen, fl, vals, op, at, seed):
        """Cut the power at byte `at` of flash operation `op` of the next append."""
        rec = self._next(ilen, fl, vals)
        self.flash._rng = seed
        self.flash.cut_at_op(self.flash.ops + op, at)
        try:
            self.store.append_interval(*rec)
        except PowerCut:
            self.pending = rec
            self.waste += 16
        else:
            self.flash.reboot()  # the cut fell after this append: cancel it
            self._ack(rec)

    @rule()
    def reboot_and_recover(self):
        self.flash.reboot()
        self.store = self._mount()
        if self.pending is not None:
            got = self.store.last_interval()
            if got == self.pending:  # the cut hit after the commit point
                self.waste -= 16
                self._ack(self.pending)
            self.pending = None

    @precondition(lambda self: not self.dead)
    @rule(n=st.integers(50, 400), wide_every=st.integers(0, 9))
    def wrap(self, n, wide_every):
        for i in range(n):
            wide = wide_every and i % wide_every == 0
            rec = self._next(900, 0, (70000 if wide else i % 5000, 1, 0, i % 3))
            self.store.append_interval(*rec)
            self._ack(rec)

    @invariant()
    def store_holds_a_long_enough_suffix(self):
        if self.dead:
            return
        got = list(self.store.intervals())
        k = len(got)
        assert got == self.model[len(self.model) - k :], "not a suffix of the acknowledged records"
        # guaranteed: the newest records whose worst-case cost fits in (blocks - 1) blocks
        budget = self.store.capacity()[0] - self.waste
        need = 0
        for c in reversed(self.cost):
            budget -= c
            if budget < 0:
                break
            need += 1
        assert k >= need, (k, need)
        if self.model:
            assert self.store.last_interval() == self.model[-1]
        assert self.store.registers() == tuple(self.regs)


# ~17 s under CI=true (hypothesis "ci" profile) on a loaded 2-core machine
TestIntervalRing = pytest.mark.timeout(60)(IntervalRing.TestCase)
