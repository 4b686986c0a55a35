"""D01/H04: the meter-data store stores every datum once, with its source.

Every test runs against SQLite (a file in tmp_path) and PostgreSQL (a throwaway
schema from the project's `pg_schema` fixture; skipped on a laptop without a
server, a failure under CI=true).
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from headend.errors import (
    ConfigError,
    HeadendError,
    InvalidData,
    SchemaError,
    StoreError,
    UnknownMeter,
)
from headend.store import (
    BlockIngest,
    Channel,
    ChannelKind,
    EventRecord,
    IntervalBlock,
    Meter,
    MidnightRegister,
    Source,
    SqlStore,
    Unit,
    open_store,
)
from headend.store.base import DAY_S, Quality, quality
from headend.store.days import DayRow
from headend.store.migrations import MIGRATIONS, Migration, latest_version, migrate
from headend.store.postgres import PostgresStore
from headend.store.sqlite import SqliteStore
from protocol.codes import Flag
from protocol.frame import decode, encode

T0 = 1_711_929_600  # 2024-04-01T00:00:00Z
STEP = 900
SLOTS = DAY_S // STEP
CHANNELS = (
    Channel(ChannelKind.ACTIVE_IMPORT, Unit.WH, 1, 0),
    Channel(ChannelKind.ACTIVE_EXPORT, Unit.WH, 1, 0),
    Channel(ChannelKind.REACTIVE_IMPORT, Unit.VARH, 1, 0),
    Channel(ChannelKind.REACTIVE_EXPORT, Unit.VARH, 1, 0),
)
PF, ADJ, PARTIAL, REC, INV = (int(f) for f in Flag)

Opener = Callable[[], SqlStore]


@pytest.fixture(params=["sqlite", "postgres"])
def open_same(request: pytest.FixtureRequest, tmp_path: object) -> Iterator[Opener]:
    """A function that opens (another connection to) one fresh store of the backend."""
    opened: list[SqlStore] = []
    if request.param == "sqlite":
        path = f"{tmp_path}/store.db"

        def opener() -> SqlStore:
            opened.append(SqliteStore(path))
            return opened[-1]
    else:
        dsn, schema = request.getfixturevalue("pg_schema")

        def opener() -> SqlStore:
            opened.append(PostgresStore(dsn, schema=schema))
            return opened[-1]

    yield opener
    for s in opened:
        s.close()


@pytest.fixture
def store(open_same: Opener) -> SqlStore:
    """A fresh, migrated store with meter 1 (15 min, UTC) and meter 2 (15 min, UTC-5)."""
    s = open_same()
    s.register_meter(meter(1))
    s.register_meter(meter(2, utc_offset_min=-300))
    return s


def meter(mid: int, *, utc_offset_min: int = 0, interval_s: int = STEP, nch: int = 4) -> Meter:
    return Meter(mid, "1.0.0", interval_s, utc_offset_min, 1, CHANNELS[:nch], T0 - DAY_S)


def block(
    start: int,
    n: int,
    *,
    base: int = 100,
    flags: int | list[int] = 0,
    nch: int = 4,
    step: int = STEP,
) -> IntervalBlock:
    fl = flags if isinstance(flags, list) else [flags] * n
    return IntervalBlock(
        start,
        step,
        tuple(fl),
        tuple(tuple(base + c * 1000 + i for i in range(n)) for c in range(nch)),
    )


def ing(
    mid: int, b: IntervalBlock, src: Source = Source.SCHEDULED, at: int = T0 + DAY_S
) -> BlockIngest:
    return BlockIngest(mid, b, src, at)


def snapshot(s: SqlStore, mid: int = 1) -> list[tuple[int, int, int, int, Source]]:
    return [
        (c, iv.start, iv.value, iv.flags, iv.source)
        for c in range(4)
        for iv in s.intervals(mid, c, T0 - 3 * DAY_S, T0 + 5 * DAY_S)
    ]


# -- idempotent ingest ---------------------------------------------------------------------------


def test_d01_reingest_same_block_never_doubles(store: SqlStore) -> None:
    b = block(T0, SLOTS)
    first = store.ingest([ing(1, b)])
    assert (first.intervals_written, first.intervals_kept, first.days_inserted) == (SLOTS, 0, 1)
    before = snapshot(store)
    again = store.ingest([ing(1, b), ing(1, b)])
    assert (again.intervals_written, again.intervals_kept, again.days_updated) == (0, 2 * SLOTS, 0)
    assert snapshot(store) == before
    st_ = store.stats()
    assert (st_.meter_days, st_.intervals) == (1, SLOTS)


def test_d01_overlapping_blocks_fill_gaps_once(store: SqlStore) -> None:
    store.ingest([ing(1, block(T0, 40))])
    r = store.ingest([ing(1, block(T0 + 30 * STEP, 66, base=130))])  # overlaps slots 30..39
    assert (r.intervals_written, r.intervals_kept) == (56, 10)
    got = store.intervals(1, 0, T0, T0 + DAY_S)
    assert [iv.start for iv in got] == [T0 + i * STEP for i in range(SLOTS)]
    assert [iv.value for iv in got] == [100 + i for i in range(SLOTS)]
    assert store.stats().intervals == SLOTS


def test_d01_better_quality_replaces_worse(store: SqlStore) -> None:
    store.ingest([ing(1, block(T0, 8, base=5, flags=PF))])
    r = store.ingest([ing(1, block(T0 + 2 * STEP, 4, base=500, flags=0), Source.RECOVERY)])
    assert r.intervals_written == 4
    got = store.intervals(1, 0, T0, T0 + DAY_S)
    assert [(iv.value, iv.flags, iv.source) for iv in got] == (
        [(5, PF, Source.SCHEDULED), (6, PF, Source.SCHEDULED)]
        + [(500 + i, 0, Source.RECOVERY) for i in range(4)]
        + [(11, PF, Source.SCHEDULED), (12, PF, Source.SCHEDULED)]
    )


@pytest.mark.parametrize("worse", [PF, INV, PF | REC, ADJ, PARTIAL, REC])
def test_d01_worse_or_equal_quality_never_overwrites(store: SqlStore, worse: int) -> None:
    store.ingest([ing(1, block(T0, 4, base=7))])
    before = snapshot(store)
    r = store.ingest([ing(1, block(T0, 4, base=900, flags=worse), Source.MANUAL_UPLOAD)])
    assert r.intervals_written == 0
    assert snapshot(store) == before


def test_d01_equal_quality_keeps_the_first(store: SqlStore) -> None:
    store.ingest([ing(1, block(T0, 4, base=7, flags=ADJ))])
    r = store.ingest([ing(1, block(T0, 4, base=9, flags=PARTIAL), Source.ON_DEMAND)])
    assert (r.intervals_written, r.intervals_kept) == (0, 4)
    got = store.intervals(1, 0, T0, T0 + DAY_S)
    assert [(iv.value, iv.flags, iv.source) for iv in got] == [
        (7 + i, ADJ, Source.SCHEDULED) for i in range(4)
    ]


def test_d01_quality_order_is_documented_order() -> None:
    assert quality(0) is Quality.VALID
    assert {quality(f) for f in (ADJ, PARTIAL, REC, ADJ | PARTIAL)} == {Quality.DEGRADED}
    assert quality(PF | ADJ) is Quality.POWER_FAILED
    assert quality(INV | PF) is Quality.INVALID
    assert Quality.VALID > Quality.DEGRADED > Quality.POWER_FAILED > Quality.INVALID
    assert Quality.INVALID > Quality.MISSING


def test_d01_source_is_recorded_per_interval(store: SqlStore) -> None:
    sources = list(Source)
    store.ingest(
        [ing(1, block(T0 + i * 10 * STEP, 10, base=i * 10), src) for i, src in enumerate(sources)]
    )
    got = store.intervals(1, 2, T0, T0 + DAY_S)
    assert len(got) == 10 * len(sources)
    for i, src in enumerate(sources):
        assert {iv.source for iv in got[i * 10 : i * 10 + 10]} == {src}
    assert store.stats().intervals_by_source == {s: 10 for s in sources}


def test_d01_concurrent_writers_store_each_datum_once(open_same: Opener) -> None:
    first = open_same()
    for m in range(1, 21):
        first.register_meter(meter(m, utc_offset_min=-300))
    work = [
        [ing(m, block(T0 + k * 8 * STEP, SLOTS + 16, base=k), src) for m in range(1, 21)]
        for k, src in enumerate([Source.SCHEDULED, Source.ON_DEMAND, Source.RECOVERY] * 2)
    ]
    stores = [open_same() for _ in work]
    errors: list[BaseException] = []

    def run(s: SqlStore, batch: list[BlockIngest]) -> None:
        try:
            s.ingest(batch)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=a) for a in zip(stores, work, strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    span = (SLOTS + 16 + 5 * 8) * STEP
    for m in (1, 20):
        got = first.intervals(m, 0, T0 - DAY_S, T0 + 3 * DAY_S)
        assert [iv.start for iv in got] == [T0 + i * STEP for i in range(span // STEP)]
    assert first.stats().intervals == 20 * span // STEP


# -- queries -------------------------------------------------------------------------------------


def test_d01_per_interval_query_across_day_boundaries(store: SqlStore) -> None:
    # meter 2 is on UTC-5: its day rows start at 05:00 UTC; this block spans 3 of them.
    start = T0 - 10 * STEP
    r = store.ingest([ing(2, block(start, 2 * SLOTS + 20))])
    assert r.days_inserted == 3
    got = store.intervals(2, 1, start, start + (2 * SLOTS + 20) * STEP)
    assert [iv.start for iv in got] == [start + i * STEP for i in range(2 * SLOTS + 20)]
    assert [iv.value for iv in got] == [1100 + i for i in range(2 * SLOTS + 20)]
    # half-open [start, end), ends not on a day boundary
    part = store.intervals(2, 3, T0 + 3, T0 + DAY_S + STEP + 1)
    assert part[0].start == T0 + STEP and part[-1].start == T0 + DAY_S + STEP
    assert store.intervals(2, 0, T0, T0) == []


def test_d01_coverage_reports_present_and_missing_local_days(store: SqlStore) -> None:
    midnight = T0 + 5 * 3600  # local standard midnight of meter 2 (UTC-5)
    store.ingest([ing(2, block(midnight, SLOTS)), ing(2, block(midnight + DAY_S + 4 * STEP, 50))])
    cov = store.coverage(2, midnight - DAY_S, midnight + 3 * DAY_S)
    assert [(c.day, c.present, c.missing, c.complete) for c in cov] == [
        (midnight - DAY_S, 0, SLOTS, False),
        (midnight, SLOTS, 0, True),
        (midnight + DAY_S, 50, SLOTS - 50, False),
        (midnight + 2 * DAY_S, 0, SLOTS, False),
    ]
    # meter 1 (UTC rows) asked for the same windows: still counted per its own local day
    store.ingest([ing(1, block(T0 + 3600, SLOTS))])
    assert [c.present for c in store.coverage(1, T0, T0 + 2 * DAY_S)] == [SLOTS - 4, 4]


def test_d01_midnight_registers_and_events_are_stored_once(store: SqlStore) -> None:
    mid = MidnightRegister(1, T0, (1, 2, 3, (1 << 63) - 1), Source.SCHEDULED, T0 + 60)
    ev = [
        EventRecord(1, 1, T0 + 10, 0, Source.SCHEDULED, T0 + 60, seq=7),
        EventRecord(1, 2, T0 + 99, 0, Source.SCHEDULED, T0 + 60),
    ]
    r1 = store.ingest(midnights=[mid], events=ev)
    r2 = store.ingest(midnights=[mid], events=ev + ev)
    assert (r1.midnights_written, r1.events_written) == (1, 2)
    assert (r2.midnights_written, r2.events_written) == (0, 0)
    assert store.midnight_registers(1, T0, T0 + 1) == [mid]
    assert store.events(1, T0, T0 + DAY_S) == ev
    st_ = store.stats()
    assert (st_.midnight_registers, st_.events) == (1, 2)


def test_d01_meter_registration_round_trip(store: SqlStore) -> None:
    m = Meter(77, "2.1", 300, 330, 40, CHANNELS[:2], T0, 60, "g-01:20", "serial", "k77")
    store.register_meter(m)
    assert store.get_meter(77) == m
    m2 = Meter(77, "2.2", 300, 330, 40, CHANNELS, T0 + 5)
    store.register_meter(m2)  # re-registration replaces it
    assert store.get_meter(77) == m2
    assert store.meter_ids() == [1, 2, 77]
    with pytest.raises(UnknownMeter):
        store.get_meter(78)
    with pytest.raises(UnknownMeter):
        store.intervals(78, 0, T0, T0 + DAY_S)


def test_d01_data_survives_reopen(open_same: Opener) -> None:
    s = open_same()
    s.register_meter(meter(1))
    s.ingest([ing(1, block(T0, 10))])
    s.close()
    assert len(open_same().intervals(1, 0, T0, T0 + DAY_S)) == 10


def test_d01_large_values_round_trip(store: SqlStore) -> None:
    top = (1 << 31) - 1
    b = IntervalBlock(T0, STEP, (0, 0), ((top, 0), (1, 255), (65535, 65536), (0, 0)))
    store.ingest([ing(1, b)])
    assert [[iv.value for iv in store.intervals(1, c, T0, T0 + DAY_S)] for c in range(4)] == [
        [top, 0],
        [1, 255],
        [65535, 65536],
        [0, 0],
    ]


# -- bad input -----------------------------------------------------------------------------------


Batch = tuple[list[BlockIngest], list[MidnightRegister], list[EventRecord]]
BAD: dict[str, tuple[Callable[[], Batch], type[HeadendError]]] = {
    "unknown meter": (lambda: ([ing(99, block(T0, 4))], [], []), UnknownMeter),
    "channel count": (lambda: ([ing(1, block(T0, 4, nch=3))], [], []), InvalidData),
    "interval length": (lambda: ([ing(1, block(T0, 4, step=300))], [], []), InvalidData),
    "register count": (
        lambda: ([], [MidnightRegister(1, T0, (1, 2), Source.SCHEDULED, T0)], []),
        InvalidData,
    ),
    "event meter": (
        lambda: ([], [], [EventRecord(98, 1, T0, 0, Source.SCHEDULED, T0)]),
        UnknownMeter,
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_d01_bad_input_raises_typed_error_and_changes_nothing(store: SqlStore, case: str) -> None:
    store.ingest([ing(1, block(T0, 4, flags=PF))])
    before, stats = snapshot(store), store.stats()
    make, err = BAD[case]
    bad_blocks, bad_mids, bad_events = make()
    with pytest.raises(err):
        store.ingest(  # good items first: they must be rolled back with the bad one
            [ing(1, block(T0, SLOTS)), ing(2, block(T0, SLOTS)), *bad_blocks],
            [MidnightRegister(1, T0, (1, 2, 3, 4), Source.SCHEDULED, T0), *bad_mids],
            [EventRecord(1, 1, T0, 0, Source.SCHEDULED, T0), *bad_events],
        )
    assert snapshot(store) == before
    assert store.stats() == stats
    assert store.ingest([ing(1, block(T0, SLOTS))]).intervals_written == SLOTS  # still usable


@pytest.mark.parametrize(
    "make",
    [
        lambda: IntervalBlock(T0, STEP, (0,), ((-1,),)),
        lambda: IntervalBlock(T0, STEP, (0,), ((1 << 31,),)),
        lambda: IntervalBlock(T0, STEP, (0,), ((1.0,),)),  # type: ignore[arg-type]
        lambda: IntervalBlock(T0, STEP, (0,), ((True,),)),
        lambda: IntervalBlock(T0, STEP, (0x20,), ((1,),)),
        lambda: IntervalBlock(T0, STEP, (0, 0), ((1,),)),
        lambda: IntervalBlock(T0, STEP, (), ()),
        lambda: IntervalBlock(T0 + 1, STEP, (0,), ((1,),)),
        lambda: IntervalBlock(T0, 700, (0,), ((1,),)),
        lambda: IntervalBlock.from_canonical({"start": T0, "interval_s": STEP, "flags": [0]}),
        lambda: MidnightRegister(1, T0, (1 << 63,), Source.SCHEDULED, T0),
        lambda: BlockIngest(1, block(T0, 1), 9, T0),  # type: ignore[arg-type]
        lambda: EventRecord(1, 256, T0, 0, Source.SCHEDULED, T0),
        lambda: Meter(1, "x", 900, 0, 0, CHANNELS, T0),
        lambda: Meter(1, "x", 900, 0, 1, (), T0),
    ],
)
def test_d01_values_out_of_range_are_rejected_before_the_store(make: Callable[[], object]) -> None:
    with pytest.raises(InvalidData):
        make()


def _decoded(start: int, step: int, flags: list[int], chans: list[list[int]]) -> dict[str, Any]:
    """An intervals section's body as `protocol.frame.decode` returns it."""
    body = {"start": start, "interval_s": step, "flags": flags, "channels": chans}
    sec = {"tag": "intervals", "body": body}
    rr = {"request_seq": 0, "kind": 0, "part": 1, "parts": 1, "sections": [sec]}
    fields = {"version": 1, "type": "read_response", "seq": 1, "meter_id": 1, "timestamp": start}
    got = decode(encode({**fields, "body": rr}))
    out: dict[str, Any] = got["body"]["sections"][0]["body"]
    return out


