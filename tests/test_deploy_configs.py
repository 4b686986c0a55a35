"""N01, H08: the deployment examples of docs/SCALE.md (deploy/) are valid for their tools.

systemd-analyze verify for the unit, `nats-server -t` for the NATS node, the
head-end's own config loader for headend.toml, the PostgreSQL server's own list
of settings for the postgresql.conf snippets, and the EMQX file's structure
(EMQX is not installed here: its HOCON file is written as JSON, a subset of HOCON).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import psycopg
import pytest

from headend import pki
from headend.brokerconf import MAX_PACKET_SIZE
from headend.config import Config, load
from hil.natscluster import check_config, find_nats_server
from tests.conftest import missing

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


@pytest.mark.req("N01")
def test_n01_systemd_unit_verifies(tmp_path: Path) -> None:
    unit = (DEPLOY / "headend@.service").read_text()
    # the unit names the install prefix /opt/ami; here: this checkout's venv
    exe = Path(sys.executable).with_name("headend")
    assert "/opt/ami/.venv/bin/headend serve" in unit
    # a template is verified through an instance: the copy is named as one
    inst = tmp_path / "headend@w1.service"
    inst.write_text(unit.replace("/opt/ami/.venv/bin/headend", str(exe)))
    analyze = shutil.which("systemd-analyze")
    if analyze is None:  # parse at least: the keys systemd needs
        assert re.search(r"^ExecStart=/\S+ serve --config \S+ --worker %i$", unit, re.M)
        assert re.search(r"^Restart=always$", unit, re.M)
        return
    r = subprocess.run(
        [analyze, "verify", str(inst)], capture_output=True, text=True, timeout=60, check=False
    )
    assert r.returncode == 0 and "headend@" not in r.stderr, r.stderr
    inst.write_text(unit.replace("ExecStart=/opt/ami/.venv/bin/headend", "ExecStart=headend"))
    bad = subprocess.run(
        [analyze, "verify", str(inst)], capture_output=True, text=True, timeout=60, check=False
    )
    assert bad.returncode != 0  # the check is not a no-op


@pytest.mark.req("H08")
def test_h08_headend_toml_loads_on_both_transports() -> None:
    text = (DEPLOY / "headend.toml").read_text()
    cfg = load(DEPLOY / "headend.toml", env={})
    assert (cfg.transport, cfg.share_group, cfg.window_end) == ("mqtt", "headend", "08:00")
    assert cfg.realtime is True
    assert cfg.broker_url.tls and cfg.database.startswith("postgresql://")
    nats = re.sub(r"^transport = \"mqtt\"$", "", text, flags=re.M).replace(
        "# transport", "transport"
    )
    nats = re.sub(r"^# (nats_\w+ =)", r"\1", nats, flags=re.M)
    cfg = Config(**tomllib.loads(nats)["headend"])
    assert cfg.transport == "nats" and len(cfg.nats_servers) == 3 and cfg.nats_replicas == 3


@pytest.mark.req("H08")
def test_h08_nats_node_config_passes_nats_server_t(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    binary = find_nats_server()
    if binary is None:
        missing("nats-server not installed: run `make setup` (or apt-get install nats-server)")
    pki.init(tmp_path / "pki")
    conf = (DEPLOY / "nats" / "nats-server.conf").read_text()
    conf = conf.replace("/etc/ami/pki", str(tmp_path / "pki")).replace(
        "/var/lib/nats", str(tmp_path / "js")
    )
    path = tmp_path / "nats-server.conf"
    path.write_text(conf)
    monkeypatch.setenv("NATS_NAME", "nats-1")  # the node's name comes from its environment
    assert check_config(binary, path) is None, check_config(binary, path)
    # a broken file is reported (the check is not a no-op)
    path.write_text(conf.replace("jetstream {", "jetstream {{"))
    assert check_config(binary, path) is not None


@pytest.mark.req("H08")
def test_h08_emqx_example_shared_subscriptions_packet_limit_and_acls() -> None:
    conf = json.loads((DEPLOY / "emqx" / "emqx.conf").read_text())
    mqtt = conf["mqtt"]
    assert mqtt["shared_subscription"] is True
    assert int(mqtt["max_packet_size"].removesuffix("KB")) * 1024 == MAX_PACKET_SIZE
    assert int(mqtt["session_expiry_interval"].removesuffix("m")) * 60 >= Config().session_expiry_s
    assert conf["listeners"]["tcp"]["default"]["enable"] is False  # TLS only
    assert conf["authorization"]["no_match"] == "deny"
    rules = [
        ln
        for ln in (DEPLOY / "emqx" / "acl.conf").read_text().splitlines()
        if ln.strip() and not ln.startswith("%%")
    ]
    assert all(re.fullmatch(r"\{(allow|deny), .*\}\.", ln) for ln in rules), rules
    assert rules[-1] == "{deny, all}."
    assert any("ami/v1/${username}/up" in ln and "publish" in ln for ln in rules)
    assert any("$share/headend/ami/v1/+/up" in ln for ln in rules)
    # real-time readers subscribe to the head-end's topic (H04), and publish nothing
    feed = Config().realtime_topic.replace("{meter}", "+")
    assert [ln for ln in rules if "rt-" in ln] == [
        '{allow, {username, {re, "^rt-[a-z0-9-]+$"}}, subscribe, ["' + feed + '"]}.'
    ]


@pytest.mark.req("N01")
def test_n01_postgresql_snippets_name_real_settings(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn) as conn:
        known = {r[0] for r in conn.execute("SELECT name FROM pg_settings").fetchall()}
    for name in ("primary.conf", "replica.conf"):
        for ln in (DEPLOY / "postgresql" / name).read_text().splitlines():
            if not ln.strip() or ln.startswith("#"):
                continue
            m = re.fullmatch(r"(\w+) = ('[^']*'|[\w.]+)", ln)
            assert m, f"{name}: not `name = value`: {ln!r}"
            assert m.group(1) in known, f"{name}: {m.group(1)} is not a PostgreSQL setting"
