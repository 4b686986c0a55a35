"""D14 usage validation: each seeded fault is found by its check, and only by the checks
it must trip; results in the CLI (table, --json, --csv) and stored for other systems."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable

import pytest

from headend.cli import main
from headend.mdms import validate
from headend.store import MidnightRegister, Source, SqlStore
from headend.store.base import DAY_S
from headend.store.validations import Validations
from tests.headend.conftest import open_at
from tests.headend.exportdata import LA, STEP, midnights, register, seed, value

pytestmark = pytest.mark.req("D14")

START = 1_711_954_800  # 2024-04-01T00:00-07:00 (Los Angeles)
END = START + 30 * DAY_S  # 2024-05-01T00:00-07:00
FIRST_REG = START + 3600  # the meters' local standard midnight (PST, 08:00Z)
REG_DAYS = list(range(FIRST_REG, END + 1, DAY_S))
DAY5 = START + 5 * DAY_S
STUCK_AT = START + 9 * DAY_S + 40 * STEP
SPIKE_AT = START + 20 * DAY_S + 50 * STEP


def stuck(mid: int, t: int) -> int:
    return 250 if STUCK_AT <= t < STUCK_AT + 12 * STEP else value(mid, t)


def zero_day(mid: int, t: int) -> int:
    return 0 if DAY5 <= t < DAY5 + DAY_S else value(mid, t)


def spike(mid: int, t: int) -> int:
    return 500_000 if t == SPIKE_AT else value(mid, t)


FAULTS: dict[int, tuple[str, Callable[[int, int], int]]] = {
    10: ("clean", value),
    11: ("tampered", value),
    12: ("gap", value),
    13: ("stuck", stuck),
    14: ("zero", zero_day),
    15: ("spike", spike),
}
EXPECTED = {
    10: set(),
    11: {"sum"},
    12: {"missing", "sum"},  # the register counted the energy the intervals lack
    13: {"contiguous"},
    14: {"zero"},
    15: {"high_low"},
}


@pytest.fixture
def store(backend: str, store_at: list[SqlStore]) -> SqlStore:
    s = open_at(backend, store_at)
    for mid, (kind, raw) in FAULTS.items():
        register(s, mid, START - 32 * DAY_S)
        gap = [(START + 12 * DAY_S + 3600, START + 12 * DAY_S + 3 * 3600)] if kind == "gap" else []
        seed(s, mid, START - 31 * DAY_S, END + DAY_S, raw=raw, skip=gap)
        midnights(s, mid, REG_DAYS, raw=raw)
    last = s.midnight_registers(11, REG_DAYS[-1], REG_DAYS[-1] + 1)[0]
    tampered = (last.values[0] + 40, last.values[1])
    with s.db.transaction():
        s.db.execute("DELETE FROM midnight_register WHERE meter_id = 11 AND day = ?", (last.day,))
    s.ingest(midnights=[MidnightRegister(11, last.day, tampered, Source.SCHEDULED, last.day)])
    return s


def test_d14_each_seeded_fault_is_found_by_its_check(store: SqlStore) -> None:
    for mid, want in EXPECTED.items():
        results = validate.validate(store, mid, START, END, LA)
        assert [r.check for r in results] == list(validate.CHECKS)
        failed = {r.check for r in results if r.status == validate.FAIL}
        assert failed == want, (mid, [r for r in results if r.status != validate.PASS])
        assert not [r for r in results if r.status == validate.SKIP]
    by = {r.check: r.detail for r in validate.validate(store, 11, START, END, LA)}
    assert "intervals" in by["sum"] and "registers" in by["sum"]
    by = {r.check: r.detail for r in validate.validate(store, 12, START, END, LA)}
    assert by["missing"].startswith("8 of 2880 intervals, first 2024-04-13T01:00:00-07:00")
    by = {r.check: r.detail for r in validate.validate(store, 13, START, END, LA)}
    assert by["contiguous"] == (
        "active_import: 12 intervals of 2.500 Wh from 2024-04-10T10:00:00-07:00"
    )  # 250 x 2 x 10^-3 x 5
    by = {r.check: r.detail for r in validate.validate(store, 14, START, END, LA)}
    assert by["zero"] == "1 day(s) of zero usage: 2024-04-06"
    by = {r.check: r.detail for r in validate.validate(store, 15, START, END, LA)}
    assert by["high_low"].startswith("2024-04-21 high")
    # too little history, no registers: skip and say why
    short = validate.validate(store, 10, START, START + DAY_S, LA, validate.Rules(history_days=3))
    assert {r.check: r.status for r in short}["high_low"] == validate.SKIP
    assert {r.check: r.status for r in short}["sum"] == validate.SKIP


def test_d14_cli_table_json_csv_and_stored_results(
    store: SqlStore, backend: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["validate", "10-15", "--start", "2024-04-01", "--end", "2024-05-01",
            "--tz", "America/Los_Angeles", "--database", backend]  # fmt: skip
    assert main([*argv, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["totals"] == {"pass": 24, "fail": 6, "skip": 0}
    failed = {(r["meter"], r["check"]) for r in doc["rows"] if r["status"] == "fail"}
    assert failed == {(m, c) for m, cs in EXPECTED.items() for c in cs}
    assert main([*argv, "--csv", "--failed"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == 6 and rows[0].keys() == {"meter", "check", "status", "detail"}
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("validation 2024-04-01 .. 2024-05-01") and "fail 6" in out
    stored = Validations(store.db).results(status="fail")
    assert {(r.meter_id, r.check) for r in stored} == failed
    assert {(r.start, r.end) for r in stored} == {(START, END)}
    assert main([*argv, "--high", "x"]) == 2
    assert main([*argv[:1], "99", *argv[2:]]) == 2
    assert "meter 99 is not registered" in capsys.readouterr().err
