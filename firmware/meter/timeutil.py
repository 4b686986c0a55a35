# Time arithmetic for the meter: the one module that knows about epochs.
#
# Everything else in firmware/meter/ works in UTC seconds since 1970, as ints.
# The ESP32 RTC counts from 2000; epoch_shift() is the only conversion.
# "Local" always means local STANDARD time of a fixed UTC offset: no DST (M04).
# Interval boundaries are aligned to local standard midnight, so every local
# day holds exactly 86400 // interval_s intervals, whatever the offset.
# Bad arguments raise a plain ValueError(name, value): no caller tells time
# errors apart.

try:
    from micropython import const
except ImportError:

    def const(x):
        return x


_EPOCH_2000 = const(946684800)  # 2000-01-01T00:00:00Z in seconds since 1970
_DAY = const(86400)
_MAX_UTC_OFFSET_S = const(50400)  # 14 h, the widest offset in use
INTERVALS = (300, 600, 900, 1800, 3600)


def epoch_shift(y):
    """Seconds to add to the port's time() to get 1970 seconds.

    y: the year of the running port's epoch (its gmtime of 0): 2000 on the
    ESP32, 1970 on the unix port.
    """
    if y == 2000:
        return _EPOCH_2000
    if y == 1970:
        return 0
    raise ValueError("epoch year", y)


def check_interval(interval_s):
    """Raise ValueError unless interval_s is a supported interval length (M01)."""
    if not isinstance(interval_s, int) or interval_s not in INTERVALS:
        raise ValueError("interval_s", interval_s)
    return interval_s


def check_utc_offset(utc_offset_s):
    """Raise ValueError unless the offset is whole minutes within +-14 h."""
    if (
        not isinstance(utc_offset_s, int)
        or utc_offset_s % 60
        or not -_MAX_UTC_OFFSET_S <= utc_offset_s <= _MAX_UTC_OFFSET_S
    ):
        raise ValueError("utc_offset_s", utc_offset_s)
    return utc_offset_s


def floor_to(t, step, utc_offset_s=0):
    """Latest boundary <= t of a grid of `step` s aligned to local midnight."""
    return t - (t + utc_offset_s) % step


def next_boundary(t, step, utc_offset_s):
    """Earliest boundary > t of a grid of `step` s aligned to local midnight."""
    return t - (t + utc_offset_s) % step + step


def is_boundary(t, step, utc_offset_s):
    return (t + utc_offset_s) % step == 0


def day_start(t, utc_offset_s):
    """UTC instant of the local standard midnight starting the day holding t."""
    return t - (t + utc_offset_s) % _DAY


def lcm(a, b):
    g, r = a, b  # Euclid: g ends as gcd(a, b)
    while r:
        g, r = r, g % r
    return a // g * b


def utc(y, m, d, hh=0, mi=0, ss=0):
    """UTC seconds since 1970 of a UTC calendar time (no time zone involved)."""
    # days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant)
    if m <= 2:
        y -= 1
    era = y // 400
    yoe = y - era * 400
    mp = m - 3 if m > 2 else m + 9
    doy = (153 * mp + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    days = era * 146097 + doe - 719468
    return days * _DAY + hh * 3600 + mi * 60 + ss


def civil(t):
    """(year, month, day, hour, minute, second) of UTC seconds t."""
    z, s = divmod(t, _DAY)
    z += 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    y = yoe + era * 400
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + 3 if mp < 10 else mp - 9
    if m <= 2:
        y += 1
    return (y, m, d, s // 3600, s // 60 % 60, s % 60)
