"""Seed store and app of the operator page tests (D10): three meters in Los Angeles,
ten days of data with gaps, a trouble report, event deliveries, hostile strings."""

from __future__ import annotations

import dataclasses

from fastapi import FastAPI

from headend.api import Config, Headend
from headend.store import open_store
from headend.store.missing import Found
from headend.web.pages import router
from tests.headend.exportdata import SPRING, STEP, event, register, seed

DAY_S = 86_400
TODAY = SPRING - DAY_S  # 2024-03-09 00:00 in Los Angeles (PST)
NOW_S = TODAY + 9 * 3600 + 1800
FIRST = TODAY - 10 * DAY_S
HOSTILE = '<script>alert("x")</script>'
TZ = "America/Los_Angeles"


def config(url: str) -> Config:
    return Config(database=url, report_tz=TZ)


def seed_store(url: str) -> None:
    """1001: complete; 1002: a lost day, half of yesterday, a trouble report and events;
    1003: unscheduled, registered with a hostile key id, no data."""
    store = open_store(url, migrate=True)
    try:
        register(store, 1001, FIRST)
        register(store, 1002, FIRST)
        m3 = register(store, 1003, FIRST)
        store.register_meter(dataclasses.replace(m3, key_id=HOSTILE))
        seed(store, 1001, FIRST, TODAY + 9 * 3600)
        lost = TODAY - 4 * DAY_S
        seed(store, 1002, FIRST, TODAY, skip=[(lost, lost + DAY_S), (TODAY - 43200, TODAY)])
        event(store, 1002, TODAY - 3600, code=1)
        event(store, 1002, TODAY - 7200, code=2)
    finally:
        store.close()
    with Headend.open(config(url)) as he:
        ms = NOW_S * 1000
        for mid in (1001, 1002):
            he.ctx.registry.set_group(mid, 0, 120, he.ctx.window.label(0), ms)
        he.ctx.registry.link_seen(1002, "mqtt", (TODAY + 140) * 1000)
        he.ctx.missing.add(
            [
                Found(1002, lost, 96, 0, "prev_day"),
                Found(1002, TODAY - DAY_S, 96, 48, "prev_day"),
            ],
            ms,
        )
        he.ctx.troubles.open(1002, ms - 2 * DAY_S * 1000, HOSTILE, ["2024-03-05"])
        he.ctx.events.add_delivery("mdms", "trouble", "{}", ms)
        d = he.ctx.events.add_delivery("operator", "trouble", "{}", ms)
        assert d is not None
        he.ctx.events.sent(d, ms, ms + 60_000, expire=True)


def app(url: str) -> FastAPI:
    """The operator router alone (the HTTP API mounts it behind authentication)."""
    a = FastAPI()
    a.include_router(router(lambda: Headend.open(config(url)), clock=lambda: float(NOW_S)))
    return a


__all__ = ["DAY_S", "HOSTILE", "NOW_S", "STEP", "app", "seed_store"]
