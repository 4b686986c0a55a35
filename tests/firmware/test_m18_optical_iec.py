# The optical port's IEC 62056-21 side (M18; SPEC "Optical port"): sign-on,
# identification, option select, the mode C readout with its BCC, the switch
# to binary mode, timeouts and bad input (meter/optical.py). Sans-IO: bytes and a ms tick in,
# bytes and a baud rate out. Runs on CPython (pytest) and MicroPython.
from meter import optical
from meter import timeutil as tu
from meter_kit import DAY, MID, T0, Board, Head

IDENT = b"/AMI6\\2%d\r\n" % MID


def _meter(days=2):
    b = Board()
    b.boot()
    b.run(days * DAY, step=900, wh=(7, 1, 2, 0), head=Head(keep=False))
    return b


IDLE, OPTION, BINARY = 0, 1, 2  # a link's state, optical.py


def _feed(st, b, data, ms):
    return optical.feed(st, data, ms, b.m, b.now)


def _expire(st, b, ms):
    """The timeout check the app runs when no byte came: True if it went idle."""
    was = st[0]
    assert _feed(st, b, None, ms) == (None, 0)
    return was != st[0]


def _bcc(block):
    x = 0
    for c in block[1:-1]:
        x ^= c
    return x


def _sets(block):
    # {OBIS: value} of a readout block: STX lines "!" CR LF ETX BCC
    text = bytes(block[1:-2]).decode()
    assert text.endswith("!\r\n"), text[-8:]
    out = {}
    for line in text[:-3].split("\r\n"):
        if line:
            code, rest = line.split("(", 1)
            assert rest.endswith(")"), line
            out[code] = rest[:-1]
    return out


def test_m18_sign_on_any_or_own_address_is_identified():
    b = _meter(0)
    for msg in (b"/?!\r\n", b"/?%d!\r\n" % MID, b"/?000%d!\r\n" % MID):
        st = optical.new()
        out, rate = _feed(st, b, msg, 0)
        assert (bytes(out), rate) == (IDENT, 0), msg
        assert st[0] == OPTION


def test_m18_other_address_or_broken_sign_on_gets_no_answer():
    b = _meter(0)
    for msg in (b"/?4712!\r\n", b"/?12a!\r\n", b"/!\r\n", b"/?!\n", b"/X!\r\n", b"hello\r\n"):
        st = optical.new()
        assert _feed(st, b, msg, 0) == (None, 0), msg
        assert st[0] == IDLE and st[1] == 0, msg


def test_m18_noise_before_a_sign_on_and_any_chunking():
    b = _meter(0)
    st = optical.new()
    assert _feed(st, b, b"\x00\xff noise", 0) == (None, 0)
    out, _ = _feed(st, b, b"/?!\r\n", 10)
    assert bytes(out) == IDENT
    st = optical.new()
    got = [_feed(st, b, bytes([c]), i)[0] for i, c in enumerate(b"\x15/?!\r\n")]
    assert [bytes(g) for g in got if g] == [IDENT]


def test_m18_readout_holds_the_registers_midnight_clock_and_a_correct_bcc():
    b = _meter(2)
    b.m.tick(b.now + 3723)  # 01:02:03
    b.now += 3723
    st = optical.new()
    _feed(st, b, b"/?!\r\n", 0)
    block, rate = _feed(st, b, b"\x06050\r\n", 300)
    assert rate == 9600 and st[0] == IDLE  # the port returns to 300 baud idle
    assert block[0] == 0x02 and block[-2] == 0x03 and block[-1] == _bcc(block)
    sets = _sets(block)
    assert sets["0.0.0"] == sets["C.1.0"] == str(MID)
    y, mo, d, hh, mi, ss = tu.civil(b.now)
    assert sets["0.9.1"] == "%02d:%02d:%02d" % (hh, mi, ss) == "01:02:03"
    assert sets["0.9.2"] == "%02d%02d%02d" % (y % 100, mo, d)
    regs = b.m.rec.totals()
    want = ("Wh", "Wh", "varh", "varh")
    for k in range(4):
        assert sets["%d.8.0" % (k + 1)] == "%08d*%s" % (regs[k], want[k])
    mids = list(b.m.store.register_reads())
    last = mids[-1][1]
    assert mids[-1][0] == T0 + 2 * DAY
    for k in range(4):
        assert sets["%d.8.0*01" % (k + 1)] == "%08d*%s" % (last[k], want[k])
    assert sets["F.F"] == "00000000"  # registered, clock in sync
    assert sets["0.2.0"] == b.m.fw_version


