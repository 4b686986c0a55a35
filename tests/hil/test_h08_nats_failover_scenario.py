"""H08: `python -m hil scenario nats-failover`, shortened: 12 meters over a 3-node NATS
cluster, 2 workers, the uplink stream's leader node stopped under load."""

from __future__ import annotations

import pytest

from hil.natscluster import find_nats_server
from hil.scenarios import nats_failover
from hil.scenarios.common import Options
from hil.supervise import run
from tests.conftest import missing


@pytest.mark.req("H08")
@pytest.mark.timeout(150)  # ~20 s alone; a cluster election on a loaded 2-core machine is slower
def test_h08_scenario_nats_failover_stream_leader_stopped_nothing_lost_nothing_doubled() -> None:
    if find_nats_server() is None:
        missing("nats-server not installed: run `make setup` (or apt-get install nats-server)")
    r = run(lambda: nats_failover.run(Options(meters=12, days=2, say=lambda s: None)))
    assert r["meter_days"] == 24 and r["acked_before_stop"] + r["acked_after_stop"] == 24
    assert r["acked_after_stop"] > 0  # collection went on after the node stopped
    assert r["meters_moved"] >= 1  # the stopped node's meters found another one
    assert r["sent_intervals"] == r["stored_intervals"] == 24 * 96
    assert (r["lost"], r["doubled"]) == (0, 0)
    assert all(n > 0 for n in r["frames"].values()) and len(r["frames"]) == 2
    assert (r["pending"], r["ack_pending"]) == (0, 0)
    assert r["ok"]
