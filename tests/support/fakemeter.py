"""The protocol-level fake meter, for the tests: it lives in hil/fakemeter.py, where the
scenarios and benches may use it too (hil/ and bench/ must not import tests/)."""

from hil.fakemeter import DAY, FakeMeter, Handler, Link, MqttLink, SerialBus, SerialLink, value

__all__ = ["DAY", "FakeMeter", "Handler", "Link", "MqttLink", "SerialBus", "SerialLink", "value"]
