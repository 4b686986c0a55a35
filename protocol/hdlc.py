"""Serial framing: HDLC-style flags and byte stuffing (RFC 1662 §4.2).

A frame goes out as 7E + stuffed bytes + 7E, where 7E and 7D inside become
7D followed by the byte XOR 20. A receiver that joins mid-stream or meets
line noise loses only the frames the noise touches: every flag starts afresh.
"""

from __future__ import annotations

from protocol.schema import MAX_FRAME

FLAG = 0x7E
ESC = 0x7D
_XOR = 0x20


def stuff(frame: bytes) -> bytes:
    """One frame as it goes on the line, flags included."""
    body = frame.replace(b"\x7d", b"\x7d\x5d").replace(b"\x7e", b"\x7d\x5e")
    return b"\x7e" + body + b"\x7e"


class Deframer:
    """Incremental receiver: feed line bytes, get whole frames back.

    Frames longer than `max_frame` or with a bad escape are dropped and
    counted in `errors`; the frame decoder judges the rest (CRC and all).
    """

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self.max_frame = max_frame
        self.errors = 0
        self._buf = bytearray()
        self._in_frame = False  # seen a flag since start: bytes before the first flag are noise
        self._esc = False
        self._bad = False

    def feed(self, data: bytes) -> list[bytes]:
        """Consume `data`; return the frames it completed, in order."""
        out: list[bytes] = []
        for b in data:
            if b == FLAG:
                if self._in_frame and self._buf and not (self._bad or self._esc):
                    out.append(bytes(self._buf))
                elif self._in_frame and (self._bad or self._esc):
                    self.errors += 1
                self._in_frame = True
                self._buf.clear()
                self._esc = self._bad = False
                continue
            if not self._in_frame or self._bad:
                continue
            if self._esc:
                self._esc = False
                b ^= _XOR
                if b not in (FLAG, ESC):
                    self._bad = True
                    continue
            elif b == ESC:
                self._esc = True
                continue
            if len(self._buf) >= self.max_frame:
                self._bad = True
                self._buf.clear()
                continue
            self._buf.append(b)
        return out
