"""hil.realboard: the real-board path over pyserial, tried on a virtual board's optical port."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import pytest

from hil.board import BoardSpec, VirtualBoard
from hil.realboard import (
    DEFAULT_WIRING,
    SelfCheckError,
    WiringError,
    load_wiring,
    reset_board,
    self_check,
)
from hil.wait import wait_until

ROOT = Path(__file__).resolve().parents[2]


async def _hil_run(*args: str) -> tuple[int, dict[str, object], str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "hil",
        "run",
        *args,
        "--json",
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    lines = out.decode().strip().splitlines()
    return proc.returncode or 0, json.loads(lines[-1]), err.decode(errors="replace")


@pytest.mark.mpy
@pytest.mark.req("H05", "H08")
@pytest.mark.usefixtures("rig_parts")
def test_h05_h08_real_board_path_reads_a_board_over_a_socket_serial_url(tmp_path: Path) -> None:
    # A virtual board whose uplink is its optical port, its clock brought to real time
    # (the real-board rig runs the head-end on real time, as a real board's RTC is).
    spec = BoardSpec(
        5001, tmp_path / "flash", speed=600, sim_start=int(time.time()) - 1800, uplink="uart"
    )

    async def main() -> None:
        async with VirtualBoard(spec) as board:
            # polled often: at 600x, 10 ms late puts the board 6 s ahead of real time
            await wait_until(
                lambda: board.true_now() >= time.time() - 1,
                20,
                "the board's clock at real time",
                every=0.01,
            )
            await board.set_speed(1)
            rc, out, err = await _hil_run(
                "selfcheck", "--port", board.uart_url, "--meter-id", "5001"
            )
            assert rc == 0 and out["ok"] and out["answer"] == "read_response", err
            assert out["meter_id"] == 5001 and out["registers"]
            rc, out, err = await _hil_run(
                "ondemand", "--port", board.uart_url, "--meter-id", "5001", "--reads", "3"
            )
            assert rc == 0 and out["ok"], err
            assert out["reads"] == out["done"] == 3 and out["board"] == "real"

    asyncio.run(main())


def test_self_check_fails_clearly_when_the_board_does_not_answer() -> None:
    wiring = load_wiring(DEFAULT_WIRING)
    # loop:// echoes our own request back: a line with no board on it
    with pytest.raises(SelfCheckError, match="did not answer a signed status request"):
        self_check("loop://", wiring, 1001, timeout=0.5, say=lambda s: None)
    with pytest.raises(SelfCheckError, match="cannot open /dev/nonexistent-ami-port"):
        self_check("/dev/nonexistent-ami-port", wiring, 1001, timeout=0.5, say=lambda s: None)


def test_self_check_command_exits_1_with_the_reason(tmp_path: Path) -> None:
    rc, out, err = asyncio.run(
        _hil_run("selfcheck", "--port", "loop://", "--meter-id", "7", "--timeout", "0.3")
    )
    assert rc == 1 and out["ok"] is False and "did not answer" in str(out["error"])


def test_wiring_file_problems_are_all_listed(tmp_path: Path) -> None:
    w = load_wiring(DEFAULT_WIRING)
    assert w.pulses["active_import"] == 25 and (w.tx, w.rx, w.baud) == (17, 16, 19200)
    bad = tmp_path / "bad.toml"
    bad.write_text(
        "[board]\nmcu = 'esp32'\n[pulses]\nactive_import = 25\nactive_export = 25\n"
        "[optical]\ntx = 35\nrx = 7\nbaud = 12345\n[rig]\nreset = 'relay'\n"
    )
    with pytest.raises(WiringError) as e:
        load_wiring(bad)
    msg = str(e.value)
    for part in (
        "also pulses.active_import",
        "input-only",
        "SPI flash",
        "optical.baud",
        "rig.reset",
    ):
        assert part in msg, msg


def test_reset_pulses_the_console_line_and_says_when_it_cannot() -> None:
    reset_board("loop://", "rts", pulse_s=0.01)  # EN low then high through RTS (DevKitC)
    reset_board("loop://", "dtr", pulse_s=0.01)
    with pytest.raises(SelfCheckError, match="cannot reset the board"):
        reset_board("/dev/nonexistent-ami-console", "rts", pulse_s=0.01)
