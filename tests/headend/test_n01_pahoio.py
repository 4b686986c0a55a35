"""The paho socket I/O changes (`headend.transport.pahoio`): what paho reads and what
it writes is byte for byte the same; only the number of system calls changes. The
MQTT path itself is covered by every test that runs the service over mosquitto."""

from __future__ import annotations

import collections
import socket
import ssl
from typing import Any

import pytest
from paho.mqtt.client import CallbackAPIVersion, Client
from paho.mqtt.exception import MalformedPacket

from headend.transport.pahoio import (
    JOIN_MAX,
    MAX_OUTSTANDING,
    Outbound,
    ReadAhead,
    Received,
    _join,
    fast_io,
)

pytestmark = [pytest.mark.req("N01"), pytest.mark.timeout(20)]


class Sock:
    """Hands out its chunks one recv at a time; then "would block" (as TLS does)."""

    def __init__(self, *chunks: bytes) -> None:
        self.chunks = list(chunks)
        self.calls = 0

    def recv(self, n: int) -> bytes:
        self.calls += 1
        if not self.chunks:
            raise ssl.SSLWantReadError
        c = self.chunks.pop(0)
        assert len(c) <= n  # the kernel never returns more than asked
        return c

    def fileno(self) -> int:
        return 42


def test_n01_read_ahead_serves_small_reads_from_one_large_one() -> None:
    data = bytes(range(256)) * 40  # 10,240 bytes in one TLS read
    sock = Sock(data, b"tail")
    r = ReadAhead(sock)
    got = b""
    while len(got) < len(data):  # paho's pattern: 1, 1, then the rest of a packet
        got += r.recv(1) + r.recv(1) + r.recv(98)
    assert got == data and sock.calls == 1 and r.pending() == 0
    assert r.recv(10) == b"tail" and sock.calls == 2
    with pytest.raises(ssl.SSLWantReadError):  # nothing buffered, nothing on the wire
        r.recv(1)
    assert r.fileno() == 42  # everything else is the socket's


def test_n01_read_ahead_counts_what_it_holds_as_pending() -> None:
    r = ReadAhead(Sock(b"abcdef"))
    assert r.pending() == 0
    assert r.recv(2) == b"ab" and r.pending() == 4
    assert r.recv(100) == b"cdef" and r.pending() == 0


def test_n01_read_ahead_asks_tls_for_pending_bytes_only_when_its_buffer_is_empty() -> None:
    class TlsSock(Sock):
        asked = 0

        def pending(self) -> int:  # a decrypted record's bytes the TLS layer still holds
            self.asked += 1
            return 3

    sock = TlsSock(b"abcdef")
    r = ReadAhead(sock)
    assert r.pending() == 3 and sock.asked == 1  # empty buffer: the TLS layer's count
    assert r.recv(2) == b"ab" and r.pending() == 4 and sock.asked == 1  # not asked
    assert r.recv(4) == b"cdef" and r.pending() == 3 and sock.asked == 2


def test_n01_read_ahead_passes_end_of_stream_on() -> None:
    r = ReadAhead(Sock(b""))
    assert r.recv(1) == b""  # paho: connection lost


def _pkt(cmd: int, body: bytes, qos: int = 1, pos: int = 0) -> dict[str, Any]:
    return {"command": cmd, "mid": 7, "qos": qos, "pos": pos, "to_process": len(body) - pos,
            "packet": body, "info": None}  # fmt: skip


def _wire(queue: collections.deque[dict[str, Any]]) -> bytes:
    return b"".join(bytes(p["packet"][p["pos"] :]) for p in queue)


