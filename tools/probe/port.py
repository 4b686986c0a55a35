"""The optical head's serial port: pyserial, a device or a URL (``socket://``).

Sign-on and readout at 7E1, binary mode at 8N1 (a ``socket://`` URL ignores
both, as the virtual board's TCP port has no line settings). Reads wait with
deadlines. A port that cannot be opened is a `PortError`, one that fails
in use a `LinkLost`.
"""

from __future__ import annotations

import contextlib
import time

import serial

from tools.probe.errors import LinkLost, NoAnswer, PortError

#: how long one read call blocks at most (the deadline loop decides the rest)
_POLL_S = 0.05


class Port:
    """One open port. Use as a context manager; `close()` is idempotent."""

    def __init__(self, url: str, baud: int = 300) -> None:
        self.url = url
        try:
            self._s = serial.serial_for_url(
                url,
                baudrate=baud,
                bytesize=serial.SEVENBITS,
                parity=serial.PARITY_EVEN,
                stopbits=serial.STOPBITS_ONE,
                timeout=_POLL_S,
            )
        except (serial.SerialException, ValueError, OSError) as e:
            raise PortError(f"cannot open {url}: {_why(e)}") from None
        self.received = 0
        self.sent = 0

    def __enter__(self) -> Port:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(serial.SerialException, OSError):
            self._s.close()

    def set_line(self, baud: int, binary: bool) -> None:
        """Switch baud rate and format: 8N1 for binary mode, else 7E1."""
        try:
            self._s.flush()
            self._s.baudrate = baud
            self._s.bytesize = serial.EIGHTBITS if binary else serial.SEVENBITS
            self._s.parity = serial.PARITY_NONE if binary else serial.PARITY_EVEN
        except (serial.SerialException, ValueError, OSError) as e:
            raise LinkLost(f"{self.url}: cannot switch to {baud} baud: {_why(e)}") from None

    def write(self, data: bytes) -> None:
        try:
            self._s.write(data)
            self._s.flush()
        except (serial.SerialException, OSError) as e:
            raise LinkLost(f"{self.url}: write failed: {_why(e)}") from None
        self.sent += len(data)

    def discard(self) -> None:
        """Drop whatever is waiting (noise before a sign-on)."""
        try:
            self._s.reset_input_buffer()
        except (serial.SerialException, OSError) as e:
            raise LinkLost(f"{self.url}: {_why(e)}") from None

    def read(self, deadline: float) -> bytes:
        """What arrives before ``deadline`` (time.monotonic); b"" if nothing did."""
        while True:
            try:
                waiting = self._s.in_waiting
                data = self._s.read(max(1, min(waiting, 65536)))
            except (serial.SerialException, OSError) as e:
                raise LinkLost(f"{self.url}: read failed: {_why(e)}") from None
            if data:
                self.received += len(data)
                return bytes(data)
            if time.monotonic() >= deadline:
                return b""

    def expect(self, what: str, deadline: float) -> bytes:
        """Like `read`, but nothing by the deadline is a `NoAnswer` naming ``what``."""
        data = self.read(deadline)
        if not data:
            raise NoAnswer(f"no answer from the meter ({what}) on {self.url}")
        return data


def _why(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__
