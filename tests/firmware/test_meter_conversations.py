# Meter core: the SPEC conversations (reads, schedules, events, registration,
# authentication). Runs on CPython (pytest) and MicroPython (mpy_runner.py).
from meter import events, wire
from meter_kit import DAY, KEY, MID, T0, Board, Head, events_of, intervals_of, sections


def _slot(i, start, period, offset, end=0, what=15, action=0):
    return {
        "slot": i,
        "action": action,
        "start": start,
        "end": end,
        "period_s": period,
        "offset_s": offset,
        "what": what,
    }


def test_m11_m12_default_daily_read_sends_previous_day():
    b = Board()
    b.boot()
    h = Head()
    b.run(2 * DAY + 2 * 3600, step=300, wh=(7, 1, 2, 0), head=h)
    day1 = [f for f in h.of("read_response") if f["timestamp"] == T0 + 2 * DAY + 3600]
    assert day1, "the 01:00 read of day 2"
    assert all(f["body"]["kind"] == 0 and f["body"]["request_seq"] == 0 for f in day1)
    assert [f["body"]["part"] for f in day1] == list(range(day1[0]["body"]["parts"]))
    iv = intervals_of(day1)
    assert [r[0] for r in iv] == [T0 + DAY + 900 * i for i in range(96)]
    assert all(r[3] == (21, 3, 6, 0) for r in iv)  # all channels
    mids = [s for f in day1 for s in sections(f, "midnight")]
    assert [m["day"] for m in mids] == [T0 + DAY, T0 + 2 * DAY]
    assert sections(day1[0], "clock")[0]["time"] == T0 + 2 * DAY + 3600
    assert day1[0]["meter_id"] == MID
    assert any(sections(f, "events") for f in day1)
    for f in day1:  # every part fits
        assert len(wire.encode(f, KEY)) <= wire.MAX_FRAME


def test_m19_default_read_time_is_remotely_programmable():
    b = Board()
    b.boot()
    h = Head()
    b.run(3600, head=h)
    ack = b.m.receive(h.frame("schedule_set", {"slots": [_slot(0, 0, DAY, 3 * 3600)]}, True), b.now)
    assert h.decode(ack[0])["body"] == {"acked_seq": h.seq, "status": 0}
    n = len(h.of("read_response"))
    b.run(DAY + 3 * 3600, step=60, head=h)
    stamps = [f["timestamp"] for f in h.of("read_response")[n:]]
    assert stamps[0] == T0 + 3 * 3600  # the next 03:00, today
    assert T0 + DAY + 3 * 3600 in stamps and T0 + DAY + 3600 not in stamps


def test_m11_schedules_persisted_acked_logged_and_at_least_4():
    b = Board()
    b.boot()
    h = Head()
    slots = [_slot(i, T0, 3600 * i, 0) for i in (1, 2, 3)]
    ack = h.decode(b.m.receive(h.frame("schedule_set", {"slots": slots}, True), b.now)[0])
    assert ack["type"] == "schedule_ack" and ack["body"]["status"] == 0
    st = b.reboot_store()
    assert [int.from_bytes(e[3], "big") for e in events_of(st, events.SCHEDULE_CHANGED)] == [
        1,
        2,
        3,
    ]
    b.boot()
    assert [s is not None for s in b.m.sched.slots] == [True] * 4
    # cancel one: acked and logged; slot 0 cannot be cancelled
    f = h.frame("schedule_set", {"slots": [_slot(2, 0, 0, 0, action=1)]}, True)
    assert h.decode(b.m.receive(f, b.now)[0])["body"]["status"] == 0
    assert b.m.sched.slots[2] is None
    f = h.frame("schedule_set", {"slots": [_slot(0, 0, 0, 0, action=1)]}, True)
    assert h.decode(b.m.receive(f, b.now)[0])["body"]["status"] == 7
    # a period shorter than the interval: nacked, nothing applied (not even slot 1)
    f = h.frame("schedule_set", {"slots": [_slot(1, T0, 7200, 0), _slot(3, T0, 60, 0)]}, True)
    assert h.decode(b.m.receive(f, b.now)[0])["body"]["status"] == 7
    assert b.m.sched.slots[1].period_s == 3600


