"""`headend pki init` and `headend broker config`, then the real mosquitto on what they wrote.

The operator's path of README "A board, the head-end and the CLI by hand": the
files are private, mosquitto starts on them, the site's logins work over TLS
with the CA pinned, anything else is refused; bad input is one line, exit 2.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from headend import masterkey
from headend.api import meter_key
from hil.broker import find_mosquitto, free_port
from hil.wait import wait_until_sync
from protocol.auth import mqtt_password, mqtt_user_password
from tests.conftest import missing
from tests.support.mqttpeer import Peer

ROOT = Path(__file__).resolve().parents[2]


def headend(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "headend", *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith("AMI_")},
    )


@pytest.fixture
def site(tmp_path: Path) -> Path:
    key = tmp_path / "master.key"
    assert headend("keys", "init", str(key)).returncode == 0
    (tmp_path / "headend.toml").write_text(
        f'[headend]\nbroker = "mqtts://headend@127.0.0.1:8883"\nmaster_key_file = "{key}"\n'
    )
    return tmp_path


@pytest.fixture
def mosquitto(site: Path) -> Iterator[tuple[int, Path]]:
    """pki init + broker config + mosquitto -c: (port, CA)."""
    binary = find_mosquitto()
    if binary is None:
        missing("mosquitto not installed: run `make setup` (or apt-get install mosquitto)")
    port = free_port()
    made = headend("pki", "init", str(site / "pki"))
    assert made.returncode == 0, made.stderr
    conf = headend(
        "broker", "config", str(site / "broker"), "--pki", str(site / "pki"),
        "--port", str(port), "--meters", "1001-1002,1005", "--recipient", "ops",
        "--realtime-reader", "acme:1001",
        "--log", str(site / "mosquitto.log"), "--config", str(site / "headend.toml"),
    )  # fmt: skip
    assert conf.returncode == 0, conf.stderr
    assert "3 meter(s), worker(s) headend, recipient(s) ops" in conf.stdout
    assert "real-time reader(s) acme (1 meters)" in conf.stdout
    proc = subprocess.Popen(
        [binary, "-c", str(site / "broker" / "mosquitto.conf")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_until_sync(
            lambda: (
                "running" in (site / "mosquitto.log").read_text()
                if (site / "mosquitto.log").exists()
                else proc.poll() is not None
            ),
            10,
            "mosquitto running",
        )
        assert proc.poll() is None, (site / "mosquitto.log").read_text()
        yield port, site / "pki" / "ca.pem"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.req("T02")
def test_t02_pki_and_broker_config_files_are_private_and_the_ca_is_kept(site: Path) -> None:
    first = headend("pki", "init", str(site / "pki"))
    assert first.returncode == 0 and "wrote" in first.stdout
    ca = (site / "pki" / "ca.pem").read_bytes()
    again = headend("pki", "init", str(site / "pki"))
    assert again.returncode == 0 and "all there already" in again.stdout
    assert (site / "pki" / "ca.pem").read_bytes() == ca  # the meters' pinned CA survives
    conf = headend(
        "broker", "config", str(site / "broker"), "--pki", str(site / "pki"),
        "--meters", "1001", "--config", str(site / "headend.toml"),
    )  # fmt: skip
    assert conf.returncode == 0, conf.stderr
    for name in ("pki/ca.key", "pki/server.key", "broker/mosquitto.conf", "broker/passwd"):
        assert (site / name).stat().st_mode & 0o077 == 0, name
    assert (site / "broker" / "acl.json").stat().st_mode & 0o077 == 0
    master = masterkey.read(site / "master.key")
    text = first.stdout + again.stdout + conf.stdout + conf.stderr
    text += (site / "broker" / "passwd").read_text()  # hashes only
    for secret in (master.hex(), mqtt_password(meter_key(master, 1001))):
        assert secret not in text


@pytest.mark.req("T02", "M20")
def test_t02_the_generated_config_admits_the_site_and_nobody_else(
    site: Path, mosquitto: tuple[int, Path]
) -> None:
    port, ca = mosquitto
    master = masterkey.read(site / "master.key")

    def login(user: str, password: str) -> Peer:
        return Peer("127.0.0.1", port, user, password, ca).connect()

    def handed(user: str) -> str:
        """The password `headend broker password` hands the login's owner."""
        out = headend(
            "broker", "password", user, "-o", str(site / f"{user}.pw"),
            "--config", str(site / "headend.toml"),
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert (site / f"{user}.pw").stat().st_mode & 0o077 == 0
        pw = (site / f"{user}.pw").read_text().strip()
        assert pw not in out.stdout + out.stderr  # never printed
        return pw

    peers = {
        "meter 1005": login("1005", mqtt_password(meter_key(master, 1005))),
        "worker": login("headend", mqtt_user_password(master, "headend")),
        "recipient": login("ops", handed("ops")),
        "reader": login("acme", handed("acme")),
        "meter not admitted": login("1003", mqtt_password(meter_key(master, 1003))),
        "stranger": login("eve", mqtt_user_password(master, "eve")),
        "wrong password": login("acme", handed("ops")),
    }
    try:
        assert [k for k, p in peers.items() if p.accepted] == [
            "meter 1005", "worker", "recipient", "reader"
        ]  # fmt: skip
        assert peers["recipient"].subscribe("ami/v1/+/up")[0].is_failure
        assert not peers["recipient"].subscribe("ami/v1/notify/ops")[0].is_failure
        assert not peers["reader"].subscribe("ami/v1/data/1001")[0].is_failure
        assert peers["reader"].subscribe("ami/v1/data/1002")[0].is_failure
        assert not peers["worker"].subscribe("$share/headend/ami/v1/+/up")[0].is_failure
    finally:
        for p in peers.values():
            p.close()


@pytest.mark.req("T02")
@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--meters", "1001-x"], "meters: expected ids or ranges"),
        (["--meters", "5-1"], "is not a range of meter ids"),
        (["--worker", "12"], "not a number"),
        (["--worker", "a/b"], "without spaces"),
        ([], "--pki DIR is needed"),
        (["--gateway", "gw1"], "gateway: expected NAME:IDS"),
        (["--gateway", "12:1-3"], "not a number"),
        (["--gateway", "gw1:1-3", "--gateway", "gw2:3-4"], "already carried by another"),
        (["--gateway", "gw1:"], "no meter ids"),
        (["--realtime-reader", "acme:"], "no meter ids"),
        (["--realtime-reader", "acme:x"], "meters: expected ids or ranges"),
        (["--realtime-reader", "a b"], "without spaces"),
        (["--realtime-reader", "acme", "--recipient", "acme"], "a name is given twice"),
    ],
)
def test_t02_broker_config_bad_input_is_one_line(site: Path, args: list[str], says: str) -> None:
    pki = [] if not args else ["--pki", str(site / "pki")]
    if pki:
        assert headend("pki", "init", str(site / "pki")).returncode == 0
    out = headend(
        "broker", "config", str(site / "b"), *pki, *args, "--config", str(site / "headend.toml")
    )
    assert out.returncode == 2 and len(out.stderr.splitlines()) == 1, out.stderr
    assert says in out.stderr and "Traceback" not in out.stderr
    assert not (site / "b" / "passwd").exists()


