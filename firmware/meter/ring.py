# Log-structured ring of records over the erase blocks of a block device.
#
# The device is anything with readblocks(block, buf, offset) /
# writeblocks(block, buf, offset) / ioctl(op, arg): esp32.Partition on the board,
# hal.norflash.NORFlash on the host. Only programming with an offset (no erase)
# and ioctl(6) (erase one block) are used, so the ring never relies on the
# device erasing for it.
#
# Format (see STORE.md): every block starts with a 48-byte header (3 slots)
#   <HBBI magic "AM", ring tag, format version, block sequence number
#   36 payload bytes (owner-defined: a snapshot of the owner's state)
#   <I    CRC-32 of the 44 bytes before it (0xFFFFFFFF is never stored)
# then 16-byte slots. A record fills 1, 2, 4 or 16 whole slots; its first byte
# is kind << 2 | size class, its last two bytes a check value (low 16 bits of
# CRC-32 over the rest, 0xFFFF never stored). A torn record fails its check;
# a torn first byte can only gain 1 bits, so it never claims fewer slots than
# the record it was meant to be: skipping it never lands inside it.
# Blocks are used in sequence order; to reuse the oldest block its magic is
# zeroed first, then it is erased, then a new header is written. A block without
# a valid header is free, whatever else it holds.
import struct

try:
    from micropython import const
except ImportError:

    def const(x):
        return x


try:
    from binascii import crc32
except ImportError:  # pragma: no cover - ports without binascii.crc32

    def crc32(data, crc=0):
        crc ^= 0xFFFFFFFF
        for b in data:
            crc ^= b
            for _ in range(8):
                crc = (crc >> 1) ^ (0xEDB88320 & -(crc & 1))
        return crc ^ 0xFFFFFFFF


SLOT = const(16)
HDR_SLOTS = const(3)
_HDR_BYTES = const(48)
_PAYLOAD_BYTES = const(36)
_MAX_RECORD = const(256)
_MAGIC = const(0x4D41)  # bytes "AM": neither byte is 0x00 nor 0xFF
_VERSION = const(1)
NSLOT = (1, 2, 4, 16)  # slots per size class (2 low bits of a record's first byte)
_MAX_KIND = const(62)  # kind 63 with class 3 would be 0xFF, the erased value

