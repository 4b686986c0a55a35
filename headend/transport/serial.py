"""Serial link (pyserial-asyncio-fast): a point-to-point line or a multi-drop bus.

Frames are HDLC-framed (protocol.hdlc). Every frame carries its meter id, so
one line can serve many meters: the line learns which meters answer on it,
and every meter on a bus sees every downlink and keeps only its own. Any
pyserial URL works: /dev/ttyUSB0, socket://host:port, loop://.
"""

from __future__ import annotations

import asyncio
import logging
import struct

import serial_asyncio_fast

from headend.transport.base import Deliver, TransportError, Uplink, backoff_s
from protocol.hdlc import Deframer, stuff
from protocol.schema import HEADER_LEN

log = logging.getLogger(__name__)


class SerialTransport:
    """Args: url (any pyserial URL), baudrate."""

    def __init__(self, url: str, baudrate: int = 19200) -> None:
        self.name = f"serial:{url}"
        self.url = url
        self.baudrate = baudrate
        self.meters: set[int] = set()  # meters heard on this line
        self._writer: asyncio.StreamWriter | None = None
        self.connected = asyncio.Event()
        self.line_errors = 0

    async def run(self, deliver: Deliver) -> None:
        attempt = 0
        while True:
            try:
                reader, writer = await serial_asyncio_fast.open_serial_connection(
                    url=self.url, baudrate=self.baudrate
                )
            except (OSError, ValueError) as e:
                delay = backoff_s(attempt)
                attempt += 1
                log.warning("serial %s unavailable (%s); retry in %.1f s", self.url, e, delay)
                await asyncio.sleep(delay)
                continue
            self._writer = writer
            self.connected.set()
            attempt = 0
            deframer = Deframer()
            try:
                while True:
                    chunk = await reader.read(4096)
                    if not chunk:
                        break
                    for frame in deframer.feed(chunk):
                        if len(frame) < HEADER_LEN:
                            self.line_errors += 1
                            continue
                        meter = struct.unpack_from(">I", frame, 5)[0]
                        self.meters.add(meter)
                        await deliver(Uplink(meter, frame, self.name))
                    self.line_errors = deframer.errors
            except OSError as e:
                log.warning("serial %s failed: %s", self.url, e)
            finally:
                self._writer = None
                self.connected.clear()
                writer.close()

    async def send(self, meter_id: int, frame: bytes, expiry_s: int | None = None) -> None:
        # a serial line queues nothing: ``expiry_s`` has nothing to drop
        w = self._writer
        if w is None:
            raise TransportError(f"serial line {self.url} is not open")
        try:
            w.write(stuff(frame))
            await w.drain()
        except OSError as e:
            raise TransportError(f"serial line {self.url}: {e}") from e
