"""Routine exports run by the service (D11), ad-hoc ones after them (D13).

Each enabled schedule (`store.exports.ExportSchedule`) is due once per period
(`timed.due_period`: from its local time of day, every N days); the run
covers the ``days`` local days before the day it runs. The worker whose claim
creates the run row runs it.

The service calls every Core method on one database thread, so an export never
runs there: `RoutineExports.tick` (a few short queries) hands the run to ONE
export thread that opens its own store connection, streams the export to a
temp file, delivers it (renamed into a directory, or POSTed to an http(s) URL)
and only then records it ``done`` with its size and row count. A failure is
recorded ``failed`` with the error and a next attempt after ``retry_ms`` x
attempts; a later tick takes it back. The single export thread is the
throttle: an ad-hoc run queued by `headend exports run` starts only when no
routine export is running or waiting, so it never delays routine work.

With ``validation`` in a schedule's ``what``, a usage validation report
(`mdms.validate`, CSV) of the same meters and period is delivered alongside.
"""

from __future__ import annotations

import csv
import logging
import os
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from headend.adcs.timed import due_period
from headend.config import parse_hhmm
from headend.context import Ctx
from headend.errors import ConfigError, HeadendError, InvalidData
from headend.mdms import export, validate
from headend.mdms.export import midnight
from headend.redact import redact
from headend.store import SqlStore, open_store
from headend.store.exports import Exports, ExportSchedule, Selection, for_streaming, meter_ids
from headend.store.jobs import ROUTINE
from headend.store.parties import LogRow, Parties, periodic_party
from headend.timetext import zone

_log = logging.getLogger(__name__)

CHECK_EVERY_MS = 30_000
RETRY_MS = 5 * 60_000
MAX_ATTEMPTS = 5
STALE_MS = 6 * 3_600_000
POST_TIMEOUT_S = 60
#: a portal party's log status of a dispatch its receiver did not take (T04)
NOT_TAKEN = 502
SUFFIX = {"csv": "csv", "json": "json", "espi": "xml"}
CONTENT_TYPE = {
    "csv": "text/csv; charset=utf-8",
    "json": "application/json",
    "espi": "application/atom+xml",
}
VALIDATION = "validation"

#: post(url, file, content type): deliver a file or raise `DeliveryError`.
Poster = Callable[[str, Path, str], None]


class ExportStopped(HeadendError):
    """The service stopped during the run: it is tried again like a failed one."""


class DeliveryError(HeadendError):
    """The destination did not take the export (HTTP error, unreachable, no folder)."""


def parse_what(text: str, extra: tuple[str, ...] = ()) -> tuple[str, ...]:
    """``intervals,events`` -> the parts of an export (and of ``extra``); InvalidData
    unless some of intervals, registers, events are there and nothing else."""
    what = tuple(w.strip() for w in text.split(",") if w.strip())
    bad = [w for w in what if w not in export.WHAT + extra]
    if bad or not [w for w in what if w in export.WHAT]:
        raise InvalidData(
            f"--what: expected some of {', '.join(export.WHAT + extra)}, got {text!r}"
        )
    return what


def routine_schedule(
    name: str, meters: str, what: str, fmt: str, tz: str, at: str, every: int, days: int, to: str
) -> ExportSchedule:
    """A routine export (``headend exports add`` and ``PUT /api/v1/exports/routine``);
    InvalidData or ConfigError for what cannot run: a bad selection, what, time or zone,
    or a destination that is neither an existing directory nor an http(s):// URL."""
    tz = zone(tz).key
    Selection(meters)
    what = ",".join(parse_what(what, (VALIDATION,)))
    parse_hhmm("at", at)
    if every < 1 or days < 1:
        raise InvalidData("every and days: expected 1 or more")
    if not to.startswith(("http://", "https://")):
        if not Path(to).is_dir():
            raise InvalidData(f"to {to!r}: expected an existing directory or an http(s):// URL")
        to = str(Path(to).resolve())
    return ExportSchedule(name, meters, what, fmt, tz, at, every, days, to)


def span(tz: ZoneInfo, now_ms: int, days: int) -> tuple[int, int]:
    """[start, end) UTC s of the ``days`` local days before the local day of ``now_ms``."""
    today = datetime.fromtimestamp(now_ms / 1000, tz).date()
    return midnight(today - timedelta(days=days), tz), midnight(today, tz)


