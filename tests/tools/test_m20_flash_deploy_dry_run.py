"""tools.flash deploy without a board: --dry-run prints the mpremote steps (the NVS
secrets named, never shown: M20) and touches no port; bad bundles, configs and ports are
refused with one line before anything is written."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from headend.api import pki
from protocol.auth import meter_key
from tests.support.cli import ROOT, refused, run_module

pytestmark = pytest.mark.req("M20")
MID = 3002


@pytest.fixture(scope="module")
def parts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Bundles for both boards, and an ESP32 and a virtual-board config."""
    tmp = tmp_path_factory.mktemp("flash")
    key_file = tmp / "master.key"
    key_file.write_text(secrets.token_hex(32))
    key_file.chmod(0o600)
    ca, _ = pki.init(tmp / "pki")
    out = {"key_file": key_file}
    for board in ("esp32", "unix"):
        done = run_module("tools.flash", "build", "--board", board, "-o", str(tmp / board))
        assert done.returncode == 0, done.stderr
        done = run_module(
            "tools.flash", "provision", "--target", board, "--meter-id", str(MID),
            "--master-key-file", str(key_file), "--broker", "mqtts://127.0.0.1:8883",
            "--ca-file", str(ca.ca), "-o", str(tmp / f"{board}-cfg"),
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        out[board], out[f"{board}-cfg"] = tmp / board, tmp / f"{board}-cfg"
    return out


def _listening() -> tuple[socket.socket, str]:
    """A TCP port that accepts: a dry run must not even connect to it."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    srv.settimeout(0.0)
    return srv, f"socket://127.0.0.1:{srv.getsockname()[1]}"


def _deploy(bundle: Path, config: Path, *extra: str, port: str = "socket://127.0.0.1:9") -> str:
    """The one-line refusal of a deploy of ``bundle`` with ``config`` (nothing is written)."""
    argv = ["deploy", "--port", port, "--bundle", str(bundle), "--config", str(config), *extra]
    return refused(run_module("tools.flash", *argv))


def test_m20_deploy_dry_run_prints_the_mpremote_steps_without_secrets_or_a_connection(
    parts: dict[str, Path],
) -> None:
    srv, url = _listening()
    with srv:
        done = run_module(
            "tools.flash", "deploy", "--port", url, "--bundle", str(parts["esp32"]),
            "--config", str(parts["esp32-cfg"]), "--wait-headend", "headend.toml", "--dry-run",
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        with pytest.raises(BlockingIOError):
            srv.accept()  # nobody connected
    lines = done.stdout.splitlines()
    assert lines[0].startswith(f"mpremote connect {url} fs sha256sum :app.mpy")
    assert any(
        ln.startswith(f"mpremote connect {url} fs cp {parts['esp32']}/fs/meter/ring.mpy "
                      ":meter/ring.mpy") for ln in lines
    )  # fmt: skip
    assert any(f"fs cp {parts['esp32-cfg']}/board.json :board.json" in ln for ln in lines)
    assert not any("secrets.json :" in ln for ln in lines)  # never onto the board's fs
    nvs = [ln for ln in lines if " exec " in ln]
    assert len(nvs) == 1 and "set_blob() of key, mqtt_pw, ca" in nvs[0]
    assert f"mpremote connect {url} reset" in lines
    assert lines[-1].startswith("headend meters list --config headend.toml")
    values = json.loads((parts["esp32-cfg"] / "secrets.json").read_text()).values()
    key = meter_key(bytes.fromhex(parts["key_file"].read_text()), MID)
    for secret in (*values, key.hex()):
        assert secret not in done.stdout + done.stderr


def test_deploy_refuses_a_bundle_for_another_board_than_the_config(parts: dict[str, Path]) -> None:
    line = _deploy(parts["esp32"], parts["unix-cfg"], "--dry-run")
    assert "built for esp32, --config is provisioned for unix" in line


def test_deploy_refuses_a_bundle_changed_since_it_was_built(
    parts: dict[str, Path], tmp_path: Path
) -> None:
    copy = tmp_path / "bundle"
    shutil.copytree(parts["unix"], copy)
    (copy / "fs" / "meter" / "ring.mpy").write_bytes(b"M\x06tampered")
    line = _deploy(copy, parts["unix-cfg"])
    assert "fs/meter/ring.mpy is missing or differs from manifest.json" in line


def test_m20_deploy_refuses_a_config_whose_key_file_others_can_read(
    parts: dict[str, Path], tmp_path: Path
) -> None:
    copy = tmp_path / "cfg"
    shutil.copytree(parts["unix-cfg"], copy)
    (copy / "board.json").chmod(0o644)
    line = _deploy(parts["unix"], copy, "--dry-run")
    assert "is open to group or others (mode 0644)" in line


def test_deploy_to_a_port_with_no_board_is_one_line(parts: dict[str, Path]) -> None:
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()  # nothing listens there now
    line = _deploy(parts["unix"], parts["unix-cfg"], port=f"socket://127.0.0.1:{port}")
    assert line.startswith(f"error: --port socket://127.0.0.1:{port}: cannot open it"), line


def test_ctrl_c_during_a_deploy_exits_130_without_a_traceback(parts: dict[str, Path]) -> None:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    srv.settimeout(60)  # the deadline for the tool to connect
    url = f"socket://127.0.0.1:{srv.getsockname()[1]}"
    argv = [
        sys.executable, "-m", "tools.flash", "deploy", "--port", url, "--bundle",
        str(parts["unix"]), "--config", str(parts["unix-cfg"]),
    ]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        with srv, srv.accept()[0]:  # connected; a board that never answers its raw REPL
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert err.decode().strip() == "interrupted" and b"Traceback" not in out + err


def test_m20_deploy_without_a_bundle_copies_only_the_config_and_writes_nvs(
    parts: dict[str, Path],
) -> None:
    done = run_module(
        "tools.flash", "deploy", "--port", "/dev/ttyUSB9", "--config", str(parts["esp32-cfg"]),
        "--dry-run",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    cps = [ln for ln in done.stdout.splitlines() if " fs cp " in ln]
    assert len(cps) == 1 and cps[0].endswith(":board.json   # only if its hash differs")
    assert "set_blob() of key, mqtt_pw, ca" in done.stdout


def test_m17_wait_headend_asks_again_until_a_read_returns_an_interval(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An on-demand read in the first interval of the meter's day is done with no
    interval (the intervals since local midnight): the deploy does not take it for
    the board's data, and asks again until one holds an interval."""
    import time
    from types import SimpleNamespace

    from headend.api import JobState
    from tools.flash import deploy

    meter = SimpleNamespace(fw_version="1.2.3", interval_s=900)
    results = [
        SimpleNamespace(state=JobState.FAILED, result=None),  # not_held: nothing yet
        SimpleNamespace(state=JobState.DONE, result=json.dumps({"intervals": []})),
        SimpleNamespace(
            state=JobState.DONE,
            result=json.dumps({"intervals": [{}, {}], "registers": {"values": ["1", "2"]}}),
        ),
    ]
    reads: list[float] = []
    sleeps: list[float] = []

    def read(cfg: object, meter_id: int, budget_s: float) -> SimpleNamespace:
        reads.append(budget_s)
        return results[len(reads) - 1]

    monkeypatch.setattr(deploy, "_registered", lambda cfg, mid: meter)
    monkeypatch.setattr(deploy, "_read", read)
    monkeypatch.setattr(time, "sleep", sleeps.append)
    said: list[str] = []
    rep = deploy.Report()
    deploy.wait_headend(SimpleNamespace(speed=1.0), 7, 60.0, said.append, rep)  # type: ignore[arg-type]
    assert len(reads) == 3 and len(sleeps) == 2 and all(0 < s <= 60.0 for s in sleeps)
    assert rep.read_intervals == 2 and [str(v) for v in rep.read_registers or []] == ["1", "2"]
    assert said[-2:] == [
        "meter 7: a read returned 0 interval(s)",
        "meter 7: a read returned 2 interval(s)",
    ]
