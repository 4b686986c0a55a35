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

from headend.transport.pahoio import JOIN_MAX, ReadAhead, _join, fast_io

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
