"""`make demo` runs end to end on real parts and accounts for every meter-day.

A small demo (1 virtual board on MicroPython, 20 fleet meters, 1 day at
3000x, 10 on-demand reads): the JSON line carries the keys `make demo`
promises, and collected + missing = expected.
"""

from __future__ import annotations

import json

import pytest

from hil import demo
from hil.broker import find_mosquitto
from tests.conftest import missing
from tests.support.mpy import MicroPythonMissing, micropython_binary

KEYS = (
    "meters",
    "days",
    "expected_meter_days",
    "collected_meter_days",
    "recovered_meter_days",
    "missing_meter_days",
    "ondemand_p80_s",
    "ondemand_p99_s",
)


@pytest.mark.timeout(180)  # ~60 s on a loaded 2-core machine
def test_n07_demo_accounts_for_every_meter_day(capsys: pytest.CaptureFixture[str]) -> None:
    if find_mosquitto() is None:
        missing("mosquitto not installed: run `make setup` (or apt-get install mosquitto)")
    try:
        micropython_binary()
    except MicroPythonMissing as e:
        missing(str(e))
    argv = ["--boards", "1", "--meters", "20", "--days", "1", "--speed", "3000"]
    rc = demo.main([*argv, "--ondemand", "10", "--progress-s", "1000"])
    out = capsys.readouterr().out.strip().splitlines()
    r = json.loads(out[-1])
    assert set(KEYS) <= set(r)
    assert (r["meters"], r["days"], r["boards"]) == (21, 1, 1)
    assert r["expected_meter_days"] == 21
    assert r["collected_meter_days"] + r["missing_meter_days"] == r["expected_meter_days"]
    # only a fleet meter offline through the end may be missing (the default mix has one)
    assert r["missing_meter_days"] == r["predicted_missing_meter_days"]
    assert r["registered_meters"] == 21
    # on-demand reads through the head-end's job path, answered and stored
    assert r["ondemand_requested"] == 10 and r["ondemand_done"] >= 9
    assert 0 < r["ondemand_p80_s"] <= r["ondemand_p99_s"]
    assert "meter-days expected 21" in "\n".join(out[:-1])
    # the head-end found and counted the missing days itself (D02, D08), and agrees
    assert r["headend_agrees"] and r["headend"]["days"] == 1
    assert r["headend"]["missing_meter_days"] == r["missing_meter_days"]
    assert "head-end D08 (its own count): 21 meters x 1 day(s) checked" in "\n".join(out[:-1])
    assert rc == 0
