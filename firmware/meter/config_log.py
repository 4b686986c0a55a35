# Keyed config/state records (config, schedule slots, "last acknowledged read")
# on a Ring: every put appends; the last valid record of a key wins.
#
# Wear levelling and garbage collection: the ring rotates through its blocks.
# Whenever a new head block is opened, the live records of the block that will
# be erased next (Ring.next_victim) are copied into the new head first, so that
# block holds nothing live by the time it is reused. A cut during the copy is
# finished at the next mount. The live set is capped at half a block so the
# copy always fits in a fresh block.
from meter.ring import HDR_SLOTS, NSLOT, Ring, StoreError, size_class

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
        self.ring.opened = self._relocate
        self.index = {}  # key -> [block, slot, nslot]; nslot 0 = deleted
        self.limit = (self.ring.spb - HDR_SLOTS) // 2  # live slots allowed: half a block
        self.live = 0
        self.stuck = False
        self._tmp = bytearray(len(self.ring.buf))  # a record, for copies and reads

    def mount(self):
        r = self.ring
        r.mount()
        idx = {}
        for blk in r.order:
            for slot, kind, rec in r.records(blk):
                if kind == _KIND_VALUE:
                    idx[rec[1]] = [blk, slot, NSLOT[rec[0] & 3]]
                elif kind == _KIND_DELETE:
                    idx[rec[1]] = [blk, slot, 0]
        self.index = idx
        self.live = 0
        for k in idx:
            self.live += idx[k][2]
        self.stuck = False
        if r.head >= 0:
            self._relocate()  # finish a copy a power cut interrupted

    def _relocate(self):
        r = self.ring
        v = r.next_victim()
        if v not in r.order:
            return
        tmp = self._tmp
        for key in list(self.index):
            ent = self.index[key]
            if ent[0] != v or ent[2] == 0:
                continue
            n = r.read(v, ent[1], tmp)
            if not n:
                continue
            ln = tmp[2]
            if r.pos + NSLOT[size_class(ln + 5)] > r.spb:
                self.stuck = True  # only after repeated cuts during one copy
                return
            blk, slot = r.append(_KIND_VALUE, 3 + ln, tmp)  # r.buf may hold a pending put
            ent[0] = blk
            ent[1] = slot

    def get(self, key, default=None):
        ent = self.index.get(key)
        if ent is None or ent[2] == 0:
            return default
        tmp = self._tmp
        if not self.ring.read(ent[0], ent[1], tmp):
            return default
        return bytes(tmp[3 : 3 + tmp[2]])

    def put(self, key, value):
        if not isinstance(key, int) or key < 0 or key > _MAX_KEY:
            raise StoreError("config key must be an int 0..255")
        ln = len(value)
        if ln > _MAX_VALUE:
            raise StoreError("config value of %d bytes exceeds %d" % (ln, _MAX_VALUE))
        n = NSLOT[size_class(ln + 5)]
        old = self.index.get(key)
        live = self.live - (old[2] if old else 0) + n
        if live > self.limit:
            raise StoreError("config full: %d slots live, limit %d" % (live, self.limit))
        if self.stuck:
            raise StoreError("config log: relocation pending and no room; erase config to recover")
        r = self.ring
        r.buf[1] = key
        r.buf[2] = ln
        r.buf[3 : 3 + ln] = value
        blk, slot = r.append(_KIND_VALUE, 3 + ln)
        self.index[key] = [blk, slot, n]
        self.live = live
