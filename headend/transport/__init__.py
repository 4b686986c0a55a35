"""Links to meters behind one interface: MQTT (aiomqtt) and serial lines."""

from headend.transport.base import Transport, TransportError, Uplink

__all__ = ["Transport", "TransportError", "Uplink"]