_IOCTL_COUNT = const(4)
_IOCTL_SIZE = const(5)
_IOCTL_ERASE = const(6)
_FF = const(b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff")  # a SLOT erased
_ZERO2 = const(b"\x00\x00")


def check16(data):
    """Check value of a record body: low 16 bits of CRC-32, never 0xFFFF."""
    c = crc32(data) & 0xFFFF
    return 0xFFFE if c == 0xFFFF else c


def check32(data):
    c = crc32(data) & 0xFFFFFFFF
    return 0xFFFFFFFE if c == 0xFFFFFFFF else c


def size_class(n):
    """Smallest size class holding n bytes (record bytes including the check)."""
    for c in range(4):
        if NSLOT[c] * SLOT >= n:
            return c
    raise ValueError("record", n)  # over _MAX_RECORD bytes


class Ring:
    """Records appended to `count` blocks starting at `first`; oldest block reused.

    payload(ring, buf): optional owner hook, fills the 36-byte header payload of
    a block being opened."""

    def __init__(self, bdev, first, count, tag, buf=None):
        bs = bdev.ioctl(_IOCTL_SIZE, 0)
        if bs % 256 or bs < 1024:
            raise ValueError("block size", bs)  # a multiple of 256, >= 1024
        if count < 2 or first < 0 or first + count > bdev.ioctl(_IOCTL_COUNT, 0):
            raise ValueError("blocks", first, count)  # at least 2, inside the device
        self.bdev = bdev
        self.first = first
        self.count = count
        self.tag = tag
        self.spb = bs // SLOT  # slots per block (the first HDR_SLOTS hold the header)
        self.order = []  # blocks in use (relative index), oldest first: the last is the head
        self.seq = 0  # sequence number of the head block
        self.pos = 0  # next free slot in the head block
        # record being built by the owner (owners may share one: no nesting)
        self.buf = buf if buf is not None else bytearray(_MAX_RECORD)
        self.payload = None

    # --- headers --------------------------------------------------------------------
    def read_header(self, block, buf):
        """Sequence number of block `block` if its header is valid, else -1.
        The header is left in buf[:48], its payload in buf[8:44]."""
        self.bdev.readblocks(self.first + block, memoryview(buf)[:_HDR_BYTES], 0)
        magic, tag, ver, seq = struct.unpack_from("<HBBI", buf, 0)
        if magic != _MAGIC or tag != self.tag or ver != _VERSION:
            return -1
        if struct.unpack_from("<I", buf, 44)[0] != check32(memoryview(buf)[:44]):
            return -1
        return seq

    def mount(self):
        """Find the blocks in use and the head. Reads one header per block."""
        found = []
        for b in range(self.count):
            seq = self.read_header(b, self.buf)  # no record is being built yet
            if seq >= 0:
                found.append((seq, b))
        found.sort()
        self.order = [b for _, b in found]
        self.seq = 0
        self.pos = 0
        if found:
            self.seq, head = found[-1]
            end = [HDR_SLOTS]
            for _ in self.records(head, end):
                pass
            self.pos = end[0]

    def next_victim(self):
        """The block the next new head will take: the first free block after the
        head, else the oldest block."""
        order = self.order
        h = order[-1] if order else -1
        for i in range(1, self.count + 1):
            b = (h + i) % self.count
            if b not in order:
                return b
        return order[0]

    # --- records --------------------------------------------------------------------
    def append(self, kind, n, buf=None):
        """Commit a record of kind `kind` whose body is buf[1:n] (default
        self.buf); fills byte 0, padding and check, writes it in one program
        operation. Returns (block, slot)."""
        if buf is None:
            buf = self.buf
        c = size_class(n + 2)
        slots = NSLOT[c]
        bdev = self.bdev
        order = self.order
        if not order or self.pos + slots > self.spb:
            # open a new head block (>= 61 free slots: any record fits): a block
            # in use is invalidated before it is erased, the header comes last
            v = self.next_victim()
            if v in order:
                order.remove(v)
                bdev.writeblocks(self.first + v, _ZERO2, 0)
            bdev.ioctl(_IOCTL_ERASE, self.first + v)
            hdr = bytearray(_HDR_BYTES)  # not self.buf: it may hold the pending record
            for i in range(_HDR_BYTES):
                hdr[i] = 0xFF
            seq = self.seq + 1
            struct.pack_into("<HBBI", hdr, 0, _MAGIC, self.tag, _VERSION, seq)
            mv = memoryview(hdr)
            if self.payload is not None:
                self.payload(self, mv[8:44])
            struct.pack_into("<I", hdr, 44, check32(mv[:44]))
            bdev.writeblocks(self.first + v, hdr, 0)
            order.append(v)
            self.seq = seq
            self.pos = HDR_SLOTS
        end = slots * SLOT
        buf[0] = (kind << 2) | c
        for i in range(n, end - 2):
            buf[i] = 0xFF
        mv = memoryview(buf)
        struct.pack_into("<H", buf, end - 2, check16(mv[: end - 2]))
        slot = self.pos
        head = order[-1]
        bdev.writeblocks(self.first + head, mv[:end], slot * SLOT)
        self.pos = slot + slots
        return head, slot

    def read(self, block, slot, buf):
        """Read the record at (block, slot) into buf; returns its length or 0 if
        it is not a valid record."""
        mv = memoryview(buf)
        self.bdev.readblocks(self.first + block, mv[:SLOT], slot * SLOT)
        if buf[0] == 0xFF:
            return 0
        n = NSLOT[buf[0] & 3] * SLOT
        if slot * SLOT + n > self.spb * SLOT:
            return 0
        if n > SLOT:
            self.bdev.readblocks(self.first + block, mv[SLOT:n], slot * SLOT + SLOT)
        if struct.unpack_from("<H", buf, n - 2)[0] != check16(mv[: n - 2]):
            return 0
        return n

    def records(self, block, end=None):
        """Yield (slot, kind, record memoryview) for each valid record of block
        `block` in write order. The memoryview is only valid until the next
        step. If `end` (a 1-item list) is given, end[0] is set to the slot after
        the last non-empty item: where the next record may be written."""
        win = bytearray(_MAX_RECORD)
        mv = memoryview(win)
        spb = self.spb
        dev = self.bdev
        ws = 0  # first slot in window
        wn = 0  # slots in window
        pos = HDR_SLOTS
        last = HDR_SLOTS
        while pos < spb:
            if pos < ws or pos >= ws + wn:
                ws = pos
                wn = min(16, spb - pos)
                dev.readblocks(self.first + block, mv[: wn * SLOT], pos * SLOT)
            off = (pos - ws) * SLOT
            b0 = win[off]
            if b0 == 0xFF and win[off : off + SLOT] == _FF:  # bytearray == bytes: all ports
                pos += 1
                continue
            n = NSLOT[b0 & 3]
            if pos + n > spb:
                last = spb  # torn or garbage tail: the block is full
                break
            if pos + n > ws + wn:
                ws = pos
                wn = min(16, spb - pos)
                dev.readblocks(self.first + block, mv[: wn * SLOT], pos * SLOT)
                off = 0
            L = n * SLOT
            rec = mv[off : off + L]
            pos += n
            last = pos
            if struct.unpack_from("<H", win, off + L - 2)[0] == check16(rec[: L - 2]):
                yield pos - n, b0 >> 2, rec
        if end is not None:
            end[0] = last
