# The optical probe's binary download (M18, M20, N06; SPEC "Optical port"):
# K_op against the golden vectors, the challenge, a good and a wrong key, a
# replayed answer, the lock-out and its persistence across a reboot, events
# 9/10 for every attempt, parts that hold every section and everything held,
# line noise, an aborted link, recording going on meanwhile. Runs on CPython
# (pytest) and MicroPython.
import json

from meter import auth, optical, wire
from meter.errors import BadMac, MalformedPayload
from meter_kit import DAY, KEY, MID, T0, Board, Head, events_of, raises

_DIR = __file__.rsplit("/", 1)[0] if "/" in __file__ else "."
VECTORS = _DIR + "/../../protocol/vectors/"
OP = 42
KOP = auth.probe_key(KEY, OP)


def _meter(days=3):
    b = Board()
    b.boot()
    b.run(days * DAY, step=900, wh=(7, 1, 2, 0), head=Head(keep=False))
    return b


class Probe:
    """The probe's side: unsigned frames out, the meter's replies verified."""

    def __init__(self, b, op=OP):
        self.b = b
        self.op = op
        self.link = optical.new()
        self.seq = 0

    def send(self, mtype, body):
        self.seq += 1
        f = {"type": mtype, "seq": self.seq, "meter_id": MID, "timestamp": T0, "auth": None}
        f["body"] = body
        out = optical.receive(self.b.m, self.link, wire.encode(f), self.b.now)
        return [wire.decode(raw, auth.probe_key(KEY, self.op)) for raw in out]

    def open(self):
        (ch,) = self.send("download_open", {"operator": self.op})
        assert ch["type"] == "download_challenge", ch
        return ch["body"]["nonce"]

    def answer(self, nonce, key=KEY, op=None):
        op = self.op if op is None else op
        mac = auth.download_mac(auth.probe_key(key, op), nonce, op)
        return self.send("download_auth", {"operator": op, "mac": mac})

    def parts(self, between=None):
        """Every download_data frame, decoded and verified with K_op."""
        out = []
        while True:
            raw = optical.part(self.b.m, self.link, self.b.now)
            if raw is None:
                return out
            assert len(raw) <= wire.MAX_FRAME
            out.append(wire.decode(raw, auth.probe_key(KEY, self.op)))
            if between is not None:
                between()


def _denied(b):
    return [int.from_bytes(e[3], "big") for e in events_of(b.reboot_store(), 10)]


def _granted(b):
    return [int.from_bytes(e[3], "big") for e in events_of(b.reboot_store(), 9)]


def _sections(parts, tag):
    return [s["body"] for f in parts for s in f["body"]["sections"] if s["tag"] == tag]


def test_m18_m20_probe_key_matches_the_golden_vectors():
    with open(VECTORS + "keys.jsonl") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    assert rows
    for v in rows:
        kop = auth.probe_key(bytes.fromhex(v["meter_key"]), v["operator"])
        assert kop.hex() == v["probe_key"], v["name"]
        mac = auth.download_mac(kop, bytes.fromhex(v["nonce"]), v["operator"])
        assert mac.hex() == v["download_mac"], v["name"]
    raises(MalformedPayload, auth.probe_key, KEY, 0x10000)


def test_m18_m20_challenge_is_random_single_use_and_signed_with_kop():
    b = _meter(0)
    p = Probe(b)
    n1 = p.open()
    n2 = p.open()  # a new open: a new nonce, the old one is void
    assert len(n1) == len(n2) == 16 and n1 != n2
    assert p.answer(n1)[0]["body"]["reason"] == 3  # the old nonce: wrong answer
    # the challenge is signed with K_op, not the meter key
    f = {"type": "download_open", "seq": 1, "meter_id": MID, "timestamp": T0, "auth": None}
    f["body"] = {"operator": OP}
    (raw,) = optical.receive(b.m, optical.new(), wire.encode(f), b.now)
    raises(BadMac, wire.decode, raw, KEY)
    assert wire.decode(raw, KOP)["auth"]["counter"] > 0


def test_m18_n06_good_key_downloads_every_section_and_everything_held():
    b = _meter(3)
    st = b.m.store
    p = Probe(b)
    assert p.answer(p.open()) == []  # granted: no reply, the parts follow
    assert _granted(b) == [OP]
    parts = p.parts()
    n = parts[0]["body"]["parts"]
    assert [f["body"]["part"] for f in parts] == list(range(n))
    assert all(f["type"] == "download_data" and f["body"]["parts"] == n for f in parts)
    tags = [s["tag"] for s in parts[0]["body"]["sections"]]
    for t in ("clock", "registers", "schedules", "config"):
        assert tags.count(t) == 1, (t, tags)
    assert _sections(parts, "registers")[0]["values"] == list(b.m.rec.totals())
    got = []
    for blk in _sections(parts, "intervals"):
        for i in range(len(blk["flags"])):
            got.append(blk["start"] + i * blk["interval_s"])
    assert got == [r[0] for r in st.intervals()] and len(got) == 3 * 96
    # a download part's intervals are one block (a read's go in blocks of 32):
    # fewer bytes on the optical line (N06)
    assert [len(blk["flags"]) for blk in _sections(parts, "intervals")] == [96, 96, 96]
    mids = [(m["day"], m["values"]) for m in _sections(parts, "midnight")]
    assert mids == [(t, list(v)) for t, v in st.register_reads()]
    evs = [(e["code"], e["time"]) for blk in _sections(parts, "events") for e in blk]
    assert evs == [(e[2], e[1]) for e in st.events()]
    assert evs[-1] == (9, b.now)
    slots = _sections(parts, "schedules")[0]
    assert [s["slot"] for s in slots] == [0] and slots[0]["period_s"] == DAY
    cfg = {c["key"]: c["value"] for c in _sections(parts, "config")[0]}
    assert cfg == {1: 900, 2: 0, 3: b.m.push_mask, 4: 1}
    assert optical.part(b.m, p.link, b.now) is None  # done


