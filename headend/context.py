"""What every head-end component works with: config, the store's tables, downlinks.

`Downlinks` frames what goes to meters (seq numbers, the persistent
replay-guard counter, the MAC under the key version the store holds).
"""

from __future__ import annotations

from dataclasses import dataclass

from headend import masterkey
from headend.adcs.groups import Window
from headend.config import Config, parse_hhmm
from headend.downlink import Downlinks
from headend.store.activity import ActivityLog
from headend.store.arrivals import Arrivals
from headend.store.auth import MeterAuth
from headend.store.db import Db
from headend.store.events import Events
from headend.store.jobs import Jobs
from headend.store.layouts import Layouts
from headend.store.missing import MissingDays
from headend.store.offschedules import Gaps
from headend.store.readings import Readings
from headend.store.rebalances import Rebalances
from headend.store.registry import Registry
from headend.store.schedules import Schedules
from headend.store.sql import SqlStore
from headend.store.timed import TimedRuns
from headend.store.troubles import Troubles


@dataclass
class Ctx:
    """The shared parts, built once per service (or per CLI command).

    One attribute per store table group (`Registry`, `Readings`, `Events`, `Jobs`,
    `Schedules`, `ActivityLog`, `MeterAuth`, `Layouts`, `MissingDays`, `TimedRuns`,
    `Troubles`, `Arrivals`, `Gaps`, `Rebalances`), all on the same connection, so a
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
    auth: MeterAuth
    layouts: Layouts
    downlinks: Downlinks
    window: Window
    missing: MissingDays
    timed: TimedRuns
    troubles: Troubles
    arrivals: Arrivals
    gaps: Gaps
    rebalances: Rebalances

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
        auth = MeterAuth(db)
        downlinks = Downlinks(masterkey.load(config), registry, auth)
        return cls(
            config,
            store,
            registry,
            Readings(db),
            Events(db),
            Jobs(db),
            Schedules(db),
            ActivityLog(db),
            auth,
            Layouts(db),
            downlinks,
            window,
            MissingDays(db),
            TimedRuns(db),
            Troubles(db),
            Arrivals(db),
            Gaps(db),
            Rebalances(db),
        )

    @property
    def db(self) -> Db:
        """The connection every table uses (``ctx.db.transaction()`` spans them)."""
        return self.store.db

    def rebind(self, store: SqlStore) -> None:
        """Use a new store connection (after a database outage); seq numbers are kept."""
        fresh = Ctx.build(self.config, store)
        self.store, self.registry, self.readings = store, fresh.registry, fresh.readings
        self.events, self.jobs, self.schedules = fresh.events, fresh.jobs, fresh.schedules
        self.activity, self.auth, self.layouts = fresh.activity, fresh.auth, fresh.layouts
        self.missing = fresh.missing
        self.timed, self.troubles, self.arrivals = fresh.timed, fresh.troubles, fresh.arrivals
        self.gaps, self.rebalances = fresh.gaps, fresh.rebalances
        self.downlinks.registry, self.downlinks.auth = self.registry, self.auth

    def notify_topic(self, recipient: str) -> str:
        return f"{self.config.notify_topic}/{recipient}"
