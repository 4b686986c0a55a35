"""The private broker lives in `hil.broker` (the demo uses it too); tests import it here."""

from hil.broker import Broker, BrokerError, find_mosquitto, free_port, running_broker

__all__ = ["Broker", "BrokerError", "find_mosquitto", "free_port", "running_broker"]
