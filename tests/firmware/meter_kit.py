# Shared helpers of the test_meter_*.py files (CPython and MicroPython). The
# meter on a NOR-flash model with a fake RTC and the head-end that speaks the
# firmware's codec live in firmware/hal/hostkit.py (the benchmarks use them
# too); tests/test_firmware_app.py plays the head-end with protocol.frame instead.
from hal.hostkit import DAY, KEY, MID, T0, Board, Head  # noqa: F401


def sections(f, tag):
    return [s["body"] for s in f["body"]["sections"] if s["tag"] == tag]


def intervals_of(frames):
    """(start, interval_s, flags, values) of every interval in read_response frames."""
    out = []
    for f in frames:
        if f["type"] != "read_response":
            continue
        for b in sections(f, "intervals"):
            for i in range(len(b["flags"])):
                vals = tuple(ch[i] for ch in b["channels"])
                out.append((b["start"] + i * b["interval_s"], b["interval_s"], b["flags"][i], vals))
    return out


def events_of(st, code=None):
    return [e for e in st.events() if code is None or e[2] == code]


def raises(exc, fn, *args):
    try:
        fn(*args)
    except exc as e:
        return e
    raise AssertionError("%s not raised" % exc.__name__)
