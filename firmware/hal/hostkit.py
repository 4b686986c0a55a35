# A meter on the host, for the firmware tests and the benchmarks (CPython and
# MicroPython): Board is the core on the NOR-flash model with a clock the
# caller sets, Head a head-end that speaks the protocol with the firmware's own
# codec (protocol/ does not run on MicroPython). Host-side: never in an image
# (tools/fwimage.py leaves it out, as it does norflash).
from hal import norflash
from meter import meter as core
from meter import store, wire

T0 = 1772323200  # 2026-03-01T00:00:00Z (a Sunday, local midnight at offset 0)
DAY = 86400
KEY = bytes(range(32))
MID = 4711


class Rand:
    """Deterministic u32 source (xorshift32)."""

    def __init__(self, seed=12345):
        self.x = seed

    def __call__(self):
        self.x = norflash.xorshift32(self.x)
        return self.x


class Board:
    """Flash + RTC of one meter; `boot()` builds a fresh core as after a power-up."""

    def __init__(self, now=T0, interval_s=900, blocks=64, **ident):
        self.flash = norflash.NORFlash(4096, blocks)
        self.now = now
        self.interval_s = interval_s
        self.ident = ident
        self.rand = Rand()
        self.steps = []
        self.m = None

    def set_clock(self, t):
        self.steps.append((self.now, t))
        self.now = t

    def boot(self):
        ident = core.Ident(MID, KEY, interval_s=self.interval_s, **self.ident)
        self.m = core.Meter(store.Store(self.flash), ident, self.rand, self.set_clock)
        self.m.boot(self.now)
        return self.m

    def reboot_store(self):
        return store.Store(self.flash).mount()

    def run(self, seconds, step=60, wh=(10, 0, 3, 0), online=True, head=None):
        """Advance the clock, feeding energy per step; collect uplink frames."""
        out = []
        end = self.now + seconds
        while self.now < end:
            dt = step if self.now + step <= end else end - self.now
            self.now += dt
            self.m.add(wh)
            frames = self.m.tick(self.now, online)
            if head is not None:
                frames = head.serve(self, frames)
                if not head.keep:
                    continue
            out.extend(frames)
        return out


class Head:
    """A head-end: signs every downlink, verifies and decodes uplinks (MAC under
    the meter's key, or the previous one until the meter used the new one),
    optionally acks everything; `rotate` sends key_set (SPEC "Authentication")."""

    last_counter = 0  # the downlink counter, shared by every Head

    def __init__(
        self,
        key=KEY,
        counter=None,
        ack_reads=True,
        ack_events=True,
        ack_register=True,
        offset_ms=0,
        sync=True,
        keep=True,
    ):
        self.keep = keep  # keep decoded uplinks in .got (long runs: False)
        self.key = key
        self.old_key = None  # accepted for uplinks until one arrives under `key`
        self.version = 0
        self.counters = []  # the counter of every uplink decoded, in order
        self.offset_ms = offset_ms  # official time minus meter time
        self.sync = sync
        # one downlink counter for every Head (a head-end keeps it per meter in
        # its store): a new Head never replays an old one's counters
        if counter is not None:
            Head.last_counter = counter
        self.seq = 100
        self.ack_reads = ack_reads
        self.ack_events = ack_events
        self.ack_register = ack_register
        self.got = []  # decoded uplinks, in order

    def frame(self, mtype, body, auth=True, key=None, counter=None, now=T0, meter_id=MID):
        """A downlink, signed (auth False: without the trailer) with `key` or
        the current key (the previous one while the meter has not used the new)."""
        self.seq = (self.seq + 1) & 0xFFFF
        a = None
        if auth:
            if counter is None:
                Head.last_counter += 1
                counter = Head.last_counter
            a = {"counter": counter, "mac": b""}
        return wire.encode(
            {
                "type": mtype,
                "seq": self.seq,
                "meter_id": meter_id,
                "timestamp": now,
                "auth": a,
                "body": body,
            },
            key or self.old_key or self.key,
        )

    def rotate(self, version, new_key, now=T0):
        """key_set: the new key wrapped under the current one, signed with it;
        uplinks are accepted under both until one arrives under the new key."""
        from meter import auth

        old = self.old_key or self.key
        pad = auth.unwrap_key(old, bytes(32), version)  # XOR is its own inverse
        wrapped = bytes(a ^ b for a, b in zip(new_key, pad))
        raw = self.frame("key_set", {"version": version, "wrapped": wrapped}, now=now)
        self.old_key = old
        self.key = new_key
        self.version = version
        return raw

    def decode(self, raw):
        """Verify (BadMac: no trailer or a MAC under neither key) and decode an uplink."""
        try:
            f = wire.decode(raw, self.key)
            if self.old_key is not None:
                self.old_key = None  # the meter uses the new key: the old one is done
        except wire.BadMac:
            if self.old_key is None:
                raise
            f = wire.decode(raw, self.old_key)
        self.counters.append(f["auth"]["counter"])
        if self.keep:
            self.got.append(f)
        return f

    def serve(self, board, frames):
        """Decode uplinks and answer them as a head-end would; returns the uplinks."""
        todo = list(frames)
        while todo:
            raw = todo.pop(0)
            f = self.decode(raw)
            t = f["type"]
            reply = None
            if t == "read_response" and self.ack_reads:
                reply = self.frame("read_ack", {"acked_seq": f["seq"], "upto": 0})
            elif t == "event" and self.ack_events:
                reply = self.frame("event_ack", {"acked_seq": f["seq"]})
            elif t == "register" and self.ack_register:
                reply = self.frame("register_ack", {"status": 0})
            elif t == "time_sync_request" and self.sync:
                t2 = f["body"]["t1_ms"] + self.offset_ms + 40
                body = {"t1_ms": f["body"]["t1_ms"], "t2_ms": t2, "t3_ms": t2 + 5}
                reply = self.frame("time_sync_response", body)
            if reply is not None:
                more = board.m.receive(reply, board.now)
                frames.extend(more)
                todo.extend(more)
        return frames

    def of(self, mtype):
        return [f for f in self.got if f["type"] == mtype]
