"""What every head-end component works with: config, the store's tables, sessions.

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
from headend.store.activity import ActivityLog
from headend.store.db import Db
from headend.store.events import Events
from headend.store.jobs import Jobs
from headend.store.readings import Readings
from headend.store.registry import Registry
from headend.store.schedules import Schedules
from headend.store.sql import SqlStore


class Sessions:
    """Per-meter sessions, created on first use.

    Used from one thread. ``registry`` (None: unauthenticated frames only)
    supplies the persistent replay-guard counter of signed downlinks.
    """

    def __init__(self, master_key: bytes, registry: Registry | None) -> None:
        self._master = master_key
        self.registry = registry
        self._by_meter: dict[int, MeterSession] = {}
        self._floor_s = 0  # counters never fall behind the current UTC second (see Registry)

    def _counter(self, meter_id: int) -> int:
        if self.registry is None:
            raise HeadendError("these sessions sign nothing (no counter source)")
        return self.registry.next_counter(meter_id, self._floor_s)

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
    """The shared parts, built once per service (or per CLI command).

    One attribute per store table group (`Registry`, `Readings`, `Events`,
    `Jobs`, `Schedules`, `ActivityLog`), all on the same connection, so a
    component names what it uses (``ctx.jobs.claim(...)``) and one
    ``ctx.db.transaction()`` spans them.
    """

    config: Config
    store: SqlStore
    registry: Registry
    readings: Readings
    events: Events
    jobs: Jobs
    schedules: Schedules
    activity: ActivityLog
    sessions: Sessions
    window: Window

    @classmethod
    def build(cls, config: Config, store: SqlStore) -> Ctx:
        window = Window(
            parse_hhmm("window_start", config.window_start),
            parse_hhmm("window_end", config.window_end),
            config.group_minutes,
            config.group_capacity,
        )
        db = store.db
        registry = Registry(db)
        sessions = Sessions(bytes.fromhex(config.master_key), registry)
        return cls(
            config,
            store,
            registry,
            Readings(db),
            Events(db),
            Jobs(db),
            Schedules(db),
            ActivityLog(db),
            sessions,
            window,
        )

    @property
    def db(self) -> Db:
        """The connection every table uses (``ctx.db.transaction()`` spans them)."""
        return self.store.db

    def rebind(self, store: SqlStore) -> None:
        """Use a new store connection (after a database outage); sessions are kept."""
        fresh = Ctx.build(self.config, store)
        self.store, self.registry, self.readings = store, fresh.registry, fresh.readings
        self.events, self.jobs, self.schedules = fresh.events, fresh.jobs, fresh.schedules
        self.activity = fresh.activity
        self.sessions.registry = self.registry

    def notify_topic(self, recipient: str) -> str:
        return f"{self.config.notify_topic}/{recipient}"
