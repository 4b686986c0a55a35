# NOR flash model behind the MicroPython block-device protocol.
#
# The host stand-in for esp32.Partition, stricter than the hardware:
#   * readblocks(block_num, buf, offset=0) / writeblocks(block_num, buf, offset=None)
#     / ioctl(op, arg), the "extended interface" of os.AbstractBlockDev / vfs docs.
#     writeblocks without offset erases the blocks it covers, then programs them;
#     with an offset it programs only (no erase), like esp32.Partition.
#   * programming only clears bits (new = old & data); a write that would need a
#     bit to go 0 -> 1 raises NotErased (a ValueError) so firmware bugs show;
#   * ioctl(6, block) erases (all bytes 0xFF) and counts the erase per block;
#   * power cuts: a byte budget (cut_after) or a cut at the k-th mutating
#     operation (cut_at_op). The cut lands a prefix of the write, optionally with
#     the byte at the cut half-programmed (only some of its 0 bits cleared), then
#     raises PowerCut; an erase is cut the same way (a prefix of the block is
#     0xFF, the byte at the cut has only some bits set, the rest keeps the old
#     data). Every later operation raises PowerCut until reboot().
#   * optional file backing: the image lives in `path`, erase counters in
#     `path + ".erase"`, written through on every operation, so a virtual
#     board's flash persists across process restarts.
# Runs unchanged on CPython and MicroPython (host side only: never on a board).

try:
    import os
except ImportError:  # pragma: no cover
    os = None

_OP_INIT = 1
_OP_DEINIT = 2
_OP_SYNC = 3
_OP_COUNT = 4
_OP_SIZE = 5
_OP_ERASE = 6


class PowerCut(BaseException):
    """The supply died during (or before) a flash operation.

    A BaseException so that no `except Exception` in the firmware swallows it:
    a real power cut does not return to the code that caused it.
    """


class NotErased(ValueError):
    """A program operation tried to turn a 0 bit into 1 (needs an erase first)."""


def xorshift32(x):
    """The next state of a xorshift32 generator: deterministic, no `random` module needed."""
    x ^= (x << 13) & 0xFFFFFFFF
    x ^= x >> 17
    x ^= (x << 5) & 0xFFFFFFFF
    return x


