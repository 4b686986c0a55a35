"""H04: the HIL's real-time reader counts a meter-day only when every interval came."""

from __future__ import annotations

import json

import pytest

from hil.feed import FeedReader
from hil.fleet_time import iso

pytestmark = pytest.mark.req("H04")

DAY = 1_711_929_600  # 2024-04-01T00:00:00Z


def _msg(meter: int, starts: range) -> bytes:
    ivs = [{"start": iso(t), "end": iso(t + 900), "flags": 0, "values": ["1"]} for t in starts]
    return json.dumps({"meter": meter, "source": "scheduled", "intervals": ivs}).encode()


def test_h04_a_meter_day_counts_once_all_its_intervals_came_in_any_parts() -> None:
    feed = FeedReader(None, "ami/v1/data/{meter}")  # type: ignore[arg-type]  # no broker: its bookkeeping
    feed.take(_msg(7, range(DAY, DAY + 43_200, 900)))  # the first half of the day
    feed.take(_msg(8, range(DAY, DAY + 86_400 - 900, 900)))  # all but the last interval
    assert feed.covered([(7, DAY), (8, DAY)]) == set()
    feed.take(_msg(7, range(DAY + 43_200, DAY + 86_400, 900)))  # the second half
    feed.take(b"not json")
    feed.take(b'{"meter": 9, "intervals": [{"start": "yesterday"}]}')
    assert feed.covered([(7, DAY), (8, DAY), (9, DAY)]) == {(7, DAY)}
    assert (feed.messages, feed.bad) == (5, 2)
    assert feed.pattern == "ami/v1/data/+"
