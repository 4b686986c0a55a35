"""Fewer system calls under paho-mqtt (pinned 2.2.0): reads ahead, writes in batches.

Under load the worker's event loop spent most of its time in paho's socket I/O,
not in MQTT: paho reads a packet's fixed header byte by byte (each byte one TLS
read: 136,567 reads for 42,003 packets in a profile of `bench live`) and writes
each queued packet with its own call (a TLS record and a system call each).

`fast_io` gives one paho client these changes, all below the MQTT logic:

* its socket is wrapped in `ReadAhead`, which reads up to 64 KiB at once (every
  TLS record the socket has: a TLS read gives one, and the broker writes one per
  packet) and serves paho's small reads from that buffer; `pending()` counts the buffer, so
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

* `Outbound` sends QoS 1 PUBLISHes without paho's message and info objects
  (a condition variable and a log call each, and a pass over the messages in
  flight on every PUBACK): the packet packed once, at most the broker's Receive
  Maximum from its CONNACK sent (paho keeps its own 20 whatever the broker
  allows; with mosquitto's 100 the window is refilled 50 at a time, not 10), the
  rest queued in order, each completed by its PUBACK with the reason code. ~12 µs
  per publication and its PUBACK through paho, 3 per uplink;
* with ``received`` given, a QoS 0 or 1 PUBLISH of the common form (a topic
  name, no properties: what mosquitto forwards from a meter's MQTT 3.1.1
  session) goes to ``received`` as a `Received` and its PUBACK is queued, as
  paho does it, without paho's message object, its topic matching and the
  caller's conversion (~27 µs per uplink through paho and aiomqtt). Anything
  else (QoS 2, properties, a topic alias, a topic that is not UTF-8) is
  paho's, as before.

Nothing about what is sent or when it counts as delivered changes: a QoS 1
PUBLISH is complete on its PUBACK, and an incoming one is PUBACKed after it is
handed over, as before.
"""

from __future__ import annotations

import collections
import socket
import ssl
import struct
from collections.abc import Callable, Iterable
from typing import Any

from paho.mqtt._packet import decode_connack
from paho.mqtt.client import MQTT_LOG_DEBUG, Client, MQTTv5, time_func
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.exception import MalformedPacket, MQTTException
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from protocol.blocks import varint  # unsigned LEB128: MQTT's remaining length too

READ_AHEAD = 65_536
JOIN_MAX = 262_144  # bytes in one joined write: bounded, a slow broker still sees progress

_PUBLISH = PacketTypes.PUBLISH << 4
_DISCONNECT = PacketTypes.DISCONNECT << 4
_PUBACK = PacketTypes.PUBACK << 4  # a joined buffer's command: one paho does nothing for
_QOS1 = 0x02  # a PUBLISH's QoS bits for QoS 1
#: publications outstanding (in flight or queued) at most: below the 65,535 packet ids
MAX_OUTSTANDING = 60_000
RECEIVE_MAXIMUM_DEFAULT = 65_535  # MQTT 5: a CONNACK without the property
_MID = struct.Struct("!H")
#: PUBACK reason codes taken without paho's decoding: Success, and No matching
#: subscribers (what mosquitto answers for a real-time topic nobody follows)
_PLAIN_ACKS = (0x00, 0x10)


class ReadAhead:
    """A socket (plain or TLS) whose small reads come from one larger read."""

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._buf = b""
        self._pos = 0
        self._held: bytes | OSError | None = None  # what `fill` met: for the next recv

    def recv(self, n: int) -> bytes:
        if self._pos >= len(self._buf):
            held, self._held = self._held, None
            if isinstance(held, OSError):
                raise held
            if held is not None:
                return held  # the end of the stream
            data = self._sock.recv(READ_AHEAD)  # may raise "would block": paho handles it
            if len(data) <= n:
                return bytes(data)
            self._buf, self._pos = data, 0
        out = self._buf[self._pos : self._pos + n]
        self._pos += len(out)
        return out

    def fill(self) -> None:
        """Read into an empty buffer all the socket has, up to `READ_AHEAD` (a packet
        read whole needs it there from its first byte; a TLS read gives one record, and
        the broker writes a record per packet: read once, the rest waited for another
        turn of the event loop each). "Would block" is left for paho's read to meet
        again; the end of the stream and an error are kept for the next `recv` to give
        paho, after the bytes read before them."""
        if self._pos < len(self._buf) or self._held is not None:
            return
        chunks: list[bytes] = []
        size = 0
        while size < READ_AHEAD:
            try:
                data = self._sock.recv(READ_AHEAD)
            except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                break
            except OSError as e:
                self._held = e
                break
            if not data:
                self._held = b""
                break
            chunks.append(data)
            size += len(data)
        if chunks:
            self._buf, self._pos = b"".join(chunks) if len(chunks) > 1 else chunks[0], 0

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
        """Bytes readable without waiting (a positive count is all aiomqtt's loop asks;
        the TLS layer is asked only when the buffer is empty: ~5 % of the loop's time)."""
        own = len(self._buf) - self._pos
        if own:
            return own
        ssl_pending = getattr(self._sock, "pending", None)
        return ssl_pending() if ssl_pending is not None else 0

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


Done = Callable[[int], None]  # called with the PUBACK's reason code


