"""`make demo` runs end to end and says what it did."""

from __future__ import annotations

import json

import pytest

from hil import demo
from hil.broker import find_mosquitto


def test_demo_delivers_every_day_end_to_end(capsys: pytest.CaptureFixture[str]) -> None:
    if find_mosquitto() is None:
        pytest.fail("mosquitto missing: run `make setup`")
    assert demo.main([]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    result = json.loads(out[-1])
    assert result["meter_days_sent"] == 45
    assert result["meter_days_acked_by_headend"] == 45
    assert result["meter_days_complete_in_store"] == 45
    assert result["bad_frames"] == 0
