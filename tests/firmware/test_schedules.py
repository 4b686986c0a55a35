# Read schedules: validation, occurrences, read periods, failures, persistence.
# Runs on CPython (pytest) and on MicroPython (tests/firmware/mpy_runner.py).
from meter import schedules as sc

H = 3600
DAY = 86400
D = 1772323200  # 2026-03-01T00:00:00Z
EST = -5 * H
M = D + 5 * H  # local standard midnight (EST) starting 2026-03-01
# SPEC values the module keeps private (no global on the meter):
MODE_PERIOD = 0  # read_request.mode
MODE_SINCE_ACK = 1
SET = 0  # Slot.action
CANCEL = 1


def S(index, start, end, period_s, offset_s, what=sc.WHAT_ALL):
    return sc.Slot(index, start, end, period_s, offset_s, what)


def _set(s, slot, now):
    # Set a slot as a schedule_set carries it: a wire Slot dict.
    f = {
        "slot": slot.index,
        "action": SET,
        "start": slot.start,
        "end": slot.end,
        "period_s": slot.period_s,
        "offset_s": slot.offset_s,
        "what": slot.what,
    }
    return s.apply(f, now)


def _raises(exc, fn, *args):
    try:
        fn(*args)
    except exc:
        return
    raise AssertionError("%s not raised" % exc.__name__)


# (slot, interval_s, error class or None); a period under the interval is H07
VALIDATE = (
    (S(1, 0, 0, 900, 0, 15), 900, None),
    (S(3, M, M + DAY, 1800, 900, 1), 900, None),
    (S(1, 0, 0, 300, 0, 15), 300, None),
    (S(0, 0, 0, DAY, 7200, 15), 900, None),
    (S(1, 0, 0, 600, 0, 15), 900, sc.ScheduleError),
    (S(2, 0, 0, 3599, 0, 15), 3600, sc.ScheduleError),
    (S(4, 0, 0, 3600, 0, 15), 900, sc.ScheduleError),
    (S(-1, 0, 0, 3600, 0, 15), 900, sc.ScheduleError),
    (S(1, 0, 0, 3600, 3600, 15), 900, sc.ScheduleError),
    (S(1, 100, 50, 3600, 0, 15), 900, sc.ScheduleError),
    (S(1, 100, 100, 3600, 0, 15), 900, sc.ScheduleError),
    (S(1, 0, 0, 3600, 0, 0), 900, sc.ScheduleError),
    (S(1, 0, 0, 3600, 0, 16), 900, sc.ScheduleError),
    (S(1, 2**32, 0, 3600, 0, 15), 900, sc.ScheduleError),
    (S(1, 0, 0, 1800.0, 0, 15), 900, sc.ScheduleError),
    (S(1, 0, 0, 31 * DAY + 1, 0, 15), 900, sc.ScheduleError),  # over 31 days
    (S(0, 0, 0, 43200, 0, 15), 900, sc.ScheduleError),
    (S(0, 0, D, DAY, 0, 15), 900, sc.ScheduleError),
    ((1, 0, 0, 3600, 0, 15), 900, sc.ScheduleError),
)


def test_m11_validate_table():
    for slot, interval_s, err in VALIDATE:
        if err is None:
            assert sc.validate(slot, interval_s) is slot
        else:
            _raises(err, sc.validate, slot, interval_s)
    assert issubclass(sc.ScheduleError, ValueError)


# (slot, after, utc offset, next occurrence)
NEXT_DUE = (
    (S(0, 0, 0, DAY, 7200), M, EST, M + 7200),
    (S(0, 0, 0, DAY, 7200), M + 7199, EST, M + 7200),
    (S(0, 0, 0, DAY, 7200), M + 7200, EST, M + DAY + 7200),
    (S(0, 0, 0, DAY, 7200), M + 7200, 0, D + DAY + 7200),  # UTC midnight-based
    (S(1, M + 1000, 0, H, 600), M, EST, M + 4200),
    (S(1, M, M + 7200, H, 0), M, EST, M + H),
    (S(1, M, M + 7200, H, 0), M + H, EST, None),
    (S(2, 0, 0, 900, 0), M + 1, EST, M + 900),
    (S(2, 0, 0, 4 * H, 1800), M + 100, EST, M + 1800),
)