def _roles(broker_dir: Path) -> dict[str, list[tuple[str, str]]]:
    """acl.json's roles: (ACL type, topic) of each."""
    acl = json.loads((broker_dir / "acl.json").read_text())
    return {r["rolename"]: [(a["acltype"], a["topic"]) for a in r["acls"]] for r in acl["roles"]}


def _reads(*topics: str) -> list[tuple[str, str]]:
    """A reader of exactly these topics."""
    return [("subscribeLiteral", t) for t in topics] + [("publishClientReceive", t) for t in topics]


@pytest.mark.req("H04", "T01")
def test_t01_broker_config_gives_each_party_a_reader_of_its_granted_meters(site: Path) -> None:
    cfg = ("--config", str(site / "headend.toml"), "--database", f"sqlite:///{site / 'h.db'}")
    assert headend("db", "init", *cfg).returncode == 0
    for name, meters in (("acme", "1001-1002"), ("gone", "7"), ("none", ""), ("grid", "3")):
        assert headend("parties", "add", name, "--meters", meters, *cfg).returncode == 0
    assert headend("parties", "revoke", "gone", *cfg).returncode == 0
    assert headend("parties", "grant", "grid", "--meters", "3-4", *cfg).returncode == 0
    assert headend("pki", "init", str(site / "pki")).returncode == 0
    argv = ("broker", "config", str(site / "b"), "--pki", str(site / "pki"), "--meters", "1001")
    out = headend(*argv, "--realtime-parties", "--json", *cfg)
    assert out.returncode == 0, out.stderr
    # revoked, and an empty set (which grants nothing): no reader at all, never one of all
    assert json.loads(out.stdout)["realtime_readers"] == {"acme": 2, "grid": 2}
    assert _roles(site / "b")["reader-grid"] == _reads("ami/v1/data/3", "ami/v1/data/4")
    # a party whose name cannot be an MQTT login: one line, nothing written
    assert headend("parties", "add", "a/b", "--meters", "5", *cfg).returncode == 0
    bad = headend(*argv[:2], str(site / "c"), *argv[3:], "--realtime-parties", *cfg)
    assert bad.returncode == 2 and len(bad.stderr.splitlines()) == 1, bad.stderr
    assert "party: expected a name" in bad.stderr and not (site / "c" / "passwd").exists()


