"""hil.board: the virtual board supervisor (VirtualBoard) on the real MicroPython binary."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hil.board import FIRMWARE, BoardError, BoardSpec, VirtualBoard, micropython_binary, read_flash
from hil.broker import free_port
from hil.wait import wait_until
from tests.support.cli import refused, run_module, unwritable_dir

pytestmark = [pytest.mark.mpy, pytest.mark.usefixtures("mpy_present")]
MPREMOTE = str(Path(sys.executable).parent / "mpremote")
T0 = 1772323200


async def _mpremote(url: str, *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        MPREMOTE,
        "connect",
        url,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(errors="replace")


def test_mpremote_lists_and_copies_files_on_a_board_started_by_hil_board(tmp_path: Path) -> None:
    spec = BoardSpec(4711, tmp_path / "flash", speed=600, flat_wh=(10, 0, 3, 0))
    (tmp_path / "local.txt").write_text("from the host\n")

    async def main() -> None:
        async with VirtualBoard(spec) as board:
            assert board.repl_url.startswith("socket://127.0.0.1:")
            assert (await board.status())["meter_id"] == 4711
            rc, out = await _mpremote(board.repl_url, "fs", "ls")
            assert rc == 0, out
            assert "board.json" in out and "flash.bin" in out
            boots = board.console.boots
            rc, out = await _mpremote(
                board.repl_url, "fs", "cp", str(tmp_path / "local.txt"), ":copied.txt"
            )
            assert rc == 0, out
            assert (spec.flash_dir / "copied.txt").read_text() == "from the host\n"

            # leaving the REPL reboots the firmware, which recovers from flash
            async def rebooted() -> bool:
                return board.console.boots > boots and (await board.status())["meter_id"] == 4711

            await wait_until(rebooted, 20, "firmware rebooted after mpremote", ignore=(BoardError,))
            assert board.powered

    asyncio.run(main())


@pytest.mark.req("M05")
def test_m05_power_cut_and_power_up_recover_from_flash_alone(tmp_path: Path) -> None:
    spec = BoardSpec(4712, tmp_path / "flash", speed=3000, sim_start=T0, flat_wh=(100, 0, 30, 0))

    async def main() -> None:
        async with VirtualBoard(spec) as board:

            async def two_hours() -> dict[str, Any] | None:
                st = await board.status()
                return st if st["last"] and st["now"] >= T0 + 7200 else None

            before = await wait_until(two_hours, 30, "2 simulated hours recorded")
            await board.power_cut()
            assert not board.powered and board.cuts == 1
            img = board.read_flash()  # the flash as the cut left it
            assert before["last"][0] in img.starts()
            await board.power_up()
            after = await board.status()
            assert after["now"] > before["now"]  # the RTC kept counting (battery-backed)
            assert after["last"][0] >= before["last"][0]
            # registers = the stored intervals + the one in progress (lost with its energy at a cut)
            assert after["registers"][0] >= img.registers[0] > 0
            await board.step(60)
            await board.drift(100)
            await board.tamper()
            await board.link(False)
            assert (await board.status())["online"] is False
            await board.link(True)
            await board.power_cut()
        img = read_flash(spec.flash_dir)
        assert img.corrupt_records == 0 and img.doubled() == 0 and img.gaps() == []
        codes = {c for _, _, c, _ in img.events}
        assert {1, 2, 11, 12} <= codes  # power down/up, tamper, self test
        # a fresh flash: each ring (intervals, events, config) erased its first block once,
        # before writing it; a cut, a reboot and 2 simulated hours wear nothing else
        assert len(img.erase_counts) == 64
        assert sorted(n for n in img.erase_counts if n) == [1, 1, 1], img.erase_counts

    asyncio.run(main())


def test_read_flash_counts_a_corrupted_record(tmp_path: Path) -> None:
    spec = BoardSpec(4713, tmp_path / "flash", speed=3000, sim_start=T0, flat_wh=(5, 0, 1, 0))

    async def main() -> None:
        async with VirtualBoard(spec) as board:

            async def three_hours() -> bool:
                return bool((await board.status())["now"] >= T0 + 3 * 3600)

            await wait_until(three_hours, 30, "3 simulated hours recorded")
            await board.power_cut()

    asyncio.run(main())
    img = read_flash(spec.flash_dir)
    assert img.corrupt_records == 0 and len(img.intervals) >= 10
    copy = tmp_path / "copy"
    shutil.copytree(spec.flash_dir, copy)
    data = bytearray((copy / "flash.bin").read_bytes())
    data[3 * 16 + 5] ^= 0x01  # one bit of the first interval record (block 0, after the header)
    (copy / "flash.bin").write_bytes(bytes(data))
    bad = read_flash(copy)
    assert bad.corrupt_records == 1 and len(bad.intervals) == len(img.intervals) - 1


# --- no energy source, no board ----------------------------------------------------------


@pytest.mark.parametrize("energy", [{"csv": None}, {"csv": Path("missing.csv")}])
def test_a_board_without_energy_refuses_to_start(tmp_path: Path, energy: dict[str, Any]) -> None:
    spec = BoardSpec(4714, tmp_path / "flash", **energy)

    async def main() -> None:
        board = VirtualBoard(spec)
        with pytest.raises(BoardError) as e:
            await board.start()
        await board.close()
        assert "\n" not in str(e.value)
        assert "--energy-csv FILE" in str(e.value) and "--flat-wh" in str(e.value)
        assert board.boots == 0

    asyncio.run(main())
    assert not spec.flash_dir.exists()  # nothing written


def test_the_firmware_refuses_a_board_json_without_energy(tmp_path: Path) -> None:
    # the supervisor's check bypassed: hal/unix itself says why, in one line, before "ready"
    spec = BoardSpec(4715, tmp_path / "flash", flat_wh=(1, 0, 0, 0), extra={"energy": {}})

    async def main() -> None:
        board = VirtualBoard(spec)
        try:
            with pytest.raises(BoardError, match="no energy source") as e:
                await board.start()
            assert not board.powered
        finally:
            await board.close()
        text = str(e.value)
        assert "\n" not in text and "--energy-csv FILE" in text and "--flat-wh" in text

    asyncio.run(main())
    assert not (spec.flash_dir / "flash.bin").exists()  # refused before the flash is touched


def test_the_firmware_exits_non_zero_with_one_error_line(tmp_path: Path) -> None:
    spec = BoardSpec(4716, tmp_path, csv=tmp_path / "gone.csv")
    (tmp_path / "board.json").write_text(json.dumps(spec.board_json()))
    env = dict(os.environ, MICROPYPATH=f"{FIRMWARE}:.frozen")
    proc = subprocess.run(
        [micropython_binary(), str(FIRMWARE / "main.py"), str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 2 and "ready" not in proc.stdout, proc.stdout + proc.stderr
    (line,) = proc.stderr.splitlines()
    assert line.startswith("error: no energy source: no energy.flat_wh and energy.csv ")
    assert "gone.csv is missing" in line and "--energy-csv FILE or --flat-wh" in line


def test_hil_board_refuses_a_missing_csv_in_one_line(tmp_path: Path) -> None:
    flash = tmp_path / "flash"
    missing_csv = tmp_path / "nope.csv"
    line = refused(
        run_module(
            "hil", "board", "--id", "7", "--flash", str(flash), "--energy-csv", str(missing_csv)
        )
    )
    assert line.startswith("error: no energy source:") and str(missing_csv) in line
    assert "--energy-csv FILE or --flat-wh" in line
    assert not flash.exists()


@pytest.mark.parametrize("where", ["file", "under-a-file", "not-writable"])
def test_hil_board_refuses_a_flash_dir_it_cannot_use(tmp_path: Path, where: str) -> None:
    afile = tmp_path / "afile"
    afile.write_text("not a directory\n")
    locked = unwritable_dir(tmp_path) if where == "not-writable" else tmp_path
    before = sorted(locked.iterdir())
    flash = {"file": afile, "under-a-file": afile / "dir", "not-writable": locked / "ami-x" / "dir"}
    line = refused(
        run_module(
            "hil", "board", "--id", "7", "--flash", str(flash[where]), "--flat-wh", "1,0,0,0"
        )
    )
    assert line.startswith(f"error: flash directory {flash[where]}: ")
    assert afile.read_text() == "not a directory\n"
    assert sorted(locked.iterdir()) == before  # nothing half-written


def _listening() -> socket.socket:
    """A loopback listener holding a port (what another process may have bound)."""
    s = socket.socket()
    s.bind(("127.0.0.1", free_port()))
    s.listen()
    return s


def test_a_board_picks_its_ports_again_when_one_was_taken_before_it_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race between picking a free port and the firmware binding it: the board
    boots on fresh ports instead of dying at the REPL with EADDRINUSE."""
    taken = _listening()
    picks = iter([taken.getsockname()[1]])  # the first port picked is already taken
    monkeypatch.setattr("hil.board.free_port", lambda: next(picks, None) or free_port())
    spec = BoardSpec(4713, tmp_path / "flash", sim_start=T0, flat_wh=(100, 0, 30, 0))

    async def main() -> None:
        async with VirtualBoard(spec) as board:
            assert board.boots == 2
            assert taken.getsockname()[1] not in (spec.uart_port, spec.optical_port)
            assert (await board.status())["now"] >= T0

    with taken:
        asyncio.run(main())


def test_a_board_given_a_busy_port_fails_at_once_saying_so(
    tmp_path: Path, mpy_present: None
) -> None:
    with _listening() as taken:
        port = taken.getsockname()[1]
        spec = BoardSpec(
            4714, tmp_path / "flash", sim_start=T0, flat_wh=(100, 0, 30, 0), control_port=port
        )

        async def main() -> None:
            board = VirtualBoard(spec)
            try:
                with pytest.raises(BoardError, match="EADDRINUSE"):
                    await board.start()
                assert spec.control_port == port  # a port the user chose is kept
            finally:
                await board.close()

        asyncio.run(main())
