"""N01: ``AMI_PROFILE`` profiles both threads of the service (`bench live --profile`).

``python -m cProfile`` sees only the main thread, yet the database thread does
half the work per frame: with ``AMI_PROFILE=PREFIX`` the service writes
``PREFIX-main.prof`` (event loop, links) and ``PREFIX-db.prof`` (Core) when it stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import pstats
import time
from pathlib import Path

import pytest

from headend.service import PROFILE_ENV, Service
from headend.transport.base import TransportError, Uplink
from headend.transport.mqtt import Message
from tests.support.service import make_config
from tests.support.signed import SimMeter

pytestmark = pytest.mark.req("N01")


def _functions(path: Path) -> set[str]:
    return {name for (_, _, name) in pstats.Stats(str(path)).stats}  # type: ignore[attr-defined]


@pytest.mark.timeout(20)
def test_n01_profile_env_writes_a_profile_of_each_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prefix = tmp_path / "w1"
    monkeypatch.setenv(PROFILE_ENV, str(prefix))
    asyncio.run(_serve_one_uplink(tmp_path))
    main, db = Path(f"{prefix}-main.prof"), Path(f"{prefix}-db.prof")
    assert main.is_file() and db.is_file()
    assert "deliver" in _functions(main)  # the event loop's side
    assert "on_uplinks" in _functions(db)  # the database thread's side


async def _serve_one_uplink(tmp_path: Path) -> None:
    now = int(time.time())
    url = f"sqlite:///{tmp_path}/headend.db"
    # no broker there: the link retries in the background, the answers go to a list
    cfg = make_config("mqtt://127.0.0.1:1", url, speed=1.0, clock_start=now, poll_s=3600)
    svc = Service(cfg)
    sent: list[Message] = []

    async def publish_many(msgs: list[Message]) -> list[TransportError | None]:
        sent.extend(msgs)
        return [None] * len(msgs)

    svc.mqtt.publish_many = publish_many  # type: ignore[method-assign]
    meter = SimMeter(4001, master=bytes.fromhex(cfg.master_key))
    task = asyncio.create_task(svc.run())
    try:
        await asyncio.wait_for(svc.ready.wait(), 10)
        up = Uplink(meter.meter_id, meter.frame("register", meter.register_body(), now), "mqtt")
        await asyncio.wait_for(svc.deliver(up), 10)
        assert [m.topic for m in sent] == [f"ami/v1/{meter.meter_id}/down"]
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
