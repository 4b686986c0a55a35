"""D11 routine exports run by the service's Core: due from a schedule in the store, run on
an export thread with a connection of its own, delivered to a directory or POSTed to an
HTTP receiver (a failure, then its retry), each run logged with its size; D13 ad-hoc runs
wait for routine ones."""

from __future__ import annotations

import csv
import io
import threading
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from headend.adcs.exports import ExportStopped, RoutineExports, produce, span
from headend.cli import main
from headend.config import Config
from headend.context import Ctx
from headend.core import Core
from headend.store import SqlStore
from headend.store.base import DAY_S
from headend.store.exports import Exports, ExportSchedule
from tests.headend.conftest import open_at
from tests.headend.exportdata import LA, SPRING, midnights, register, seed
from tests.headend.receiver import Receiver

pytestmark = pytest.mark.req("D11", "D13")

NEXT_DAY = SPRING + 23 * 3600  # 2024-03-11 00:00 PDT
AT_RUN_MS = (NEXT_DAY + 2 * 3600 + 1800) * 1000  # 02:30 local, after the 02:00 run time
WAIT_S = 15


@pytest.fixture
def ctx(backend: str, store_at: list[SqlStore]) -> Ctx:
    s = open_at(backend, store_at)
    for mid in (1, 2):
        register(s, mid, SPRING - DAY_S)
        seed(s, mid, SPRING - DAY_S, SPRING + 2 * DAY_S)
        midnights(s, mid, [SPRING, SPRING + DAY_S])  # the meters' standard midnights
    return Ctx.build(Config(database=backend, worker="w1"), s)


def schedule(to: str, **kw: object) -> ExportSchedule:
    base: dict[str, object] = {
        "name": "daily", "meters": "all", "what": "intervals,registers,validation",
        "fmt": "csv", "tz": "America/Los_Angeles", "at": "02:00", "every_days": 1, "days": 1,
        "destination": to,
    }  # fmt: skip
    base.update(kw)
    return ExportSchedule(**base)  # type: ignore[arg-type]


def test_d11_span_is_the_local_days_before() -> None:
    assert span(LA, AT_RUN_MS, 1) == (SPRING, NEXT_DAY)  # 23 hours: the spring-forward day
    assert datetime.fromtimestamp(span(LA, AT_RUN_MS, 3)[0], LA).isoformat() == (
        "2024-03-08T00:00:00-08:00"
    )


@pytest.mark.timeout(40)
def test_d11_routine_export_to_a_directory_by_the_core_tick(ctx: Ctx, tmp_path: Path) -> None:
    tmp_path = tmp_path / "out"  # beside the database: a folder of its own
    tmp_path.mkdir()
    Exports(ctx.db).put(schedule(str(tmp_path)), 0)
    # a row another system wrote badly is logged and skipped, never stops the tick
    Exports(ctx.db).put(schedule(str(tmp_path), name="bad", tz="Mars/Olympus"), 0)
    core = Core(ctx)
    core.exports.check_every_ms = 0
    try:
        core.exports.tick(ctx, AT_RUN_MS - 3600_000)  # 01:30: not yet due
        assert Exports(ctx.db).runs() == []
        core.tick(AT_RUN_MS)
        assert core.exports.wait(WAIT_S)
        core.exports.tick(ctx, AT_RUN_MS + 60_000)  # the same period: not again
        assert core.exports.wait(WAIT_S)
    finally:
        core.exports.close()
    (run,) = Exports(ctx.db).runs()
    assert run.state == "done" and run.attempts == 1 and (run.start, run.end) == (SPRING, NEXT_DAY)
    path = tmp_path / "daily-2024-03-10.csv"
    assert run.target == str(path) and run.size == path.stat().st_size
    rows = list(csv.DictReader(io.StringIO(path.read_text())))
    assert sum(r["record"] == "interval" for r in rows) == 2 * 92 * 2  # meters x slots x chans
    # intervals + the midnight register at the start (the next one, 08:00Z, is after the
    # local day's end in summer time, 07:00Z)
    assert run.rows == 2 * 92 + 2
    report = list(
        csv.DictReader(io.StringIO((tmp_path / "daily-2024-03-10.validation.csv").read_text()))
    )
    # the whole report if not: on PostgreSQL "missing" failed 1 run in 4-8 while the
    # tick made the month's partition beside the validation (schema version 12)
    got = {(r["check"], r["status"]) for r in report if r["meter"] == "1"}
    assert got >= {("missing", "pass"), ("contiguous", "pass"), ("zero", "pass")}, report
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "daily-2024-03-10.csv",
        "daily-2024-03-10.validation.csv",
    ]  # fmt: skip  (no temp file left)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(fail=1)
    yield r
    r.close()