def test_m14_non_default_first_from_midnight_then_since_previous():
    b = Board(now=T0 + 10 * 3600)
    b.boot()
    h = Head()
    b.run(600, head=h)
    f = h.frame("schedule_set", {"slots": [_slot(1, T0, 4 * 3600, 2 * 3600)]}, True)
    b.m.receive(f, b.now)
    b.run(12 * 3600, step=60, head=h)
    reads = [f for f in h.of("read_response") if f["timestamp"] % (4 * 3600) == 2 * 3600]
    first = intervals_of([f for f in reads if f["timestamp"] == T0 + 14 * 3600])
    assert first[0][0] == T0 + 10 * 3600  # recording began at 10:00; period from midnight
    assert first[-1][0] == T0 + 14 * 3600 - 900
    later = intervals_of([f for f in reads if f["timestamp"] == T0 + 18 * 3600])
    assert [r[0] for r in later] == [T0 + 14 * 3600 + 900 * i for i in range(16)]


def test_m15_failed_send_logged_next_read_covers_since_last_ack():
    b = Board()
    b.boot()
    h = Head()
    f = h.frame("schedule_set", {"slots": [_slot(1, T0, 3600, 0)]}, True)
    b.m.receive(f, b.now)
    b.run(2 * 3600, step=60, head=h)  # 01:00 and 02:00 reads acked
    h.ack_reads = False
    b.run(2 * 3600, step=60, head=h)  # 03:00 and 04:00 never acked
    st = b.reboot_store()
    assert events_of(st, events.READ_FAILED)
    h.ack_reads = True
    n = len(h.got)
    b.run(3600, step=60, head=h)  # 05:00
    got = intervals_of(h.got[n:])
    assert got[0][0] == T0 + 2 * 3600 and got[-1][0] == T0 + 5 * 3600 - 900
    # and after that, the next read is back to "since the previous one"
    n = len(h.got)
    b.run(3600, step=60, head=h)
    got = intervals_of(h.got[n:])
    assert got[0][0] == T0 + 5 * 3600 and len(got) == 4


def test_m15_link_down_read_waits_and_is_not_forgotten():
    b = Board()
    b.boot()
    h = Head()
    b.run(DAY + 2 * 3600, step=300, head=h, online=False)  # offline through two reads
    assert h.got == []
    assert events_of(b.reboot_store(), events.READ_FAILED)
    b.run(600, step=300, head=h)
    got = intervals_of(h.of("read_response"))
    assert got  # sent once the link is back
    b.run(DAY + 3600, step=300, head=h)
    iv = intervals_of(h.of("read_response"))
    assert got[0][0] == T0 and len(got) == 96
    assert set(T0 + 900 * i for i in range(192)) <= set(r[0] for r in iv)


def test_m13_on_demand_read_answers_current_state():
    b = Board(now=T0 + DAY)
    b.boot()
    h = Head()
    b.run(5 * 3600 + 300, step=60, head=h)
    req = h.frame("read_request", {"mode": 2, "start": 0, "end": 0, "what": 15})
    rs = [h.decode(r) for r in b.m.receive(req, b.now)]
    assert rs and all(r["body"]["request_seq"] == h.seq and r["body"]["kind"] == 1 for r in rs)
    for r in rs:
        b.m.receive(h.frame("read_ack", {"acked_seq": r["seq"], "upto": 0}), b.now)
    rs += [h.decode(r) for r in b.m.tick(b.now)]
    assert len(rs) == rs[0]["body"]["parts"]
    iv = intervals_of(rs)
    assert [r[0] for r in iv] == [T0 + DAY + 900 * i for i in range(20)]  # complete since midnight
    regs = sections(rs[0], "registers")[0]
    assert regs["at"] == b.now and regs["values"] == list(b.m.rec.totals())
    assert sections(rs[0], "clock")[0]["time"] == b.now
    assert any(sections(r, "events") for r in rs)
    assert b.m.reads == []  # all acked


