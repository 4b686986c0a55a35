"""N02, H08: `bench ondemand` and `hil scenario nats-failover` refuse bad options in one
line, before anything starts (their figures come from running them: docs/SCALE.md)."""

from __future__ import annotations

import json

import pytest

from tests.support.cli import refused, run_module


@pytest.mark.req("N02")
def test_n02_bench_ondemand_refuses_bad_options_in_one_line() -> None:
    line = refused(run_module("bench", "ondemand", "--meters", "0"))
    assert line == "error: expected --meters >= 1, --reads >= 1, --duration > 0, --slow-pct 0..100"
    assert refused(run_module("bench", "ondemand", "--days", "99")).endswith("got 99")


@pytest.mark.req("H08")
def test_h08_scenario_nats_failover_refuses_an_impossible_plan_in_one_line() -> None:
    p = run_module("hil", "scenario", "nats-failover", "--meters", "2", "--json")
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
    assert p.stderr.splitlines()[-1] == (
        "error: nats-failover: expected --meters >= 3 and --days 1..30, got 2, 4"
    )
    assert json.loads(p.stdout.splitlines()[-1])["ok"] is False
