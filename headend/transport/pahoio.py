"""Fewer system calls under paho-mqtt (pinned 2.2.0): reads ahead, writes in batches.

Under load the worker's event loop spent most of its time in paho's socket I/O,
not in MQTT: paho reads a packet's fixed header byte by byte (each byte one TLS
read: 136,567 reads for 42,003 packets in a profile of `bench live`) and writes
each queued packet with its own call (a TLS record and a system call each).

`fast_io` gives one paho client two changes, both below the MQTT logic:

* its socket is wrapped in `ReadAhead`, which reads up to 64 KiB at once and
  serves paho's small reads from that buffer; `pending()` counts the buffer, so
  aiomqtt's reader loop (which calls paho again while the socket has decoded
  bytes pending, paho issue #131) drains it without waiting for epoll;
* before paho writes, consecutive queued packets that need nothing done when
  they are out (everything but a QoS 0 PUBLISH, whose callback fires then, and
  DISCONNECT) are joined into one buffer, sent with one call. Partial writes
  stay paho's business: the joined buffer is one packet to it.

* a packet already whole in that buffer is taken in one slice and handed to
  paho's packet handling (`ReadAhead.packet`), where paho's reader takes it in
  three to five reads with a dict update per byte: a PUBACK 5.8-6.2 -> 4.2-4.3
  µs, a 220-byte PUBLISH 33-36 -> 30-33 µs, reading and handling (loops of
  20,000 packets). A packet not yet whole in the buffer, or a malformed
  length, goes through paho's reader as before;
* a PUBACK of the common forms (the packet id, and "Success" or "No matching
  subscribers" with no properties) completes its PUBLISH without paho's
  decoding, which makes a reason-code and a properties object per packet and a
  debug log call: 22-35 µs per PUBACK against 3.6 µs (`timeit`-style loop of
  20,000), at 3.3 PUBACKs per uplink. Any other form goes to paho as before.

Nothing about what is sent or when it counts as delivered changes: a QoS 1
PUBLISH is complete on its PUBACK, as before.
"""

from __future__ import annotations

import collections
import socket
from collections.abc import Iterable
from typing import Any

from paho.mqtt.client import MQTT_LOG_DEBUG, Client, time_func
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.exception import MalformedPacket
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

READ_AHEAD = 65_536
JOIN_MAX = 262_144  # bytes in one joined write: bounded, a slow broker still sees progress

_PUBLISH = PacketTypes.PUBLISH << 4
_DISCONNECT = PacketTypes.DISCONNECT << 4
_PUBACK = PacketTypes.PUBACK << 4  # a joined buffer's command: one paho does nothing for
#: PUBACK reason codes taken without paho's decoding: Success, and No matching
#: subscribers (what mosquitto answers for a real-time topic nobody follows)
_PLAIN_ACKS = (0x00, 0x10)


class ReadAhead:
    """A socket (plain or TLS) whose small reads come from one larger read."""

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._buf = b""
        self._pos = 0

    def recv(self, n: int) -> bytes:
        if self._pos >= len(self._buf):
            data = self._sock.recv(READ_AHEAD)  # may raise "would block": paho handles it
            if len(data) <= n:
                return bytes(data)
            self._buf, self._pos = data, 0
        out = self._buf[self._pos : self._pos + n]
        self._pos += len(out)
        return out

    def packet(self) -> tuple[int, list[int], int, bytes] | None:
        """The next MQTT packet if the buffer holds all of it: (first byte, remaining
        length bytes, remaining length, the rest); else None, the buffer untouched
        (a packet cut by the read, or a length of more than 4 bytes: paho's reader)."""
        buf, pos = self._buf, self._pos
        end = len(buf)
        i = pos + 1
        length, shift = 0, 0
        count: list[int] = []
        while True:
            if i >= end or len(count) == 4:
                return None
            b = buf[i]
            i += 1
            count.append(b)
            length |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        if i + length > end:
            return None
        self._pos = i + length
        return buf[pos], count, length, buf[i : i + length]

    def pending(self) -> int:
        own = len(self._buf) - self._pos
        ssl_pending = getattr(self._sock, "pending", None)
        return own + (ssl_pending() if ssl_pending is not None else 0)

    def __getattr__(self, name: str) -> Any:  # send, fileno, close, setblocking, ...
        return getattr(self._sock, name)