@given(
    st.integers(1, 40).flatmap(
        lambda n: st.tuples(
            st.sampled_from([300, 900, 3600]),
            st.lists(st.sampled_from([0, 1, 2, 0x11]), min_size=n, max_size=n),
            st.lists(
                st.lists(st.integers(0, (1 << 31) - 1), min_size=n, max_size=n),
                min_size=1,
                max_size=4,
            ),
        )
    )
)
def test_d01_a_decoded_block_is_the_block_checked_in_full(
    shape: tuple[int, list[int], list[list[int]]],
) -> None:
    """`from_decoded` checks only the shape again: the block it gives equals the one
    `from_canonical` checks value by value, for what the frame decoder returns."""
    step, flags, chans = shape
    body = _decoded(T0 - T0 % step, step, flags, chans)
    assert IntervalBlock.from_decoded(body) == IntervalBlock.from_canonical(body)


@pytest.mark.parametrize(
    "body",
    [
        {"start": T0, "interval_s": 700, "flags": [0], "channels": [[1]]},
        {"start": T0 + 1, "interval_s": STEP, "flags": [0], "channels": [[1]]},
        {"start": T0, "interval_s": STEP, "flags": [0], "channels": []},
        {"start": T0, "interval_s": STEP, "flags": [0, 0], "channels": [[1, 2], [1]]},
        {"start": (1 << 32) - STEP, "interval_s": STEP, "flags": [0, 0], "channels": [[1, 2]]},
        {"start": -STEP, "interval_s": STEP, "flags": [0], "channels": [[1]]},
    ],
)
def test_d01_a_decoded_block_of_a_bad_shape_is_refused(body: dict[str, Any]) -> None:
    with pytest.raises(InvalidData):
        IntervalBlock.from_decoded(body)


