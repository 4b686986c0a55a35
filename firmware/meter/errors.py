# The protocol's one exception root and its named failures, firmware side.
# Class names match protocol/errors.py so the golden vectors name an error
# once for both codecs.


class ProtocolError(Exception):
    """Root of every protocol failure (decode, encode, framing, authentication)."""

    def __init__(self, message, expected=None, got=None):
        detail = message
        if expected is not None or got is not None:
            detail = "%s: expected %s, got %s" % (message, expected, got)
        super().__init__(detail)
        self.expected = expected
        self.got = got


class TruncatedFrame(ProtocolError):
    """Fewer bytes than the header or the stated payload length needs."""


class UnsupportedVersion(ProtocolError):
    """The version byte is not 1."""


class BadLength(ProtocolError):
    """The stated (or built) payload length exceeds MAX_PAYLOAD."""


class OverlongFrame(ProtocolError):
    """More bytes than the header's payload length accounts for."""


class BadCrc(ProtocolError):
    """The CRC-16/X-25 does not match the bytes."""


class UnknownMessageType(ProtocolError):
    """The type byte (or type name) names no message of this version."""


class MalformedFrame(ProtocolError):
    """Reserved header flag bits are set."""


class MalformedPayload(ProtocolError):
    """The payload does not parse as its body (or the fields cannot be built)."""


class BadMac(ProtocolError):
    """The MAC does not match the key, or a MAC was required and is absent."""


class Replay(ProtocolError):
    """An authenticated frame's counter is not newer than the last accepted."""


class FramingError(ProtocolError):
    """Serial framing cannot carry this frame (empty or over the maximum)."""
