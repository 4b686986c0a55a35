"""N01: paho decodes the same MQTT 5 properties with `SharedTables` as with its own class.

`headend.transport.pahoprops` (installed by the MQTT link) makes paho's decoder
build properties without their lookup tables rebuilt per packet; what a
PUBLISH or PUBACK decodes to must not change.
"""

from __future__ import annotations

import struct

import pytest
from paho.mqtt import _packet
from paho.mqtt.enums import MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from headend.transport.pahoprops import SharedTables, install

pytestmark = pytest.mark.req("N01")
V5 = MQTTProtocolVersion.MQTTv5


def _publish_packet(props: bytes, payload: bytes = b"frame") -> bytes:
    topic = b"ami/v1/500001/up"
    return struct.pack("!H", len(topic)) + topic + struct.pack("!H", 7) + props + payload


def _props() -> bytes:
    p = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    p.MessageExpiryInterval = 30
    p.ContentType = "application/octet-stream"
    p.UserProperty = ("a", "1")
    p.UserProperty = ("b", "2")
    return p.pack()  # type: ignore[no-any-return, no-untyped-call]


def _decoded(cls: type[Properties], packet: bytes, ack: bytes) -> tuple[object, ...]:
    saved = _packet.Properties  # type: ignore[attr-defined]
    _packet.Properties = cls  # type: ignore[attr-defined]
    try:
        pub = _packet.decode_publish(0x32, packet, V5)
        puback = _packet.decode_puback(0x40, ack, V5)
    finally:
        _packet.Properties = saved  # type: ignore[attr-defined]
    assert pub.properties is not None
    return (
        pub.topic,
        pub.mid,
        pub.payload,
        pub.properties.json(),  # type: ignore[no-untyped-call]
        str(pub.properties),
        puback.mid,
        puback.reason.value,
        puback.properties.json(),  # type: ignore[no-untyped-call]
    )


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    ("props", "ack"),
    [
        (b"\x00", b"\x00\x07"),  # none (what the broker sends): a 2-byte PUBACK
        (_props(), b"\x00\x07\x10\x05\x1f\x00\x02no"),  # some, repeated; reason + string
    ],
)
def test_n01_shared_tables_decode_equal_to_paho(props: bytes, ack: bytes) -> None:
    packet = _publish_packet(props)
    assert _decoded(SharedTables, packet, ack) == _decoded(Properties, packet, ack)


@pytest.mark.timeout(10)
def test_n01_shared_tables_keep_each_packets_properties_apart() -> None:
    a, b = SharedTables(PacketTypes.PUBLISH), SharedTables(PacketTypes.PUBLISH)
    a.unpack(_props())  # type: ignore[no-untyped-call]
    assert a.json()["MessageExpiryInterval"] == 30  # type: ignore[no-untyped-call]
    assert b.json() == {} and b.isEmpty()  # type: ignore[no-untyped-call]
    a.unpack(b"\x00")  # type: ignore[no-untyped-call]  # cleared, as paho's clear does
    assert a.json() == {}  # type: ignore[no-untyped-call]
    fresh = Properties(PacketTypes.PUBACK)  # type: ignore[no-untyped-call]
    assert (a.names, a.properties, a.types) == (fresh.names, fresh.properties, fresh.types)


@pytest.mark.timeout(10)
def test_n01_the_mqtt_link_installs_the_shared_tables() -> None:
    import headend.transport.mqtt  # noqa: F401 - installs at import

    install()  # idempotent
    assert _packet.Properties is SharedTables  # type: ignore[attr-defined]
