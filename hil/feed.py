"""A real-time subscriber (H04): what a third party reading the feed receives.

It logs in as the broker's real-time reader `FEED_READER` (TLS and a login on a
secure broker: `brokerconf.Reader`), subscribes to every meter's real-time
topic and keeps the interval starts each message carried, per meter, so a run
can say which collected meter-days reached the feed.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable

from headend.api import brokerconf
from hil.broker import Broker
from hil.fleet_profile import DAY
from hil.fleet_time import parse_utc
from hil.rig import Follower

FEED_READER = "hil-feed-reader"
READER = brokerconf.Reader(FEED_READER)  # every meter's feed


class FeedReader(Follower):
    """Subscribes to ``topic`` (the head-end's ``realtime_topic``) for every meter."""

    what = "the real-time reader"

    def __init__(self, broker: Broker, topic: str) -> None:
        self.pattern = brokerconf.topic_pattern(topic)
        super().__init__(broker, FEED_READER, (self.pattern,))
        self.messages = 0
        self.bad = 0  # not JSON of the feed's shape
        self.starts: defaultdict[int, set[int]] = defaultdict(set)
        self.step: dict[int, int] = {}

    def _on(self, topic: str, payload: object) -> None:
        self.take(payload)

    def take(self, payload: object) -> None:
        """One message: its meter's interval starts (and length) noted."""
        self.messages += 1
        try:
            msg = json.loads(payload) if isinstance(payload, bytes | bytearray) else None
            mid = int(msg["meter"])  # type: ignore[index]
            for iv in msg.get("intervals", []):  # type: ignore[union-attr]
                start = parse_utc(iv["start"])
                self.starts[mid].add(start)
                self.step[mid] = parse_utc(iv["end"]) - start
        except (ValueError, TypeError, KeyError, AttributeError):
            self.bad += 1

    def covered(self, meter_days: Iterable[tuple[int, int]]) -> set[tuple[int, int]]:
        """Those of ``meter_days`` (meter, day start) whose every interval came in the feed."""
        out = set()
        for mid, day in meter_days:
            step, have = self.step.get(mid), self.starts.get(mid, set())
            if step and all(t in have for t in range(day, day + DAY, step)):
                out.add((mid, day))
        return out