def test_m16_unanswerable_request_is_nacked_and_logged():
    b = Board(now=T0 + 10 * DAY)
    b.boot()
    h = Head()
    b.run(3600, head=h)
    for body in (
        {"mode": 0, "start": T0, "end": T0 + DAY, "what": 15},  # before anything held
        {"mode": 0, "start": T0 + 20 * DAY, "end": T0 + 19 * DAY, "what": 15},  # empty
        {"mode": 9, "start": 0, "end": 0, "what": 15},  # unknown mode
    ):
        nack = h.decode(b.m.receive(h.frame("read_request", body, True), b.now)[0])
        assert nack["type"] == "nack" and nack["body"]["nacked_type"] == 7
        assert nack["body"]["nacked_seq"] == h.seq and nack["body"]["reason"] in (5, 7)
    assert len(events_of(b.reboot_store(), events.READ_UNANSWERABLE)) == 3


def test_m10_events_pushed_per_mask_retried_until_acked():
    b = Board()
    b.boot()
    h = Head(ack_events=False)
    b.run(600, head=h)
    b.m.tamper(b.now)
    b.run(3600, step=10, head=h)
    pushes = h.of("event")
    assert len(pushes) >= 3  # re-pushed while unacknowledged
    assert all(p["body"]["events"] == pushes[0]["body"]["events"] for p in pushes)
    assert any(e["code"] == events.TAMPER for e in pushes[0]["body"]["events"])
    h.ack_events = True
    b.run(2 * 3600, step=10, head=h)  # the next re-push (backoff up to an hour) is acked
    n = len(h.of("event"))
    b.run(3 * 3600, step=60, head=h)
    assert len(h.of("event")) == n  # acked: no more pushes
    # the mask is remotely settable: tamper no longer pushed, still logged
    f = h.frame("config_set", {"items": [{"key": 3, "value": 1 << events.POWER_UP}]}, True)
    assert h.decode(b.m.receive(f, b.now)[0])["body"]["status"] == 0
    b.m.tamper(b.now)
    b.run(600, step=10, head=h)
    assert len(h.of("event")) == n
    st = b.reboot_store()
    assert len(events_of(st, events.TAMPER)) == 2
    # every non-usage message sent is logged (event 16, data = type)
    sent = [int.from_bytes(e[3], "big") for e in events_of(st, 16)]
    assert 0x0A in sent and 0x04 in sent and 0x08 not in sent


def test_m10_unacked_pushes_survive_reboot():
    b = Board()
    b.boot()
    h = Head(ack_events=False)
    b.run(60, head=h)
    b.m.tamper(b.now, 7)
    b.run(60, head=h)
    b.boot()
    h2 = Head()
    b.run(60, head=h2)
    evs = [e for f in h2.of("event") for e in f["body"]["events"]]
    assert {"code": events.TAMPER, "time": T0 + 60, "data": 7} in evs
    # acked before the reboot: never pushed again
    b.boot()
    h3 = Head()
    b.run(60, head=h3)
    evs = [e for f in h3.of("event") for e in f["body"]["events"]]
    assert all(e["code"] != events.TAMPER for e in evs)


def test_m17_registers_on_first_boot_until_acked_and_after_reset():
    b = Board()
    b.boot()
    h = Head(ack_register=False)
    b.run(600, step=10, head=h)
    regs = h.of("register")
    assert len(regs) >= 3  # repeated with backoff
    body = regs[0]["body"]
    assert body["interval_s"] == 900 and body["capacity_days"] >= 45
    assert [c["kind"] for c in body["channels"]] == [1, 2, 3, 4]
    assert [c["unit"] for c in body["channels"]] == [1, 1, 2, 2]
    assert body["fw_version"] and body["meter_multiplier"] == 1
    assert regs[0]["meter_id"] == MID and regs[0]["timestamp"] == T0 + 10  # first tick
    h.ack_register = True
    b.run(3600, step=10, head=h)
    n = len(h.of("register"))
    b.run(3600, step=10, head=h)
    assert len(h.of("register")) == n
    b.boot()  # registered is persisted: a reboot does not register again
    b.run(600, step=10, head=h)
    assert len(h.of("register")) == n
    f = h.frame("config_set", {"items": [{"key": 5, "value": 1}]}, True)
    b.m.receive(f, b.now)
    b.run(60, step=10, head=h)
    assert len(h.of("register")) == n + 1


