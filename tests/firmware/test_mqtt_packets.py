# MQTT 3.1.1 packet building/parsing of the meter's client (CPython and MicroPython).
from link import mqtt


def test_remaining_length_spec_examples():
    # MQTT 3.1.1 §2.2.3 table: boundaries of 1..4 byte encodings
    assert mqtt.remaining_length(0) == b"\x00"
    assert mqtt.remaining_length(127) == b"\x7f"
    assert mqtt.remaining_length(128) == b"\x80\x01"
    assert mqtt.remaining_length(16383) == b"\xff\x7f"
    assert mqtt.remaining_length(16384) == b"\x80\x80\x01"
    assert mqtt.remaining_length(2097151) == b"\xff\xff\x7f"


def test_connect_packet_is_persistent_session_mqtt311():
    p = mqtt.connect_packet("m1001", 60)
    assert p[0] == 0x10
    assert p[2:8] == b"\x00\x04MQTT"
    assert p[8] == 4  # protocol level 3.1.1
    assert p[9] & 0x02 == 0  # clean session off: the broker keeps our queue
    assert p[10:12] == b"\x00\x3c"
    assert p[12:] == b"\x00\x05m1001"


def test_publish_round_trip_qos1_with_dup():
    p = mqtt.publish_packet("ami/v1/7/up", b"\x01\x02", 513, dup=True)
    assert p[0] == 0x30 | 0x08 | 0x02
    body = p[2:]
    topic, payload, qos, pid, dup = mqtt.parse_publish(p[0] & 0x0F, body)
    assert (topic, payload, qos, pid, dup) == ("ami/v1/7/up", b"\x01\x02", 1, 513, True)


def test_malformed_publish_raises_value_error():
    for flags, body in ((0x02, b"\x00"), (0x02, b"\x00\x01a"), (0x06, b"\x00\x00\x00\x01")):
        try:
            mqtt.parse_publish(flags, body)
        except ValueError:
            continue
        raise AssertionError("accepted %r" % (body,))


def test_subscribe_and_acks():
    assert mqtt.subscribe_packet(1, ["a/b"]) == b"\x82\x08\x00\x01\x00\x03a/b\x01"
    assert mqtt.puback_packet(258) == b"\x40\x02\x01\x02"


def test_backoff_grows_caps_and_jitters():
    assert mqtt.backoff_ms(0, 0) == 250
    assert mqtt.backoff_ms(0, 65535) < 500
    assert mqtt.backoff_ms(3, 0) == 2000
    assert mqtt.backoff_ms(30, 65535) <= 60000
    assert mqtt.backoff_ms(30, 0) == 30000
    seen = set(mqtt.backoff_ms(4, r) for r in (0, 1000, 30000, 65535))
    assert len(seen) == 4


def test_m20_connect_packet_carries_the_login():
    p = mqtt.connect_packet("1001", 60, "1001", "0123456789abcdef0123456789abcdef")
    assert p[0] == 0x10 and p[1] == len(p) - 2
    assert p[9] == 0x80 | 0x40  # user name and password flags; clean session still off
    assert p[12:] == b"\x00\x041001" + b"\x00\x041001" + b"\x00\x20" + b"0123456789abcdef" * 2
    anon = mqtt.connect_packet("1001", 60)
    assert anon[9] == 0 and anon[12:] == b"\x00\x041001"
