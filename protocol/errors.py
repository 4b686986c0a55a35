"""The protocol's one exception root and its named failures.

Every decoder in `protocol` raises only these: a byte string either decodes to
a message or raises a `ProtocolError` subclass that says what was expected and
what arrived. The firmware codec (`firmware/meter/errors.py`) uses the same
class names, so the golden vectors name errors once for both.
"""

from __future__ import annotations


class ProtocolError(Exception):
    """Root of every protocol failure (decode, encode, framing, authentication)."""

    def __init__(self, message: str, expected: object = None, got: object = None) -> None:
        detail = message
        if expected is not None or got is not None:
            detail = f"{message}: expected {expected}, got {got}"
        super().__init__(detail)
        self.expected = expected
        self.got = got


class TruncatedFrame(ProtocolError):
    """Fewer bytes than the header or the stated payload length needs."""


class UnsupportedVersion(ProtocolError):
    """The version byte is not a protocol version this side speaks."""


class BadLength(ProtocolError):
    """The stated payload length exceeds the maximum."""


class OverlongFrame(ProtocolError):
    """More bytes than the header's payload length accounts for."""


class BadCrc(ProtocolError):
    """The frame check sequence does not match the bytes."""


class UnknownMessageType(ProtocolError):
    """The type byte names no message of this version."""


class MalformedFrame(ProtocolError):
    """Reserved header bits are set."""


class MalformedPayload(ProtocolError):
    """The payload does not parse as the body of its message type (or cannot be built)."""


class BadMac(ProtocolError):
    """The authentication code does not match the per-meter key."""


class Replay(ProtocolError):
    """An authenticated frame's counter is not newer than the last one accepted."""


class FramingError(ProtocolError):
    """Serial framing failed: bad escape or a frame longer than the maximum."""


ERRORS: dict[str, type[ProtocolError]] = {
    cls.__name__: cls
    for cls in (
        TruncatedFrame,
        UnsupportedVersion,
        BadLength,
        OverlongFrame,
        BadCrc,
        UnknownMessageType,
        MalformedFrame,
        MalformedPayload,
        BadMac,
        Replay,
        FramingError,
    )
}
