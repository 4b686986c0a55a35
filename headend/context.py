"""What every head-end component works with: config, store, ops tables, sessions.

`Sessions` frames downlinks: one sans-IO `MeterSession` per meter (seq numbers,
the persistent replay-guard counter, the MAC). The service keeps a second,
unsigned set on the event loop for time-sync answers, which must not wait
behind the database.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from headend.adcs.groups import Window
from headend.config import Config, parse_hhmm
from headend.errors import HeadendError
from headend.keys import meter_key
from headend.session import MeterSession
from headend.store.ops import Ops
from headend.store.sql import SqlStore


class Sessions:
    """Per-meter sessions, created on first use.

    Used from one thread. ``ops`` (None: unauthenticated frames only) supplies
    the persistent replay-guard counter of signed downlinks.
    """

    def __init__(self, master_key: bytes, ops: Ops | None) -> None:
        self._master = master_key
        self.ops = ops
        self._by_meter: dict[int, MeterSession] = {}
        self._floor_s = 0  # counters never fall behind the current UTC second (see Ops)

    def _counter(self, meter_id: int) -> int:
        if self.ops is None:
            raise HeadendError("these sessions sign nothing (no counter source)")
        return self.ops.next_counter(meter_id, self._floor_s)

    def _session(self, meter_id: int) -> MeterSession:
        s = self._by_meter.get(meter_id)
        if s is None:
            s = MeterSession(
                meter_id,
                meter_key(self._master, meter_id),
                lambda: self._counter(meter_id),
                first_seq=secrets.randbelow(0xFFFF),
            )
            self._by_meter[meter_id] = s
        return s

    def frame(
        self, meter_id: int, mtype: str, body: dict[str, Any], now_ms: int, auth: bool = False
    ) -> tuple[int, bytes]:
        """(seq, frame) of one downlink; ``auth`` signs it with the next counter."""
        self._floor_s = now_ms // 1000
        return self._session(meter_id).frame(mtype, body, now_ms / 1000, auth)

    def reply(self, meter_id: int, mtype: str, body: dict[str, Any], now_ms: int) -> bytes:
        """An unauthenticated downlink that needs no answer (acks, time-sync response)."""
        return self.frame(meter_id, mtype, body, now_ms)[1]


@dataclass
class Ctx:
    """The shared parts, built once per service (or per CLI command)."""

    config: Config
    store: SqlStore
    ops: Ops
    sessions: Sessions
    window: Window

    @classmethod
    def build(cls, config: Config, store: SqlStore) -> Ctx:
        ops = Ops(store.db)
        window = Window(
            parse_hhmm("window_start", config.window_start),
            parse_hhmm("window_end", config.window_end),
            config.group_minutes,
            config.group_capacity,
        )
        return cls(config, store, ops, Sessions(bytes.fromhex(config.master_key), ops), window)

    def rebind(self, store: SqlStore) -> None:
        """Use a new store connection (after a database outage); sessions are kept."""
        self.store = store
        self.ops = Ops(store.db)
        self.sessions.ops = self.ops

    def notify_topic(self, recipient: str) -> str:
        return f"{self.config.notify_topic}/{recipient}"
