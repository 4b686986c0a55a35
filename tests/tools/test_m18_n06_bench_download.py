"""M18, N06: `python -m bench download` runs a real paced download and prints its figures
(no time is asserted: benchmarks print figures, tests check they are there and sane)."""

from __future__ import annotations

import json

import pytest

from tests.support.cli import run_module

pytestmark = [
    pytest.mark.req("M18", "N06"),
    pytest.mark.usefixtures("mpy_present"),
    pytest.mark.timeout(180),
]


def test_m18_n06_bench_download_prints_bytes_seconds_intervals_for_both_bauds() -> None:
    proc = run_module("bench", "download", "--days", "2", "--baud", "19200", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.splitlines()[-1])
    assert out["baud"] == 19200 and out["intervals"] == out["held_on_flash"] == 2 * 96
    assert out["bytes"] > 2 * 96 * 4 // 4 and out["seconds"] > 0 and out["seconds_at_9600"] > 0
    assert [r["baud"] for r in out["runs"]] == [19200, 9600]
    assert all(r["attempts"] == 1 and r["intervals"] == 192 for r in out["runs"])


def test_m18_bench_download_refuses_bad_input_in_one_line() -> None:
    proc = run_module("bench", "download", "--days", "0")
    assert proc.returncode == 2 and "--days must be 1..60" in proc.stderr
    assert "Traceback" not in proc.stderr
