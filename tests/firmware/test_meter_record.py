# Meter core: recording, retention, midnight registers, clock policy end to end,
# reboot recovery. Runs on CPython (pytest) and MicroPython (mpy_runner.py).
from hal import norflash
from meter import events, recorder, wire
from meter_kit import DAY, KEY, T0, Board, Head, events_of, intervals_of
from scratch import Scratch


def _contiguous(recs):
    for a, b in zip(recs, recs[1:]):
        assert b[0] == a[0] + a[1], (a, b)


def test_m01_intervals_close_on_boundaries_with_flags():
    b = Board(now=T0 + 100)  # installed mid-interval
    b.boot()
    b.run(3 * 3600, step=60)
    recs = list(b.reboot_store().intervals())
    assert [r[0] for r in recs] == [T0 + 900 * i for i in range(12)]
    assert recs[0][2] == recorder.PARTIAL  # started mid-interval
    assert all(r[2] == 0 for r in recs[1:])
    assert recs[1][3] == (150, 0, 45, 0)  # 15 drains of (10, 0, 3, 0)
    assert all(r[1] == 900 for r in recs)


def test_m01_interval_length_is_remotely_programmable():
    b = Board()
    b.boot()
    h = Head()
    b.run(1800, head=h)
    ack = b.m.receive(h.frame("config_set", {"items": [{"key": 1, "value": 300}]}, True), b.now)
    assert h.decode(ack[0])["body"] == {"acked_seq": h.seq, "status": 0}
    b.run(3600, head=h)
    recs = list(b.reboot_store().intervals())
    lens = [r[1] for r in recs]
    assert lens[:3] == [900, 900, 900] and 300 in lens
    _contiguous(recs)
    st = b.reboot_store()
    assert [e for e in events_of(st, events.INTERVAL_CHANGED)][0][3] == (300).to_bytes(4, "big")
    assert events_of(st, events.CONFIG_CHANGED)
    # persisted: a reboot keeps 5 minutes
    b.boot()
    assert b.m.interval_s == 300 and b.m.rec.interval_s == 300
    # a bad length is refused, nothing applied
    ack = b.m.receive(h.frame("config_set", {"items": [{"key": 1, "value": 700}]}, True), b.now)
    assert h.decode(ack[0])["body"]["status"] == 7 and b.m.interval_s == 300


