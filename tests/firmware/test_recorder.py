# Interval recorder: boundaries, flags, clock steps, power fail, midnight registers.
# Runs on CPython (pytest) and on MicroPython (tests/firmware/mpy_runner.py).
from meter import recorder as rc
from meter import timeutil as tu

H = 3600
D = 1772323200  # 2026-03-01T00:00:00Z
EST = -5 * H
IST = 5 * H + 1800
PF = rc.POWER_FAILED
CA = rc.CLOCK_ADJUSTED
P = rc.PARTIAL
INV = rc.INVALID


def _raises(exc, fn, *args):
    try:
        fn(*args)
    except exc:
        return
    raise AssertionError("%s not raised" % exc.__name__)


def _short(records):
    # (start, flags, channel-0 value) of each record
    return [(r[0], r[2], r[3][0]) for r in records]


def _check_stream(records):
    # Starts strictly increasing, contiguous, on boundaries; never two with one start.
    for a, b in zip(records, records[1:]):
        assert b[0] == a[0] + a[1], (a, b)
    for r in records:
        assert tu.is_boundary(r[0], r[1], 0) or r[1] == 3600


def test_m01_closes_exactly_on_boundaries():
    rec = rc.Recorder(900)
    rec.start(D)
    # (now, Wh counted since the previous pass, records closed by tick(now))
    table = (
        (D + 1, 1, []),
        (D + 899, 2, []),
        (D + 900, 3, [(D, 0, 6)]),
        (D + 901, 4, []),
        (D + 1799, 0, []),
        (D + 1800, 5, [(D + 900, 0, 9)]),
        (D + 2699, 1, []),
    )
    for now, wh, want in table:
        rec.add((wh, 0, wh * 2, 0))
        got = list(rec.tick(now))
        assert _short(got) == want, (now, got)
        for r in got:
            assert r[1] == 900 and r[3][2] == 2 * r[3][0] and r[3][1] == 0
    assert rec.in_progress() == (D + 1800, 900, 0, (1, 0, 2, 0))
    assert rec.totals() == (16, 0, 32, 0)


