"""tools.flash's NVS step (M20: the ESP32's secrets go to NVS, not to its file system): the
code `Session.write_nvs` sends runs on MicroPython over a real mpremote session and the
values are verified by hashes read back; a board without `esp32` is refused. The `esp32`
module is the host stand-in of tests/esp32_host (no ESP32 on this machine)."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import pytest

from hil.board import FIRMWARE, micropython_binary
from hil.console import Console
from tests.support.cli import ROOT
from tools.flash.errors import FlashError
from tools.flash.session import Session

pytestmark = [pytest.mark.mpy, pytest.mark.req("M20"), pytest.mark.usefixtures("mpy_present")]
BLOBS = {"key": bytes(range(32)), "mqtt_pw": b"0123456789abcdef0123456789abcdef"}


def _nvs(url: str) -> dict[str, str | None]:
    s = Session(url)
    try:
        return s.write_nvs(BLOBS)
    finally:
        s.close()


async def _board(tmp_path: Path, paths: str) -> Console:
    """A bare MicroPython behind the virtual board's console (no firmware: its REPL)."""
    mpy = micropython_binary()
    env = dict(os.environ, MICROPYPATH=paths)
    console = Console(lambda: None, [mpy], cwd=tmp_path, env=env, log=tmp_path / "console.log")
    await console.serve()
    console.power_up()
    return console


def test_m20_nvs_secrets_are_written_and_verified_by_their_hashes_read_back(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        console = await _board(tmp_path, f"{FIRMWARE}:{ROOT}/tests/esp32_host:.frozen")
        try:
            url = f"socket://127.0.0.1:{console.port}"
            back = await asyncio.to_thread(_nvs, url)
        finally:
            await console.close()
        assert back == {k: hashlib.sha256(v).hexdigest() for k, v in BLOBS.items()}
        log = (tmp_path / "console.log").read_bytes()
        assert BLOBS["mqtt_pw"] not in log and b"0123456789abcdef" not in log  # not echoed

    asyncio.run(main())


def test_m20_a_board_without_nvs_is_refused(tmp_path: Path) -> None:
    async def main() -> None:
        console = await _board(tmp_path, ".frozen")
        try:
            url = f"socket://127.0.0.1:{console.port}"
            with pytest.raises(FlashError, match="no esp32 module: not an ESP32"):
                await asyncio.to_thread(_nvs, url)
        finally:
            await console.close()

    asyncio.run(main())
