"""The `headend` command line: every subcommand, its --help, --json, exit codes.

Most commands run in-process (`main(argv)`); `read` runs as a real process
(`python -m headend`) against the running service, as an operator would.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import json
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from headend.cli import build_parser, main
from headend.clock import Clock
from headend.store import (
    BlockIngest,
    Channel,
    ChannelKind,
    EventRecord,
    IntervalBlock,
    Meter,
    Source,
    SqlStore,
    Unit,
)
from headend.store.migrations import latest_version
from tests.headend.conftest import ctx_of, open_at
from tests.support.broker import Broker
from tests.support.fakemeter import FakeMeter, MqttLink
from tests.support.service import T0, make_config, running_service

ROOT = Path(__file__).resolve().parents[2]
DST_DAY = 1_711_843_200  # 2024-03-31T00:00:00Z: Europe/Paris springs forward at 01:00Z


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def db(sqlite_url: str, store_at: list[SqlStore]) -> str:
    """A store with meter 1 (x2 channel multiplier, x10 meter multiplier) and 2 days of data."""
    s = open_at(sqlite_url, store_at)
    ch = (
        Channel(ChannelKind.ACTIVE_IMPORT, Unit.WH, 2, -3),
        Channel(ChannelKind.REACTIVE_IMPORT, Unit.VARH),
    )
    s.register_meter(Meter(1, "9.9", 3600, 0, 10, ch, T0 - 5 * 86400, transport="mqtt"))
    s.register_meter(Meter(2, "9.9", 900, 60, 1, ch, T0 - 5 * 86400))
    n = 48
    s.ingest(
        [
            BlockIngest(
                1,
                IntervalBlock(
                    DST_DAY, 3600, (0,) * n, (tuple(range(n)), tuple(range(100, 100 + n)))
                ),
                Source.SCHEDULED,
                T0,
            )
        ],
        events=[EventRecord(1, 11, T0 - 10, 5, Source.SCHEDULED, T0)],
    )
    ctx_of(s).registry.join_unscheduled(1, 0)
    ctx_of(s).registry.join_unscheduled(2, 0)
    return sqlite_url


def test_d01_cli_help_everywhere() -> None:
    parser = build_parser()
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    names = list(subs[0].choices)
    assert {
        "serve",
        "db",
        "meters",
        "read",
        "schedule",
        "groups",
        "events",
        "export",
        "log",
    } <= set(names)
    for argv in (
        ["--help"],
        *([n, "--help"] for n in names),
        ["events", "routes", "add", "--help"],
    ):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 0


def test_d01_cli_db_init_and_version(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/new/dir/h.db"
    code, out, _ = run(capsys, "db", "init", "--database", url)
    v = latest_version()
    assert code == 0 and f"applied migration(s) {list(range(1, v + 1))}" in out
    code, out, _ = run(capsys, "db", "migrate", "--database", url, "--json")
    assert json.loads(out) == {"applied": [], "version": v}
    code, out, _ = run(capsys, "db", "version", "--database", url)
    assert out.strip() == f"schema version {v} (this head-end: {v})"


def test_d01_cli_meters_list_show_json_and_usage_errors(
    capsys: pytest.CaptureFixture[str], db: str
) -> None:
    code, out, _ = run(capsys, "meters", "list", "--database", db)
    assert code == 0 and "2 meter(s)" in out and "unscheduled" in out
    code, out, _ = run(capsys, "meters", "show", "1", "--database", db, "--json")
    d = json.loads(out)
    assert d["meter"] == 1 and d["meter_multiplier"] == 10 and d["channels"][0]["multiplier"] == 2
    code, _, err = run(capsys, "meters", "show", "99", "--database", db)
    assert code == 2 and "meter 99 is not registered" in err
    with pytest.raises(SystemExit) as e:
        main(["read"])  # missing meter id
    assert e.value.code == 2
    code, _, err = run(
        capsys, "export", "1", "--start", "yesterday", "--end", "x", "--database", db
    )
    assert code == 2 and "ISO date" in err


def test_d01_cli_export_csv_and_json_in_a_time_zone(
    capsys: pytest.CaptureFixture[str], db: str
) -> None:
    argv = ["export", "1", "--start", "2024-03-31", "--end", "2024-04-01", "--database", db]
    code, out, _ = run(capsys, *argv, "--tz", "Europe/Paris", "--what", "intervals")
    assert code == 0
    every = list(csv.DictReader(io.StringIO(out)))
    rows = [r for r in every if r["channel"] == "active_import"]
    # local day 2024-03-31 in Paris is 23 hours long (DST): 22:00Z on the 30th .. 22:00Z on the 31st
    assert len(rows) == 23 and len(every) == 46  # every hour of the grid, 2 channels
    assert rows[0]["start"] == "2024-03-31T00:00:00+01:00" and rows[0]["quality"] == "missing"
    assert rows[0]["value"] == "" and rows[0]["source"] == ""  # no data before 00:00Z
    rows = rows[1:]
    assert rows[0]["start"] == "2024-03-31T01:00:00+01:00"
    assert rows[1]["start"] == "2024-03-31T03:00:00+02:00"  # 02:00 local never happened
    # raw 0, 1, ... x channel multiplier 2 x 10^-3 x meter multiplier 10, exact decimals
    assert [Decimal(r["value"]) for r in rows[:3]] == [
        Decimal(0),
        Decimal("0.02"),
        Decimal("0.04"),
    ]
    react = [r for r in every if r["channel"] == "reactive_import"][1]
    assert react["value"] == "1000" and react["unit"] == "varh" and rows[0]["source"] == "scheduled"
    code, out, _ = run(capsys, *argv, "--tz", "UTC", "--format", "json")
    doc = json.loads(out)
    assert doc["time_zone"] == "UTC" and len(doc["meters"][0]["intervals"]) == 24
    assert doc["meters"][0]["intervals"][-1]["end"] == "2024-04-01T00:00:00+00:00"
    code, _, err = run(capsys, *argv, "--tz", "Mars/Olympus")
    assert code == 2 and "IANA" in err


def test_h07_cli_schedule_set_list_cancel(capsys: pytest.CaptureFixture[str], db: str) -> None:
    base = ["--database", db]
    code, out, _ = run(
        capsys,
        "schedule",
        "set",
        "2",
        "--slot",
        "1",
        "--every",
        "30m",
        "--at",
        "5m",
        "--source",
        "party:acme",
        *base,
    )
    assert code == 0 and "pending" in out
    code, out, _ = run(capsys, "schedule", "list", "2", *base, "--json")
    (row,) = json.loads(out)
    assert (
        row["source"] == "party:acme"
        and row["state"] == "pending"
        and "every 1800 s" in row["schedule"]
    )
    code, _, err = run(
        capsys, "schedule", "set", "2", "--slot", "1", "--every", "5m", "--source", "x", *base
    )
    assert code == 2 and "never read more often than it records" in err
    code, out, _ = run(
        capsys, "schedule", "cancel", "2", "--slot", "1", "--source", "party:acme", *base
    )
    assert code == 0 and "cancel pending" in out
    code, out, _ = run(capsys, "log", "--meter", "2", "--kind", "schedule_set", *base)
    assert out.count("schedule_set") == 2 and "source party:acme" in out


def test_h01_cli_groups_loads_and_assign(capsys: pytest.CaptureFixture[str], db: str) -> None:
    code, out, _ = run(capsys, "groups", "--database", db, "--json")
    d = json.loads(out)
    assert d["unscheduled"] == 2 and len(d["groups"]) == 24  # 00:01-08:00 in 20 min
    assert d["groups"][0]["window"] == "00:01-00:21" and d["groups"][-1]["window"] == "07:41-08:00"
    code, out, _ = run(capsys, "groups", "--assign", "--database", db)
    assert code == 0 and "unscheduled: 0; imbalance (largest - smallest group): 1" in out
    assert "placed now: 2" in out
    code, out, _ = run(capsys, "schedule", "list", "--database", db, "--json")
    assert [(r["meter"], r["slot"], r["state"]) for r in json.loads(out)] == [
        (1, 0, "pending"),
        (2, 0, "pending"),
    ]


def test_d09_cli_events_routes_and_ack(capsys: pytest.CaptureFixture[str], db: str) -> None:
    base = ["--database", db]
    code, out, _ = run(capsys, "events", "routes", "add", "11", "security", *base)
    assert code == 0 and "added" in out
    code, out, _ = run(capsys, "events", "routes", "list", *base, "--json")
    assert json.loads(out) == [
        {"code": 11, "name": "tamper", "recipient": "security", "topic": "ami/v1/notify/security"}
    ]
    code, out, _ = run(capsys, "events", "list", "--meter", "1", *base, "--json")
    (ev,) = json.loads(out)
    assert ev["name"] == "tamper" and ev["data"] == 5
    code, _, err = run(capsys, "events", "routes", "add", "11", "bad name!", *base)
    assert code == 2 and "recipient" in err
    ops_db = open_at(db, [])
    did = ctx_of(ops_db).events.add_delivery(
        "security", "event", '{"meter": 1}', 0, event_id=ev["event_id"]
    )
    ops_db.close()
    code, out, _ = run(capsys, "events", "ack", str(did), *base)
    assert code == 0 and "acknowledged" in out
    code, _, err = run(capsys, "events", "ack", str(did), *base)
    assert code == 2 and "already" in err
    code, out, _ = run(capsys, "events", "deliveries", *base, "--json")
    assert json.loads(out)[0]["state"] == "acked"
    code, out, _ = run(capsys, "events", "routes", "remove", "11", "security", *base)
    assert code == 0


async def _cli(db: str, broker: str, *argv: str) -> tuple[int, str, str]:
    env = {**os.environ, "AMI_DATABASE": db, "AMI_BROKER": broker, "AMI_SPEED": "600"}
    env["AMI_INSECURE"] = "1"  # the shared test broker is the plain one
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "headend",
        *argv,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(), err.decode()


def test_h05_cli_read_waits_prints_and_acknowledges(
    mqtt_broker: Broker, sqlite_url: str, store_at: list[SqlStore]
) -> None:
    cfg = make_config(mqtt_broker.url, sqlite_url, worker="cli")
    clock = Clock(cfg.speed, cfg.clock_start)

    async def main_() -> None:
        async with running_service(cfg, clock):
            good = FakeMeter(1201, MqttLink(mqtt_broker.host, mqtt_broker.port, 1201), clock)
            mute = FakeMeter(
                1202, MqttLink(mqtt_broker.host, mqtt_broker.port, 1202), clock, ignore_reads=9
            )
            for m in (good, mute):
                await m.start()
                await m.register()
            code, out, err = await _cli(sqlite_url, mqtt_broker.url, "read", "1201")
            assert code == 0, err
            assert "registers at" in out and "interval(s)" in out and "done in" in out
            code, out, _ = await _cli(sqlite_url, mqtt_broker.url, "read", "1201", "--json")
            d = json.loads(out)
            assert d["state"] == "done" and d["data"]["source"] == "on_demand"
            assert 0 < d["latency_ms"] < 2 * cfg.ondemand_timeout_s * 1000  # done: <= 2 tries
            code, out, err = await _cli(sqlite_url, mqtt_broker.url, "read", "1202")
            assert code == 1 and "failed" in out and "no valid answer" in out
            code, _, err = await _cli(sqlite_url, mqtt_broker.url, "read", "4242")
            assert code == 2 and "not registered" in err
            ctx = ctx_of(open_at(sqlite_url, store_at))
            jobs = ctx.jobs.newest()
            assert len(jobs) == 3 and all(j.requester_ack_ms is not None for j in jobs)
            for m in (good, mute):
                await m.stop()

    asyncio.run(main_())
