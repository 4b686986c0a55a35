"""The head-end's Python API for other programs: the HIL rig, demo and fleet, tests, the CLI.

Everything such a program needs from the head-end is importable from this
module (``tools/lint.py`` holds ``hil/`` to it), so the modules behind it can
change without breaking them:

* configuration and time: `Config`, `load`, `DEV_MASTER_KEY`, `parse_hhmm`, `Clock` (with `Leg`);
* the service: `Service` (run it with ``await Service(config).run()``), and
  `on_service` to query a running one on its own database thread;
* a database: `Headend` (`Headend.open`), one connection with what other
  programs ask of it: registered meters, on-demand reads (jobs) and their
  results, coverage, intervals, events, schedules, the activity log;
* keys: `meter_key` (per-meter key from the master key);
* the broker: `brokerconf` (mosquitto.conf, password and ACL files of a site)
  and `pki` (its CA and certificates); `write_private` (a 0600 file for a secret);
* reports (D10): `Headend.report` gives any registered report as a `Table`;
  `RECOVERED_BY_READ` starts the pathway of a day a recovery read brought back;
* the value types those take and return, and the errors (`HeadendError` root).

A `Headend` is one connection: use it from one thread, and close it (it is a
context manager). Times are UTC seconds, except the ``*_ms`` ones (UTC ms).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from headend import brokerconf, pki
from headend.adcs import ondemand, scheduling
from headend.adcs.recovery import BY_READ as RECOVERED_BY_READ
from headend.clock import Clock, Leg, check_legs
from headend.config import DEV_MASTER_KEY, Config, load, parse_hhmm
from headend.context import Ctx
from headend.errors import (
    ConfigError,
    HeadendError,
    IllegalTransition,
    InvalidData,
    MissingDatabase,
    SchemaError,
    StoreError,
    UnknownMeter,
)
from headend.keys import meter_key
from headend.reports import Table, registry
from headend.secretfile import write_private
from headend.service import Service
from headend.store import (
    DayCoverage,
    EventRecord,
    Interval,
    Meter,
    MidnightRegister,
    Source,
    open_store,
)
from headend.store.activity import Kind
from headend.store.lifecycles import MissingState
from headend.store.missing import MissingDay
from headend.store.records import (
    Activity,
    Job,
    JobState,
    ReadSpec,
    Schedule,
    ScheduleSpec,
    ScheduleState,
)
from headend.transport.base import Uplink
from protocol.codes import ReadMode

__all__ = [
    "DEV_MASTER_KEY",
    "Activity",
    "Clock",
    "Leg",
    "check_legs",
    "Config",
    "ConfigError",
    "DayCoverage",
    "EventRecord",
    "Headend",
    "HeadendError",
    "IllegalTransition",
    "Interval",
    "InvalidData",
    "Job",
    "JobState",
    "Kind",
    "Meter",
    "MissingDay",
    "MissingState",
    "MidnightRegister",
    "MissingDatabase",
    "ReadMode",
    "RECOVERED_BY_READ",
    "ReadSpec",
    "Schedule",
    "ScheduleSpec",
    "ScheduleState",
    "SchemaError",
    "Service",
    "Source",
    "StoreError",
    "Table",
    "UnknownMeter",
    "Uplink",
    "brokerconf",
    "load",
    "meter_key",
    "on_service",
    "parse_hhmm",
    "pki",
    "write_private",
]

T = TypeVar("T")


class Headend:
    """One connection to a head-end's database, and what other programs ask of it.

    Args:
        ctx: the head-end's parts on an open store (`Headend.open` builds it; on a
            running service, `on_service` hands one over).
    """

    def __init__(self, ctx: Ctx) -> None:
        self.ctx = ctx

    @classmethod
    def open(cls, config: Config | str, *, migrate: bool = False) -> Headend:
        """Open the database of ``config`` (or a database URL, with default settings).

        Raises:
            SchemaError: the database is not at this head-end's schema version
                (``migrate=True`` brings it there).
            StoreError: it cannot be opened.
        """
        cfg = Config(database=config) if isinstance(config, str) else config
        return cls(Ctx.build(cfg, open_store(cfg.database, migrate=migrate)))

    def close(self) -> None:
        """Close the connection."""
        self.ctx.store.close()

    def __enter__(self) -> Headend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- meters ------------------------------------------------------------------------------

    def meters(self) -> list[int]:
        """Ids of the registered meters, ascending."""
        return self.ctx.registry.ids()

    def meter(self, meter_id: int) -> Meter:
        """A meter's registration. Raises UnknownMeter."""
        return self.ctx.registry.get(meter_id)

    # -- on-demand reads (jobs) --------------------------------------------------------------

    def request_read(self, spec: ReadSpec, requester: str, now_ms: int) -> int:
        """Queue an on-demand read; returns the job id (a running service picks it up).

        ``now_ms`` 0: the service stamps the job when it claims it (for callers that
        cannot know a simulated service clock). Raises UnknownMeter, InvalidData.
        """
        return ondemand.request_read(self.ctx, spec, requester, now_ms)

    def jobs(self, states: Iterable[JobState] = (), limit: int = 100_000) -> list[Job]:
        """Jobs, newest first; optionally only some states."""
        return self.ctx.jobs.newest(states, limit)

    def job(self, job_id: int) -> Job:
        """A job as it is now. Raises InvalidData if there is no such job."""
        return self.ctx.jobs.get(job_id)

    def wait_job(
        self,
        job_id: int,
        timeout_s: float,
        poll_s: float = 0.1,
        waiting: Callable[[Job, float], None] | None = None,
    ) -> Job:
        """Poll a job until it is done or failed, or ``timeout_s`` (real) seconds passed.

        Returns the job as it is then (check `Job.closed`). ``waiting(job, waited_s)``
        is called before each pause (for a progress line).
        """
        start = time.monotonic()
        job = self.job(job_id)
        while not job.closed:
            waited = time.monotonic() - start
            if waited >= timeout_s:
                break
            if waiting is not None:
                waiting(job, waited)
            time.sleep(min(poll_s, max(0.0, timeout_s - waited)))
            job = self.job(job_id)
        return job

    def acknowledge_job(self, job_id: int, now_ms: int) -> bool:
        """The requester has the job's result: recorded once, its deliveries stop."""
        return ondemand.acknowledge(self.ctx, job_id, now_ms)

    # -- meter data --------------------------------------------------------------------------

    def coverage(self, meter_id: int, start: int, end: int) -> list[DayCoverage]:
        """Per local-standard day overlapping [start, end): intervals expected and present."""
        return self.ctx.readings.coverage(meter_id, start, end)

    def intervals(self, meter_id: int, channel: int, start: int, end: int) -> list[Interval]:
        """Stored intervals of one channel starting in [start, end), ascending."""
        return self.ctx.readings.intervals(meter_id, channel, start, end)

    def midnight_registers(self, meter_id: int, start: int, end: int) -> list[MidnightRegister]:
        """Midnight registers with ``start <= day < end``, ascending."""
        return self.ctx.readings.midnight_registers(meter_id, start, end)

    def events(self, meter_id: int, start: int, end: int) -> list[EventRecord]:
        """Stored events with ``start <= time < end``, ascending."""
        return self.ctx.events.between(meter_id, start, end)

    # -- schedules ---------------------------------------------------------------------------

    def set_schedule(self, spec: ScheduleSpec, source: str, now_ms: int) -> None:
        """Set, update or cancel a schedule slot (the service sends it), logged with
        ``source``. Raises UnknownMeter, InvalidData (nothing is written)."""
        scheduling.set_schedule(self.ctx, spec, source, now_ms)

    def schedules(
        self, meter_id: int | None = None, states: Iterable[ScheduleState] = ()
    ) -> list[Schedule]:
        """Schedules by meter and slot; optionally one meter and some states."""
        return self.ctx.schedules.find(meter_id, states)

    def missing_days(self) -> list[MissingDay]:
        """Every meter-day the daily check ever found missing or incomplete, and how far
        its recovery got (D05), by meter and day."""
        return self.ctx.missing.rows()

    # -- reports (D10) -----------------------------------------------------------------------

    def report(self, name: str, now_ms: int, **opts: Any) -> Table:
        """Report ``name`` (`report_names`), built now from the store: missing, exceptions,
        recovery, history, stats, and what other families register. ``opts``: the
        report's options (``day="YYYY-MM-DD"``). Raises InvalidData (unknown name, bad
        option)."""
        reports = registry()
        if name not in reports:
            raise InvalidData(f"no report {name!r}; choose one of {', '.join(sorted(reports))}")
        unknown = set(opts) - set(reports[name].options)
        if unknown:
            raise InvalidData(f"report {name}: unknown option(s) {sorted(unknown)}")
        return reports[name].build(self.ctx, now_ms, **opts)

    # -- the activity log --------------------------------------------------------------------

    def activity(
        self,
        meter_id: int | None = None,
        kinds: Sequence[str] = (),
        since_ms: int = 0,
        limit: int = 1000,
    ) -> list[Activity]:
        """Activity lines, oldest first; optionally one meter and some `Kind` s."""
        return self.ctx.activity.lines(meter_id, kinds, since_ms, limit)


async def on_service(service: Service, fn: Callable[[Headend], T]) -> T:
    """Run ``fn`` on a running service's database thread, in order with its own work
    (what it returns is returned). Database outages are waited out, as the service does."""
    return await service.call(lambda core: fn(Headend(core.ctx)))
