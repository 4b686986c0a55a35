"""Clock-sync policy and interval recorder against simple models (M06-M09, M01, M04).

CPython only (hypothesis). The firmware modules run unchanged here.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "firmware"))

import pytest  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.stateful import (  # noqa: E402
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)
from meter import clock, timeutil  # noqa: E402
from meter import recorder as rc  # noqa: E402

DAY = 86400
# clock policy values private to the module (M07-M09, firmware/meter/LOGIC.md)
NONE = 0  # decision: |offset| <= 20 s, nothing to do
MAX_DELAY_MS = 4000  # longer round trips are a failed attempt
TIMEOUT_S = 30  # no reply within this: a failed attempt
RETRIES = 3  # failed attempts retried per day
RETRY_GAP_S = 120  # a retry is at least this long after the failure
T0 = 1772323200  # 2026-03-01T00:00:00Z
OFFSETS = st.sampled_from([0, -5 * 3600, 5 * 3600 + 1800, 12 * 3600 + 2700, -3 * 3600 - 1800])


def _exchange(t1_ms, true_offset_ms, d1, proc, d2, drift_ppm=0):
    """(t1, t2, t3, t4): server clock = meter clock + true_offset_ms; meter runs at 1+ppm."""
    t2 = t1_ms + true_offset_ms + d1
    t3 = t2 + proc
    elapsed = d1 + proc + d2
    t4 = t1_ms + elapsed + elapsed * drift_ppm // 1_000_000
    return t1_ms, t2, t3, t4


def _verdict(t1_ms, t2, t3, t4):
    """(decision, offset ms, delay ms) of SyncState.response to one reply."""
    sync = clock.SyncState(900, 0)
    now = t1_ms // 1000
    sync.sent(now, t1_ms)
    return sync.response(t1_ms, t2, t3, t4, now, 0)


@pytest.mark.req("M07")
@given(
    t1=st.integers(10**12, 4 * 10**12),
    off=st.integers(-(10**8), 10**8),
    d1=st.integers(0, 5000),
    proc=st.integers(0, 500),
    d2=st.integers(0, 5000),
)
def test_m07_offset_error_is_at_most_half_the_round_trip(t1, off, d1, proc, d2):
    _d, est, delay = _verdict(*_exchange(t1, off, d1, proc, d2))
    assert delay == d1 + d2
    assert 2 * abs(est - off) <= delay + 1  # +1: integer halving


@pytest.mark.req("M07")
@given(
    t1=st.integers(10**12, 4 * 10**12),
    off=st.integers(-(10**8), 10**8),
    d1=st.integers(0, 5000),
    proc=st.integers(0, 500),
    d2=st.integers(0, 5000),
    ppm=st.integers(-200, 200),
)
def test_m07_offset_error_with_drift_during_the_exchange(t1, off, d1, proc, d2, ppm):
    _d, est, delay = _verdict(*_exchange(t1, off, d1, proc, d2, ppm))
    elapsed = d1 + proc + d2
    slack = abs(ppm) * elapsed // 1_000_000 + 2
    assert 2 * abs(est - off) <= delay + 2 * slack


@pytest.mark.req("M07", "M08")
@given(
    off=st.one_of(
        st.integers(-300_000, 300_000),
        st.sampled_from([20_000, 20_001, 119_999, 120_000, -20_000, -120_000]),
    ),
    d1=st.integers(0, 2000),
    d2=st.integers(0, 2000),
)
def test_m07_m08_decisions_respect_thresholds_up_to_the_measurement_error(off, d1, d2):
    d, est, delay = _verdict(*_exchange(2 * 10**12, off, d1, 3, d2))
    half = delay // 2 + 1  # what the estimate can be off by
    a = abs(off)
    if a >= 120_000 + half:
        assert d == clock.OUT_OF_SYNC  # never step when > 120 s
    if 20_000 + half < a < 120_000 - half:
        assert d == clock.STEP  # always step 20-120 s
    if a <= 20_000 - half:
        assert d == NONE  # never act <= 20 s
    if d == clock.STEP:
        assert 20_000 < abs(est) < 120_000


class SyncModel(RuleBasedStateMachine):
    """A meter clock with a true offset and drift, validated by SyncState."""

    @initialize(
        interval=st.sampled_from(timeutil.INTERVALS),
        utc_off=OFFSETS,
        true_off_ms=st.integers(-400_000, 400_000),
        drift_ppm=st.integers(-100, 100),
        rand=st.integers(0, 2**32 - 1),
    )
    def setup(self, interval, utc_off, true_off_ms, drift_ppm, rand):
        self.interval = interval
        self.utc_off = utc_off
        self.meter_ms = (T0 + 3 * 3600) * 1000  # meter clock, ms
        self.off_ms = true_off_ms  # true time - meter time
        self.drift_ppm = drift_ppm
        self.sync = clock.SyncState(interval, utc_off)
        self.sync.plan(self.now, rand)
        self.attempts = {}  # meter day -> attempts
        self.steps = []
        self.expect_oos = False
        self.events = []

    @property
    def now(self):
        return self.meter_ms // 1000

    def _advance_ms(self, ms):
        self.meter_ms += ms
        self.off_ms -= ms * self.drift_ppm // 1_000_000  # meter gains when ppm > 0

    def _to_next_attempt(self):
        if self.sync.next_at > self.now:
            self._advance_ms((self.sync.next_at - self.now) * 1000 - self.meter_ms % 1000)
        assert self.sync.due(self.now)
        at = self.now
        r = (at - timeutil.day_start(at, self.utc_off)) % self.interval
        assert 60 <= r <= self.interval - 60, "sync attempt near a boundary (M06)"
        day = timeutil.day_start(at, self.utc_off)
        self.attempts[day] = self.attempts.get(day, 0) + 1
        assert self.attempts[day] <= RETRIES + 1
        t1 = self.meter_ms
        self.sync.sent(at, t1)
        return t1

    @rule(
        d1=st.integers(0, 3000),
        proc=st.integers(0, 200),
        d2=st.integers(0, 3000),
        r=st.integers(0, 2**32 - 1),
    )
    def attempt_answered(self, d1, proc, d2, r):
        t1 = self._to_next_attempt()
        t1, t2, t3, t4 = _exchange(t1, self.off_ms, d1, proc, d2, self.drift_ppm)
        self._advance_ms(t4 - t1)
        before = self.meter_ms
        true_before = self.off_ms
        d, est, delay = self.sync.response(t1, t2, t3, t4, self.now, r)
        half = delay // 2 + 2
        if d == clock.STEP:
            assert abs(true_before) < 120_000 + half
            assert abs(true_before) > 20_000 - half
            self.meter_ms += est
            self.off_ms -= est
            assert abs(self.off_ms) <= half  # stepped onto official time (M07)
            self.steps.append(est)
            self.events.append(clock.event_for(d, est, before // 1000))
            self.expect_oos = False
        elif d == clock.OUT_OF_SYNC:
            assert abs(true_before) > 120_000 - half
            assert self.meter_ms == before  # no silent step (M08)
            self.events.append(clock.event_for(d, est, before // 1000))
            self.expect_oos = True
        elif d == NONE:
            assert abs(true_before) <= 20_000 + half
            self.expect_oos = False
        else:
            assert d == clock.FAILED and delay > MAX_DELAY_MS
            self.events.append(clock.event_for(d, est, 0, self.sync.last_reason))

    @rule(r=st.integers(0, 2**32 - 1))
    def attempt_lost(self, r):
        self._to_next_attempt()
        self._advance_ms(TIMEOUT_S * 1000)
        assert self.sync.timed_out(self.now)
        nxt = self.sync.failed(self.now, r, clock.FAIL_TIMEOUT)
        day = timeutil.day_start(self.now, self.utc_off)
        if self.attempts[day] <= RETRIES:
            assert nxt >= self.now + RETRY_GAP_S - 1  # a retry keeps its gap, even past midnight
        else:
            assert nxt >= day + DAY  # given up for today: tomorrow's instant, no gap owed
        self.events.append(clock.event_for(clock.FAILED, 0, 0, self.sync.last_reason))

    @rule(hours=st.integers(1, 30))
    def time_passes(self, hours):
        if self.sync.next_at > self.now + hours * 3600:
            self._advance_ms(hours * 3_600_000)

    @precondition(lambda self: self.sync.out_of_sync)
    @rule()
    def authenticated_time_set(self):
        self.meter_ms += self.off_ms
        self.off_ms = 0
        self.sync.time_set(self.now)
        self.expect_oos = False

    @invariant()
    def steps_are_small_and_flagged(self):
        assert all(20_000 < abs(s) < 120_000 for s in self.steps)
        assert self.sync.out_of_sync == self.expect_oos
        assert all(e is not None for e in self.events)  # every correction/failure logged (M09)


SyncModel.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
test_m07_m08_m09_sync_policy_against_model = pytest.mark.req("M07", "M08", "M09")(
    SyncModel.TestCase
)


class RecorderModel(RuleBasedStateMachine):
    """Energy additions, clock steps, interval changes and power cycles: none lost, none doubled."""

    @initialize(
        interval=st.sampled_from(timeutil.INTERVALS), utc_off=OFFSETS, skew=st.integers(0, 7200)
    )
    def setup(self, interval, utc_off, skew):
        self.rec = rc.Recorder(interval, channels=2, utc_offset_s=utc_off)
        self.utc_off = utc_off
        self.t = T0 + skew
        self.rec.start(self.t)
        self.added = [0, 0]
        self.closed = []
        self.midnights = []

    def _take(self, batch):
        self.closed.extend(batch)
        while True:
            m = self.rec.midnight_due()
            if m is None:
                break
            self.midnights.append(m)

    @rule(a=st.integers(0, 5000), b=st.integers(0, 50))
    def add(self, a, b):
        self.rec.add((a, b))
        self.added[0] += a
        self.added[1] += b

    @rule(dt=st.integers(1, 4000))
    def tick(self, dt):
        self.t += dt
        self._take(self.rec.tick(self.t))

    @rule(dt=st.integers(4000, 3 * DAY))
    def late_tick(self, dt):
        self.t += dt
        self._take(self.rec.tick(self.t))

    @rule(step=st.one_of(st.integers(-130, 130), st.integers(-3 * DAY, 3 * DAY)))
    def clock_step(self, step):
        self._take(self.rec.tick(self.t))
        self._take(self.rec.clock_step(self.t, self.t + step))
        self.t += step

    @rule(new=st.sampled_from(timeutil.INTERVALS))
    def set_interval(self, new):
        self._take(self.rec.tick(self.t))
        p = self.rec.in_progress()
        at = self.rec.set_interval(new, self.t)
        if at is not None:
            assert at > self.t and at >= p[0] + p[1]
            assert at - max(self.t, p[0] + p[1]) <= 3600

    @rule(down_s=st.integers(1, 2 * DAY))
    def power_cycle(self, down_s):
        self._take(self.rec.power_fail(self.t))
        snap = self.rec.in_progress()
        interval = self.rec.interval_s  # a pending change is not persisted: lost on reboot
        new = rc.Recorder(interval, 2, self.utc_off, self.rec.totals())
        if self.closed:
            last = self.closed[-1]
            last_start, last_len = last[0], last[1]
        else:
            last_start, last_len = snap[0] - snap[1], snap[1]
        last_mid = self.midnights[-1][0] if self.midnights else None
        self.t += down_s
        batch = new.power_up(self.t, last_start, snap[3], snap[2], last_mid, last_len)
        self.rec = new
        self._take(batch)

    @invariant()
    def no_energy_lost(self):
        p = self.rec.in_progress()
        for ch in (0, 1):
            assert sum(r[3][ch] for r in self.closed) + p[3][ch] == self.added[ch]
        assert list(self.rec.totals()) == self.added

    @invariant()
    def none_doubled_contiguous_aligned(self):
        starts = [r[0] for r in self.closed]
        assert len(starts) == len(set(starts))
        for a, b in zip(self.closed, self.closed[1:], strict=False):
            assert b[0] == a[0] + a[1]
        for r in self.closed:
            assert timeutil.is_boundary(r[0], r[1], self.utc_off)
            assert r[2] & ~0x1F == 0
        if self.closed:
            assert self.rec.in_progress()[0] == self.closed[-1][0] + self.closed[-1][1]

    @invariant()
    def midnights_once_each_and_consistent(self):
        days = [m[0] for m in self.midnights]
        assert days == sorted(set(days))
        for day, regs in self.midnights:
            assert timeutil.is_boundary(day, DAY, self.utc_off)
            assert regs[0] == sum(r[3][0] for r in self.closed if r[0] + r[1] <= day)


RecorderModel.TestCase.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)
test_m01_m04_recorder_none_lost_none_doubled = pytest.mark.req("M01", "M04")(RecorderModel.TestCase)
