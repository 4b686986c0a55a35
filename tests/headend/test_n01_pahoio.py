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