def test_m11_next_due_table():
    for slot, after, off, want in NEXT_DUE:
        assert sc.next_due(slot, after, off) == want, (slot, after)


def _wire(s):
    # The slots held as wire tuples (slot, action, start, end, period_s, offset_s, what).
    return [(x.index, SET, x.start, x.end, x.period_s, x.offset_s, x.what) for x in s.slots if x]


def _reads(s, now, slot):
    # The reads due at `now` for one slot (slot 0 fires daily alongside).
    return [r for r in s.due(now) if r[0] == slot]


def _sch(read_offset_s=7200):
    s = sc.Schedules(900, EST, read_offset_s)
    assert s.due(M + 100) == []  # a fresh meter plans slot 0 from now
    return s


def test_m12_default_read_sends_the_previous_local_day():
    s = _sch()
    # (now, reads due)
    for now, want in (
        (M + 7199, []),
        (M + 7200, [(0, M - DAY, M)]),
        (M + 7201, []),
        (M + DAY + 7199, []),
        (M + DAY + 7200, [(0, M, M + DAY)]),
    ):
        assert s.due(now) == want, now


def test_m19_default_read_time_is_programmable():
    s = _sch()
    assert _set(s, S(0, 0, 0, DAY, 3 * H + 1200), M + 200) == M + 3 * H + 1200
    assert s.due(M + 7200) == []
    assert s.due(M + 3 * H + 1200) == [(0, M - DAY, M)]
    assert _wire(s) == [(0, 0, 0, 0, DAY, 3 * H + 1200, 15)]
    _raises(sc.ScheduleError, _set, s, S(0, 0, 0, 3600, 0), M)


def test_m14_first_read_from_midnight_then_from_the_previous_read():
    s = _sch(read_offset_s=1800)
    _set(s, S(1, 0, 0, 4 * H, 1800, 1), M + 5 * H)  # what: intervals  # 00:30, 04:30, ... local
    for now, want in (
        (M + 8 * H + 1799, []),
        (M + 8 * H + 1800, [(1, M, M + 8 * H + 1800)]),
        (M + 12 * H + 1800, [(1, M + 8 * H + 1800, M + 12 * H + 1800)]),
        (M + 16 * H + 1900, [(1, M + 12 * H + 1800, M + 16 * H + 1800)]),  # late: last complete
    ):
        assert _reads(s, now, 1) == want, now


def test_m14_first_read_at_midnight_covers_the_previous_day():
    s = _sch(read_offset_s=1800)
    _set(s, S(2, 0, 0, 6 * H, 0), M - 100)
    assert _reads(s, M, 2) == [(2, M - DAY, M)]


def test_m15_after_a_failed_send_the_next_read_covers_since_the_last_ack():
    s = _sch(read_offset_s=1800)
    _set(s, S(1, 0, 0, 4 * H, 1800), M + 5 * H)
    a = _reads(s, M + 8 * H + 1800, 1)[0]
    assert s.acknowledged(1, a[2], a[1])
    b = _reads(s, M + 12 * H + 1800, 1)[0]
    s.send_failed(1)
    c = _reads(s, M + 16 * H + 1800, 1)[0]
    assert c == (1, b[1], M + 16 * H + 1800)
    assert s.acknowledged(1, c[2], c[1])
    assert _reads(s, M + 20 * H + 1800, 1) == [(1, c[2], M + 20 * H + 1800)]


def test_m15_failure_before_any_ack_resends_from_the_first_read():
    s = _sch(read_offset_s=1800)
    _set(s, S(1, 0, 0, 4 * H, 1800), M + 5 * H)
    _reads(s, M + 8 * H + 1800, 1)
    s.send_failed(1)
    _reads(s, M + 12 * H + 1800, 1)
    s.send_failed(1)
    assert _reads(s, M + 16 * H + 1800, 1) == [(1, M, M + 16 * H + 1800)]