class NORFlash:
    """NOR flash: `block_count` erase blocks of `block_size` bytes."""

    def __init__(self, block_size=4096, block_count=64, path=None, partial=True, seed=1, ram=True):
        if block_size <= 0 or block_count <= 0:
            raise ValueError("block_size and block_count must be positive")
        self.block_size = block_size
        self.block_count = block_count
        self.size = block_size * block_count
        self.path = path
        self.partial = partial  # half-program the byte at a cut
        self._rng = (seed or 1) & 0x7FFFFFFF
        # ram=False (file-backed only): no RAM image, every operation reads and
        # writes the file; the virtual board uses it so the flash model does not
        # take 256 KiB of a 100 KB MicroPython heap (on the board flash is flash)
        self.ram = ram or path is None
        self.data = None
        if self.ram:  # erased: filled in place (bytearray(b"\xff" * size) needs twice the heap)
            self.data = bytearray(self.size)
            ff = b"\xff" * block_size
            for b in range(block_count):
                self.data[b * block_size : (b + 1) * block_size] = ff
        self.erase_counts = [0] * block_count
        self.ops = 0  # mutating operations so far (program or erase)
        self.programs = 0
        self.erases = 0
        self.bytes_programmed = 0
        self.budget = None  # bytes that may still be programmed/erased; None = no limit
        self._cut_op = -1  # cut during this operation index
        self._cut_byte = 0
        self.dead = False
        self.cuts = 0
        self._file = None
        if path is not None:
            self._open_file()

    # --- file backing -------------------------------------------------------------
    def _exists(self, p):
        try:
            os.stat(p)
            return True
        except OSError:
            return False

    def _open_file(self):
        p = self.path
        if self._exists(p):
            n = os.stat(p)[6]
            if n != self.size:
                raise ValueError("flash image %s is %d bytes, expected %d" % (p, n, self.size))
            if self.ram:
                with open(p, "rb") as f:
                    self.data[:] = f.read()
        else:
            ff = b"\xff" * self.block_size
            with open(p, "wb") as f:
                for _ in range(self.block_count):
                    f.write(ff)
        ep = p + ".erase"
        if self._exists(ep):
            with open(ep) as f:
                counts = [int(x) for x in f.read().split()]
            if len(counts) == self.block_count:
                self.erase_counts = counts
        self._file = open(p, "r+b")

    def _persist(self, addr, n, d=None, base=0):
        f = self._file
        if f is None:
            return
        f.seek(addr)
        if d is None:
            f.write(self.data[addr : addr + n])
        else:
            f.write(memoryview(d)[addr - base : addr - base + n])
        f.flush()

    def _window(self, addr, n):
        """(bytes of [addr, addr + n) to work on, the address of its index 0)."""
        if self.ram:
            return self.data, 0
        d = bytearray(n)
        self._file.seek(addr)
        self._file.readinto(d)
        return d, addr

    def _persist_counts(self):
        if self._file is None:
            return
        with open(self.path + ".erase", "w") as f:
            f.write(" ".join(str(c) for c in self.erase_counts))

    def close(self):
        if self._file is not None:
            self._file.close()
            self._file = None

    # --- power-cut injection --------------------------------------------------------
    def cut_after(self, nbytes):
        """Cut power once `nbytes` more bytes have been programmed or erased."""
        self.budget = nbytes

    def cut_at_op(self, op_index, at_byte=None):
        """Cut power during mutating operation number `op_index` (0-based, counted in
        self.ops) after `at_byte` bytes of it landed (default: the middle; at most
        all but the last byte, so that operation is always cut)."""
        self._cut_op = op_index
        self._cut_byte = at_byte

    def reboot(self):
        """Power back on: operations work again, pending cuts are cleared."""
        self.dead = False
        self.budget = None
        self._cut_op = -1

    def _rand(self):
        self._rng = xorshift32(self._rng)
        return self._rng

    def _landing(self, n):
        """How many of the next n bytes land before a cut (n = no cut)."""
        limit = n
        if self.ops == self._cut_op:
            b = self._cut_byte
            if b is None:
                b = n // 2
            limit = min(limit, b, n - 1)  # the scheduled operation is always cut
        if self.budget is not None and self.budget < limit:
            limit = self.budget
        return limit

    def _die(self):
        self.dead = True
        self.cuts += 1
        raise PowerCut("power cut at flash op %d" % self.ops)

    def _alive(self):
        if self.dead:
            raise PowerCut("flash unpowered (call reboot())")

    # --- raw operations ---------------------------------------------------------------
    def program(self, addr, buf):
        """Program bytes at an absolute address (no erase): new = old & data."""
        self._alive()
        n = len(buf)
        if addr < 0 or addr + n > self.size:
            raise ValueError("program out of range: addr %d len %d" % (addr, n))
        d, base = self._window(addr, n)
        o = addr - base
        for i in range(n):
            if buf[i] & ~d[o + i] & 0xFF:
                raise NotErased(
                    "program 0->1 at block %d offset %d: old 0x%02x new 0x%02x"
                    % (
                        (addr + i) // self.block_size,
                        (addr + i) % self.block_size,
                        d[o + i],
                        buf[i],
                    )
                )
        land = self._landing(n)
        for i in range(land):
            d[o + i] = buf[i]
        if self.budget is not None:
            self.budget -= land
        cut = land < n
        if cut and self.partial:
            # the byte at the cut: only some of the bits it should clear are cleared
            d[o + land] &= buf[land] | (self._rand() & 0xFF)
            land += 1
        self._persist(addr, land, None if self.ram else d, base)
        self.ops += 1
        self.programs += 1
        self.bytes_programmed += land
        if cut:
            self._die()

    def erase(self, block):
        """Erase one block to 0xFF and count it."""
        self._alive()
        if block < 0 or block >= self.block_count:
            raise ValueError("erase out of range: block %d" % block)
        bs = self.block_size
        base = block * bs
        land = self._landing(bs)
        d, b0 = self._window(base, bs)
        for i in range(base - b0, base - b0 + land):
            d[i] = 0xFF
        if self.budget is not None:
            self.budget -= land
        cut = land < bs
        n = land
        if cut and self.partial:
            d[base - b0 + land] |= self._rand() & 0xFF
            n += 1
        self.erase_counts[block] += 1
        self._persist(base, n, None if self.ram else d, b0)
        self._persist_counts()
        self.ops += 1
        self.erases += 1
        if cut:
            self._die()

    # --- block-device protocol --------------------------------------------------------
    def readblocks(self, block_num, buf, offset=0):
        self._alive()
        addr = block_num * self.block_size + offset
        n = len(buf)
        if addr < 0 or addr + n > self.size:
            raise ValueError(
                "read out of range: block %d offset %d len %d" % (block_num, offset, n)
            )
        if self.ram:
            buf[:] = self.data[addr : addr + n]
        else:
            self._file.seek(addr)
            self._file.readinto(buf)

    def writeblocks(self, block_num, buf, offset=None):
        if offset is None:
            # simple interface: whole blocks, erased first
            n = len(buf)
            if n % self.block_size:
                raise ValueError("writeblocks without offset needs whole blocks")
            for i in range(n // self.block_size):
                self.erase(block_num + i)
            self.program(block_num * self.block_size, buf)
        else:
            self.program(block_num * self.block_size + offset, buf)

    def ioctl(self, op, arg):
        if op == _OP_COUNT:
            return self.block_count
        if op == _OP_SIZE:
            return self.block_size
        if op == _OP_ERASE:
            self.erase(arg)
            return 0
        if op in (_OP_INIT, _OP_DEINIT, _OP_SYNC):
            self._alive()
            return 0
        return None
