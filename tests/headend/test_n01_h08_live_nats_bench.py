"""N01/H08: `python -m bench live --transport nats` drives the live path through a
3-node NATS cluster (bench/live_nats.py) and prints the same figures, nothing lost
or doubled. Six meters on three gateway logins, one on each node's MQTT listener:
the cluster makes a replicated consumer for every meter's downlink subscription,
which is slow (the bench's own runs are larger).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from bench import live_nats
from bench.live_nats import ClusterError, refused_subscription, watched
from hil.natscluster import find_nats_server
from tests.conftest import missing
from tests.headend.test_n01_h08_live_bench import KEYS, _bench

pytestmark = pytest.mark.req("N01", "H08")


@pytest.mark.timeout(60)
def test_n01_h08_bench_live_nats_prints_the_same_figures_nothing_lost_or_doubled() -> None:
    if find_nats_server() is None:
        missing("nats-server not installed: run `make setup`")
    out = _bench(
        "--transport", "nats", "--meters", "6", "--days", "2", "--per-conn", "2", timeout=50
    )
    assert set(out) >= KEYS
    assert out["frames"] == 12 and out["connections"] == 3  # one on each node
    assert (out["lost"], out["doubled"]) == (0, 0)
    assert (out["workers"], out["backend"], out["transport"]) == (1, "sqlite", "nats")
    assert out["broker_cpu_us_per_frame"] > 0  # the three nodes' CPU, summed


def test_n01_h08_bench_live_nats_names_a_subscription_the_cluster_could_not_make() -> None:
    line = (
        '[21307] 2026/12/06 05:03:02.070232 [ERR] 127.0.0.1:44490 - mid:22 - "gw500301" - '
        'Unable to add JetStream consumer for subscription on "ami.v1.500312.down": '
        'err=timeout for request type "CC"'
    )
    said = refused_subscription(f"[1] [INF] fine\n{line}\n[1] [INF] later\n")
    assert said is not None and said.startswith('127.0.0.1:44490 - mid:22 - "gw500301"')
    assert "ami.v1.500312.down" in said and "\n" not in said and "fewer --meters" in said
    assert refused_subscription("[1] [INF] JetStream cluster new consumer leader\n") is None


def test_n01_h08_bench_live_nats_a_cluster_failure_ends_a_run_that_would_never_end(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(live_nats, "WATCH_S", 0.01)
    ended: list[str] = []

    class Cluster:
        def __init__(self) -> None:
            self.asked = 0

        def failure(self) -> str | None:
            self.asked += 1
            return "nats-server n2: no consumer" if self.asked > 1 else None

    async def forever() -> dict[str, Any]:
        try:
            await asyncio.Event().wait()
        finally:
            ended.append("cleaned up")  # one_run's own clean-up runs
        return {}

    with pytest.raises(ClusterError, match="n2: no consumer"):
        asyncio.run(watched(forever(), Cluster()))
    assert ended == ["cleaned up"]