@pytest.mark.req("T02")
def test_t02_broker_password_bad_input_is_one_line(site: Path) -> None:
    cfg = ("--config", str(site / "headend.toml"))
    for args, says in (
        (["1001", "-o", str(site / "pw")], "not a number"),
        (["a/b", "-o", str(site / "pw")], "without spaces"),
        (["acme", "-o", str(site / "no" / "pw")], "no folder"),
    ):
        out = headend("broker", "password", *args, *cfg)
        assert out.returncode == 2 and len(out.stderr.splitlines()) == 1, out.stderr
        assert says in out.stderr and "Traceback" not in out.stderr
        assert not (site / "pw").exists()
    dev = headend("broker", "password", "acme", "-o", str(site / "pw"))  # the all-zero key
    assert dev.returncode == 2 and "development master key" in dev.stderr
    assert not (site / "pw").exists()


@pytest.mark.req("T02")
def test_t02_broker_config_gateway_login_carries_exactly_its_meters(site: Path) -> None:
    assert headend("pki", "init", str(site / "pki")).returncode == 0
    out = headend(
        "broker", "config", str(site / "b"), "--pki", str(site / "pki"), "--meters", "7",
        "--gateway", "gw1:1001-1002", "--config", str(site / "headend.toml"), "--json",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["gateways"] == {"gw1": 2}
    acl = json.loads((site / "b" / "acl.json").read_text())
    assert {"username": "gw1", "roles": [{"rolename": "gateway-gw1"}]} in acl["clients"]
    (role,) = [r for r in acl["roles"] if r["rolename"] == "gateway-gw1"]
    assert [(a["acltype"], a["topic"]) for a in role["acls"]] == [
        ("subscribeLiteral", "ami/v1/1001/down"),
        ("subscribeLiteral", "ami/v1/1002/down"),
        ("publishClientReceive", "ami/v1/1001/down"),
        ("publishClientReceive", "ami/v1/1002/down"),
        ("publishClientSend", "ami/v1/1001/up"),
        ("publishClientSend", "ami/v1/1002/up"),
    ]
    users = [line.split(":")[0] for line in (site / "b" / "passwd").read_text().splitlines()]
    assert users == ["7", "headend", "gw1"]  # the gateway's meters need no login of their own


@pytest.mark.req("H04", "T01")
def test_h04_broker_config_realtime_readers_read_all_or_their_meters(site: Path) -> None:
    assert headend("pki", "init", str(site / "pki")).returncode == 0
    out = headend(
        "broker", "config", str(site / "b"), "--pki", str(site / "pki"), "--meters", "7",
        "--realtime-reader", "acme:1001-1002", "--realtime-reader", "grid",
        "--config", str(site / "headend.toml"), "--json",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["realtime_readers"] == {"acme": 2, "grid": "all"}
    roles = _roles(site / "b")
    assert roles["reader-acme"] == _reads("ami/v1/data/1001", "ami/v1/data/1002")
    assert roles["reader-grid"] == [
        ("subscribePattern", "ami/v1/data/+"),
        ("publishClientReceive", "ami/v1/data/+"),
    ]
    users = [line.split(":")[0] for line in (site / "b" / "passwd").read_text().splitlines()]
    assert users == ["7", "headend", "acme", "grid"]


@pytest.mark.req("T02")
def test_t02_broker_config_refuses_the_development_key(tmp_path: Path) -> None:
    assert headend("pki", "init", str(tmp_path / "pki")).returncode == 0
    out = headend("broker", "config", str(tmp_path / "b"), "--pki", str(tmp_path / "pki"))
    assert out.returncode == 2 and "development master key" in out.stderr
    assert "00" * 32 not in out.stderr
