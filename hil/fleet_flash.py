"""A fleet meter's NOR flash: sparse, an erased block costs no RAM.

`hal.norflash.NORFlash` (the boards' and tests' model) keeps the whole image
in one bytearray: 116 KiB a fleet meter, 11 GB for 100,000. A meter's store
uses few of its blocks in a run of days (the interval ring fills ~2.4 days a
block), so this model holds a block's bytes only once something is programmed
into it, and drops them again when it is erased. Same block-device protocol
(readblocks, writeblocks, ioctl) and the same NOR rules (programming only
clears bits; a 0 -> 1 write raises `NotErased`), without power cuts or file
backing (the fleet never cuts power).
"""

from __future__ import annotations

import sys
from pathlib import Path

FIRMWARE = str(Path(__file__).resolve().parents[1] / "firmware")


def on_path() -> None:
    """The fleet runs the firmware's own modules on CPython: firmware/ on sys.path first."""
    if FIRMWARE not in sys.path:
        sys.path.insert(0, FIRMWARE)


on_path()

from hal.norflash import NORFlash, NotErased  # noqa: E402


class SparseFlash:
    """``block_count`` erase blocks of ``block_size`` bytes; None = erased (all 0xFF)."""

    def __init__(self, block_size: int, block_count: int) -> None:
        if block_size <= 0 or block_count <= 0:
            raise ValueError("block_size and block_count must be positive")
        self.block_size = block_size
        self.block_count = block_count
        self.size = block_size * block_count
        self.blocks: list[bytearray | None] = [None] * block_count
        self.erases = 0

    def allocated(self) -> int:
        """Blocks holding bytes (programmed since their last erase)."""
        return sum(b is not None for b in self.blocks)

    def _span(self, addr: int, n: int, what: str) -> None:
        if addr < 0 or n < 0 or addr + n > self.size:
            raise ValueError(f"{what} out of range: addr {addr} len {n}")

    def read(self, addr: int, buf: bytearray | memoryview) -> None:
        n = len(buf)
        self._span(addr, n, "read")
        bs = self.block_size
        pos = 0
        while pos < n:
            blk, off = divmod(addr + pos, bs)
            k = min(n - pos, bs - off)
            data = self.blocks[blk]
            if data is None:
                buf[pos : pos + k] = b"\xff" * k
            else:
                buf[pos : pos + k] = data[off : off + k]
            pos += k

    def program(self, addr: int, buf: bytes | bytearray | memoryview) -> None:
        """new = old & data; a bit that would go 0 -> 1 raises NotErased (nothing written)."""
        n = len(buf)
        self._span(addr, n, "program")
        bs = self.block_size
        src = bytes(buf)
        pos = 0
        while pos < n:  # check everything first: a refused program changes nothing
            blk, off = divmod(addr + pos, bs)
            k = min(n - pos, bs - off)
            data = self.blocks[blk]
            if data is not None:
                new = int.from_bytes(src[pos : pos + k], "big")
                if new & ~int.from_bytes(data[off : off + k], "big"):
                    raise NotErased(f"program 0->1 in block {blk} at offsets {off}..{off + k - 1}")
            pos += k
        pos = 0
        while pos < n:
            blk, off = divmod(addr + pos, bs)
            k = min(n - pos, bs - off)
            chunk = src[pos : pos + k]
            data = self.blocks[blk]
            if data is None:
                if chunk.count(0xFF) == k:  # programming 0xFF onto erased flash: nothing
                    pos += k
                    continue
                data = self.blocks[blk] = bytearray(b"\xff" * bs)
            both = int.from_bytes(data[off : off + k], "big") & int.from_bytes(chunk, "big")
            data[off : off + k] = both.to_bytes(k, "big")
            pos += k

    def erase(self, block: int) -> None:
        if not 0 <= block < self.block_count:
            raise ValueError(f"erase out of range: block {block}")
        self.blocks[block] = None
        self.erases += 1

    def _alive(self) -> None:
        """Never cut: the fleet does not inject power failures."""

    # the block-device protocol (readblocks, writeblocks, ioctl): NORFlash's own,
    # on this model's read/program/erase
    def readblocks(self, block_num: int, buf: bytearray, offset: int = 0) -> None:
        self.read(block_num * self.block_size + offset, buf)

    writeblocks = NORFlash.writeblocks
    ioctl = NORFlash.ioctl
