# Authentication: HMAC-SHA256 (RFC 2104) from hashlib.sha256, since MicroPython
# has no hmac module; frame MACs (first 16 bytes), signing a frame in place
# (seal: every uplink, SPEC "Authentication"), key_set unwrapping, the
# optical probe's key K_op and the download challenge.
import hashlib
import struct

from meter.crc import crc16
from meter.errors import BadMac, MalformedPayload, Replay

try:
    from micropython import const
except ImportError:

    def const(x):
        return x


_BLOCK = const(64)  # SHA-256 block size
_MAC_LEN = const(16)
_KEY_LEN = const(32)
_HEADER_LEN = const(15)
_CRC_LEN = const(2)
_FLAG_AUTH = const(0x01)


def hmac_sha256(key, msg):
    """HMAC-SHA256(key, msg), 32 bytes; equals hmac.new(key, msg, "sha256").digest().

    msg may be bytes, bytearray or a memoryview slice of a frame.
    """
    if len(key) > _BLOCK:
        key = hashlib.sha256(key).digest()
    pad = bytearray(_BLOCK)
    pad[0 : len(key)] = key
    for i in range(_BLOCK):
        pad[i] ^= 0x36
    h = hashlib.sha256(pad)
    h.update(msg)
    inner = h.digest()
    for i in range(_BLOCK):
        pad[i] ^= 0x36 ^ 0x5C  # ipad -> opad in place
    h = hashlib.sha256(pad)
    h.update(inner)
    return h.digest()


def compare(a, b):
    """Constant-time equality of two byte strings (time depends on length only)."""
    if len(a) != len(b):
        return False
    r = 0
    for i in range(len(a)):
        r |= a[i] ^ b[i]
    return r == 0


def frame_mac(key, signed, counter):
    """First 16 bytes of HMAC-SHA256(key, header || payload || counter u32).

    signed is the header (AUTH flag set) and payload as sent.
    """
    if type(counter) is not int or not 0 <= counter <= 0xFFFFFFFF:
        raise MalformedPayload("auth counter out of range", "0 <= n < 2**32", counter)
    h = bytearray(signed)
    h.extend(struct.pack(">I", counter))
    return hmac_sha256(key, h)[:_MAC_LEN]


def seal(buf, n, key, counter):
    """Sign a frame in place: buf holds header (AUTH flag set) and payload in
    buf[:n] and has 22 bytes after them; writes counter, MAC and CRC there."""
    if type(counter) is not int or not 0 <= counter <= 0xFFFFFFFF:
        raise MalformedPayload("auth counter out of range", "0 <= n < 2**32", counter)
    mv = memoryview(buf)
    struct.pack_into(">I", buf, n, counter)
    # header || payload || counter are contiguous: MAC them in place
    buf[n + 4 : n + 4 + _MAC_LEN] = hmac_sha256(key, mv[0 : n + 4])[:_MAC_LEN]
    n += 4 + _MAC_LEN
    struct.pack_into(">H", buf, n, crc16(mv[0:n]))


def unwrap_key(key, wrapped, version):
    """The new key of a key_set: wrapped XOR HMAC(current key, "ami-key-wrap" || version u16)."""
    msg = bytearray(b"ami-key-wrap")
    msg.extend(struct.pack(">H", version))
    pad = hmac_sha256(key, msg)
    out = bytearray(_KEY_LEN)
    for i in range(_KEY_LEN):
        out[i] = wrapped[i] ^ pad[i]
    return bytes(out)


def probe_key(key, operator):
    """K_op, the optical probe key of `operator` (u16): HMAC-SHA256(key,
    "ami-probe-key" || operator u16); the meter derives it from its current key."""
    if type(operator) is not int or not 0 <= operator <= 0xFFFF:
        raise MalformedPayload("operator out of range", "0 <= n < 65536", operator)
    msg = bytearray(b"ami-probe-key")
    msg.extend(struct.pack(">H", operator))
    return hmac_sha256(key, msg)


def download_mac(key, nonce, operator):
    """Full HMAC-SHA256(key, nonce || operator u16) answering a download challenge."""
    if type(operator) is not int or not 0 <= operator <= 0xFFFF:
        raise MalformedPayload("operator out of range", "0 <= n < 65536", operator)
    msg = bytearray(nonce)
    msg.extend(struct.pack(">H", operator))
    return hmac_sha256(key, msg)


def verify_frame(frame, key, last_counter=None):
    """Check the MAC (and counter) of a raw frame that already decoded; return the counter.

    last_counter None skips the replay check.
    Raises BadMac (no auth trailer, or wrong MAC), then Replay (counter <= last_counter).
    """
    mv = memoryview(frame)
    if len(mv) < _HEADER_LEN + _CRC_LEN or not mv[2] & _FLAG_AUTH:
        raise BadMac("frame is not authenticated", "the AUTH flag", "no AUTH flag")
    end = _HEADER_LEN + ((mv[13] << 8) | mv[14])
    if len(mv) < end + 4 + _MAC_LEN:
        raise BadMac("frame too short for its auth trailer", end + 4 + _MAC_LEN, len(mv))
    # header || payload || counter are contiguous in the frame: MAC them in place
    counter = struct.unpack_from(">I", mv, end)[0]
    want = hmac_sha256(key, mv[0 : end + 4])[:_MAC_LEN]
    if not compare(want, mv[end + 4 : end + 4 + _MAC_LEN]):
        raise BadMac(
            "MAC does not match the meter key",
            "the meter key's MAC",
            bytes(mv[end + 4 : end + 20]).hex(),
        )
    if last_counter is not None and counter <= last_counter:
        raise Replay(
            "counter not newer than the last accepted", "counter > %d" % last_counter, counter
        )
    return counter
