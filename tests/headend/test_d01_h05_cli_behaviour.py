"""The `headend` CLI on bad input and in the operator's hands: one line and an exit
code instead of a traceback, messages that say what to do, `log` tail/since/follow,
`serve` logging and its refusal of the development key.

In-process (`main(argv)` with capsys) where that suffices; real processes
(`python -m headend`) for `serve` and `log --follow`, as an operator runs them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from headend.api import Headend, JobState, ReadSpec
from headend.cli import main
from headend.clock import Clock
from headend.config import DEV_MASTER_KEY
from headend.context import Ctx
from headend.store import Channel, ChannelKind, Meter, SqlStore, Unit, open_store
from headend.store.activity import Kind
from headend.store.migrations import MIGRATIONS, migrate
from headend.store.sqlite import SqliteDb
from hil.broker import free_port
from hil.wait import wait_until_sync
from tests.headend.conftest import ctx_of, open_at
from tests.support.broker import Broker
from tests.support.fakemeter import FakeMeter, MqttLink
from tests.support.service import T0, eventually, make_config, running_service

ROOT = Path(__file__).resolve().parents[2]
CH = (Channel(ChannelKind.ACTIVE_IMPORT, Unit.WH),)
KEY = "5a" * 32  # a master key that is not the development one


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    return code, out.out, out.err


def usage(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """argparse's own usage errors: exit 2 and a message on stderr."""
    with pytest.raises(SystemExit) as e:
        main(list(argv))
    assert e.value.code == 2
    return capsys.readouterr().err


@pytest.fixture
def db(sqlite_url: str, store_at: list[SqlStore]) -> str:
    """Meter 1 (in a read group, heard on mqtt) and meter 2 (never heard, unscheduled)."""
    s = open_at(sqlite_url, store_at)
    s.register_meter(Meter(1, "9.9", 900, 0, 1, CH, T0, transport="mqtt"))
    s.register_meter(Meter(2, "9.9", 900, 0, 1, CH, T0))
    ctx = ctx_of(s)
    ctx.registry.join_unscheduled(2, 0)
    ctx.registry.set_group(1, 0, 120, "00:01-00:21", 0)
    return sqlite_url


def _log_lines(ctx: Ctx, n: int, t0_ms: int = 1_000_000) -> None:
    for i in range(n):
        ctx.activity.log(t0_ms + i * 1000, Kind.REGISTERED, f"line {i}", 1 + i % 2)


# -- log ---------------------------------------------------------------------------------


def test_d01_log_newest_last_tail_and_since(
    capsys: pytest.CaptureFixture[str], db: str, store_at: list[SqlStore]
) -> None:
    _log_lines(ctx_of(open_at(db, store_at)), 30)
    code, out, _ = run(capsys, "log", "--database", db)  # stdout is no terminal: 20 lines
    lines = out.splitlines()
    assert code == 0 and len(lines) == 20
    assert lines[0].endswith("line 10") and lines[-1].endswith("line 29")  # newest last
    code, out, _ = run(capsys, "log", "--tail", "3", "--meter", "2", "--database", db)
    assert [x.rsplit(" ", 1)[1] for x in out.splitlines()] == ["25", "27", "29"]
    code, out, _ = run(capsys, "log", "--limit", "0", "--database", db)
    assert code == 0 and out == ""
    # since: ISO (UTC here), UTC s, and back from now (nothing this old is "recent")
    code, out, _ = run(capsys, "log", "--since", "1970-01-01T00:17:04", "--database", db)
    assert out.splitlines()[0].endswith("line 24") and len(out.splitlines()) == 6
    code, out, _ = run(capsys, "log", "--since", "1025", "--tail", "2", "--database", db)
    assert [x.rsplit(" ", 1)[1] for x in out.splitlines()] == ["28", "29"]
    code, out, _ = run(capsys, "log", "--since", "10m", "--database", db)
    assert code == 0 and out == ""
    code, _, err = run(capsys, "log", "--since", "yesterday", "--database", db)
    assert code == 2 and "10m, 2h" in err


