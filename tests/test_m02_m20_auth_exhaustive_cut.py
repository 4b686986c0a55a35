"""M20/M05: cut the power at every flash operation of signing and key rotation.

The run: a fresh meter boots, registers, answers on-demand reads (each a
verified downlink whose counter is persisted, and signed uplinks: over 64 of
them, so the uplink counter ceiling moves several times), then the key-rotation
dance (key_set under the old key, key_ack under the new, the first downlink
under the new key), then more reads under the new key. For every program/erase
operation k of that run we replay it on a fresh flash, cut the power inside
operation k (at its middle byte, and again at a pseudo-random byte with a
half-programmed byte at the cut), boot again and check:

  * the meter holds the old key (version 0) or the new one (version 1, the old
    one kept while unconfirmed): never neither, never a mix;
  * what the head-end saw is consistent with it: a key_ack it got means the
    meter holds the new key;
  * the head-end completes the dance (repeating key_set if it got no key_ack)
    and the meter ends on the new key, refusing the old one after its first
    downlink under the new one;
  * no uplink counter is ever used twice: every counter after the restart is
    above every counter sent before the cut.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "firmware"))

import pytest  # noqa: E402
from hal.hostkit import KEY, Board, Head  # noqa: E402
from hal.norflash import NORFlash, PowerCut  # noqa: E402

pytestmark = pytest.mark.req("M20", "M05")

K1 = bytes(range(64, 96))
READS = 40  # on-demand reads before and after the rotation: over 64 uplinks
BODY = {"mode": 2, "start": 0, "end": 0, "what": 1}


def _reads(b, h, n):
    for _ in range(n):
        b.now += 10
        h.serve(b, b.m.receive(h.frame("read_request", BODY), b.now))


def _script(b, h):
    b.boot()
    b.run(1800, step=60, head=h)  # registration, pushes, intervals to read
    _reads(b, h, READS)
    h.serve(b, b.m.receive(h.rotate(1, K1, b.now), b.now))  # key_ack confirms (h.decode)
    b.m.receive(h.frame("event_ack", {"acked_seq": 0}), b.now)  # first under K1
    _reads(b, h, READS)


def _board(flash):
    b = Board()
    b.flash = flash
    return b


def _reference():
    f = NORFlash(4096, 64)
    b = _board(f)
    h = Head()
    _script(b, h)
    assert b.m.key == K1 and b.m.old_key is None
    assert len(h.counters) > 64 and h.counters == sorted(set(h.counters))
    return f.ops


def _check(b, h):
    m = b.boot()
    assert (m.key_version, m.key) in ((0, KEY), (1, K1)), "neither key, or a mix"
    assert m.old_key in ((None,) if m.key_version == 0 else (None, KEY))
    if h.version == 1 and h.old_key is None:  # the head-end got key_ack under K1
        assert m.key == K1
    before = max(h.counters) if h.counters else 0
    n = len(h.counters)
    if h.version == 0 or h.old_key is not None:
        # no key_ack (or none under K1) yet: the head-end sends key_set (again)
        got = [h.decode(r) for r in m.receive(h.rotate(1, K1, b.now), b.now)]
        assert [g["type"] for g in got] == ["key_ack"] and got[0]["body"]["status"] == 0
        assert h.old_key is None  # verified under K1
    assert m.key == K1 and m.key_version == 1
    assert m.receive(h.frame("event_ack", {"acked_seq": 0}), b.now) == []  # under K1
    _reads(b, h, 2)
    m = b.boot()
    assert m.key == K1 and m.old_key is None
    b.now += 60
    refused = m.receive(h.frame("event_ack", {"acked_seq": 0}, key=KEY), b.now)
    assert h.decode(refused[0])["body"]["reason"] == 3  # the old key is done
    after = h.counters[n:]
    assert after and min(after) > before, "an uplink counter was used twice"
    assert after == sorted(set(after))


@pytest.mark.parametrize("where", ["middle", "random"])
@pytest.mark.timeout(300)  # ~35 s each on a loaded 2-core machine
def test_m20_cut_at_every_write_of_signing_and_key_rotation(where):
    total = _reference()
    assert total > 150
    x = 4711
    for k in range(total):
        at = None
        if where == "random":
            x = (x * 1103515245 + 12345) & 0x7FFFFFFF
            at = x % 40
        f = NORFlash(4096, 64, partial=at is not None, seed=k + 1)
        f.cut_at_op(k, at)
        b = _board(f)
        Head.last_counter = 0  # a fresh head-end store per run (the flash is fresh too)
        h = Head(keep=False)
        try:
            _script(b, h)
        except PowerCut:
            f.reboot()
        else:
            raise AssertionError(f"no cut at op {k}")
        try:
            _check(b, h)
        except AssertionError as e:
            raise AssertionError(f"cut at op {k} (byte {at}): {e}") from e
