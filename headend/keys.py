"""Per-meter keys: derived from one master key, so nothing per meter is stored.

key(meter) = HMAC-SHA256(master, "ami-meter-key" ‖ meter id u32). The same
derivation provisions a meter at manufacture (`tools`) and the virtual boards.
"""

from __future__ import annotations

import hashlib
import hmac
import struct

_LABEL = b"ami-meter-key"


def meter_key(master: bytes, meter_id: int) -> bytes:
    """The 32-byte key of one meter."""
    return hmac.new(master, _LABEL + struct.pack(">I", meter_id), hashlib.sha256).digest()
