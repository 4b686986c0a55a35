"""Authentication of downlink commands and downloads.

A frame's MAC is the first 16 bytes of HMAC-SHA256(key, header ‖ payload ‖
counter); truncation to 128 bits follows RFC 2104 §5 and saves airtime. A
counter that only grows is the replay guard: the receiver persists the last
one it accepted per sender.
"""

from __future__ import annotations

import hashlib
import hmac
import struct

from protocol.errors import BadMac, Replay

MAC_LEN = 16
KEY_LEN = 32


def frame_mac(key: bytes, signed: bytes, counter: int) -> bytes:
    """MAC over the header and payload bytes as sent plus the counter."""
    msg = signed + struct.pack(">I", counter)
    return hmac.new(key, msg, hashlib.sha256).digest()[:MAC_LEN]


def download_mac(key: bytes, nonce: bytes, operator: int) -> bytes:
    """Full HMAC that answers a meter's download challenge."""
    return hmac.new(key, nonce + struct.pack(">H", operator), hashlib.sha256).digest()


def verify_frame(raw: bytes, key: bytes, last_counter: int) -> int:
    """Check an authenticated frame's MAC and counter; return the counter.

    Args:
        raw: the whole frame as received (header … CRC), already decoded once.
        key: the meter's key.
        last_counter: the last counter accepted from this sender.

    Raises:
        BadMac: the frame carries no MAC, or a wrong one.
        Replay: the counter is not greater than `last_counter`.
    """
    from protocol.frame import split_auth  # local: frame imports this module

    signed, counter, mac = split_auth(raw)
    if mac is None:
        raise BadMac("frame is not authenticated", "AUTH flag", "none")
    if not hmac.compare_digest(frame_mac(key, signed, counter), mac):
        raise BadMac("MAC does not match the meter key", "valid MAC", mac.hex())
    if counter <= last_counter:
        raise Replay("counter not newer than the last accepted", f"> {last_counter}", counter)
    return counter