def post_file(url: str, path: Path, content_type: str) -> None:
    """POST the file's bytes to ``url`` (streamed); a non-2xx answer is a `DeliveryError`."""
    size = path.stat().st_size
    try:
        with path.open("rb") as f:
            req = urllib.request.Request(
                url,
                data=f,
                method="POST",
                headers={"Content-Type": content_type, "Content-Length": str(size)},
            )
            with urllib.request.urlopen(req, timeout=POST_TIMEOUT_S) as resp:
                status = int(resp.status)
    except urllib.error.HTTPError as e:
        e.close()  # the error holds the answer's connection
        raise DeliveryError(f"POST {redact(url)}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        raise DeliveryError(f"POST {redact(url)}: {getattr(e, 'reason', e)}") from None
    if not 200 <= status < 300:
        raise DeliveryError(f"POST {redact(url)}: HTTP {status}")


@dataclass(frozen=True)
class Produced:
    size: int
    rows: int
    target: str


def file_name(s: ExportSchedule, start: int, end: int, ext: str) -> str:
    tz = ZoneInfo(s.tz)
    first = datetime.fromtimestamp(start, tz).date()
    last = datetime.fromtimestamp(end - 1, tz).date()
    days = first.isoformat() if first == last else f"{first.isoformat()}_{last.isoformat()}"
    return f"{s.name}-{days}.{ext}"


def produce(
    database: str,
    s: ExportSchedule,
    start: int,
    end: int,
    post: Poster = post_file,
    stop: threading.Event | None = None,
) -> Produced:
    """Write the export (and its validation report) on a connection of its own and
    deliver it; what was delivered. ``stop`` set: `ExportStopped` after the meter
    being written (a stopping service does not wait for a whole export)."""

    def check(done: int, total: int | None) -> None:
        if stop is not None and stop.is_set():
            raise ExportStopped(f"stopped after {done} meter(s): the service is stopping")

    what = tuple(w for w in s.what.split(",") if w and w != VALIDATION)
    to_dir = not s.destination.startswith(("http://", "https://"))
    folder = Path(s.destination) if to_dir else Path(tempfile.gettempdir())
    if not folder.is_dir():
        raise DeliveryError(f"export folder {folder} is not there")
    tz = ZoneInfo(s.tz)
    store = open_store(database, migrate=False)
    for_streaming(store.db)
    try:
        name = file_name(s, start, end, SUFFIX[s.fmt])
        with _temp(folder, name) as tmp:
            with tmp.open("w", encoding="utf-8", newline="") as f:
                ids = meter_ids(store.db, Selection(s.meters))
                req = export.Request(ids, start, end, tz, s.fmt, what)
                counts = export.write(store, req, f, check)
            size = tmp.stat().st_size
            target = _deliver(tmp, folder / name, s, CONTENT_TYPE[s.fmt], post)
        if VALIDATION in s.what.split(","):
            vname = file_name(s, start, end, "validation.csv")
            with _temp(folder, vname) as tmp:
                _validation_csv(store, s, start, end, tmp)
                _deliver(tmp, folder / vname, s, "text/csv; charset=utf-8", post)
    finally:
        store.close()
    return Produced(size, counts.rows, target)


class _temp:
    """A temp file path beside ``name`` in ``folder``, removed on exit if still there."""

    def __init__(self, folder: Path, name: str) -> None:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
        os.close(fd)
        self.path = Path(tmp)

    def __enter__(self) -> Path:
        return self.path

    def __exit__(self, *exc: object) -> None:
        self.path.unlink(missing_ok=True)


def _deliver(tmp: Path, final: Path, s: ExportSchedule, ctype: str, post: Poster) -> str:
    if s.destination.startswith(("http://", "https://")):
        post(s.destination, tmp, ctype)
        return redact(s.destination)
    os.replace(tmp, final)
    return str(final)


def _validation_csv(store: SqlStore, s: ExportSchedule, start: int, end: int, path: Path) -> None:
    tz = ZoneInfo(s.tz)
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(("meter", "check", "status", "detail"))
        for r in validate.validate_all(
            store, meter_ids(store.db, Selection(s.meters)), start, end, tz
        ):
            w.writerow((r.meter_id, r.check, r.status, r.detail))


def _log_dispatch(
    parties: Parties, party: str, s: ExportSchedule, period: int, attempt: int,
    got: Produced | BaseException, done_ms: int, t0: float,
) -> None:  # fmt: skip
    """A portal party's periodic export in its request log (T04: bulk dispatches log the
    amount sent): the POST to its URL, bytes and rows delivered; an attempt its receiver
    did not take as `NOT_TAKEN` with nothing sent (one that never reached it, as a
    stopping service, is in the export's runs only)."""
    sent = got if isinstance(got, Produced) else None
    parties.log(
        LogRow(
            done_ms,
            party,
            "POST",
            redact(s.destination),
            200 if sent else NOT_TAKEN,
            sent.size if sent else 0,
            int((time.monotonic() - t0) * 1000),
            f"export:{period}:{attempt}",  # the export run (name, period) and its attempt
            sent.rows if sent else None,
        )
    )


class RoutineExports:
    """Starts due, retried and queued export runs on one export thread (see module doc)."""

    def __init__(
        self,
        check_every_ms: int = CHECK_EVERY_MS,
        retry_ms: int = RETRY_MS,
        max_attempts: int = MAX_ATTEMPTS,
        post: Poster = post_file,
    ) -> None:
        self.check_every_ms = check_every_ms
        self.retry_ms = retry_ms
        self.max_attempts = max_attempts
        self.post = post
        self.next_ms = 0
        self.asked: dict[str, int] = {}
        self.running: dict[tuple[str, int], Future[None]] = {}
        self.pool: ThreadPoolExecutor | None = None
        self.stop = threading.Event()

    def tick(self, ctx: Ctx, now_ms: int) -> None:
        if now_ms < self.next_ms:
            return
        self.next_ms = now_ms + self.check_every_ms
        self.running = {k: f for k, f in self.running.items() if not f.done()}
        ex = Exports(ctx.db)
        worker = ctx.config.worker
        schedules = {s.name: s for s in ex.schedules(enabled_only=True)}
        for s in schedules.values():
            try:
                tz = ZoneInfo(s.tz)
                period = due_period(tz, s.at, s.every_days, now_ms)
            except (ZoneInfoNotFoundError, ValueError, ConfigError) as e:
                # a row another system wrote badly must not stop the service's tick
                if self.asked.get(s.name) != -1:
                    _log.warning("routine export %s: cannot run: %s", s.name, e)
                self.asked[s.name] = -1
                continue
            if period is None or self.asked.get(s.name) == period:
                continue
            self.asked[s.name] = period
            start, end = span(tz, now_ms, s.days)
            if ex.claim(s.name, period, start, end, worker, now_ms):
                self._start(ctx, s, period, start, end, 1, now_ms)
        for run in ex.retry_due(now_ms, self.max_attempts, STALE_MS):
            sched = schedules.get(run.name)
            if sched is None or (run.name, run.period) in self.running:
                continue
            if run.priority != ROUTINE and self.running:
                break  # ad hoc waits for routine work (D13)
            if ex.take_back(run, worker, now_ms):
                self._start(ctx, sched, run.period, run.start, run.end, run.attempts + 1, now_ms)

    def _start(
        self, ctx: Ctx, s: ExportSchedule, period: int, start: int, end: int, attempt: int,
        now_ms: int,
    ) -> None:  # fmt: skip
        if self.pool is None:
            self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="export")
        database = ctx.config.database
        self.running[(s.name, period)] = self.pool.submit(
            self._run, database, s, period, start, end, attempt, now_ms
        )

    def _run(
        self, database: str, s: ExportSchedule, period: int, start: int, end: int,
        attempt: int, now_ms: int,
    ) -> None:  # fmt: skip
        t0 = time.monotonic()
        try:
            if self.stop.is_set():
                raise ExportStopped("not started: the service is stopping")
            got: Produced | BaseException = produce(database, s, start, end, self.post, self.stop)
        except Exception as e:  # any failure of a run is recorded and retried
            got = e
        done_ms = now_ms + int((time.monotonic() - t0) * 1000)
        store = open_store(database, migrate=False)
        try:
            ex = Exports(store.db)
            if isinstance(got, Produced):
                ex.done(s.name, period, done_ms, got.size, got.rows, got.target)
                _log.info("export %s (%d): %d bytes to %s", s.name, period, got.size, got.target)
            else:
                why = redact(" ".join(str(got).split())) or type(got).__name__
                ex.failed(s.name, period, done_ms, done_ms + self.retry_ms * attempt, why)
                _log.warning("export %s (%d) attempt %d failed: %s", s.name, period, attempt, why)
            party = periodic_party(s.name)
            if party is not None and isinstance(got, (Produced, DeliveryError)):
                _log_dispatch(Parties(store.db), party, s, period, attempt, got, done_ms, t0)
        finally:
            store.close()

    def wait(self, timeout_s: float) -> bool:
        """Wait for the runs started so far; True if all finished in time (tests, shutdown)."""
        deadline = time.monotonic() + timeout_s
        for f in list(self.running.values()):
            try:
                f.result(timeout=max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                return False
        return True

    def close(self) -> None:
        """Stop: a run in progress ends after its current meter, one not started yet
        at once; each is recorded as failed and retried like one."""
        self.stop.set()
        if self.pool is not None:
            self.pool.shutdown(wait=True)
            self.pool = None