def test_n01_joined_writes_keep_the_bytes_and_the_packets_that_need_an_action() -> None:
    q = collections.deque(
        [
            _pkt(0x40, b"\x40\x02\x00\x01"),  # PUBACK
            _pkt(0x32, b"\x32\x05abcde", pos=2),  # QoS 1 PUBLISH, 2 bytes already out
            _pkt(0x32, b"\x32\x03xyz"),
            _pkt(0x30, b"\x30\x02qq", qos=0),  # QoS 0 PUBLISH: its callback fires when out
            _pkt(0x40, b"\x40\x02\x00\x02"),
            _pkt(0xE0, b"\xe0\x00"),  # DISCONNECT
        ]
    )
    before = _wire(q)
    _join(q)
    assert _wire(q) == before  # the same bytes in the same order
    assert [p["command"] for p in q] == [0x40, 0x30, 0x40, 0xE0]
    assert q[0]["to_process"] == len(q[0]["packet"]) == 4 + 5 + 5
    assert q[1]["qos"] == 0 and q[1]["mid"] == 7  # untouched, for paho's callback


def test_n01_a_lone_packet_is_left_as_it_was() -> None:
    p = _pkt(0x32, b"\x32\x03xyz", pos=1)
    q = collections.deque([p])
    _join(q)
    assert list(q) == [p] and q[0] is p


def test_n01_a_joined_write_is_bounded() -> None:
    big = b"\x32" + b"x" * 99_999
    q = collections.deque(_pkt(0x32, big) for _ in range(10))
    _join(q)
    assert len(q[0]["packet"]) <= JOIN_MAX + len(big) and len(q) > 1
    assert _wire(q) == big * 10


def test_n01_the_link_socket_keeps_its_options_under_read_ahead() -> None:
    """aiomqtt sets ``socket_options`` only on a `socket.socket`: `fast_io` sets them
    itself (without TCP_NODELAY a time-sync answer waits ~40 ms for a delayed ACK)."""
    client = Client(CallbackAPIVersion.VERSION2)
    client._create_socket = lambda: socket.socket()  # type: ignore[method-assign]  # noqa: SLF001
    fast_io(client, ((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),))
    sock = client._create_socket()  # noqa: SLF001
    try:
        assert isinstance(sock, ReadAhead)
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    finally:
        sock.close()


def _acked(packet: bytes) -> tuple[Client, list[tuple[int, int]], Any]:
    """A v5 client with `fast_io`, one QoS 1 PUBLISH queued, then a PUBACK ``packet``
    (its body after the fixed header, ``%(mid)`` filled in) handled."""
    from paho.mqtt.client import MQTTv5

    client = Client(CallbackAPIVersion.VERSION2, protocol=MQTTv5)
    fast_io(client)
    seen: list[tuple[int, int]] = []
    client.on_publish = lambda _c, _u, mid, rc, _p: seen.append((mid, rc.value))
    info = client.publish("ami/v1/1/down", b"x", qos=1)  # not connected: kept, in flight
    body = packet.replace(b"MI", info.mid.to_bytes(2, "big"))
    client._in_packet = {"command": 0x40, "packet": body}  # noqa: SLF001
    assert client._handle_pubackcomp("PUBACK") == 0  # noqa: SLF001
    return client, seen, info


