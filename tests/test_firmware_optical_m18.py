"""The optical port of firmware/main.py on the real MicroPython binary (M18, M20, N06).

A virtual board (`hil.board.VirtualBoard`, no broker: the meter records on its
own) serves IEC 62056-21 on its optical TCP port; the test is the probe, with
the host's codec (protocol.frame, protocol.hdlc, protocol.auth.probe_key):
a mode C readout, then mode E's binary mode and the authenticated download,
while the meter keeps recording; a wrong key and line noise leave it unharmed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from hil.board import BoardSpec, VirtualBoard
from hil.wait import wait_until
from protocol.auth import download_mac, probe_key, verify_frame
from protocol.frame import decode, encode
from protocol.hdlc import Deframer, stuff

MID = 4711
T0 = 1772323200  # 2026-03-01T00:00:00Z
OPERATOR = 42

pytestmark = pytest.mark.mpy


def _run(tmp: Path, scenario: Callable[[VirtualBoard], Awaitable[None]]) -> None:
    spec = BoardSpec(MID, tmp / "flash", speed=1200, sim_start=T0, flat_wh=(100, 0, 30, 0))

    async def main() -> None:
        async with VirtualBoard(spec) as board:
            await scenario(board)

    asyncio.run(asyncio.wait_for(main(), 120))


class Probe:
    """A minimal optical probe over the board's TCP port (byte stream only)."""

    def __init__(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.r, self.w = r, w
        self.buf = b""
        self.de = Deframer()
        self.frames: list[bytes] = []
        self.seq = 0

    async def send(self, data: bytes) -> None:
        self.w.write(data)
        await self.w.drain()

    async def until(self, end: bytes, extra: int = 0) -> bytes:
        """Bytes up to and including `end` (and `extra` bytes after it)."""
        while True:
            i = self.buf.find(end)
            if i >= 0 and len(self.buf) >= i + len(end) + extra:
                got, self.buf = self.buf[: i + len(end) + extra], self.buf[i + len(end) + extra :]
                return got
            chunk = await asyncio.wait_for(self.r.read(4096), 10)
            assert chunk, "the optical port closed"
            self.buf += chunk

    async def frame(self) -> dict[str, Any]:
        """The next HDLC frame, decoded (the raw bytes under "raw")."""
        while not self.frames:
            self.frames += self.de.feed(self.buf)
            self.buf = b""
            if not self.frames:
                chunk = await asyncio.wait_for(self.r.read(4096), 10)
                assert chunk, "the optical port closed"
                self.buf = chunk
        raw = self.frames.pop(0)
        return dict(decode(raw), raw=raw)

    async def unsigned(self, mtype: str, body: dict[str, Any]) -> None:
        self.seq += 1
        f = {"type": mtype, "seq": self.seq, "meter_id": MID, "timestamp": T0, "auth": None}
        await self.send(stuff(encode(dict(f, body=body))))


async def _binary(board: VirtualBoard) -> Probe:
    r, w = await asyncio.open_connection("127.0.0.1", board.spec.optical_port)
    p = Probe(r, w)
    await p.send(b"/?%d!\r\n" % MID)
    ident = await p.until(b"\r\n")
    assert ident == b"/AMI6\\2%d\r\n" % MID
    await p.send(b"\x06262\r\n")  # binary mode at 19,200 baud
    return p


def test_m18_iec_readout_on_the_virtual_boards_optical_port(tmp_path: Path) -> None:
    async def scenario(board: VirtualBoard) -> None:
        assert board.optical_url == f"socket://127.0.0.1:{board.spec.optical_port}"
        r, w = await asyncio.open_connection("127.0.0.1", board.spec.optical_port)
        p = Probe(r, w)
        await p.send(b"/?999!\r\n")  # another meter's address: no answer
        await p.send(b"/?!\r\n")
        assert await p.until(b"\r\n") == b"/AMI6\\2%d\r\n" % MID
        await p.send(b"\x06050\r\n")  # readout at 9,600
        block = await p.until(b"\x03", extra=1)
        assert block[0] == 0x02
        bcc = 0
        for b in block[1:-1]:
            bcc ^= b
        assert block[-1] == bcc
        text = block[1:-2].decode()
        assert text.endswith("!\r\n")
        sets = dict(line[:-1].split("(", 1) for line in text.split("\r\n")[:-2])
        assert sets["0.0.0"] == sets["C.1.0"] == str(MID)
        assert sets["1.8.0"].endswith("*Wh") and sets["3.8.0"].endswith("*varh")
        assert sets["0.2.0"].startswith("ami-fw")
        assert len(sets["F.F"]) == 8
        # the port is idle again: a new sign-on answers
        await p.send(b"/?!\r\n")
        assert (await p.until(b"\r\n")).startswith(b"/AMI6")
        w.close()

    _run(tmp_path, scenario)


def test_m18_m20_n06_download_while_recording_wrong_key_and_noise(tmp_path: Path) -> None:
    async def scenario(board: VirtualBoard) -> None:
        key = board.spec.key
        kop = probe_key(key, OPERATOR)
        await wait_until(board.last_closed, 30, "a closed interval")
        p = await _binary(board)
        await p.send(b"\x7e\x01\x02garbage\x7e\x7d\x7e" + bytes(range(256)))  # line noise
        # a wrong key: nack auth_failed (signed with K_op), the meter carries on
        await p.unsigned("download_open", {"operator": OPERATOR})
        ch = await p.frame()
        assert ch["type"] == "download_challenge"
        verify_frame(ch["raw"], kop)
        bad = download_mac(probe_key(bytes(32), OPERATOR), ch["body"]["nonce"], OPERATOR)
        await p.unsigned("download_auth", {"operator": OPERATOR, "mac": bad})
        nack = await p.frame()
        assert nack["type"] == "nack" and nack["body"]["reason"] == 3
        # the right key: every part, signed with K_op, while the meter records
        before = await board.last_closed()
        await p.unsigned("download_open", {"operator": OPERATOR})
        ch = await p.frame()
        mac = download_mac(kop, ch["body"]["nonce"], OPERATOR)
        await p.unsigned("download_auth", {"operator": OPERATOR, "mac": mac})
        parts: list[dict[str, Any]] = []
        while not parts or len(parts) < parts[0]["body"]["parts"]:
            f = await p.frame()
            assert f["type"] == "download_data"
            verify_frame(f["raw"], kop)
            parts.append(f)
        assert [f["body"]["part"] for f in parts] == list(range(len(parts)))
        tags = {s["tag"] for f in parts for s in f["body"]["sections"]}
        assert {"clock", "registers", "intervals", "events", "schedules", "config"} <= tags
        codes = [
            e["code"]
            for f in parts
            for s in f["body"]["sections"]
            if s["tag"] == "events"
            for e in s["body"]
        ]
        assert codes.count(10) == 1 and codes[-1] == 9  # the denied try, then this grant
        # a replayed download_auth: refused
        await p.unsigned("download_auth", {"operator": OPERATOR, "mac": mac})
        again = await p.frame()
        assert again["type"] == "nack" and again["body"]["reason"] == 4
        p.w.close()

        async def recorded() -> bool:
            last = await board.last_closed()
            return last is not None and before is not None and last > before

        await wait_until(recorded, 30, "intervals still closing after the download")
        st = await board.status()
        assert st["errors"] == 0

    _run(tmp_path, scenario)


def test_m18_frame_right_behind_the_option_select_is_not_lost(tmp_path: Path) -> None:
    async def scenario(board: VirtualBoard) -> None:
        r, w = await asyncio.open_connection("127.0.0.1", board.spec.optical_port)
        p = Probe(r, w)
        await p.send(b"/?!\r\n")
        await p.until(b"\r\n")
        f = {"type": "download_open", "seq": 1, "meter_id": MID, "timestamp": T0, "auth": None}
        # the option select and the first frame in one write (one TCP segment)
        await p.send(b"\x06262\r\n" + stuff(encode(dict(f, body={"operator": OPERATOR}))))
        ch = await p.frame()
        assert ch["type"] == "download_challenge"
        verify_frame(ch["raw"], probe_key(board.spec.key, OPERATOR))
        w.close()

    _run(tmp_path, scenario)


def test_m18_aborted_link_mid_download_leaves_the_meter_unharmed(tmp_path: Path) -> None:
    async def scenario(board: VirtualBoard) -> None:
        kop = probe_key(board.spec.key, OPERATOR)
        await wait_until(board.last_closed, 30, "a closed interval")
        for attempt in range(2):
            p = await _binary(board)
            await p.unsigned("download_open", {"operator": OPERATOR})
            ch = await p.frame()
            mac = download_mac(kop, ch["body"]["nonce"], OPERATOR)
            await p.unsigned("download_auth", {"operator": OPERATOR, "mac": mac})
            if attempt == 0:
                p.w.close()  # the probe falls off before a part is read
                continue
            first = await p.frame()  # a new link: the whole download again
            parts = [first] + [await p.frame() for _ in range(first["body"]["parts"] - 1)]
            assert [f["body"]["part"] for f in parts] == list(range(len(parts)))
            p.w.close()
        before = await board.last_closed()

        async def recorded() -> bool:
            last = await board.last_closed()
            return last is not None and before is not None and last > before

        await wait_until(recorded, 30, "intervals still closing")
        assert (await board.status())["errors"] == 0

    _run(tmp_path, scenario)
