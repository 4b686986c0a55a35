"""The fleet's sparse NOR flash: the board model's rules, RAM only for programmed blocks.

The firmware's own store (`firmware/meter/store.py`) runs on it and on
`hal.norflash.NORFlash` with the same records: the two images are the same
byte for byte, and the sparse one holds only the blocks the store wrote.
"""

from __future__ import annotations

import pytest

from hil import fleet_flash
from hil.fleet_flash import SparseFlash

fleet_flash.on_path()

from hal.norflash import NORFlash, NotErased  # noqa: E402
from meter.store import Store  # noqa: E402

BS = 4096


def image(flash: object, blocks: int) -> bytes:
    buf = bytearray(BS)
    out = b""
    for b in range(blocks):
        flash.readblocks(b, buf)  # type: ignore[attr-defined]
        out += bytes(buf)
    return out


@pytest.mark.req("M02")
def test_m02_store_on_sparse_flash_writes_what_it_writes_on_the_board_model() -> None:
    blocks = (19, 6, 4)
    dense, sparse = NORFlash(BS, sum(blocks), ram=True), SparseFlash(BS, sum(blocks))
    stores = [
        Store(f, interval_blocks=19, event_blocks=6, config_blocks=4) for f in (dense, sparse)
    ]
    t0 = 1_711_929_600
    for s in stores:
        s.mount()
        s.put_config(1, b"\x03\x84")
        for k in range(3 * 96):  # three days of 15-minute intervals
            s.append_interval(t0 + k * 900, 900, 0, (k, 2 * k, 0, k % 7))
            if k % 96 == 95:
                s.append_register_read(t0 + (k + 1) * 900, (k, k, k, k))
        s.append_event(5, t0 + 60)
    assert image(sparse, sum(blocks)) == image(dense, sum(blocks))
    assert 0 < sparse.allocated() <= 6  # of 29: the rest costs no RAM
    again = Store(sparse, 0, *blocks)
    again.mount()
    assert again.last_interval() == stores[0].last_interval()


def test_sparse_flash_keeps_the_nor_rules() -> None:
    f = SparseFlash(BS, 4)
    f.program(BS - 2, b"\x0f\xf0\x3c")  # across a block boundary
    assert f.allocated() == 2
    buf = bytearray(4)
    f.read(BS - 2, buf)
    assert bytes(buf) == b"\x0f\xf0\x3c\xff"
    f.program(BS - 2, b"\x07")  # clearing more bits: fine
    with pytest.raises(NotErased):
        f.program(BS - 2, b"\x0f")  # a 0 -> 1: refused, nothing written
    f.read(BS - 2, buf)
    assert bytes(buf) == b"\x07\xf0\x3c\xff"
    f.ioctl(6, 0)  # erase block 0: all 0xFF again, its RAM given back
    f.read(BS - 2, buf)
    assert bytes(buf) == b"\xff\xff\x3c\xff" and f.allocated() == 1
    f.program(0, b"\xff" * 8)  # 0xFF onto erased flash holds nothing
    assert f.allocated() == 1 and (f.ioctl(4, 0), f.ioctl(5, 0)) == (4, BS)
    with pytest.raises(ValueError, match="out of range"):
        f.read(4 * BS - 1, buf)
