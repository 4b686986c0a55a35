# Clock validation policy (M06-M09): pure, handed the time.
#
# Once a day, at a random instant inside an interval and never within 60 s of
# an interval boundary (M06), the meter sends time_sync_request(t1) and gets
# (t1, t2, t3); t4 is its clock on receipt (all UTC ms). SyncState.response()
# compensates the round trip (NTP on-wire) and maps the offset to an action:
#   |offset| <= 20 s        NONE         nothing to do
#   20 s < |offset| < 120 s STEP         step the clock, log old/new (M07, M09)
#   |offset| >= 120 s       OUT_OF_SYNC  push an event, do NOT step (M08);
#                                        wait for an authenticated time_set
# A lost reply, a reply after the timeout or a round trip over 4 s is
# a failed attempt: logged (M09) and retried at a new random instant later the
# same day, up to 3 times; then the next day's instant.
# Bad arguments raise a plain ValueError(name, value). `rand` is always a
# random u32.

try:
    from micropython import const
except ImportError:

    def const(x):
        return x


from meter import events
from meter import timeutil as tu

_NONE = const(0)
STEP = const(1)
OUT_OF_SYNC = const(2)
FAILED = const(3)

_STEP_ABOVE_MS = const(20000)  # |offset| above this: step
_OUT_OF_SYNC_MS = const(120000)  # |offset| at or above this: out of sync, no step
_MARGIN_S = const(60)  # never sync within this of an interval boundary
_MAX_DELAY_MS = const(4000)  # longer round trips are rejected (error up to 2 s)
_TIMEOUT_S = const(30)  # no reply within this: failed attempt
_RETRIES = const(3)  # failed attempts retried per day
_RETRY_GAP_S = const(120)  # a retry is at least this long after the failure
_DAY = const(86400)

# Failure reasons (sync_failed event data).
FAIL_TIMEOUT = const(1)
_FAIL_DELAY = const(2)
_FAIL_BAD_REPLY = const(3)


def next_sync_instant(day_start, interval_s, rand, after):
    """A random instant of the day starting at day_start, >= 60 s from any boundary.

    day_start: UTC instant of local midnight (a boundary). after: None, or
    the instant is > after. Returns None if no allowed instant is left that day.
    """
    tu.check_interval(interval_s)
    # Allowed: (t - day_start) % interval_s in [MARGIN, interval_s - MARGIN],
    # `per` instants in each interval; number them through the day.
    per = interval_s - 2 * _MARGIN_S + 1
    a = 0  # allowed instants in [day_start, after]
    if after is not None and after >= day_start:
        q, r = divmod(after + 1 - day_start, interval_s)
        a = q * per + min(max(r - _MARGIN_S, 0), per)
    n = _DAY // interval_s * per - a  # allowed instants left that day
    if n <= 0:
        return None
    q, r = divmod(a + rand % n, per)
    return day_start + q * interval_s + _MARGIN_S + r