def test_m15_an_ack_after_a_hole_is_not_taken():
    s = _sch(read_offset_s=1800)
    _set(s, S(1, 0, 0, 4 * H, 1800), M + 5 * H)
    a = _reads(s, M + 8 * H + 1800, 1)[0]  # never arrives
    b = _reads(s, M + 12 * H + 1800, 1)[0]
    s.send_failed(1)  # a's ack timed out
    assert not s.acknowledged(1, b[2], b[1])  # b arrived, but a is still missing
    assert _reads(s, M + 16 * H + 1800, 1) == [(1, a[1], M + 16 * H + 1800)]


def test_m15_default_read_failure_covers_several_days():
    s = _sch()
    r1 = s.due(M + 7200)[0]
    s.acknowledged(0, r1[2], r1[1])
    s.due(M + DAY + 7200)
    s.send_failed(0)
    assert s.due(M + 2 * DAY + 7200) == [(0, M, M + 2 * DAY)]


def test_m11_missed_occurrences_fire_once_late():
    s = _sch()
    _set(s, S(1, 0, 0, H, 0), M + 100)
    assert _reads(s, M + H, 1) == [(1, M, M + H)]
    assert _reads(s, M + 6 * H + 500, 1) == [(1, M + H, M + 6 * H)]  # meter was off 5 h
    assert _reads(s, M + 6 * H + 600, 1) == []
    assert s.next_at[1] == M + 7 * H


def test_m11_schedule_with_an_end_stops():
    s = _sch()
    _set(s, S(1, M + H, M + 3 * H, H, 0), M + 100)
    assert _reads(s, M + H, 1) == [(1, M, M + H)]
    assert _reads(s, M + 2 * H, 1) == [(1, M + H, M + 2 * H)]
    assert _reads(s, M + 3 * H, 1) == [] and s.next_at[1] == 0
    assert _reads(s, M + 30 * H, 1) == []


def test_m11_set_update_cancel_via_wire_fields():
    s = _sch()
    f = {"slot": 2, "action": SET, "start": 0, "end": 0, "period_s": H, "offset_s": 0, "what": 9}
    assert s.apply(f, M + 10) == M + H
    assert _wire(s) == [(0, 0, 0, 0, DAY, 7200, 15), (2, 0, 0, 0, H, 0, 9)]
    assert s.apply({"slot": 2, "action": CANCEL}, M + 20) is None
    assert s.slots[2] is None and s.next_at[2] == 0
    _raises(sc.ScheduleError, s.apply, {"slot": 0, "action": CANCEL}, M)
    _raises(sc.ScheduleError, s.apply, {"slot": 1, "action": 2}, M)
    _raises(sc.ScheduleError, s.apply, {"slot": 1, "period_s": 300}, M)  # < interval (H07)
    _raises(sc.ScheduleError, s.cancel, 4, M)


def test_m11_interval_change_checks_slot_periods():
    s = _sch()
    _set(s, S(3, 0, 0, 900, 0), M)
    assert s.conflicts(1800) == [3] and s.conflicts(600) == []
    _raises(sc.ScheduleError, s.set_interval, 1800)
    s.set_interval(600)
    assert s.interval_s == 600


def test_m11_backward_clock_step_never_repeats_a_period():
    s = _sch()
    _set(s, S(1, 0, 0, H, 0), M + 10)
    assert _reads(s, M + H, 1) == [(1, M, M + H)]
    s.clock_step(M + H + 5, M + 1000)
    assert s.next_at[1] == M + H
    assert _reads(s, M + H, 1) == []  # nothing new since the previous read
    assert _reads(s, M + 2 * H, 1) == [(1, M + H, M + 2 * H)]
    s.clock_step(M + 2 * H, M + 5 * H)  # forward: the stepped-over reads fire once
    assert _reads(s, M + 5 * H, 1) == [(1, M + 2 * H, M + 5 * H)]