def test_n01_a_plain_puback_completes_its_publish_as_paho_would(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from paho.mqtt import _packet

    decoded: list[bytes] = []
    real = _packet.decode_puback
    monkeypatch.setattr(
        _packet, "decode_puback", lambda h, p, v: decoded.append(bytes(p)) or real(h, p, v)
    )
    client, seen, info = _acked(b"MI")  # 2 bytes: "Success", no properties
    assert seen == [(info.mid, 0)] and decoded == []  # not through paho's decoding
    assert info.mid not in client._out_messages  # noqa: SLF001 - complete, no longer kept
    for body in (b"MI\x10", b"MI\x10\x00"):  # No matching subscribers (no properties)
        client, seen, info = _acked(body)
        assert seen == [(info.mid, 16)] and decoded == []
        assert info.mid not in client._out_messages  # noqa: SLF001
    # a failure code, a property, a short packet: paho's own decoding, as before
    client, seen, info = _acked(b"MI\x97")  # quota exceeded
    assert seen == [(info.mid, 0x97)] and len(decoded) == 1
    assert info.mid not in client._out_messages  # noqa: SLF001
    client, seen, info = _acked(b"MI\x00\x03\x1f\x00\x00")  # a reason string property
    assert seen == [(info.mid, 0)] and len(decoded) == 2
    with pytest.raises(Exception, match="size"):  # paho's MalformedPacket, as without fast_io
        _acked(b"M")
    client, seen, info = _acked(b"\xff\xfe")  # a packet id not in flight: nothing completes
    assert seen == []
    assert info.mid in client._out_messages  # noqa: SLF001


class Stream:
    """A socket whose reads hand out ``chunks`` (each as the kernel would: at most
    what is asked), then "would block"; with ``gaps``, "would block" once after each
    chunk too (the next one not arrived yet); what is sent is kept."""

    def __init__(self, chunks: list[bytes], gaps: bool = False) -> None:
        self.chunks = [c for c in chunks if c]
        self.sent = b""
        self.gaps = gaps
        self._gap = False

    def recv(self, n: int) -> bytes:
        if not self.chunks or self._gap:
            self._gap = False
            raise ssl.SSLWantReadError
        c = self.chunks[0]
        self.chunks[0] = c[n:]
        if not self.chunks[0]:
            self.chunks.pop(0)
            self._gap = self.gaps
        return c[:n]

    def send(self, data: bytes) -> int:
        self.sent += bytes(data)
        return len(data)

    def pending(self) -> int:
        return 0

    def fileno(self) -> int:
        return 42

    def close(self) -> None:
        self.chunks = []


def _publish(topic: bytes, payload: bytes, qos: int, mid: int = 0, props: bytes = b"\x00") -> bytes:
    var = len(topic).to_bytes(2, "big") + topic + (mid.to_bytes(2, "big") if qos else b"")
    rest = var + props + payload  # props: MQTT 5 properties with their length
    n, length = len(rest), b""
    while True:
        n, b = n >> 7, n & 0x7F
        length += bytes([b | (0x80 if n else 0)])
        if not n:
            return bytes([0x30 | qos << 1]) + length + rest


class Counted(ReadAhead):
    """`ReadAhead` counting the packets it hands out whole."""

    whole = 0

    def packet(self) -> tuple[int, list[int], int, bytes] | None:
        p = super().packet()
        Counted.whole += p is not None
        return p


def _read_all(
    chunks: list[bytes], fast: bool, plain: list[Received] | None = None, gaps: bool = False
) -> tuple[list[Any], bytes]:
    """What a v5 client with a QoS 1 PUBLISH of its own in flight does with the byte
    stream ``chunks``: its callbacks, in order, and what it sends back (with
    ``plain``: the PUBLISHes taken without paho's objects go there too)."""
    from paho.mqtt.client import MQTTv5

    client = Client(CallbackAPIVersion.VERSION2, protocol=MQTTv5)
    seen: list[Any] = []
    client.on_publish = lambda _c, _u, mid, rc, _p: seen.append(("acked", mid, rc.value))
    client.on_message = lambda _c, _u, m: seen.append(("msg", m.topic, m.payload, m.qos, m.mid))

    def received(m: Received) -> None:
        assert plain is not None
        plain.append(m)
        seen.append(("msg", m.topic, m.payload, m.qos, m.mid))

    if fast:
        fast_io(client, received=None if plain is None else received)
    client.publish("ami/v1/1/down", b"x", qos=1)  # mid 1, in flight
    stream = Stream(chunks, gaps)
    client._sock = Counted(stream) if fast else stream  # type: ignore[assignment]  # noqa: SLF001
    for _ in range(2 * len(b"".join(chunks)) + 2):  # as aiomqtt: while readable or pending
        assert client.loop_read() == 0
    assert client._in_packet["command"] == 0  # noqa: SLF001 - nothing left half read
    return seen, stream.sent


def test_n01_whole_packets_in_the_buffer_are_handled_as_paho_reads_them() -> None:
    """Packets taken in one slice from the read-ahead buffer give paho's handling the
    same packets as its own byte-by-byte reader: the same callbacks in the same
    order, the same PUBACKs sent back; a packet cut between two reads (here at every
    byte, and where a 2-byte remaining length is cut) is completed by paho's reader."""
    stream = (
        b"\x40\x02\x00\x01"  # PUBACK of mid 1
        + _publish(b"ami/v1/up/7", b"a" * 10, 0)
        + _publish(b"ami/v1/up/8", b"b" * 300, 1, mid=5)  # a 2-byte remaining length
        + b"\xd0\x00"  # PINGRESP: no body
        + _publish(b"ami/v1/up/9", b"", 1, mid=6)
    )
    want, sent = _read_all([stream], fast=False)
    assert [w[0] for w in want] == ["acked", "msg", "msg", "msg"]
    assert want[2][2] == b"b" * 300 and sent == b"\x40\x02\x00\x05\x40\x02\x00\x06"
    cuts = [[stream], [stream[:5], stream[5:]], [stream[:24], stream[24:]]]
    cuts.append([stream[i : i + 1] for i in range(len(stream))])  # one byte per read
    cuts.append([stream[i : i + 37] for i in range(0, len(stream), 37)])
    whole = []
    for gaps in (False, True):  # every chunk there at once; each after a "would block"
        for chunks in cuts:
            Counted.whole = 0
            assert _read_all(chunks, fast=True, gaps=gaps) == (want, sent)
            whole.append(Counted.whole)
    # there at once: all five taken whole (the buffer is filled with every chunk the
    # socket has); a byte per read, each after a gap: none (paho's reader completes
    # each packet cut by a gap)
    assert whole[:5] == [5] * 5 and whole[5] == 5 and whole[8] == 0 and whole[9] >= 1


def test_n01_a_fill_keeps_the_end_of_the_stream_and_errors_for_paho() -> None:
    r = ReadAhead(Sock())
    r.fill()  # "would block": nothing kept, paho's own read meets it again
    with pytest.raises(ssl.SSLWantReadError):
        r.recv(1)
    r = ReadAhead(Sock(b""))
    r.fill()
    assert r.packet() is None and r.recv(1) == b""  # paho: connection lost

    class Reset(Sock):
        def recv(self, n: int) -> bytes:
            raise ConnectionResetError("reset by peer")

    r = ReadAhead(Reset())
    r.fill()
    with pytest.raises(ConnectionResetError):  # paho logs it and reports a lost link
        r.recv(1)
    r = ReadAhead(Sock(b"\x40\x02\x00", b"\x01more"))
    r.fill()  # every record the socket has, joined (a packet cut between two is whole)
    r.fill()  # the buffer holds bytes: no second read
    assert r.packet() == (0x40, [0x02], 2, b"\x00\x01") and r.recv(10) == b"more"
    r = ReadAhead(Sock(b"\xd0\x00", b""))  # the end of the stream after a packet
    r.fill()
    assert r.packet() == (0xD0, [0x00], 0, b"") and r.recv(1) == b""


def test_n01_read_ahead_hands_out_only_whole_packets() -> None:
    r = ReadAhead(Sock(b"\x40\x02\x00\x01\xd0\x00\x30\x80"))
    assert r.packet() is None  # nothing read yet: paho's reader reads
    assert r.recv(4) == b"\x40\x02\x00\x01"  # paho's reader, one packet
    assert r.packet() == (0xD0, [0x00], 0, b"")
    assert r.packet() is None and r.recv(2) == b"\x30\x80"  # length cut: untouched
    r = ReadAhead(Sock(b"\x30\xff\xff\xff\xff\x01" + b"x" * 20))
    r.recv(0)
    assert r.packet() is None  # a 5-byte length: paho's reader refuses it


def test_n01_plain_publishes_are_taken_as_paho_takes_them() -> None:
    """A QoS 0 or 1 PUBLISH with a topic name and no properties goes to the receiver
    without paho's objects: the same messages in the same order, the same PUBACKs
    after them, cut any way; one with properties, or QoS 2, is paho's as before."""
    stream = (
        _publish(b"ami/v1/7/up", b"a" * 10, 0)
        + b"\x40\x02\x00\x01"  # PUBACK of the client's own mid 1
        + _publish(b"ami/v1/8/up", b"b" * 300, 1, mid=5)
        + _publish(b"ami/v1/9/up", b"c", 1, mid=6, props=b"\x02\x01\x01")  # payload format
        + _publish(b"ami/v1/10/up", b"d", 2, mid=7)  # QoS 2: PUBREC, paho's
        + _publish(b"ami/v1/11/up", b"", 1, mid=8)
    )
    want, sent = _read_all([stream], fast=False)
    assert [w[0] for w in want] == ["msg", "acked", "msg", "msg", "msg"]  # QoS 2: on PUBREL
    assert sent == b"\x40\x02\x00\x05\x40\x02\x00\x06\x50\x02\x00\x07\x40\x02\x00\x08"
    cuts = [[stream], [stream[i : i + 1] for i in range(len(stream))]]
    cuts.append([stream[i : i + 37] for i in range(0, len(stream), 37)])
    for chunks in cuts:
        plain: list[Received] = []
        assert _read_all(chunks, fast=True, plain=plain) == (want, sent)
        assert [(m.topic, m.qos, m.mid) for m in plain] == [
            ("ami/v1/7/up", 0, 0),
            ("ami/v1/8/up", 1, 5),
            ("ami/v1/11/up", 1, 8),
        ]
        assert all(isinstance(m.payload, bytes) and not m.retain for m in plain)


def _connected(limit: int = 20) -> tuple[Client, Outbound, Stream]:
    from paho.mqtt.client import MQTTv5

    client = Client(CallbackAPIVersion.VERSION2, protocol=MQTTv5)
    out = fast_io(client)
    out.limit = limit
    stream = Stream([])
    client._sock = stream  # type: ignore[assignment]  # noqa: SLF001
    return client, out, stream


def _paho_packet(topic: str, payload: bytes, mid: int, expiry: int | None) -> bytes:
    """What paho itself sends for this QoS 1 publication."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    client, _, stream = _connected()
    props = None
    if expiry is not None:
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.MessageExpiryInterval = expiry
    client._last_mid = mid - 1  # noqa: SLF001
    client.publish(topic, payload, 1, False, props)
    return stream.sent


def test_n01_outbound_sends_what_paho_sends_and_completes_on_the_puback() -> None:
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    expiry = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    expiry.MessageExpiryInterval = 30
    for topic, payload, props, exp in [
        ("ami/v1/1/down", b"ack", b"\x00", None),
        ("ami/v1/rt/4294967295", b"x" * 5000, b"\x00", None),  # a 2-byte remaining length
        ("ami/v1/2/down", b"t", bytes(expiry.pack()), 30),  # type: ignore[no-untyped-call]
        ("ami/v1/3/down", b"y" * 200_000, b"\x00", None),  # a 3-byte remaining length
    ]:
        client, out, stream = _connected()
        done: list[int] = []
        assert out.publish(topic, payload, props, done.append)
        mid = client._last_mid  # noqa: SLF001
        assert stream.sent == _paho_packet(topic, payload, mid, exp)
        client._in_packet = {"command": 0x40, "packet": bytearray(mid.to_bytes(2, "big"))}  # noqa: SLF001
        assert client._handle_pubackcomp("PUBACK") == 0 and done == [0]  # noqa: SLF001
        assert out.flight == {}


def test_n01_outbound_keeps_the_in_flight_limit_and_the_order() -> None:
    """At most the in-flight limit unacknowledged; the rest leave in order, refilled
    once half the window is acknowledged; each completes with its reason code."""
    client, out, stream = _connected(limit=4)
    done: list[tuple[int, int]] = []
    for i in range(10):
        assert out.publish(f"t/{i}", b"p", b"\x00", lambda rc, i=i: done.append((i, rc)))
    assert len(out.flight) == 4 and stream.sent.count(b"\x32\x09\x00\x03t/") == 4

    def puback(mid: int, body: bytes = b"") -> None:
        client._in_packet = {"command": 0x40, "packet": bytearray(mid.to_bytes(2, "big") + body)}  # noqa: SLF001
        assert client._handle_pubackcomp("PUBACK") == 0  # noqa: SLF001

    first = list(out.flight)
    puback(first[0])
    assert len(out.flight) == 3  # 3 of 4 still out: more than half, no refill yet
    puback(first[1], b"\x10")  # "No matching subscribers"
    assert len(out.flight) == 4  # half acknowledged: refilled to the limit
    puback(first[2], b"\x87")  # "Not authorized": completes with its code
    puback(first[3])
    while out.flight:
        puback(next(iter(out.flight)))
    assert [i for i, _ in done] == list(range(10))
    assert done[1] == (1, 0x10) and done[2] == (2, 0x87)
    topics = [stream.sent.find(f"t/{i}".encode()) for i in range(10)]
    assert topics == sorted(topics) and -1 not in topics  # sent in publication order
    puback(first[0])  # a PUBACK for nothing in flight completes nothing
    assert len(done) == 10


def test_n01_outbound_refuses_when_not_connected_or_full_and_skips_ids_in_flight() -> None:
    client, out, _ = _connected(limit=2)
    done: list[int] = []
    assert out.publish("t", b"p", b"\x00", done.append)
    stuck = next(iter(out.flight))
    client._last_mid = stuck - 1  # noqa: SLF001 - the ids went round while it stayed out
    assert out.publish("t", b"p", b"\x00", done.append)
    assert len(out.flight) == 2 and stuck in out.flight  # the new one took another id
    client._sock = None  # noqa: SLF001
    assert not out.publish("t", b"p", b"\x00", done.append)
    client, out, _ = _connected(limit=1)
    for _ in range(MAX_OUTSTANDING):
        assert out.publish("t", b"", b"\x00", done.append)
    assert not out.publish("t", b"", b"\x00", done.append)  # packet ids would repeat


def test_n01_outbound_takes_the_brokers_receive_maximum_from_its_connack() -> None:
    """MQTT 5: the window is the CONNACK's Receive Maximum (65,535 when absent),
    whatever paho's own limit; MQTT 3.1.1 keeps paho's; a malformed CONNACK changes
    nothing here (paho's handler refuses it)."""
    from paho.mqtt.client import MQTTv5, MQTTv311
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    cut_short = b"\x00\x00\x05\x21"  # a property length of 5, one byte of them

    def connack(protocol: int, body: bytes) -> Outbound:
        client = Client(CallbackAPIVersion.VERSION2, protocol=protocol)
        out = fast_io(client)
        client._in_packet = {"command": 0x20, "packet": bytearray(body)}  # noqa: SLF001
        try:
            client._handle_connack()  # noqa: SLF001
        except MalformedPacket:
            assert body == cut_short
        return out

    props = Properties(PacketTypes.CONNACK)  # type: ignore[no-untyped-call]
    props.ReceiveMaximum = 7
    with_max = b"\x00\x00" + bytes(props.pack())  # type: ignore[no-untyped-call]
    out = connack(MQTTv5, with_max)
    assert out.limit == 7 and out._client._max_inflight_messages == 20  # noqa: SLF001
    assert connack(MQTTv5, b"\x00\x00\x00").limit == 65_535
    assert connack(MQTTv311, b"\x00\x00").limit == 20
    assert connack(MQTTv5, cut_short).limit == 20  # paho's handler refuses it
    client, out, stream = _connected(limit=7)
    for i in range(9):
        assert out.publish(f"t/{i}", b"p", b"\x00", lambda rc: None)
    assert len(out.flight) == 7 and stream.sent.count(b"\x32\x09\x00\x03t/") == 7
