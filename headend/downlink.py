"""Framing of downlinks: per-meter seq numbers, the replay-guard counter, the MAC.

`Downlinks` turns (meter, message type, body, now) into frame bytes, every one
signed (SPEC "Authentication"): the meter's next counter comes from the store
(`Registry.next_counter`: persistent, strictly increasing, never behind the
UTC second) and the MAC from the meter's key at the version the store says it
holds (`MeterAuth.version`, so every worker signs with the key a rotation
confirmed). A meter that is not registered has no counter row; the one frame
it may get (nack not_registered, a refused register_ack) carries the current
UTC second as its counter. Seq numbers are per meter, 1..65535 (0 would read
as "no request" in a read_response's request_seq), and start at a random value
after a restart so a late answer to the previous run's frames cannot match a
new one. What a request is waiting for is tracked durably by the store (jobs,
schedules, key rotations), not here.
"""

from __future__ import annotations

import secrets
from typing import Any

from headend.errors import UnknownMeter
from headend.keys import meter_key
from headend.store.auth import MeterAuth
from headend.store.registry import Registry
from protocol.frame import encode

_SEQ_MOD = 0xFFFF
_MAX_CACHED = 10_000  # derived keys kept; beyond that the cache starts again


class Downlinks:
    """Args:
    master_key: the 32-byte master key (each meter's key is derived from it).
    registry: the source of persistent counters.
    auth: the source of each meter's key version.

    Used from one thread.
    """

    def __init__(self, master_key: bytes, registry: Registry, auth: MeterAuth) -> None:
        self._master = master_key
        self.registry = registry
        self.auth = auth
        self._seq: dict[int, int] = {}
        self._keys: dict[tuple[int, int], bytes] = {}

    def next_seq(self, meter_id: int) -> int:
        """The seq of the meter's next downlink (this worker's, in memory)."""
        last = self._seq.get(meter_id)
        if last is None:
            last = secrets.randbelow(_SEQ_MOD)
        seq = last % _SEQ_MOD + 1
        self._seq[meter_id] = seq
        return seq

    def key(self, meter_id: int, version: int) -> bytes:
        """The meter's key at ``version`` (derived once, then cached)."""
        key = self._keys.get((meter_id, version))
        if key is None:
            if len(self._keys) >= _MAX_CACHED:
                self._keys.clear()
            key = self._keys[(meter_id, version)] = meter_key(self._master, meter_id, version)
        return key

    def counter(self, meter_id: int, now_ms: int) -> int:
        """The meter's next downlink counter (take it before any time the frame carries)."""
        try:
            return self.registry.next_counter(meter_id, now_ms // 1000)
        except UnknownMeter:
            return max(1, now_ms // 1000)

    def current_key(self, meter_id: int) -> bytes:
        """The key the meter's downlinks are signed with now (its version from the store)."""
        return self.key(meter_id, self.auth.version(meter_id))

    def signed(
        self,
        meter_id: int,
        mtype: str,
        body: dict[str, Any],
        now_ms: int,
        counter: int,
        key: bytes | None = None,
    ) -> tuple[int, bytes]:
        """(seq, frame) of one downlink under a counter from `counter` (and ``key``, when
        the caller looked it up already)."""
        seq = self.next_seq(meter_id)
        return seq, sign(
            meter_id, seq, mtype, body, now_ms, counter, key or self.current_key(meter_id)
        )

    def frame(
        self, meter_id: int, mtype: str, body: dict[str, Any], now_ms: int
    ) -> tuple[int, bytes]:
        """(seq, frame) of one signed downlink with the meter's next counter."""
        return self.signed(meter_id, mtype, body, now_ms, self.counter(meter_id, now_ms))

    def reply(self, meter_id: int, mtype: str, body: dict[str, Any], now_ms: int) -> bytes:
        """A signed downlink that needs no answer (acks, nacks, register_ack)."""
        return self.frame(meter_id, mtype, body, now_ms)[1]


def sign(
    meter_id: int, seq: int, mtype: str, body: dict[str, Any], now_ms: int, counter: int, key: bytes
) -> bytes:
    """One signed downlink from what the store gave (counter, key): pure, any thread."""
    fields = {
        "type": mtype,
        "seq": seq,
        "meter_id": meter_id,
        "timestamp": now_ms // 1000,
        "auth": {"counter": counter, "mac": b""},
        "body": body,
    }
    return encode(fields, key=key)