def test_m20_forged_and_replayed_commands_nacked_logged_nothing_applied():
    b = Board()
    b.boot()
    h = Head()
    b.run(600, head=h)
    bad = Head(key=b"\x55" * 32)
    for f, reason in (
        (bad.frame("config_set", {"items": [{"key": 3, "value": 2}]}), 3),
        (h.frame("config_set", {"items": [{"key": 3, "value": 2}]}, False), 3),  # unsigned
        (h.frame("event_ack", {"acked_seq": 1}, False), 3),  # acks too
        (h.frame("read_ack", {"acked_seq": 1, "upto": 0}, False), 3),
        (h.frame("register_ack", {"status": 0}, False), 3),
        (bad.frame("read_request", {"mode": 2, "start": 0, "end": 0, "what": 15}), 3),
        (bad.frame("schedule_set", {"slots": [_slot(1, T0, 3600, 0)]}), 3),
        (bad.frame("time_set", {"utc_ms": 0}), 3),
    ):
        b.now += 60  # refused input is answered once a minute
        r = h.decode(b.m.receive(f, b.now)[0])
        assert r["type"] == "nack" and r["body"]["reason"] == reason
    assert b.m.push_mask == events.DEFAULT_PUSH_MASK and b.m.sched.slots[1] is None
    assert b.steps == []
    good = h.frame("config_set", {"items": [{"key": 4, "value": 3}]})
    assert h.decode(b.m.receive(good, b.now)[0])["type"] == "config_ack"
    b.now += 60
    replay = h.decode(b.m.receive(good, b.now)[0])
    assert replay["type"] == "nack" and replay["body"]["reason"] == 4
    b.now += 60
    old = h.frame("config_set", {"items": [{"key": 4, "value": 9}]}, counter=1)
    assert h.decode(b.m.receive(old, b.now)[0])["body"]["reason"] == 4
    assert b.m.multiplier == 3
    assert len(events_of(b.reboot_store(), events.AUTH_FAILED)) == 10
    # the counter is persisted: after a reboot the old frame is still a replay
    b.boot()
    assert h.decode(b.m.receive(good, b.now)[0])["body"]["reason"] == 4
    assert b.m.multiplier == 3