def event_for(decision, offset_ms, now, reason=0):
    """(code, data) of the event the app logs for a verdict, or None (M08, M09).

    now: the meter time of the verdict, before any step (clock_adjusted data).
    """
    if decision == STEP:
        return (events.CLOCK_ADJUSTED, now)
    if decision == OUT_OF_SYNC:
        return (events.CLOCK_OUT_OF_SYNC, (abs(offset_ms) + 500) // 1000)
    if decision == FAILED:
        return (events.SYNC_FAILED, reason)
    return None


class SyncState:
    """Daily validation schedule with retries. All instants are meter UTC s.

    Use: plan(now, r) once; when due(now): send t1 and call sent(now, t1);
    on a reply: response(...); if timed_out(now): failed(now, r, FAIL_TIMEOUT).
    """

    def __init__(self, interval_s, utc_offset_s):
        tu.check_interval(interval_s)
        tu.check_utc_offset(utc_offset_s)
        self.interval_s = interval_s
        self.utc_offset_s = utc_offset_s
        self.next_at = None  # next attempt instant
        self.day = None  # day_start of the day next_at belongs to
        self.failures = 0  # failed attempts on that day
        self.t1_ms = None  # request in flight
        self.sent_at = 0
        self.out_of_sync = False  # set by OUT_OF_SYNC, cleared by time_set()
        self.last_reason = 0  # reason of the last failed attempt (sync_failed data)

    def plan(self, now, rand):
        """Plan the validation after `now`: today's, or tomorrow's if none is left today."""
        day = tu.day_start(now, self.utc_offset_s)
        t = next_sync_instant(day, self.interval_s, rand, now)
        if t is None:
            # nothing left today: tomorrow, still after `now` (a retry's gap
            # spans midnight when the failure came just before it)
            day += _DAY
            t = next_sync_instant(day, self.interval_s, rand, now)
        if day != self.day:
            self.failures = 0
        self.day = day
        self.next_at = t
        return t

    def set_interval(self, interval_s, now, rand):
        """The interval length changed: re-plan so the instant avoids the new boundaries."""
        tu.check_interval(interval_s)
        self.interval_s = interval_s
        if self.t1_ms is None:
            return self.plan(now, rand)
        return self.next_at

    def due(self, now):
        if self.t1_ms is not None or self.next_at is None or now < self.next_at:
            return False
        # A stalled loop can come late, near a boundary: wait for the allowed part (M06).
        r = (now - tu.day_start(now, self.utc_offset_s)) % self.interval_s
        return _MARGIN_S <= r <= self.interval_s - _MARGIN_S

    def sent(self, now, t1_ms):
        """A time_sync_request carrying t1_ms was sent at `now`."""
        self.t1_ms = t1_ms
        self.sent_at = now

    def timed_out(self, now):
        return self.t1_ms is not None and now - self.sent_at >= _TIMEOUT_S

    def failed(self, now, rand, reason):
        """A failed attempt (the app logs sync_failed, M09). Returns the next attempt instant.

        Retries at a random allowed instant >= 120 s later the same day, at
        most 3 times a day; after that, tomorrow's instant.
        """
        self.t1_ms = None
        self.last_reason = reason
        self.failures += 1
        day = tu.day_start(now, self.utc_offset_s)
        if day != self.day:
            self.day = day
            self.failures = 1
        if self.failures <= _RETRIES:
            return self.plan(now + _RETRY_GAP_S - 1, rand)
        return self.plan(day + _DAY, rand)  # tomorrow's

    def response(self, t1_ms, t2_ms, t3_ms, t4_ms, now, rand):
        """A time_sync_response arrived; t4_ms = meter clock on receipt.

        Returns (decision, offset_ms, delay_ms), or None for a reply that does
        not match the request in flight (ignored). offset_ms is what to add to
        the meter clock, wrong by at most delay_ms / 2 (+1 ms rounding). A
        too-long round trip or an impossible reply is FAILED (re-planned as by
        failed(); the reason is in last_reason).
        On _NONE (0), STEP or OUT_OF_SYNC the next attempt is tomorrow's. The app
        steps the clock by offset_ms on STEP, then calls the recorder's clock_step.
        """
        if self.t1_ms is None or t1_ms != self.t1_ms:
            return None
        if t4_ms < t1_ms or t3_ms < t2_ms:  # timestamps out of order
            self.failed(now, rand, _FAIL_BAD_REPLY)
            return (FAILED, 0, 0)
        # NTP on-wire calculation, integer ms
        offset = ((t2_ms - t1_ms) + (t3_ms - t4_ms)) // 2
        delay = (t4_ms - t1_ms) - (t3_ms - t2_ms)
        if delay > _MAX_DELAY_MS or now - self.sent_at >= _TIMEOUT_S:
            self.failed(now, rand, _FAIL_DELAY if delay > _MAX_DELAY_MS else FAIL_TIMEOUT)
            return (FAILED, offset, delay)
        self.t1_ms = None
        d = _NONE
        if abs(offset) >= _OUT_OF_SYNC_MS:
            d = OUT_OF_SYNC
        elif abs(offset) > _STEP_ABOVE_MS:
            d = STEP
        self.out_of_sync = d == OUT_OF_SYNC
        self.plan(tu.day_start(now, self.utc_offset_s) + _DAY, rand)  # tomorrow's
        return (d, offset, delay)

    def time_set(self, now):
        """An authenticated time_set was applied at `now`: the clock is good again."""
        self.out_of_sync = False
