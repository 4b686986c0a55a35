"""paho's MQTT 5 `Properties`, made without rebuilding its tables (paho-mqtt 2.2.0, pinned).

paho's packet decoder makes a `Properties` for every PUBLISH and PUBACK it
reads (one uplink, then its read_ack's and real-time publications' PUBACKs:
four a frame), and each one builds its three lookup tables again (property
names, ids and types, ~70 ``list.index`` calls) and is then cleared by trying
each of its 27 names: ~8-13 us a packet, a sixth of the event loop's profile.

`SharedTables` is paho's class with those tables built once and shared (paho
only reads them: they do not depend on the packet type) and `clear` deleting
only what is set; every property is still set, checked and read by paho's
own code. `install` makes paho's decoder use it; what it decodes is equal
(tests compare).
"""

from __future__ import annotations

from paho.mqtt import _packet
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

_TABLES = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
_PRIVATE = frozenset(("packetType", "types", "names", "properties"))


class SharedTables(Properties):
    """`Properties` whose names/ids/types tables are the one shared copy."""

    def __init__(self, packetType: int) -> None:  # noqa: N803 - paho's name
        # what paho's __init__ sets, through the same path (its private names)
        object.__setattr__(self, "packetType", packetType)
        object.__setattr__(self, "types", _TABLES.types)
        object.__setattr__(self, "names", _TABLES.names)
        object.__setattr__(self, "properties", _TABLES.properties)

    def clear(self) -> None:
        """Delete the properties set (paho's tries every name)."""
        for name in [n for n in vars(self) if n not in _PRIVATE]:
            delattr(self, name)


def install() -> None:
    """Make paho's packet decoder build `SharedTables` (once per process; idempotent).
    A paho whose decoder no longer makes its `Properties` there fails here, loudly."""
    if getattr(_packet, "Properties", None) not in (Properties, SharedTables):
        raise ImportError("paho.mqtt._packet builds no Properties: pahoprops needs paho-mqtt 2.2")
    _packet.Properties = SharedTables  # type: ignore[attr-defined]
