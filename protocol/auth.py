"""Authentication of every frame, both ways, and of optical downloads; key derivation.

A frame's MAC is the first 16 bytes of HMAC-SHA256(key, header ‖ payload ‖
counter); truncation to 128 bits follows RFC 2104 §5 and saves airtime. A
counter that only grows is the replay guard: the receiver persists the last
one it accepted per sender and direction (SPEC.md, "Authentication"). The
head-end takes uplinks through a sliding window (`window_accept`, as IPsec
and DTLS do): MQTT may hand over in-flight frames out of order.

Every secret is derived from the site master key with HMAC-SHA256 under its
own label, so one leaked derived value reveals nothing else:

- meter key v0 = HMAC(master, "ami-meter-key" ‖ id u32); version n > 0 appends
  n as u16 (a rotated key, `headend keys rotate`);
- a meter's MQTT password = hex of the first 16 bytes of HMAC(key v0,
  "ami-mqtt-password"), provisioned beside the key, so it survives rotations;
- any other MQTT user's (head-end workers) = hex of the first 16 bytes of
  HMAC(master, "ami-mqtt-user" ‖ UTF-8 name);
- key_set carries the new key XOR HMAC(old key, "ami-key-wrap" ‖ version u16),
  inside a frame MACed with the old key;
- an operator's optical-probe key K_op = HMAC(meter key, "ami-probe-key" ‖
  operator u16): the meter derives it from its current key, the head-end
  issues it to the operator's probe, so the meter key never leaves the
  head-end nor crosses the optical link (download_challenge, download_data
  and the download file are MACed with K_op).
"""

from __future__ import annotations

import hashlib
import hmac
import struct

from protocol.errors import BadMac, Replay

MAC_LEN = 16
KEY_LEN = 32
COUNTER_MAX = 0xFFFFFFFF
REPLAY_WINDOW = 64  # uplink counters below the highest that may still arrive late
_WINDOW_MASK = (1 << REPLAY_WINDOW) - 1

_METER_KEY = b"ami-meter-key"
_MQTT_PASSWORD = b"ami-mqtt-password"
_MQTT_USER = b"ami-mqtt-user"
_KEY_WRAP = b"ami-key-wrap"
_PROBE_KEY = b"ami-probe-key"
#: operator ids are u16 on the wire (download_open, download_auth)
MAX_OPERATOR = 0xFFFF


def _hmac(key: bytes, msg: bytes) -> bytes:
    return hmac.new(key, msg, hashlib.sha256).digest()


def meter_key(master: bytes, meter_id: int, version: int = 0) -> bytes:
    """The 32-byte key of one meter at one key version (0: as provisioned)."""
    msg = _METER_KEY + struct.pack(">I", meter_id)
    return _hmac(master, msg + struct.pack(">H", version) if version else msg)


def mqtt_password(key_v0: bytes) -> str:
    """A meter's MQTT password (32 hex digits), from its provisioned key."""
    return _hmac(key_v0, _MQTT_PASSWORD)[:16].hex()


def mqtt_user_password(master: bytes, user: str) -> str:
    """The MQTT password of a named non-meter user (a head-end worker)."""
    return _hmac(master, _MQTT_USER + user.encode())[:16].hex()


def wrap_key(old_key: bytes, new_key: bytes, version: int) -> bytes:
    """The key_set body's `wrapped`: new key XOR a pad only the old key's holder can make."""
    pad = _hmac(old_key, _KEY_WRAP + struct.pack(">H", version))
    return bytes(a ^ b for a, b in zip(new_key, pad, strict=True))


def unwrap_key(old_key: bytes, wrapped: bytes, version: int) -> bytes:
    """Inverse of `wrap_key` (XOR is its own inverse)."""
    return wrap_key(old_key, wrapped, version)


def probe_key(key: bytes, operator: int) -> bytes:
    """K_op: the 32-byte optical-probe key of ``operator`` for the meter holding ``key``."""
    if not 0 <= operator <= MAX_OPERATOR:
        raise ValueError(f"operator: expected 0..{MAX_OPERATOR}, got {operator}")
    return _hmac(key, _PROBE_KEY + struct.pack(">H", operator))


def frame_mac(key: bytes, signed: bytes, counter: int) -> bytes:
    """MAC over the header and payload bytes as sent plus the counter."""
    msg = signed + struct.pack(">I", counter)
    return hmac.new(key, msg, hashlib.sha256).digest()[:MAC_LEN]


def download_mac(key: bytes, nonce: bytes, operator: int) -> bytes:
    """Full HMAC that answers a meter's download challenge."""
    return hmac.new(key, nonce + struct.pack(">H", operator), hashlib.sha256).digest()


def verify_frame(raw: bytes, key: bytes, last_counter: int | None = None) -> int:
    """Check an authenticated frame's MAC (and counter); return the counter.

    Args:
        raw: the whole frame as received (header … CRC), already decoded once.
        key: the meter's key.
        last_counter: the last counter accepted from this sender; None skips the
            replay check (the caller checks it atomically in its store).

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
    if last_counter is not None and counter <= last_counter:
        raise Replay("counter not newer than the last accepted", f"> {last_counter}", counter)
    return counter


def window_accept(high: int, seen: int, counter: int) -> tuple[int, int] | None:
    """The uplink replay window after taking ``counter``; None if it is a replay.

    The window is the highest counter accepted, ``high``, and ``seen``, a
    `REPLAY_WINDOW`-bit map of ``high - REPLAY_WINDOW + 1 .. high``: bit ``i`` set
    when counter ``high - i`` was accepted (bit 0 is ``high`` itself). A counter
    above ``high`` slides the window up; one inside it is taken once; one below it
    is refused (it cannot be told from a replay).
    """
    if counter > high:
        shift = counter - high
        moved = ((seen << shift) | 1) & _WINDOW_MASK if shift < REPLAY_WINDOW else 1
        return counter, moved
    age = high - counter
    if age >= REPLAY_WINDOW or seen >> age & 1:
        return None
    return high, seen | (1 << age)
