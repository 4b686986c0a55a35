# Clock validation policy: sync instants, NTP offset, step/out-of-sync, retries.
# Runs on CPython (pytest) and on MicroPython (tests/firmware/mpy_runner.py).
from meter import clock
from meter import events as ev
from meter import timeutil as tu

H = 3600
D = 1772323200  # 2026-03-01T00:00:00Z
EST = -5 * H
M = D + 5 * H  # local standard midnight, EST
# Policy values the module keeps private (no global on the meter), as in LOGIC.md:
NONE = 0  # decision: |offset| <= 20 s, nothing to do (M07)
TIMEOUT_S = 30  # no reply within this: a failed attempt (M09)
RETRIES = 3  # failed attempts retried per day
RETRY_GAP_S = 120  # a retry is at least this long after the failure
FAIL_DELAY = 2  # sync_failed data: round trip over 4 s
FAIL_BAD_REPLY = 3  # sync_failed data: impossible timestamps


def _clear_of_boundaries(t, day, interval_s):
    r = (t - day) % interval_s
    return 60 <= r <= interval_s - 60


# (interval_s, rand, after (s after day start) or None, instant (s after day start) or None)
SYNC_INSTANTS = (
    (900, 0, None, 60),
    (900, 780, None, 840),
    (900, 781, None, 960),
    (900, 96 * 781 - 1, None, 86340),
    (900, 96 * 781, None, 60),  # wraps
    (900, 0, 100, 101),
    (900, 0, 840, 960),
    (900, 5, 86339, 86340),
    (900, 0, 86340, None),
    (900, 0, -5000, 60),  # "after" before the day: whole day
    (300, 0, None, 60),
    (300, 181, None, 360),
    (3600, 3480, None, 3540),
    (3600, 3481, None, 3660),
    (1800, 2**32 - 1, None, (2**32 - 1) % (48 * 1681) // 1681 * 1800 + 60 + (2**32 - 1) % 1681),
)


def test_m06_sync_instant_table():
    for interval_s, r, after, want in SYNC_INSTANTS:
        got = clock.next_sync_instant(M, interval_s, r, None if after is None else M + after)
        assert got == (None if want is None else M + want), (interval_s, r, after, got)


def test_m06_sync_instant_is_inside_the_day_never_near_a_boundary():
    seed = 12345
    for interval_s in tu.INTERVALS:
        for _ in range(400):
            seed = (seed * 1103515245 + 12345) & 0xFFFFFFFF
            t = clock.next_sync_instant(M, interval_s, seed, None)
            assert M <= t < M + 86400
            assert _clear_of_boundaries(t, M, interval_s), (interval_s, seed, t)
            after = M + seed % 86400
            t2 = clock.next_sync_instant(M, interval_s, seed, after)
            if after < M + 86400 - 60:  # an allowed instant is left: the last is at 23:59:00
                assert after < t2 < M + 86400, (interval_s, seed, after, t2)
                assert _clear_of_boundaries(t2, M, interval_s), (interval_s, seed, t2)
            else:
                assert t2 is None, (interval_s, seed, after, t2)


def _verdict(t1, t2, t3, t4):
    # (decision, offset ms, delay ms) of SyncState.response to one reply
    st = clock.SyncState(900, 0)
    st.sent(t1 // 1000, t1)
    return st.response(t1, t2, t3, t4, t1 // 1000, 0)


# (t1, t2, t3, t4 in ms, offset ms, delay ms)
NTP = (
    (1000, 31100, 31110, 1210, 30000, 200),  # meter 30 s slow, 100 ms each way
    (0, 300, 300, 400, 100, 400),  # asymmetric path: error 100 <= delay/2
    (100000, 50020, 50020, 100040, -50000, 40),  # meter 50 s fast
    (0, 1, 1, 1, 0, 1),  # integer halving
    (10**12, 10**12 + 5, 10**12 + 5, 10**12 + 10, 0, 10),  # u64 ms values
)


def test_m07_offset_and_delay_compensate_the_round_trip():
    for t1, t2, t3, t4, off, delay in NTP:
        assert _verdict(t1, t2, t3, t4)[1:] == (off, delay), (t1, t2, t3, t4)
    # timestamps out of order: an impossible reply
    assert _verdict(10, 0, 0, 5) == (clock.FAILED, 0, 0)
    assert _verdict(0, 10, 5, 20) == (clock.FAILED, 0, 0)


# (offset ms, decision)
DECISIONS = (
    (0, NONE),
    (19999, NONE),
    (20000, NONE),
    (-20000, NONE),
    (20001, clock.STEP),
    (-20001, clock.STEP),
    (60000, clock.STEP),
    (119999, clock.STEP),
    (-119999, clock.STEP),
    (120000, clock.OUT_OF_SYNC),
    (-120000, clock.OUT_OF_SYNC),
    (10**9, clock.OUT_OF_SYNC),
)


def test_m07_m08_decide_thresholds():
    t = D * 1000
    for off, want in DECISIONS:
        assert _verdict(t, t + off, t + off, t) == (want, off, 0), off


def test_m08_m09_event_for_each_verdict():
    assert clock.event_for(clock.STEP, 30000, D + 10) == (ev.CLOCK_ADJUSTED, D + 10)
    assert clock.event_for(clock.OUT_OF_SYNC, -120600, D) == (ev.CLOCK_OUT_OF_SYNC, 121)
    assert clock.event_for(clock.FAILED, 0, D, clock.FAIL_TIMEOUT) == (ev.SYNC_FAILED, 1)
    assert clock.event_for(NONE, 5, D) is None


def _exchange(st, now, offset_ms, one_way_ms=50, rand=7):
    # A reply from a server whose clock is meter + offset_ms.
    t1 = now * 1000
    st.sent(now, t1)
    t2 = t1 + one_way_ms + offset_ms
    t4 = t1 + 2 * one_way_ms
    return st.response(t1, t2, t2, t4, now, rand)


def test_m06_daily_plan_inside_an_interval():
    st = clock.SyncState(900, EST)
    t = st.plan(M + 10, 12345)
    assert t == clock.next_sync_instant(M, 900, 12345, M + 10)
    assert not st.due(t - 1) and st.due(t)
    assert st.plan(M + 86400 - 30, 1) == M + 86400 + 61  # nothing left today: tomorrow


def test_m06_a_late_check_near_a_boundary_waits_for_the_allowed_part():
    # the loop stalled past the planned instant: never send within 60 s of a boundary
    st = clock.SyncState(900, EST)
    t = st.plan(M, 5)  # M + 65
    assert st.due(t) and st.due(M + 840)
    assert not st.due(M + 841) and not st.due(M + 900) and not st.due(M + 959)
    assert st.due(M + 960)


def test_m07_step_between_20_and_120_s_then_tomorrow():
    for off, want in ((30000, clock.STEP), (-90000, clock.STEP), (1500, NONE)):
        st = clock.SyncState(900, EST)
        t = st.plan(M, 4242)
        d, o, delay = _exchange(st, t, off)
        assert (d, o, delay) == (want, off, 100)
        assert not st.out_of_sync
        assert M + 86400 <= st.next_at < M + 2 * 86400
        assert not st.due(t + 1)


def test_m08_out_of_sync_is_reported_not_stepped():
    st = clock.SyncState(900, EST)
    t = st.plan(M, 99)
    d, o, _ = _exchange(st, t, 125000)
    assert d == clock.OUT_OF_SYNC and o == 125000
    assert st.out_of_sync
    assert clock.event_for(d, o, t) == (ev.CLOCK_OUT_OF_SYNC, 125)
    st.time_set(t + 5)
    assert not st.out_of_sync


def test_m09_failed_attempts_are_retried_the_same_day_then_tomorrow():
    st = clock.SyncState(900, EST)
    now = st.plan(M, 1)
    seed = 77
    for k in (1, 2, 3, 4):
        assert st.due(now)
        st.sent(now, now * 1000)
        assert not st.timed_out(now + TIMEOUT_S - 1)
        assert st.timed_out(now + TIMEOUT_S)
        fail_at = now + TIMEOUT_S
        seed = seed * 31 + 7
        now = st.failed(fail_at, seed, clock.FAIL_TIMEOUT)
        assert st.last_reason == clock.FAIL_TIMEOUT
        assert _clear_of_boundaries(now, M, 900)
        if k <= RETRIES:
            assert st.failures == k
            assert fail_at + RETRY_GAP_S <= now < M + 86400, k
        else:
            assert M + 86400 <= now < M + 2 * 86400  # given up for today
    # the new day starts with a fresh retry budget
    st.sent(now, now * 1000)
    st.failed(now + 31, 5, clock.FAIL_TIMEOUT)
    assert st.failures == 1 and st.next_at < M + 2 * 86400


def test_m09_slow_late_or_stale_replies():
    st = clock.SyncState(900, EST)
    t = st.plan(M, 3)
    st.sent(t, t * 1000)
    assert st.response(t * 1000 + 1, 0, 0, 0, t, 1) is None  # not our request
    v = st.response(t * 1000, t * 1000 + 2600, t * 1000 + 2600, t * 1000 + 5000, t + 5, 1)
    assert v[0] == clock.FAILED and v[2] == 5000
    assert st.last_reason == FAIL_DELAY and st.failures == 1
    t = st.next_at
    st.sent(t, t * 1000)
    v = st.response(t * 1000, t * 1000, t * 1000, t * 1000 + 100, t + TIMEOUT_S, 1)
    assert v[0] == clock.FAILED and st.last_reason == clock.FAIL_TIMEOUT
    t = st.next_at
    st.sent(t, t * 1000)
    v = st.response(t * 1000, t * 1000 + 9, t * 1000 + 8, t * 1000 + 100, t, 1)
    assert v == (clock.FAILED, 0, 0) and st.last_reason == FAIL_BAD_REPLY
    assert st.failures == 3


def test_m06_interval_change_replans_clear_of_new_boundaries():
    st = clock.SyncState(900, EST)
    st.plan(M, 1000)
    t = st.set_interval(300, M + 10, 1000)
    assert _clear_of_boundaries(t, M, 300) and t > M + 10


def test_m09_retry_gap_holds_across_midnight():
    # a failure 52 s before local midnight: the retry lands tomorrow, still >= 120 s later
    off = -12600
    now = 1772335748
    s = clock.SyncState(900, off)
    nxt = s.failed(now, 0, clock.FAIL_TIMEOUT)
    assert nxt >= now + RETRY_GAP_S
    assert (nxt - tu.day_start(nxt, off)) % 900 >= 60
