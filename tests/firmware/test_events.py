# Event log: codes, push mask, push until acked, retry backoff, overflow.
# Runs on CPython (pytest) and on MicroPython (tests/firmware/mpy_runner.py).
from meter import events as ev


class MemorySink:
    """In-RAM event store (the store's event contract: data as 4 bytes BE,
    rows out as (seq, time, code, data)); `rows` keeps (seq, code, time, data int)."""

    def __init__(self, cap=None):
        self.cap = cap
        self.rows = []  # (seq, code, time, data)
        self.next_seq = 1

    def append_event(self, code, time, data):
        assert isinstance(data, bytes) and len(data) == 4
        seq = self.next_seq
        self.next_seq += 1
        self.rows.append((seq, code, time, int.from_bytes(data, "big")))
        if self.cap is not None and len(self.rows) > self.cap:
            self.rows.pop(0)
        return seq

    def events(self, since_seq):
        for seq, code, time, data in self.rows:
            if seq >= since_seq:
                yield (seq, time, code, data.to_bytes(4, "big"))


D = 1772323200  # 2026-03-01T00:00:00Z
MESSAGE_SENT = 16  # SPEC event code message_sent (private to the module)


def _raises(exc, fn, *args):
    try:
        fn(*args)
    except exc:
        return
    raise AssertionError("%s not raised" % exc.__name__)


# (constant, code, SPEC name); download_granted (9), download_denied (10) and
# message_sent (16) are private to the module: no other module logs them by name
CODES = (
    (ev.POWER_DOWN, 1, "power_down"),
    (ev.POWER_UP, 2, "power_up"),
    (ev.CLOCK_ADJUSTED, 3, "clock_adjusted"),
    (ev.CLOCK_OUT_OF_SYNC, 4, "clock_out_of_sync"),
    (ev.SYNC_FAILED, 5, "sync_failed"),
    (ev.SCHEDULE_CHANGED, 6, "schedule_changed"),
    (ev.READ_FAILED, 7, "read_failed"),
    (ev.CONFIG_CHANGED, 8, "config_changed"),
    (ev.TAMPER, 11, "tamper"),
    (ev.SELF_TEST, 12, "self_test"),
    (ev.AUTH_FAILED, 13, "auth_failed"),
    (ev.READ_UNANSWERABLE, 14, "read_unanswerable"),
    (ev.INTERVAL_CHANGED, 15, "interval_changed"),
)


def test_m10_event_codes_match_the_spec():
    for const, code, _name in CODES:
        assert const == code


def test_m10_every_event_is_persisted_with_time_code_and_data():
    sink = MemorySink()
    log = ev.EventLog(sink, push_mask=0)
    assert log.log(ev.POWER_UP, D, 0) == 1
    assert log.log(ev.CONFIG_CHANGED, D + 5, 3) == 2
    assert log.log(ev.CLOCK_ADJUSTED, D + 9, D - 40) == 3
    assert sink.rows == [
        (1, ev.POWER_UP, D, 0),
        (2, ev.CONFIG_CHANGED, D + 5, 3),
        (3, ev.CLOCK_ADJUSTED, D + 9, D - 40),
    ]
    assert [r[0] for r in log.since(2)] == [2, 3]
    for bad in ((0, D, 0), (17, D, 0), (ev.TAMPER, D, -1), (ev.TAMPER, D, 2**32)):
        _raises(ValueError, log.log, *bad)
    assert len(sink.rows) == 3


def test_m10_push_mask_selects_codes_and_is_settable():
    log = ev.EventLog(MemorySink(), ev.DEFAULT_PUSH_MASK)
    # (mask, codes pushed among 1..16)
    table = (
        (ev.DEFAULT_PUSH_MASK, [1, 2, 4, 5, 11, 13]),
        (0, [4]),  # out-of-sync always goes (M08)
        (1 << 7, [4, 7]),
        (ev.MASK_ALL, list(range(1, 16))),  # message_sent never (it would loop)
    )
    for mask, want in table:
        log.set_push_mask(mask)
        assert [c for c in range(1, 17) if log.push_mask >> c & 1] == want, mask
    for bad in (1, 1 << 17, -1, 2.0):
        _raises(ValueError, log.set_push_mask, bad)
    assert log.push_mask == ev.MASK_ALL & ~(1 << MESSAGE_SENT)  # unchanged


def test_m10_only_pushed_codes_are_queued():
    log = ev.EventLog(MemorySink(), push_mask=1 << ev.TAMPER)
    log.log(ev.CONFIG_CHANGED, D, 1)
    log.log(ev.TAMPER, D + 1, 0)
    log.log(ev.CLOCK_OUT_OF_SYNC, D + 2, 130)
    assert log.push_due(D + 2)
    assert log.batch() == [(ev.TAMPER, D + 1, 0), (ev.CLOCK_OUT_OF_SYNC, D + 2, 130)]