def test_m18_many_events_span_several_parts():
    b = _meter(0)
    for i in range(450):
        b.m.tamper(b.now + i)
    p = Probe(b)
    p.answer(p.open())
    parts = p.parts()
    blocks = _sections(parts, "events")
    assert [len(x) for x in blocks] == [200, 200, len(list(b.m.store.events())) - 400]


def test_m20_wrong_key_is_nacked_logged_and_three_lock_the_port_across_a_reboot():
    b = _meter(0)
    p = Probe(b)
    for i in range(3):
        (nack,) = p.answer(p.open(), key=bytes(32))
        assert nack["type"] == "nack" and nack["body"]["reason"] == 3
        assert nack["body"]["nacked_type"] == 0x11
    assert _denied(b) == [OP] * 3
    # locked: download_open answered busy (signed with K_op), logged, no challenge
    (busy,) = p.send("download_open", {"operator": OP})
    assert busy["type"] == "nack" and busy["body"]["reason"] == 6
    assert _denied(b) == [OP] * 4
    b.now += 299
    b.boot()  # a reboot keeps the lock
    p = Probe(b)
    assert p.send("download_open", {"operator": OP})[0]["body"]["reason"] == 6
    assert p.send("download_auth", {"operator": OP, "mac": bytes(32)})[0]["body"]["reason"] == 6
    b.now += 1  # 300 s on: open again, and the right key is granted
    assert p.answer(p.open()) == []
    assert _granted(b) == [OP]
    assert p.parts()


def test_m20_a_good_answer_resets_the_count_of_wrong_ones():
    b = _meter(0)
    p = Probe(b)
    for _ in range(2):
        p.answer(p.open(), key=bytes(32))
    assert p.answer(p.open()) == []
    p.parts()
    for _ in range(2):
        p.answer(p.open(), key=bytes(32))
    assert p.open()  # 2 wrong since the grant: not locked


def test_m20_replayed_answer_and_another_operator_are_refused():
    b = _meter(0)
    p = Probe(b)
    nonce = p.open()
    assert p.answer(nonce) == []
    p.parts()
    (nack,) = p.answer(nonce)  # the same answer again: the nonce is spent
    assert nack["body"]["reason"] == 4
    # a challenge for one operator answered as another: refused
    p = Probe(b)
    nonce = p.open()
    q = Probe(b, OP + 1)
    q.link = p.link
    assert q.answer(nonce)[0]["body"]["reason"] == 3
    assert _denied(b)[-1] == OP + 1 and _granted(b) == [OP]


def test_m18_noise_other_meters_and_a_new_link_leave_no_state():
    b = _meter(0)
    link = optical.new()
    seqs = b.m.store.next_event_seq()
    x = 12345
    for n in range(200):  # random bytes: never a frame that decodes
        buf = bytearray(n % 60 + 1)
        for i in range(len(buf)):
            x = (x * 1103515245 + 12345) & 0x7FFFFFFF
            buf[i] = x >> 16 & 0xFF
        assert optical.receive(b.m, link, bytes(buf), b.now) == []
    f = {"type": "download_open", "seq": 1, "meter_id": MID + 1, "timestamp": T0, "auth": None}
    f["body"] = {"operator": OP}
    assert optical.receive(b.m, link, wire.encode(f), b.now) == []  # another meter's
    raw = bytearray(wire.encode(dict(f, meter_id=MID)))
    raw[-1] ^= 1  # a bad CRC
    assert optical.receive(b.m, link, bytes(raw), b.now) == []
    assert b.m.store.next_event_seq() == seqs  # nothing logged, nothing changed
    # a challenge on a dropped link: a new link cannot answer it
    p = Probe(b)
    nonce = p.open()
    p.link = optical.new()
    assert p.answer(nonce)[0]["body"]["reason"] == 4


def test_m18_a_new_open_aborts_a_download_in_progress():
    b = _meter(2)
    p = Probe(b)
    p.answer(p.open())
    assert optical.part(b.m, p.link, b.now) is not None
    p.open()
    assert optical.part(b.m, p.link, b.now) is None


def test_m18_signed_frames_on_the_optical_port_get_the_usual_conversations():
    b = _meter(1)
    h = Head()
    raw = h.frame("read_request", {"mode": 2, "start": 0, "end": 0, "what": 2})
    out = optical.receive(b.m, optical.new(), raw, b.now)
    assert h.decode(out[0])["type"] == "read_response"


def test_m18_meter_keeps_recording_during_a_download():
    b = _meter(2)
    p = Probe(b)
    p.answer(p.open())
    last = b.m.store.last_interval()[0]

    def tick():  # the tick task runs between parts
        b.now += 900
        b.m.add((7, 1, 2, 0))
        b.m.tick(b.now, False)

    parts = p.parts(tick)
    assert len(parts) == parts[0]["body"]["parts"]
    assert b.m.store.last_interval()[0] == last + 900 * len(parts)
