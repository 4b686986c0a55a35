"""tools.flash provision (M20: only holders of the site-derived key get in): the meter key
derived from the site master key (version 0) and its MQTT password; secrets in 0600 files,
never in board.json for an ESP32, never printed; bad input refused with one line and
nothing written."""

from __future__ import annotations

import json
import os
import secrets
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from headend.api import pki
from protocol.auth import meter_key, mqtt_password
from tests.support.cli import ROOT, refused, run_module

pytestmark = pytest.mark.req("M20")
MID = 3001
WIFI_KEY = "correct horse battery"


@pytest.fixture
def site(tmp_path: Path) -> dict[str, Path | bytes]:
    """A site master key (0600 file), a Wi-Fi key file (0600), a CA."""
    master = secrets.token_bytes(32)
    key_file = tmp_path / "master.key"
    key_file.write_text(master.hex() + "\n")
    key_file.chmod(0o600)
    wifi = tmp_path / "wifi.key"
    wifi.write_text(WIFI_KEY + "\n")
    wifi.chmod(0o600)
    ca, _ = pki.init(tmp_path / "pki")
    return {"master": master, "key_file": key_file, "wifi": wifi, "ca": ca.ca}


def _provision(site: dict[str, Path | bytes], out: Path, *extra: str) -> list[str]:
    return [
        "tools.flash", "provision", "--meter-id", str(MID),
        "--master-key-file", str(site["key_file"]),
        "--broker", "mqtts://broker.example:8883", "--ca-file", str(site["ca"]),
        "-o", str(out), *extra,
    ]  # fmt: skip


def _private(path: Path) -> bool:
    return stat.S_IMODE(path.stat().st_mode) == 0o600


def test_m20_esp32_config_keeps_every_secret_out_of_board_json_and_in_a_0600_file(
    tmp_path: Path, site: dict[str, Path | bytes]
) -> None:
    out = tmp_path / "meter"
    args = _provision(site, out, "--wifi-ssid", "site-net", "--wifi-key-file", str(site["wifi"]))
    done = run_module(*args, "--channels", "Wh:1,Wh:1,varh:10,varh:10", "--interval-s", "300")
    assert done.returncode == 0, done.stderr
    key = meter_key(site["master"], MID, 0)  # type: ignore[arg-type]
    pw = mqtt_password(key)
    printed = done.stdout + done.stderr
    for secret in (key.hex(), pw, WIFI_KEY, WIFI_KEY.encode().hex(), pw.encode().hex()):
        assert secret not in printed
    board = (out / "board.json").read_text()
    for secret in (key.hex(), pw, WIFI_KEY, "BEGIN CERTIFICATE", "password"):
        assert secret not in board
    cfg = json.loads(board)
    assert cfg["meter_id"] == MID and cfg["interval_s"] == 300
    assert cfg["broker"] == {
        "host": "broker.example",
        "port": 8883,
        "keepalive_s": 60,
        "user": str(MID),
        "tls": {"server_name": "broker.example"},
    }
    assert cfg["channels"] == [[1, 1, 1, 0], [2, 1, 1, 0], [3, 2, 10, 0], [4, 2, 10, 0]]
    nvs = json.loads((out / "secrets.json").read_text())
    assert bytes.fromhex(nvs["key"]) == key
    assert bytes.fromhex(nvs["mqtt_pw"]).decode() == pw  # hal/esp32 reads it as ASCII
    assert bytes.fromhex(nvs["wifi_ssid"]) == b"site-net"
    assert bytes.fromhex(nvs["wifi_key"]).decode() == WIFI_KEY
    assert bytes.fromhex(nvs["ca"])[:1] == b"\x30"  # DER: a SEQUENCE
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    assert all(_private(p) for p in out.iterdir()), [oct(p.stat().st_mode) for p in out.iterdir()]
    assert json.loads((out / "provision.json").read_text())["files"] == ["board.json"]


