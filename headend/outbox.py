"""What the head-end's logic wants sent: frames to meters and MQTT publications.

The components never do I/O. They write to the database (which commits
before they return) and put what must go out next into an `Outbox`; the
service sends it afterwards. So an acknowledgement to a meter can never
leave before the data it acknowledges is committed (H04, D01). A frame that
carries the instant it leaves (a time-sync answer's t3) is built by the
service as it sends it (`Downlink.build`: no store, no I/O).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from headend.errors import InvalidData


@dataclass(frozen=True, slots=True)
class Downlink:
    """One frame to one meter, over the link the meter was last heard on (None: MQTT);
    ``build`` instead of ``frame``: made when it is sent (`wire`); ``expiry_s``: real
    seconds after which a broker drops it undelivered (a meter offline meanwhile never
    gets a request whose answer nobody waits for any more); None: kept until delivered."""

    meter_id: int
    frame: bytes
    transport: str | None = None
    build: Callable[[], bytes] | None = None
    expiry_s: int | None = None

    def __post_init__(self) -> None:
        if not self.frame and self.build is None:
            raise InvalidData("a downlink needs a frame")

    def wire(self) -> bytes:
        """The frame's bytes (a deferred one built now)."""
        return self.build() if self.build is not None else self.frame


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

    def send(
        self,
        meter_id: int,
        frame: bytes,
        transport: str | None = None,
        expiry_s: int | None = None,
    ) -> None:
        self.downlinks.append(Downlink(meter_id, frame, transport, None, expiry_s))

    def send_built(
        self, meter_id: int, build: Callable[[], bytes], transport: str | None = None
    ) -> None:
        """A frame made by ``build()`` when it leaves (pure: the service calls it)."""
        self.downlinks.append(Downlink(meter_id, b"", transport, build))

    def publish(self, topic: str, payload: bytes) -> None:
        self.publishes.append(Publish(topic, payload))

    def extend(self, other: Outbox) -> None:
        self.downlinks += other.downlinks
        self.publishes += other.publishes

    def __bool__(self) -> bool:
        return bool(self.downlinks or self.publishes)
