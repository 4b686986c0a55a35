"""M20: the head-end's uplink replay window (SPEC "Authentication").

MQTT may hand over a meter's in-flight frames out of order: a counter below
the highest is taken once if it is within 64 of it, never twice, never from
below the window, and the window is the store's (restarts, workers, the
upgrade of a v3 database). `window_accept` and the store are both checked
against a set model.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from headend.config import Config
from headend.context import Ctx
from headend.core import Core
from headend.store import SqlStore, open_store
from headend.store.migrations import MIGRATIONS, migrate
from protocol.auth import COUNTER_MAX, REPLAY_WINDOW, window_accept
from tests.headend.conftest import open_at
from tests.support.signed import T0, SimMeter, deliver, frames_to

pytestmark = pytest.mark.req("M20")


class Model:
    """What the window must do, as sets: a counter is taken iff it is new and
    above (highest taken - 64)."""

    def __init__(self) -> None:
        self.taken: set[int] = set()

    def accept(self, counter: int) -> bool:
        ok = counter not in self.taken and (
            not self.taken or counter > max(self.taken) - REPLAY_WINDOW
        )
        if ok:
            self.taken.add(counter)
        return ok


# counters near each other (reordering, repeats), with now and then a jump
near = st.integers(0, 3 * REPLAY_WINDOW)
counters = st.lists(
    st.one_of(near, near.map(lambda c: c + 10_000), st.just(COUNTER_MAX)), max_size=120
)


@settings(max_examples=400, deadline=None)
@given(seq=counters)
def test_m20_window_accepts_iff_new_and_within_window(seq: list[int]) -> None:
    model, window = Model(), None
    for c in seq:
        moved = window_accept(*window, c) if window is not None else (c, 1)
        assert (moved is not None) == model.accept(c), c
        if moved is not None:
            window = moved
            assert window[0] == max(model.taken)
            assert 0 <= window[1] < 1 << REPLAY_WINDOW and window[1] & 1


@pytest.fixture(scope="module")
def window_store(tmp_path_factory: pytest.TempPathFactory) -> Any:
    store = open_store(f"sqlite:///{tmp_path_factory.mktemp('window')}/h.db")
    yield store, iter(range(1, 10**6))
    store.close()


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(seq=counters)
def test_m20_store_window_matches_the_model(window_store: Any, seq: list[int]) -> None:
    store, ids = window_store
    auth, mid = Ctx.build(Config(), store).auth, next(ids)  # a fresh meter each example
    model = Model()
    for c in seq:
        assert auth.accept_uplink(mid, c, T0 * 1000) == model.accept(c), c


def core_at(url: str, opened: list[SqlStore]) -> Core:
    return Core(Ctx.build(Config(), open_at(url, opened)))


def at(m: SimMeter, counter: int, data: int) -> bytes:
    """An event frame the meter signs with ``counter``."""
    m.counter = counter - 1
    return m.frame("event", {"events": [{"code": 11, "time": T0, "data": data}]})


def test_m20_reordered_uplinks_taken_once_across_restart_and_workers(
    backend: str, store_at: list[SqlStore]
) -> None:
    one, two = core_at(backend, store_at), core_at(backend, store_at)
    m = SimMeter(721)
    out = deliver(one, 721, m.frame("register", m.register_body()))
    assert m.take(frames_to(out, 721)[0]) is not None
    base = m.counter
    frames = {k: at(m, base + k, k) for k in range(1, 6)}
    old = at(m, base + 70, 70)  # the meter moved on past the window
    for k in (5, 2, 4):  # delivered out of order, by two workers
        assert frames_to(deliver((one, two)[k % 2], 721, frames[k]), 721)
    assert not deliver(two, 721, frames[4])  # the same frame again: a replay
    one.ctx.store.close()
    again = core_at(backend, store_at)  # restarted: the window is the store's
    for raw in (frames[5], frames[2], frames[4]):
        assert not deliver(again, 721, raw)
    assert frames_to(deliver(again, 721, frames[3]), 721)  # late but new: taken
    assert frames_to(deliver(again, 721, frames[1]), 721)
    assert not deliver(two, 721, frames[1])
    assert frames_to(deliver(two, 721, at(m, base + 200, 200)), 721)  # a jump ahead
    assert not deliver(again, 721, old)  # now below the window: refused
    assert again.rejections.pending() == 4 and two.rejections.pending() == 2
    stored = sorted(e.data for e in again.ctx.store.events(721, T0, T0 + 1))
    assert stored == [1, 2, 3, 4, 5, 200]
    assert m.refused == []


#: tables of migrations 10, 9 and 7 (dropped to go back to v3), dependents first
V7_TABLES = (
    "api_session",
    "api_key",
    "party_use",
    "portal_log",
    "party",
    "export_run",
    "export_schedule",
    "validation_result",
    "rebalance_move",
    "rebalance_run",
    "offschedule_gap",
    "read_arrival",
    "trouble",
    "timed_run",
)


def test_m20_v3_counter_row_upgraded_refuses_everything_at_or_below_it(
    backend: str, store_at: list[SqlStore]
) -> None:
    old = open_at(backend, store_at)  # opened at the latest version: go back to v3's table
    db = old.db
    with db.transaction():
        db.execute("DELETE FROM schema_version WHERE version >= 4")
        db.execute("ALTER TABLE meter_auth DROP COLUMN up_window")
        db.execute("DROP TABLE IF EXISTS probe_key")  # v5
        for table in V7_TABLES:
            db.execute(f"DROP TABLE IF EXISTS {table}")
        db.execute("DROP INDEX IF EXISTS schedule_slot")  # v7, on a v2 table
        for stmt in (  # v6
            "DROP TABLE IF EXISTS missing_day",
            "DROP TABLE IF EXISTS daily_check",
            "DROP INDEX IF EXISTS job_claim",
            "DROP INDEX IF EXISTS job_sent",
            "ALTER TABLE job DROP COLUMN priority",
        ):
            db.execute(stmt)
        db.execute(
            "INSERT INTO meter_auth (meter_id, up_counter, key_version, key_since_ms, state, "
            "attempts, seqs) VALUES (731, 500, 0, 0, 'current', 0, '')"
        )
    assert migrate(db, MIGRATIONS)[0] == 4
    auth = Ctx.build(Config(), old).auth
    assert auth.window(731) == (500, (1 << REPLAY_WINDOW) - 1)
    # v3 took only counters above 500: each at or below it may have been taken already
    assert [auth.accept_uplink(731, c, 0) for c in (500, 499, 437, 1, 502, 501, 501)] == [
        False,
        False,
        False,
        False,
        True,
        True,
        False,
    ]


def test_m20_two_workers_racing_take_each_counter_exactly_once(
    backend: str, store_at: list[SqlStore]
) -> None:
    """Two connections move one window at once (compare-and-set): every counter is
    taken by exactly one of them, none by both, none lost."""
    n = 300
    auths = [Ctx.build(Config(), open_at(backend, store_at)).auth for _ in range(2)]
    taken: list[list[int]] = [[], []]

    def work(i: int) -> None:
        for c in range(1, n + 1):
            if auths[i].accept_uplink(741, c, 0):
                taken[i].append(c)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert sorted(taken[0] + taken[1]) == list(range(1, n + 1))
    assert auths[0].window(741) == (n, (1 << REPLAY_WINDOW) - 1)
