# Store and NOR-flash model tests: run on CPython (pytest) and on MicroPython
# (tests/firmware/mpy_runner.py). Plain functions, plain asserts, no pytest import.
from hal import norflash
from meter import store, wear
from scratch import Scratch

T0 = 1767225600  # 2026-01-01T00:00:00Z
DAY = 86400


def _raises(exc, fn, *args):
    try:
        fn(*args)
    except exc as e:
        return e
    raise AssertionError("%s not raised" % exc.__name__)


def _small(blocks=16, bs=1024, interval_blocks=8, event_blocks=4, config_blocks=3):
    f = norflash.NORFlash(bs, blocks)
    s = store.Store(f, 0, interval_blocks, event_blocks, config_blocks)
    return f, s.mount()


def _re(f, s):
    """Reboot: a new Store on the same flash, same layout, mounted."""
    return store.Store(f, 0, *s.blocks).mount()


def _vals(i):
    return (i * 7 % 5000, i % 3, i * 13 % 900, 0)


# --- NOR flash model -----------------------------------------------------------------
def test_m02_norflash_block_device_protocol():
    f = norflash.NORFlash(4096, 8)
    assert f.ioctl(4, 0) == 8
    assert f.ioctl(5, 0) == 4096
    assert f.ioctl(1, 0) == 0 and f.ioctl(3, 0) == 0
    assert f.ioctl(99, 0) is None
    f.writeblocks(2, b"\x12\x34", 10)
    buf = bytearray(4)
    f.readblocks(2, buf, 9)
    assert buf == bytearray(b"\xff\x12\x34\xff")
    assert f.ioctl(6, 2) == 0
    f.readblocks(2, buf, 9)
    assert buf == bytearray(b"\xff\xff\xff\xff")
    assert f.erase_counts[2] == 1 and f.erases == 1
    # simple interface: whole blocks, erased first
    f.writeblocks(3, b"\x00" * 4096)
    f.writeblocks(3, b"\x55" * 4096)
    f.readblocks(3, buf, 0)
    assert buf == bytearray(b"\x55" * 4)
    assert f.erase_counts[3] == 2


def test_m02_norflash_program_only_clears_bits():
    f = norflash.NORFlash(4096, 2)
    f.writeblocks(0, b"\xf0", 0)
    f.writeblocks(0, b"\x30", 0)  # clears more bits: fine
    e = _raises(norflash.NotErased, f.writeblocks, 0, b"\x0f", 0)
    assert "block 0 offset 0: old 0x30 new 0x0f" in str(e)  # says where and which bits
    buf = bytearray(1)
    f.readblocks(0, buf, 0)
    assert buf[0] == 0x30  # the refused write changed nothing


def test_m02_norflash_power_cut_lands_prefix_then_dead_until_reboot():
    f = norflash.NORFlash(4096, 2, partial=False)
    f.cut_after(3)
    _raises(norflash.PowerCut, f.writeblocks, 0, b"\x01\x02\x03\x04\x05", 0)
    _raises(norflash.PowerCut, f.readblocks, 0, bytearray(1), 0)
    _raises(norflash.PowerCut, f.ioctl, 6, 0)
    f.reboot()
    buf = bytearray(5)
    f.readblocks(0, buf, 0)
    assert buf == bytearray(b"\x01\x02\x03\xff\xff")
    # a cut in the middle of an erase: prefix erased, the rest keeps old bits
    f.writeblocks(1, b"\x00" * 4096, 0)
    f.cut_at_op(f.ops, 100)
    _raises(norflash.PowerCut, f.ioctl, 6, 1)
    f.reboot()
    big = bytearray(4096)
    f.readblocks(1, big, 0)
    assert big[:100] == bytearray(b"\xff" * 100) and big[100:] == bytearray(4096 - 100)
    assert f.erase_counts[1] == 1


def test_m02_norflash_partial_byte_only_clears_some_bits():
    f = norflash.NORFlash(1024, 2, partial=True, seed=7)
    f.cut_at_op(0, 2)
    _raises(norflash.PowerCut, f.writeblocks, 0, b"\x00\x00\x00\x00", 0)
    f.reboot()
    buf = bytearray(4)
    f.readblocks(0, buf, 0)
    assert buf[0] == 0 and buf[1] == 0 and buf[3] == 0xFF


def test_m02_norflash_file_backing_persists_image_and_erase_counts():
    with Scratch("store") as path:
        f = norflash.NORFlash(1024, 4, path=path)
        f.ioctl(6, 1)
        f.writeblocks(1, b"\xab\xcd", 5)
        f.close()
        g = norflash.NORFlash(1024, 4, path=path)
        buf = bytearray(2)
        g.readblocks(1, buf, 5)
        assert buf == bytearray(b"\xab\xcd")
        assert g.erase_counts == [0, 1, 0, 0]
        g.close()


