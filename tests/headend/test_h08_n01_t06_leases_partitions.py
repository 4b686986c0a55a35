"""Many workers on one store: leases of timed runs, row claims, takeover of a dead
worker's work (H08, N01); interval data by month on PostgreSQL, retention (T06, D01).

Every race here is two connections (two workers) on one store, on both backends
where the behaviour is the same; PostgreSQL-only where it is its own (SKIP
LOCKED, partitions, EXPLAIN).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import pytest

from headend.adcs import recovery
from headend.config import Config
from headend.context import Ctx
from headend.errors import ConfigError, InvalidData
from headend.store import Channel, ChannelKind, Meter, SqlStore, Unit
from headend.store import partitions as parts
from headend.store.base import DAY_S
from headend.store.db import Db
from headend.store.lifecycles import JobState
from headend.store.migrations import MIGRATIONS, migrate
from headend.store.records import ReadSpec, ScheduleSpec
from headend.store.timed import Claim, LeaseLost
from hil.wait import wait_until_sync
from tests.headend.conftest import open_at
from tests.support.cli import refused, run_module

T0 = 1_711_929_600  # 2024-04-01 00:00 UTC
CH = (Channel(ChannelKind.ACTIVE_IMPORT, Unit.WH),)
LEASE_MS = 10_000


def _ctx(url: str, opened: list[SqlStore], worker: str, **kw: Any) -> Ctx:
    return Ctx.build(Config(worker=worker, lease_s=LEASE_MS // 1000, **kw), open_at(url, opened))


def _meters(store: SqlStore, ids: range) -> None:
    for mid in ids:
        store.register_meter(Meter(mid, "1", 900, 0, 1, CH, T0 - 90 * DAY_S))


@pytest.mark.req("H08")
def test_h08_timed_run_lease_is_held_renewed_taken_over_and_fenced(
    backend: str, store_at: list[SqlStore]
) -> None:
    a = _ctx(backend, store_at, "w1").timed
    b = _ctx(backend, store_at, "w2").timed
    assert a.claim("job", 7, "w1", 1000, LEASE_MS) is Claim.WON
    assert b.claim("job", 7, "w2", 2000, LEASE_MS) is Claim.HELD  # a live lease
    a.renew("job", 7, "w1", 5000, LEASE_MS)  # held until 15,000 now
    assert b.claim("job", 7, "w2", 12_000, LEASE_MS) is Claim.HELD
    assert b.claim("job", 7, "w2", 15_000, LEASE_MS) is Claim.WON  # w1 died: taken over
    assert b.attempts("job", 7) == 2
    with pytest.raises(LeaseLost):  # w1 wakes up: its writes must roll back
        a.done("job", 7, "w1", 16_000, "late")
    with pytest.raises(LeaseLost):
        a.renew("job", 7, "w1", 16_000, LEASE_MS)
    # a worker restarted under its own name takes its unfinished run back at once
    assert b.claim("job", 7, "w2", 16_500, LEASE_MS) is Claim.WON
    b.done("job", 7, "w2", 17_000, "ok")
    for who, at in (("w1", 99_000), ("w2", 99_000)):
        assert b.claim("job", 7, who, at, LEASE_MS) is Claim.DONE
    assert b.runs("job") == [(7, "w2", 16_500, 17_000, "ok")]


@pytest.mark.req("H08", "D02")
def test_h08_d02_daily_check_of_a_dead_worker_is_taken_over_once(
    backend: str, store_at: list[SqlStore]
) -> None:
    w1 = _ctx(backend, store_at, "w1")
    w2 = _ctx(backend, store_at, "w2")
    _meters(w1.store, range(1, 4))
    cfg = w1.config
    day, at_ms = recovery.check_due(cfg, T0 * 1000 + 7 * 3600_000)
    # w1 claimed the check and died before its commit: nothing of it is stored
    assert w1.timed.claim(recovery.CHECK, day, "w1", at_ms, LEASE_MS) is Claim.WON
    r2 = recovery.Recovery()
    r2.tick(w2, at_ms + 1000)
    assert w2.missing.checks() == [] and not w2.timed.finished(recovery.CHECK, day)
    r2.tick(w2, at_ms + LEASE_MS)  # the lease is over: w2 runs it
    assert [(c.day, c.worker, c.meters) for c in w2.missing.checks()] == [(day, "w2", 3)]
    assert w2.timed.attempts(recovery.CHECK, day) == 2
    r1 = recovery.Recovery()  # w1 restarted: the check is done, not run again
    r1.tick(w1, at_ms + 2 * LEASE_MS)
    lines = w1.activity.lines(kinds=["daily_check"])
    assert len(lines) == 1 and "by w2" in lines[0].detail


@pytest.mark.req("H08", "H06")
def test_h08_h06_jobs_of_a_dead_worker_are_requeued_or_taken_over_once(
    backend: str, store_at: list[SqlStore]
) -> None:
    w1 = _ctx(backend, store_at, "w1")
    w2 = _ctx(backend, store_at, "w2")
    w3 = _ctx(backend, store_at, "w3")
    _meters(w1.store, range(1, 3))
    ids = [w1.jobs.enqueue(ReadSpec(m), "cli", 1000) for m in (1, 2)]
    assert [j.job_id for j in w1.jobs.claim("w1", 1000)] == ids
    w1.jobs.sent(ids[0], 5, 1000, 5000)  # the second one never went out: w1 died
    assert w2.jobs.overdue("w2", 5000 + LEASE_MS - 1, LEASE_MS) == []  # not overdue enough
    taken = w2.jobs.overdue("w2", 5000 + LEASE_MS, LEASE_MS)
    assert [j.job_id for j in taken] == [ids[0]]  # w2 retries or fails it
    assert w3.jobs.overdue("w3", 5000 + LEASE_MS, LEASE_MS) == []  # once
    second = w1.jobs.get(ids[1])
    assert (second.state, second.attempts) == (JobState.QUEUED, 0)  # claimed again later
    assert [j.job_id for j in w3.jobs.claim("w3", 20_000)] == [ids[1]]


@pytest.fixture
def pg_url(pg_schema: Any) -> str:
    dsn, schema = pg_schema
    return f"{dsn}?options={quote(f'-c search_path={schema}')}"


@pytest.mark.req("H08")
def test_h08_row_claims_pass_over_rows_another_worker_holds(
    pg_url: str, store_at: list[SqlStore]
) -> None:
    w1 = _ctx(pg_url, store_at, "w1")
    w2 = _ctx(pg_url, store_at, "w2")
    _meters(w1.store, range(1, 9))
    ids = [w1.jobs.enqueue(ReadSpec(m), "cli", 1000) for m in range(1, 9)]
    for mid in range(1, 9):
        w1.schedules.put(ScheduleSpec(mid, 1, period_s=3600), "system", 1000)
    with w1.db.transaction():  # w1 holds its claims uncommitted: w2 neither waits nor doubles
        a = [j.job_id for j in w1.jobs.claim("w1", 1000, limit=3)]
        b = [j.job_id for j in w2.jobs.claim("w2", 1000, limit=10)]
        sa = {s.spec.meter_id for s in w1.schedules.find(limit=3, claim=True)}
        sb = {s.spec.meter_id for s in w2.schedules.find(limit=10, claim=True)}
    assert sorted(a + b) == ids and not set(a) & set(b)
    assert sa | sb == set(range(1, 9)) and not sa & sb


def _copy_rows(db: Db, ids: range, days: range) -> None:
    db.execute(
        "INSERT INTO interval_day SELECT m, ? + d * 86400, 900, 1, 96, "
        "CAST('\\x00' AS BYTEA), CAST('\\x00' AS BYTEA), CAST('\\x00' AS BYTEA), 0 "
        "FROM generate_series(CAST(? AS BIGINT), CAST(? AS BIGINT)) m, "
        "generate_series(CAST(? AS INT), CAST(? AS INT)) d",
        (T0, ids.start, ids.stop - 1, days.start, days.stop - 1),
    )


@pytest.mark.req("D01", "N01")
def test_d01_migration_8_partitions_an_existing_table_keeping_every_row(
    pg_url: str, store_at: list[SqlStore]
) -> None:
    store = open_at(pg_url, store_at)
    _meters(store, range(1, 11))
    db = store.db
    with db.transaction():  # back to v7: a plain table with rows over three months
        db.execute("DELETE FROM schema_version WHERE version >= 8")
        for table in ("export_run", "export_schedule", "validation_result"):  # v9
            db.execute(f"DROP TABLE {table}")
        for table in ("api_session", "api_key", "party_use", "portal_log", "party"):  # v10
            db.execute(f"DROP TABLE {table}")
        db.execute("ALTER TABLE missing_day DROP COLUMN reopened_ms")  # v11
        db.execute("DROP TABLE interval_day")
        db.execute("DROP TABLE timed_run")
        db.execute("DROP FUNCTION interval_day_month")
        db.execute(
            "CREATE TABLE interval_day (meter_id BIGINT NOT NULL REFERENCES meter (meter_id), "
            "day BIGINT NOT NULL, interval_s INTEGER NOT NULL, n_channels INTEGER NOT NULL, "
            "n_present INTEGER NOT NULL, vals BYTEA NOT NULL, flags BYTEA NOT NULL, "
            "srcs BYTEA NOT NULL, updated_at BIGINT NOT NULL, PRIMARY KEY (meter_id, day))"
        )
        db.execute("CREATE INDEX interval_day_day ON interval_day (day)")
        for stmt in MIGRATIONS[6].render("postgres"):
            if "timed_run" in stmt and "CREATE TABLE" in stmt:
                db.execute(stmt)
        _copy_rows(db, range(1, 11), range(-40, 50))  # 2024-02-21 .. 2024-05-20
        db.execute(
            "INSERT INTO daily_check VALUES (?, 1, NULL, 'gone', 0, 0, 0), "
            "(?, 2, 3, 'w1', 10, 1, 2)",
            (T0 - DAY_S, T0 - 2 * DAY_S),
        )
    assert migrate(db) == [8, 9, 10, 11, 12]  # 9-11: undone above; 12 replaces 8's function
    with db.transaction(write=False):
        assert db.query("SELECT COUNT(*) FROM interval_day")[0][0] == 10 * 90
        kind = db.query("SELECT relkind FROM pg_class WHERE oid = to_regclass('interval_day')")
        assert kind[0][0] == "p"
        assert db.query(f"SELECT COUNT(*) FROM {parts.DEFAULT}")[0][0] == 0
    names = [n for n, _, _ in parts.months(db)]
    assert names == [f"interval_day_2024{m:02d}" for m in (2, 3, 4, 5)]
    with db.transaction(write=False):  # each row in the partition of its month
        got = db.query("SELECT tableoid::regclass::text FROM interval_day WHERE day = ?", (T0,))
    assert {r[0] for r in got} == {"interval_day_202404"} and len(got) == 10
    ctx = Ctx.build(Config(), store)
    assert ctx.timed.runs(recovery.CHECK) == [
        (T0 - 2 * DAY_S, "w1", 2, 3, "2 meter-days missing"),
        (T0 - DAY_S, "gone", 1, None, None),  # unfinished: taken over when asked
    ]
    assert ctx.timed.claim(recovery.CHECK, T0 - DAY_S, "w2", 10, LEASE_MS) is Claim.WON


@pytest.mark.req("T06", "D01")
def test_t06_retention_drops_whole_months_and_keeps_logs_as_long(
    backend: str, store_at: list[SqlStore]
) -> None:
    store = open_at(backend, store_at)
    _meters(store, range(1, 3))
    db = store.db
    with db.transaction():
        parts.ensure(db, T0 - 70 * DAY_S, ahead=3)  # Jan..Apr (PostgreSQL)
        for mid in (1, 2):
            for d in (-60, -30, -1, 0, 10):  # Feb 1, Mar 2, Mar 31, Apr 1, Apr 11
                db.execute(
                    "INSERT INTO interval_day VALUES (?, ?, 900, 1, 96, ?, ?, ?, 0)",
                    (mid, T0 + d * DAY_S, b"\0", b"\0", b"\0"),
                )
        for d in (-60, -25, -1):
            db.execute(
                "INSERT INTO activity (at_ms, kind, detail) VALUES (?, 'x', 'y')",
                ((T0 + d * DAY_S) * 1000,),
            )
    now = T0 + 20 * DAY_S  # keep 30 days: 2024-03-22 and after -> March and after stay
    gone = parts.apply_retention(db, now, 30, 30)
    assert gone is not None and gone.cutoff_s == T0 - 31 * DAY_S  # 2024-03-01
    with db.transaction(write=False):
        days = [int(r[0]) for r in db.query("SELECT DISTINCT day FROM interval_day ORDER BY day")]
        logs = db.query("SELECT COUNT(*) FROM activity")[0][0]
    assert days == [T0 + d * DAY_S for d in (-30, -1, 0, 10)]
    assert logs == 2  # the log of 25 days ago outlives its 30 days: its month of data is kept
    if backend.startswith("postgres"):
        assert gone.partitions == ["interval_day_202401", "interval_day_202402"]
        assert gone.rows == 0  # whole partitions dropped, no rows deleted
    else:
        assert gone.rows == 2
    assert parts.apply_retention(db, now, 0, 0) is None  # 0: forever
    for keep, logs_keep in ((30, 29), (0, 365), (-1, 0)):
        with pytest.raises(ConfigError, match="retention_days"):
            Config(retention_days=keep, log_retention_days=logs_keep)


@pytest.mark.req("T06")
def test_t06_db_retention_command_and_its_refusals(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AMI_DATABASE", sqlite_url)
    assert run_module("headend", "db", "init").returncode == 0
    monkeypatch.setenv("AMI_RETENTION_DAYS", "400")
    done = run_module("headend", "db", "retention", "--json")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["retention_days"] == 400 and out["dropped"] == [] and out["rows"] == 0
    monkeypatch.setenv("AMI_LOG_RETENTION_DAYS", "30")
    line = refused(run_module("headend", "db", "retention"))
    assert "log_retention_days: expected at least retention_days" in line


class _Recorder:
    """Records the statements a store method runs (to EXPLAIN the real ones)."""

    def __init__(self, db: Db) -> None:
        self.db = db
        self.seen: list[tuple[str, tuple[Any, ...]]] = []
        self._query = db.query

    def __enter__(self) -> _Recorder:
        def query(sql: str, params: Any = ()) -> list[Any]:
            self.seen.append((sql, tuple(params)))
            return self._query(sql, params)

        self.db.query = query  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        self.db.query = self._query  # type: ignore[method-assign]


def _plan(db: Db, sql: str, params: tuple[Any, ...]) -> Iterator[dict[str, Any]]:
    rows = db.query("EXPLAIN (FORMAT JSON) " + sql, params)
    doc = rows[0][0]
    stack = [(doc if isinstance(doc, list) else json.loads(doc))[0]["Plan"]]
    while stack:
        node = stack.pop()
        yield node
        stack.extend(node.get("Plans", []))


BIG = ("interval_day", "job", "missing_day")


@pytest.mark.req("N01", "D02", "H05")
@pytest.mark.timeout(60)
def test_n01_hot_queries_use_indexes_and_prune_months(
    pg_url: str, store_at: list[SqlStore]
) -> None:
    store = open_at(pg_url, store_at)
    ctx = Ctx.build(Config(), store)
    db = store.db
    n = 2000
    with db.transaction():
        db.execute(
            "INSERT INTO meter SELECT m, '1', 900, 45, 0, 1, 1, ?, NULL, NULL, NULL, 0 "
            "FROM generate_series(1, ?) m",
            (T0 - 200 * DAY_S, n),
        )
        parts.ensure(db, T0 - 120 * DAY_S, ahead=4)
        _copy_rows(db, range(1, n + 1), range(-120, 0))  # 4 months, 240,000 day rows
        db.execute(
            "INSERT INTO job (meter_id, requester, source, mode, start_s, end_s, what, state, "
            "worker, seqs, attempts, parts, parts_seen, created_ms, priority, deadline_ms) "
            "SELECT 1 + mod(j, ?), 'cli', 2, 2, 0, 0, 15, CASE WHEN mod(j, 500) = 0 THEN 'queued' "
            "WHEN mod(j, 500) = 1 THEN 'sent' ELSE 'done' END, 'w1', '', 1, 0, '', j, 1, j "
            "FROM generate_series(1, 100000) j",
            (n,),
        )
        db.execute(
            "INSERT INTO missing_day SELECT m, ? - d * 86400, 96, 0, 0, 'older', "
            "CASE WHEN d = 1 THEN 'missing' ELSE 'recovered' END, 1, 0, NULL, 0, 0, NULL "
            "FROM generate_series(1, ?) m, generate_series(1, 30) d",
            (T0, n),
        )
        db.execute(
            "DELETE FROM interval_day WHERE mod(meter_id, 97) = 0 AND day = ?", (T0 - DAY_S,)
        )
    db.execute("ANALYZE")
    with _Recorder(db) as rec:
        ctx.missing.scan(T0 + 3600, 3)  # the daily completeness check
        with contextlib.suppress(InvalidData):  # the query ran; these rows are fillers
            ctx.store.intervals(5, 0, T0 - 10 * DAY_S, T0 - 8 * DAY_S)  # an export range
        ctx.missing.due(T0 * 1000, 3)  # missing days due for recovery
        ctx.jobs.claim("w2", T0 * 1000, limit=50)  # job claims (no throttle: its counts)
        ctx.jobs.overdue("w2", T0 * 1000, LEASE_MS)
    hot = [(s, p) for s, p in rec.seen if any(t in s for t in BIG)]
    # an empty partition (a month ahead, the default) is read in no time, scan or not
    filled = {str(r[0]) for r in db.query("SELECT relname FROM pg_class WHERE relpages > 0")}
    assert len(hot) >= 6
    window = {f"interval_day_2024{m:02d}" for m in (3, 4)}  # the check's last 3 days
    for sql, params in hot:
        nodes = list(_plan(db, sql, params))
        seq = {x.get("Relation Name") for x in nodes if x["Node Type"] == "Seq Scan"}
        touched = {str(x["Relation Name"]) for x in nodes if x.get("Relation Name")}
        if "WITH w AS" in sql or "n_present FROM interval_day" in sql:
            # the daily check reads every meter's last days: a scan of the window's months
            # is the planner's fair choice (it chose either way); other months are pruned
            months = {t for t in touched if t.startswith("interval_day_")}
            assert not (months - window) & filled, (sql, months)
            continue
        big = {*BIG, *(n for n, _, _ in parts.months(db)), parts.DEFAULT} & filled
        assert not seq & big, (sql, seq)


@pytest.mark.req("N01", "D01")
def test_n01_pg_storage_bench_prints_bytes_per_meter_day(pg_dsn: str) -> None:
    done = run_module("bench", "pg-storage", "--meters", "20", "--days", "3", "--dsn", pg_dsn)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.splitlines()[-1])
    assert out["meter_days"] == out["stored_meter_days"] == 60
    assert out["interval_bytes"] > 0 and out["bytes_per_meter_day"] > 0
    assert "error: " in refused(
        run_module("bench", "pg-storage", "--dsn", "postgresql://nobody@127.0.0.1:1/x")
    )


@pytest.mark.req("D01", "N01")
@pytest.mark.timeout(60)
def test_d01_a_month_made_beside_a_reader_hides_none_of_its_rows(
    pg_url: str, pg_schema: Any, store_at: list[SqlStore]
) -> None:
    """Rows of a month without a partition wait in the default one; the month is made
    (the rows moved into it) while another connection's query starts: that query
    waits for the move and counts every row, as before it and after it (planned on
    the partitions of before, it counted none: an export's validation found a day
    "missing" that the export itself held)."""
    import threading

    import psycopg

    store = open_at(pg_url, store_at)
    _meters(store, range(1, 4))
    month = parts.month_start(T0 - 3650 * DAY_S)  # 2014-04: no partition made for it
    name = "interval_day_" + datetime.fromtimestamp(month, UTC).strftime("%Y%m")
    dsn, schema = pg_schema
    count = "SELECT COUNT(*) FROM interval_day WHERE day >= %s AND day < %s"
    span = (month, parts.next_month(month))
    opts = f"-c search_path={schema}"
    with (
        psycopg.connect(dsn, options=opts) as mover,
        psycopg.connect(dsn, options=opts, autocommit=True) as reader,
        psycopg.connect(dsn, options=opts, autocommit=True) as watch,
    ):
        _copy(mover, month)
        mover.commit()
        assert _one(reader, count, span) == 15  # 3 meters x 5 days, in the default
        mover.execute("SELECT interval_day_month(%s)", (month,))  # made, not committed
        got: list[int] = []
        pid = reader.info.backend_pid
        t = threading.Thread(target=lambda: got.append(_one(reader, count, span)))
        t.start()
        waiting = "SELECT COUNT(*) FROM pg_locks WHERE pid = %s AND NOT granted"
        wait_until_sync(lambda: _one(watch, waiting, (pid,)) > 0, 20, "the reader waits")
        mover.commit()
        t.join(20)
        assert got == [15]
        assert name in [n for n, _, _ in parts.months(store._db)]  # noqa: SLF001
        assert _one(watch, f"SELECT COUNT(*) FROM {name}", ()) == 15
        assert _one(watch, f"SELECT COUNT(*) FROM {parts.DEFAULT}", ()) == 0


def _copy(conn: Any, month: int) -> None:
    conn.execute(
        "INSERT INTO interval_day SELECT m, %s + d * 86400, 900, 1, 96, "
        "'\\x00'::bytea, '\\x00'::bytea, '\\x00'::bytea, 0 "
        "FROM generate_series(1, 3) m, generate_series(0, 4) d",
        (month,),
    )


def _one(conn: Any, sql: str, args: tuple[int, ...]) -> int:
    return int(conn.execute(sql, args).fetchone()[0])