@pytest.mark.timeout(40)
def test_d11_routine_export_posted_fails_then_is_retried(ctx: Ctx, receiver: Receiver) -> None:
    Exports(ctx.db).put(schedule(receiver.url, fmt="espi", what="intervals"), 0)
    runner = RoutineExports(check_every_ms=0, retry_ms=60_000)
    try:
        runner.tick(ctx, AT_RUN_MS)
        assert runner.wait(WAIT_S)
        (run,) = Exports(ctx.db).runs()
        assert run.state == "failed" and "HTTP 503" in (run.error or "")
        assert run.next_ms is not None and run.next_ms >= AT_RUN_MS + 60_000
        runner.tick(ctx, AT_RUN_MS + 30_000)  # not yet due again
        assert runner.wait(WAIT_S) and Exports(ctx.db).runs()[0].attempts == 1
        runner.tick(ctx, run.next_ms)
        assert runner.wait(WAIT_S)
    finally:
        runner.close()
    (run,) = Exports(ctx.db).runs()
    assert run.state == "done" and run.attempts == 2 and run.target == receiver.url
    ((ctype, body),) = receiver.bodies
    assert ctype == "application/atom+xml" and run.size == len(body)
    assert body.count(b"<espi:IntervalReading>") == 2 * 2 * 92  # meters x channels x slots


@pytest.mark.timeout(40)
def test_d13_ad_hoc_run_waits_for_routine_and_cli_lists_runs(
    ctx: Ctx, tmp_path: Path, backend: str, capsys: pytest.CaptureFixture[str]
) -> None:
    tmp_path = tmp_path / "out"
    tmp_path.mkdir()
    db = ["--database", backend]
    assert main(["exports", "add", "daily", "--meters", "1", "--to", str(tmp_path),
                 "--tz", "America/Los_Angeles", "--what", "intervals", *db]) == 0  # fmt: skip
    assert main(["exports", "run", "daily", "--start", "2024-03-09", "--end", "2024-03-10",
                 *db]) == 0  # fmt: skip
    assert main(["exports", "run", "nope", "--start", "2024-03-09", "--end", "2024-03-10",
                 *db]) == 2  # fmt: skip
    assert main(["exports", "add", "bad", "--meters", "1", "--to", str(tmp_path / "no"),
                 *db]) == 2  # fmt: skip
    capsys.readouterr()
    started: list[str] = []
    runner = RoutineExports(check_every_ms=0)
    real = runner._start

    def spy(c: Ctx, s: ExportSchedule, period: int, *rest: int) -> None:
        started.append("routine" if period < 10**9 else "ad hoc")
        real(c, s, period, *rest)

    runner._start = spy  # type: ignore[method-assign]
    try:
        runner.tick(ctx, AT_RUN_MS)  # routine due and ad hoc queued: routine only
        assert started == ["routine"]
        assert runner.wait(WAIT_S)
        runner.tick(ctx, AT_RUN_MS + 1000)  # nothing routine left: the ad-hoc run starts
        assert started == ["routine", "ad hoc"] and runner.wait(WAIT_S)
    finally:
        runner.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "daily-2024-03-09.csv", "daily-2024-03-10.csv"
    ]  # fmt: skip
    assert main(["exports", "runs", "--json", *db]) == 0
    out = capsys.readouterr().out
    assert out.count('"state": "done"') == 2 and '"priority": 1' in out
    assert main(["exports", "add", "push", "--meters", "all", "--to",
                 "https://bill:s3cret@billing.example/in", *db]) == 0  # fmt: skip
    assert main(["exports", "list", *db]) == 0
    out = capsys.readouterr().out
    assert "daily" in out and "https://bill:***@billing.example/in" in out and "s3cret" not in out
    assert main(["exports", "remove", "push", *db]) == 0
    assert main(["exports", "remove", "daily", *db]) == 0
    assert Exports(ctx.db).runs() == [] and Exports(ctx.db).schedules() == []


@pytest.mark.timeout(40)
def test_d11_a_stopping_service_ends_its_export_after_the_current_meter(
    ctx: Ctx, tmp_path: Path
) -> None:
    # the service's shutdown (`RoutineExports.close`) does not wait for a whole export:
    # the run stops after the meter being written, is logged failed and retried later
    out = tmp_path / "out"
    out.mkdir()
    Exports(ctx.db).put(schedule(str(out)), 0)
    core = Core(ctx)
    core.exports.check_every_ms = 0
    core.exports.stop.set()  # as close() does, here before the run gets to its first meter
    core.tick(AT_RUN_MS)
    assert core.exports.wait(WAIT_S)
    core.exports.close()
    (run,) = Exports(ctx.db).runs()
    assert run.state != "done" and run.attempts == 1
    assert run.error is not None and "service is stopping" in run.error
    assert list(out.iterdir()) == []  # nothing half-written delivered, no temp file left
    # under way: the check after each meter ends it, the temp file removed
    stop = threading.Event()
    stop.set()
    with pytest.raises(ExportStopped, match="after 1 meter"):
        produce(ctx.config.database, schedule(str(out)), SPRING, NEXT_DAY, stop=stop)
    assert list(out.iterdir()) == []
