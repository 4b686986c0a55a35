# CRC-16/X-25, the frame check sequence (crcmod "x-25"; HDLC's FCS).
# Reflected poly 0x1021 (0x8408), init 0xFFFF, xorout 0xFFFF; check 0x906E.
import array

try:
    from micropython import const
except ImportError:

    def const(x):
        return x


_POLY_REFLECTED = const(0x8408)
CHECK_VALUE = const(0x906E)


def _make_table():
    # 512 bytes, built once at import: a byte per step instead of a bit.
    t = array.array("H", range(256))
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ _POLY_REFLECTED if c & 1 else c >> 1
        t[i] = c
    return t


_TABLE = _make_table()


def crc16(data, crc=0):
    """CRC-16/X-25 of data (bytes, bytearray or memoryview).

    Incremental like binascii.crc32: pass a previous result as crc to continue,
    so crc16(b, crc16(a)) == crc16(a + b). The default 0 is the finished value
    of no data (init 0xFFFF xor xorout 0xFFFF).
    """
    t = _TABLE
    c = (crc ^ 0xFFFF) & 0xFFFF
    for b in data:
        c = (c >> 8) ^ t[(c ^ b) & 0xFF]
    return c ^ 0xFFFF