def _join(queue: collections.deque[Any]) -> None:
    """Join the leading run of packets that need no action once written into one."""
    run: list[Any] = []
    size = 0
    while queue and size < JOIN_MAX:
        p = queue[0]
        cmd = p["command"] & 0xF0
        if cmd == _DISCONNECT or (cmd == _PUBLISH and p["qos"] == 0):
            break
        run.append(queue.popleft())
        size += p["to_process"]
    if len(run) == 1:
        queue.appendleft(run[0])  # alone: as it was
    elif run:
        buf = b"".join(bytes(p["packet"][p["pos"] :]) for p in run)
        queue.appendleft(
            {"command": _PUBACK, "mid": 0, "qos": 1, "pos": 0, "to_process": len(buf),
             "packet": buf, "info": None}
        )  # fmt: skip


def _in_packet(
    command: int = 0, count: list[int] | None = None, length: int = 0, body: bytes = b""
) -> Any:
    """paho's state of the packet being read: one read whole (its first byte, remaining
    length bytes and length, the rest), or none (no argument: what paho resets it to)."""
    count = count or []
    return {
        "command": command, "have_remaining": 1 if count else 0, "remaining_count": count,
        "remaining_mult": 1 << (7 * len(count)), "remaining_length": length,
        "packet": bytearray(body), "to_process": 0, "pos": 0,
    }  # fmt: skip


def fast_io(client: Client, options: Iterable[tuple[int, int, int]] = ()) -> Client:
    """Install the read-ahead socket and the joined writes on a paho client (before it
    connects); returns it. ``options`` are set on its socket here: aiomqtt sets its
    ``socket_options`` only on a `socket.socket`, which `ReadAhead` is not (without
    TCP_NODELAY a time-sync answer waits for the broker's delayed ACK)."""
    create = client._create_socket  # noqa: SLF001 (paho 2.2.0's socket factory)
    write = client._packet_write  # noqa: SLF001
    opts = tuple(options)

    def create_socket() -> Any:
        sock = create()
        if isinstance(sock, socket.socket):  # TCP or TLS (as aiomqtt would)
            for opt in opts:
                sock.setsockopt(*opt)
        return ReadAhead(sock)

    def packet_write() -> Any:
        _join(client._out_packet)  # noqa: SLF001
        return write()

    read = client._packet_read  # noqa: SLF001

    def packet_read() -> MQTTErrorCode:
        """paho's `_packet_read` for a packet already whole in the buffer: the same
        state handed to `_packet_handle`, the same reset and errors after it."""
        sock = client._sock  # noqa: SLF001
        if client._in_packet["command"] or not isinstance(sock, ReadAhead):  # noqa: SLF001
            return read()  # a packet half read by paho stays paho's
        whole = sock.packet()
        if whole is None:
            return read()
        command, count, length, body = whole
        client._in_packet = _in_packet(command, count, length, body)  # noqa: SLF001
        try:
            rc = client._packet_handle()  # noqa: SLF001
        except MalformedPacket as exc:
            client._easy_log(MQTT_LOG_DEBUG, "Received malformed packet: %s", exc)  # noqa: SLF001
            rc = MQTTErrorCode.MQTT_ERR_PROTOCOL
        client._in_packet = _in_packet()  # noqa: SLF001 - as paho resets it
        with client._msgtime_mutex:  # noqa: SLF001
            client._last_bytes_received = time_func()  # noqa: SLF001
        return rc

    handle_ack = client._handle_pubackcomp  # noqa: SLF001
    reasons = {code: ReasonCode(PacketTypes.PUBACK, identifier=code) for code in _PLAIN_ACKS}
    no_props = Properties(PacketTypes.PUBACK)  # type: ignore[no-untyped-call]

    def handle_pubackcomp(cmd: Any) -> MQTTErrorCode:
        packet = client._in_packet["packet"]  # noqa: SLF001
        n = len(packet)
        reason = reasons.get(packet[2] if n > 2 else 0)
        if cmd != "PUBACK" or reason is None or not 2 <= n <= 4 or (n == 4 and packet[3]):
            return handle_ack(cmd)  # properties or another reason code: paho decodes it
        mid = packet[0] << 8 | packet[1]
        with client._out_message_mutex:  # noqa: SLF001 - as paho's own handler
            if mid in client._out_messages:  # noqa: SLF001
                return client._do_on_publish(mid, reason, no_props)  # noqa: SLF001
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    client._create_socket = create_socket  # type: ignore[method-assign]  # noqa: SLF001
    client._packet_write = packet_write  # type: ignore[method-assign]  # noqa: SLF001
    client._packet_read = packet_read  # type: ignore[method-assign]  # noqa: SLF001
    client._handle_pubackcomp = handle_pubackcomp  # type: ignore[method-assign]  # noqa: SLF001
    return client
