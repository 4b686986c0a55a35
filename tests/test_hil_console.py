"""mpremote lists, copies and runs code on a virtual board's console (issue 5)."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from hil.console import Console
from hil.wait import wait_until
from tests.support.mpy import micropython_binary

MPREMOTE = str(Path(sys.executable).parent / "mpremote")


async def _mpremote(port: int, *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        MPREMOTE,
        "connect",
        f"socket://127.0.0.1:{port}",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(errors="replace")


def test_mpremote_lists_copies_and_execs_on_a_virtual_board(tmp_path: Path) -> None:
    board = tmp_path / "board"
    board.mkdir()
    (board / "main.py").write_text(
        "import time\nprint('firmware up')\nwhile True:\n    time.sleep_ms(50)\n"
    )
    (tmp_path / "local.txt").write_text("from the host\n")
    log = tmp_path / "console.log"
    mpy = micropython_binary()
    console = Console(
        firmware=[mpy, "-i", "main.py"],
        bare=[mpy],
        cwd=board,
        env=dict(os.environ, MICROPYPATH=".frozen"),
        log=log,
    )

    def ups() -> int:
        """How often the firmware has printed its start line."""
        return log.read_bytes().count(b"firmware up") if log.exists() else 0

    async def main() -> None:
        await console.serve()
        console.power_up()
        await wait_until(lambda: ups() == 1, 20, "the firmware printed 'firmware up'")
        rc, out = await _mpremote(console.port, "fs", "ls")
        assert rc == 0, out
        assert "main.py" in out
        rc, out = await _mpremote(
            console.port, "fs", "cp", str(tmp_path / "local.txt"), ":copied.txt"
        )
        assert rc == 0, out
        assert (board / "copied.txt").read_text() == "from the host\n"
        boots = console.boots
        rc, out = await _mpremote(console.port, "exec", "print(6 * 7)")
        assert rc == 0 and "42" in out, out
        # leaving the REPL reboots the board into its firmware, which starts again
        await wait_until(
            lambda: console.boots > boots and ups() == console.boots,
            20,
            "the firmware rebooted after mpremote exec",
        )
        assert console.proc is not None and console.proc.poll() is None
        boots = console.boots
        console.power_cut()
        console.power_up()
        assert console.boots == boots + 1
        await wait_until(lambda: ups() == console.boots, 20, "the firmware up after power-up")
        await console.close()

    asyncio.run(main())
