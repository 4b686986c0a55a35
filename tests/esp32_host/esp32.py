# Host stand-in for the ESP32 port's `esp32` module: esp32.Partition, as the
# MicroPython v1.28 docs define it (find, info, readblocks/writeblocks with
# and without offset, ioctl of the extended block-device protocol), and
# esp32.NVS (set_blob/get_blob/erase_key/commit; get_blob of a missing key
# raises OSError as ESP_ERR_NVS_NOT_FOUND does; sim_nvs holds the namespaces). It stands
# in for hardware on the host only (tests/test_hal_esp32.py); never firmware.
#
# The partition table is the one firmware/README.md ("Flash layout") asks for.
# The `meter` data partition is a real block device: 64 blocks of 4096 bytes
# backed by firmware/hal/norflash.py's NOR model (programming only clears bits,
# a 0 -> 1 write raises NotErased, every erase is counted), so the store runs
# on flash semantics, not on a bytearray. The other partitions are listed but
# hold no data. Partition objects are handles: find() returns new ones over the
# same flash, as on the board, so a "reboot" (new Board) sees what was written.
from hal.norflash import NORFlash

_BLOCK = 4096


class _Entry:
    def __init__(self, type, subtype, addr, size, label, flash=None):
        self.type = type
        self.subtype = subtype
        self.addr = addr
        self.size = size
        self.label = label
        self.flash = flash


class Partition:
    BOOT = 0
    RUNNING = 1
    TYPE_APP = 0
    TYPE_DATA = 1

    def __init__(self, id, block_size=4096):
        if block_size != _BLOCK:  # the stand-in models the 4 KiB erase block only
            raise ValueError("block_size", block_size)
        if isinstance(id, _Entry):
            e = id
        else:
            want = "factory" if id in (Partition.BOOT, Partition.RUNNING) else id
            e = None
            for x in sim_table:
                if x.label == want:
                    e = x
            if e is None:
                raise ValueError("partition not found", id)
        self._e = e
        self.sim_nor = e.flash  # the test's view of the flash behind this handle

    @classmethod
    def find(cls, type=TYPE_APP, subtype=0xFF, label=None, block_size=4096):
        out = []
        for e in sim_table:
            if e.type != type:
                continue
            if subtype != 0xFF and e.subtype != subtype:
                continue
            if label is not None and e.label != label:
                continue
            out.append(cls(e, block_size))
        return out

    def info(self):
        e = self._e
        return (e.type, e.subtype, e.addr, e.size, e.label, False)

    def _nor(self):
        if self._e.flash is None:
            raise OSError(5)  # EIO: this stand-in holds no data for it
        return self._e.flash

    def readblocks(self, block_num, buf, offset=0):
        self._nor().readblocks(block_num, buf, offset)

    def writeblocks(self, block_num, buf, offset=None):
        # without offset: erase the blocks, then program (the simple protocol);
        # with offset: program only, no erase (the extended protocol)
        self._nor().writeblocks(block_num, buf, offset)

    def ioctl(self, cmd, arg):
        if cmd == 4:
            return self._e.size // _BLOCK
        if cmd == 5:
            return _BLOCK
        return self._nor().ioctl(cmd, arg)


def sim_new_table(meter_blocks=64):
    """A fresh partition table with an erased `meter` partition (None: without one)."""
    t = [
        _Entry(Partition.TYPE_DATA, 0x02, 0x9000, 0x6000, "nvs"),
        _Entry(Partition.TYPE_DATA, 0x01, 0xF000, 0x1000, "phy_init"),
        _Entry(Partition.TYPE_APP, 0x00, 0x10000, 0x1F0000, "factory"),
        _Entry(Partition.TYPE_DATA, 0x81, 0x200000, 0x1C0000, "vfs"),
    ]
    if meter_blocks:
        nor = NORFlash(block_size=_BLOCK, block_count=meter_blocks)
        t.append(_Entry(Partition.TYPE_DATA, 0x81, 0x3C0000, meter_blocks * _BLOCK, "meter", nor))
    sim_table[:] = t
    return t


sim_table = []
sim_new_table()


sim_nvs = {}  # namespace -> {key: bytes}, committed or not (no power cuts here)


class NVS:
    def __init__(self, namespace):
        self._d = sim_nvs.setdefault(namespace, {})

    def set_blob(self, key, value):
        self._d[key] = bytes(value)

    def get_blob(self, key, buffer):
        v = self._d.get(key)
        if v is None:
            raise OSError(-0x1102)  # ESP_ERR_NVS_NOT_FOUND
        if len(v) > len(buffer):
            raise OSError(-0x1109)  # ESP_ERR_NVS_INVALID_LENGTH
        buffer[: len(v)] = v
        return len(v)

    def erase_key(self, key):
        if self._d.pop(key, None) is None:
            raise OSError(-0x1102)

    def commit(self):
        pass
