"""headend.api: what other programs (the HIL rig, fleet, demo) use of the head-end.

The rig exercises it on a running service (tests/hil); here: a database
opened directly, reads queued and waited for, and the schema guard.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from headend import api
from headend.store import Channel, ChannelKind, Unit, open_store
from headend.store.migrations import latest_version

T0 = 1_711_929_600
CH = (Channel(ChannelKind.ACTIVE_IMPORT, Unit.WH),)


def test_h05_api_exports_what_it_names() -> None:
    missing = [name for name in api.__all__ if not hasattr(api, name)]
    assert missing == []


def test_h05_api_queues_a_read_and_waits_for_it(sqlite_url: str) -> None:
    open_store(sqlite_url).close()  # created and migrated, as `headend db init` does
    with api.Headend.open(sqlite_url) as he:
        assert he.meters() == []
        he.ctx.registry.register(api.Meter(7, "1", 900, 0, 1, CH, T0))
        assert he.meters() == [7] and he.meter(7).interval_s == 900
        with pytest.raises(api.UnknownMeter):
            he.request_read(api.ReadSpec(8), "hil", 0)
        job_id = he.request_read(api.ReadSpec(7, api.ReadMode.SINCE_ACK), "hil", 0)
        seen: list[float] = []
        job = he.wait_job(job_id, 0.3, poll_s=0.05, waiting=lambda j, t: seen.append(t))
        assert job.state is api.JobState.QUEUED and not job.closed and len(seen) >= 2
        (line,) = he.activity(7, [api.Kind.READ_QUEUED])
        assert f"job {job_id}" in line.detail
        assert he.coverage(7, T0, T0 + 86400)[0].present == 0


def test_h05_api_refuses_a_database_at_another_schema_and_creates_none(tmp_path: Path) -> None:
    with pytest.raises(api.MissingDatabase, match="no database"):
        api.Headend.open(f"sqlite:///{tmp_path}/none.db")
    assert not (tmp_path / "none.db").exists()
    sqlite3.connect(tmp_path / "empty.db").close()
    want = latest_version()
    with pytest.raises(api.SchemaError, match=f"schema version 0, expected {want}") as e:
        api.Headend.open(f"sqlite:///{tmp_path}/empty.db")
    assert (e.value.have, e.value.want) == (0, want)
