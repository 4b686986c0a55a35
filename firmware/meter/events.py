# Event log logic (M10): codes, push mask, push queue with retry until acked.
#
# The persistent log (the store) is the source of truth. EventLog writes every
# event to it, with the store's event contract (firmware/meter/store.py):
#   store.append_event(code, time, data_bytes) -> seq (int, increasing)
#   store.events(since_seq) -> iterator of (seq, time, code, data_bytes) in seq order
# (data is a u32 on the wire, stored as 4 bytes BE). EventLog only reads seqs
# >= the one it wants, so the store may treat `since_seq` as inclusive or
# exclusive; it hands out rows as (seq, code, time, data). Events whose code is in the push mask
# also go to a bounded RAM queue and are pushed until an event_ack names a
# frame seq that carried them. If the RAM queue is full, later events are
# re-read from the sink once it drains: nothing is forgotten.
# Bad codes, data or masks raise a plain ValueError(name, value).

try:
    from micropython import const
except ImportError:

    def const(x):
        return x


# SPEC event codes; the ones no other module names are private (no global).
POWER_DOWN = const(1)
POWER_UP = const(2)
CLOCK_ADJUSTED = const(3)  # data = old time
CLOCK_OUT_OF_SYNC = const(4)  # data = |offset| s
SYNC_FAILED = const(5)
SCHEDULE_CHANGED = const(6)  # data = slot
READ_FAILED = const(7)
CONFIG_CHANGED = const(8)  # data = key
_DOWNLOAD_GRANTED = const(9)  # data = operator
_DOWNLOAD_DENIED = const(10)
TAMPER = const(11)
SELF_TEST = const(12)  # data = result
AUTH_FAILED = const(13)
READ_UNANSWERABLE = const(14)
INTERVAL_CHANGED = const(15)  # data = new interval_s
_MESSAGE_SENT = const(16)  # data = message type

_MAX_CODE = const(16)

# Push mask: bit (1 << code). Bit 0 and bits above 16 are reserved.
MASK_ALL = const(0x1FFFE)
# Always pushed whatever the mask: M08 requires the out-of-sync message.
_ALWAYS_PUSH = const(0x10)  # 1 << CLOCK_OUT_OF_SYNC
# Never pushed: pushing message_sent would log another message_sent (a loop).
_NEVER_PUSH = const(0x10000)  # 1 << MESSAGE_SENT
DEFAULT_PUSH_MASK = const(0x2836)  # power_down/up, out_of_sync, sync_failed, tamper, auth_failed

# Message types whose body is usage data: not logged as message_sent.
_READ_RESPONSE = const(0x08)
_DOWNLOAD_DATA = const(0x12)

_RETRY_BASE_S = const(30)
_RETRY_CAP_S = const(3600)
_QUEUE_CAP = const(32)
_BATCH_MAX = const(16)
_SEQS_KEPT = const(4)  # frame seqs remembered per batch (late acks still count)
_U32 = const(0xFFFFFFFF)


def check_push_mask(push_mask):
    if not isinstance(push_mask, int) or push_mask & ~MASK_ALL:
        raise ValueError("push_mask", push_mask)
    return push_mask


def retry_delay(attempt, rand):
    """Seconds to wait before re-push number `attempt` (1 = after the first send).

    Exponential from 30 s, capped at 3600 s, with "equal jitter": uniformly in
    [d/2, d] (rand: a random u32) so a fleet that lost its link together does
    not retry together.
    """
    if attempt < 1:
        attempt = 1
    d = _RETRY_BASE_S
    while attempt > 1 and d < _RETRY_CAP_S:
        d *= 2
        attempt -= 1
    if d > _RETRY_CAP_S:
        d = _RETRY_CAP_S
    half = d // 2
    return d - half + rand % (half + 1)


