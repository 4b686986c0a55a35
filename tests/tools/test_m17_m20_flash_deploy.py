"""tools.flash end to end: build, provision, deploy onto a virtual board booting from its
own file system, against a secure mosquitto and a real `headend serve` (hil.stack).

The meter key is provisioned from the site master key and the deployed meter
registers on installation (M17) over the secure broker (M20: only a meter
holding the key derived from the site's gets in); a second deploy
of the same bundle writes nothing; a file corrupted on the board is found by
its hash (computed on the board) and rewritten; each time the board boots the
deployed bundle, not the repository's sources.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from headend.api import Headend, load
from hil.board import FIRMWARE, BoardSpec, VirtualBoard
from hil.stack import Options, Stack
from hil.wait import wait_until
from tests.support.cli import ROOT
from tools.flash.bundle import firmware_version

pytestmark = [pytest.mark.mpy, pytest.mark.usefixtures("rig_parts")]
MID = 4242
SPEED = 60  # a 900 s interval closes every 15 real seconds
FW = firmware_version()  # firmware/meter/meter.py's _FW_VERSION
FW_BUILT = FW + "+deployed"


async def _flash(*args: str, timeout: float = 150) -> tuple[int, str, str]:
    """`python -m tools.flash ARGS` as a user runs it (the board keeps running meanwhile)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tools.flash",
        *args,
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode or 0, out.decode(), err.decode()


def _report(out: str) -> dict[str, Any]:
    report: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return report


@pytest.mark.req("M17", "M20")
@pytest.mark.timeout(360)
def test_m17_m20_deploy_boots_the_bundle_registers_reports_and_rewrites_only_what_differs(
    tmp_path: Path,
) -> None:
    bundle, cfg = tmp_path / "bundle", tmp_path / "meter"

    async def main() -> None:
        async with Stack(Options(boards=0, speed=SPEED, dir=tmp_path / "stack")) as st:
            assert st.broker is not None and st.clock is not None and st.broker.ca is not None
            st.broker.admit(meters=(MID,))  # the site's broker knows the meter's login
            spec = BoardSpec(
                MID,
                tmp_path / "board",
                speed=SPEED,
                sim_start=int(st.clock.start),
                real_start_ms=int(st.clock.anchor * 1000),
                flat_wh=(250, 0, 40, 0),
                from_fs=True,
            )
            async with VirtualBoard(spec) as board:
                assert not board.deployed()  # an empty fs: the bare REPL, no firmware
                # the firmware as built elsewhere: a version the repository's sources do
                # not have, so the registration shows which code the board runs
                src = tmp_path / "firmware"
                shutil.copytree(FIRMWARE, src)
                meter_py = src / "meter" / "meter.py"
                meter_py.write_text(meter_py.read_text().replace(f'"{FW}"', f'"{FW_BUILT}"'))
                rc, out, err = await _flash(
                    "build", "--board", "unix", "--firmware", str(src), "-o", str(bundle)
                )
                assert rc == 0, err
                rc, out, err = await _flash(
                    "provision", "--target", "unix", "--meter-id", str(MID),
                    "--master-key-file", str(st.state / "master.key"),
                    "--broker", f"mqtts://{st.broker.host}:{st.broker.port}",
                    "--server-name", st.broker.server_name,
                    "--ca-file", str(st.broker.ca), "-o", str(cfg),
                    "--channels", "Wh:1,Wh:1,varh:10,varh:10",
                )  # fmt: skip
                assert rc == 0, err
                deploy = [
                    "deploy", "--port", board.repl_url, "--bundle", str(bundle),
                    "--config", str(cfg),
                ]  # fmt: skip
                wait = ["--wait-headend", str(st.config_path), "--timeout", "120"]
                rc, out, err = await _flash(*deploy, *wait)
                assert rc == 0, out + err
                first = _report(out)
                n = len(json.loads((bundle / "manifest.json").read_text())["files"]) + 2
                assert first["written"] == n and first["verified"] == n  # + board.json, ca.pem
                assert first["registered_fw"] == FW_BUILT  # the deployed bundle runs
                with Headend.open(load(st.config_path)) as he:  # what it registered (M17)
                    m = he.meter(MID)
                    assert (m.interval_s, len(m.channels), m.transport) == (900, 4, "mqtt")
                    # the provisioned channels, not the firmware's defaults
                    assert [c.multiplier for c in m.channels] == [1, 1, 10, 10]
                assert first["read_intervals"] >= 1 and len(first["read_registers"]) == 4
                # the board runs what was deployed: app.mpy from its fs, not firmware/
                assert (board.fs / "app.mpy").exists() and board.deployed()
                status = await board.status()
                assert status["meter_id"] == MID and status["registered"]
                assert board.console is not None and board.console.proc is not None
                assert str(FIRMWARE) not in " ".join(map(str, board.console.proc.args))
                key = json.loads((cfg / "board.json").read_text())["key"]
                assert key not in out + err  # the key is never printed

                rc, out, err = await _flash(*deploy)
                assert rc == 0, out + err
                again = _report(out)
                assert again["written"] == 0 and again["unchanged"] == n

                ring = board.fs / "meter" / "ring.mpy"
                good = ring.read_bytes()
                ring.write_bytes(good[:100] + bytes(len(good) - 100))  # corrupted on the board
                rc, out, err = await _flash(*deploy, *wait)
                assert rc == 0, out + err
                fixed = _report(out)
                assert fixed["written"] == 1 and ring.read_bytes() == good
                assert fixed["read_intervals"] >= 1

                async def up() -> bool:
                    return bool((await board.status())["online"])

                await wait_until(up, 30, "the redeployed meter back online")

    asyncio.run(main())