def test_m10_message_sent_is_logged_for_non_usage_messages_only():
    sink = MemorySink()
    log = ev.EventLog(sink, push_mask=ev.MASK_ALL)
    # (message type, logged)
    for t, logged in ((0x0A, True), (0x04, True), (0x0C, True), (0x08, False), (0x12, False)):
        seq = log.message_sent(t, D)
        assert (seq is not None) == logged, t
    assert [r[3] for r in sink.rows] == [0x0A, 0x04, 0x0C]
    assert all(r[1] == MESSAGE_SENT for r in sink.rows)
    assert log.pending() == 0  # logged, never pushed


def test_m10_pushes_are_retried_until_acknowledged():
    log = ev.EventLog(MemorySink(), push_mask=ev.MASK_ALL)
    log.log(ev.TAMPER, D, 0)
    log.log(ev.POWER_UP, D + 1, 0)
    assert log.push_due(D + 1)
    first = log.batch()
    retry_at = log.pushed(100, D + 1, 0)
    assert retry_at == D + 1 + ev.retry_delay(1, 0)
    log.log(ev.AUTH_FAILED, D + 2, 0)  # joins the next batch, not this one
    assert not log.push_due(retry_at - 1)
    assert log.push_due(retry_at)
    assert log.batch() == first
    retry2 = log.pushed(101, retry_at, 0)
    assert retry2 - retry_at == ev.retry_delay(2, 0)
    assert log.acked(55) == 0  # not ours
    assert log.acked(100) == 2  # a late ack for the first frame counts too
    assert log.acked(101) == 0  # already removed: nothing twice
    assert log.pending() == 1
    assert log.push_due(retry_at + 1)
    assert log.batch() == [(ev.AUTH_FAILED, D + 2, 0)]
    log.pushed(102, retry_at + 1, 9)
    assert log.acked(102) == 1 and log.pending() == 0 and not log.push_due(D + 10**6)
    _raises(ValueError, log.pushed, 103, D, 0)


# (attempt, rand, delay s): exponential from 30 s, capped at 3600 s, in [d/2, d]
RETRY = (
    (1, 0, 15),
    (1, 15, 30),
    (1, 16, 15),
    (2, 0, 30),
    (3, 2**32 - 1, 60 + (2**32 - 1) % 61),
    (7, 0, 960),
    (8, 0, 1800),
    (9, 0, 1800),
    (40, 1800, 3600),
    (0, 0, 15),
)


def test_m10_retry_delay_backoff_with_jitter_capped():
    for attempt, rand, want in RETRY:
        assert ev.retry_delay(attempt, rand) == want, (attempt, rand)
    for attempt in range(1, 30):
        for rand in (0, 1, 12345, 2**31, 2**32 - 1):
            d = ev.retry_delay(attempt, rand)
            assert 15 <= d <= 3600


def test_m10_queue_overflow_loses_nothing():
    # the RAM queue holds 32 events and a batch 16: 70 events overflow it twice over
    sink = MemorySink()
    log = ev.EventLog(sink, push_mask=ev.MASK_ALL)
    for i in range(70):
        log.log(ev.TAMPER if i % 2 else ev.CONFIG_CHANGED, D + i, i)
    log.log(MESSAGE_SENT, D + 80, 10)  # never pushed, not reloaded
    assert log.pending() == 32
    pushed = []
    seq = 0
    while log.push_due(D + 100):
        b = log.batch()
        assert 0 < len(b) <= 16
        pushed.extend(b)
        seq += 1
        log.pushed(seq, D + 100, 0)
        assert log.acked(seq) == len(b)
    assert [e[2] for e in pushed] == list(range(70))
    assert log.pending() == 0


class _BytesStore:
    # The store's event contract: data as bytes, rows (seq, time_s, code, data).
    def __init__(self):
        self.rows = []

    def append_event(self, code, time_s, data=b""):
        assert isinstance(data, bytes)
        self.rows.append((len(self.rows) + 1, time_s, code, data))
        return len(self.rows)

    def events(self, since_seq=0):
        for r in self.rows:
            if r[0] >= since_seq:
                yield r


def test_m10_event_log_on_the_store_round_trips_u32_data():
    store = _BytesStore()
    log = ev.EventLog(store, push_mask=ev.MASK_ALL)
    log.log(ev.CLOCK_ADJUSTED, D, D - 30)
    log.log(ev.CONFIG_CHANGED, D + 1, 2**32 - 1)
    assert store.rows[0] == (1, D, ev.CLOCK_ADJUSTED, (D - 30).to_bytes(4, "big"))
    assert list(log.since(1)) == [(1, 3, D, D - 30), (2, 8, D + 1, 2**32 - 1)]
    log.resume(2)  # as after a reboot: queued again from the store, as u32
    assert log.batch() == [(ev.CONFIG_CHANGED, D + 1, 2**32 - 1)]
