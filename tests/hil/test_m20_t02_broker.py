"""The broker's security against the real mosquitto with the generated configuration.

protocol/SPEC.md "MQTT": no anonymous client, a login per meter and per head-end
worker, ACLs that confine each to its topics, client id = user name, TLS 1.2+
with the CA pinned, packets over 8 KiB dropped. Each refusal is shown next to
a positive control on the same broker, so a test cannot pass because nothing
works.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from headend.api import pki
from headend.brokerconf import Reader
from hil.broker import Broker, find_mosquitto, free_port, running_broker
from hil.wait import wait_until_sync
from tests.conftest import missing
from tests.support.mqttpeer import DEADLINE_S, Peer

WORKER = "headend"
OUTSIDE = "outsider"  # a notification recipient: a valid login, not a worker
READERS = (Reader("rt-all"), Reader("rt-1001", (1001,)))  # real-time subscribers (H04)


@pytest.fixture(scope="module")
def broker() -> Iterator[Broker]:
    """A secure broker as a site runs it."""
    if find_mosquitto() is None:
        missing("mosquitto not installed: run `make setup` (or apt-get install mosquitto)")
    with running_broker(
        meters=(1001, 1002), workers=(WORKER,), recipients=(OUTSIDE,), readers=READERS
    ) as b:
        yield b


def peer(b: Broker, user: str | None, password: str | None = None, **kw: object) -> Peer:
    pw = password if password is not None or user is None else b.password(user)
    return Peer(b.host, b.port, user, pw, kw.pop("ca", b.ca), **kw).connect()  # type: ignore[arg-type]


@pytest.fixture
def headend(broker: Broker) -> Iterator[Peer]:
    p = peer(broker, WORKER)
    assert p.accepted, p.connack
    p.subscribe(f"$share/{WORKER}/ami/v1/+/up")
    yield p
    p.close()


def test_t02_config_files_are_private_and_admit_no_anonymous(broker: Broker) -> None:
    conf = (broker.workdir / "mosquitto.conf").read_text()
    assert "allow_anonymous false" in conf and "allow_anonymous true" not in conf
    assert "use_username_as_clientid true" in conf and "max_packet_size 8192" in conf
    assert "tls_version tlsv1.2" in conf
    for name in ("mosquitto.conf", "passwd", "acl.json", "pki/ca.key", "pki/server.key"):
        assert (broker.workdir / name).stat().st_mode & 0o077 == 0, name


@pytest.mark.req("T02")
def test_t02_anonymous_and_wrong_password_are_refused(broker: Broker) -> None:
    anon = peer(broker, None)
    wrong = peer(broker, "1001", "0" * 32)
    other = peer(broker, "1001", broker.password(1002))  # another meter's password
    good = peer(broker, "1001")
    try:
        assert good.accepted  # the positive control
        for p in (anon, wrong, other):
            assert p.connack is not None and p.connack.is_failure, p.connack
            assert str(p.connack) in ("Not authorized", "Bad user name or password")
    finally:
        for p in (anon, wrong, other, good):
            p.close()


@pytest.mark.req("M20")
def test_m20_meter_cannot_publish_as_another_meter(broker: Broker, headend: Peer) -> None:
    m1 = peer(broker, "1001")
    try:
        m1.publish("ami/v1/1002/up", b"forged")  # refused by the ACL
        m1.publish("ami/v1/1001/up", b"own")  # the positive control, after it
        wait_until_sync(lambda: headend.payloads("ami/v1/1001/up"), DEADLINE_S, "1001's own uplink")
        # one publisher, one subscriber: had the forged one passed, it came first
        assert headend.payloads("ami/v1/1002/up") == []
    finally:
        m1.close()


@pytest.mark.req("M20")
def test_m20_meter_cannot_read_another_meters_downlinks(broker: Broker, headend: Peer) -> None:
    m1 = peer(broker, "1001")
    try:
        m1.subscribe("ami/v1/1001/down")
        refused = m1.subscribe("ami/v1/1002/down")
        assert refused[0].is_failure, refused
        headend.publish("ami/v1/1002/down", b"for 1002")
        headend.publish("ami/v1/1001/down", b"for 1001")
        wait_until_sync(lambda: m1.payloads("ami/v1/1001/down"), DEADLINE_S, "1001's downlink")
        assert m1.payloads("ami/v1/1002/down") == []
        # nor with a wildcard
        assert m1.subscribe("ami/v1/+/down")[0].is_failure
        headend.publish("ami/v1/1002/down", b"for 1002 again")
        headend.publish("ami/v1/1001/down", b"for 1001 again")
        wait_until_sync(
            lambda: len(m1.payloads("ami/v1/1001/down")) >= 2, DEADLINE_S, "the second one"
        )
        assert m1.payloads("ami/v1/1002/down") == []
    finally:
        m1.close()


@pytest.mark.req("M20")
def test_t02_outsider_cannot_join_the_headend_share_group(broker: Broker, headend: Peer) -> None:
    outsiders = [peer(broker, OUTSIDE), peer(broker, "1001")]
    m2 = peer(broker, "1002")
    try:
        for o in outsiders:
            rcs = o.subscribe(f"$share/{WORKER}/ami/v1/+/up")
            assert rcs[0].is_failure, rcs
        n = 12
        for i in range(n):
            m2.publish("ami/v1/1002/up", bytes([i]))
        # a member of the group would take a share: the head-end gets every one
        wait_until_sync(
            lambda: len(headend.payloads("ami/v1/1002/up")) == n, DEADLINE_S, "all 12 uplinks"
        )
        assert all(o.got == [] for o in outsiders)
    finally:
        for p in (*outsiders, m2):
            p.close()


@pytest.mark.req("H04")
def test_h04_t01_realtime_readers_read_their_meters_feed_and_nothing_else(
    broker: Broker, headend: Peer
) -> None:
    every, one = (peer(broker, r.name) for r in READERS)
    others = [peer(broker, OUTSIDE), peer(broker, "1002")]
    try:
        assert every.subscribe("ami/v1/data/+")[0].is_failure is False
        assert one.subscribe("ami/v1/data/1001")[0].is_failure is False
        # the reader of 1001 only: not another meter's feed, not all of them (T01)
        for topic in ("ami/v1/data/1002", "ami/v1/data/+", "ami/v1/+/up", "ami/v1/+/down"):
            assert one.subscribe(topic)[0].is_failure, topic
        # a recipient and a meter are no real-time readers; no reader reads uplinks
        for o in others:
            assert o.subscribe("ami/v1/data/+")[0].is_failure
        assert every.subscribe("ami/v1/+/up")[0].is_failure
        # a reader writes nothing: a forged uplink and a forged feed are dropped
        every.publish("ami/v1/1001/up", b"forged")
        every.publish("ami/v1/data/1001", b"forged")
        headend.publish("ami/v1/data/1002", b"day of 1002")
        headend.publish("ami/v1/data/1001", b"day of 1001")  # after it: the control
        wait_until_sync(
            lambda: every.payloads("ami/v1/data/1001") and one.payloads("ami/v1/data/1001"),
            DEADLINE_S,
            "1001's feed at both readers",
        )
        assert every.payloads("ami/v1/data/1002") == [b"day of 1002"]
        assert every.payloads("ami/v1/data/1001") == one.payloads("ami/v1/data/1001")
        assert one.payloads("ami/v1/data/1001") == [b"day of 1001"]  # no forged one
        assert one.payloads("ami/v1/data/1002") == []
        assert headend.payloads("ami/v1/1001/up") == []
        assert all(o.got == [] for o in others)
    finally:
        for p in (every, one, *others):
            p.close()


@pytest.mark.req("T02")
def test_t02_wrong_ca_is_refused(broker: Broker, tmp_path: Path) -> None:
    """A client pinning another CA does not talk to this broker (nor to an impostor)."""
    other, _ = pki.init(tmp_path / "other-ca")
    wrong = ssl.create_default_context(cafile=str(other.ca))
    with (
        socket.create_connection((broker.host, broker.port), timeout=DEADLINE_S) as raw,
        pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"),
    ):
        wrong.wrap_socket(raw, server_hostname="localhost")
    good = peer(broker, "1001")
    try:
        assert good.accepted
    finally:
        good.close()


@pytest.mark.req("T02")
def test_t02_server_name_is_checked(broker: Broker) -> None:
    """The certificate names localhost and 127.0.0.1, nothing else."""
    ctx = ssl.create_default_context(cafile=str(broker.ca))
    with (
        socket.create_connection((broker.host, broker.port), timeout=DEADLINE_S) as raw,
        pytest.raises(ssl.SSLCertVerificationError, match="match|mismatch"),
    ):
        ctx.wrap_socket(raw, server_hostname="broker.example.net")
    with (
        socket.create_connection((broker.host, broker.port), timeout=DEADLINE_S) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        assert tls.version() in ("TLSv1.2", "TLSv1.3")


@pytest.mark.req("T02")
def test_t02_another_identitys_client_id_does_not_knock_the_headend_off(
    broker: Broker, headend: Peer
) -> None:
    thief = peer(broker, "1001", client_id=WORKER)  # a meter claiming the head-end's id
    m2 = peer(broker, "1002")
    try:
        assert thief.accepted  # admitted, as itself: the broker made its client id "1001"
        m2.publish("ami/v1/1002/up", b"after the thief")
        wait_until_sync(
            lambda: headend.payloads("ami/v1/1002/up") == [b"after the thief"],
            DEADLINE_S,
            "the head-end still receiving",
        )
        assert headend.disconnected is None
        assert "as 1001 (p5" in broker.log() and "u'1001'" in broker.log()
    finally:
        thief.close()
        m2.close()


@pytest.mark.req("T02")
def test_t02_oversize_packet_is_dropped(broker: Broker, headend: Peer) -> None:
    big = peer(broker, "1002")
    control = peer(broker, "1001")
    try:
        big.publish("ami/v1/1002/up", b"x" * 9000)  # over 8 KiB: the broker disconnects it
        control.publish("ami/v1/1001/up", b"small")
        wait_until_sync(lambda: big.disconnected is not None, DEADLINE_S, "the big one cut off")
        wait_until_sync(
            lambda: b"small" in headend.payloads("ami/v1/1001/up"), DEADLINE_S, "the control"
        )
        assert all(len(p) < 8192 for p in headend.payloads("ami/v1/1002/up"))
    finally:
        big.close()
        control.close()


@pytest.mark.timeout(60)
def test_a_broker_whose_port_was_taken_before_it_bound_starts_on_another(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race between picking a free port and mosquitto binding it (two test
    processes): the other process's listener also accepts, so only mosquitto's own
    "running" says the broker is up; it starts on a fresh port, and clients log in."""
    path = find_mosquitto()
    if path is None:
        missing("mosquitto not installed: run `make setup`")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        first = taken.getsockname()[1]
        picks = iter([first])  # the first port picked is already taken
        monkeypatch.setattr(
            "hil.broker.free_port", lambda host: next(picks, None) or free_port(host)
        )
        b = Broker(path, tmp_path, workers=(WORKER,))
        try:
            b.start()
            assert b.port != first and b.running
            assert "Address already in use" in b.log()
            peer = Peer(b.host, b.port, WORKER, b.password(WORKER), b.ca).connect()
            assert peer.accepted  # its own broker, not the process that held the port
            peer.close()
            b.restart()  # a restart keeps the port it runs on
            assert b.running and b.port != first
        finally:
            b.stop()
