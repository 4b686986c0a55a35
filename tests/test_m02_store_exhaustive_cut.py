"""M02/M05: cut the power at every single flash operation of a 3-day run.

The run: 3 days of 15-minute intervals on 4 channels, a midnight register read,
events and config/state writes, on a small flash (1 KiB blocks, a 4-block
interval ring) so the rings wrap and blocks get reused during the run. For every
program/erase operation k of that run we replay it from a blank flash, cut the
power inside operation k (at its middle byte, and again at a pseudo-random byte
with a half-programmed byte at the cut), reboot, mount and check:

  * every interval, event, register read and config value acknowledged before
    the cut is intact, except those the uncut run would itself have dropped by
    wrap at the same step (only ever the oldest);
  * the operation in progress is either absent or complete;
  * the registers equal the sum of the intervals that are stored as committed;
  * the store keeps working: the rest of the run, replayed after recovery, ends
    with every acknowledged record and config value in place.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "firmware"))

import pytest  # noqa: E402
from hal.norflash import NORFlash, PowerCut  # noqa: E402
from meter import store  # noqa: E402

pytestmark = pytest.mark.req("M02", "M05")

BS = 1024
BLOCKS = 12
LAYOUT = (4, 3, 3)
T0 = 1767225600
DAY = 86400


def _script():
    """The 3-day run: a list of steps (kind, args)."""
    steps = [("cfg", (6, b"installed: meter 4711, 4 channels, 15 min"))]
    seq = 0
    for day in range(3):
        for i in range(96):
            t = T0 + day * DAY + i * 900
            if i == 0:
                steps.append(("reg", t))
            vals = ((i * 37 + day) % 900, (i * 11) % 50, (i * 5) % 300, 70000 if i == 50 else 0)
            steps.append(("iv", (t, 900, 4 if i == 95 else 0, vals)))
            if i % 2 == 1:
                seq += 1
                steps.append(("ev", (i % 5, t + 17, b"e%d" % seq)))
            if i % 3 == 2:
                steps.append(("cfg", (i % 4, b"state day %d i %d" % (day, i))))
        steps.append(("cfg", (7, b"schedule " + bytes([65 + day]) * (20 * day + 5))))
    return steps


class Model:
    """What has been acknowledged so far."""

    def __init__(self):
        self.iv = []
        self.ev = []
        self.reads = []
        self.cfg = {}
        self.regs = [0, 0, 0, 0]


def _do_model(m, kind, arg):
    m.iv.append(arg)
    for c in range(4):
        m.regs[c] += arg[3][c]


def _do(s, m, kind, arg):
    if kind == "iv":
        s.append_interval(*arg)
        _do_model(m, kind, arg)
    elif kind == "ev":
        seq = s.append_event(*arg)
        m.ev.append((seq,) + (arg[1], arg[0], arg[2]))
    elif kind == "reg":
        r = (arg, s.registers())
        s.append_register_read(*r)
        m.reads.append(r)
    else:
        s.put_config(*arg)
        m.cfg[arg[0]] = arg[1]


def _new(flash):
    return store.Store(flash, 0, *LAYOUT).mount()


def _reference(steps):
    """Uncut run: flash ops at the start of each step and what is retained after it."""
    f = NORFlash(BS, BLOCKS)
    s = _new(f)
    m = Model()
    op_start = []
    kept = []  # (first interval kept, first event kept, first read kept) after each step
    for kind, arg in steps:
        op_start.append(f.ops)
        _do(s, m, kind, arg)
        iv = list(s.intervals())
        ev = list(s.events())
        rd = list(s.register_reads())
        kept.append((len(m.iv) - len(iv), len(m.ev) - len(ev), len(m.reads) - len(rd)))
        assert iv == m.iv[len(m.iv) - len(iv) :]
    op_start.append(f.ops)
    return op_start, kept, f.ops


def _suffix_ok(got, acked, pending, first_max, what):
    """got == acked[f:] (+ pending), with f <= first_max."""
    if pending is not None and got and got[-1] == pending:
        got = got[:-1]
    f = len(acked) - len(got)
    assert f >= 0 and got == acked[f:], f"{what}: not a suffix of the acknowledged records"
    assert f <= first_max, f"{what}: lost {first_max - f} records the uncut run keeps"


def _check(f, steps, j, m, kept):
    kind, arg = steps[j]
    s = _new(f)
    prev = kept[j - 1] if j else (0, 0, 0)
    # records the completed step j would keep (minus its own): at most those are lost
    first_iv = max(prev[0], kept[j][0])
    first_ev = max(prev[1], kept[j][1])
    first_rd = max(prev[2], kept[j][2])
    iv = list(s.intervals())
    _suffix_ok(iv, m.iv, arg if kind == "iv" else None, first_iv, "intervals")
    regs = list(m.regs)
    if kind == "iv" and iv and iv[-1] == arg:
        for c in range(4):
            regs[c] += arg[3][c]
    assert s.registers() == tuple(regs)
    ev = list(s.events())
    pend_ev = None
    if kind == "ev":
        pend_ev = (len(m.ev) + 1, arg[1], arg[0], arg[2])
    _suffix_ok(ev, m.ev, pend_ev, first_ev, "events")
    rd = list(s.register_reads())
    pend_rd = (arg, tuple(m.regs)) if kind == "reg" else None
    _suffix_ok(rd, m.reads, pend_rd, first_rd, "register reads")
    for key in range(8):
        want = m.cfg.get(key)
        got = s.get_config(key)
        if kind == "cfg" and key == arg[0] and got == arg[1]:
            continue
        assert got == want, f"config key {key}: {got!r} != {want!r}"
    return s


def _finish(s, f, steps, j, m):
    """After recovery, run the rest of the script and check the end state: the
    store keeps working and a resumed copy/erase never loses anything later."""
    kind, arg = steps[j]
    if kind == "iv" and s.last_interval() == arg:
        _do_model(m, kind, arg)
    elif kind == "ev" and list(s.events(len(m.ev) + 1)):
        m.ev.append((len(m.ev) + 1, arg[1], arg[0], arg[2]))
    elif kind == "reg" and list(s.register_reads(arg)):
        m.reads.append((arg, tuple(m.regs)))
    elif kind == "cfg" and s.get_config(arg[0]) == arg[1]:
        m.cfg[arg[0]] = arg[1]
    for kind, arg in steps[j + 1 :]:
        _do(s, m, kind, arg)
    s = _new(f)
    iv = list(s.intervals())
    assert iv and iv == m.iv[len(m.iv) - len(iv) :] and iv[-1] == m.iv[-1]
    ev = list(s.events())
    assert ev and ev == m.ev[len(m.ev) - len(ev) :] and ev[-1] == m.ev[-1]
    assert s.registers() == tuple(m.regs)
    for key in range(8):
        assert s.get_config(key) == m.cfg.get(key), key


def _run_cut(steps, k, at):
    f = NORFlash(BS, BLOCKS, partial=at is not None, seed=k + 1)
    f.cut_at_op(k, at)
    s = _new(f)
    m = Model()
    for j, (kind, arg) in enumerate(steps):
        try:
            _do(s, m, kind, arg)
        except PowerCut:
            f.reboot()
            return f, j, m
    raise AssertionError(f"no cut at op {k}")


@pytest.mark.parametrize("where", ["middle", "random"])
@pytest.mark.timeout(30)  # ~4 s each on a loaded 2-core machine
def test_m02_cut_at_every_write_of_a_3_day_run(where):
    steps = _script()
    op_start, kept, total = _reference(steps)
    assert total > 300  # every interval, event, config write, erase and header
    assert kept[-1][0] > 0 and kept[-1][1] > 0  # the interval and event rings wrapped
    x = 12345
    for k in range(total):
        if where == "middle":
            at = None
        else:
            x = (x * 1103515245 + 12345) & 0x7FFFFFFF
            at = x % 40
        f, j, m = _run_cut(steps, k, at)
        assert op_start[j] <= k < op_start[j + 1]
        try:
            s = _check(f, steps, j, m, kept)
            _finish(s, f, steps, j, m)
        except AssertionError as e:
            raise AssertionError(
                f"cut at op {k} (byte {at}) during step {j} {steps[j]!r}: {e}"
            ) from e
