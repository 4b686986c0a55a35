# Serial framing, HDLC-style (RFC 1662 4.2 byte stuffing): 7E + stuffed + 7E,
# 7E/7D inside sent as 7D, byte ^ 0x20. Every flag starts afresh, so line
# noise loses only the frames it touches.
from meter.errors import FramingError

try:
    from micropython import const
except ImportError:

    def const(x):
        return x


_FLAG = const(0x7E)
_ESC = const(0x7D)
_XOR = const(0x20)
MAX_FRAME = const(4133)  # 15 header + 4096 payload + 20 auth + 2 CRC

_HUNT = const(0)  # before the first flag: line noise, discarded uncounted
_DATA = const(1)
_ESCAPED = const(2)  # just saw 7D
_BAD = const(3)  # frame already lost (too long, bad escape): drop up to the next flag


def frame(data):
    """One frame as it goes on the line: 7E + stuffed bytes + 7E."""
    n = len(data)
    if n < 1 or n > MAX_FRAME:
        raise FramingError("frame length", "1..%d bytes" % MAX_FRAME, n)
    out = bytearray()
    out.append(_FLAG)
    for b in data:
        if b == _FLAG or b == _ESC:
            out.append(_ESC)
            out.append(b ^ _XOR)
        else:
            out.append(b)
    out.append(_FLAG)
    return bytes(out)


class Deframer:
    """Incremental receiver: feed(line bytes) -> list of complete frames (bytes).

    Frames longer than max_frame or with a bad escape (7D then anything but
    5E/5D, or 7D then a flag) are dropped and counted in .errors when their
    closing flag arrives. Back-to-back flags are empty frames, ignored. The
    buffer is preallocated once: max_frame bytes.
    """

    def __init__(self, max_frame=MAX_FRAME):
        self.max_frame = max_frame
        self.errors = 0
        self._buf = bytearray(max_frame)
        self._n = 0
        self._state = _HUNT

    def feed(self, data):
        frames = []
        buf = self._buf
        n = self._n
        st = self._state
        for b in data:
            if b == _FLAG:
                if st == _DATA:
                    if n:
                        frames.append(bytes(buf[0:n]))
                elif st != _HUNT:  # _ESCAPED or _BAD: the frame is lost
                    self.errors += 1
                n = 0
                st = _DATA
                continue
            if st == _DATA:
                if b == _ESC:
                    st = _ESCAPED
                    continue
            elif st == _ESCAPED:
                b ^= _XOR
                if b != _FLAG and b != _ESC:
                    st = _BAD
                    continue
                st = _DATA
            else:  # _HUNT, _BAD
                continue
            if n >= self.max_frame:
                st = _BAD
                continue
            buf[n] = b
            n += 1
        self._n = n
        self._state = st
        return frames

    def reset(self):
        """Forget any partial frame; wait for the next flag."""
        self._n = 0
        self._state = _HUNT
