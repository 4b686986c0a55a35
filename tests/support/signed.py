"""Signed frames for tests that drive `headend.core.Core` directly (no broker).

`SimMeter` is the protocol-level meter in one object, synchronous: it signs
uplinks with its key and a fresh counter, verifies downlinks like a meter
(the old key taken until a downlink under the new one arrives) and takes a
key_set as SPEC "Authentication" says. `deliver` hands a frame to a Core as
the MQTT link would.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from headend.core import Core
from headend.keys import meter_key
from headend.outbox import Outbox
from headend.transport.base import Uplink
from protocol.auth import unwrap_key, verify_frame
from protocol.errors import BadMac
from protocol.frame import decode, encode

T0 = 1_711_929_600
MASTER = b"\0" * 32


@dataclass
class SimMeter:
    meter_id: int
    master: bytes = MASTER
    channels: int = 2
    counter: int = 0
    last_down: int = 0
    version: int = 0
    key: bytes = b""
    old_key: bytes | None = None
    seq: int = 0
    refused: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.key:
            self.key = meter_key(self.master, self.meter_id)

    def frame(self, mtype: str, body: dict[str, Any], at: int = T0) -> bytes:
        self.seq = self.seq % 0xFFFF + 1
        self.counter += 1
        fields = {
            "type": mtype,
            "seq": self.seq,
            "meter_id": self.meter_id,
            "timestamp": at,
            "auth": {"counter": self.counter, "mac": b""},
            "body": body,
        }
        return encode(fields, key=self.key)

    def register_body(self, channels: int | None = None) -> dict[str, Any]:
        n = self.channels if channels is None else channels
        return {
            "fw_version": "sim-1",
            "interval_s": 900,
            "capacity_days": 45,
            "utc_offset_min": 0,
            "meter_multiplier": 1,
            "channels": [{"kind": 1, "unit": 1, "multiplier": 1, "scaler": 0}] * n,
        }

    def take(self, raw: bytes) -> dict[str, Any] | None:
        """A downlink as the meter takes it: the fields, or None (refused, noted)."""
        try:
            try:
                self.last_down = verify_frame(raw, self.key, self.last_down)
                self.old_key = None
            except BadMac:
                if self.old_key is None:
                    raise
                self.last_down = verify_frame(raw, self.old_key, self.last_down)
        except Exception as e:  # noqa: BLE001  (a test double: every refusal is noted)
            self.refused.append(type(e).__name__)
            return None
        fields = decode(raw)
        if fields["type"] == "key_set":
            b = fields["body"]
            if b["version"] > self.version:
                new = unwrap_key(self.key, b["wrapped"], b["version"])
                self.old_key, self.key, self.version = self.key, new, b["version"]
        return fields

    def key_ack(self, key_set: dict[str, Any]) -> bytes:
        body = {"acked_seq": key_set["seq"], "version": self.version, "status": 0}
        return self.frame("key_ack", body)


def deliver(core: Core, meter_id: int, raw: bytes, now_ms: int = T0 * 1000) -> Outbox:
    return core.on_uplink(Uplink(meter_id, raw, "mqtt"), now_ms)


def frames_to(out: Outbox, meter_id: int) -> list[bytes]:
    return [d.wire() for d in out.downlinks if d.meter_id == meter_id]
