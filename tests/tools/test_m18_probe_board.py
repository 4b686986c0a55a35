"""M18, M20, N06, D12: the probe (`python -m tools.probe`) against a virtual board's
optical port (the real firmware on the MicroPython binary), then `headend upload`.

The CLI runs as a user runs it (a subprocess); the raw-frame cases (replay,
abort) drive the probe's own session pieces over the same port. The meter
keeps recording throughout: every test checks it closes intervals afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import stat
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from bench.download import METER_ID, T_END, prefill
from headend.cli import main as headend_main
from headend.store import Channel, ChannelKind, Meter, Source, Unit, open_store
from hil.board import BoardSpec, VirtualBoard
from hil.loadprofile import DEFAULT_CSV
from hil.wait import wait_until
from protocol.auth import download_mac, probe_key
from protocol.codes import Event, Nack
from tests.support.cli import ROOT
from tools.probe.port import Port
from tools.probe.session import FrameLink, enter_binary

pytestmark = [pytest.mark.usefixtures("mpy_present"), pytest.mark.timeout(180)]

OP = 21
SIM0 = 1772323200


def _spec(tmp_path: Path, meter_id: int) -> BoardSpec:
    return BoardSpec(
        meter_id, tmp_path / "board", speed=600, sim_start=SIM0, flat_wh=(40, 2, 12, 0)
    )


@contextlib.asynccontextmanager
async def _board(spec: BoardSpec) -> AsyncIterator[VirtualBoard]:
    async with VirtualBoard(spec) as board:
        await _recording(board)
        yield board


async def _recording(board: VirtualBoard, after: int | None = None) -> int:
    """Wait until the meter closes an interval (after ``after``): it records."""

    async def closed() -> int | None:
        last = await board.last_closed()
        return last if last is not None and (after is None or last > after) else None

    return await wait_until(closed, 30, f"meter {board.meter_id} closes an interval")


async def _probe(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tools.probe",
        *args,
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(), err.decode()


def _key_file(path: Path, meter: int, k_op: bytes, operator: int = OP) -> Path:
    doc = {"meter": meter, "operator": operator, "key_version": 0, "probe_key": k_op.hex()}
    path.write_text(json.dumps(doc))
    path.chmod(0o600)
    return path


def _one_line_error(rc: int, err: str) -> str:
    assert rc == 1 and "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


async def _events(board: VirtualBoard, code: int) -> list[tuple[int, int, int]]:
    return board.read_flash().event_codes(code)


async def _in_thread(fn: Callable[[], Any]) -> Any:
    return await asyncio.to_thread(fn)


@pytest.mark.req("M18")
def test_m18_readout_prints_obis_table_and_json_and_a_wrong_address_gets_no_answer(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with _board(_spec(tmp_path, 8101)) as board:
            url = board.optical_url
            rc, out, err = await _probe("readout", "--port", url)
            assert rc == 0, err
            assert "1.8.0" in out and "active energy import" in out and "Wh" in out
            rc, out, err = await _probe("readout", "--port", url, "--address", "8101", "--json")
            assert rc == 0, err
            doc = json.loads(out)
            assert doc["ident"] == "8101" and doc["mode_e"] and doc["max_baud"] == 19200
            codes = {d["obis"]: d for d in doc["data"]}
            assert {"0.0.0", "0.9.1", "0.9.2", "1.8.0", "2.8.0", "3.8.0", "4.8.0", "F.F"} <= set(
                codes
            )
            assert codes["0.0.0"]["value"] == "8101" and int(codes["1.8.0"]["value"]) > 0
            rc, _, err = await _probe("readout", "--port", url, "--address", "8102")
            assert "no identification" in _one_line_error(rc, err)
            await _recording(board, await board.last_closed())

    asyncio.run(main())


@pytest.mark.req("M18", "M20", "N06", "D12")
def test_m18_m20_d12_download_show_and_upload_as_manual_data_once(tmp_path: Path) -> None:
    mid = 8111
    db = f"sqlite:///{tmp_path}/he.db"
    chans = tuple(
        Channel(k, u)
        for k, u in (
            (ChannelKind.ACTIVE_IMPORT, Unit.WH),
            (ChannelKind.ACTIVE_EXPORT, Unit.WH),
            (ChannelKind.REACTIVE_IMPORT, Unit.VARH),
            (ChannelKind.REACTIVE_EXPORT, Unit.VARH),
        )
    )
    with open_store(db) as store:
        store.register_meter(Meter(mid, "ami-fw", 900, 0, 1, chans, SIM0))
    key_path = tmp_path / "op.key"
    assert (
        headend_main(
            ["keys", "probe-key", str(mid), "--operator", str(OP), "-o", str(key_path)]
            + ["--database", db]
        )
        == 0
    )
    out_path = tmp_path / "dl.json"

    async def main() -> None:
        async with _board(_spec(tmp_path, mid)) as board:
            await _recording(board, SIM0 + 3 * 900)
            rc, out, err = await _probe(
                "download", "--port", board.optical_url, "--key-file", str(key_path),
                "-o", str(out_path), "--json",
            )  # fmt: skip
            assert rc == 0, err
            res = json.loads(out)
            assert res["baud"] == 19200 and res["intervals"] >= 4 and res["events"] >= 1
            assert stat.S_IMODE(out_path.stat().st_mode) == 0o600
            granted = await _events(board, Event.DOWNLOAD_GRANTED)
            assert [d for _, _, d in granted] == [OP]
            await _recording(board, await board.last_closed())

    asyncio.run(main())
    doc = json.loads(out_path.read_text())
    assert (
        doc["format"] == "ami-download/1"
        and doc["meter"] == mid
        and doc["tool"].startswith("ami-probe")
    )

    async def show() -> tuple[tuple[int, str, str], tuple[int, str, str]]:
        return (
            await _probe("show", str(out_path), "--key-file", str(key_path), "--json"),
            await _probe("show", str(out_path)),
        )

    (rc, out, err), (rc2, out2, _) = asyncio.run(show())
    assert rc == 0, err
    shown = json.loads(out)
    assert shown["mac"].startswith("ok") and shown["intervals"] >= 4 and shown["meter"] == mid
    assert rc2 == 0 and "not checked" in out2
    assert headend_main(["upload", str(out_path), "--database", db]) == 0
    with open_store(db) as store:
        ivs = store.intervals(mid, 0, SIM0, SIM0 + 86400)
        assert len(ivs) >= 4 and {iv.source for iv in ivs} == {Source.MANUAL_UPLOAD}
        before = store.stats()
        assert store.events(mid, 0, 2**32 - 1)
    assert headend_main(["upload", str(out_path), "--database", db]) == 0
    with open_store(db) as store:
        assert store.stats() == before


@pytest.mark.req("M18", "M20")
def test_m18_m20_a_wrong_key_is_refused_clearly_logged_and_the_meter_records_on(
    tmp_path: Path,
) -> None:
    spec = _spec(tmp_path, 8121)
    wrong = _key_file(tmp_path / "wrong.key", 8121, probe_key(bytes(32), OP))

    async def main() -> None:
        async with _board(spec) as board:
            rc, _, err = await _probe(
                "download", "--port", board.optical_url, "--key-file", str(wrong),
                "-o", str(tmp_path / "x.json"),
            )  # fmt: skip
            assert "refused the probe key (auth_failed)" in _one_line_error(rc, err)
            assert not (tmp_path / "x.json").exists()
            denied = await _events(board, Event.DOWNLOAD_DENIED)
            assert [d for _, _, d in denied] == [OP]
            await _recording(board, await board.last_closed())

    asyncio.run(main())


@pytest.mark.req("M18", "M20")
def test_m18_m20_a_replayed_answer_is_refused_and_the_nonce_is_single_use(
    tmp_path: Path,
) -> None:
    spec = _spec(tmp_path, 8131)
    k_op = probe_key(spec.key, OP)

    def sessions(url: str) -> list[tuple[str, Any]]:
        seen: list[tuple[str, Any]] = []
        with Port(url) as port:
            enter_binary(port)
            link = FrameLink(port, spec.meter_id, OP)
            link.send("download_open", {"operator": OP})
            got = link.frame(3)
            assert got is not None and got[1]["type"] == "download_challenge"
            answer = {"operator": OP, "mac": download_mac(k_op, got[1]["body"]["nonce"], OP)}
            link.send("download_auth", answer)
            first = link.frame(3)
            assert first is not None and first[1]["type"] == "download_data"
            link.quiet()  # the whole download goes by
            link.send("download_auth", answer)  # the same answer again, same link
            got = link.frame(3)
            seen.append(("again", got[1] if got else None))
            link.send("download_open", {"operator": OP})  # a new challenge ...
            link.frame(3)
            link.send("download_auth", answer)  # ... answered with the old answer
            got = link.frame(3)
            seen.append(("old answer", got[1] if got else None))
        return seen

    async def main() -> None:
        async with _board(spec) as board:
            seen = await _in_thread(lambda: sessions(board.optical_url))
            for what, fields in seen:
                assert fields is not None and fields["type"] == "nack", what
            assert seen[0][1]["body"]["reason"] == Nack.REPLAY
            assert seen[1][1]["body"]["reason"] == Nack.AUTH_FAILED
            assert len(await _events(board, Event.DOWNLOAD_DENIED)) == 2
            await _recording(board, await board.last_closed())

    asyncio.run(main())


class _Noisy:
    """A TCP relay to the board that flips one byte of the meter's binary stream,
    once (line noise mid-download), and sends junk to the meter before anything."""

    def __init__(self, board_port: int, at: int) -> None:
        self.board_port = board_port
        self.at = at
        self.down = 0
        self.flipped = False
        self.tasks: set[asyncio.Task[None]] = set()

    async def _pump(self, r: asyncio.StreamReader, w: asyncio.StreamWriter, down: bool) -> None:
        with contextlib.suppress(OSError):
            while data := await r.read(4096):
                if down and not self.flipped and self.down + len(data) > self.at:
                    buf = bytearray(data)
                    buf[self.at - self.down] ^= 0x55
                    data, self.flipped = bytes(buf), True
                if down:
                    self.down += len(data)
                w.write(data)
                await w.drain()
        w.close()

    async def _client(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        br, bw = await asyncio.open_connection("127.0.0.1", self.board_port)
        bw.write(b"\x00\xff garbage \x7e\x7d\x13")  # noise on the line before the sign-on
        for t in (self._pump(r, bw, False), self._pump(br, w, True)):
            self.tasks.add(asyncio.create_task(t))

    async def close(self) -> None:
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


@pytest.mark.req("M18", "N06")
def test_m18_line_noise_is_survived_by_opening_again(tmp_path: Path) -> None:
    spec = _spec(tmp_path, 8141)
    key = _key_file(tmp_path / "op.key", 8141, probe_key(spec.key, OP))

    async def main() -> None:
        async with _board(spec) as board:
            await _recording(board, SIM0 + 4 * 900)
            port = int(board.optical_url.rsplit(":", 1)[1])
            relay = _Noisy(port, at=120)  # in the challenge or the first part
            server = await asyncio.start_server(relay._client, "127.0.0.1", 0)
            url = f"socket://127.0.0.1:{server.sockets[0].getsockname()[1]}"
            try:
                rc, out, err = await _probe(
                    "download", "--port", url, "--key-file", str(key), "-o",
                    str(tmp_path / "dl.json"), "--json",
                )  # fmt: skip
            finally:
                server.close()
                await relay.close()
            assert rc == 0, err
            res = json.loads(out)
            assert relay.flipped and res["attempts"] >= 2 and res["intervals"] >= 5
            await _recording(board, await board.last_closed())

    asyncio.run(main())


@pytest.mark.req("M18")
def test_m18_an_aborted_link_leaves_the_meter_recording_and_ready_for_the_next(
    tmp_path: Path,
) -> None:
    # 3 days on flash before the board boots (several parts), the meter core run by the bench
    spec = BoardSpec(
        METER_ID, tmp_path / "board", speed=600, sim_start=T_END, flat_wh=(40, 2, 12, 0)
    )
    spec.flash_dir.mkdir()
    assert prefill(spec.flash_dir / "flash.bin", 3, DEFAULT_CSV) == 3 * 96
    k_op = probe_key(spec.key, OP)
    key = _key_file(tmp_path / "op.key", METER_ID, k_op)

    def abort(url: str) -> str:
        with Port(url) as port:
            enter_binary(port)
            link = FrameLink(port, spec.meter_id, OP)
            link.send("download_open", {"operator": OP})
            got = link.frame(3)
            assert got is not None
            answer = {"operator": OP, "mac": download_mac(k_op, got[1]["body"]["nonce"], OP)}
            link.send("download_auth", answer)
            first = link.frame(3)
            assert first is not None
            return str(first[1]["type"])  # and the link drops mid-download

    async def main() -> None:
        async with _board(spec) as board:
            assert await _in_thread(lambda: abort(board.optical_url)) == "download_data"
            last = await _recording(board, await board.last_closed())
            rc, out, err = await _probe(
                "download", "--port", board.optical_url, "--key-file", str(key), "-o",
                str(tmp_path / "dl.json"), "--json",
            )  # fmt: skip
            assert rc == 0, err
            res = json.loads(out)
            assert res["attempts"] == 1 and res["frames"] > 2 and res["intervals"] > 3 * 96
            await _recording(board, last)

    asyncio.run(main())


@pytest.mark.req("M18", "M20")
def test_m18_m20_three_wrong_keys_lock_the_port_even_across_a_reboot(tmp_path: Path) -> None:
    # real time (speed 1): the 300 s lock is in the meter's seconds
    spec = BoardSpec(8161, tmp_path / "board", sim_start=SIM0, flat_wh=(40, 2, 12, 0))
    right = _key_file(tmp_path / "right.key", 8161, probe_key(spec.key, OP))
    wrong = _key_file(tmp_path / "wrong.key", 8161, probe_key(bytes(32), OP))

    async def attempt(key: Path, url: str) -> str:
        rc, _, err = await _probe(
            "download", "--port", url, "--key-file", str(key), "-o", str(tmp_path / "x.json")
        )
        return _one_line_error(rc, err)

    async def main() -> None:
        async with VirtualBoard(spec) as board:
            t0 = (await board.status())["now"]
            for _ in range(3):
                assert "auth_failed" in await attempt(wrong, board.optical_url)
            assert "locked" in await attempt(right, board.optical_url)
            await board.power_cut()
            await board.power_up()
            assert "locked" in await attempt(right, board.optical_url)
            assert len(await _events(board, Event.DOWNLOAD_DENIED)) == 5
            assert not (tmp_path / "x.json").exists()
            assert (await board.status())["now"] > t0  # the meter runs on

    asyncio.run(main())
