"""hil.board: the virtual board supervisor (VirtualBoard) on the real MicroPython binary."""

from __future__ import annotations

import asyncio
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from hil.board import BoardError, BoardSpec, VirtualBoard, read_flash
from hil.wait import wait_until

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
