"""N01 (issue 16): `python -m bench api` measures the API while real collection runs.

The bench runs as the operator would (its own process: a private mosquitto, one
`headend serve` serving the service and the API, signed uplinks from gateway
connections, client threads asking for meter-months) on a few meters for a few
seconds; its one JSON line must be sane. A SIGTERM mid-run ends every process it
started and removes its temp folder; bad options are refused in one line.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest

from hil.broker import find_mosquitto
from tests.conftest import missing
from tests.hil.procs import HilRun
from tests.support.cli import bench_json, refused, run_module

pytestmark = pytest.mark.req("N01")

MONTH = 31 * 96  # intervals in one meter-month's answer
STOP_WITHIN_S = 20.0  # a loaded 2-core machine


def _bench(*args: str, timeout: float) -> dict[str, Any]:
    if find_mosquitto() is None:
        missing("mosquitto not installed")
    argv = ("--meters", "5", "--clients", "2", *args)
    return bench_json("api", *argv, timeout=timeout, progress=("api: ",))


def _sane_api(out: dict[str, Any]) -> None:
    assert out["requests"] > 0 and out["requests_per_s"] > 0
    assert out["errors"] == 0
    assert out["intervals_per_answer"] == MONTH
    assert 0 < out["p50_ms"] <= out["p99_ms"] <= out["max_ms"]


@pytest.mark.timeout(60)
def test_n01_bench_api_queries_meter_months_while_collection_runs() -> None:
    out = _bench("--seconds", "3", "--collect-rate", "100", timeout=50)
    _sane_api(out)
    assert out["collect_rate"] == 100
    assert out["frames"] == 300  # 3 s at 100/s: 10 meters x 30 days, every one acked
    assert out["frames_per_s"] > 0
    assert 0 < out["ack_p50_ms"] <= out["ack_p99_ms"] <= out["ack_max_ms"]
    assert (out["lost"], out["doubled"]) == (0, 0)


@pytest.mark.timeout(60)
def test_n01_bench_api_no_collect_is_the_api_alone() -> None:
    out = _bench("--seconds", "1", "--no-collect", timeout=50)
    _sane_api(out)
    assert (out["collect_rate"], out["frames"], out["lost"]) == (None, 0, None)


@pytest.mark.timeout(90)
def test_n01_bench_api_sigterm_ends_every_process_and_the_temp_dir(tmp_path: Path) -> None:
    if find_mosquitto() is None:
        missing("mosquitto not installed")
    args = ("--meters", "5", "--seconds", "30", "--collect-rate", "50")
    run = HilRun(tmp_path, "api", *args, module="bench")
    try:
        run.wait_for("the queries under collection", lambda: "acked" in run.output, timeout=60)
        cmds = " ".join(p.cmdline for p in run.look())
        assert run.named("mosquitto") and "headend serve" in cmds
        run.signal(signal.SIGTERM)
        rc, took = run.wait_exit()
        assert rc == 128 + signal.SIGTERM, run.output[-3000:]
        assert took < STOP_WITHIN_S
        assert "stopped by SIGTERM" in run.output
        assert not run.left_running(), run.left_running()
        assert list(run.tmpdir.iterdir()) == []
        assert "Traceback" not in run.output, run.output[-3000:]
    finally:
        run.kill_all()


@pytest.mark.parametrize(
    "bad", [("--clients", "0"), ("--seconds", "0"), ("--collect-rate", "-1"), ("--meters", "0")]
)
def test_n01_bench_api_refuses_bad_options_in_one_line(bad: tuple[str, ...]) -> None:
    line = refused(run_module("bench", "api", *bad, timeout=30))
    assert line.startswith("error: ") and bad[0] in line