class Outbound:
    """A paho client's QoS 1 publications, sent and completed without paho's objects.

    At most the client's in-flight limit are unacknowledged at the broker; the rest
    wait here in order and leave as PUBACKs come in. Packet ids come from paho's own
    generator (its SUBSCRIBEs use it too) and skip any still in flight.
    """

    def __init__(self, client: Client) -> None:
        self._client = client
        self.flight: dict[int, Done] = {}
        self._queue: collections.deque[tuple[int, bytes, Done]] = collections.deque()
        #: publications unacknowledged at most: the broker's Receive Maximum once its
        #: CONNACK is in (`connack`), paho's in-flight limit before and under MQTT 3.1.1
        self.limit: int = client._max_inflight_messages  # noqa: SLF001

    def connack(self, command: int, packet: bytes) -> None:
        """Take the Receive Maximum of an MQTT 5 CONNACK (65,535 when absent, MQTT 5
        3.2.2.3.3): the broker's in-flight window, paho's stays its own 20."""
        if self._client._protocol != MQTTv5:  # noqa: SLF001
            return
        try:
            props = decode_connack(command, packet, MQTTv5).properties
        except (MQTTException, ValueError, IndexError, struct.error):  # MalformedPacket is one
            return  # paho's handler, next, refuses it
        self.limit = getattr(props, "ReceiveMaximum", RECEIVE_MAXIMUM_DEFAULT)

    def _room(self) -> bool:
        return self.limit <= 0 or len(self.flight) < self.limit

    def publish(self, topic: str, payload: bytes, props: bytes, done: Done) -> bool:
        """Queue one QoS 1 PUBLISH (``props``: its packed MQTT 5 properties); ``done``
        gets the PUBACK's reason code. False: not connected, or too many outstanding."""
        c = self._client
        if c._sock is None or len(self.flight) + len(self._queue) >= MAX_OUTSTANDING:  # noqa: SLF001
            return False
        mid = c._mid_generate()  # noqa: SLF001
        while mid in self.flight:  # one left unacknowledged while the ids went round
            mid = c._mid_generate()  # noqa: SLF001
        t = topic.encode()
        head = bytes((_PUBLISH | _QOS1,)) + varint(4 + len(t) + len(props) + len(payload))
        packet = b"".join((head, _MID.pack(len(t)), t, _MID.pack(mid), props, payload))
        if self._queue or not self._room():
            self._queue.append((mid, packet, done))
        else:
            self._send(mid, packet, done)
        return True

    def _send(self, mid: int, packet: bytes, done: Done) -> None:
        self.flight[mid] = done
        self._client._packet_queue(_PUBLISH | _QOS1, packet, mid, 1)  # noqa: SLF001

    def acked(self, mid: int, reason: int) -> bool:
        """Complete the publication of packet id ``mid``; False if none is in flight."""
        done = self.flight.pop(mid, None)
        if done is None:
            return False
        if len(self.flight) <= self.limit // 2:
            # refilled in halves: a write of several packets and PUBACKs that come
            # back together, not a round of one packet each per PUBACK
            while self._queue and self._room():
                self._send(*self._queue.popleft())
        done(reason)
        return True


class Received:
    """An incoming PUBLISH taken without paho's message object."""

    __slots__ = ("mid", "payload", "qos", "retain", "topic")

    def __init__(self, topic: str, payload: bytes, qos: int, retain: bool, mid: int) -> None:
        self.topic, self.payload, self.qos, self.retain, self.mid = (
            topic, payload, qos, retain, mid
        )  # fmt: skip


def fast_io(
    client: Client,
    options: Iterable[tuple[int, int, int]] = (),
    received: Callable[[Received], None] | None = None,
) -> Outbound:
    """Install the read-ahead socket, the joined writes, `Outbound`'s PUBACKs and, with
    ``received``, the plain PUBLISHes' path on a paho client (before it connects);
    returns its `Outbound`. ``options`` are set on its socket here: aiomqtt sets its
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
        sock.fill()
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

    out = Outbound(client)

    def handle_pubackcomp(cmd: Any) -> MQTTErrorCode:
        packet = client._in_packet["packet"]  # noqa: SLF001
        n = len(packet)
        if (
            cmd == "PUBACK"
            and n >= 2
            and out.acked(packet[0] << 8 | packet[1], packet[2] if n > 2 else 0)
        ):
            return MQTTErrorCode.MQTT_ERR_SUCCESS
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
    handle_connack = client._handle_connack  # noqa: SLF001

    def connack() -> MQTTErrorCode:
        pk = client._in_packet  # noqa: SLF001
        out.connack(pk["command"], bytes(pk["packet"]))
        return handle_connack()

    client._handle_connack = connack  # type: ignore[method-assign]  # noqa: SLF001
    if received is not None:
        _take_plain_publishes(client, received)
    return out


def _take_plain_publishes(client: Client, received: Callable[[Received], None]) -> None:
    handle_publish = client._handle_publish  # noqa: SLF001

    def plain_publish() -> MQTTErrorCode:
        """paho's `_handle_publish` for a QoS 0/1 PUBLISH with a topic name and no
        properties: handed over, then PUBACKed; any other form is paho's."""
        pk = client._in_packet  # noqa: SLF001
        cmd, body = pk["command"], pk["packet"]
        qos = (cmd >> 1) & 0x03
        n = len(body)
        if qos > 1 or client._protocol != MQTTv5 or n < 2:  # noqa: SLF001
            return handle_publish()
        end = 2 + (body[0] << 8 | body[1])
        i = end + 2 * qos
        if end == 2 or i >= n or body[i]:  # a topic alias, short, or properties
            return handle_publish()
        try:
            topic = body[2:end].decode()
        except UnicodeDecodeError:
            return handle_publish()
        mid = body[end] << 8 | body[end + 1] if qos else 0
        received(Received(topic, bytes(body[i + 1 :]), qos, bool(cmd & 1), mid))
        if not qos:
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        puback = bytes((_PUBACK, 2, mid >> 8, mid & 0xFF))
        return client._packet_queue(_PUBACK, puback, mid, 1)  # noqa: SLF001

    client._handle_publish = plain_publish  # type: ignore[method-assign]  # noqa: SLF001
