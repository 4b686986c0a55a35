"""The frame check sequence: CRC-16/X-25 by its crcmod name.

X-25 is the FCS of HDLC (ISO/IEC 13239), which DLMS/COSEM also uses; its
published check value for b"123456789" is 0x906E.
"""

from __future__ import annotations

import crcmod.predefined

CRC_NAME = "x-25"
CHECK_VALUE = 0x906E

_crc = crcmod.predefined.mkCrcFun(CRC_NAME)


def crc16(data: bytes) -> int:
    """CRC-16/X-25 of `data`."""
    value: int = _crc(data)
    return value