def test_m20_a_flood_of_refused_frames_costs_no_flash_and_one_answer_a_minute():
    b = Board()
    b.boot()
    h = Head()
    b.run(600, head=h)
    bad = Head(key=b"\x55" * 32)
    good = h.frame("event_ack", {"acked_seq": 1})
    b.m.receive(good, b.now)
    forged = bad.frame("config_set", {"items": [{"key": 4, "value": 1000}]})
    torn = bytearray(good)
    torn[-1] ^= 0xFF
    writes = b.flash.ops
    answers = []
    for i in range(600):  # 10 frames a second for a minute
        raw = (forged, good, bytes(torn))[i % 3]
        answers += b.m.receive(raw, b.now + i // 10)
    assert len(answers) == 1 and h.decode(answers[0])["body"]["reason"] == 3
    # one event 13 and one message_sent (+ the nack's counter ceiling at most)
    assert b.flash.ops - writes <= 3
    assert b.m.multiplier == 1
    assert len(events_of(b.reboot_store(), events.AUTH_FAILED)) == 1
    answers = b.m.receive(forged, b.now + 60)  # the next minute: answered again
    assert h.decode(answers[0])["body"]["reason"] == 3


def test_m20_every_field_checked_before_anything_is_persisted():
    b = Board()
    b.boot()
    h = Head()
    b.run(600, head=h)
    ops = b.flash.ops
    last = b.m.last_counter
    for mtype, body, reply in (
        # 2**32 s is past every u32 timestamp: refused, the clock stays
        ("time_set", {"utc_ms": (1 << 32) * 1000}, "nack"),
        ("time_set", {"utc_ms": (1 << 64) - 1}, "nack"),
        ("config_set", {"items": [{"key": 4, "value": 2}, {"key": 1, "value": 700}]}, "config_ack"),
        ("config_set", {"items": [{"key": 2, "value": 30}]}, "config_ack"),
        ("config_set", {"items": [{"key": 99, "value": 0}]}, "config_ack"),
        ("schedule_set", {"slots": [_slot(1, T0, 3600, 0), _slot(9, T0, 3600, 0)]}, "schedule_ack"),
        ("schedule_set", {"slots": [_slot(2, T0, 3600, 0, what=15, action=7)]}, "schedule_ack"),
        ("key_set", {"version": 0, "wrapped": bytes(32)}, "key_ack"),
    ):
        if mtype == "key_set":
            b.m.key_version = 3  # a lower version than held is refused
        r = h.decode(b.m.receive(h.frame(mtype, body), b.now)[0])
        b.m.key_version = 0
        assert r["type"] == reply, (mtype, body)
        assert r["body"].get("reason", r["body"].get("status")) == 7, (mtype, body)
    # nothing changed, on flash or in RAM: not even the counter (only the
    # replies' message_sent events and the uplink counter ceiling were written)
    assert b.m.last_counter == last
    assert b.m.multiplier == 1 and b.m.interval_s == 900 and b.m.utc_offset_s == 0
    assert b.m.sched.slots[1] is None and b.steps == []
    st = b.reboot_store()
    assert events_of(st, events.CONFIG_CHANGED) == [] == events_of(st, events.CLOCK_ADJUSTED)
    assert len(events_of(st, 16)) >= 8 and b.flash.ops - ops < 40  # 16: message_sent
    b.boot()
    assert b.m.last_counter == last and b.m.key_version == 0
    b.run(3600, head=h)  # and records on
    assert b.m.store.last_interval()[0] == T0 + 2700  # [T0 + 2700, T0 + 3600) closed


def test_m20_other_meters_and_noise_are_ignored_or_nacked():
    b = Board()
    b.boot()
    h = Head()
    other = h.frame("read_request", {"mode": 2, "start": 0, "end": 0, "what": 15}, meter_id=1)
    assert b.m.receive(other, b.now) == []
    assert b.m.receive(b"\x7e\x00garbage", b.now) == []
    f = bytearray(h.frame("event_ack", {"acked_seq": 1}))
    f[-1] ^= 0xFF
    r = h.decode(b.m.receive(bytes(f), b.now)[0])
    assert r["type"] == "nack" and r["body"]["reason"] == 1


def test_m20_every_uplink_signed_with_a_fresh_counter_repeats_too():
    b = Board()
    b.boot()
    h = Head(ack_reads=False, ack_events=False)
    b.run(2 * DAY, step=300, head=h)  # reads and events repeated, never acked
    assert KEY not in b"".join(wire.encode(g, KEY) for g in h.got)  # never sent
    assert all(g["auth"] is not None for g in h.got)  # h.decode verified each MAC
    assert h.counters == sorted(set(h.counters))  # strictly increasing: none reused
    seqs = [g["seq"] for g in h.of("read_response")]
    assert len(seqs) > len(set(seqs))  # repeats keep their seq, with a new counter
    # a restart continues above every counter used (the persisted ceiling)
    top = h.counters[-1]
    b.boot()
    b.run(600, head=h)
    assert h.counters[-1] > top and h.counters == sorted(set(h.counters))


def test_m13_m20_conversations_hold_across_cold_module_drops():
    # the app forgets the codec, auth and read modules at every idle tick
    # (meter.drop_cold, firmware README "Heap"): each frame re-imports them.
    # The modules the other tests imported are put back afterwards (a fresh
    # meter.errors would hold other classes than the ones they catch).
    import sys

    import meter as pkg

    saved = {n: m for n, m in sys.modules.items() if n.startswith("meter.")}
    try:
        _conversations_across_drops()
    finally:
        for name, mod in saved.items():
            sys.modules[name] = mod
            setattr(pkg, name[len("meter.") :], mod)


def _conversations_across_drops():
    import sys

    from meter import meter as core

    b = Board(now=T0 + DAY)
    b.boot()
    h = Head()
    b.run(3 * 3600, step=300, head=h)
    core.drop_cold()
    assert not [n for n in ("meter.wire", "meter.reads", "meter.errors") if n in sys.modules]
    req = h.frame("read_request", {"mode": 2, "start": 0, "end": 0, "what": 15})
    rs = [h.decode(r) for r in b.m.receive(req, b.now)]
    assert rs and rs[0]["type"] == "read_response" and "meter.wire" in sys.modules
    core.drop_cold()
    for r in rs:
        b.m.receive(h.frame("read_ack", {"acked_seq": r["seq"], "upto": 0}), b.now)
        core.drop_cold()
    rs += [h.decode(r) for r in b.m.tick(b.now)]
    assert len(rs) == rs[0]["body"]["parts"] and b.m.reads == []
    assert [r[0] for r in intervals_of(rs)] == [T0 + DAY + 900 * i for i in range(12)]
    core.drop_cold()
    body = {"mode": 2, "start": 0, "end": 0, "what": 15}
    bad = Head(key=b"\x55" * 32).frame("read_request", body)
    nack = h.decode(b.m.receive(bad, b.now)[0])
    assert nack["type"] == "nack" and nack["body"]["reason"] == 3  # auth_failed, not a crash
    core.drop_cold()
    ok = h.frame("read_request", body)
    torn = ok[:-1] + bytes([ok[-1] ^ 0xFF])  # a decode error raised by a re-imported codec
    nack = h.decode(b.m.receive(torn, b.now + 60)[0])
    assert nack["type"] == "nack" and nack["body"]["reason"] == 1  # bad_crc


K1 = bytes(range(64, 96))  # the rotated key (version 1)


def test_m20_key_rotation_dance():
    b = Board()
    b.boot()
    h = Head()
    b.run(600, head=h)
    ack = h.decode(b.m.receive(h.rotate(1, K1), b.now)[0])  # key_set signed with KEY
    # key_ack signed with the new key: h.decode tried K1 first, so it is confirmed
    assert ack["type"] == "key_ack" and ack["body"]["version"] == 1 and ack["body"]["status"] == 0
    assert h.old_key is None and b.m.key == K1 and b.m.key_version == 1
    # until a downlink under the new key arrives the old one is still accepted
    assert b.m.receive(h.frame("event_ack", {"acked_seq": 0}, key=KEY), b.now) == []
    assert b.m.old_key == KEY
    b.boot()  # (kept across a restart)
    assert b.m.key == K1 and b.m.old_key == KEY
    # a repeated key_set (the head-end missed the ack) is acked again, under K1
    again = h.frame("key_set", {"version": 1, "wrapped": bytes(32)}, key=KEY)
    ack = h.decode(b.m.receive(again, b.now)[0])
    assert ack["type"] == "key_ack" and ack["body"]["acked_seq"] == h.seq
    assert ack["body"]["version"] == 1 and ack["body"]["status"] == 0
    assert b.m.key == K1
    # the first downlink under K1 ends the old key's life, for good
    assert b.m.receive(h.frame("event_ack", {"acked_seq": 0}), b.now) == []
    assert b.m.old_key is None
    b.boot()
    assert b.m.key == K1 and b.m.key_version == 1 and b.m.old_key is None
    b.now += 60
    nack = h.decode(b.m.receive(h.frame("event_ack", {"acked_seq": 0}, key=KEY), b.now)[0])
    assert nack["type"] == "nack" and nack["body"]["reason"] == 3
    # an older version than held is refused; nothing changes
    b.now += 60
    old = h.frame("key_set", {"version": 0, "wrapped": bytes(32)})
    ack = h.decode(b.m.receive(old, b.now)[0])
    assert ack["type"] == "key_ack" and ack["body"]["status"] == 7 and ack["body"]["version"] == 1
    assert b.m.key == K1
    # uplinks go on under K1 (h.decode verifies with it), and a second rotation works
    b.run(3600, head=h)
    k2 = bytes(range(200, 232))
    ack = h.decode(b.m.receive(h.rotate(2, k2), b.now)[0])
    assert ack["body"]["version"] == 2 and b.m.key == k2 and b.m.old_key == K1