def test_d01_database_failures_are_store_errors(tmp_path: object) -> None:
    with pytest.raises(StoreError):
        SqliteStore(f"{tmp_path}")  # a directory
    with pytest.raises(StoreError):
        PostgresStore("postgresql://nobody@127.0.0.1:1/none")
    with pytest.raises(ConfigError):
        open_store("mysql://x")
    assert open_store(f"sqlite:///{tmp_path}/u.db").schema_version() == latest_version()


# -- migrations ----------------------------------------------------------------------------------


def test_d01_migrations_are_versioned_and_idempotent(open_same: Opener) -> None:
    s = open_same()
    assert s.schema_version() == latest_version() == MIGRATIONS[-1].version
    assert migrate(s.db) == []  # nothing left to apply
    assert open_same().schema_version() == latest_version()  # re-open: migrate is a no-op
    rows = s.db.query("SELECT version, name FROM schema_version ORDER BY version")
    assert [(int(v), n) for v, n in rows] == [(m.version, m.name) for m in MIGRATIONS]


def test_d01_migrate_refuses_a_newer_schema(open_same: Opener) -> None:
    s = open_same()
    newer = (
        *MIGRATIONS,
        Migration(len(MIGRATIONS) + 1, "from the future", ("CREATE TABLE t9 (x INTEGER)",)),
    )
    assert migrate(s.db, newer) == [len(MIGRATIONS) + 1]
    with pytest.raises(SchemaError, match="newer than this head-end supports"):
        migrate(s.db)
    with pytest.raises(SchemaError, match="newer"):
        open_same()