def test_m20_virtual_board_config_holds_the_key_where_hal_unix_reads_it(
    tmp_path: Path, site: dict[str, Path | bytes]
) -> None:
    out = tmp_path / "meter"
    done = run_module(*_provision(site, out, "--target", "unix", "--server-name", "localhost"))
    assert done.returncode == 0, done.stderr
    key = meter_key(site["master"], MID, 0)  # type: ignore[arg-type]
    cfg = json.loads((out / "board.json").read_text())
    assert cfg["key"] == key.hex() and cfg["broker"]["password"] == mqtt_password(key)
    assert cfg["broker"]["tls"] == {"server_name": "localhost", "ca": "ca.pem"}
    assert (out / "ca.pem").read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")
    assert not (out / "secrets.json").exists()
    assert key.hex() not in done.stdout + done.stderr
    assert all(_private(p) for p in out.iterdir())


def test_m20_the_wifi_key_can_come_from_the_environment_never_argv(
    tmp_path: Path, site: dict[str, Path | bytes]
) -> None:
    out = tmp_path / "meter"
    argv = [sys.executable, "-m", *_provision(site, out, "--wifi-ssid", "site-net")]
    env = dict(os.environ, PYTHONPATH=str(ROOT), AMI_WIFI_KEY=WIFI_KEY)
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    nvs = json.loads((out / "secrets.json").read_text())
    assert bytes.fromhex(nvs["wifi_key"]).decode() == WIFI_KEY
    assert "--wifi-key " not in " ".join(argv)  # there is no such option


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"mode": 0o640}, "is open to group or others (mode 0640)"),
        ({"broker": "http://broker.example:80"}, "expected mqtts://host:port"),
        ({"broker": "mqtts://broker.example"}, "expected mqtts://host:port"),
        ({"broker": "mqtts://u:p@broker.example:8883"}, "the login is the meter's own"),
        ({"extra": ["--channels", "kWh:1"]}, "unknown unit 'kWh'"),
        ({"extra": ["--channels", "Wh:0"]}, "expected 1..65535"),
        ({"extra": ["--interval-s", "700"]}, "--interval-s 700: one of"),
        ({"extra": ["--meter-id", "-1"]}, "--meter-id -1"),
        ({"extra": ["--target", "unix", "--wifi-ssid", "x"]}, "has no Wi-Fi"),
        ({"key": "abcd"}, "expected 64 hex digits"),
        ({"ca": b"not a certificate"}, "not a PEM certificate"),
    ],
)
def test_m20_provision_refuses_bad_input_with_one_line_and_writes_nothing(
    tmp_path: Path, site: dict[str, Path | bytes], change: dict[str, object], says: str
) -> None:
    key_file = site["key_file"]
    assert isinstance(key_file, Path)
    if "mode" in change:
        key_file.chmod(change["mode"])  # type: ignore[arg-type]
    if "key" in change:
        key_file.write_text(str(change["key"]))
    if "ca" in change:
        Path(str(site["ca"])).write_bytes(change["ca"])  # type: ignore[arg-type]
    out = tmp_path / "meter"
    args = _provision(site, out, *change.get("extra", []))  # type: ignore[misc]
    if "broker" in change:
        args[args.index("--broker") + 1] = str(change["broker"])
    done = run_module(*args)
    line = refused(done)
    assert done.returncode == 2 and line.startswith("error: ") and says in line, line
    assert not out.exists()
    master = site["master"]
    assert isinstance(master, bytes) and master.hex() not in done.stderr


def test_m20_provision_dry_run_checks_everything_and_writes_nothing(
    tmp_path: Path, site: dict[str, Path | bytes]
) -> None:
    out = tmp_path / "meter"
    done = run_module(*_provision(site, out, "--dry-run"))
    assert done.returncode == 0, done.stderr
    assert (
        f"write {out}/secrets.json (0600)" in done.stdout
        and "blobs key, mqtt_pw, ca " in done.stdout
    )
    assert not out.exists()
    key = meter_key(site["master"], MID, 0)  # type: ignore[arg-type]
    assert key.hex() not in done.stdout