def test_m18_readout_time_is_local_standard_time_and_status_flags():
    b = Board(utc_offset_min=120)
    b.boot()
    st = optical.new()
    _feed(st, b, b"/?!\r\n", 0)
    sets = _sets(_feed(st, b, b"\x06000\r\n", 10)[0])
    assert sets["0.9.1"] == "02:00:00"
    assert "1.8.0*01" not in sets  # no midnight read yet
    assert int(sets["F.F"], 16) & 2  # not registered with the head-end yet


def test_m18_every_baud_char_and_the_binary_switch():
    b = _meter(0)
    for z in range(7):
        st = optical.new()
        _feed(st, b, b"/?!\r\n", 0)
        out, rate = _feed(st, b, b"\x060%d0\r\n" % z, 10)
        assert out and rate == 300 << z
    st = optical.new()
    _feed(st, b, b"/?!\r\n", 0)
    assert _feed(st, b, b"\x06262\r\n", 10) == (None, 19200)
    assert st[0] == BINARY
    assert _feed(st, b, b"\x7e\x01\x7e", 20) == (None, 0)  # HDLC: not IEC's
    assert st[0] == BINARY


def test_m18_unsupported_options_get_no_answer_and_return_to_idle():
    b = _meter(0)
    for opt in (
        b"\x06070\r\n",
        b"\x06051\r\n",
        b"\x06151\r\n",
        b"\x06252\r\n"[:4] + b"0\r\n",
        b"\x0605\r\n",
        b"\x1505\r\n",
        b"x",
    ):
        st = optical.new()
        _feed(st, b, b"/?!\r\n", 0)
        assert _feed(st, b, opt, 10) == (None, 0), opt
        assert st[0] == IDLE, opt
        out, _ = _feed(st, b, b"/?!\r\n", 20)  # and a sign-on works again
        assert bytes(out) == IDENT


def test_m18_timeouts_return_to_idle():
    b = _meter(0)
    # inter-character: a sign-on split by more than 1500 ms is not one
    st = optical.new()
    assert _feed(st, b, b"/?", 0) == (None, 0)
    assert _feed(st, b, b"!\r\n", 1501) == (None, 0)
    assert st[0] == IDLE
    # the option select must come within 1500 ms of the identification
    st = optical.new()
    _feed(st, b, b"/?!\r\n", 0)
    st[2] = 700  # the app wrote the identification
    assert not _expire(st, b, 2200)
    assert _feed(st, b, b"\x06050\r\n", 2201) == (None, 0)
    assert st[0] == IDLE
    # binary mode ends after 5 s without a byte
    st = optical.new()
    _feed(st, b, b"/?!\r\n", 0)
    _feed(st, b, b"\x06262\r\n", 10)
    assert not _expire(st, b, 5010)
    assert _expire(st, b, 5011) and st[0] == IDLE
    # the ms tick wraps (2**30): no spurious timeout across the wrap
    st = optical.new()
    _feed(st, b, b"/?!\r\n", 0x3FFFFF00)
    assert not _expire(st, b, 0x10)
    assert _expire(st, b, 0x10 + 1500)


def test_m18_overlong_input_is_dropped_and_the_port_recovers():
    b = _meter(0)
    st = optical.new()
    assert _feed(st, b, b"/?" + b"1" * 100 + b"!\r\n", 0) == (None, 0)
    assert st[0] == IDLE
    out, _ = _feed(st, b, b"/?!\r\n", 10)
    assert bytes(out) == IDENT
    for n in range(0, 256, 7):  # every byte value, in any state: no exception
        st = optical.new()
        _feed(st, b, bytes(range(n, min(256, n + 40))), 0)
        _feed(st, b, b"/?!\r\n" + bytes(range(n, min(256, n + 40))), 10)