def test_d01_migrations_apply_step_by_step(open_same: Opener) -> None:
    s = open_same()
    extra = (
        *MIGRATIONS,
        Migration(len(MIGRATIONS) + 1, "add a column", ("ALTER TABLE meter ADD COLUMN note TEXT",)),
    )
    assert migrate(s.db, extra) == [len(MIGRATIONS) + 1]
    assert migrate(s.db, extra) == []
    with pytest.raises(SchemaError, match="numbered"):
        migrate(s.db, (MIGRATIONS[0], Migration(3, "gap", ())))


# -- model-based property test -------------------------------------------------------------------

_meter_ids = itertools.count(1000)
_FLAGS = [0, 0, 0, PF, ADJ, PARTIAL, REC, INV, PF | ADJ, INV | PF]

blocks_st = st.lists(
    st.tuples(
        st.integers(-2 * SLOTS, 2 * SLOTS),  # first slot relative to T0
        st.integers(1, 2 * SLOTS + 5),  # count
        st.sampled_from(_FLAGS),
        st.sampled_from(list(Source)),
        st.integers(0, (1 << 31) - 1000),  # base value
    ),
    min_size=1,
    max_size=8,
)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(
    specs=blocks_st,
    offset=st.sampled_from([0, -300, 330, 60]),
    cuts=st.lists(st.booleans(), min_size=8, max_size=8),
)
def test_d01_random_overlapping_blocks_match_a_model(
    store: SqlStore, specs: list[tuple[int, int, int, Source, int]], offset: int, cuts: list[bool]
) -> None:
    mid = next(_meter_ids)
    store.register_meter(meter(mid, utc_offset_min=offset, nch=2))
    model: dict[int, tuple[tuple[int, int], int, Source]] = {}
    batch: list[BlockIngest] = []
    for i, (first, n, fl, src, base) in enumerate(specs):
        start = T0 + first * STEP
        b = IntervalBlock(start, STEP, (fl,) * n, ((base,) * n, tuple(base + j for j in range(n))))
        for j in range(n):
            t = start + j * STEP
            old = model.get(t)
            if old is None or quality(fl) > quality(old[1]):
                model[t] = ((base, base + j), fl, src)
        batch.append(BlockIngest(mid, b, src, T0 + i))
        if cuts[i]:  # ingest in several batches or one: the result must not depend on it
            store.ingest(batch)
            batch = []
    store.ingest(batch)
    lo, hi = T0 - 3 * DAY_S, T0 + 5 * DAY_S
    for c in range(2):
        got = [(iv.start, iv.value, iv.flags, iv.source) for iv in store.intervals(mid, c, lo, hi)]
        want = [(t, v[c], f, s) for t, (v, f, s) in sorted(model.items())]
        assert got == want
    present = sum(cv.present for cv in store.coverage(mid, lo, hi))
    assert present == len(model)