def test_m02_keeps_45_days_at_5_minutes_oldest_overwritten():
    b = Board(interval_s=300)
    b.boot()
    h = Head(keep=False)
    b.run(50 * DAY, step=300, head=h)
    st = b.reboot_store()
    n = 0
    first = prev = None
    for r in st.intervals():  # streamed: 13,000 records do not fit a small heap
        if prev is not None:
            assert r[0] == prev + 300
        if first is None:
            first = r[0]
        prev = r[0]
        n += 1
    assert n >= 45 * 288
    assert prev == b.now - 300  # the newest is never lost
    assert first > T0  # the oldest was overwritten
    # a period 44 days back is still answered, 50 days back is not held
    day44 = (b.now // DAY - 44) * DAY
    req = h.frame("read_request", {"mode": 0, "start": day44, "end": day44 + DAY, "what": 1}, True)
    parts = [h.decode(r) for r in b.m.receive(req, b.now)]
    # a day at 5 minutes: three parts of 8 h (96 intervals each at most)
    assert parts[0]["type"] == "read_response" and parts[0]["body"]["parts"] == 3
    # the whole 45 days in one period read: every part fits, is canonical
    # (what wire.encode gives for its fields) and together they hold it all
    req = h.frame("read_request", {"mode": 0, "start": first, "end": b.now, "what": 15}, True)
    raw = b.m.receive(req, b.now)
    seen = []
    t = first
    while raw:
        nxt = []
        for r in raw:
            f = wire.decode(r)  # not kept: 45 days of decoded frames fill a small heap
            assert len(r) <= wire.MAX_FRAME and wire.encode(f, KEY) == bytes(r)
            seen.append(f["body"]["part"])
            for iv in intervals_of([f]):  # parts go out in order
                assert iv[0] == t
                t += 300
            nparts = f["body"]["parts"]
            ack = h.frame("read_ack", {"acked_seq": f["seq"], "upto": 0})
            f = None
            nxt += b.m.receive(ack, b.now)
        raw = nxt
    assert nparts <= 255 and seen == list(range(nparts))
    assert t == b.now  # every interval held, once
    assert len(b.m.reads) == 1  # only the unacknowledged 44-days-back read is left
    req = h.frame("read_request", {"mode": 0, "start": T0, "end": T0 + DAY, "what": 1}, True)
    nack = h.decode(b.m.receive(req, b.now)[0])
    assert nack["type"] == "nack" and nack["body"]["reason"] == 5


def test_m03_midnight_register_every_day():
    b = Board(utc_offset_min=60)  # local standard midnight = 23:00 UTC
    b.boot()
    b.run(3 * DAY, step=300, wh=(4, 1, 2, 0))
    reads = list(b.reboot_store().register_reads())
    assert [t for t, _ in reads] == [T0 + DAY * k - 3600 for k in (1, 2, 3)]
    # the register at each midnight equals the energy recorded before it
    for t, regs in reads:
        e = sum(r[3][0] for r in b.reboot_store().intervals(0, t))
        assert regs[0] == e


def test_m04_timestamps_never_shift_for_dst():
    # a fixed offset: the grid is the same every day of the year, no 23/25 h days
    b = Board(now=T0 + 24 * DAY, utc_offset_min=60)  # spans the EU DST change (29 Mar)
    b.boot()
    b.run(6 * DAY, step=900)
    recs = list(b.reboot_store().intervals())
    _contiguous(recs)
    assert all((r[0] + 3600) % 900 == 0 for r in recs)
    mids = [t for t, _ in b.reboot_store().register_reads()]
    assert all((t + 3600) % DAY == 0 for t in mids)


def test_m05_registers_survive_reboot_and_power_cut():
    b = Board()
    b.boot()
    b.run(5 * 3600, step=60)
    regs = b.reboot_store().registers()
    b.now += 7200  # off for two hours
    m = b.boot()
    assert m.rec.totals()[:] == regs
    b.run(3600, step=60)
    recs = list(b.reboot_store().intervals())
    _contiguous(recs)
    flagged = [r for r in recs if r[2] & recorder.POWER_FAILED]
    assert flagged and all(r[2] & (recorder.PARTIAL | recorder.INVALID) for r in flagged)
    st = b.reboot_store()
    assert events_of(st, events.POWER_DOWN) and events_of(st, events.POWER_UP)
    assert st.registers()[0] == sum(r[3][0] for r in recs)


def test_m05_cut_at_any_flash_write_loses_no_closed_interval():
    # one day of a meter, power cut inside every k-th flash operation, reboot, go on
    b = Board()
    b.boot()
    h = Head()
    cuts = 0
    for k in range(0, 140, 7):
        b.flash.cut_at_op(b.flash.ops + k % 5 + 1)
        try:
            b.run(3600, step=300, head=h)
        except norflash.PowerCut:
            cuts += 1
        b.flash.reboot()
        before = [r[0] for r in b.reboot_store().intervals()]
        b.boot()
        after = [r[0] for r in b.reboot_store().intervals()]
        assert after[: len(before)] == before  # nothing closed is lost
        assert len(set(after)) == len(after)  # nothing doubled
    assert cuts > 5
    recs = list(b.reboot_store().intervals())
    _contiguous(recs)


def test_m06_m07_m09_clock_step_across_a_boundary_none_lost_none_doubled():
    b = Board()
    b.boot()
    h = Head(offset_ms=45000)  # the meter is 45 s slow: STEP
    b.run(2 * DAY, step=30, head=h)
    assert len(b.steps) >= 1
    for old, new in b.steps:
        assert new - old == 45  # 45 s + 42 ms rounds to 45 s
    st = b.reboot_store()
    adj = events_of(st, events.CLOCK_ADJUSTED)
    assert len(adj) == len(b.steps)
    assert int.from_bytes(adj[0][3], "big") == b.steps[0][0]  # data = old time
    assert adj[0][1] == b.steps[0][1]  # logged at the new time
    # validation instants are >= 60 s from any boundary (M06)
    for f in h.of("time_sync_request"):
        r = (f["body"]["t1_ms"] // 1000) % 900
        assert 60 <= r <= 840
    # force a step across a boundary: 10 s before it, +40 s
    t = (b.now // 900 + 1) * 900 - 10
    b.run(t - b.now, step=10)
    b.m.step_clock(b.now, b.now + 40)
    b.run(1800, step=10)
    recs = list(b.reboot_store().intervals())
    _contiguous(recs)
    starts = [r[0] for r in recs]
    assert len(set(starts)) == len(starts)
    head = [r for r in recs if r[0] == t - 890][0]
    assert head[2] & recorder.CLOCK_ADJUSTED
    # energy is all there: registers = sum of the records
    assert b.reboot_store().registers()[0] == sum(r[3][0] for r in recs)


def test_m08_out_of_sync_pushes_event_and_does_not_step():
    b = Board()
    b.boot()
    h = Head(offset_ms=300000)  # 5 minutes off
    b.run(DAY + 3600, step=30, head=h)
    assert b.steps == []
    st = b.reboot_store()
    oos = events_of(st, events.CLOCK_OUT_OF_SYNC)
    assert oos and int.from_bytes(oos[0][3], "big") == 300
    pushed = [e for f in h.of("event") for e in f["body"]["events"]]
    assert any(e["code"] == events.CLOCK_OUT_OF_SYNC for e in pushed)
    assert b.m.sync.out_of_sync
    # an authenticated time_set fixes it (and is logged)
    new_ms = (b.now + 300) * 1000
    assert b.m.receive(h.frame("time_set", {"utc_ms": new_ms}, True), b.now) == []
    assert b.steps[-1][1] == new_ms // 1000 and not b.m.sync.out_of_sync


def test_m09_failed_sync_attempts_are_logged():
    b = Board()
    b.boot()
    b.run(DAY, step=30, head=Head(sync=False))
    st = b.reboot_store()
    fails = events_of(st, events.SYNC_FAILED)
    assert len(fails) >= 2  # the attempt and its retries
    assert b.steps == []


def test_m05_reboot_mid_read_resends_since_last_ack():
    b = Board()
    b.boot()
    h = Head(ack_reads=False)
    b.run(DAY + 2 * 3600, step=300, head=h)  # the 01:00 read of day 1 is never acked
    first = intervals_of(h.of("read_response"))
    assert first and first[0][0] == T0
    b.now += 600
    b.boot()  # power cut while the read was unacknowledged
    h2 = Head()
    b.run(600, step=300, head=h2)
    again = intervals_of(h2.of("read_response"))
    assert again[0][0] == T0 and len(again) == 96  # the whole day again


def test_m05_file_backed_flash_without_ram_image_recovers_the_same():
    # the virtual board's flash (norflash ram=False): every operation goes to the file
    with Scratch("nor") as path:
        b = Board()
        b.flash = norflash.NORFlash(4096, 64, path=path, ram=False)
        b.boot()
        b.run(6 * 3600, step=300, head=Head())
        want = list(b.reboot_store().intervals())
        b.flash.close()
        b.flash = norflash.NORFlash(4096, 64, path=path, ram=False)  # power-up
        assert list(b.reboot_store().intervals()) == want and len(want) == 24
        ram = norflash.NORFlash(4096, 64, path=path)  # the same image, loaded into RAM
        buf = bytearray(64)
        buf2 = bytearray(64)
        for blk in range(64):
            ram.readblocks(blk, buf, 0)
            b.flash.readblocks(blk, buf2, 0)
            assert buf == buf2
        b.flash.close()
        ram.close()