# --- intervals -------------------------------------------------------------------
def test_m02_layout_fits_256_kib_at_5_min():
    ib, eb, cb = store.layout(4096)
    assert wear.footprint(4096) == (ib + eb + cb) * 4096 <= 256 * 1024
    f = norflash.NORFlash(4096, 64)
    s = store.Store(f).mount()
    iv_slots = s.capacity()[0]
    assert iv_slots >= 45 * 288 + 2 * 45  # M02: 45 days at 5 minutes + a 2-slot read a day


def test_m02_append_and_read_back_intervals():
    f, s = _small()
    assert s.last_interval() is None
    for i in range(100):
        s.append_interval(T0 + 900 * i, 900, i % 32, _vals(i))
    got = list(s.intervals())
    assert len(got) == 100
    for i in range(100):
        assert got[i] == (T0 + 900 * i, 900, i % 32, _vals(i))
    assert list(s.intervals(T0 + 900 * 10, T0 + 900 * 12)) == got[10:12]
    assert s.last_interval() == got[-1]
    s2 = _re(f, s)
    assert list(s2.intervals()) == got
    assert s2.last_interval() == got[-1]


def test_m02_wide_records_for_big_values_odd_lengths_and_flags():
    f, s = _small()
    recs = [
        (T0, 300, 0, (65535, 0, 0, 0)),
        (T0 + 300, 300, 0, (65536, 1, 2, 3)),
        (T0 + 600, 137, 4, (1, 2, 3, 4)),
        (T0 + 737, 900, 200, (0, 0, 0, 0xFFFFFFFF)),
        (T0 + 1637, 3600, 31, (9, 9, 9, 9)),
    ]
    for r in recs:
        s.append_interval(*r)
    assert list(s.intervals()) == recs
    assert list(_re(f, s).intervals()) == recs


def test_m05_integers_only_and_ranges_checked():
    f, s = _small()
    _raises(TypeError, s.append_interval, T0, 900, 0, (1.0, 0, 0, 0))
    _raises(TypeError, s.append_interval, float(T0), 900, 0, (1, 0, 0, 0))
    _raises(ValueError, s.append_interval, T0, 900, 0, (-1, 0, 0, 0))
    _raises(ValueError, s.append_interval, T0, 900, 256, (1, 0, 0, 0))
    _raises(ValueError, s.append_interval, T0, 900, 0, (1, 0, 0))
    _raises(ValueError, s.append_interval, T0, 0, 0, (1, 0, 0, 0))
    assert list(s.intervals()) == []
    _raises(ValueError, store.Store(f, 0, 8, 4, 3).append_interval, T0, 900, 0, (1, 0, 0, 0))


