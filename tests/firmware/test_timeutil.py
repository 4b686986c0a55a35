# Epoch conversion, local standard day starts and interval boundaries.
# Runs on CPython (pytest) and on MicroPython (tests/firmware/mpy_runner.py).
from meter import timeutil as tu

H = 3600
EST = -5 * H  # US Eastern standard time, all year (no DST, M04)
IST = 5 * H + 1800  # India, +05:30


def _raises(exc, fn, *args):
    try:
        fn(*args)
    except exc:
        return
    raise AssertionError("%s not raised" % exc.__name__)


# (y, m, d, hh, mi, ss, UTC seconds since 1970)
CIVIL = (
    (1970, 1, 1, 0, 0, 0, 0),
    (1999, 12, 31, 23, 59, 59, 946684799),
    (2000, 1, 1, 0, 0, 0, 946684800),
    (2024, 2, 29, 12, 0, 0, 1709208000),
    (2026, 3, 1, 0, 0, 0, 1772323200),
    (2038, 1, 19, 3, 14, 7, 2147483647),
    (2106, 2, 7, 6, 28, 15, 4294967295),
)


def test_m04_civil_and_utc_round_trip():
    for y, m, d, hh, mi, ss, t in CIVIL:
        assert tu.utc(y, m, d, hh, mi, ss) == t, (y, m, d)
        assert tu.civil(t) == (y, m, d, hh, mi, ss), t


def test_m04_epoch_2000_is_the_only_conversion():
    # (seconds since 2000 as the ESP32 RTC counts, UTC seconds since 1970)
    for t2000, t1970 in ((0, 946684800), (1, 946684801), (825638400, 1772323200)):
        assert t2000 + tu.epoch_shift(2000) == t1970
    assert tu.epoch_shift(1970) == 0
    _raises(ValueError, tu.epoch_shift, 1980)


D = 1772323200  # 2026-03-01T00:00:00Z

# (t, utc offset, local standard day start as UTC)
DAY_STARTS = (
    (D, 0, D),
    (D + 86399, 0, D),
    (D + 86400, 0, D + 86400),
    (D, EST, D - 86400 + 5 * H),  # 19:00 EST on Feb 28: day began 05:00Z Feb 28
    (D + 5 * H, EST, D + 5 * H),  # local midnight exactly
    (D + 5 * H - 1, EST, D - 86400 + 5 * H),
    (D, IST, D - 5 * H - 1800),  # 05:30 IST Mar 1: midnight was 18:30Z Feb 28
    (D + 18 * H + 1800, IST, D + 18 * H + 1800),
)


def test_m03_day_start_is_local_standard_midnight():
    for t, off, want in DAY_STARTS:
        assert tu.day_start(t, off) == want, (t, off)
        assert tu.day_start(t + 86400, off) == want + 86400
        assert tu.is_boundary(want, 86400, off)


def test_m04_no_dst_every_local_day_is_86400_s():
    # Across the US DST change (2026-03-08) the EST day starts stay 86400 apart.
    t = tu.utc(2026, 3, 6)
    starts = []
    for _ in range(6):
        starts.append(tu.day_start(t, EST))
        t += 86400
    for a, b in zip(starts, starts[1:]):
        assert b - a == 86400
    assert tu.civil(starts[3] + EST)[3:] == (0, 0, 0)  # local 00:00:00, never 01:00


# (t, step, offset, floor, next boundary)
BOUNDARIES = (
    (D, 900, 0, D, D + 900),
    (D + 1, 900, 0, D, D + 900),
    (D + 899, 900, 0, D, D + 900),
    (D + 900, 900, 0, D + 900, D + 1800),
    (D + 10, 3600, IST, D - 1800, D + 1800),  # hours aligned to local :00 = UTC :30
    (D + 1800, 3600, IST, D + 1800, D + 5400),
    (D + 299, 300, EST, D, D + 300),
)


def test_m01_floor_and_next_boundary():
    for t, step, off, fl, nb in BOUNDARIES:
        assert tu.floor_to(t, step, off) == fl, (t, step, off)
        assert tu.next_boundary(t, step, off) == nb, (t, step, off)
        assert tu.is_boundary(fl, step, off)
        assert tu.is_boundary(t, step, off) == (t == fl)


def test_m01_every_interval_length_divides_the_day():
    for s in tu.INTERVALS:
        assert tu.check_interval(s) == s
        assert 86400 % s == 0 and 3600 % s == 0
    for bad in (0, 60, 299, 301, 1200, 7200, -900, 900.0, "900", None):
        _raises(ValueError, tu.check_interval, bad)


def test_m03_utc_offset_validation():
    for ok in (0, EST, IST, 14 * H, -12 * H, 5 * H + 2700):
        assert tu.check_utc_offset(ok) == ok
    for bad in (30, 14 * H + 60, -14 * H - 60, 3600.0, None):
        _raises(ValueError, tu.check_utc_offset, bad)


def test_m01_lcm():
    for a, b, want in ((900, 3600, 3600), (600, 900, 1800), (300, 300, 300), (1800, 600, 1800)):
        assert tu.lcm(a, b) == want