class EventLog:
    """Event logging and pushing over the store."""

    def __init__(self, store, push_mask):
        self.sink = store
        self.set_push_mask(push_mask)
        self._queue = []  # (seq, code, time, data) waiting for an ack, oldest first
        self._reload_from = 0  # > 0: events from this seq on overflowed the queue
        self.inflight = 0  # number of queued events in the batch in flight
        self.sent = None  # seqs of the frames that carried the batch in flight (a list)
        self.attempt = 0  # transmissions of the batch in flight
        self.next_try = 0  # earliest re-push instant
        self.acked_upto = 0  # seq of the newest event removed by an ack (persist it)

    def set_push_mask(self, push_mask):
        """Set which codes are pushed at once (config key 3). Logged by the app."""
        # the codes actually pushed: out-of-sync always, message_sent never
        self.push_mask = (check_push_mask(push_mask) | _ALWAYS_PUSH) & ~_NEVER_PUSH

    def log(self, code, now, data):
        """Log an event at meter time `now`. Returns its seq."""
        if not isinstance(code, int) or not 1 <= code <= _MAX_CODE:
            raise ValueError("code", code)
        if not isinstance(data, int) or not 0 <= data <= _U32:
            raise ValueError("data", data)
        seq = self.sink.append_event(code, now, data.to_bytes(4, "big"))
        if self.push_mask >> code & 1:
            if self._reload_from or len(self._queue) >= _QUEUE_CAP:
                if not self._reload_from:
                    self._reload_from = seq
            else:
                self._queue.append((seq, code, now, data))
        return seq

    def message_sent(self, mtype, now):
        """Log a non-usage message of type code mtype just sent (event 16).

        Returns its seq, or None for usage data.
        """
        if mtype == _READ_RESPONSE or mtype == _DOWNLOAD_DATA:
            return None
        return self.log(_MESSAGE_SENT, now, mtype)

    def since(self, seq):
        """Every persisted event with seq >= `seq` (for reads and downloads)."""
        for row in self._rows(seq):
            if row[0] >= seq:
                yield row

    # -- pushing -------------------------------------------------------------

    def pending(self):
        """Number of events waiting in RAM for an ack (overflowed ones not counted)."""
        return len(self._queue)

    def push_due(self, now):
        """True when a push (first send or re-push) should be sent now."""
        if not self._queue:
            return False
        if not self.attempt:
            return True
        return now >= self.next_try

    def batch(self):
        """The events for the next event frame: list of (code, time, data).

        The first call picks up to 16 queued events; until they are acked
        every call returns exactly the same events (a re-push), so an ack for
        any frame that carried them removes exactly those.
        """
        if not self.inflight:
            self.inflight = min(_BATCH_MAX, len(self._queue))
            self.sent = []
            self.attempt = 0
        return [(e[1], e[2], e[3]) for e in self._queue[: self.inflight]]

    def pushed(self, seq, now, rand):
        """The batch went out in the frame numbered seq at `now`. Returns the re-push instant."""
        if not self.inflight:
            raise ValueError("inflight", 0)  # pushed() without a batch()
        self.attempt += 1
        self.sent.append(seq)
        if len(self.sent) > _SEQS_KEPT:
            self.sent.pop(0)
        self.next_try = now + retry_delay(self.attempt, rand)
        return self.next_try

    def acked(self, seq):
        """event_ack for frame seq. Returns how many events it removed (0: unknown seq)."""
        if not self.inflight or seq not in self.sent:
            return 0
        n = self.inflight
        self.acked_upto = self._queue[n - 1][0]
        del self._queue[:n]
        self.inflight = 0
        self.sent = None
        self.attempt = 0
        self.next_try = 0
        self._reload()
        return n

    def resume(self, seq):
        """After a reboot: queue again the pushed events with seq >= `seq`
        (those after the newest acknowledged one) from the sink."""
        if seq < 1:
            seq = 1
        if not self._reload_from or seq < self._reload_from:
            self._reload_from = seq
        if not self.inflight:
            self._queue = []
            self._reload()

    def _rows(self, seq):
        # the store's rows from about `seq` on, as (seq, code, time, data int)
        for s, t, code, data in self.sink.events(seq - 1):
            yield (s, code, t, int.from_bytes(data, "big"))

    def _reload(self):
        # Refill the RAM queue from the sink after an overflow.
        start = self._reload_from
        if not start:
            return
        self._reload_from = 0
        for row in self._rows(start):
            if row[0] < start or not self.push_mask >> row[1] & 1:
                continue
            if len(self._queue) >= _QUEUE_CAP:
                self._reload_from = row[0]
                return
            self._queue.append(row)