def test_m01_every_programmable_interval_length():
    for s in (300, 600, 900, 1800, 3600):
        rec = rc.Recorder(s)
        rec.start(D)
        out = []
        t = D
        added = 0
        while t < D + 2 * H:
            t += 7
            rec.add((1, 1, 0, 1))
            added += 1
            out.extend(rec.tick(t))
        out.extend(rec.tick(D + 2 * H))
        assert [r[0] for r in out] == [D + k * s for k in range(2 * H // s)], s
        assert all(r[1] == s and r[2] == 0 for r in out)
        assert sum(r[3][0] for r in out) + rec.in_progress()[3][0] == added
        assert rec.totals() == (added, added, 0, added)


def test_m01_start_mid_interval_is_partial():
    # (start instant, flags of the first interval)
    for now, flags in ((D, 0), (D + 1, P), (D + 899, P), (D + 900, 0)):
        rec = rc.Recorder(900)
        rec.start(now)
        assert rec.in_progress()[0] == tu.floor_to(now, 900) and rec.in_progress()[2] == flags
    rec = rc.Recorder(900)
    assert _short(rec.tick(D + 100)) == []  # the first tick starts recording
    rec.add((5,))
    assert _short(rec.tick(D + 900)) == [(D, P, 5)]
    assert rec.in_progress()[2] == 0


def test_m01_late_tick_without_energy_is_valid_zeroes():
    rec = rc.Recorder(900)
    rec.start(D)
    out = list(rec.tick(D + 2 * 900 + 5))
    assert _short(out) == [(D, 0, 0), (D + 900, 0, 0)]
    assert rec.in_progress()[:3] == (D + 1800, 900, 0)


def test_m01_late_tick_with_energy_is_invalid_not_lost():
    rec = rc.Recorder(900)
    rec.start(D)
    rec.add((7, 0, 0, 0))
    rec.tick(D + 10)
    rec.add((5, 0, 0, 0))
    out = list(rec.tick(D + 3 * 900 + 5))
    assert _short(out) == [(D, INV, 12), (D + 900, INV, 0), (D + 1800, INV, 0)]
    assert rec.in_progress()[2] == 0
    # crossing a single boundary late is not "late"
    rec.add((1, 0, 0, 0))
    assert _short(rec.tick(D + 4 * 900 + 899)) == [(D + 2700, 0, 1)]


def test_m01_closed_records_switch_length_at_the_change():
    rec = rc.Recorder(900)
    rec.start(D)
    rec.set_interval(3600, D + 1)
    got = list(rec.tick(D + 5 * H + 1))
    assert len(got) == 4 + 4  # D..D+2700 at 900, then D+1h..D+4h at 3600
    assert rec.switched == 3600
    assert [r[1] for r in got] == [900] * 4 + [3600] * 4
    _check_stream(got)


# (old, new, `now` when set, interval in progress starts at, effective instant)
INTERVAL_CHANGES = (
    (900, 3600, D + 100, D, D + H),
    (900, 300, D + 100, D, D + 900),
    (3600, 900, D + 100, D, D + H),
    (600, 900, D + 100, D, D + 1800),
    (900, 600, D + 1000, D + 900, D + 1800),
    (1800, 3600, D + 1900, D + 1800, D + H),
    (300, 3600, D + 3500, D + 3300, D + H),
    (300, 1800, D + 1799, D + 1500, D + 1800),
)


def test_m01_interval_change_takes_effect_on_a_common_boundary():
    for old, new, now, cur, eff in INTERVAL_CHANGES:
        rec = rc.Recorder(old)
        rec.start(D)
        rec.tick(now)
        assert rec.in_progress()[0] == cur
        assert rec.set_interval(new, now) == eff, (old, new, now)
        assert rec.pending_interval == (new, eff)
        out = []
        changed = []
        t = tu.floor_to(now, 60)
        while t < D + 3 * H:
            t += 60
            out.extend(rec.tick(t))
            if rec.switched:
                changed.append((t, rec.switched))
                rec.switched = 0
        assert changed == [(eff, new)], (old, new, changed)
        assert [r[1] for r in out if r[0] < eff] == [old] * ((eff - cur) // old)
        assert all(r[1] == new for r in out if r[0] >= eff)
        _check_stream(out)
        assert rec.pending_interval is None and rec.interval_s == new


def test_m01_interval_change_same_length_cancels_and_bad_length_raises():
    rec = rc.Recorder(900)
    rec.start(D)
    assert rec.set_interval(3600, D + 5) == D + H
    assert rec.set_interval(900, D + 6) is None
    assert rec.pending_interval is None
    _raises(ValueError, rec.set_interval, 1200, D + 7)
    _raises(ValueError, rc.Recorder, 1000)
    _raises(ValueError, rc.Recorder, 900, 0)
    _raises(ValueError, rc.Recorder, 900, 9)
    _raises(ValueError, rc.Recorder, 900, 2, 0, (1,))


def test_m01_add_takes_non_negative_integers_only():
    rec = rc.Recorder(900, channels=2)
    rec.start(D)
    for bad in ((-1, 0), (1.5, 0), (1, 2, 3), ("1",)):
        _raises(ValueError, rec.add, bad)
    assert rec.totals() == (0, 0)  # a rejected add changes nothing
    rec.add((3,))
    assert rec.totals() == (3, 0)


def test_m05_registers_are_exact_integers_beyond_float_precision():
    big = 2**24  # single-precision floats stop counting single Wh here
    rec = rc.Recorder(900, registers=(big, 10**12, 0, 0))
    rec.start(D)
    rec.add((1, 1, 0, 0))
    assert rec.totals() == (big + 1, 10**12 + 1, 0, 0)


# Clock steps: (old, new, records closed [(start, flags, Wh)], in progress (start, flags))
# Each starts from: start(D), add 10 Wh, tick(D + 800).
STEPS = (
    (D + 800, D + 850, [], (D, CA)),
    (D + 800, D + 800, [], (D, 0)),
    (D + 800, D + 900, [(D, CA | P, 10)], (D + 900, CA)),
    (D + 800, D + 1000, [(D, CA | P, 10)], (D + 900, CA | P)),
    (
        D + 800,
        D + 2800,
        [(D, CA | P, 10), (D + 900, CA | INV, 0), (D + 1800, CA | INV, 0)],
        (D + 2700, CA | P),
    ),
    (D + 800, D + 100, [], (D, CA)),
    (D + 800, D - 100, [], (D, CA)),
    (D + 800, D - 3 * 86400, [], (D, CA)),
)


def test_m04_clock_step_table():
    for old, new, want, prog in STEPS:
        rec = rc.Recorder(900)
        rec.start(D)
        rec.add((10,))
        assert list(rec.tick(old)) == []
        got = list(rec.clock_step(old, new))
        assert _short(got) == want, (old, new, got)
        assert rec.in_progress()[0] == prog[0] and rec.in_progress()[2] == prog[1], (old, new)


def test_m04_clock_step_backward_across_boundary_is_never_doubled():
    rec = rc.Recorder(900)
    rec.start(D)
    rec.add((4,))
    out = list(rec.tick(D + 910))  # closes D
    rec.add((3,))
    rec.tick(D + 960)
    out.extend(rec.clock_step(D + 960, D + 850))  # back 110 s, across D + 900
    assert _short(out) == [(D, 0, 4)]
    # the clock re-lives D+850..D+900: nothing closes, the interval D+900 stays open
    for t in (D + 851, D + 899, D + 900, D + 1799):
        rec.add((1,))
        assert list(rec.tick(t)) == []
    rec.add((1,))
    out.extend(rec.tick(D + 1800))
    assert _short(out) == [(D, 0, 4), (D + 900, CA, 8)]
    _check_stream(out)


def test_m04_clock_step_none_lost_none_doubled():
    rec = rc.Recorder(900)
    rec.start(D)
    # (seconds to advance before the step, clock step in s)
    moves = ((100, 50), (700, -300), (50, 2000), (10, -4000), (5000, 119), (1, -86400), (90000, 3))
    t = D
    out = []
    added = 0
    for adv, step in moves:
        for _ in range(adv // 100 + 1):
            t += min(adv, 100)
            rec.add((2,))
            added += 2
            out.extend(rec.tick(t))
        out.extend(rec.clock_step(t, t + step))
        t += step
    starts = [r[0] for r in out]
    assert len(starts) == len(set(starts))
    _check_stream(out)
    assert sum(r[3][0] for r in out) + rec.in_progress()[3][0] == added == rec.totals()[0]


def test_m04_clock_step_requires_a_tick_first():
    rec = rc.Recorder(900)
    rec.start(D)
    _raises(ValueError, rec.clock_step, D + 1000, D + 1100)


def test_m04_unannounced_backward_time_is_flagged():
    rec = rc.Recorder(900)
    rec.start(D)
    rec.tick(D + 500)
    assert list(rec.tick(D + 400)) == []
    assert rec.in_progress()[2] == CA


# Power-up after the newest stored record started at D (in progress at power-down: D+900).
# (now, persisted acc, records closed [(start, flags, Wh)], in progress (start, flags, Wh))
POWER_UPS = (
    (D + 1000, None, [], (D + 900, PF | P, 0)),
    (D + 1000, (7,), [], (D + 900, PF | P, 7)),
    (D + 1800, (7,), [(D + 900, PF | P, 7)], (D + 1800, 0, 0)),
    (D + 2000, (7,), [(D + 900, PF | P, 7)], (D + 1800, PF | P, 0)),
    (D + 3000, None, [(D + 900, PF | P, 0), (D + 1800, PF | INV, 0)], (D + 2700, PF | P, 0)),
    (D + 500, None, [], (D + 900, PF | P | CA, 0)),
)


def test_m05_power_up_table():
    for now, acc, want, prog in POWER_UPS:
        rec = rc.Recorder(900, registers=(100, 0, 0, 0))
        got = list(rec.power_up(now, D, acc))
        assert _short(got) == want, (now, got)
        p = rec.in_progress()
        assert (p[0], p[2], p[3][0]) == prog, (now, p)
        assert rec.totals() == (100, 0, 0, 0)


def test_m05_power_fail_then_power_up_flags_and_keeps_registers():
    rec = rc.Recorder(900)
    rec.start(D)
    rec.add((2, 1, 0, 0))
    stored = list(rec.tick(D + 900))
    rec.add((4, 0, 0, 0))
    stored.extend(rec.power_fail(D + 1000))
    snap = rec.in_progress()
    assert snap == (D + 900, 900, PF, (4, 0, 0, 0))
    # reboot: a new Recorder from the persisted registers and snapshot
    new = rc.Recorder(900, registers=rec.totals())
    stored.extend(new.power_up(D + 3700, stored[-1][0], snap[3], snap[2]))
    assert _short(stored) == [
        (D, 0, 2),
        (D + 900, PF | P, 4),
        (D + 1800, PF | INV, 0),
        (D + 2700, PF | INV, 0),
    ]
    assert new.in_progress()[:3] == (D + 3600, 900, PF | P)
    assert new.totals() == (6, 1, 0, 0)
    _check_stream(stored)


def test_m05_power_up_long_outage_is_capped_at_45_days():
    rec = rc.Recorder(900)
    now = D + 100 * 86400 + 5
    got = list(rec.power_up(now, D))
    assert len(got) == 1 + 45 * 96
    assert got[0][0] == D + 900 and got[1][0] == D + 55 * 86400
    assert got[-1][0] == D + 100 * 86400 - 900
    assert all(r[2] == PF | INV for r in got[1:])


def test_m05_power_up_first_boot_and_bad_record():
    rec = rc.Recorder(900)
    assert list(rec.power_up(D + 100, None)) == []
    assert rec.in_progress()[:3] == (D, 900, PF | P)
    _raises(ValueError, rc.Recorder(900).power_up, D + 5000, D + 10)


def _drain(rec):
    out = []
    while True:
        m = rec.midnight_due()
        if m is None:
            return out
        out.append(m)


def test_m03_midnight_register_once_per_local_standard_day():
    for off, step in ((EST, 900), (IST, 300), (0, 3600)):
        start = tu.utc(2026, 3, 6, 12) - off  # noon local, days around the US DST change
        rec = rc.Recorder(step, utc_offset_s=off)
        rec.start(start)
        mids = []
        closed = []
        t = start
        while t < start + 4 * 86400:
            t += 300
            rec.add((1, 2, 0, 0))
            closed.extend(rec.tick(t))
            mids.extend(_drain(rec))
        first = tu.day_start(start, off) + 86400  # the first local midnight after start
        assert [m[0] for m in mids] == [first + k * 86400 for k in range(4)], off
        for day, regs in mids:
            assert tu.civil(day + off)[3:] == (0, 0, 0)
            assert regs[0] == sum(r[3][0] for r in closed if r[0] + r[1] <= day)
            assert regs[1] == 2 * regs[0]


def test_m03_midnight_backlog_after_an_outage():
    m = D + 5 * H  # local midnight, EST
    rec = rc.Recorder(900, utc_offset_s=EST)
    rec.start(m - 1800)
    rec.add((9,))
    rec.tick(m)
    assert _drain(rec) == [(m, (9, 0, 0, 0))]
    rec.add((1,))
    rec.power_fail(m + 100)
    new = rc.Recorder(900, utc_offset_s=EST, registers=rec.totals())
    new.power_up(m + 3 * 86400 + 50, m - 900, rec.in_progress()[3], PF, m)
    regs = (10, 0, 0, 0)
    assert _drain(new) == [(m + 86400, regs), (m + 2 * 86400, regs), (m + 3 * 86400, regs)]
    assert _drain(new) == []


def test_m03_midnight_not_repeated_after_backward_step():
    rec = rc.Recorder(900)
    rec.start(D - 900)
    rec.tick(D + 100)
    assert [x[0] for x in _drain(rec)] == [D]
    rec.clock_step(D + 100, D - 100)
    for t in (D - 50, D + 10, D + 899, D + 900, D + 86399):
        rec.tick(t)
        assert _drain(rec) == []
    rec.tick(D + 86400)
    assert [x[0] for x in _drain(rec)] == [D + 86400]


def test_m05_power_up_after_an_interval_change():
    rec = rc.Recorder(900)
    rec.start(D)
    rec.set_interval(3600, D + 10)
    stored = []
    for t in range(D + 60, D + H + 61, 60):
        stored.extend(rec.tick(t))
    assert stored[-1][:2] == (D + 2700, 900) and rec.in_progress()[:2] == (D + H, 3600)
    rec.add((5,))
    rec.power_fail(D + H + 100)
    snap = rec.in_progress()
    new = rc.Recorder(3600, registers=rec.totals())
    _raises(ValueError, new.power_up, D + 3 * H, stored[-1][0])  # 2700 + 3600: no boundary
    out = list(new.power_up(D + 3 * H + 7, stored[-1][0], snap[3], snap[2], None, 900))
    assert _short(out) == [(D + H, PF | P, 5), (D + 2 * H, PF | INV, 0)]
    assert all(r[1] == 3600 for r in out)
