"""M18: the probe's command line refuses bad input in one line, says "no answer"
when nothing answers, stops on Ctrl-C with 130, and `show` checks a file's MACs."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from hil.wait import wait_until_sync
from protocol import download as dl
from protocol.auth import probe_key
from protocol.frame import encode
from tests.support.cli import ROOT, refused, run_module

pytestmark = pytest.mark.req("M18")

K_OP = probe_key(bytes(32), 5)


def _key_file(tmp_path: Path, mode: int = 0o600) -> Path:
    path = tmp_path / "op.key"
    path.write_text(
        json.dumps({"meter": 77, "operator": 5, "key_version": 0, "probe_key": K_OP.hex()})
    )
    path.chmod(mode)
    return path


def _download_file(tmp_path: Path) -> Path:
    body = {"part": 0, "parts": 1, "sections": [{"tag": "clock", "body": {"time": 1}}]}
    frame = encode(
        {"type": "download_data", "seq": 1, "meter_id": 77, "timestamp": 1,
         "auth": {"counter": 9, "mac": b""}, "body": body},
        key=K_OP,
    )  # fmt: skip
    doc = dl.build(
        meter=77, operator=5, key_version=0, downloaded_at="2026-03-01T00:00:00Z",
        tool="ami-probe test", frames=[frame], k_op=K_OP,
    )  # fmt: skip
    path = tmp_path / "dl.json"
    path.write_text(dl.dumps(doc))
    return path


def test_m18_typos_and_unusable_files_are_one_line_and_exit_2(tmp_path: Path) -> None:
    proc = run_module("tools.probe", "readout", "--port", "socket://127.0.0.1:1", "--baud", "7")
    assert proc.returncode == 2 and "expected one of 300" in proc.stderr
    line = refused(run_module("tools.probe", "readout", "--port", "/dev/no-such-tty"))
    assert line.startswith("error: cannot open /dev/no-such-tty")
    loose = _key_file(tmp_path, 0o644)
    proc = run_module(
        "tools.probe", "download", "--port", "socket://127.0.0.1:1", "--key-file", str(loose),
        "-o", str(tmp_path / "o.json"),
    )  # fmt: skip
    assert proc.returncode == 2 and "chmod 600" in refused(proc) and K_OP.hex() not in proc.stderr
    junk = tmp_path / "junk.json"
    junk.write_text("[]")
    proc = run_module("tools.probe", "show", str(junk))
    assert proc.returncode == 2 and "not a download file" in refused(proc)


def test_m18_show_lists_a_file_and_says_when_its_mac_does_not_verify(tmp_path: Path) -> None:
    path = _download_file(tmp_path)
    key = _key_file(tmp_path)
    proc = run_module("tools.probe", "show", str(path), "--key-file", str(key), "--json")
    assert proc.returncode == 0, proc.stderr
    shown = json.loads(proc.stdout)
    assert shown["mac"] == "ok (file and 1 frames)" and shown["meter"] == 77
    doc = json.loads(path.read_text())
    doc["operator"] = 6
    path.write_text(json.dumps(doc))
    proc = run_module("tools.probe", "show", str(path), "--key-file", str(key))
    assert proc.returncode == 2 and "operator 6" in refused(proc)
    doc["operator"] = 5
    doc["downloaded_at"] = "2030-01-01T00:00:00Z"
    path.write_text(json.dumps(doc))
    proc = run_module("tools.probe", "show", str(path), "--key-file", str(key))
    assert proc.returncode == 1 and "BAD: file MAC does not verify" in proc.stdout


def test_m18_a_port_that_never_answers_is_no_answer() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        url = f"socket://127.0.0.1:{server.getsockname()[1]}"
        proc = run_module("tools.probe", "readout", "--port", url)
        line = refused(proc)
        assert proc.returncode == 1 and "no identification from the meter" in line


def test_m18_ctrl_c_while_waiting_for_the_meter_exits_130_without_a_traceback() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        url = f"socket://127.0.0.1:{server.getsockname()[1]}"
        with subprocess.Popen(
            [sys.executable, "-m", "tools.probe", "readout", "--port", url],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        ) as child:  # fmt: skip
            try:
                server.settimeout(30)
                conn, _ = server.accept()  # the probe is connected: it waits for an answer
                with conn:
                    wait_until_sync(lambda: conn.recv(16), 10, "the sign-on arrives")
                    child.send_signal(signal.SIGINT)
                    _, err = child.communicate(timeout=30)
            finally:
                child.kill()
    assert child.returncode == 130 and "Traceback" not in err and err.strip() == "interrupted"