@pytest.mark.parametrize(("top", "width"), [(0, 1), (255, 1), (256, 2), (65535, 2), (65536, 4)])
def test_d01_a_day_row_takes_the_narrowest_width_of_its_values(top: int, width: int) -> None:
    """`DayRow.encode` stores every value in the narrowest of 1, 2, 4 bytes that holds the
    row's largest (the layout's rule), wherever it sits, and decodes to the same."""
    for where in (0, 95, 3 * 96 + 40):
        vals = [[7] * 96 for _ in range(4)]
        vals[where // 96][where % 96] = top
        row = DayRow(T0, STEP, vals, bytearray(96), bytearray(b"\x01") * 96)
        blob, flags, srcs = row.encode()
        assert len(blob) == 4 * 96 * width
        assert DayRow.decode(T0, STEP, 4, blob, flags, srcs).vals == vals


@given(st.integers(0, 95), st.integers(2, 3))
def test_d01_a_whole_day_row_is_an_empty_row_merged_with_it(first: int, days: int) -> None:
    """`DayRow.whole` (a block's whole day taken at once) gives what merging that day
    of the block into an `empty` row gives."""
    n = days * 96 + first
    b = IntervalBlock(
        T0,
        STEP,
        tuple(i % 3 for i in range(n)),
        tuple(tuple(c * 7 + i for i in range(n)) for c in range(4)),
    )
    merged = DayRow.empty(T0 + DAY_S, STEP, 4)
    merged.merge_block(b, 0, 96, 192, 2)
    whole = DayRow.whole(T0 + DAY_S, b, 96, 2)
    assert (whole.vals, whole.flags, whole.srcs) == (merged.vals, merged.flags, merged.srcs)
    assert whole.encode() == merged.encode()