def _retained_days(interval_s, extra_days):
    f = norflash.NORFlash(4096, 64)
    s = store.Store(f).mount()
    n = (45 + extra_days) * DAY // interval_s
    for i in range(n):
        s.append_interval(T0 + interval_s * i, interval_s, 0, (i % 60000, 1, 2, 3))
        if i % (DAY // interval_s) == 0:
            s.append_register_read(T0 + interval_s * i, s.registers())
    s = store.Store(f).mount()
    first = None
    count = 0
    for t, ilen, flags, vals in s.intervals():
        if first is None:
            first = t
            i0 = (t - T0) // interval_s
        assert vals == ((i0 + count) % 60000, 1, 2, 3)
        count += 1
    assert first + interval_s * (count - 1) == T0 + interval_s * (n - 1)  # newest kept
    return count * interval_s / DAY, f


def test_m02_keeps_45_days_at_5_min_and_overwrites_oldest():
    days, f = _retained_days(300, 5)
    assert days >= 45, days
    assert days < 50  # the oldest were overwritten
    assert max(f.erase_counts[:54]) >= 2


def test_m02_keeps_45_days_at_every_interval_length():
    for ilen in (600, 900, 1800, 3600):
        days, _ = _retained_days(ilen, 1)
        assert days >= 45, (ilen, days)


def test_m02_torn_interval_at_every_byte_is_ignored_older_kept():
    for cut in range(16):
        f, s = _small()
        for i in range(20):
            s.append_interval(T0 + 300 * i, 300, 0, _vals(i))
        f.cut_at_op(f.ops, cut)  # the byte at the cut is half-programmed
        _raises(norflash.PowerCut, s.append_interval, T0 + 300 * 20, 300, 0, _vals(20))
        f.reboot()
        s = _re(f, s)
        got = list(s.intervals())
        want = [(T0 + 300 * i, 300, 0, _vals(i)) for i in range(21)]
        if len(got) == 21:  # only if the last byte's bits all landed
            assert cut == 15 and got == want
        else:
            assert got == want[:20], cut
        s.append_interval(T0 + 300 * 21, 300, 0, _vals(21))
        assert list(_re(f, s).intervals())[-1][0] == T0 + 300 * 21


def test_m02_cut_while_reusing_oldest_block_loses_only_oldest():
    f, s = _small(blocks=12, bs=1024, interval_blocks=4)
    per = s.capacity()[0] // 3  # record slots per block: 3 of the 4 blocks are kept
    n = 4 * per  # fills 4 blocks; the next append reuses the oldest
    for i in range(n):
        s.append_interval(T0 + 300 * i, 300, 0, _vals(i))
    for op in range(3):  # invalidate, erase, header
        g = norflash.NORFlash(1024, 12)
        g.data[:] = f.data
        g.cut_at_op(op, 1)
        s = store.Store(g, 0, 4, 4, 3).mount()
        try:
            s.append_interval(T0 + 300 * n, 300, 0, _vals(n))
        except norflash.PowerCut:
            pass
        g.reboot()
        got = list(store.Store(g, 0, 4, 4, 3).mount().intervals())
        assert len(got) >= 3 * per
        assert got[-1][0] == T0 + 300 * (n - 1)
        first = (got[0][0] - T0) // 300
        assert got == [(T0 + 300 * i, 300, 0, _vals(i)) for i in range(first, n)]


def test_m02_mount_reads_are_bounded():
    class Counting:
        def __init__(self, f):
            self.f = f
            self.reads = 0

        def readblocks(self, b, buf, off=0):
            self.reads += 1
            self.f.readblocks(b, buf, off)

        def writeblocks(self, b, buf, off=None):
            self.f.writeblocks(b, buf, off)

        def ioctl(self, op, arg):
            return self.f.ioctl(op, arg)

    f = norflash.NORFlash(4096, 64)
    s = store.Store(f).mount()
    for i in range(3000):
        s.append_interval(T0 + 300 * i, 300, 0, _vals(i))
    c = Counting(f)
    store.Store(c).mount()
    # one header per block + a 256-byte window per 16 slots of each head block
    # + every config block
    assert c.reads <= 64 + 3 * 17 + 4 * 17, c.reads


# --- registers ---------------------------------------------------------------------
def test_m05_registers_survive_reboot_and_power_cut():
    f, s = _small(blocks=16, bs=1024, interval_blocks=4)
    tot = [0, 0, 0, 0]
    for i in range(400):  # wraps the 4-block ring several times
        v = _vals(i)[:3] + (0xFFFFFFFF,)  # channel 3 passes 2**32: registers are exact
        s.append_interval(T0 + 300 * i, 300, 0, v)
        for c in range(4):
            tot[c] += v[c]
    assert s.registers() == tuple(tot)
    assert _re(f, s).registers() == tuple(tot)
    f.cut_at_op(f.ops, 5)
    try:
        s.append_interval(T0 + 300 * 400, 300, 0, (5, 5, 5, 5))
    except norflash.PowerCut:
        pass
    f.reboot()
    s = _re(f, s)
    assert s.registers() == tuple(tot)  # the interval in progress is lost, nothing else


def test_m03_register_reads_are_stored():
    f, s = _small()
    s.append_interval(T0, 900, 0, (5, 0, 1, 0))
    s.append_register_read(T0 + DAY, s.registers())
    s.append_interval(T0 + 900, 900, 0, (5, 0, 1, 0))
    s = _re(f, s)
    assert list(s.register_reads()) == [(T0 + DAY, (5, 0, 1, 0))]
    assert s.registers() == (10, 0, 2, 0)
    assert [r[0] for r in s.intervals()] == [T0, T0 + 900]


# --- events and config ----------------------------------------------------------------
def test_m10_event_log_sequence_survives_and_wraps():
    f, s = _small(blocks=16, bs=1024, event_blocks=3)
    for i in range(1, 301):
        assert s.append_event(i % 7, T0 + i, b"d%d" % i) == i
    s = _re(f, s)
    assert s.next_event_seq() == 301
    ev = list(s.events())
    assert ev[-1] == (300, T0 + 300, 300 % 7, b"d300")
    assert [e[0] for e in ev] == list(range(ev[0][0], 301))
    assert len(ev) >= 2 * 61 // 2  # two full blocks of 2-slot events kept
    assert [e[0] for e in s.events(290)] == list(range(290, 301))
    assert s.append_event(1, T0, b"") == 301


def test_m11_config_slots_persist_last_write_wins_with_wear_levelling():
    f, s = _small(blocks=16, bs=1024, config_blocks=3)
    s.put_config(1, b"interval=900")
    for slot in range(4):
        s.put_config(10 + slot, b"schedule %d" % slot)
    for i in range(500):
        s.put_config(2, b"last-ack %d" % i)
    s = _re(f, s)
    assert s.get_config(1) == b"interval=900"
    assert s.get_config(2) == b"last-ack 499"
    assert s.get_config(13) == b"schedule 3"
    assert s.get_config(99) is None and s.get_config(99, b"d") == b"d"
    ib, eb, cb = s.blocks
    cfg = f.erase_counts[ib + eb : ib + eb + cb]
    assert min(cfg) >= 5 and max(cfg) - min(cfg) <= 1, cfg  # round robin
    _raises(ValueError, s.put_config, 3, b"x" * 252)


def test_m02_wear_estimate_meets_20_years():
    est = wear.wear_estimate()
    assert est["years_to_limit"] >= 20
    assert wear.wear_years(10, 365) == 10000
