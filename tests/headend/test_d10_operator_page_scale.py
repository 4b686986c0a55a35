"""D10 at fleet scale: the overview's collection progress comes from aggregate queries
(`store.collection`), equal to counting each meter's coverage, and the page makes as
many statements for 50 meters as for 5 (SQLite and PostgreSQL)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import pytest

from headend.adcs.recovery import day_label
from headend.api import Config, Headend
from headend.store import Meter, SqlStore, collection
from headend.store.base import DAY_S
from headend.store.missing import Found
from headend.web import figures, pages
from headend.web.pages import overview_page
from tests.headend.conftest import open_at
from tests.headend.exportdata import CHANNELS, STEP, register, seed
from tests.headend.operatorpage import NOW_S, TZ

TODAY = figures.local_midnight  # (he, now_s) -> the report zone's midnight
IST_MIN = 330  # a half-hour offset: its day rows are not on its local days


def _fleet(store: SqlStore, he: Headend, ids: range, half_hour: bool = True) -> None:
    """Meters in Los Angeles in three read groups (and unscheduled): every third one
    complete yesterday, every third one half of it, the rest nothing; and (``half_hour``)
    meters 1001 and 1002 on a half-hour offset, one complete over its days, one not."""
    today = TODAY(he, NOW_S)
    for mid in ids:
        register(store, mid, today - 5 * DAY_S)
        if mid % 3 == 0:
            seed(store, mid, today - 2 * DAY_S, today + 3600)
        elif mid % 3 == 1:
            seed(store, mid, today - DAY_S, today - DAY_S // 2)
    odd = (1001, 1002) if half_hour else ()
    for mid in odd:
        store.register_meter(Meter(mid, "1.0", STEP, IST_MIN, 1, CHANNELS, today - 5 * DAY_S))
        seed(store, mid, today - 2 * DAY_S, today + (2 * DAY_S if mid == 1001 else -3600))
    for mid in (*ids, *odd):
        if mid % 4:
            grp = mid % 4
            he.ctx.registry.set_group(mid, grp, 0, f"g{grp}", NOW_S * 1000)


def _by_coverage(he: Headend, start: int, end: int) -> dict[str | None, tuple[int, int]]:
    """The per-meter way (one coverage query per meter): the reference. A meter's day is
    the one of its local-standard days around the span whose middle lies in it."""
    out: dict[str | None, tuple[int, int]] = {}
    for m in figures.meters(he):
        cov = he.coverage(m.meter_id, start - 2 * DAY_S, end + 2 * DAY_S)
        (day,) = [c for c in cov if start <= c.day + DAY_S // 2 < end]
        done = day.complete
        n, c = out.get(m.read_group, (0, 0))
        out[m.read_group] = (n + 1, c + done)
    return out


@pytest.mark.req("D10")
@pytest.mark.timeout(60)
@pytest.mark.parametrize(("tz", "collected"), [(TZ, 5), ("Asia/Kolkata", 5)])
def test_d10_collection_by_group_equals_per_meter_coverage(
    backend: str, store_at: list[SqlStore], tz: str, collected: int
) -> None:
    store = open_at(backend, store_at)
    with Headend.open(Config(database=backend, report_tz=tz)) as he:
        _fleet(store, he, range(1, 13))
        today = TODAY(he, NOW_S)
        got = collection.by_group(he.ctx.db, today - DAY_S)
        want = _by_coverage(he, today - DAY_S, today)
    assert {g.read_group: (g.meters, g.collected) for g in got} == want
    assert len(got) == len(want) and got[0].read_group is None  # unscheduled first
    # both zones: the 4 Los Angeles meters complete over their day labelled yesterday and
    # the half-hour meter whose rows cover its own (counted slot by slot); the other
    # half-hour meter lacks its day's last hour. (Before: only the days overlapping the
    # report's yesterday, whose second one, on another offset, runs on past today: in
    # Kolkata no Los Angeles meter ever counted.)
    assert sum(g.collected for g in got) == collected


@contextmanager
def _counting(he: Headend) -> Iterator[list[str]]:
    """Every statement the store runs through ``he`` (query, execute, executemany)."""
    db = he.ctx.db
    seen: list[str] = []

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        def counted(sql: str, *args: Any) -> Any:
            seen.append(" ".join(sql.split())[:60])
            return fn(sql, *args)

        return counted

    names = ("query", "execute", "executemany")
    for name in names:
        setattr(db, name, wrap(getattr(db, name)))
    try:
        yield seen
    finally:
        for name in names:
            delattr(db, name)  # the class's methods again


def _statements(he: Headend) -> tuple[int, str]:
    with _counting(he) as seen:
        page = overview_page(he, NOW_S, None, "", "")
    return len(seen), page


@pytest.mark.req("D10")
@pytest.mark.timeout(90)
def test_d10_overview_statements_do_not_grow_with_the_meters(
    backend: str, store_at: list[SqlStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_at(backend, store_at)
    # small chunks and search page: a read of every meter in chunks would show as growth
    monkeypatch.setattr(pages, "MAX_LISTED", 4)
    with Headend.open(Config(database=backend, report_tz=TZ)) as he:
        he.ctx.db.chunk_rows = 4
        _fleet(store, he, range(1, 6))
        few, small = _statements(he)
        _fleet(store, he, range(6, 51), half_hour=False)
        many, large = _statements(he)
    assert few == many, (few, many)
    assert few < 40
    assert 'id="progress"' in small and "<b>52</b>meters expected" in large


@pytest.mark.req("D10")
@pytest.mark.timeout(60)
def test_d10_meter_search_is_a_page_of_the_matching_meters(
    backend: str, store_at: list[SqlStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_at(backend, store_at)
    with Headend.open(Config(database=backend, report_tz=TZ)) as he:
        _fleet(store, he, range(1, 31))
        every = figures.meters(he)
        for wanted in (None, 8, 9, 999):
            for group in ("", "g1", "g3", figures.UNSCHEDULED):
                want = [
                    m
                    for m in every
                    if wanted in (None, m.meter_id) and group in ("", figures.group_of(m))
                ]
                assert figures.listed(he, wanted, group, 5) == (want[:5], len(want))
        monkeypatch.setattr(pages, "MAX_LISTED", 4)
        page = overview_page(he, NOW_S, None, "", figures.UNSCHEDULED)
    assert "first 4 of 7 meters shown" in page  # 4, 8, ..., 28: in no read group
    assert page.count('href="/operator/meters/') == 4


def _trend_by_full_pass(he: Headend, now_s: int, days: int = 30) -> tuple[list[int], list[int]]:
    """The reference: every meter-day ever found and every report ever opened, in Python."""
    labels = figures.trend(he, now_s, days).days
    missing = [sum(1 for r in he.missing_days() if day_label(r.day) == d) for d in labels]
    ends = [
        int(datetime.fromisoformat(d).replace(tzinfo=he.ctx.config.tz).timestamp() + DAY_S) * 1000
        for d in labels
    ]
    rep = he.ctx.troubles.find()
    trouble = [
        sum(1 for t in rep if t.opened_ms < e and (t.closed_ms is None or t.closed_ms >= e))
        for e in ends
    ]
    return missing, trouble


@pytest.mark.req("D10")
@pytest.mark.timeout(60)
def test_d10_trend_reads_only_the_window_and_equals_a_full_pass(
    backend: str, store_at: list[SqlStore]
) -> None:
    store = open_at(backend, store_at)
    with Headend.open(Config(database=backend, report_tz=TZ)) as he:
        today = TODAY(he, NOW_S)
        for mid in range(1, 7):
            register(store, mid, today - 60 * DAY_S)
        # missing days found over 50 days (before the 30-day window too), trouble reports
        # opened and closed across the window's start
        for k in range(1, 50, 3):
            day = today - k * DAY_S
            found = [Found(mid, day, 96, 0, "prev_day") for mid in range(1, 1 + k % 6 + 1)]
            he.ctx.missing.add(found, (day + DAY_S + 6 * 3600) * 1000)
        for mid, (opened, closed) in enumerate([(45, 40), (40, 25), (20, 5), (10, None)], 1):
            ms = (today - opened * DAY_S) * 1000
            tid = he.ctx.troubles.open(mid, ms, "3 days missing", ["x"])
            assert tid is not None
            if closed is not None:
                he.ctx.troubles.close(tid, (today - closed * DAY_S) * 1000, "data again")
        t = figures.trend(he, NOW_S)
        want_missing, want_trouble = _trend_by_full_pass(he, NOW_S)
        # found before the window: not read at all (what the grouped query returns)
        window_ms = (today - 30 * DAY_S) * 1000
        assert all(d >= today - 32 * DAY_S for d in he.ctx.missing.found_per_day(window_ms))
        assert [r.trouble_id for r in he.ctx.troubles.find(open_at_ms=window_ms)] == [2, 3, 4]
    assert (t.missing, t.trouble) == (want_missing, want_trouble)
    assert sum(t.missing) > 0 and max(t.trouble) == 2 and t.trouble[0] == 1
