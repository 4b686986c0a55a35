"""Framing of downlinks: per-meter seq numbers, the replay-guard counter, the MAC.

`Downlinks` turns (meter, message type, body, now) into frame bytes. Seq
numbers are per meter, 1..65535 (0 would read as "no request" in a
read_response's request_seq), and start at a random value after a restart so
a late answer to the previous run's frames cannot match a new one. A signed
frame takes the meter's next counter from the store (`Registry.next_counter`:
persistent, strictly increasing) and is signed with the meter's key. What a
request is waiting for is tracked durably by the store (jobs, schedules), not
here.
"""

from __future__ import annotations

import secrets
from typing import Any

from headend.errors import HeadendError
from headend.keys import meter_key
from headend.store.registry import Registry
from protocol.frame import encode

_SEQ_MOD = 0xFFFF


class Downlinks:
    """Args:
    master_key: the 32-byte master key (each meter's key is derived from it).
    registry: the source of persistent counters; None frames unsigned downlinks only
        (the service's time-sync answers on the event loop).

    Used from one thread.
    """

    def __init__(self, master_key: bytes, registry: Registry | None) -> None:
        self._master = master_key
        self.registry = registry
        self._seq: dict[int, int] = {}
        self._keys: dict[int, bytes] = {}

    def _next_seq(self, meter_id: int) -> int:
        last = self._seq.get(meter_id)
        if last is None:
            last = secrets.randbelow(_SEQ_MOD)
        seq = last % _SEQ_MOD + 1
        self._seq[meter_id] = seq
        return seq

    def _key(self, meter_id: int) -> bytes:
        key = self._keys.get(meter_id)
        if key is None:
            key = self._keys[meter_id] = meter_key(self._master, meter_id)
        return key

    def frame(
        self, meter_id: int, mtype: str, body: dict[str, Any], now_ms: int, auth: bool = False
    ) -> tuple[int, bytes]:
        """(seq, frame) of one downlink; ``auth`` signs it with the meter's next counter.

        The counter never falls behind the current UTC second, so a head-end whose
        database was restored from an old backup still sends counters the meter takes.
        """
        counter: dict[str, Any] | None = None
        if auth:
            if self.registry is None:
                raise HeadendError("these downlinks sign nothing (no counter source)")
            counter = {"counter": self.registry.next_counter(meter_id, now_ms // 1000), "mac": b""}
        seq = self._next_seq(meter_id)
        fields = {
            "type": mtype,
            "seq": seq,
            "meter_id": meter_id,
            "timestamp": now_ms // 1000,
            "auth": counter,
            "body": body,
        }
        return seq, encode(fields, key=self._key(meter_id) if auth else None)

    def reply(self, meter_id: int, mtype: str, body: dict[str, Any], now_ms: int) -> bytes:
        """An unsigned downlink that needs no answer (acks, time-sync response)."""
        return self.frame(meter_id, mtype, body, now_ms)[1]