def _busy(s):
    _set(s, S(1, 0, 0, 4 * H, 1800, 3), M + 5 * H)
    _set(s, S(3, M, M + 9 * DAY, 2 * H, 0, 8), M + 5 * H)
    r = _reads(s, M + 8 * H + 1800, 1)
    s.acknowledged(1, r[0][2], r[0][1])
    _reads(s, M + 12 * H + 1800, 1)
    s.send_failed(1)
    return s


def test_m11_state_blob_round_trip():
    s = _busy(_sch())
    blob = s.to_bytes()
    assert isinstance(blob, bytes) and len(blob) == 142
    t = sc.Schedules.from_bytes(blob, 900, EST)
    assert t.to_bytes() == blob
    assert _wire(t) == _wire(s)
    for name in ("next_at", "sent_end", "acked_end", "first", "failed"):
        assert getattr(t, name) == getattr(s, name), name
    for now in range(M + 12 * H, M + 3 * DAY, 900):
        assert t.due(now) == s.due(now), now
    fresh = sc.Schedules(900, EST, 3600)
    assert _wire(sc.Schedules.from_bytes(fresh.to_bytes(), 900, EST)) == _wire(fresh)


def test_m11_state_blob_rejects_damage():
    blob = _busy(_sch()).to_bytes()
    _raises(sc.ScheduleError, sc.Schedules.from_bytes, blob[:-1], 900, EST)
    _raises(sc.ScheduleError, sc.Schedules.from_bytes, b"X" + blob[1:], 900, EST)
    no_default = blob[:2] + bytes(35) + blob[37:]
    _raises(sc.ScheduleError, sc.Schedules.from_bytes, no_default, 900, EST)
    bad_failed = blob[:-1] + b"\x02"
    _raises(sc.ScheduleError, sc.Schedules.from_bytes, bad_failed, 900, EST)
    assert sc.Schedules.from_bytes(blob, 3600, EST).interval_s == 3600  # 2 h, 4 h periods fit
    s = _sch()
    _set(s, S(2, 0, 0, 1800, 0), M)
    _raises(sc.ScheduleError, sc.Schedules.from_bytes, s.to_bytes(), 3600, EST)


NOW = M + 10 * H + 100
HELD = M - 45 * DAY
# (mode, start, end, now, acked_upto, (start, end) or error class)
REQUESTS = (
    (sc.MODE_ON_DEMAND, 0, 0, NOW, 0, (M, M + 10 * H)),
    (sc.MODE_ON_DEMAND, 0, 0, M, 0, (M, M)),  # just after midnight: no interval yet
    (sc.MODE_ON_DEMAND, M - DAY, M, NOW, 0, (M - DAY, M)),
    (MODE_PERIOD, M - DAY + 1, M - 1, NOW, 0, (M - DAY, M)),
    (MODE_PERIOD, M + 9 * H, M + 11 * H, NOW, 0, (M + 9 * H, M + 10 * H)),
    (MODE_PERIOD, M - 50 * DAY, M - 44 * DAY, NOW, 0, (HELD, M - 44 * DAY)),
    (MODE_PERIOD, M - 60 * DAY, M - 50 * DAY, NOW, 0, sc.NotHeld),
    (MODE_PERIOD, M + 11 * H, M + 12 * H, NOW, 0, sc.NotHeld),
    (MODE_PERIOD, M, M, NOW, 0, sc.ScheduleError),
    (MODE_SINCE_ACK, 0, 0, NOW, M + 2 * H, (M + 2 * H, M + 10 * H)),
    (MODE_SINCE_ACK, 0, 0, NOW, 0, sc.NotHeld),
    (3, 0, 0, NOW, 0, sc.ScheduleError),
)


def test_m13_m16_read_request_periods():
    for mode, start, end, now, acked, want in REQUESTS:
        args = (mode, start, end, now, 900, EST, HELD, acked)
        if isinstance(want, tuple):
            assert sc.request_period(*args) == want, (mode, start, end)
        else:
            _raises(want, sc.request_period, *args)
    assert issubclass(sc.NotHeld, sc.ScheduleError)
