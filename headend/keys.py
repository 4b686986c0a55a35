"""Per-meter keys: derived from one master key, so nothing per meter is stored.

The derivations live in `protocol.auth` (one definition for the head-end, the
board provisioning and the tests); this module names them for the head-end.
"""

from __future__ import annotations

from protocol.auth import meter_key, mqtt_password, mqtt_user_password

__all__ = ["meter_key", "mqtt_password", "mqtt_user_password"]