def test_d01_log_refuses_unknown_kinds_and_negative_counts(
    capsys: pytest.CaptureFixture[str], db: str
) -> None:
    err = usage(capsys, "log", "--kind", "bad_frames", "--database", db)
    assert "invalid choice: 'bad_frames'" in err and "bad_frame" in err and "registered" in err
    for flag in ("--tail", "--limit"):
        err = usage(capsys, "log", flag, "-3", "--database", db)
        assert "expected 0 or more, got -3" in err
    err = usage(capsys, "events", "list", "--limit", "-1", "--database", db)
    assert "expected 0 or more" in err


def test_d01_log_follow_prints_new_lines_until_ctrl_c(db: str, store_at: list[SqlStore]) -> None:
    ctx = ctx_of(open_at(db, store_at))
    _log_lines(ctx, 3)
    proc = subprocess.Popen(
        [sys.executable, "-m", "headend", "log", "--follow", "--tail", "2", "--database", db],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().endswith("line 1\n")
        assert proc.stdout.readline().endswith("line 2\n")
        ctx.activity.log(2_000_000, Kind.BAD_FRAME, "a new one", 7)
        line = proc.stdout.readline()
        assert "bad_frame" in line and line.endswith("a new one\n")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0 and "Traceback" not in err and out == ""


# -- messages that say what to do ----------------------------------------------------------


def test_d01_missing_database_says_db_init_and_creates_nothing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "nothing-here.db"
    for argv in (["meters", "list"], ["log"], ["db", "version"], ["read", "1", "--no-wait"]):
        code, _, err = run(capsys, *argv, "--database", f"sqlite:///{path}")
        assert code == 1 and "headend db init" in err and str(path) in err, argv
        assert len(err.splitlines()) == 1
    assert not path.exists()
    with pytest.raises(Exception, match="no database"):
        Headend.open(f"sqlite:///{path}")  # the API does not create one either
    assert not path.exists()


def test_d01_old_schema_says_db_migrate(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()  # a file, schema version 0
    old = tmp_path / "old.db"
    db = SqliteDb(old)
    migrate(db, MIGRATIONS[:1])  # version 1 of 2
    db.close()
    for path, have in ((empty, 0), (old, 1)):
        code, _, err = run(capsys, "meters", "list", "--database", f"sqlite:///{path}")
        assert code == 1 and f"schema version {have}" in err and "`headend db migrate`" in err
    code, out, _ = run(capsys, "db", "migrate", "--database", f"sqlite:///{old}")
    assert code == 0 and f"applied migration(s) {[m.version for m in MIGRATIONS[1:]]}" in out
    code, out, _ = run(capsys, "meters", "list", "--database", f"sqlite:///{old}")
    assert code == 0 and "0 meter(s)" in out


def test_d01_read_with_no_service_says_nobody_picked_it_up(
    capsys: pytest.CaptureFixture[str], db: str
) -> None:
    code, _, err = run(capsys, "read", "1", "--timeout", "0.2", "--database", db)
    assert code == 1
    assert "still queued" in err and "is `headend serve` running against this database?" in err


def test_h05_read_that_times_out_while_served_says_it_was_sent(
    mqtt_broker: Broker, sqlite_url: str
) -> None:
    # the meter ignores reads; an attempt is allowed 6000 s (10 s real): the CLI gives up first
    cfg = make_config(mqtt_broker.url, sqlite_url, worker="cli-slow", ondemand_timeout_s=6000)
    clock = Clock(cfg.speed, cfg.clock_start)

    async def main_() -> None:
        async with running_service(cfg, clock):
            mute = FakeMeter(
                1302, MqttLink(mqtt_broker.host, mqtt_broker.port, 1302), clock, ignore_reads=9
            )
            await mute.start()
            await mute.register()
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                *("-m", "headend", "read", "1302", "--timeout", "2", "--database", sqlite_url),
                cwd=ROOT,
                env={**os.environ, "AMI_SPEED": "600"},
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            _, err = await asyncio.wait_for(proc.communicate(), 60)
            text = err.decode()
            assert proc.returncode == 1 and "Traceback" not in text
            assert "sent to meter 1302 (attempt 1, state sent)" in text
            assert "has not answered yet" in text and "still queued" not in text
            await mute.stop()

    asyncio.run(main_())


def test_d01_meters_show_never_prints_none(capsys: pytest.CaptureFixture[str], db: str) -> None:
    for mid in ("1", "2"):
        code, out, _ = run(capsys, "meters", "show", mid, "--database", db)
        assert code == 0 and "None" not in out
    assert "not in a read group yet" in out and "not heard since registration" in out
    code, out, _ = run(capsys, "meters", "list", "--database", db)
    assert "None" not in out


def test_h07_cancel_of_a_slot_never_set_is_refused_and_writes_nothing(
    capsys: pytest.CaptureFixture[str], db: str, store_at: list[SqlStore]
) -> None:
    code, _, err = run(
        capsys, "schedule", "cancel", "2", "--slot", "2", "--source", "op", "--database", db
    )
    assert code == 2 and "meter 2 has no schedule in slot 2: nothing to cancel" in err
    ctx = ctx_of(open_at(db, store_at))
    assert ctx.schedules.find(2) == [] and ctx.activity.lines(2) == []


def test_d01_serial_help_offers_only_usable_urls(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    out = capsys.readouterr().out
    assert "--serial" in out and "socket://" in out and "loop://" not in out
    assert DEV_MASTER_KEY not in out


# -- paths a user gives ----------------------------------------------------------------------


def test_d01_export_to_a_missing_folder_is_one_line_and_writes_nothing(
    capsys: pytest.CaptureFixture[str], db: str, tmp_path: Path
) -> None:
    argv = ["export", "1", "--start", "2024-04-01", "--end", "2024-04-02", "--database", db]
    target = tmp_path / "missing" / "x.csv"
    code, out, err = run(capsys, *argv, "-o", str(target))
    assert code == 2 and out == "" and len(err.splitlines()) == 1
    assert f"no folder {target.parent}" in err and not target.parent.exists()
    (tmp_path / "out").mkdir()
    good = tmp_path / "out" / "x.csv"
    code, _, err = run(capsys, *argv, "-o", str(good))
    assert code == 0 and good.read_text().startswith("meter,record,start,end,channel")
    assert [p.name for p in good.parent.iterdir()] == ["x.csv"]  # no temp file left beside it


def test_d01_db_init_on_a_path_that_cannot_be_written(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code, _, err = run(capsys, "db", "init", "--database", f"sqlite:///{blocker}/sub/h.db")
    assert code != 0 and len(err.splitlines()) == 1 and str(blocker) in err
    code, _, err = run(capsys, "db", "init", "--database", f"sqlite:///{blocker}/h.db")
    assert code != 0 and len(err.splitlines()) == 1


# -- serve -------------------------------------------------------------------------------------


def test_d01_serve_refuses_the_development_key_without_dev(
    capsys: pytest.CaptureFixture[str], sqlite_url: str
) -> None:
    code, _, err = run(
        capsys, "serve", "--database", sqlite_url, "--broker", "mqtt://127.0.0.1:1", "--insecure"
    )
    assert code == 2 and len(err.splitlines()) == 1
    assert "development master key" in err and "--dev" in err
    assert "master_key" in err and "AMI_MASTER_KEY" in err and DEV_MASTER_KEY not in err


@contextlib.contextmanager
def _serving(
    url: str, broker: str, log: Path, *flags: str, key: str, extra: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    env = {**os.environ, "AMI_DATABASE": url, "AMI_BROKER": broker, "AMI_MASTER_KEY": key}
    env |= extra or {}
    env |= {"AMI_INSECURE": "1"}  # the shared test broker is the plain one
    env |= {"AMI_POLL_S": "0.05", "AMI_WORKER": f"serve-{log.stem}", "AMI_SHARE_GROUP": log.stem}
    with log.open("wb") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "headend", "serve", *flags], cwd=ROOT, env=env, stderr=f
        )
    try:
        wait_until_sync(
            lambda: "subscribed as" in log.read_text() or proc.poll() is not None,
            20,
            f"headend serve subscribed ({log})",
        )
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.mark.parametrize("verbose", [True, False])
def test_h05_serve_logs_registrations_and_jobs_and_with_v_every_frame(
    mqtt_broker: Broker, sqlite_url: str, tmp_path: Path, verbose: bool
) -> None:
    open_store(sqlite_url).close()
    log = tmp_path / f"s{uuid.uuid4().hex[:10]}.log"
    mid = 1401 if verbose else 1402
    key = DEV_MASTER_KEY if verbose else KEY
    flags = ("--dev", "-v") if verbose else ()

    async def main_() -> None:
        clock = Clock(1.0)
        meter = FakeMeter(
            mid, MqttLink(mqtt_broker.host, mqtt_broker.port, mid), clock, bytes.fromhex(key)
        )
        await meter.start()
        await meter.register()
        with Headend.open(sqlite_url) as he:
            job_id = he.request_read(ReadSpec(mid), "cli", 0)
            job = await eventually(lambda: he.job(job_id).closed and he.job(job_id), 20, "read")
            assert job.state is JobState.DONE
        await meter.stop()

    with _serving(sqlite_url, mqtt_broker.url, log, *flags, key=key) as proc:
        asyncio.run(main_())
    text = log.read_text()
    assert proc.returncode == 0 and "Traceback" not in text, text
    assert f"meter {mid} registered via mqtt" in text
    assert f"meter {mid}: job 1 done in" in text
    frames = f"meter {mid}: register seq"
    assert (frames in text) is verbose
    assert ("job 1 claimed" in text and "read_request seq" in text) is verbose
    assert KEY not in text  # the key is never logged
    assert ("(development master key)" in text) is verbose


def test_d01_database_down_is_one_line_without_the_password(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, _, err = run(
        capsys, "meters", "list", "--database", "postgresql://u:s3cret@127.0.0.1:1/x"
    )
    assert code == 1 and len(err.splitlines()) == 1 and "s3cret" not in err
    assert "cannot connect to PostgreSQL" in err


@pytest.mark.req("D10")
@pytest.mark.timeout(60)
def test_d10_serve_with_api_listen_serves_the_api_and_stops_with_it(
    mqtt_broker: Broker, sqlite_url: str, tmp_path: Path
) -> None:
    open_store(sqlite_url).close()
    port = free_port()
    api = {"AMI_API_LISTEN": f"127.0.0.1:{port}", "AMI_API_INSECURE": "1"}
    log = tmp_path / f"a{uuid.uuid4().hex[:10]}.log"
    with _serving(sqlite_url, mqtt_broker.url, log, key=KEY, extra=api) as proc:
        base = f"http://127.0.0.1:{port}"
        spec = wait_until_sync(lambda: _get(f"{base}/openapi.json"), 20, "the API answers")
        assert spec[0] == 200 and b'"/portal/v1/meters"' in spec[1]
        assert _get(f"{base}/api/v1/meters")[0] == 401  # no key, no data
    text = log.read_text()
    assert proc.returncode == 0 and "Traceback" not in text, text
    assert "insecure: the HTTP API is served over plain HTTP" in text


@pytest.mark.timeout(60)
def test_d10_serve_stops_with_one_line_when_the_api_cannot_listen(
    mqtt_broker: Broker, sqlite_url: str, tmp_path: Path
) -> None:
    open_store(sqlite_url).close()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", free_port()))
        taken.listen()
        api = {"AMI_API_LISTEN": f"127.0.0.1:{taken.getsockname()[1]}", "AMI_API_INSECURE": "1"}
        log = tmp_path / f"b{uuid.uuid4().hex[:10]}.log"
        with _serving(sqlite_url, mqtt_broker.url, log, key=KEY, extra=api) as proc:
            wait_until_sync(lambda: proc.poll() is not None, 30, "serve stops")
    text = log.read_text()
    assert proc.returncode == 1 and "Traceback" not in text, text
    last = text.splitlines()[-1]
    assert last.startswith("headend serve: the HTTP API cannot listen on 127.0.0.1:"), text
    assert last.endswith("already in use") and "Task was destroyed" not in text, text


def _get(url: str) -> tuple[int, bytes] | None:
    """(status, body), or None while nothing listens."""
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError:
        return None
