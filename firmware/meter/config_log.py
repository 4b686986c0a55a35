# Keyed config/state records (config, schedule slots, "last acknowledged read")
# on a Ring: every put appends; the last valid record of a key wins.
#
# Wear levelling and garbage collection: the ring rotates through its blocks.
# Whenever a put opens a new head block, the live records of the block that will
# be erased next (Ring.next_victim) are copied into the new head right after it,
# so that block holds nothing live by the time it is reused. A cut during the
# copy is finished at the next mount. The live set is capped at half a block so
# the copy always fits in a fresh block.
from meter.ring import HDR_SLOTS, NSLOT, Ring, size_class

try:
    from micropython import const
except ImportError:

    def const(x):
        return x


_KIND_VALUE = const(0)
_KIND_DELETE = const(1)  # no longer written; one on flash still deletes its key
_MAX_VALUE = const(251)  # bytes per value: 3 header + 251 + 2 check = 256
_MAX_KEY = const(255)


class ConfigLog:
    def __init__(self, bdev, first, count, tag, buf=None):
        self.ring = Ring(bdev, first, count, tag, buf)
        # key -> its live record, packed in a small int (no heap per key):
        # block << 18 | slot << 2 | size class
        self.index = {}
        self.live = 0  # slots live, at most half a block (Store.capacity)
        self.stuck = False

    def mount(self):
        r = self.ring
        r.mount()
        idx = {}
        for blk in r.order:
            for slot, kind, rec in r.records(blk):
                if kind == _KIND_VALUE:
                    idx[rec[1]] = blk << 18 | slot << 2 | (rec[0] & 3)
                elif kind == _KIND_DELETE:
                    idx.pop(rec[1], None)
        self.index = idx
        self.live = 0
        for e in idx.values():
            self.live += NSLOT[e & 3]
        self.stuck = False
        if r.order:
            self._relocate()  # finish a copy a power cut interrupted

    def _relocate(self):
        r = self.ring
        v = r.next_victim()
        if v not in r.order:
            return
        idx = self.index
        tmp = None  # a record buffer, only if there is something to copy
        for key in idx:  # only values change: iterating stays valid
            e = idx[key]
            if e >> 18 != v:
                continue
            if tmp is None:
                tmp = bytearray(len(r.buf))
            if not r.read(v, e >> 2 & 0xFFFF, tmp):
                continue
            ln = tmp[2]
            if r.pos + NSLOT[e & 3] > r.spb:
                self.stuck = True  # only after repeated cuts during one copy
                return
            blk, slot = r.append(_KIND_VALUE, 3 + ln, tmp)
            idx[key] = blk << 18 | slot << 2 | (e & 3)

    def get(self, key, default=None):
        e = self.index.get(key)
        buf = self.ring.buf  # no record is pending between store calls
        if e is None or not self.ring.read(e >> 18, e >> 2 & 0xFFFF, buf):
            return default
        return bytes(buf[3 : 3 + buf[2]])

    def put(self, key, value):
        if not isinstance(key, int) or key < 0 or key > _MAX_KEY:
            raise ValueError("key", key)
        ln = len(value)
        if ln > _MAX_VALUE:
            raise ValueError("value", ln)
        c = size_class(ln + 5)
        old = self.index.get(key)
        live = self.live - (0 if old is None else NSLOT[old & 3]) + NSLOT[c]
        r = self.ring
        if live > (r.spb - HDR_SLOTS) // 2:
            raise ValueError("full", live)
        if self.stuck:
            raise ValueError("stuck")  # relocation pending and no room: erase config
        r.buf[1] = key
        r.buf[2] = ln
        r.buf[3 : 3 + ln] = value
        seq = r.seq
        blk, slot = r.append(_KIND_VALUE, 3 + ln)
        self.index[key] = blk << 18 | slot << 2 | c
        self.live = live
        if r.seq != seq:
            self._relocate()  # a new head block: empty the next victim into it
