"""What the head-end's logic wants sent: frames to meters and MQTT publications.

The components never do I/O. They write to the database (which commits
before they return) and put what must go out next into an `Outbox`; the
service sends it afterwards. So an acknowledgement to a meter can never
leave before the data it acknowledges is committed (H04, D01).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from headend.errors import InvalidData


@dataclass(frozen=True, slots=True)
class Downlink:
    """One frame to one meter, over the link the meter was last heard on (None: MQTT)."""

    meter_id: int
    frame: bytes
    transport: str | None = None

    def __post_init__(self) -> None:
        if not self.frame:
            raise InvalidData("a downlink needs a frame")


@dataclass(frozen=True, slots=True)
class Publish:
    """One MQTT message (real-time data, a notification to a recipient)."""

    topic: str
    payload: bytes
    qos: int = 1

    def __post_init__(self) -> None:
        if not self.topic or "+" in self.topic or "#" in self.topic:
            raise InvalidData(f"publish topic: expected a plain topic, got {self.topic!r}")


@dataclass
class Outbox:
    """Downlinks and publications, in the order they were decided."""

    downlinks: list[Downlink] = field(default_factory=list)
    publishes: list[Publish] = field(default_factory=list)

    def send(self, meter_id: int, frame: bytes, transport: str | None = None) -> None:
        self.downlinks.append(Downlink(meter_id, frame, transport))

    def publish(self, topic: str, payload: bytes) -> None:
        self.publishes.append(Publish(topic, payload))

    def extend(self, other: Outbox) -> None:
        self.downlinks += other.downlinks
        self.publishes += other.publishes

    def __bool__(self) -> bool:
        return bool(self.downlinks or self.publishes)
